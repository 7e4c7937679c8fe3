"""Hostile-but-fair scenarios (issue 13): options, weights, checkpoints, the compile backend, kernel
edge shapes, kernel caches and the CLI, each classified as

  clear    refused with a named error of this package (CheckpointError, SFMPConfigError, a ValueError
           /TypeError/OSError from an explicit ``raise`` in sfmp_compile; the CLI: one stderr line, exit 2)
  correct  finished, and the result meets the contract (bit-identical logits for a checkpoint, the
           op's stated tolerance vs the untampered run / fp32 reference, the budget for options)
  wrong    finished, but the result is not what the contract says: a SILENT WRONG ANSWER
  crash    any other exception, a traceback, a process killed by a signal, or the memory cap hit
  hang     no answer within the scenario's timeout (the worker is killed)

Scenarios run in worker subprocesses, a batch per category (a fresh worker after any crash or
hang), each worker under an address-space cap (resource.setrlimit RLIMIT_AS = its size after
imports + 3 GiB), so crashes, hangs and huge allocations are counted, not fatal.

Usage: python benchmarks/hostile.py [--only CATEGORY,...] [--out benchmarks/hostile.json]
JSON keys: meta {command, machine, torch, started, seconds, timeouts}; counts {category: {verdict: n}}
and totals {verdict: n}; scenarios [{id, category, case, args, verdict, detail, seconds}].
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VERDICTS = ("clear", "correct", "wrong", "crash", "hang")
LLAMA_Q = "model.layers.0.self_attn.q_proj"
LLAMA_DOWN = "model.layers.1.mlp.down_proj"


# --- the scenarios --------------------------------------------------------------------------------

def scenarios() -> list[dict]:
    from hostile_checkpoints import JSON_EDITS, RAW_FILES, TENSOR_EDITS
    from hostile_runtime import AUTOTUNE_PLANTS
    out = []

    def add(cat, case, timeout=60, **args):
        out.append({"id": len(out), "category": cat, "case": case, "args": args, "timeout": timeout})

    opts = {"bits": [-1, 0, 0.5, 1, 1.01, 2.5, 8, 8.5, 9, "@nan", "@inf", "3", "@none", True, 1e308],
            "group_size": [0, -32, 1, 31, 33, 48, 64, 2**31, 3.5, "64", True],
            "block_rows": [0, -1, 1, 3, 2**31, 2.5, "16"],
            "salience": ["foo", "", 3, "activation", "fisher"], "quantizer": ["foo", "gptq"],
            "bit_choices": [[2, 3], [0, 1, 2], [4, 3, 2], [2, 2, 3], [1, 9, 10], [], "234", [2.5, 3, 4], [1, 2, 8], [2, 3, 4]],
            "gptq_damp": [-1, "@nan", "@inf", 0, 1e9],
            "skip_bits": [{"lm_head": 0}, {"lm_head": 9}, {"lm_head": 2.5}, {"nope": 4}, "lm_head"],
            "skip": [5, ["model.layers.0.mlp.down_proj"], "lm_head"], "clip_search": ["no"], "reorder_rows": ["@none"],
            "foo": [1]}
    for k, vs in opts.items():
        for v in vs:
            add("options", "option", where="quantize", kw={k: v})
    for kw in [{"bits": -1}, {"bits": "@nan"}, {"bits": 2.5}, {"cpu_kernel": "foo"}, {"cpu_kernel": "int4"},
               {"inner": "foo"}, {"salience": "fisher"}, {"salience": "activation"}, {"quantizer": "gptq"}, {"foo": 1},
               {"group_size": 33}, {"skip_bits": {"lm_head": 9}}, {"block_rows": 0}]:
        add("options", "option", where="backend", kw=kw)

    kinds = ["normal", "tiny_1e-5", "subnormal_1e-30", "huge_1e5", "near_fp16_max", "outlier", "constant", "zeros",
             "one_row", "nan", "inf", "1e30", "negative_only", "positive_only"]
    for kind in kinds:
        for b in (2, 3, 4, 8):
            add("weights", "weight", kind=kind, bits=b, shape=[40, 96], dtype="float32")
    for dt in ("float16", "bfloat16", "float64", "int32"):
        add("weights", "weight", kind="normal", bits=3, shape=[40, 96], dtype=dt)
    for shape in ([1, 32], [1, 1], [3, 7], [33, 33], [17, 100]):
        add("weights", "weight", kind="normal", bits=3, shape=shape, dtype="float32")

    for base in ("llama", "gpt2"):
        for into in (False, True):
            add("checkpoints", "ckpt_json", base=base, edit="top_unknown_key", into=into)  # control: refused
            add("checkpoints", "ckpt_control", base=base, into=into)
    for edit in TENSOR_EDITS:
        for resign in (False, True):
            for into in (False, True):
                add("checkpoints", "ckpt_tensor", base="llama", layer=LLAMA_Q, edit=edit, resign=resign, into=into)
        add("checkpoints", "ckpt_tensor", base="llama", layer=LLAMA_DOWN, edit=edit, resign=True, into=False)
    for edit in JSON_EDITS:
        for into in (False, True):
            add("checkpoints", "ckpt_json", base="llama", edit=edit, into=into)
    for edit in [e for e in JSON_EDITS if e.startswith("tied")]:
        add("checkpoints", "ckpt_json", base="gpt2", edit=edit, into=False)
    for edit, (name, _) in RAW_FILES.items():
        for resign in ((False, True) if name == "config.json" else (False,)):
            add("checkpoints", "ckpt_file", base="llama", edit=edit, resign=resign, into=False, timeout=90)
        if name == "model.safetensors":
            add("checkpoints", "ckpt_file", base="llama", edit=edit, resign=False, into=True)
    for name in ("sfmp.json", "model.safetensors", "config.json"):
        for what in ("fifo", "dir", "devzero", "missing"):
            add("checkpoints", "ckpt_special", base="llama", name=name, what=what, into=False, timeout=30)
    add("checkpoints", "ckpt_special", base="llama", name="model.safetensors", what="fifo", into=True, timeout=30)
    for base, hows in (("llama", ("undeclared", "declared_missing")), ("gpt2", ("wrong_shape", "wrong_dtype", "removed", "nan"))):
        for how in hows:
            for into in (False, True):
                add("checkpoints", "ckpt_bias", base=base, how=how, into=into)

    for model in ("llama", "gpt2"):
        for k in ("reference", "packed", "int4"):
            for seq in (1, 8):
                add("backend", "backend", model=model, inner="aot_eager", cpu_kernel=k, seq=seq, batch=1, extra="", timeout=120)
    for inner in ("eager", "inductor"):
        for k in ("reference", "packed", "int4"):
            add("backend", "backend", model="llama", inner=inner, cpu_kernel=k, seq=8, batch=1, extra="", timeout=300)
    for extra, k in (("release", "packed"), ("recompile", "packed"), ("bf16", "reference"), ("batch", "packed")):
        add("backend", "backend", model="llama", inner="aot_eager", cpu_kernel=k, seq=8, batch=3 if extra == "batch" else 1,
            extra=extra, timeout=120)

    shapes = [(1, 32, 16, 32), (2, 1, 16, 32), (63, 33, 16, 32), (65, 577, 64, 64), (577, 65, 512, 128),
              (16, 96, 1, 32), (130, 300, 64, 96), (8, 1000, 3, 512)]
    width_sets = [(1,), (8,), (1, 2, 3, 4, 5, 6, 7, 8), (2, 3, 4), (1, 4)]
    for i, (N, K, br, gs) in enumerate(shapes):
        for ws in (width_sets[i % 5], width_sets[(i + 2) % 5], width_sets[(i + 3) % 5]):
            for op in ("ref", "cpu", "int4"):
                if op == "int4" and max(ws) > 4:
                    continue
                add("kernels", "kernel", op=op, N=N, K=K, br=br, gs=gs, widths=ws, M=5, dtype="float32", special="",
                    permute=bool(i % 2))
    for op, ws in (("ref", (2, 3, 4)), ("cpu", (1, 2, 3, 4, 5, 6, 7, 8)), ("int4", (1, 2, 4))):
        for M, dt, sp in [(0, "float32", ""), (1, "float32", ""), (300, "float32", ""), (5, "bfloat16", ""),
                          (5, "float16", ""), (5, "float32", "nan"), (5, "float32", "inf"), (5, "float32", "huge"),
                          (5, "float32", "zeros"), (5, "float32", "noncontig"), (5, "float32", "3d")]:
            add("kernels", "kernel", op=op, N=70, K=200, br=32, gs=64, widths=ws, M=M, dtype=dt, special=sp, permute=True)
    for N, K, br, gs, ws, M in [(1, 32, 16, 32, (1,), 1), (63, 33, 16, 32, (8,), 3), (48, 96, 16, 32, (2, 3), 17),
                                (20, 70, 8, 64, (1, 2, 3, 4, 5, 6, 7, 8), 1), (33, 100, 32, 32, (2, 4), 600),
                                (16, 64, 16, 32, (3,), 0)]:
        add("kernels", "kernel", op="interp", N=N, K=K, br=br, gs=gs, widths=ws, M=M, dtype="float32", special="",
            permute=True, timeout=180)

    for plant in ("non_utf8", "directory", "fifo", "devzero", "planted_code", "symlink_to_evil", "truncated",
                  "all_names_taken", "fingerprint_stub", "cache_dir_is_file"):
        for m in (1, 5):
            add("caches", "kernel_cache", plant=plant, family_m=m, timeout=120)
    for plant in list(AUTOTUNE_PLANTS) + ["fifo", "directory"]:
        add("caches", "autotune_table", plant=plant, timeout=30)
    add("caches", "autotune_race", procs=2, saves=20, timeout=300)

    T = "{tmp}"
    bad = [["quantize", "tiny", "--bits", "-1", "--out", f"{T}/o1"], ["quantize", "tiny", "--bits", "nan", "--out", f"{T}/o2"],
           ["quantize", "tiny", "--bits", "abc", "--out", f"{T}/o3"], ["quantize", "tiny", "--bits", "100", "--out", f"{T}/o4"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o5", "--seq-len", "0"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o6", "--seq-len", "-5"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o7", "--group-size", "33"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o8", "--group-size", "0"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o9", "--bit-choices", "2,3"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o10", "--bit-choices", "a,b,c"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o11", "--levels", "4"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/existing_file"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/existing_file", "--overwrite"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o12", "--text", f"{T}/nope.txt"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o13", "--text", f"{T}/binary.txt"],
           ["quantize", "tiny", "--bits", "3", "--out", f"{T}/o14", "--text", f"{T}/empty.txt"],
           ["quantize", "/nonexistent/model", "--bits", "3", "--out", f"{T}/o15"],
           ["quantize", "tiny", "--bits", "3"], ["eval", f"{T}/nope_dir"], ["eval", "{corrupt}"], ["inspect", "{corrupt}"],
           ["inspect", f"{T}/nope_dir"], ["inspect", "{llama}", "--plot", f"{T}/a_dir"],
           ["eval", "tiny", "--bits", "3", "--json", f"{T}/a_dir.json", "--eval-tokens", "64"],
           ["eval", "tiny", "--bits", "3", "--plot", f"{T}/a_dir.png", "--eval-tokens", "64"],
           ["eval", "tiny", "--bits", "3,x"], ["eval", "tiny", "--bits", "3", "--compare", "bogus"],
           ["eval", "tiny", "--bits", "3", "--context", "0"], ["eval", "tiny", "--bits", "3", "--eval-tokens", "-1"],
           ["bogus"], [], ["quantize"], ["demo", "--new-tokens", "0"], ["demo", "--inner", "foo"]]
    for argv in bad:
        add("cli", "cli", argv=argv, expect_ok=False, timeout=120)
    for argv in (["inspect", "{llama}", "--plot", f"{T}/ok.png"],):
        add("cli", "cli", argv=argv, expect_ok=True, timeout=120)
    return out


# --- the worker side --------------------------------------------------------------------------------

def _setup(work: str) -> dict:
    """Base checkpoints (tiny Llama, untied head; tiny GPT-2, tied head, biases), their logits, and
    one corrupt checkpoint for the CLI. Run once, in its own process."""
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, HERE)
    from sfmp_compile import load_quantized, quantize, save_quantized
    from sfmp_compile.eval.models import tiny_gpt2, tiny_llama
    import hostile_checkpoints as hc
    ctx = {"tmp": work}
    for name, build in (("llama", tiny_llama), ("gpt2", tiny_gpt2)):
        torch.manual_seed(0)
        m = build()
        quantize(m, bits=2.5, salience="weight", block_rows=16, group_size=32)
        d = os.path.join(work, name)
        save_quantized(m, d)
        save_file({"logits": hc._logits(load_quantized(d)).contiguous()}, os.path.join(work, f"ref_{name}.safetensors"))
        ctx[name] = d
    c = hc._copy(ctx, ctx["llama"])
    hc._edit_tensor(c, f"{LLAMA_Q}.scales", hc.TENSOR_EDITS["scales_nan"][1])
    hc._resign(c)
    ctx["corrupt"] = c
    return ctx


def _worker(batch_path: str, ctx_path: str) -> None:
    import resource
    import warnings
    warnings.simplefilter("ignore")
    sys.path.insert(0, HERE)
    import torch
    from safetensors.torch import load_file
    import sfmp_compile  # noqa: F401  (imports counted in the cap's base)
    import transformers  # noqa: F401
    import hostile_checkpoints as hc
    import hostile_runtime as hr
    from hostile_classify import classify_exception
    torch.set_num_threads(1)
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
    cap = vm + (3 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    ctx = json.load(open(ctx_path))
    for name in ("llama", "gpt2"):
        ctx["ref_" + name] = load_file(os.path.join(ctx["tmp"], f"ref_{name}.safetensors"))["logits"]
    cases = {"ckpt_control": ckpt_control, **{n: getattr(hc, n) for n in ("ckpt_tensor", "ckpt_json", "ckpt_file", "ckpt_special", "ckpt_bias")},
             **{n: getattr(hr, n) for n in ("option", "weight", "backend", "kernel", "kernel_cache", "autotune_table", "autotune_race", "cli")}}
    for sc in json.load(open(batch_path)):
        print(f"S {sc['id']}", flush=True)
        t0 = time.perf_counter()
        try:
            verdict, detail = cases[sc["case"]](ctx, **sc["args"])
        except MemoryError as e:
            verdict, detail = "crash", f"MemoryError (cap {cap >> 20} MiB): {str(e)[:200]}"
        except BaseException as e:  # noqa: BLE001 - classifying every failure is the point
            verdict, detail = classify_exception(e)
        print("R " + json.dumps({"id": sc["id"], "verdict": verdict, "detail": detail,
                                 "seconds": round(time.perf_counter() - t0, 2)}), flush=True)


def ckpt_control(ctx, base, into):
    """The untampered checkpoint: must load to the reference logits bit for bit."""
    import hostile_checkpoints as hc
    from sfmp_compile import load_quantized
    return hc._same_logits(load_quantized(ctx[base], model=hc._skeleton(base) if into else None), ctx["ref_" + base])


# --- the parent side --------------------------------------------------------------------------------

def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TRITON_INTERPRET="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _run_batch(batch: list[dict], work: str, ctx_path: str, results: dict) -> None:
    """Run ``batch`` in workers, restarting after a crash or hang; fills results[id]."""
    todo = list(batch)
    while todo:
        path = os.path.join(work, f"batch_{todo[0]['id']}.json")
        json.dump(todo, open(path, "w"))
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", path, ctx_path], cwd=work,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in p.stdout] + [lines.put(None)], daemon=True).start()
        err: list[str] = []
        threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
        by_id = {sc["id"]: sc for sc in todo}
        current, started = None, time.time()
        while True:
            timeout = (by_id[current]["timeout"] if current is not None else 300) - (time.time() - started)
            try:
                line = lines.get(timeout=max(timeout, 0.1))
            except queue.Empty:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                if current is not None:
                    results[current] = {"verdict": "hang", "detail": f"no answer in {by_id[current]['timeout']} s (killed)",
                                        "seconds": by_id[current]["timeout"]}
                break
            if line is None:
                rc = p.wait()
                if current is not None:
                    tail = "".join(err)[-300:].strip().replace("\n", " | ")
                    results[current] = {"verdict": "crash", "detail": f"worker died (rc {rc}): {tail}", "seconds": round(time.time() - started, 2)}
                break
            if line.startswith("S "):
                current, started = int(line.split()[1]), time.time()
            elif line.startswith("R "):
                r = json.loads(line[2:])
                results[r.pop("id")] = r
                current = None
        todo = [sc for sc in todo if sc["id"] not in results]
        if current is None and todo and not p.poll() is None:
            for sc in todo:  # the worker exited cleanly without reaching these: should not happen
                results[sc["id"]] = {"verdict": "crash", "detail": "worker exited early", "seconds": 0}
            todo = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated categories")
    ap.add_argument("--out", default=os.path.join(HERE, "hostile.json"))
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(*args.worker)
    if args.setup:
        json.dump(_setup(args.setup), open(os.path.join(args.setup, "ctx.json"), "w"))
        return
    sys.path.insert(0, HERE)
    t0 = time.time()
    work = tempfile.mkdtemp(prefix="sfmp-hostile-")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--setup", work], env=_env(), check=True)
    ctx_path = os.path.join(work, "ctx.json")
    all_sc = scenarios()
    cats = list(dict.fromkeys(sc["category"] for sc in all_sc))
    if args.only:
        cats = [c for c in cats if c in args.only.split(",")]
    results: dict = {}
    for cat in cats:
        batch = [sc for sc in all_sc if sc["category"] == cat]
        t = time.time()
        _run_batch(batch, work, ctx_path, results)
        got = [results[sc["id"]]["verdict"] for sc in batch]
        print(f"{cat:12s} {len(batch):4d} scenarios  " + "  ".join(f"{v} {got.count(v)}" for v in VERDICTS)
              + f"  ({time.time() - t:.0f} s)", flush=True)
    rows = [{**{k: sc[k] for k in ("id", "category", "case", "args")}, **results[sc["id"]]} for sc in all_sc if sc["id"] in results]
    counts = {c: {v: sum(1 for r in rows if r["category"] == c and r["verdict"] == v) for v in VERDICTS} for c in cats}
    totals = {v: sum(c[v] for c in counts.values()) for v in VERDICTS}
    print(f"{'category':12s} {'n':>4s} " + " ".join(f"{v:>8s}" for v in VERDICTS))
    for c in cats:
        print(f"{c:12s} {sum(counts[c].values()):4d} " + " ".join(f"{counts[c][v]:8d}" for v in VERDICTS))
    print(f"{'total':12s} {len(rows):4d} " + " ".join(f"{totals[v]:8d}" for v in VERDICTS))
    for r in rows:
        if r["verdict"] in ("wrong", "crash", "hang"):
            print(f"  {r['verdict']:6s} #{r['id']} {r['case']} {json.dumps(r['args'])[:160]}: {r['detail'][:200]}")
    import torch
    meta = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.processor() or platform.platform()} (shared with other jobs)", "torch": torch.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "seconds": round(time.time() - t0, 1)}
    if not args.only:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "counts": counts, "totals": totals, "scenarios": rows}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
