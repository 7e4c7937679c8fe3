"""``sfmp::linear_cpu``: the true-bit mixed-width GEMM on CPU, from the packed layout itself.

The kernel is C++ (``cpu_kernel.cpp``, AVX2 with a portable twin), built on first use by
``cpu_build`` and registered with the dispatcher under the packed signature (``signature.PACKED``)
plus a trailing ``flags`` int (:func:`flags`). Inductor sees a registered
op with a fake and an autograd formula, and calls it as an extern kernel. Its Autograd kernel is C++
too (``cpu_autograd.cpp``): a call that needs no gradient goes straight to the kernel (a Python
autograd kernel cost ~13-20 us a call under ``no_grad``); one that does records the frozen-weight
backward, :func:`linear_cpu_grad_input`.

Numerics: activations are quantized per (row, group) to int8 (absmax/127) — the same trade llama.cpp
makes with its Q8 activations — and all code x activation sums are exact int32. Against the fp32
reference the output SQNR is about 42-48 dB on Gaussian activations; tests assert >= 38 dB, and
exact agreement (to fp32 rounding) on activations that int8 represents exactly. The residual mode
(``cpu_kernel="precise"``) quantizes what int8 missed into a second int8 row, run in the same pass
over the weights: ~15-bit activations (tests assert >= 70 dB) at 1.3-1.5x the int8 time at M = 1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..format import PackedWeight
from ..layouts import panel as panel_layout
from . import cpu_build
from .reference import fake_embedding, fake_linear, frozen_grad_input
from .signature import PACKED, typed


@torch.compiler.assume_constant_result  # traced code (Dynamo) runs it eagerly and keeps the answer
def available() -> bool:
    """Whether ``torch.ops.sfmp.linear_cpu`` can run here (builds and registers it on first call)."""
    return cpu_build.register_python_side(__file__, {"sfmp::linear_cpu.v2": fake_linear,
                                                     "sfmp::embedding_cpu.v2": fake_embedding})


def linear_cpu(x: Tensor, *packed, portable: bool = False, residual: bool = False, panel: bool = False,
               maddubs: bool = False) -> Tensor:
    """y = x @ Ŵᵀ by the CPU kernel. x: [..., K] fp32/bf16/fp16 -> [..., N] x.dtype.
    ``packed``: the arguments of ``reference.packed_args`` (``qweight`` in panel order when
    ``panel``). ``residual``: two int8 passes over the activations; ``maddubs``: the AVX2 dot
    product even where VNNI is built (see :func:`flags`). Requires :func:`available`."""
    return linear_op()(x, *packed, flags(portable, residual, panel, maddubs))


def linear_op():
    """The OpOverload of the CPU kernel (its overload name versions the schema, see cpu_kernel.cpp)."""
    return torch.ops.sfmp.linear_cpu.v2


PANEL = 4  # the flags bit that says qweight is in the panel layout's order


def flags(portable: bool = False, residual: bool = False, panel: bool = False, maddubs: bool = False) -> int:
    """The op's trailing int: bit 0 forces the portable code (tests), bit 1 the residual activations
    (x ~ xs*xq + xs2*xq2, both int8: about 15-bit activations, a second maddubs per weight vector),
    bit 2 (:data:`PANEL`) reads ``qweight`` in the panel layout's order (layouts/panel.py), bit 3
    keeps AVX2's maddubs pair sums where the build has VNNI's dpbusd (tests: both give the same
    integer sums)."""
    return int(portable) | (2 if residual else 0) | (PANEL if panel else 0) | (8 if maddubs else 0)


@torch.library.custom_op("sfmp::linear_cpu_grad_input", mutates_args=())
@typed("grad", PACKED, ("flags", int))
def linear_cpu_grad_input(grad: Tensor, *args) -> Tensor:
    """The backward of ``sfmp::linear_cpu.v2`` (called by its C++ Autograd kernel): dX = dY @ Ŵ with
    frozen weights, exact in fp32 (not the int8 activations' numerics). grad: [..., N] -> [..., K] in
    grad.dtype; the packed arguments and ``flags`` as the forward got them (``qweight`` in panel
    order when ``flags & PANEL``)."""
    *packed, flags = args
    p = PackedWeight(*packed)
    if flags & PANEL:  # the words back in the packed order that the reference math reads
        p = panel_layout.to_packed({f: getattr(p, f) for f in panel_layout.TENSORS}, p.row_perm, p.col_perm,
                                   p.block_rows, p.group_size, p.out_features, p.in_features)
    return frozen_grad_input(grad, p)


@linear_cpu_grad_input.register_fake
def _(grad, *args):
    return grad.new_empty((*grad.shape[:-1], args[10]))
