"""Triton code generation for the SFMP mixed-precision GEMM: kernel sources specialised per
(family, width set), their cache, tile configs, and the host-side launcher.

Knows tensors and configs only; the ops that call it live in ``sfmp_compile.ops.triton`` and the
choice of op per device and layout in ``sfmp_compile.ops.dispatch``. See docs/KERNELS.md.
Importing it needs triton (the interpreter, ``TRITON_INTERPRET=1``, runs kernels on CPU).
"""
from .families import FAMILIES, M_BUCKETS, family_for, m_bucket  # noqa: F401
from .generate import (ALIGNED4, KernelKey, cache_dir, distinct_kernels, emit_source, get_kernel,  # noqa: F401
                       kernel_source, loaded_keys, width_mask, widths_of_mask)
from .launch import KernelLayer, launch  # noqa: F401
from .tiles import Config  # noqa: F401

ALL_WIDTHS_MASK = width_mask(range(1, 9))
