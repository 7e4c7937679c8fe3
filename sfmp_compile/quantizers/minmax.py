"""Asymmetric min-max quantization per (output row, column group), any width 1..8 per group."""
from __future__ import annotations

import torch

SCALE_FLOOR = 1e-5
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
    """(scale, zero) for ranges [lo, hi]; scale rounded to fp16 so stored and used values agree."""
    scale = ((hi - lo) / qmax).clamp_min(SCALE_FLOOR).half().float()
    if not torch.isfinite(scale).all():
        raise ValueError("a weight group's range overflows fp16 scales (|w| > 65504·qmax); these weights cannot be stored")
    zero = torch.minimum(torch.maximum(torch.round(-lo / scale), torch.zeros_like(qmax)), qmax)
    return scale, zero


def _codes(w, scale, zero, qmax):
    return torch.minimum(torch.maximum(torch.round(w / scale[..., None]) + zero[..., None], torch.zeros_like(w)), qmax[..., None])


def minmax_quantize(w: torch.Tensor, group_bits: torch.Tensor, group_size: int, *, clip: bool = False,
                    col_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric quantization.

    w: float [N, K] (reordered). group_bits: int [N, G] width per (row, group). col_weight: optional
    fp32 [K] importance of each column (E[x²] for output-MSE clipping; None = plain weight MSE).
    clip: search the shrink ratios 1.0..0.55 of [min, max] per (row, group), keeping the least error.
    Returns codes uint8 [N, K], scales fp32 [N, G] (fp16-exact), zeros fp32 [N, G] (integers).
    """
    w = w.float()
    N, K = w.shape
    wp, mask = _grouped(w, group_size)
    qmax = (2.0 ** group_bits.to(w.device, torch.float32)) - 1  # [N, G]
    big = torch.finfo(torch.float32).max
    # The range always contains 0 (as GPTQ does): the reference's clamped zero point otherwise
    # cannot represent a group that lies entirely on one side of zero.
    lo = torch.where(mask, wp, torch.full_like(wp, big)).amin(-1).clamp_max(0)
    hi = torch.where(mask, wp, torch.full_like(wp, -big)).amax(-1).clamp_min(0)
    scale, zero = params_from_range(lo, hi, qmax)
    if clip:
        cw = torch.ones(K, device=w.device) if col_weight is None else col_weight.float().to(w.device)
        cwp, _ = _grouped(cw[None], group_size)  # [1, G, g]; padded columns weigh 0
        best_err = None
        for ratio in CLIP_RATIOS:
            s, z = params_from_range(lo * ratio, hi * ratio, qmax)
            err = (((_codes(wp, s, z, qmax) - z[..., None]) * s[..., None] - wp).pow(2) * cwp).sum(-1)
            if best_err is None:
                best_err, scale, zero = err, s, z
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                scale = torch.where(better, s, scale)
                zero = torch.where(better, z, zero)
    codes = _codes(wp, scale, zero, qmax).view(N, -1)[:, :K].to(torch.uint8)
    return codes, scale, zero


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """ŵ = scale·(q − zero) from codes [N, K] and per-group scales/zeros [N, G], fp32 [N, K]."""
    K = codes.shape[1]
    s = scales.float().repeat_interleave(group_size, dim=1)[:, :K]
    z = zeros.float().repeat_interleave(group_size, dim=1)[:, :K]
    return (codes.float() - z) * s
