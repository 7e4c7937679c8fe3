"""llama.cpp (llama-cpp-python 0.3.36) as a CPU peer for the decode benchmark; benchmarks only.

llama.cpp lives in its own cached venv, ``cache_root()/peers/llama-cpp-0.3.36/venv``, built from the
sdist on first use (~13 min on 2 cores) and never in the project venv, so nothing in ``make test``
needs it. Our fp32 SmolLM2 directory is converted to an F32 GGUF with the sdist's vendored
``convert_hf_to_gguf.py`` (run by the calling python, which has torch/transformers) and quantized to
Q4_0 / Q3_K_M / Q4_K_M by ``llama_model_quantize`` in the peer venv. Timing and PPL run in a worker
script (``_WORKER``) under the peer python, exchanging JSON over stdin/stdout.

CLI: ``python benchmarks/llamacpp_peer.py [--formats F32 Q4_0 ...] [--threads 1 2]
[--n-eval-tokens 2048] [--json benchmarks/llamacpp_peer.json]``. JSON keys (stable):

  meta.llama_cpp_python   peer version ("0.3.36")
  meta.context            KV-cache length the single-token decode is timed against
  meta.prefill            prompt length of the prefill timing
  meta.repeats            decode repeats (ms is their min); prefill is the min of 3
  meta.n_eval_tokens      held-out tokens PPL is measured on (eval_tokens, windows of 512)
  meta.tokenizer_agrees   llama.cpp's tokenize of an eval sample == our HF tokenizer's ids
  meta.ours_fp32_ppl      sfmp_compile.eval.metrics.perplexity of the fp32 model on the same ids
  meta.ours_fp32_ppl_fp64_scoring  the same logits and windows scored in fp64, as the worker scores
                          llama.cpp (metrics' fp32 cross_entropy reads ~1.6e-5 relative low)
  meta.cpu                /proc/cpuinfo model name
  meta.kv_cache           KV cache types: timings use llama.cpp's default F16, PPL an F32 cache
  rows["llama.cpp FMT"]   per format, FMT in F32, Q4_0, Q3_K_M, Q4_K_M:
    threads["1"|"2"].ms          decode ms/token (one token after `context` cached tokens)
    threads["1"|"2"].prefill_ms  ms for a fresh `prefill`-token eval
    ppl           llama.cpp PPL at 1 thread on the same ids (None without ids)
    linear_bpw    bits/weight of the decoder linears (attn q,k,v,o; ffn gate,up,down)
    embed_bpw     bits/weight of token_embd (+ output.weight if untied)
    linear_types  {ggml type: n tensors} over the decoder linears (K-quants fall back where rows
                  are not a multiple of 256: SmolLM2's hidden size is 576)
    file_bytes    GGUF file size; weight_bytes: all tensor data bytes in it
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# Run as a script, sys.path[0] is benchmarks/; the repo root must shadow an installed sfmp_compile.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VERSION = "0.3.36"
FORMATS = ("F32", "Q4_0", "Q3_K_M", "Q4_K_M")
CMAKE_ARGS = "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"
LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"


def _log(msg: str) -> None:
    print(f"llamacpp_peer: {msg}", file=sys.stderr, flush=True)


def peer_dir() -> Path:
    """``cache_root()/peers/llama-cpp-0.3.36``: venv, sdist, its extracted source and the GGUFs."""
    from sfmp_compile.eval.models import cache_root
    return cache_root() / "peers" / f"llama-cpp-{VERSION}"


def _lock():
    # One lock for venv, sdist and GGUF builds: they are rare, and two processes building the same
    # 13-minute venv at once would just fight over 2 cores.
    from filelock import FileLock
    peer_dir().mkdir(parents=True, exist_ok=True)
    return FileLock(str(peer_dir() / ".lock"))


def _run(cmd: list[str], env: dict | None = None, progress: str | None = None, log: Path | None = None) -> None:
    """Run ``cmd``; its output goes to ``log``, with ninja's ``[n/N]`` steps echoed every 10 as progress."""
    log = log or peer_dir() / "last-command.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            out.write(line)
            step = re.search(r"\[(\d+)/(\d+)\]", line)
            if progress and step and (int(step[1]) % 10 == 0 or step[1] == step[2]):
                _log(f"{progress} [{step[1]}/{step[2]}]")
        if proc.wait():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{' '.join(cmd[:4])}... failed (rc {proc.returncode}, log {log}):\n"
                               + "\n".join(tail))


