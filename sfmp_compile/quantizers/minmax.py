"""Asymmetric min-max quantization per (output row, column group), any width 1..8 per group.

Scales are relative to each group: a group's scale is its range / (2^bits − 1) (the range always
contains 0, so it is at least max|w| / 255 at any width and clip ratio), with no absolute floor, so
quantizing c·w gives the same codes as w and scales c times as large. Only an all-zero group gets
the absolute scale 1 (codes = zero point = 0, dequantizing to exactly 0).

fp16 storage limits (scales are stored fp16): the scaling is exact for scales in fp16's normal
range [2^-14 ≈ 6.1e-5, 65504] and power-of-two c. Below it, subnormal scales (down to 2^-24 ≈ 6e-8)
keep the codes but lose relative precision; they are rounded up, never down, so no weight is
clamped. A group whose scale is below 2^-24 cannot be stored and quantizes to 0: when that zeroes a
whole nonzero weight, ``warn_if_zeroed`` warns. A scale above 65504 (|w| beyond ~65504·(2^bits − 1))
raises ValueError.
"""
from __future__ import annotations

import warnings

import torch

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -14  # smallest normal fp16: scales below it are subnormal (less precise)
FP16_MIN_SUBNORMAL = 2.0 ** -24  # smallest positive fp16
ZERO_GROUP_SCALE = 1.0  # the absolute scale of an all-zero group (any positive value dequantizes it to 0)
CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))  # the reference's shrink grid: 1.0, 0.95, ..., 0.55


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> ([N, G, g] zero-padded, bool mask of real columns [G, g])."""
    N, K = w.shape
    G = -(-K // group_size)
    pad = G * group_size - K
    wp = torch.nn.functional.pad(w, (0, pad)).view(N, G, group_size)
    mask = (torch.arange(G * group_size, device=w.device) < K).view(G, group_size)
    return wp, mask


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, qmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) for ranges [lo, hi] (lo <= 0 <= hi); scale rounded to fp16 so stored and used
    values agree. The scale is relative to the range (see the module docstring); subnormal fp16
    scales are rounded up so the range stays covered."""
    rng = hi - lo
    exact = rng / qmax
    if bool((exact > FP16_MAX).any()):
        raise ValueError(f"a weight group's range ({float(rng.max()):.3g}) overflows fp16 scales (scale > {FP16_MAX:g}, "
                         "|w| beyond ~65504·(2^bits − 1)); these weights cannot be stored")
    scale = exact.half().float()
    low = (scale < exact) & (scale < FP16_TINY)  # a subnormal rounded down: step up one fp16 ulp
    if bool(low.any()):
        scale = torch.where(low, scale + FP16_MIN_SUBNORMAL, scale)
    scale = torch.where(rng > 0, scale, torch.full_like(scale, ZERO_GROUP_SCALE))
    if not torch.isfinite(scale).all():
        raise ValueError("a weight group's range overflows fp16 scales (|w| > 65504·qmax); these weights cannot be stored")
    zero = torch.minimum(torch.maximum(torch.round(-lo / scale), torch.zeros_like(qmax)), qmax)
    return scale, zero


def warn_if_zeroed(w: torch.Tensor, codes: torch.Tensor, zeros: torch.Tensor, group_size: int,
                   name: str | None = None) -> None:
    """Warn (once, naming the layer when known) when a weight with nonzero entries quantizes to all zeros."""
    K = codes.shape[1]
    z = zeros.repeat_interleave(group_size, dim=1)[:, :K]
    if bool((codes.float() == z).all()) and bool((w != 0).any()):
        who = f"layer {name}" if name else "a weight"
        warnings.warn(f"{who} quantizes to all zeros: max|w| = {float(w.abs().max()):.3g} is below what fp16 scales "
                      f"can resolve (scales < {FP16_MIN_SUBNORMAL:.3g}); rescale the layer or skip it", stacklevel=3)


def _codes(w, scale, zero, qmax, out=None):
    """clamp(round(w / scale) + zero, 0, qmax) as fp32 codes, computed in one tensor (``out``, or a new one)."""
    q = torch.div(w, scale[..., None], out=out)
    q.round_().add_(zero[..., None])
    torch.maximum(q, torch.zeros((), dtype=q.dtype, device=q.device), out=q)
    return torch.minimum(q, qmax[..., None], out=q)


