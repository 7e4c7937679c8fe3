"""CPU decode and prefill speed, resident weight memory and held-out PPL of SmolLM2: fp32, SFMP, llama.cpp.

One decode step = a forward of one new token against a KV cache of ``--context`` tokens; prefill = a
forward of ``--prefill`` tokens without a cache; each at 1 and 2 threads (min of repeats). SFMP rows
are ``torch.compile(model, backend=sfmp_backend(...))`` with the default CPU kernel (the true-bit
mixed-width C++ kernel over format v1, lm_head and the tied embedding at 8 bits), timed through
``eval.decode.StaticDecoder`` (static KV cache, one graph per length, no module guards, no per-call
Inductor asserts) unless the row says "HF cache" (the model called with a DynamicCache, as a plain user would); one row runs on
torch's int4 kernel for comparison. ``--llamacpp`` adds llama.cpp (F32, Q4_0, Q3_K_M, Q4_K_M) from
``benchmarks/llamacpp_peer.py`` (its own cached venv, built on first use) in the same run.

JSON keys (stable): per row name ("fp32 eager", "fp32 inductor", "fp32 static decode", "sfmp 3-bit HF cache",
"sfmp 3-bit", "sfmp BPW 3.5", "sfmp BPW 4.0", "sfmp 3-bit int4 kernel", "llama.cpp Q4_0", ...):
  ms, prefill_ms        1-thread decode ms/token and prefill ms
  threads               {"1": {"ms", "prefill_ms"}, "2": {...}}
  weight_bytes          resident weights (float left + quantized layers as held)
  ppl                   held-out PPL (``--eval-tokens`` tokens, windows of 512)
  linear_bpw            stored bits per weight of the decoder's linears (SFMP: the budget layers)
"memory": quantized_resident_bytes, true_bit_bytes (format v1 bytes of every quantized layer,
  head included), resident_over_true_bit, budget_linear_bpw, head_bytes; "head_8bit_ppl_cost_pct": PPL of
  fp32 with only lm_head/embedding at 8 bits vs fp32; "sqnr_vs_reference_db": compiled 3-bit logits
  vs the same model on the exact reference op; "sqnr_precise_vs_reference_db": the same with
  ``cpu_kernel="precise"`` (residual int8 activations); "profile": top ops of one 3-bit decode step (1 thread).
``--focus`` runs only fp32 eager, "sfmp 3-bit" and "llama.cpp Q4_0" (with ``--llamacpp``), the rows the
speed goals compare (committed as benchmarks/cpu_decode_focus.json, same keys); ``--quick`` the HF-cache row instead of the static one.
Usage: python benchmarks/cpu_decode.py [--llamacpp] [--focus | --quick] [--eval-tokens 2048] [--json F]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch


def _best(fn, repeats, clock=time.perf_counter):
    """The minimum over ``repeats`` calls of ``fn``, in seconds of ``clock``."""
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def _decode_timer(model, ids, context, repeats):
    from transformers import DynamicCache
    with torch.inference_mode():
        out = model(ids[:, :context], past_key_values=DynamicCache(), use_cache=True)
        nxt = ids[:, context : context + 1]
        caches = [copy.deepcopy(out.past_key_values) for _ in range(repeats + 2)]
        model(nxt, past_key_values=caches.pop(), use_cache=True)  # warm-up (compiles this shape)
        return _best(lambda: model(nxt, past_key_values=caches.pop(), use_cache=True), repeats)


def _prefill_timer(model, ids, repeats):
    with torch.inference_mode():
        model(ids, use_cache=False)
        return _best(lambda: model(ids, use_cache=False), repeats)


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() == 0:
            continue
        seen.add(st.data_ptr())
        total += st.nbytes()
    return total


def _static_timings(dec, ids, prompt, a) -> dict:
    """Decode and prefill through an eval.decode.StaticDecoder (static cache, one graph per length)."""
    th = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        dec.reset()
        dec(ids[:, : a.context])
        nxt = ids[:, a.context : a.context + 1]

        def step():
            dec.truncate(a.context)
            dec(nxt)
        step()  # warm-up (compiles the one-token graph)
        dec_ms = _best(step, a.repeats) * 1e3

        def prefill():
            dec.reset()
            dec(prompt)
        prefill()
        th[str(n)] = {"ms": dec_ms, "prefill_ms": _best(prefill, 3) * 1e3 if a.prefill else float("nan")}
    torch.set_num_threads(2)  # quantizing, compiling and scoring between timings use both cores
    return th


def _timings(model, ids, prompt, a) -> dict:
    th = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        dec = _decode_timer(model, ids, a.context, a.repeats)
        pre = _prefill_timer(model, prompt, 3) if a.prefill else float("nan")
        th[str(n)] = {"ms": dec * 1e3, "prefill_ms": pre * 1e3}
    torch.set_num_threads(2)
    return th


def _ppl(model, ev) -> float:
    from sfmp_compile.eval.metrics import perplexity
    with torch.inference_mode():
        return perplexity(model, ev, context=512)


def _head_cost(model, ev, ppl_fp32) -> float:
    """PPL cost (%) of the 8-bit lm_head (and the embedding tied to it) alone, on the exact weights."""
    from sfmp_compile.config import QuantConfig
    from sfmp_compile.plan import fixed_width_plan
    from sfmp_compile.quantize import quantize_weight
    m = copy.deepcopy(model)
    w = m.lm_head.weight
    cfg = QuantConfig(clip_search=False)  # what the backend does for skip_bits layers
    p = quantize_weight(w, fixed_width_plan(*w.shape, 8, cfg), cfg)
    with torch.no_grad():
        w.copy_(p.dequantize())  # tied: the embedding reads the same tensor
    return 100.0 * (_ppl(m, ev) / ppl_fp32 - 1.0)


def _profile(dec, ids, context) -> list[dict]:
    """Top ops of one decode step through the StaticDecoder ``dec`` (1 thread)."""
    from torch.profiler import ProfilerActivity, profile
    dec.reset()
    dec(ids[:, :context])
    dec(ids[:, context : context + 1])
    dec.truncate(context)
    torch.set_num_threads(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        dec(ids[:, context : context + 1])
    torch.set_num_threads(2)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in rows]


def _sfmp(model, ids, prompt, ev, a, name, rows, extra, static=True, **opts):
    from sfmp_compile import sfmp_backend
    from sfmp_compile.eval.decode import StaticDecoder
    torch._dynamo.reset()
    q = copy.deepcopy(model)
    be = sfmp_backend(salience="weight", release_weights=True, model=q, **opts)
    cq = torch.compile(q, backend=be)
    dec = StaticDecoder(q, max(a.prefill, a.context + 1) + 8, backend=be) if static else None
    th = _static_timings(dec, ids, prompt, a) if static else _timings(cq, ids, prompt, a)
    budget = [e.layer for e in be._cache.values() if e.name in be.plan.layers]
    n_budget = sum(w.out_features * w.in_features for w in budget)
    bpw = 8 * sum(w.stored_bytes for w in budget) / n_budget
    rows[name] = {**th["1"], "threads": th, "weight_bytes": _weight_bytes(q) + be.resident_bytes,
                  "ppl": _ppl(cq, ev) if a.eval_tokens else None, "linear_bpw": bpw}
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {th}, BPW {bpw:.3f}, PPL {rows[name]['ppl']}", flush=True)
    _save(rows, extra, a)
    return q, cq, be, dec


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=256, help="prompt tokens for the prefill timing (0: skip)")
    ap.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens for PPL (0: skip)")
    ap.add_argument("--llamacpp", action="store_true", help="add llama.cpp rows (builds its venv on first use)")
    ap.add_argument("--json", default="benchmarks/cpu_decode.json")
    ap.add_argument("--quick", action="store_true", help="fp32 eager, SFMP 3-bit (HF cache) and llama.cpp "
                    "F32/Q4_0/Q3_K_M only: no static-decode, BPW, int4 or SQNR rows")
    ap.add_argument("--focus", action="store_true", help="fp32 eager, SFMP 3-bit (static decode) and llama.cpp "
                    "Q4_0 only: the decode and prefill goals side by side in a short run")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    from sfmp_compile.budget import code_bits_for_bpw, plan_bpw
    from sfmp_compile.eval.models import load_model
    from sfmp_compile.eval.text import eval_tokens
    from sfmp_compile.plan import plan as make_model_plan
    model, tok = load_model("smollm2")
    ev = eval_tokens(tok, a.eval_tokens) if a.eval_tokens else None
    a.eval_ids = ev[0].tolist() if ev is not None else None
    src = ev if ev is not None else torch.randint(0, model.config.vocab_size, (1, 4096), generator=torch.Generator().manual_seed(0))
    ids, prompt = src[:, : a.context + 1], src[:, : max(a.prefill, 1)]

    rows, extra = {}, {}
    fp32_bytes = _weight_bytes(model)
    th = _timings(model, ids, prompt, a)
    ppl_fp32 = _ppl(model, ev) if ev is not None else None
    rows["fp32 eager"] = {**th["1"], "threads": th, "weight_bytes": fp32_bytes, "ppl": ppl_fp32, "linear_bpw": 32.0}
    print(f"[{time.strftime('%H:%M:%S')}] fp32 eager: {th}, PPL {ppl_fp32}", flush=True)
    if a.quick:
        return _quick(model, ids, prompt, ev, a, rows, extra, ppl_fp32)
    if a.focus:
        _, _, be, dec = _sfmp(model, ids, prompt, ev, a, "sfmp 3-bit", rows, extra, bits=3.0)
        extra["profile"] = _profile(dec, ids, a.context)
        extra.update(quantized_resident_bytes=be.resident_bytes, true_bit_bytes=be.packed_bytes,
                     resident_over_true_bit=be.resident_bytes / be.packed_bytes,
                     budget_linear_bpw=rows["sfmp 3-bit"]["linear_bpw"])
        return _finish(rows, extra, a, formats=("Q4_0",))
    torch._dynamo.reset()
    th = _timings(torch.compile(model), ids, prompt, a)
    rows["fp32 inductor"] = {**th["1"], "threads": th, "weight_bytes": fp32_bytes, "ppl": ppl_fp32, "linear_bpw": 32.0}
    from sfmp_compile.eval.decode import StaticDecoder
    torch._dynamo.reset()
    th = _static_timings(StaticDecoder(model, max(a.prefill, a.context + 1) + 8), ids, prompt, a)
    rows["fp32 static decode"] = {**th["1"], "threads": th, "weight_bytes": fp32_bytes, "ppl": ppl_fp32,
                                  "linear_bpw": 32.0}
    if ev is not None:
        extra["head_8bit_ppl_cost_pct"] = _head_cost(model, ev, ppl_fp32)

    _sfmp(model, ids, prompt, ev, a, "sfmp 3-bit HF cache", rows, extra, static=False, bits=3.0)
    q, cq, be, dec = _sfmp(model, ids, prompt, ev, a, "sfmp 3-bit", rows, extra, bits=3.0)
    extra["profile"] = _profile(dec, ids, a.context)
    packed = be.packed_bytes
    extra.update(quantized_resident_bytes=be.resident_bytes, true_bit_bytes=packed,
                 resident_over_true_bit=be.resident_bytes / packed, budget_linear_bpw=rows["sfmp 3-bit"]["linear_bpw"],
                 head_bytes=sum(e.layer.stored_bytes for e in be._cache.values() if e.name in be.fixed_layers))
    if ev is not None:  # the same quantized weights on the exact op: what the int8 activations cost
        from sfmp_compile import sfmp_backend
        from sfmp_compile.eval.metrics import sqnr_db
        window = ev[:, :512]
        ref = copy.deepcopy(model)
        precise = copy.deepcopy(model)
        with torch.inference_mode():
            fast = cq(window).logits
            torch._dynamo.reset()
            exact = torch.compile(ref, backend=sfmp_backend(plan=be.plan, cpu_kernel="reference", model=ref))(window).logits
            torch._dynamo.reset()
            residual = torch.compile(precise, backend=sfmp_backend(plan=be.plan, cpu_kernel="precise",
                                                                   model=precise))(window).logits
        extra["sqnr_vs_reference_db"] = sqnr_db(exact, fast)
        extra["sqnr_precise_vs_reference_db"] = sqnr_db(exact, residual)
        del ref, precise
    del q, cq, be, dec
    for target in (3.5, 4.0):
        make = lambda b: make_model_plan(model, bits=b, salience="weight")  # noqa: E731
        b, plan = code_bits_for_bpw(target, make)
        _sfmp(model, ids, prompt, ev, a, f"sfmp BPW {target:g}", rows, extra, plan=plan)
        print(f"  code bits {b:.4f}, plan BPW {plan_bpw(plan):.3f}")
    _sfmp(model, ids, prompt, ev, a, "sfmp 3-bit int4 kernel", rows, extra, static=False, bits=3.0, cpu_kernel="int4")

    _finish(rows, extra, a)


def _quick(model, ids, prompt, ev, a, rows, extra, ppl_fp32):
    if ev is not None:
        extra["head_8bit_ppl_cost_pct"] = _head_cost(model, ev, ppl_fp32)
    q, cq, be, _ = _sfmp(model, ids, prompt, ev, a, "sfmp 3-bit HF cache", rows, extra, static=False, bits=3.0)
    extra.update(quantized_resident_bytes=be.resident_bytes, true_bit_bytes=be.packed_bytes,
                 resident_over_true_bit=be.resident_bytes / be.packed_bytes,
                 budget_linear_bpw=rows["sfmp 3-bit HF cache"]["linear_bpw"],
                 head_bytes=sum(e.layer.stored_bytes for e in be._cache.values() if e.name in be.fixed_layers))
    del q, cq, be
    _finish(rows, extra, a, formats=("F32", "Q4_0", "Q3_K_M"))


def _save(rows, extra, a) -> None:
    """Write what is measured so far (a later crash keeps the finished rows; the last write is complete)."""
    meta = dict(extra, threads=[1, 2], context=a.context, prefill_tokens=a.prefill, eval_tokens=a.eval_tokens)
    with open(a.json, "w") as f:
        json.dump({**rows, "memory": meta}, f, indent=1)


def _finish(rows, extra, a, formats=None):
    if a.llamacpp:
        import importlib.util
        import pathlib
        spec = importlib.util.spec_from_file_location("llamacpp_peer", pathlib.Path(__file__).with_name("llamacpp_peer.py"))
        peer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peer)
        got = peer.run_llamacpp(formats=formats or peer.FORMATS, context=a.context, prefill=a.prefill,
                                repeats=a.repeats, eval_ids=a.eval_ids)
        for k, r in got.items():
            rows[k] = {**r["threads"]["1"], "threads": r["threads"], "weight_bytes": r.get("weight_bytes"),
                       "ppl": r.get("ppl"), "linear_bpw": r.get("linear_bpw")}

    print(f"\nSmolLM2 on CPU: decode step at context {a.context} (min of {a.repeats}), prefill of {a.prefill} tokens "
          f"(min of 3), PPL on {a.eval_tokens} held-out tokens")
    print(f"{'model':26s} {'1T ms/tok':>9s} {'2T ms/tok':>9s} {'1T pre ms':>9s} {'2T pre ms':>9s} {'MiB':>7s} "
          f"{'lin BPW':>7s} {'PPL':>8s}")
    for k, r in rows.items():
        t1, t2 = r["threads"]["1"], r["threads"]["2"]
        ppl = f"{r['ppl']:8.3f}" if r.get("ppl") else f"{'-':>8s}"
        wb = f"{r['weight_bytes'] / 2**20:7.1f}" if r.get("weight_bytes") else f"{'-':>7s}"
        print(f"{k:26s} {t1['ms']:9.2f} {t2['ms']:9.2f} {t1['prefill_ms']:9.1f} {t2['prefill_ms']:9.1f} {wb} "
              f"{r['linear_bpw'] or float('nan'):7.3f} {ppl}")
    print("memory:", {k: v for k, v in extra.items() if k != "profile"})
    print("one 3-bit decode step, top ops by self time (1 thread):")
    for p in extra.get("profile", []):
        print(f"  {p['op'][:60]:60s} {p['calls']:5d} {p['self_ms']:8.3f} ms")
    _save(rows, extra, a)


if __name__ == "__main__":
    main()
