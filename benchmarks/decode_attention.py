"""Before/after of the CPU decode-attention kernel and last-position-only logits, in one run.

"before" is StaticDecoder as it was: SDPA over every slot of the static cache on one-token steps,
and the head over every position (prefill computes 256 x 49152 logits to keep one). "after" is
StaticDecoder now: ``sfmp::decode_attention_cpu`` (only the filled slots) and ``logits_to_keep=1``.
Both run the same quantized SmolLM2 (bits=3.0, the default CPU kernel), the same backend, the same
cache length; repeats alternate between the two so drift hits both alike. Clock: ``time.thread_time``
(1 thread, so all of torch's work is on this thread), min of ``--repeats``.
Also the op alone on SmolLM2's attention shape (H 9, KVH 3, D 64) at one layer: SDPA over the whole
cache (what the compiled step ran), SDPA over only the filled slots (not expressible in one static
graph; the floor SDPA could reach), and the kernel.
Usage: python benchmarks/decode_attention.py [--context 64] [--prefill 256] [--repeats 20] [--json F]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def _best(fns: dict, repeats: int) -> dict:
    """{name: min seconds of thread CPU time over ``repeats`` calls}, the calls interleaved."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - t)
    return best


def _op_timings(max_len: int, context: int, repeats: int) -> dict:
    from sfmp_compile.ops import attention_cpu
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 9, 1, 64, generator=g), torch.randn(1, 3, max_len, 64, generator=g), torch.randn(1, 3, max_len, 64, generator=g)
    mask = torch.zeros(1, 1, 1, max_len, dtype=torch.bool)
    mask[..., : context + 1] = True
    qg = q.view(1, 3, 3, 64)
    fns = {
        "sdpa whole cache": lambda: F.scaled_dot_product_attention(qg, k, v, attn_mask=mask),
        "sdpa filled slots only": lambda: F.scaled_dot_product_attention(qg, k[:, :, : context + 1], v[:, :, : context + 1]),
        "kernel": lambda: attention_cpu.decode_attention(q, k, v, mask),
        "kernel portable": lambda: attention_cpu.decode_attention(q, k, v, mask, portable=True),
        "kernel, cache full": lambda: attention_cpu.decode_attention(q, k, v, None),
    }
    return {n: s * 1e6 for n, s in _best(fns, repeats * 50).items()}  # microseconds, one layer


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="benchmarks/decode_attention.json")
    a = ap.parse_args(argv)
    from sfmp_compile import sfmp_backend
    from sfmp_compile.eval.decode import StaticDecoder
    from sfmp_compile.eval.models import load_model
    from sfmp_compile.ops import attention_cpu

    class Before(StaticDecoder):
        """StaticDecoder before this change: SDPA on one-token steps, the head over every position."""

        def _forward(self, ids, positions):
            out = self.model(ids, past_key_values=self.cache, cache_position=positions, use_cache=True,
                             sfmp_decode_kernel=False)
            return out.logits[:, -1]

    assert attention_cpu.available()
    torch.set_num_threads(1)  # before compiling: Dynamo's global-state guard includes the thread count
    model, _ = load_model("smollm2")
    max_len = max(a.prefill, a.context + 1) + 8
    src = torch.randint(0, model.config.vocab_size, (1, max_len), generator=torch.Generator().manual_seed(0))
    ids, prompt = src[:, : a.context + 1], src[:, : max(a.prefill, a.context)]
    be = sfmp_backend(salience="weight", release_weights=True, model=model, bits=3.0)
    decs = {"before": Before(model, max_len, backend=be), "after": StaticDecoder(model, max_len, backend=be)}
    logits = {}
    for name, dec in decs.items():  # compile both graphs (prefill length, one token) before any timing
        t = time.perf_counter()
        dec(prompt)
        dec.truncate(a.context)  # the context's cache entries are the prompt's first ones: no third graph
        logits[name] = dec(ids[:, a.context :])
        print(f"[{time.strftime('%H:%M:%S')}] {name}: compiled in {time.perf_counter() - t:.0f} s", flush=True)
    diff = float((logits["before"] - logits["after"]).abs().max())

    def step(dec):
        dec.truncate(a.context)
        dec(ids[:, a.context :])

    def prefill(dec):
        dec.reset()
        dec(prompt)
    for dec in decs.values():
        dec.reset()
        dec(prompt)
    d = _best({n: (lambda dec=dec: step(dec)) for n, dec in decs.items()}, a.repeats)
    p = _best({n: (lambda dec=dec: prefill(dec)) for n, dec in decs.items()}, a.repeats)
    ops = _op_timings(max_len, a.context, a.repeats)
    res = {"context": a.context, "cache_len": max_len, "prefill_tokens": a.prefill, "repeats": a.repeats,
           "clock": "time.thread_time, 1 thread, min", "decode_ms": {n: s * 1e3 for n, s in d.items()},
           "prefill_ms": {n: s * 1e3 for n, s in p.items()}, "max_abs_logit_diff": diff,
           "op_us_per_layer": ops, "load_avg": open("/proc/loadavg").read().split()[:3]}
    print(json.dumps(res, indent=1), flush=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
