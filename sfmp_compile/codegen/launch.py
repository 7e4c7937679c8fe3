"""Host-side launcher shared by every kernel family.

``launch`` turns an activation and a layer's packed tensors into one kernel launch of the family
its M bucket (or its tile config) names. It is written with traceable torch ops only, so the same
function serves ``triton_op`` (``wrap=torch.library.wrap_triton``), the opaque interpreter op and
direct calls. A family module supplies the kernel body and its launch geometry (see families.py);
one with its own host-side needs defines ``launch(L, cfg)`` and gets the :class:`Launch` below.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..format import layout_aligned4
from . import autotune
from .families import FAMILIES, family_for
from .generate import KernelKey, get_kernel
from .tiles import Config, tile_geometry

_MAGIC_BITS = 0x4B000000  # fp32 bits of 2^23; a kernel argument so ptxas fuses AND+OR into one LOP3


class KernelLayer(NamedTuple):
    """A layer's packed-layout tensors and geometry, in ``ops.signature.PACKED`` order."""

    qweight: Tensor
    bits: Tensor
    block_offset: Tensor
    group_order: Tensor
    segment_ptr: Tensor
    scales: Tensor
    zeros: Tensor
    row_perm: Tensor
    col_perm: Tensor
    out_features: int
    in_features: int
    block_rows: int
    group_size: int


def _group_sums(x2: Tensor, col_perm: Tensor | None, K: int, G: int, group_size: int) -> Tensor:
    """fp32 [M, G]: sum of the (gathered) activations over each group's columns.

    The decode kernel applies zero points per (row, group) as z * sum_k x; summing here (one tiny
    pass over x, fused into neighbours by Inductor) keeps [16, BLOCK_K] reductions out of its loop.
    """
    xg = x2.index_select(1, col_perm) if col_perm is not None else x2
    xg = xg.to(torch.float32)
    pad = G * group_size - K
    if pad:
        xg = torch.nn.functional.pad(xg, (0, pad))
    return xg.reshape(xg.shape[0], G, group_size).sum(-1)


def walk_offsets(block_offset: Tensor, group_order: Tensor) -> Tensor:
    """int32 [R, G]: ``block_offset[r, group_order[r, i]]``, the word offset of the i-th group of
    row-block r's width-sorted walk (the kernels read it at walk position i, so the word base does
    not wait on the group_order load). Memoised on the ``block_offset`` tensor for eager launches (a
    layer's metadata is constant); computed in-graph while tracing."""
    eager = type(block_offset) is torch.Tensor and type(group_order) is torch.Tensor
    if eager and not torch.compiler.is_compiling():
        tag = (id(group_order), group_order._version, block_offset._version, block_offset.device)
        hit = getattr(block_offset, "_sfmp_walk", None)
        if hit is not None and hit[0] == tag and hit[1]() is group_order:
            return hit[2]
        walk = torch.gather(block_offset, 1, group_order.long()).to(torch.int32).contiguous()
        try:
            block_offset._sfmp_walk = (tag, weakref.ref(group_order), walk)
        except (AttributeError, TypeError):  # pragma: no cover - exotic tensor subclasses
            pass
        return walk
    return torch.gather(block_offset, 1, group_order.long()).to(torch.int32).contiguous()


def _dot_kind(dtype: torch.dtype, interpret: bool) -> int:
    if interpret:
        return 0  # the interpreter computes bf16 (and we keep fp16) in fp32
    # fp32 on GPU: tf32x3 (three tensor-core passes, ~fp32 accuracy; codes are exact in tf32).
    return {torch.float16: 1, torch.bfloat16: 2}.get(dtype, 3)


@dataclass
class Launch:
    """Everything a family's host code needs for one launch: the flattened activation ``x2``
    (pre-gathered through col_perm when the config asks), the layer, and the tile geometry."""

    x: Tensor
    x2: Tensor
    lead: tuple
    layer: KernelLayer
    walk: Tensor
    widths: tuple[int, ...]
    M: int
    G: int
    bn: int
    bk: int
    tiles_per_rb: int
    n_tiles: int
    has_col_perm: bool
    aligned4: bool
    interpret: bool
    wrap: object
    sms: int

    N = property(lambda self: self.layer.out_features)
    K = property(lambda self: self.layer.in_features)
    group_size = property(lambda self: self.layer.group_size)
    segment_ptr = property(lambda self: self.layer.segment_ptr)
    has_row_perm = property(lambda self: self.layer.row_perm.numel() > 0)
    dot_kind = property(lambda self: _dot_kind(self.x.dtype, self.interpret))

    def kernel(self, family: str):
        k = get_kernel(KernelKey(family, self.widths))
        return self.wrap(k) if self.wrap is not None else k

    def pointers(self, xs: Tensor, y: Tensor) -> tuple:
        """The kernel's pointer arguments (templates.SIGNATURE order); unused permutation slots get
        any valid int32 pointer."""
        L, dummy = self.layer, self.layer.segment_ptr
        return (self.x2, xs, y, L.qweight, self.walk, L.group_order, L.segment_ptr, L.scales, L.zeros,
                L.row_perm if self.has_row_perm else dummy, L.col_perm if self.has_col_perm else dummy)

    def ints(self, stride_ym: int) -> tuple:
        L = self.layer
        return (self.M, L.out_features, L.in_features, self.G, self.x2.stride(0), stride_ym, L.block_rows,
                L.group_size, self.tiles_per_rb, _MAGIC_BITS)


