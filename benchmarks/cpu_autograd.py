"""Per-call cost of the CPU ops outside inference mode: ``torch.no_grad`` (what HF ``generate`` uses) vs
``torch.inference_mode`` (which skips autograd's dispatch altogether).

Each row calls one op at M = 1 in a loop (``--calls`` calls), 1 thread, thread CPU time, min over
``--repeats`` loops, in microseconds per call. Ops: ``sfmp::linear_cpu.v2`` (panel layout, the
default CPU kernel), ``sfmp::embedding_cpu.v2`` (one token), ``sfmp::linear_cpu_int4`` called as an
op and through ``ops.cpu_int4.linear_cpu`` (the entry the dispatcher uses in eager). Layers: "tiny"
64 x 64 and SmolLM2's gate/up shape 1536 x 576, widths 3 and 4 in 512 x 128 blocks.

``--generate N`` adds ``model.generate`` of N new tokens (greedy, after an 8-token prompt) by SmolLM2
compiled at bits=3.0 as benchmarks/cpu_decode.py builds its "HF cache" row (``sfmp_backend``, the
default CPU kernel; ``Module.compile`` so that generate's calls run compiled), 1 thread, thread time,
min over 3 calls after 2 warm-ups: generate runs under no_grad, so every layer call pays what the
rows above measure.

``--before DIR`` also runs the same measurement with the package imported from another checkout
(e.g. the commit before a change) in a child process, so both sets come from one run.
JSON (``--json``, default benchmarks/cpu_autograd.json), keys stable:
  setup   {"threads", "clock", "calls", "repeats"}
  rows    {tree: {"<op> <layer>": {"no_grad_us", "inference_mode_us", "overhead_us"}}}, tree "after"
          (this checkout) and "before" (``--before``)
  generate {tree: {"new_tokens", "s", "tokens_per_s", "tokens"}} (``--generate``; "tokens": the ids
          generated, equal across trees when the compiled path computes the same)
Usage: python benchmarks/cpu_autograd.py [--before /path/to/other/checkout] [--calls 200] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LAYERS = {"tiny": (64, 64), "smollm2": (1536, 576)}


def _per_call_us(fn, calls, repeats, mode) -> float:
    best = float("inf")
    with mode():
        fn()
        for _ in range(repeats):
            t = time.thread_time()
            for _ in range(calls):
                fn()
            best = min(best, time.thread_time() - t)
    return best / calls * 1e6


def _calls():
    """{row name: zero-argument callable} for every op and layer."""
    from sfmp_compile.layouts import SFMPWeight
    from sfmp_compile.ops import cpu_int4
    from sfmp_compile.ops.dispatch import _int4_args, embedding_call, op_call
    from tests.codegen._util import random_packed
    out = {}
    for name, (n, k) in LAYERS.items():
        w = SFMPWeight.from_packed(random_packed(n, k, 512, 128, (3, 4), False, seed=n + k))
        x, ids = torch.randn(1, k), torch.tensor([[n // 2]])
        op, args = op_call(w.to_layout("panel"), "cpu")
        out[f"linear_cpu {name}"] = lambda op=op, args=args, x=x: op(x, *args)
        eop, eargs = embedding_call(w.to_layout("panel"), "cpu")
        out[f"embedding_cpu {name}"] = lambda op=eop, args=eargs, ids=ids: op(ids, *args)
        a4 = _int4_args(w.to_layout("int4"))
        out[f"linear_cpu_int4 op {name}"] = lambda a4=a4, x=x: torch.ops.sfmp.linear_cpu_int4(x, *a4)
        out[f"linear_cpu_int4 entry {name}"] = lambda a4=a4, x=x: cpu_int4.linear_cpu(x, *a4)
    return out


def measure(calls: int, repeats: int) -> dict:
    from sfmp_compile.ops import cpu
    if not cpu.available():
        sys.exit("the C++ CPU kernel cannot be built here")
    torch.set_num_threads(1)
    rows = {}
    for name, fn in _calls().items():
        ng = _per_call_us(fn, calls, repeats, torch.no_grad)
        im = _per_call_us(fn, calls, repeats, torch.inference_mode)
        rows[name] = {"no_grad_us": ng, "inference_mode_us": im, "overhead_us": ng - im}
    return rows


def generate(new_tokens: int) -> dict:
    """Greedy ``model.generate`` of ``new_tokens`` by a compiled 3-bit SmolLM2 (1 thread, thread time)."""
    from sfmp_compile import sfmp_backend
    from sfmp_compile.eval.models import load_model
    model, tok = load_model("smollm2")
    torch.set_num_threads(2)  # quantizing and compiling use both cores; timing uses one
    model.compile(backend=sfmp_backend(salience="weight", release_weights=True, model=model, bits=3.0))
    ids = tok("The capital of France is a city that", return_tensors="pt").input_ids[:, :8]

    def run():
        return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    run(), run()  # compiles the prefill and decode shapes
    torch.set_num_threads(1)
    best, out = float("inf"), None
    for _ in range(3):
        t = time.thread_time()
        out = run()
        best = min(best, time.thread_time() - t)
    return {"new_tokens": new_tokens, "s": best, "tokens_per_s": new_tokens / best, "tokens": out[0, 8:].tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="another checkout whose package is measured too (child process)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--generate", type=int, default=0, help="also time model.generate of N tokens (SmolLM2, 3-bit)")
    ap.add_argument("--json", default=str(HERE / "cpu_autograd.json"))
    ap.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)  # child: print rows as JSON
    a = ap.parse_args(argv)
    if a.emit:
        print(json.dumps({"rows": measure(a.calls, a.repeats), "generate": generate(a.generate) if a.generate else None}))
        return
    trees, gen = {}, {}
    if a.before:
        env = {**os.environ, "PYTHONPATH": str(Path(a.before).resolve())}
        r = subprocess.run([sys.executable, __file__, "--emit", "--calls", str(a.calls), "--repeats", str(a.repeats),
                            "--generate", str(a.generate)], env=env, capture_output=True, text=True, cwd=a.before)
        if r.returncode:
            sys.exit(f"the --before run failed:\n{r.stderr[-3000:]}")
        child = json.loads(r.stdout.strip().splitlines()[-1])
        trees["before"], gen["before"] = child["rows"], child["generate"]
    sys.path.insert(0, str(HERE.parent))
    trees["after"] = measure(a.calls, a.repeats)
    gen["after"] = generate(a.generate) if a.generate else None
    print(f"{'us per call (1 thread, min)':36s}" + "".join(f"{t + ' ' + m:>22s}" for t in trees
                                                         for m in ("no_grad", "inference_mode")))
    for name in trees["after"]:
        print(f"{name:36s}" + "".join(f"{trees[t][name]['no_grad_us']:22.1f}{trees[t][name]['inference_mode_us']:22.1f}"
                                      for t in trees if name in trees[t]))
    for t, g in gen.items():
        if g:
            print(f"generate {t}: {g['new_tokens']} tokens in {g['s']:.3f} s = {g['tokens_per_s']:.1f} tokens/s")
    if all(gen.values()) and len(gen) == 2:
        print("same tokens before and after:", gen["before"]["tokens"] == gen["after"]["tokens"])
    result = {"setup": {"threads": 1, "clock": "thread_time", "calls": a.calls, "repeats": a.repeats}, "rows": trees}
    if a.generate:
        result["generate"] = gen
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
