"""``sfmp::decode_attention_cpu``: one-token attention over a grouped KV cache that reads only the
slots its mask attends (``attention_cpu.cpp``, AVX2 with a portable twin).

Why: a static KV cache run through SDPA costs its whole length per layer per token, filled or not
(SmolLM2 at a 264-slot cache holding 64 tokens: 4x the work). The kernel is built into the same
shared object as the CPU GEMM (``cpu_build.SOURCES``); Python adds the fake, so Inductor calls it as
an extern op. Where it cannot be built, :func:`available` is False and callers keep SDPA.
Semantics are SDPA's for one query token: fp32 safe softmax (fp16/bf16 computed in fp32, output in
the input dtype); a row with nothing attended gives zeros, as CPU SDPA does.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import cpu_build

OP_NAME = "sfmp::decode_attention_cpu.v1"


def _fake(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, flags: int = 0) -> Tensor:
    return q.new_empty(q.shape)


@torch.compiler.assume_constant_result  # traced code (Dynamo) runs it eagerly and keeps the answer
def available() -> bool:
    """Whether ``torch.ops.sfmp.decode_attention_cpu`` can run here (builds and registers it on first call)."""
    return cpu_build.register_python_side(__file__, {OP_NAME: _fake})


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None,
                     portable: bool = False) -> Tensor:
    """softmax(scale · q kᵀ + mask) v for one query token; query head h reads KV head h // (H / KVH).

    q [B, H, 1, D], k/v [B, KVH, L, D] (H % KVH == 0), fp32/fp16/bf16, all one dtype; mask None,
    bool (True = attend) or additive float (-inf = masked), broadcastable as [B|1, H|1, 1, >= L]
    (only its first L slots are read). scale defaults to 1/sqrt(D). Returns [B, H, 1, D] in q's
    dtype. Masked slots' K/V rows are never read. ``portable`` forces the non-AVX2 code (tests).
    Requires :func:`available`.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return torch.ops.sfmp.decode_attention_cpu.v1(q, k, v, mask, float(scale), int(portable))