def standard_launch(L: Launch, cfg: Config, fam) -> Tensor:
    """gemv / decode / prefill: one launch into y (split-K partial sums meet by fp32 atomics in a
    zeroed buffer), then a cast where the output dtype is not what the kernel stored."""
    bm = fam.block_m(L.M, cfg)
    m_tiles = -(-L.M // bm)
    split_k = cfg.SPLIT_K or autotune.auto_split_k(L.n_tiles * m_tiles, L.G, L.sms)
    split_k = max(1, min(split_k, L.G))
    atomic = split_k > 1
    # The interpreter rounds fp32 -> bf16 differently from torch (1 ulp): cast in torch there.
    f32_out = atomic or (L.interpret and L.x.dtype == torch.bfloat16)
    alloc = torch.zeros if atomic else torch.empty
    y = alloc((L.M, L.N), device=L.x.device, dtype=torch.float32 if f32_out else L.x.dtype)
    if getattr(fam, "NEEDS_GROUP_SUMS", False):
        xs = _group_sums(L.x2, L.layer.col_perm if L.has_col_perm else None, L.K, L.G, L.group_size)
    else:
        xs = L.segment_ptr  # not read: the kernel sums in-kernel or dequantizes in registers
    L.kernel(fam.FAMILY)[fam.grid(L.M, L.n_tiles, split_k, bm)](
        *L.pointers(xs, y), *L.ints(y.stride(0)),
        BLOCK_M=bm, BLOCK_N=L.bn, BLOCK_K=L.bk, SPLIT_K=split_k, ONE_CHUNK=L.bk >= L.group_size,
        HAS_ROW_PERM=L.has_row_perm, HAS_COL_PERM=L.has_col_perm, DOT_KIND=L.dot_kind,
        ATOMIC=atomic, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if f32_out:
        y = y.to(L.x.dtype)
    return y.reshape(*L.lead, L.N)


def launch(x: Tensor, layer: KernelLayer, widths, *, family: str | None = None, config: Config | None = None,
           wrap=None, interpret: bool | None = None, aligned4: bool | None = None) -> Tensor:
    """y = x @ Ŵᵀ with a generated kernel. x: [..., K] fp16/bf16/fp32 -> [..., N] in x.dtype.

    layer: a :class:`KernelLayer` (the packed tensors; ``bits`` is not read on the device, the width
    set ``widths`` already fixed the kernel). family: a bucket family ("gemv" / "decode" /
    "prefill") or None (by M). config: a tile Config or None (looked up: autotune.get_config); its
    ``family`` field may name another body for the bucket (e.g. "gemvu"). wrap:
    ``torch.library.wrap_triton`` inside a triton_op. aligned4: the layer's 4-word alignment fact
    (``format.layout_aligned4``), None = check now (impossible while tracing: then False).
    """
    N, K = layer.out_features, layer.in_features
    torch._check(x.shape[-1] == K, lambda: f"x has {x.shape[-1]} features, the layer expects {K}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return x.new_empty((*lead, N))
    if interpret is None:
        interpret = autotune.interpreting()
    bucket = family or family_for(M)
    if bucket not in FAMILIES:
        raise ValueError(f"unknown kernel family {bucket!r}; expected one of {sorted(FAMILIES)}")
    widths = tuple(widths)
    shape_key = (bucket, M, N, K, widths, layer.group_size, layer.block_rows, x.dtype, x.device)
    if (config is None and not interpret and wrap is None and autotune.autotune_requested()
            and type(x) is torch.Tensor and not torch.compiler.is_compiling()):
        # SFMP_AUTOTUNE=1: tune this key once, eagerly, on first sight; the result lands in the
        # on-disk JSON and every later lookup finds it.
        autotune.tune_if_missing(lambda cfg: launch(x, layer, widths, family=bucket, config=cfg, interpret=False),
                                 *shape_key, layer.col_perm.numel() > 0)
    cfg = config or autotune.get_config(*shape_key)
    fam = FAMILIES[cfg.family or bucket]
    if len(widths) == 8 and not getattr(fam, "ALL_WIDTHS", True):
        # the all-widths kernel of this body compiles too slowly (gemvu: 458 s for sm_90): the
        # bucket's own body with its fallback tiles, whatever a table says
        cfg = FAMILIES[bucket].FALLBACK
        fam = FAMILIES[cfg.family or bucket]
    if aligned4 is None:
        aligned4 = (type(layer.block_offset) is torch.Tensor and not torch.compiler.is_compiling()
                    and layout_aligned4(layer.block_offset, N, layer.block_rows))

    bn, bk, tiles_per_rb, n_tiles = tile_geometry(cfg, N, layer.block_rows, layer.group_size)
    G = -(-K // layer.group_size)
    has_cp = layer.col_perm.numel() > 0
    if has_cp and cfg.pregather:
        x2 = x2.index_select(1, layer.col_perm)  # one coalesced pass instead of scattered in-kernel loads
        has_cp = False
    L = Launch(x, x2, lead, layer, walk_offsets(layer.block_offset, layer.group_order), widths, M, G, bn, bk,
               tiles_per_rb, n_tiles, has_cp, bool(aligned4), interpret, wrap, autotune.sm_count(x.device))
    run = getattr(fam, "launch", None)
    return run(L, cfg) if run is not None else standard_launch(L, cfg, fam)
