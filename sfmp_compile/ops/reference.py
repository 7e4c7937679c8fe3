"""Reference mixed-precision GEMM: unpack, dequantize, matmul, in plain torch (any device).

Registered as ``torch.ops.sfmp.linear_ref`` so it can sit inside compiled graphs and export; it is
the oracle for the Triton kernels and the fallback wherever no faster path exists.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..format import PackedWeight


def packed_args(p: PackedWeight) -> tuple:
    """The positional arguments after ``x`` that every sfmp op takes, in a fixed order."""
    return (p.qweight, p.bits, p.block_offset, p.group_order, p.segment_ptr, p.scales, p.zeros,
            p.row_perm, p.col_perm, p.out_features, p.in_features, p.block_rows, p.group_size)


def _packed(qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
            out_features, in_features, block_rows, group_size) -> PackedWeight:
    return PackedWeight(qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                        col_perm, out_features, in_features, block_rows, group_size)


@torch.library.custom_op("sfmp::linear_ref", mutates_args=())
def linear_ref(x: Tensor, qweight: Tensor, bits: Tensor, block_offset: Tensor, group_order: Tensor,
               segment_ptr: Tensor, scales: Tensor, zeros: Tensor, row_perm: Tensor, col_perm: Tensor,
               out_features: int, in_features: int, block_rows: int, group_size: int) -> Tensor:
    """y = x @ Ŵᵀ for a packed weight. x: [..., K] float; returns [..., N] in x.dtype (fp32 math).

    Computed in reordered space to mirror the kernels: gather x by col_perm, GEMM with W', then
    scatter output columns back through row_perm.
    """
    p = _packed(qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
                out_features, in_features, block_rows, group_size)
    w = p.dequantize_reordered(torch.float32)
    xf = x.to(torch.float32)
    if col_perm.numel():
        xf = xf.index_select(-1, col_perm.long())
    y_r = xf @ w.t()
    if row_perm.numel():
        y = torch.empty_like(y_r)
        y[..., row_perm.long()] = y_r
        y_r = y
    return y_r.to(x.dtype)


@linear_ref.register_fake
def _(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
      out_features, in_features, block_rows, group_size):
    torch._check(x.shape[-1] == in_features)
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("sfmp::linear_ref_grad_input", mutates_args=())
def linear_ref_grad_input(grad: Tensor, qweight: Tensor, bits: Tensor, block_offset: Tensor, group_order: Tensor,
                          segment_ptr: Tensor, scales: Tensor, zeros: Tensor, row_perm: Tensor, col_perm: Tensor,
                          out_features: int, in_features: int, block_rows: int, group_size: int) -> Tensor:
    """dX = dY @ Ŵ (original order). grad: [..., N] -> [..., K] in grad.dtype. Weights are frozen."""
    w = _packed(qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
                out_features, in_features, block_rows, group_size).dequantize(torch.float32)
    return (grad.to(torch.float32) @ w).to(grad.dtype)


@linear_ref_grad_input.register_fake
def _(grad, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
      out_features, in_features, block_rows, group_size):
    return grad.new_empty((*grad.shape[:-1], in_features))


def _setup_ctx(ctx, inputs, output):
    ctx.packed = inputs[1:]


def _backward(ctx, grad):
    # An op of its own (not inline Python) so AOT autograd can trace the backward with fake tensors.
    return (linear_ref_grad_input(grad, *ctx.packed),) + (None,) * 13


linear_ref.register_autograd(_backward, setup_context=_setup_ctx)
