"""CPU decode and prefill speed and resident weight memory of compiled SmolLM2: fp32 vs SFMP (1 thread).

One decode step = a forward of one new token against a KV cache of ``--context`` tokens; prefill = a
forward of ``--prefill`` tokens without a cache. Prints a table and writes JSON.
Usage: python benchmarks/cpu_decode.py [--bits 3] [--prefill 256] [--json F]
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


def _prefill_timer(model, ids, repeats):
    with torch.inference_mode():
        model(ids, use_cache=False)  # warm-up (compiles this length)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            model(ids, use_cache=False)
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


def _live_tensor_bytes() -> int:
    """Storage bytes of every live CPU tensor the garbage collector can see (each storage once)."""
    import gc
    import warnings
    from torch._subclasses.fake_tensor import FakeTensor
    gc.collect()
    seen, total = set(), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on some lazy torch module attributes warns
        for o in gc.get_objects():
            if not isinstance(o, torch.Tensor) or isinstance(o, FakeTensor) or o.device.type != "cpu":
                continue
            try:
                st = o.untyped_storage()
                ptr, n = st.data_ptr(), st.nbytes()
            except Exception:  # functional / meta tensors left by tracing own no memory
                continue
            if ptr not in seen and n:
                seen.add(ptr)
                total += n
    return total


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=float, default=3.0)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=256, help="prompt tokens for the prefill timing (0: skip)")
    ap.add_argument("--json", default="benchmarks/cpu_decode.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from sfmp_compile import sfmp_backend
    from sfmp_compile.eval.models import load_model
    model, tok = load_model("smollm2")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, a.context + 1), generator=g)
    prompt = torch.randint(0, model.config.vocab_size, (1, max(a.prefill, 1)), generator=g)

    def timings(m):
        dec = _step_timer(m, ids, a.context, a.repeats)
        pre = _prefill_timer(m, prompt, 3) if a.prefill else float("nan")
        return dec, pre

    rows = {}
    fp32_bytes = _weight_bytes(model)
    rows["fp32 eager"] = (*timings(model), fp32_bytes)
    torch._dynamo.reset()
    cm = torch.compile(model)
    _step_timer(cm, ids, a.context, 2)
    rows["fp32 inductor"] = (*timings(cm), fp32_bytes)
    torch._dynamo.reset()
    q = copy.deepcopy(model)
    live_before = _live_tensor_bytes()
    be = sfmp_backend(bits=a.bits, salience="weight", release_weights=True)
    cq = torch.compile(q, backend=be)
    _step_timer(cq, ids, a.context, 2)
    # Resident weights: what is left of the float model (the tied embedding) plus the backend's
    # cache, which holds each CPU layer only in its int4 form; every compiled graph takes its
    # constants from that cache. Cross-check: the storage bytes of ALL live tensors the quantized
    # compile added (would count any copy Inductor or a recompile made).
    fp32_linears = sum(lp.shape[0] * lp.shape[1] * 4 for lp in be.plan.layers.values())
    float_left = _weight_bytes(q)
    added = _live_tensor_bytes() - live_before + be.released_bytes  # released floats were in live_before
    rows[f"sfmp {a.bits:g}-bit inductor (int4 CPU kernel)"] = (*timings(cq), float_left + be.resident_bytes)
    rows["  of which: quantized linears (resident)"] = (float("nan"), float("nan"), be.resident_bytes)
    print(f"quantized linears resident {be.resident_bytes / 2**20:.1f} MiB = {be.resident_bytes / fp32_linears:.3f} "
          f"of fp32 linears ({fp32_linears / 2**20:.1f} MiB); true-bit checkpoint form {be.packed_bytes / 2**20:.1f} MiB; "
          f"float left {float_left / 2**20:.1f} MiB; live tensors the quantized compile added (beyond the freed floats) "
          f"{added / 2**20:.1f} MiB")
    extra = {"fp32_linear_bytes": fp32_linears, "quantized_resident_bytes": be.resident_bytes,
             "resident_fraction_of_fp32": be.resident_bytes / fp32_linears, "true_bit_bytes": be.packed_bytes,
             "live_tensor_bytes_added": added, "threads": 1, "context": a.context, "prefill_tokens": a.prefill,
             "bits": a.bits}
    print(f"SmolLM2 on CPU, 1 thread: decode step at context {a.context} (min of {a.repeats}), "
          f"prefill of {a.prefill} tokens (min of 3)")
    print(f"{'model':45s} {'ms/token':>9s} {'x fp32 eager':>12s} {'prefill ms':>11s} {'x fp32 eager':>12s} "
          f"{'weights MiB':>12s}")
    d0, p0 = rows["fp32 eager"][:2]
    for k, (d, pf, b) in rows.items():
        print(f"{k:45s} {d * 1e3:9.2f} {d0 / d:12.2f} {pf * 1e3:11.1f} {p0 / pf:12.2f} {b / 2**20:12.1f}")
    out = {k: {"ms": d * 1e3, "prefill_ms": pf * 1e3, "weight_bytes": b} for k, (d, pf, b) in rows.items()}
    json.dump({**out, "memory": extra}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
