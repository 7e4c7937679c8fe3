"""One layer of the CPU kernel, hot in cache, per shape and width set: throughput in weights/s.

Each row builds a random layer (``tests.helpers.random_packed``, 512 x 128 blocks, panel layout) and
times ``sfmp::linear_cpu`` on it with the weights in cache, 1 thread, inference mode, thread CPU time,
the minimum over ``--repeats`` windows of ``--calls`` calls (short windows: the shared machine's
other processes disturb long ones). Used for kernel-loop A/Bs: run it from two checkouts one after
the other (each builds and caches its own kernel).

JSON (``--json``, default benchmarks/cpu_layer_hot.json), keys stable:
  setup   {"m": activation rows, "calls", "repeats", "threads": 1, "clock": "thread_time"}
  rows    one per "<rows>x<cols> w<widths>": {"us": microseconds per call, "gw_per_s": rows*cols*m / time / 1e9}
Usage: python benchmarks/cpu_layer_hot.py [--m 1] [--calls 20] [--repeats 80]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from cpu_decode import _best  # noqa: E402

CASES = [(1536, 576, (3,)), (576, 1536, (3,)), (1536, 576, (4,)), (1536, 576, (2,)), (1536, 576, (2, 3)),
         (1536, 576, (3, 4)), (8192, 576, (8,))]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1, help="activation rows (1: decode, 256: prefill)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=80)
    ap.add_argument("--json", default=str(HERE / "cpu_layer_hot.json"))
    a = ap.parse_args(argv)
    from sfmp_compile.layouts import SFMPWeight
    from sfmp_compile.ops import cpu
    from sfmp_compile.ops.dispatch import op_call
    from tests.helpers import random_packed
    if not cpu.available():
        sys.exit("the C++ CPU kernel cannot be built here")
    torch.set_num_threads(1)
    rows = {}
    with torch.inference_mode():
        for n, k, widths in CASES:
            w = SFMPWeight.from_packed(random_packed(n, k, 512, 128, widths, False, seed=1))
            op, args = op_call(w.to_layout("panel"), "cpu")
            x = torch.randn(a.m, k)
            op(x, *args)

            def window():
                for _ in range(a.calls):
                    op(x, *args)
            best = _best(window, a.repeats, time.thread_time) / a.calls
            name = f"{n}x{k} w{','.join(map(str, widths))}"
            rows[name] = {"us": best * 1e6, "gw_per_s": n * k * a.m / best / 1e9}
            print(f"| {name:18s} | {best * 1e6:9.1f} us | {rows[name]['gw_per_s']:6.2f} Gw/s |", flush=True)
    setup = {"m": a.m, "calls": a.calls, "repeats": a.repeats, "threads": 1, "clock": "thread_time"}
    Path(a.json).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