CLIP_CHUNK_ELEMS = 1 << 20  # weights per slab of the clip search (a 4 MB work buffer; measured best of 2^13..2^24)


def _clip_search(wp: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmax: torch.Tensor,
                 cwp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) [N, G] of the clip ratio with the least weighted error per (row, group).

    wp: [N, G, g] grouped weights; lo, hi, qmax: [N, G]; cwp: [1, G, g] column weights. Slabs of
    rows run through one reused buffer with in-place ops, where the whole-matrix form allocated
    about ten [N, G, g] temporaries per ratio (an 8B model's RTN pass spent most of its time
    there; figures in benchmarks/RESULTS.md, "Streamed quantization"). Per element the operations
    and their order are the whole-matrix form's, and each error sums one group, so the choice is
    bit for bit the same."""
    N, G, g = wp.shape
    step = max(1, CLIP_CHUNK_ELEMS // max(1, G * g))
    scale, zero = torch.empty_like(lo), torch.empty_like(lo)
    buf = torch.empty((min(step, N), G, g), dtype=wp.dtype, device=wp.device)
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        w, q, b = wp[r0:r1], qmax[r0:r1], buf[: r1 - r0]
        best_err = best_s = best_z = None
        for ratio in CLIP_RATIOS:
            s, z = params_from_range(lo[r0:r1] * ratio, hi[r0:r1] * ratio, q)
            err = _codes(w, s, z, q, out=b).sub_(z[..., None]).mul_(s[..., None]).sub_(w).pow_(2).mul_(cwp).sum(-1)
            if best_err is None:
                best_err, best_s, best_z = err, s, z
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_s = torch.where(better, s, best_s)
                best_z = torch.where(better, z, best_z)
        scale[r0:r1], zero[r0:r1] = best_s, best_z
    return scale, zero


def minmax_quantize(w: torch.Tensor, group_bits: torch.Tensor, group_size: int, *, clip: bool = False,
                    col_weight: torch.Tensor | None = None, name: str | None = None,
                    check: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric quantization.

    w: float [N, K] (reordered). group_bits: int [N, G] width per (row, group). col_weight: optional
    fp32 [K] importance of each column (E[x²] for output-MSE clipping; None = plain weight MSE).
    clip: search the shrink ratios 1.0..0.55 of [min, max] per (row, group), keeping the least error.
    name: the layer's name for the all-zeros warning; check=False skips that check (GPTQ's per-group calls).
    Returns codes uint8 [N, K], scales fp32 [N, G] (fp16-exact), zeros fp32 [N, G] (integers).
    """
    w = w.float()
    N, K = w.shape
    wp, mask = _grouped(w, group_size)
    qmax = (2.0 ** group_bits.to(w.device, torch.float32)) - 1  # [N, G]
    big = torch.finfo(torch.float32).max
    # The range always contains 0 (as GPTQ does): the reference's clamped zero point otherwise
    # cannot represent a group that lies entirely on one side of zero.
    if K % group_size:  # only the padded tail group needs its padding masked out
        lo = torch.where(mask, wp, torch.full_like(wp, big)).amin(-1).clamp_max(0)
        hi = torch.where(mask, wp, torch.full_like(wp, -big)).amax(-1).clamp_min(0)
    else:
        lo, hi = wp.amin(-1).clamp_max(0), wp.amax(-1).clamp_min(0)
    scale, zero = params_from_range(lo, hi, qmax)
    if clip:
        cw = torch.ones(K, device=w.device) if col_weight is None else col_weight.float().to(w.device)
        cwp, _ = _grouped(cw[None], group_size)  # [1, G, g]; padded columns weigh 0
        scale, zero = _clip_search(wp, lo, hi, qmax, cwp)
    codes = _codes(wp, scale, zero, qmax).view(N, -1)[:, :K].to(torch.uint8)
    if check:
        warn_if_zeroed(w, codes, zero, group_size, name)
    return codes, scale, zero


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """ŵ = scale·(q − zero) from codes [N, K] and per-group scales/zeros [N, G], fp32 [N, K]."""
    K = codes.shape[1]
    s = scales.float().repeat_interleave(group_size, dim=1)[:, :K]
    z = zeros.float().repeat_interleave(group_size, dim=1)[:, :K]
    return (codes.float() - z) * s
