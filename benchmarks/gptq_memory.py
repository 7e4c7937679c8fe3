"""Peak RSS of GPTQ on one Llama-3-8B down_proj-shaped layer (4096 x 14336), before and after the
in-place Hessian work (issue 11), and what the fp32 factorisation changes in the result.

Each variant runs in its own child process (peak RSS is per process: VmHWM, reset after the inputs
are built so the inputs are counted once and the peak of ``quantize_weight`` is its own):
- ``before``: the package at git revision --before (default: the parent of the in-place change),
  exported with ``git archive`` to a temporary directory: fp64 factorisation on copies.
- ``fp32`` / ``fp64``: this checkout's ``quantize_weight(..., overwrite_hessian=True)``, the call
  the model paths make, factorising in fp32 (the default) or fp64.

Inputs (the same in every child, seeded): W = 0.02·randn [4096, 14336]; a few hundred 14336-wide
activations X with heavy-tailed per-channel scales (a few outlier channels, like an MLP's
down_proj input); H = 2/T XᵀX; a random SFMP plan (random row/column orders, 2/3/4-bit blocks of
512 x 128). Result quality: GPTQ's own objective, the relative output error
‖X (W − Ŵ)ᵀ‖² / ‖X Wᵀ‖², and how far the dequantized weights of two variants differ.

  python benchmarks/gptq_memory.py [--variants before,fp32,fp64] [--tokens 512]
Writes benchmarks/gptq_memory.json (one entry per variant).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N, K = 4096, 14336


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def child(variant: str, tokens: int, out: str, shape: str) -> dict:
    import torch
    from sfmp_compile.config import QuantConfig
    from sfmp_compile.plan import LayerPlan
    from sfmp_compile.quantize import quantize_weight
    torch.set_num_threads(int(os.environ.get("SFMP_BENCH_THREADS", "2")))
    N, K = (int(d) for d in shape.split("x"))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g).mul_(0.02)
    scale = torch.randn(K, generator=g).mul_(0.75).exp_()  # log-normal channel scales
    scale[torch.randperm(K, generator=g)[:16]] *= 30  # outlier channels
    x = torch.randn(tokens, K, generator=g).mul_(scale)
    h = (x.t() @ x).mul_(2.0 / tokens)
    cfg = QuantConfig(bits=3.0, bit_choices=(2, 3, 4), quantizer="gptq")
    bits = torch.tensor([2, 3, 4], dtype=torch.uint8)[torch.randint(0, 3, (N // 512, K // 128), generator=g)]
    lp = LayerPlan(torch.randperm(N, generator=g), torch.randperm(K, generator=g), bits)
    kw = {}
    if variant in ("fp32", "fp64"):
        import functools
        import sfmp_compile.quantizers.gptq as gq
        gq.gptq_quantize = functools.partial(gq.gptq_quantize, factor_dtype=getattr(torch, {"fp32": "float32", "fp64": "float64"}[variant]))
        kw["overwrite_hessian"] = True
    inputs_rss = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: the peak below is quantize_weight's
    t0 = time.perf_counter()
    pw = quantize_weight(w, lp, cfg, h, name="down_proj", **kw)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    del h
    wq = pw.dequantize(torch.float32)
    rel = float((x @ (w - wq).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())
    torch.save(wq.half(), out)
    return {"variant": variant, "tokens": tokens, "inputs_rss_bytes": inputs_rss, "peak_rss_bytes": peak,
            "quantize_peak_over_inputs_bytes": peak - inputs_rss, "quantize_s": seconds,
            "rel_output_error": rel, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="fp32,before,fp64")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--before", default=None,
                    help="git revision of the 'before' package (default: the parent of the commit that removed "
                         "the fp64 copies from gptq.py)")
    ap.add_argument("--shape", default=f"{N}x{K}", help="N x K of the layer (a smaller one for a smoke run)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/gptq_memory.json"))
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], int(a.child[1]), a.child[2], a.child[3])), flush=True)
        return
    before = a.before or subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "-S", "h.double().clone()",
                                         "--", "sfmp_compile/quantizers/gptq.py"], capture_output=True, text=True,
                                        check=True).stdout.strip() + "^"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        old_src = Path(tmp) / "before"
        old_src.mkdir()
        subprocess.run(f"git -C {ROOT} archive {before} sfmp_compile | tar -x -C {old_src}", shell=True, check=True)
        for v in a.variants.split(","):
            src = old_src if v == "before" else ROOT
            out = str(Path(tmp) / f"{v}.pt")
            p = subprocess.run([sys.executable, __file__, "--child", v, str(a.tokens), out, a.shape], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(src)}, cwd=tmp)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode or line is None:
                sys.exit(f"variant {v} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
            r["source"] = "git " + before if v == "before" else "this checkout"
            print(json.dumps(r), flush=True)
            runs.append((r, out))
        import torch
        ref = next(((r, o) for r, o in runs if r["variant"] == "before"), runs[0])
        wr = torch.load(ref[1]).float()
        for r, o in runs:
            if r is ref[0]:
                continue
            wv = torch.load(o).float()
            r[f"vs_{ref[0]['variant']}"] = {"max_abs_diff": float((wv - wr).abs().max()),
                                           "frac_weights_equal": float((wv == wr).float().mean())}
            print(r["variant"], r[f"vs_{ref[0]['variant']}"], flush=True)
    meta = {"layer": a.shape, "machine": f"{os.cpu_count()} CPU cores", "command": " ".join(sys.argv),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(a.json).write_text(json.dumps({"meta": meta, "runs": [r for r, _ in runs]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