def ensure_source() -> Path:
    """The extracted sdist (``peer_dir()/src``), downloading it first if absent; it holds the converter."""
    src, sdist = peer_dir() / "src", peer_dir() / "sdist" / SDIST
    if (src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        return src
    with _lock():
        if src.is_dir():
            return src
        if not sdist.is_file():
            _log(f"downloading the llama-cpp-python {VERSION} sdist")
            tmp = Path(tempfile.mkdtemp(dir=peer_dir(), prefix=".sdist-"))
            # pip prepares metadata even for a download, and scikit-build-core does that by running the
            # whole CMake build (13 min); wheel.cmake=false makes the metadata step skip CMake.
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  "-d", str(tmp), f"llama-cpp-python=={VERSION}"], env={"SKBUILD_WHEEL_CMAKE": "false"})
            sdist.parent.mkdir(exist_ok=True)
            os.replace(tmp / SDIST, sdist)
            shutil.rmtree(tmp, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=peer_dir(), prefix=".src-"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp / f"llama_cpp_python-{VERSION}", src)  # rename: an existing src is complete
        shutil.rmtree(tmp, ignore_errors=True)
    return src


def ensure_venv(build: bool = True) -> Path:
    """Path of the peer venv's python, building the venv (under a file lock) if asked and absent.

    The venv cannot be built elsewhere and renamed (its scripts hard-code their path), so it is
    complete only once its stamp file, written last, exists; a venv without one is rebuilt.
    """
    venv = peer_dir() / "venv"
    python, stamp = venv / "bin" / "python", venv / ".sfmp-complete"
    if stamp.is_file():
        return python
    if not build:
        raise FileNotFoundError(f"no llama.cpp peer venv at {venv}; run ensure_venv()")
    ensure_source()
    with _lock():
        if stamp.is_file():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        start = time.time()
        _log(f"building llama-cpp-python {VERSION} from source into {venv} (~13 min on 2 cores)")
        _run(["python3.11", "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "-v", "numpy", str(peer_dir() / "sdist" / SDIST)],
             env={"CMAKE_ARGS": CMAKE_ARGS}, progress="compiling", log=peer_dir() / "build.log")
        _run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"])
        stamp.write_text(f"llama-cpp-python {VERSION}, CMAKE_ARGS={CMAKE_ARGS}, {time.time() - start:.0f} s\n")
        _log(f"peer venv built in {time.time() - start:.0f} s")
    return python


def _source_key(model_dir: Path) -> str:
    """Cache key of a model directory: name, size and mtime of its config and safetensors."""
    files = sorted([model_dir / "config.json", *model_dir.glob("*.safetensors")])
    sig = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(repr(sig).encode()).hexdigest()[:16]


# The converter imports sentencepiece before it looks for tokenizer.model; SmolLM2 has none (it is a
# BPE tokenizer.json), so a stub that only has to import lets it fall through to the GPT-2 BPE path,
# without installing anything into the calling venv.
_SP_STUB = "class SentencePieceProcessor:\n    def __init__(self, *a, **k):\n        raise ImportError('stub')\n"

_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3]), 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def ensure_gguf(fmt: str, model_dir: Path | None = None) -> Path:
    """The GGUF of ``model_dir`` (default: our fp32 SmolLM2) in ``fmt``, converted/quantized once."""
    from sfmp_compile.eval.models import smollm2_cache_path
    model_dir = Path(model_dir or smollm2_cache_path())
    out_dir = peer_dir() / "gguf" / f"{model_dir.name}-{_source_key(model_dir)}"
    path = out_dir / f"model-{fmt}.gguf"
    if path.is_file():
        return path
    src = ensure_gguf("F32", model_dir) if fmt != "F32" else None
    python = ensure_venv() if src else None
    with _lock():
        if path.is_file():
            return path
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{path.name}.tmp-{os.getpid()}"
        start = time.time()
        if src is None:
            llama = ensure_source() / "vendor" / "llama.cpp"
            stub = Path(tempfile.mkdtemp(prefix="sp-stub-"))
            (stub / "sentencepiece.py").write_text(_SP_STUB)
            _log(f"converting {model_dir} to F32 GGUF")
            # The vendored gguf-py goes first: the converter needs constants newer than a pip gguf.
            path_env = os.pathsep.join(map(str, (stub, llama / "gguf-py", llama)))
            _run([sys.executable, str(llama / "convert_hf_to_gguf.py"), "--outtype", "f32",
                  "--outfile", str(tmp), str(model_dir)], env={"PYTHONPATH": path_env}, log=out_dir / "convert.log")
            shutil.rmtree(stub, ignore_errors=True)
        else:
            _log(f"quantizing to {fmt}")
            _run([str(python), "-c", _QUANTIZE, str(src), str(tmp), fmt], log=out_dir / f"quantize-{fmt}.log")
        os.replace(tmp, path)  # the rename makes the cache entry appear complete or not at all
        _log(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB in {time.time() - start:.0f} s")
    return path


def gguf_stats(path: Path) -> dict:
    """Bits per weight of a GGUF's decoder linears and of its embedding/output, plus byte counts."""
    from gguf import GGUFReader
    lin_bits = lin_n = emb_bits = emb_n = total = 0
    types: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        total += int(t.n_bytes)
        parts = t.name.split(".")
        if parts[0] == "blk" and parts[2] in LINEAR_NAMES and parts[-1] == "weight":
            lin_bits, lin_n = lin_bits + 8 * int(t.n_bytes), lin_n + int(t.n_elements)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        elif t.name in ("token_embd.weight", "output.weight"):
            emb_bits, emb_n = emb_bits + 8 * int(t.n_bytes), emb_n + int(t.n_elements)
    return {"linear_bpw": lin_bits / lin_n, "embed_bpw": emb_bits / emb_n, "linear_types": types,
            "file_bytes": path.stat().st_size, "weight_bytes": total}


_WORKER = r"""
import json, math, sys, time
import numpy as np
from llama_cpp import Llama

job = json.load(sys.stdin)
ids, ctx, pre = job["ids"], job["context"], job["prefill"]
out = {"threads": {}, "ppl": None, "tokens": None}
if job.get("check_text") is not None:
    vocab = Llama(job["model"], vocab_only=True, verbose=False)
    out["tokens"] = vocab.tokenize(job["check_text"].encode(), add_bos=False, special=False)
    del vocab
for t in job["threads"]:
    llm = Llama(job["model"], n_ctx=max(ctx + 1, pre), n_batch=512, n_threads=t, n_threads_batch=t, verbose=False)
    llm.eval(ids[:ctx])
    best = math.inf
    for r in range(job["repeats"] + 1):  # r == 0 is a warm-up
        # eval() drops the KV cache beyond n_tokens first, so this times one token against `ctx` cached.
        llm.n_tokens = ctx
        t0 = time.perf_counter(); llm.eval([ids[ctx]]); dt = time.perf_counter() - t0
        if r:
            best = min(best, dt)
    pbest = math.inf
    for _ in range(3):
        llm.reset()  # n_tokens = 0: eval() clears the whole KV cache, a fresh prefill
        t0 = time.perf_counter(); llm.eval(ids[:pre]); pbest = min(pbest, time.perf_counter() - t0)
    out["threads"][str(t)] = {"ms": best * 1e3, "prefill_ms": pbest * 1e3}
    del llm
if job.get("ppl_ids"):
    # Same windows as sfmp_compile.eval.metrics: non-overlapping, the last partial one if >= 2 tokens,
    # tokens 1..n-1 of each window predicted from those before them in that window only.
    w, toks = job["ppl_window"], job["ppl_ids"]
    # An F32 KV cache (type 0; llama.cpp's default is F16) so PPL reflects the weights alone, as ours does.
    llm = Llama(job["model"], n_ctx=w, n_batch=w, n_threads=1, n_threads_batch=1, logits_all=True,
                type_k=0, type_v=0, verbose=False)
    nll, n_pred = 0.0, 0
    for s in range(0, len(toks), w):
        win = toks[s:s + w]
        if len(win) < 2:
            break
        llm.reset(); llm.eval(win)
        lg = np.asarray(llm.scores[:len(win) - 1], dtype=np.float64)
        m = lg.max(-1)
        lse = m + np.log(np.exp(lg - m[:, None]).sum(-1))
        nll += float((lse - lg[np.arange(len(win) - 1), win[1:]]).sum()); n_pred += len(win) - 1
    out["ppl"] = math.exp(nll / n_pred)
json.dump(out, sys.stdout)
"""


def _measure(python: Path, model: Path, job: dict) -> dict:
    """Run ``_WORKER`` under the peer python on one GGUF; the JSON it prints is the result."""
    res = subprocess.run([str(python), "-c", _WORKER], input=json.dumps({**job, "model": str(model)}),
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"llama.cpp worker failed on {model.name}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def run_llamacpp(formats=FORMATS, threads=(1, 2), context: int = 64, prefill: int = 256, repeats: int = 20,
                 eval_ids: list[int] | None = None, check_text: str | None = None) -> dict:
    """Decode/prefill timings, PPL and weight bits of llama.cpp on SmolLM2 in each of ``formats``.

    Rows are keyed ``"llama.cpp FMT"``: ``{"threads": {"1": {"ms", "prefill_ms"}, ...}, "ppl",
    "linear_bpw", "embed_bpw", "linear_types", "file_bytes", "weight_bytes"}`` (see the module
    docstring). ``eval_ids`` (token ids from ``eval_tokens``) are scored in windows of 512 at one
    thread and also supply the timed tokens; without them ``ppl`` is None and fixed ids are timed.
    With ``check_text``, rows also carry ``"tokens"``: llama.cpp's tokenization of it (first format).
    """
    python = ensure_venv()
    need = max(context + 1, prefill)
    timed = list(eval_ids[:need]) if eval_ids and len(eval_ids) >= need else [(7 * i) % 40000 + 100 for i in range(need)]
    rows = {}
    for i, fmt in enumerate(formats):
        path = ensure_gguf(fmt)
        _log(f"measuring {fmt} at threads {list(threads)}" + (", PPL at 1 thread" if eval_ids else ""))
        res = _measure(python, path, {"ids": timed, "context": context, "prefill": prefill, "repeats": repeats,
                                      "threads": list(threads), "ppl_ids": list(eval_ids or []), "ppl_window": 512,
                                      "check_text": check_text if i == 0 else None})
        row = {"threads": res["threads"], "ppl": res["ppl"], **gguf_stats(path)}
        if res["tokens"] is not None:
            row["tokens"] = res["tokens"]
        rows[f"llama.cpp {fmt}"] = row
    return rows


def _cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main(argv=None) -> None:
    """CLI: measure, check tokenizer and fp32 PPL against ours, print a table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--n-eval-tokens", type=int, default=2048)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("llamacpp_peer.json"))
    args = ap.parse_args(argv)

    import math

    import torch

    from sfmp_compile.eval.metrics import score, window_logits
    from sfmp_compile.eval.models import load_model
    from sfmp_compile.eval.text import eval_tokens
    model, tok = load_model("smollm2")
    ids = eval_tokens(tok, args.n_eval_tokens)
    # A sample of the eval text re-tokenized by llama.cpp must give our ids, or PPLs are not comparable.
    sample = tok.decode(ids[0, :400])
    ours_sample = tok(sample, add_special_tokens=False)["input_ids"]
    ours_ppl = ours_ppl64 = None
    if "F32" in args.formats:
        logits = window_logits(model, ids, 512)
        ours_ppl = score(logits, ids, 512)["ppl"]
        # metrics' fp32 cross_entropy (a 49152-way logsumexp in fp32) reads ~1.6e-5 low in relative
        # terms; the worker scores in fp64, so the like-for-like check of llama.cpp F32 is this one.
        nll, pos = 0.0, 0
        for lg in logits:
            win = ids[0, pos:pos + lg.shape[1]]
            nll += torch.nn.functional.cross_entropy(lg[0, :-1].double(), win[1:], reduction="sum").item()
            pos += lg.shape[1]
        ours_ppl64 = math.exp(nll / (ids.shape[1] - len(logits)))
    del model
    rows = run_llamacpp(args.formats, tuple(args.threads), args.context, args.prefill, args.repeats,
                        ids[0].tolist(), check_text=sample)
    theirs = next(r.pop("tokens") for r in rows.values() if "tokens" in r)
    agrees = theirs == ours_sample
    meta = {"llama_cpp_python": VERSION, "context": args.context, "prefill": args.prefill, "repeats": args.repeats,
            "n_eval_tokens": args.n_eval_tokens, "tokenizer_agrees": agrees, "ours_fp32_ppl": ours_ppl,
            "ours_fp32_ppl_fp64_scoring": ours_ppl64,
            "cpu": _cpu_name(), "kv_cache": {"timing": "F16", "ppl": "F32"}}
    print(f"tokenizer agrees on a {len(ours_sample)}-token sample: {agrees}")
    if ours_ppl is not None:
        print(f"fp32 PPL: ours {ours_ppl:.5f} (metrics.perplexity), {ours_ppl64:.5f} (fp64 scoring); "
              f"llama.cpp F32 {rows['llama.cpp F32']['ppl']:.5f} (fp64 scoring)")
    head = "".join(f"  {t}T ms/tok  {t}T pre{args.prefill} ms" for t in args.threads)
    print(f"{'peer':<18}{head}  {'PPL':>8}  lin bpw  emb bpw  MiB")
    for name, r in rows.items():
        cells = "".join(f"  {r['threads'][str(t)]['ms']:>9.2f}  {r['threads'][str(t)]['prefill_ms']:>13.1f}"
                        for t in args.threads)
        ppl = f"{r['ppl']:8.4f}" if r["ppl"] is not None else "       -"
        print(f"{name:<18}{cells}  {ppl}  {r['linear_bpw']:7.3f}  {r['embed_bpw']:7.3f}  {r['file_bytes'] / 2**20:.1f}")
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
