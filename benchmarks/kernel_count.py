"""How many distinct Triton kernels a whole SmolLM2 needs, per bit budget (issue 4: "report it").

Kernels are specialised on (family, SET of block widths), not on bit patterns, so the count is
families x distinct width sets over the model's layers. Families counted: the three M buckets'
(gemv, decode, prefill); gemvu, an opt-in alternative body for the gemv bucket chosen by tile
config, would add one source per width set where a table selects it. This plans SmolLM2 (weight salience: the
width sets depend on the allocation, not on calibration data), collects each layer's width set,
and generates every (family, width set) source with the real generator to count them and their
lines. CPU only, no kernel is launched. Prints a table and writes JSON.

    python benchmarks/kernel_count.py [--json benchmarks/kernel_count.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # generation only; never needs a GPU

BUDGETS = [  # (label, bits, options)
    ("2-level 2.5", 2.5, {}),
    ("2-level 2.75", 2.75, {}),
    ("2-level 3.0", 3.0, {}),
    ("2-level 3.25", 3.25, {}),
    ("3-level (2,3,4) 3.0", 3.0, {"bit_choices": (2, 3, 4)}),
    ("3-level (2,3,4) 3.5", 3.5, {"bit_choices": (2, 3, 4)}),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="benchmarks/kernel_count.json")
    a = ap.parse_args(argv)
    import torch
    from sfmp_compile import plan
    from sfmp_compile.codegen import generate
    from sfmp_compile.codegen.generate import KernelKey
    from sfmp_compile.eval.models import load_model

    torch.set_num_threads(1)
    model, _ = load_model("smollm2")
    families = ("gemv", "decode", "prefill")
    rows = []
    print(f"{'budget':24s} {'layers':>6s} {'width sets (layers)':48s} {'kernels':>7s} {'source lines':>12s}")
    for label, bits, opts in BUDGETS:
        t0 = time.perf_counter()
        p = plan(model, bits, salience="weight", **opts)
        sets = collections.Counter(tuple(sorted(set(lp.bits.flatten().tolist()))) for lp in p.layers.values())
        keys = [KernelKey(f, ws) for f in families for ws in sets]
        lines = sum(generate.emit_source(k).count("\n") for k in keys)
        shown = ", ".join(f"{{{','.join(map(str, ws))}}}: {n}" for ws, n in sorted(sets.items()))
        rows.append(dict(budget=label, bits=bits, layers=len(p.layers), width_sets={str(list(ws)): n for ws, n in sets.items()},
                         kernels=len(keys), source_lines=lines, plan_s=time.perf_counter() - t0))
        print(f"{label:24s} {len(p.layers):6d} {shown:48s} {len(keys):7d} {lines:12d}", flush=True)
    json.dump(dict(model="SmolLM2-135M", salience="weight", families=list(families), rows=rows),
              open(a.json, "w"), indent=1)
    print(f"# wrote {a.json}")


if __name__ == "__main__":
    main()
