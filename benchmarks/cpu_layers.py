"""The CPU kernel over a whole model's layers: weights streamed from DRAM (cold) vs in cache (hot), by layout.

One sweep calls ``sfmp::linear_cpu`` once per layer of SmolLM2's decoder (30 x q, k, v, o, gate,
up, down: 210 layers, random weights at the given widths, 512 x 128 blocks) in model order at
M = 1, so every weight comes from DRAM as in a decode step (the layers total more than the L3
cache); "hot" runs each layer ``--hot`` times in a row and counts one. 1 thread, inference mode,
thread CPU time (the machine is shared: wall time counts other processes), min over ``--repeats``.

JSON (``--json``, default benchmarks/cpu_layers.json), keys stable:
  setup            {"widths", "layers", "qweight_bytes", "cpu", "threads", "clock"}
  rows             one per layout ("packed", "panel"): {"cold_ms", "hot_ms", "cold_gbps"}
                   (cold_gbps = qweight bytes / cold time)
  panel_speedup    {"cold": packed cold_ms / panel cold_ms, "hot": the same for hot_ms}
Usage: python benchmarks/cpu_layers.py [--widths 3,4] [--repeats 5] [--hot 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from cpu_decode import _best  # noqa: E402

# SmolLM2-135M: hidden 576, MLP 1536, 9 query / 3 KV heads of 64, 30 layers.
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def _layers(widths, n_layers):
    from sfmp_compile.layouts import SFMPWeight
    from sfmp_compile.ops.dispatch import op_call
    from tests.codegen._util import random_packed
    out = []
    for i in range(n_layers):
        for j, (n, k) in enumerate(SHAPES):
            w = SFMPWeight.from_packed(random_packed(n, k, 512, 128, widths, False, seed=7 * i + j))
            calls = {lay: op_call(w.to_layout(lay), "cpu") for lay in ("packed", "panel")}
            out.append((torch.randn(1, k), calls, w.data["qweight"].numel() * 4))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="3,4")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hot", type=int, default=5)
    ap.add_argument("--json", default=str(HERE / "cpu_layers.json"))
    a = ap.parse_args(argv)
    from sfmp_compile.ops import cpu
    if not cpu.available():
        sys.exit("the C++ CPU kernel cannot be built here")
    torch.set_num_threads(1)
    widths = tuple(int(w) for w in a.widths.split(","))
    layers = _layers(widths, a.layers)
    nbytes = sum(b for _, _, b in layers)
    rows = {}
    with torch.inference_mode():
        for lay in ("packed", "panel"):
            def cold():
                for x, calls, _ in layers:
                    op, args = calls[lay]
                    op(x, *args)

            def hot():
                for x, calls, _ in layers:
                    op, args = calls[lay]
                    for _ in range(a.hot):
                        op(x, *args)
            cold()
            c = _best(cold, a.repeats, time.thread_time)
            h = _best(hot, a.repeats, time.thread_time) / a.hot
            rows[lay] = {"cold_ms": c * 1e3, "hot_ms": h * 1e3, "cold_gbps": nbytes / c / 1e9}
    speed = {k: rows["packed"][f"{k}_ms"] / rows["panel"][f"{k}_ms"] for k in ("cold", "hot")}
    print(f"{len(layers)} layers, widths {widths}, {nbytes / 2**20:.1f} MiB of qweight, 1 thread, thread CPU time")
    print(f"| layout | cold sweep ms | GB/s | hot sweep ms |\n|---|---|---|---|")
    for lay, r in rows.items():
        print(f"| {lay} | {r['cold_ms']:.2f} | {r['cold_gbps']:.2f} | {r['hot_ms']:.2f} |")
    print(f"panel speed-up: cold {speed['cold']:.2f}x, hot {speed['hot']:.2f}x")
    setup = {"widths": list(widths), "layers": len(layers), "qweight_bytes": nbytes, "cpu": platform.processor()
             or platform.machine(), "threads": 1, "clock": "thread_time"}
    Path(a.json).write_text(json.dumps({"setup": setup, "rows": rows, "panel_speedup": speed}, indent=1) + "\n")


if __name__ == "__main__":
    main()
