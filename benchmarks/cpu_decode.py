"""CPU decode speed and resident weight memory of compiled SmolLM2: fp32 vs SFMP (1 thread).

One decode step = a forward of one new token against a KV cache of ``--context`` tokens. Prints a
table and writes JSON. Usage: python benchmarks/cpu_decode.py [--bits 3] [--json F]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch


def _step_timer(model, ids, context, repeats):
    from transformers import DynamicCache
    with torch.inference_mode():
        cache = DynamicCache()
        out = model(ids[:, :context], past_key_values=cache, use_cache=True)
        nxt = ids[:, context : context + 1]
        best = float("inf")
        for _ in range(repeats):
            c = copy.deepcopy(out.past_key_values)
            t = time.perf_counter()
            model(nxt, past_key_values=c, use_cache=True)
            best = min(best, time.perf_counter() - t)
    return best


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() == 0:
            continue
        seen.add(st.data_ptr())
        total += st.nbytes()
    return total


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=float, default=3.0)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="benchmarks/cpu_decode.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from sfmp_compile import sfmp_backend
    from sfmp_compile.models import load_model
    model, tok = load_model("smollm2")
    ids = torch.randint(0, model.config.vocab_size, (1, a.context + 1), generator=torch.Generator().manual_seed(0))
    rows = {}
    fp32_bytes = _weight_bytes(model)
    rows["fp32 eager"] = (_step_timer(model, ids, a.context, a.repeats), fp32_bytes)
    torch._dynamo.reset()
    cm = torch.compile(model)
    _step_timer(cm, ids, a.context, 2)
    rows["fp32 inductor"] = (_step_timer(cm, ids, a.context, a.repeats), fp32_bytes)
    torch._dynamo.reset()
    q = copy.deepcopy(model)
    be = sfmp_backend(bits=a.bits, salience="weight", release_weights=True)
    cq = torch.compile(q, backend=be)
    _step_timer(cq, ids, a.context, 2)
    # Resident weights: what is left of the float model (the tied embedding), the backend's true-bit
    # cache (kept so recompiles never re-quantize) and the int4 constants the compiled graphs hold.
    int4 = sum(e.packed.out_features * e.packed.in_features // 2
               + e.packed.out_features * -(-e.packed.in_features // e.packed.group_size) * 4 for e in be._cache.values())
    rows[f"sfmp {a.bits:g}-bit inductor (int4 CPU kernel)"] = (_step_timer(cq, ids, a.context, a.repeats),
                                                              _weight_bytes(q) + be.packed_bytes + int4)
    rows["  of which: true-bit cache / int4 graph constants"] = (float("nan"), be.packed_bytes + int4)
    print(f"true-bit cache {be.packed_bytes / 2**20:.1f} MiB, int4 constants {int4 / 2**20:.1f} MiB, "
          f"float left {_weight_bytes(q) / 2**20:.1f} MiB (fp32 linears were {sum(e.packed.n_weights for e in be._cache.values()) * 4 / 2**20:.1f} MiB)")
    print(f"SmolLM2 decode step, 1 thread, context {a.context}, min of {a.repeats}")
    print(f"{'model':45s} {'ms/token':>9s} {'x fp32 eager':>12s} {'weights MiB':>12s}")
    base = rows["fp32 eager"][0]
    for k, (t, b) in rows.items():
        print(f"{k:45s} {t * 1e3:9.2f} {base / t:12.2f} {b / 2**20:12.1f}")
    json.dump({k: {"ms": t * 1e3, "weight_bytes": b} for k, (t, b) in rows.items()}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
