"""Reference mixed-precision GEMM: unpack, dequantize, matmul, in plain torch (any device).

Registered as ``torch.ops.sfmp.linear_ref`` so it can sit inside compiled graphs and export; it is
the oracle for the Triton kernels and the fallback wherever no faster path exists.
Arguments after ``x``: the packed layout's tensors, the permutations and the geometry
(``signature.PACKED``; :func:`packed_args` lists them for a PackedWeight).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..format import PackedWeight
from .signature import PACKED, names, typed


def packed_args(p: PackedWeight) -> tuple:
    """The positional arguments after ``x`` that every op over the packed layout takes, in order."""
    return tuple(getattr(p, n) for n in names(PACKED))


def _packed(args) -> PackedWeight:
    return PackedWeight(*args[:len(PACKED)])


@torch.library.custom_op("sfmp::linear_ref", mutates_args=())
@typed("x", PACKED)
def linear_ref(x: Tensor, *packed) -> Tensor:
    """y = x @ Ŵᵀ for a packed weight. x: [..., K] float; returns [..., N] in x.dtype (fp32 math).

    Computed in reordered space to mirror the kernels: gather x by col_perm, GEMM with W', then
    scatter output columns back through row_perm.
    """
    p = _packed(packed)
    w = p.dequantize_reordered(torch.float32)
    xf = x.to(torch.float32)
    if p.col_perm.numel():
        xf = xf.index_select(-1, p.col_perm.long())
    y_r = xf @ w.t()
    if p.row_perm.numel():
        y = torch.empty_like(y_r)
        y[..., p.row_perm.long()] = y_r
        y_r = y
    return y_r.to(x.dtype)


def fake_linear(x: Tensor, *args) -> Tensor:
    """Shape-only twin of every sfmp op whose geometry follows the permutations (see signature.py)."""
    n_tensors = sum(isinstance(a, Tensor) for a in args)
    out_features, in_features = args[n_tensors], args[n_tensors + 1]
    torch._check(x.shape[-1] == in_features)
    return x.new_empty((*x.shape[:-1], out_features))


linear_ref.register_fake(fake_linear)


@torch.library.custom_op("sfmp::linear_ref_grad_input", mutates_args=())
@typed("grad", PACKED)
def linear_ref_grad_input(grad: Tensor, *packed) -> Tensor:
    """dX = dY @ Ŵ (original order). grad: [..., N] -> [..., K] in grad.dtype. Weights are frozen."""
    return frozen_grad_input(grad, _packed(packed))


def frozen_grad_input(grad: Tensor, p: PackedWeight) -> Tensor:
    """The backward of every op over the packed layout, as plain math: dX = dY @ Ŵ in fp32 (exact,
    whatever the forward's activation numerics). grad: [..., N] -> [..., K] in grad.dtype."""
    return (grad.to(torch.float32) @ p.dequantize(torch.float32)).to(grad.dtype)


@linear_ref_grad_input.register_fake
def _(grad, *packed):
    return grad.new_empty((*grad.shape[:-1], packed[10]))


def setup_packed_ctx(ctx, inputs, output):
    ctx.packed = inputs[1:1 + len(PACKED)]


def packed_backward(ctx, grad):
    """Backward of every op over the packed layout: frozen weights, so only dX, by its own op (not
    inline Python) so AOT autograd can trace it with fake tensors. Trailing op-specific args get None."""
    return (linear_ref_grad_input(grad, *ctx.packed),) + (None,) * (ctx.n_args - 1)


def register_packed_autograd(op, n_args: int) -> None:
    """Give an op over the packed layout (``n_args`` arguments, x included) the frozen-weight backward."""
    def setup(ctx, inputs, output):
        setup_packed_ctx(ctx, inputs, output)
        ctx.n_args = n_args
    torch.library.register_autograd(op, packed_backward, setup_context=setup)


register_packed_autograd(linear_ref, 1 + len(PACKED))


@torch.library.custom_op("sfmp::embedding_ref", mutates_args=())
@typed("ids", PACKED)
def embedding_ref(ids: Tensor, *packed) -> Tensor:
    """Rows ``ids`` of Ŵ in original coordinates (an embedding tied to a quantized head).
    ids: int64 [...] -> fp32 [..., K]."""
    p = _packed(packed)
    torch._check(bool(((ids >= 0) & (ids < p.out_features)).all()), lambda: "token id out of range")
    return p.dequantize(torch.float32)[ids]


def fake_embedding(ids: Tensor, *args) -> Tensor:
    """Shape-only twin of the sfmp embedding ops: [..., in_features] fp32."""
    n_tensors = sum(isinstance(a, Tensor) for a in args)
    return ids.new_empty((*ids.shape, args[n_tensors + 1]), dtype=torch.float32)


embedding_ref.register_fake(fake_embedding)
