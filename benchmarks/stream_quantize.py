"""Streamed quantization of a Llama-3-8B-shaped checkpoint: peak RSS, seconds per decoder layer, and
the projection to 70B.

    python benchmarks/stream_quantize.py [--quantizer rtn,gptq] [--salience activation] [--layers N] [--tokens 256]
                                         [--cache-dir DIR] [--json benchmarks/stream_quantize.json]

The model: hidden 4096, 32 decoder layers, MLP 14336, GQA 32 query / 8 key-value heads, vocab
128256, untied head; random bf16 weights (N(0, 0.02²), seeded), generated tensor by tensor straight
into safetensors shards under ``--cache-dir`` (default ~/.cache/sfmp_compile/llama3-8b-shaped,
about 16 GB; reused by later runs, a ``complete`` marker says it is whole). Nothing is downloaded.

Each run (one per quantizer) is a fresh subprocess calling ``sfmp_compile.stream.stream_quantize``
with ``--salience`` (activation, or fisher: stream_fisher.py's layer-by-layer backward) at 2.75 code
bits (group 128, 512-row blocks), calibrated on ``--tokens`` random token ids (sequences of 128), and
reports its peak RSS at its end (``peak_rss``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, or
VmHWM when smaller), file-backed pages included.
``--layers N`` quantizes the first N decoder layers as an N-layer model (the embeddings and head
are still read and written): a quick check, or GPTQ when all 32 do not fit the time at hand.

JSON (``--json``): {"meta": {...}, "runs": [...]}, one run entry per quantizer with
  params          parameters of the (prefix) model quantized: decoder layers' + embeddings + head
  decoder_layers  how many decoder layers were quantized (32 = the whole model)
  quantizer       "rtn" or "gptq"; salience "activation" or "fisher"; bits 2.75; calib_tokens
  peak_rss_bytes  peak RSS of the quantizing process (ru_maxrss, bytes)
  s_per_layer     (salience pass + quantize pass) seconds / decoder layers, excluding writing the
                  embeddings/head and the final copy of model.safetensors (``write_s``)
  salience_s, quantize_s, write_s, total_s   the phases as stream_quantize reports them
  checkpoint_bytes   size of the written checkpoint directory
  when, command   when it ran and the command line that ran it
  projection_70b  Llama-3-70B (80 layers, hidden 8192, MLP 28672, 64/8 heads): ``hours`` = s_per_layer
                  scaled by its per-layer weights (×3.9; RTN is linear in weights, GPTQ's K³
                  Cholesky terms make it a lower bound there) × 80 layers; ``peak_rss_bytes`` = the
                  measured peak × 3.9 (what is resident is one layer, ×3.9 at 70B, or one embedding,
                  ×2: an upper bound)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256)
SHAPE_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=128256)
LAYERS_PER_SHARD = 4


def tensor_specs(shape: dict, n_layers: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(state-dict key, shape) of every tensor of a Llama with ``shape``, in file order."""
    h, m, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for i in range(shape["num_hidden_layers"] if n_layers is None else n_layers):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                  (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                  (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (m, h)), (p + "mlp.up_proj.weight", (m, h)),
                  (p + "mlp.down_proj.weight", (h, m))]
    return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def _numel(s) -> int:
    n = 1
    for d in s:
        n *= d
    return n


def _write_shard(path: Path, specs, seed: int) -> None:
    """One bf16 safetensors shard, header first (shapes are known), then each tensor generated and
    written in turn: never more than one tensor in memory."""
    offsets, off = {}, 0
    for k, s in specs:
        offsets[k] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + 2 * _numel(s)]}
        off += 2 * _numel(s)
    raw = json.dumps({"__metadata__": {"format": "pt"}, **offsets}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k, s in specs:
            t = torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g).mul_(0.02)
            f.write(t.to(torch.bfloat16).view(torch.uint8).numpy().data if t.dim() else b"")
            del t


