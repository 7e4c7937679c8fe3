"""The generated Triton kernels as custom ops Inductor understands.

``sfmp::linear_triton`` is a ``torch.library.triton_op``: on CUDA its body calls the generated
kernel through ``wrap_triton``, so Inductor sees the Triton kernel itself (it can schedule, fuse the
surrounding pointwise ops, and cudagraph it) instead of an opaque call. A triton_op body is traced
even on machines without a GPU, and Triton then asks for an active driver; so for any non-CUDA
input the body branches to plain torch (the reference op) BEFORE any ``wrap_triton`` call. That
keeps eager, aot_eager, Inductor, export and opcheck working on CPU.

``sfmp::linear_triton_interp`` is an opaque ``custom_op`` that launches the same generated kernels
directly. With ``TRITON_INTERPRET=1`` that runs them on CPU tensors through Triton's interpreter:
it exists so the kernels (not the reference) can be exercised and compiled around on CPU-only CI.

Both take ``x``, the packed layout's arguments (``signature.PACKED``), then ``width_mask``: bit b set
for each bit width b the layer uses (bit 0: the 4-word alignment fact, ``codegen.generate.ALIGNED4``).
The width set picks the generated kernel and must be a trace-time constant, so it is an int
argument instead of being read from ``bits`` on the device.

Prefill (M >= ``PREFILL_DEQUANT_M``): both ops dequantize the layer with the generated ``dequant``
kernel into a transient [N, K] weight in x.dtype, in original row/column order, and run one
``torch.nn.functional.linear`` (cuBLAS on GPU) -- see codegen/dequant.py and docs/KERNELS.md.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..codegen import generate
from ..codegen.autotune import interpreting
from ..codegen.launch import KernelLayer, launch
from . import cache_key
from .reference import register_packed_autograd
from .signature import PACKED, typed

_WIDTH_MASK = (("width_mask", int),)

# From this many activation rows on, dequantize + cuBLAS instead of the prefill kernel. A projection
# (cuBLAS fp16 GEMM efficiency vs the in-register-dequant prefill tiles, plus one extra pass writing
# the dense weight, ~2*N*K bytes) to be measured by benchmarks/device_check.sh and moved there.
# Peak-memory cost: one layer's dense weight in x.dtype (N*K*2 bytes for fp16/bf16), transient --
# torch's caching allocator reuses the block for the next layer's weight.
PREFILL_DEQUANT_M = 512


def _launch(x, packed, width_mask, **kw):
    # Read at call time (not at import), so tests can lower the threshold by monkeypatching it.
    rows = math.prod(x.shape[:-1])
    family = "dequant" if rows >= PREFILL_DEQUANT_M else None
    return launch(x, KernelLayer(*packed), generate.widths_of_mask(width_mask), family=family,
                  aligned4=bool(width_mask & generate.ALIGNED4), **kw)


@torch.library.triton_op("sfmp::linear_triton", mutates_args=())
@typed("x", PACKED, *_WIDTH_MASK)
def linear_triton(x: Tensor, *args) -> Tensor:
    """y = x @ Ŵᵀ (original row/column order). x: [..., K] fp16/bf16/fp32 -> [..., N] x.dtype.

    CUDA: the generated Triton kernel of the M bucket's family; for M >= ``PREFILL_DEQUANT_M`` the
    generated dequantize kernel into a transient [N, K] x.dtype weight, then one cuBLAS GEMM (every
    kernel call goes through ``wrap_triton``, via launch's ``wrap``). Other devices: the reference op.
    """
    *packed, width_mask = args
    if x.device.type != "cuda":
        return torch.ops.sfmp.linear_ref(x, *packed)
    return _launch(x, packed, width_mask, wrap=torch.library.wrap_triton, interpret=False)


@torch.library.custom_op("sfmp::linear_triton_interp", mutates_args=())
@typed("x", PACKED, *_WIDTH_MASK)
def linear_triton_interp(x: Tensor, *args) -> Tensor:
    """Same contract as ``sfmp::linear_triton`` but always launches the generated kernels directly
    (dequantize + ``linear`` at the same ``PREFILL_DEQUANT_M`` threshold). On CPU tensors this
    needs ``TRITON_INTERPRET=1`` (set before triton is imported)."""
    *packed, width_mask = args
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            "Running the SFMP Triton kernels on CPU needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 in the environment before triton (and sfmp_compile) is imported.")
    return _launch(x, packed, width_mask)


@linear_triton_interp.register_fake
def _(x, *args):
    torch._check(x.shape[-1] == args[10])
    return x.new_empty((*x.shape[:-1], args[9]))


register_packed_autograd(linear_triton, 2 + len(PACKED))
register_packed_autograd(linear_triton_interp, 2 + len(PACKED))


def _register_cache_keys() -> None:
    """Tell torch which Triton sources ``sfmp::linear_triton`` runs, for AOTAutograd's cache key:
    a stub carrying a hash of codegen's files (templates, families, launcher), and every generated
    kernel as it loads. Interpreted kernels are not what Inductor would compile: skipped."""
    if interpreting():
        return
    codegen_dir = Path(generate.__file__).parent
    cache_key.register("sfmp::linear_triton", cache_key.files_hash(codegen_dir.glob("*.py")))
    generate.on_kernel_load(lambda key, k: cache_key.register_kernel("sfmp::linear_triton", k))


_register_cache_keys()
