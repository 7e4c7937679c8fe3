"""``sfmp::linear_cpu``: the true-bit mixed-width GEMM on CPU, from the packed layout itself.

The kernel is C++ (``cpu_kernel.cpp``, AVX2 with a portable twin), built on first use by
``cpu_build`` and registered with the dispatcher under the packed signature (``signature.PACKED``)
plus a trailing ``portable`` int (1 forces the portable code, for tests). Inductor sees a registered
op with a fake and an autograd formula, and calls it as an extern kernel.

Numerics: activations are quantized per (row, group) to int8 (absmax/127) — the same trade llama.cpp
makes with its Q8 activations — and all code x activation sums are exact int32. Against the fp32
reference the output SQNR is about 42-48 dB on Gaussian activations; tests assert >= 38 dB, and
exact agreement (to fp32 rounding) on activations that int8 represents exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import cpu_build
from .reference import fake_embedding, fake_linear, register_packed_autograd
from .signature import PACKED

_registered = False


@torch.compiler.assume_constant_result  # traced code (Dynamo) runs it eagerly and keeps the answer
def available() -> bool:
    """Whether ``torch.ops.sfmp.linear_cpu`` can run here (builds and registers it on first call)."""
    global _registered
    if _registered:
        return True
    if not cpu_build.load():
        return False
    op = torch.ops.sfmp.linear_cpu.default
    torch.library.register_fake("sfmp::linear_cpu")(fake_linear)
    torch.library.register_fake("sfmp::embedding_cpu")(fake_embedding)
    register_packed_autograd(op, 1 + len(PACKED) + 1)
    _registered = True
    return True


def linear_cpu(x: Tensor, *packed, portable: bool = False) -> Tensor:
    """y = x @ Ŵᵀ by the CPU kernel. x: [..., K] fp32/bf16/fp16 -> [..., N] x.dtype.
    ``packed``: the arguments of ``reference.packed_args``. Requires :func:`available`."""
    return torch.ops.sfmp.linear_cpu.default(x, *packed, int(portable))
