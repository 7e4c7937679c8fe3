"""The Triton kernels as custom ops Inductor understands.

``sfmp::linear_triton`` is a ``torch.library.triton_op``: on CUDA its body calls the generated
kernel through ``wrap_triton``, so Inductor sees the Triton kernel itself (it can schedule, fuse the
surrounding pointwise ops, and cudagraph it) instead of an opaque call. A triton_op body is traced
even on machines without a GPU, and Triton then asks for an active driver; so for any non-CUDA
input the body branches to plain torch (the reference op) BEFORE any ``wrap_triton`` call. That
keeps eager, aot_eager, Inductor, export and opcheck working on CPU.

``sfmp::linear_triton_interp`` is an opaque ``custom_op`` that launches the same generated kernels
directly. With ``TRITON_INTERPRET=1`` that runs them on CPU tensors through Triton's interpreter:
it exists so the kernels (not the reference) can be exercised and compiled around on CPU-only CI.

Both take ``x`` then ``packed_args(p)`` (ops/reference.py) then ``width_mask``: bit b set for each
bit width b the layer uses. The width set picks the generated kernel and must be a trace-time
constant, so it is an int argument instead of being read from ``bits`` on the device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..format import PackedWeight
from ..ops import reference  # noqa: F401  (registers sfmp::linear_ref, our CPU branch and oracle)
from .generate import ALIGNED4, widths_of_mask
from .launch import launch, require_interpreter

_N_ARGS = 15  # x + 13 packed args + width_mask


@torch.library.triton_op("sfmp::linear_triton", mutates_args=())
def linear_triton(x: Tensor, qweight: Tensor, bits: Tensor, block_offset: Tensor, group_order: Tensor,
                  segment_ptr: Tensor, scales: Tensor, zeros: Tensor, row_perm: Tensor, col_perm: Tensor,
                  out_features: int, in_features: int, block_rows: int, group_size: int,
                  width_mask: int) -> Tensor:
    """y = x @ Ŵᵀ (original row/column order). x: [..., K] fp16/bf16/fp32 -> [..., N] x.dtype.

    CUDA: generated Triton kernel (decode family for M <= 16, prefill above). Other devices: the
    reference op (plain torch), see the module docstring for why.
    """
    if x.device.type != "cuda":
        return torch.ops.sfmp.linear_ref(x, qweight, bits, block_offset, group_order, segment_ptr, scales,
                                         zeros, row_perm, col_perm, out_features, in_features, block_rows,
                                         group_size)
    return launch(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                  col_perm, out_features, in_features, block_rows, group_size, widths_of_mask(width_mask),
                  wrap=torch.library.wrap_triton, interpret=False, aligned4=bool(width_mask & ALIGNED4))


@torch.library.custom_op("sfmp::linear_triton_interp", mutates_args=())
def linear_triton_interp(x: Tensor, qweight: Tensor, bits: Tensor, block_offset: Tensor, group_order: Tensor,
                         segment_ptr: Tensor, scales: Tensor, zeros: Tensor, row_perm: Tensor,
                         col_perm: Tensor, out_features: int, in_features: int, block_rows: int,
                         group_size: int, width_mask: int) -> Tensor:
    """Same contract as ``sfmp::linear_triton`` but always launches the generated kernel directly.

    On CPU tensors this needs ``TRITON_INTERPRET=1`` (set before triton is imported).
    """
    if x.device.type != "cuda":
        require_interpreter()
    return launch(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                  col_perm, out_features, in_features, block_rows, group_size, widths_of_mask(width_mask),
                  aligned4=bool(width_mask & ALIGNED4))


def _fake(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
          out_features, in_features, block_rows, group_size, width_mask):
    torch._check(x.shape[-1] == in_features)
    return x.new_empty((*x.shape[:-1], out_features))


linear_triton_interp.register_fake(_fake)


def _setup_ctx(ctx, inputs, output):
    ctx.packed = inputs[1:14]


def _backward(ctx, grad):
    # Weights are frozen: only dX = dY @ Ŵ (original order), computed from the packed tensors.
    w = PackedWeight(*ctx.packed).dequantize(torch.float32)
    gx = (grad.to(torch.float32) @ w).to(grad.dtype)
    return (gx,) + (None,) * (_N_ARGS - 1)


linear_triton.register_autograd(_backward, setup_context=_setup_ctx)
linear_triton_interp.register_autograd(_backward, setup_context=_setup_ctx)


def _register_kernels_for_cache_keys() -> None:
    """Tell torch which Triton sources ``sfmp::linear_triton`` runs, for AOTAutograd's cache key.

    torch finds a triton_op's kernels by reading its source; ours are generated at run time, so
    we register a fingerprint stub at import (covers template/launcher changes across processes)
    and every generated kernel as it loads. Private torch API: best effort, never fatal.
    """
    from .autotune import interpreting
    from .generate import fingerprint_kernel, on_kernel_load
    if interpreting():
        return  # interpreted kernels are not what Inductor would compile; CPU never takes this path
    try:
        from torch._library import triton as _lib_triton
        kernels = _lib_triton.triton_ops_to_kernels.setdefault("sfmp::linear_triton", [])
        kernels.append(fingerprint_kernel())
        on_kernel_load(lambda key, k: kernels.append(k))
    except Exception:  # noqa: BLE001
        pass


_register_kernels_for_cache_keys()
