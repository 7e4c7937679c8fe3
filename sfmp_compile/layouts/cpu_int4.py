"""The "int4" layout: an all-<=4-bit layer as torch's int4 CPU kernel stores it, exactly invertible.

x86 CPUs have no kernel for 2/3-bit codes, but ``aten._weight_int4pack_mm_for_cpu`` (bf16
activations) is fast. Its weight convention is ``w = (q - 8) * scale' + zero'`` with
``[K/g, N, 2]`` scale-and-zero, and every asymmetric code of b <= 4 bits maps onto it exactly.
Where the group's codes allow it (``2^b - 8 <= z <= 8``: every <= 3-bit group, a 4-bit one with
z = 8) the code is shifted instead, ``q' = q - z + 8``, ``scale' = s``, ``zero' = 0``, so bf16
rounds only the scale (relative 2^-9 per weight). Elsewhere ``q' = q``, ``zero' = s * (8 - z)``:
then bf16 rounds both ``s`` and ``s * (8 - z)``, whose errors do not cancel in
``(q - 8) * s' + zero'``; that cost up to ~7 dB of SQNR on 1- and 2-bit layers (issue 13).

Tensors of the layout (N out_features, K in_features, rows and columns in REORDERED order, like
the packed layout; the permutations stay outside, on the SFMPWeight)::

    w4      uint8 [N_pad, K_pad/2]       torch's int4 CPU layout (N_pad = N rounded up to 64,
                                         K_pad = K rounded up to 32; padded codes are 0)
    sz      bf16  [K_pad/gc, N_pad, 2]   (scale', zero') per (int4 group, row); gc = int4_group(...)
    bits    uint8 [R, G]                 \
    scales  fp16  [G, N]                  } kept only so to_packed() is exact (~0.27 bits/weight)
    zeros   fp16  [G, N]                 /

The true-bit ``qweight`` is not kept: :func:`to_packed` rebuilds it bit for bit (codes from the
int4 form, word layout from :func:`sfmp_compile.format.pack`), so saving still writes format v1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..blocks import BlockGrid
from ..format import PackedWeight, pack

NAME = "int4"
TENSORS = ("w4", "sz", "bits", "scales", "zeros")
INT4_GROUPS = (256, 128, 64, 32)  # group sizes the int4 CPU kernel accepts
ROW_ALIGN = 64  # pad N so every row block of torch's layout is full (uniform, invertible)


def ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def eligible(bits: Tensor) -> bool:
    """True when every block has <= 4 bits (then the int4 codes are the layer's codes exactly)."""
    return bits.numel() > 0 and int(bits.max()) <= 4


def int4_group(group_size: int, in_features: int) -> int:
    """Largest int4-kernel group dividing both our group size and the padded K."""
    k_pad = ceil_to(in_features, 32)
    for g in INT4_GROUPS:
        if group_size % g == 0 and k_pad % g == 0:
            return g
    raise ValueError(f"group_size {group_size} has no int4 CPU group (needs a multiple of 32)")


def from_packed(p: PackedWeight) -> dict[str, Tensor]:
    """The layout's tensors for a packed layer (all blocks <= 4 bits). Exact in codes.

    Cost: one unpack and one ``_convert_weight_to_int4pack_for_cpu``: run it at load or compile
    time, never per call. Raises ValueError for layers with blocks > 4 bits.
    """
    if not eligible(p.bits):
        raise ValueError("the CPU int4 layout needs every block to have <= 4 bits; the reference op runs this layer")
    layout_block()  # decided here, on real tensors, never while a graph is traced
    p = p.to("cpu")
    N, K, gs = p.out_features, p.in_features, p.group_size
    n_pad, k_pad = ceil_to(N, ROW_ALIGN), ceil_to(K, 32)
    gc = int4_group(gs, K)
    shift = code_shift(p.bits, p.zeros, p.grid)  # [G, N] added to each code, 0 where not shifted
    q = torch.zeros(n_pad, k_pad, dtype=torch.int32)
    q[:N, :K] = p.codes().to(torch.int32) + shift.t().repeat_interleave(gs, dim=1)[:, :K]
    w4 = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    s = torch.zeros(p.scales.shape[0], n_pad, dtype=torch.float32)
    z = torch.full_like(s, 8.0)  # padded rows: scale 0, zero' 0
    s[:, :N] = p.scales.float()
    z[:, :N] = torch.where(shifted_mask(p.bits, p.zeros, p.grid), 8.0, p.zeros.float())
    rep = gs // gc
    s = s.repeat_interleave(rep, 0)[: k_pad // gc]
    z = z.repeat_interleave(rep, 0)[: k_pad // gc]
    sz = torch.stack([s, s * (8.0 - z)], dim=-1).to(torch.bfloat16).contiguous()
    return {"w4": w4, "sz": sz, "bits": p.bits, "scales": p.scales, "zeros": p.zeros}


def shifted_mask(bits: Tensor, zeros: Tensor, grid: BlockGrid) -> Tensor:
    """bool [G, N]: the (group, row)s whose codes are stored shifted, q' = q - z + 8 in 0..15,
    i.e. 2^b - 8 <= z <= 8 for the block's width b. bits: uint8 [R, G]; zeros: fp16 [G, N]."""
    b = grid.expand_rows(bits.to("cpu", torch.int64)).t()  # [G, N]
    z = zeros.to("cpu", torch.float32)
    return (z <= 8) & (z >= (2.0 ** b) - 8)


def code_shift(bits: Tensor, zeros: Tensor, grid: BlockGrid) -> Tensor:
    """int32 [G, N]: what the int4 layout adds to each code of a (group, row): 8 - z where shifted
    (see :func:`shifted_mask`), else 0."""
    z = zeros.to("cpu", torch.float32)
    return torch.where(shifted_mask(bits, zeros, grid), 8.0 - z, 0.0).to(torch.int32)


def to_packed(t: dict[str, Tensor], row_perm: Tensor, col_perm: Tensor, block_rows: int,
              group_size: int, out_features: int, in_features: int) -> PackedWeight:
    """Exact inverse of :func:`from_packed`: the true-bit PackedWeight, bit for bit."""
    w4 = t["w4"].cpu()
    n_pad, k_pad = w4.shape[0], w4.shape[1] * 2
    codes = unpack_int4(w4, n_pad, k_pad)[:out_features, :in_features].to(torch.int32)
    grid = BlockGrid(out_features, in_features, block_rows, group_size)
    shift = code_shift(t["bits"].cpu(), t["zeros"].cpu(), grid)
    codes = (codes - shift.t().repeat_interleave(group_size, dim=1)[:, :in_features]).to(torch.uint8)
    return pack(codes, t["bits"].cpu(), t["scales"].cpu().t(), t["zeros"].cpu().t(),
                row_perm.cpu() if row_perm.numel() else None, col_perm.cpu() if col_perm.numel() else None,
                block_rows, group_size)


# --- torch's int4 CPU layout and its inverse ---------------------------------------------------
# The converter's layout is an implementation detail of torch that depends on the CPU's ISA: rows
# are interleaved in blocks of B (64 with AVX-512, 32 with AVX2), bytes [N/B, K, B/2] holding row d
# in the low nibble and row d + B/2 in the high one. It is learned once per process by checking
# the analytic inverse against the converter; anything else falls back to a probe.

_block: int | None = None


def _unpack_blocked(w4: Tensor, n_pad: int, k_pad: int, block: int) -> Tensor:
    b = w4.reshape(n_pad // block, k_pad, block // 2)
    return torch.cat([b & 15, b >> 4], dim=2).permute(0, 2, 1).reshape(n_pad, k_pad)


def unpack_probe(w4: Tensor, n_pad: int, k_pad: int) -> Tensor:
    """Layout-agnostic inverse: learn where each nibble comes from by packing index probes.

    Packs the (n*K + k) index of every weight, 4 bits at a time, with torch's own converter; the
    nibble found at each packed position then names its source. Costs ~8 conversions of the layer.
    """
    n = n_pad * k_pad
    idx = torch.arange(n, dtype=torch.int64).view(n_pad, k_pad)
    src = torch.zeros(n, dtype=torch.int64)
    for p in range(0, max(1, (n - 1).bit_length() + 3) // 4):
        probe = torch._convert_weight_to_int4pack_for_cpu(((idx >> (4 * p)) & 15).to(torch.int32), 1)
        src |= torch.stack([probe & 15, probe >> 4], dim=-1).reshape(-1).to(torch.int64) << (4 * p)
    out = torch.empty(n, dtype=torch.uint8)
    out[src] = torch.stack([w4 & 15, w4 >> 4], dim=-1).reshape(-1)
    return out.view(n_pad, k_pad)


def layout_block() -> int:
    """Rows per interleaved block of torch's int4 CPU layout on this machine (64, 32), or 0 when
    it is neither (then only the probe inverts it). Decided on real tensors, once per process."""
    global _block
    if _block is None:
        t = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
        w = torch._convert_weight_to_int4pack_for_cpu(t, 1)
        _block = next((b for b in (64, 32) if tuple(w.shape) == (128, 32)
                       and torch.equal(_unpack_blocked(w, 128, 64, b).to(torch.int32), t)), 0)
    return _block


def unpack_int4(w4: Tensor, n_pad: int, k_pad: int) -> Tensor:
    """uint8 codes [N_pad, K_pad] from torch's CPU int4 layout (exact inverse of the converter)."""
    b = layout_block()
    if b and n_pad % b == 0:
        return _unpack_blocked(w4, n_pad, k_pad, b)
    return unpack_probe(w4, n_pad, k_pad)


def dequantize(w4: Tensor, sz: Tensor, gc: int, dtype=torch.float32) -> Tensor:
    """[N_pad, K_pad] weights of the layout (reordered rows and columns), computed in fp32 and
    rounded once to ``dtype``. Plain aten ops when the layout is blocked (Inductor fuses them)."""
    n_pad, k_pad = w4.shape[0], w4.shape[1] * 2
    q = unpack_int4(w4, n_pad, k_pad).view(n_pad, k_pad // gc, gc).float()
    s = sz[..., 0].t().unsqueeze(-1).float()  # [N, K/gc, 1]: one scale per (row, int4 group)
    z = sz[..., 1].t().unsqueeze(-1).float()
    return ((q - 8.0) * s + z).to(dtype).reshape(n_pad, k_pad)