def make_model(cache: Path) -> Path:
    """The 8B-shaped model directory under ``cache`` (generated once, ~16 GB)."""
    done = cache / "complete"
    if done.exists():
        return cache
    from transformers import LlamaConfig
    cache.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(SHAPE)
    n_shards = -(-SHAPE["num_hidden_layers"] // LAYERS_PER_SHARD) + 1
    groups: list[list] = [[] for _ in range(n_shards)]
    for k, s in specs:
        i = int(k.split(".")[2]) // LAYERS_PER_SHARD if k.startswith("model.layers.") else n_shards - 1
        groups[i].append((k, s))
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        t0 = time.perf_counter()
        _write_shard(cache / name, group, seed=i)
        weight_map.update({k: name for k, _ in group})
        print(f"  wrote {name} ({sum(2 * _numel(s) for _, s in group) / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    with open(cache / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    LlamaConfig(**SHAPE, tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=8192,
                rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, dtype="bfloat16").save_pretrained(cache)
    done.write_text("ok\n")
    return cache


def layer_params(shape: dict) -> int:
    return sum(_numel(s) for k, s in tensor_specs(shape, 1) if k.startswith("model.layers.0."))


def outer_params(shape: dict) -> int:
    return 2 * shape["vocab_size"] * shape["hidden_size"] + shape["hidden_size"]


def peak_rss() -> int:
    """This process's peak RSS in bytes: ru_maxrss, or VmHWM when smaller (ru_maxrss survives fork +
    exec, so a child starts at its parent's peak; VmHWM is this address space's own)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        return min(peak, hwm)
    except (OSError, StopIteration):
        return peak


def run_one(model_dir: str, out_dir: str, quantizer: str, salience: str, layers: int | None, tokens: int) -> dict:
    """In the child process: one streamed quantization and its peak RSS."""
    sys.path.insert(0, str(ROOT))
    from sfmp_compile.stream import stream_quantize
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("SFMP_BENCH_THREADS", "2")))
    seq = min(128, tokens)
    cal = [torch.randint(0, SHAPE["vocab_size"], (1, seq)) for _ in range(max(1, tokens // seq))]
    r = stream_quantize(model_dir, out_dir, 2.75, calibration=cal, salience=salience, quantizer=quantizer,
                        overwrite=True, num_layers=layers)
    r["peak_rss_bytes"] = peak_rss()
    r["calib_tokens"] = seq * len(cal)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quantizer", default="rtn,gptq")
    ap.add_argument("--salience", default="activation", choices=("activation", "fisher"))
    ap.add_argument("--layers", type=int, default=None, help="quantize only the first N decoder layers")
    ap.add_argument("--tokens", type=int, default=256, help="calibration tokens (sequences of 128)")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache/sfmp_compile/llama3-8b-shaped"))
    ap.add_argument("--out-dir", default=None, help="where checkpoints go (default: CACHE_DIR/../stream-out)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/stream_quantize.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(run_one(a.cache_dir, a.out_dir, a.child, a.salience, a.layers, a.tokens)), flush=True)
        return
    model_dir = make_model(Path(a.cache_dir).expanduser())
    out_dir = a.out_dir or str(Path(model_dir).parent / "stream-out")
    runs = []
    old = json.loads(Path(a.json).read_text()).get("runs", []) if Path(a.json).exists() else []
    for q in a.quantizer.split(","):
        cmd = [sys.executable, __file__, "--child", q, "--cache-dir", str(model_dir), "--out-dir", out_dir,
               "--tokens", str(a.tokens), "--salience", a.salience] + (["--layers", str(a.layers)] if a.layers else [])
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if p.returncode or line is None:
            sys.exit(f"run {q} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        n = r["decoder_layers"]
        per_layer = (r["salience_s"] + r["quantize_s"]) / n
        lp8, lp70 = layer_params(SHAPE), layer_params(SHAPE_70B)
        entry = {
            "params": n * lp8 + outer_params(SHAPE), "decoder_layers": n, "quantizer": q, "salience": a.salience,
            "bits": 2.75, "calib_tokens": r["calib_tokens"], "peak_rss_bytes": r["peak_rss_bytes"],
            "s_per_layer": per_layer, **{k: r[k] for k in ("salience_s", "quantize_s", "write_s", "total_s", "weight_bits")},
            "checkpoint_bytes": sum(f.stat().st_size for f in Path(out_dir).iterdir()),
            "projection_70b": {
                "params": 80 * lp70 + outer_params(SHAPE_70B),
                "hours": per_layer * lp70 / lp8 * 80 / 3600,
                # everything resident scales with one layer (x3.9) or one embedding (x2): x3.9 bounds it
                "peak_rss_bytes": int(r["peak_rss_bytes"] * lp70 / lp8),
            },
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
        }
        print(json.dumps(entry), flush=True)
        runs.append(entry)
    run_key = lambda r: (r["quantizer"], r.get("salience", "activation"), r["decoder_layers"])
    keep = [o for o in old if run_key(o) not in {run_key(r) for r in runs}]
    meta = {"model": "Llama-3-8B-shaped, random bf16 weights", "shape": SHAPE, "machine": f"{os.cpu_count()} CPU cores",
            "threads": int(os.environ.get("SFMP_BENCH_THREADS", "2"))}
    Path(a.json).write_text(json.dumps({"meta": meta, "runs": keep + runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
