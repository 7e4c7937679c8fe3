"""Mixed-precision GEMM kernels for the SFMP packed format, and the dispatch between them.

Paths (see docs/KERNELS.md):
  * CUDA  -> ``sfmp::linear_triton`` (triton_op over generated Triton kernels: gemv family for
             M = 1, decode for M <= 16, prefill above);
  * CPU   -> ``sfmp::linear_cpu_int4`` (torch's int4 CPU kernel, bf16 numerics) for layers prepared
             for it (``SFMPLinear.prepare_for("cpu")`` / :func:`prepare_cpu`, all blocks <= 4 bits),
             else the exact reference;
  * other -> ``sfmp::linear_ref``.
``backend="interp"`` runs the Triton kernels on CPU through Triton's interpreter
(``TRITON_INTERPRET=1`` must be set before triton is imported), for tests.

Layering: this package imports format/blocks/ops only; linear.py imports it.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..format import PackedWeight
from ..ops.reference import packed_args
from . import ops as _ops  # noqa: F401  (registers sfmp::linear_triton / linear_triton_interp)
from .autotune import M_BUCKETS, Config, family_for, m_bucket
from .cpu import (CpuInt4Weight, cached_prepare, cpu_eligible, GraphInt4Weight, linear_cpu, prepare_cpu,
                  register_inductor_decompositions, unpack_int4, unprepare_cpu)
from .generate import (KernelKey, cache_dir, distinct_kernels, emit_source, get_kernel, kernel_source,
                       loaded_keys, width_mask, widths_of_mask)
from .launch import launch as run_triton, layout_aligned4

__all__ = [
    "sfmp_linear", "prepare_cpu", "unprepare_cpu", "CpuInt4Weight", "cpu_eligible", "prepare_module_",
    "unprepare_module_", "packed_of", "is_cpu_prepared", "layer_width_mask", "run_triton", "kernel_source",
    "emit_source", "distinct_kernels", "loaded_keys", "KernelKey", "get_kernel", "cache_dir", "Config",
    "M_BUCKETS", "m_bucket", "family_for", "width_mask", "widths_of_mask", "unpack_int4",
    "register_inductor_decompositions", "GraphInt4Weight", "ALL_WIDTHS_MASK",
]

ALL_WIDTHS_MASK = width_mask(range(1, 9))
_BACKENDS = ("auto", "triton", "interp", "cpu", "ref")


# --- module / buffer helpers (duck-typed: codegen must not import linear.py) --------------------

def is_cpu_prepared(m) -> bool:
    """True when a module holds the CPU int4 form instead of the true-bit qweight."""
    return getattr(m, "w4", None) is not None and getattr(m, "_sfmp_cpu_gc", None) is not None


def _as_packed(obj) -> PackedWeight:
    if isinstance(obj, PackedWeight):
        return obj
    if isinstance(obj, Mapping):
        return PackedWeight(**{f: obj[f] for f in PackedWeight.TENSOR_FIELDS},
                            **{f: int(obj[f]) for f in PackedWeight.META_FIELDS})
    return PackedWeight(**{f: getattr(obj, f) for f in PackedWeight.TENSOR_FIELDS},
                        **{f: int(getattr(obj, f)) for f in PackedWeight.META_FIELDS})


def _module_cpu_weight(m) -> CpuInt4Weight:
    return CpuInt4Weight(w4=m.w4, sz=m.w4_sz, col_perm=m.col_perm, gc=m._sfmp_cpu_gc, bits=m.bits,
                         scales=m.scales, zeros=m.zeros, row_perm=m.row_perm,
                         out_features=int(m.out_features), in_features=int(m.in_features),
                         block_rows=int(m.block_rows), group_size=int(m.group_size))


def packed_of(obj) -> PackedWeight:
    """The true-bit PackedWeight of a PackedWeight / module / mapping / CpuInt4Weight.

    For a CPU-prepared module (or a CpuInt4Weight) the codes are rebuilt exactly (costs an unpack).
    """
    if isinstance(obj, CpuInt4Weight):
        return unprepare_cpu(obj)
    if not isinstance(obj, (PackedWeight, Mapping)) and is_cpu_prepared(obj):
        return unprepare_cpu(_module_cpu_weight(obj))
    return _as_packed(obj)


def layer_width_mask(obj) -> int:
    """Bit set of the layer's block widths plus the ``ALIGNED4`` layout bit (see
    :func:`generate.width_mask`), cached on the object (reads ``bits`` and ``block_offset`` once).
    ``obj`` must hold real tensors (never call it on traced values): the op then carries facts a
    traced graph cannot read from values."""
    m = getattr(obj, "_sfmp_width_mask", None)
    if m is not None:
        return m
    get = obj.__getitem__ if isinstance(obj, Mapping) else lambda k: getattr(obj, k)
    aligned = layout_aligned4(get("block_offset"), int(get("out_features")), int(get("block_rows")), real_values=True)
    m = width_mask(torch.unique(get("bits").to("cpu", torch.int64)).tolist(), aligned4=aligned)
    if not isinstance(obj, Mapping):
        try:
            object.__setattr__(obj, "_sfmp_width_mask", m)
        except (AttributeError, TypeError):
            pass
    return m


def _state_dict_hook(m, state_dict, prefix, local_metadata):
    # A CPU-prepared module holds no true-bit qweight: rebuild it so saving writes format v1.
    if is_cpu_prepared(m):
        state_dict[prefix + "qweight"] = unprepare_cpu(_module_cpu_weight(m)).qweight


def _load_pre_hook(m, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    # Loading true-bit buffers into a prepared module: drop the int4 form, give qweight its shape
    # back; the next CPU forward re-prepares.
    key = prefix + "qweight"
    if is_cpu_prepared(m) and key in state_dict:
        _drop_cpu_form(m)
        m.qweight = torch.empty_like(state_dict[key], device=m.bits.device)


def _drop_cpu_form(m) -> None:
    for name in ("w4", "w4_sz"):
        m._buffers.pop(name, None)
    m._sfmp_cpu_gc = None


def _install_hooks(m) -> None:
    if not getattr(m, "_sfmp_hooks", False):
        m.register_state_dict_post_hook(_state_dict_hook)
        m.register_load_state_dict_pre_hook(_load_pre_hook)
        m._sfmp_hooks = True


def unprepare_module_(m):
    """Put the true-bit qweight back into a CPU-prepared module (in place) and drop the int4 form."""
    if is_cpu_prepared(m):
        qweight = unprepare_cpu(_module_cpu_weight(m)).qweight.to(m.bits.device)
        _drop_cpu_form(m)
        m.qweight = qweight
    return m


def prepare_module_(m, device):
    """Move an SFMPLinear-like module to ``device`` and convert it, in place, to that device's form.

    cpu: layers with all blocks <= 4 bits swap ``qweight`` for the int4 CPU form (non-persistent
    buffers ``w4`` / ``w4_sz``; ``qweight`` becomes empty, and ``state_dict()`` rebuilds it).
    cuda: true-bit buffers on the GPU. Both cache the layer's width set (``_sfmp_width_mask``) so
    compiled graphs never read ``bits``.
    """
    device = torch.device(device)
    if is_cpu_prepared(m) and device.type != "cpu":
        unprepare_module_(m)
    m.to(device)
    layer_width_mask(m)
    if device.type == "cpu" and not is_cpu_prepared(m) and cpu_eligible(m):
        c = prepare_cpu(_as_packed(m))
        m.register_buffer("w4", c.w4, persistent=False)
        m.register_buffer("w4_sz", c.sz, persistent=False)
        m._sfmp_cpu_gc = c.gc
        m.qweight = torch.zeros(0, dtype=torch.int32)  # frees the true-bit codes
        _install_hooks(m)
    return m


# --- dispatch ----------------------------------------------------------------------------------

def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover
        return False


def sfmp_linear(x: Tensor, packed, bias: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """y = x @ Ŵᵀ (+ bias) for an SFMP layer, through the fastest path for x's device.

    x: [..., in_features] fp16 / bf16 / fp32; returns [..., out_features] in x.dtype.
    packed: a PackedWeight, an SFMPLinear (or any object / mapping with its buffers and meta
      ints), or a CpuInt4Weight from :func:`prepare_cpu`.
    backend:
      "auto"   CUDA -> Triton kernels; CPU -> the int4 path for what was prepared for it (a
               CpuInt4Weight, or a module after ``prepare_for("cpu")``), else the exact reference;
               other devices -> reference.
      "cpu"    the int4 path, preparing on demand when not compiling (a module in place: only the
               int4 form stays resident; a bare PackedWeight gets a memoised int4 copy); layers
               with blocks > 4 bits fall back to the reference.
      "triton" the triton_op (on CPU its body takes the reference branch).
      "interp" the generated kernels through Triton's interpreter (CPU; TRITON_INTERPRET=1).
      "ref"    the reference op.
    The int4 path computes in bf16 (SQNR vs the fp32 reference >= 35 dB), hence opt-in on CPU.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if isinstance(packed, CpuInt4Weight):
        if x.device.type != "cpu" or backend not in ("auto", "cpu"):
            return sfmp_linear(x, unprepare_cpu(packed).to(x.device), bias, backend=backend)
        y = linear_cpu(x, packed)
        return y + bias.to(y.dtype) if bias is not None else y

    if isinstance(packed, Mapping):
        packed = _as_packed(packed)
    is_module = not isinstance(packed, PackedWeight)
    dev = x.device.type
    prepared = is_module and is_cpu_prepared(packed)
    if backend == "auto":
        backend = "triton" if dev == "cuda" else "cpu" if dev == "cpu" and prepared else "ref"

    if backend == "cpu" and dev == "cpu":
        if prepared:
            y = torch.ops.sfmp.linear_cpu_int4(x, packed.w4, packed.w4_sz, packed.col_perm,
                                               packed._sfmp_cpu_gc, int(packed.out_features),
                                               int(packed.in_features))
        elif not _compiling() and cpu_eligible(packed):
            if is_module:
                prepare_module_(packed, "cpu")
                return sfmp_linear(x, packed, bias, backend="cpu")
            y = linear_cpu(x, cached_prepare(_as_packed(packed)))
        else:
            y = torch.ops.sfmp.linear_ref(x, *packed_args(packed_of(packed)))
    else:
        if prepared and not _compiling():
            unprepare_module_(packed)  # e.g. a prepared module later moved to another device
        p = packed_of(packed)
        if backend in ("ref", "cpu"):
            y = torch.ops.sfmp.linear_ref(x, *packed_args(p))
        else:
            # Under tracing, bits cannot be read: an uncached layer gets the all-widths kernel
            # (correct for any bit map; empty segment loops cost a few scalar loads).
            mask = getattr(packed, "_sfmp_width_mask", None)
            if mask is None:
                mask = ALL_WIDTHS_MASK if _compiling() else layer_width_mask(packed)
            op = torch.ops.sfmp.linear_triton_interp if backend == "interp" else torch.ops.sfmp.linear_triton
            y = op(x, *packed_args(p), mask)
    return y + bias.to(y.dtype) if bias is not None else y
