"""Global fractional bit allocation over all blocks of all layers (step 3 of SFMP).

No search: one global salience ranking decides every block's width. Fractions are taken by
*weight count*, so ragged edge blocks are charged for what they hold and the average is exact to
within one block. The achieved average never exceeds the target (it is a memory budget).

Ranking: blocks are ordered by salience *per weight* (block sum / real weights) by default. The
budget is counted in weights, so that is the greedy order that buys the most salience per bit; the
paper's order (by block sum, ``rank="sum"``) is the same wherever every block is full, and
under-ranks ragged ones (a GQA k/v layer of 192 rows sums as 192/512 of a full block). The 3-level
scan's loss is still Σ S_k / (2^{b_k} - 1)^2 over block sums, whatever the order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from .config import RANKS


@dataclass(frozen=True)
class ThreeLevelChoice:
    """Outcome of the 3-level scan: the best α1 on the grid and its block counts per width."""

    alpha1: float
    n_low: int    # lowest-salience blocks at b1
    n_high: int   # highest-salience blocks at b3
    loss: float   # Σ_k S_k / (2^{b_k} - 1)^2 before the budget top-up


def _flatten(blocks: Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
    names, sal, cnt = [], [], []
    for name, (s, c) in blocks.items():
        if s.shape != c.shape:
            raise ValueError(f"{name}: block salience {tuple(s.shape)} and block counts {tuple(c.shape)} differ in shape")
        if not torch.isfinite(s).all():
            raise ValueError(f"{name}: block salience contains NaN or inf")
        if (s < 0).any():
            raise ValueError(f"{name}: block salience must be non-negative")
        names.append(name)
        sal.append(s.detach().double().reshape(-1).cpu())
        cnt.append(c.detach().to(torch.int64).reshape(-1).cpu())
    if not names:
        raise ValueError("nothing to allocate: no layers were given")
    return names, torch.cat(sal), torch.cat(cnt)


def _unflatten(names, blocks, flat_bits: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name in names:
        shape = blocks[name][0].shape
        n = math.prod(shape)
        out[name] = flat_bits[i : i + n].view(shape).to(torch.uint8)
        i += n
    return out


def rank_key(sal: torch.Tensor, cnt: torch.Tensor, rank: str = "per_weight") -> torch.Tensor:
    """The value blocks are ranked by: sal [T] float64 block sums, cnt [T] int64 real weights per
    block -> float64 [T], salience per weight (``"per_weight"``) or the sum itself (``"sum"``)."""
    if rank == "sum":
        return sal
    if rank != "per_weight":
        raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
    return sal / cnt.clamp(min=1).double()


def _two_level(sal, cnt, bits: float, key) -> torch.Tensor:
    lo = math.floor(bits)
    out = torch.full_like(cnt, lo)
    extra = (bits - lo) * float(cnt.sum())  # weights that may carry one more bit
    if extra <= 0:
        return out
    order = torch.argsort(key, descending=True, stable=True)
    cum = torch.cumsum(cnt[order], 0).double()
    n_hi = int((cum <= extra * (1 + 1e-12)).sum())  # longest salient prefix that fits
    out[order[:n_hi]] = lo + 1
    return out


def scan_three_level(sal: torch.Tensor, cnt: torch.Tensor, bits: float, choices: tuple[int, int, int],
                     grid: int = 100, key: torch.Tensor | None = None) -> ThreeLevelChoice:
    """The paper's 1-D scan over α1 ∈ {0, 1/grid, ..., 1}.

    sal, cnt: float64 / int64 [T] over all blocks. For each α1, α3 = (b - b2 - (b1 - b2) α1)/(b3 - b2),
    α2 = 1 - α1 - α3 (skipped unless both in [0, 1]); blocks sorted by ascending ``key`` (default:
    ``sal``, the paper's order; ``rank_key`` gives the others): the lowest ≥ α1 of the weights get b1,
    the highest ≤ α3 get b3. Returns the α1 with the least Σ S_k / (2^{b_k} - 1)^2.
    """
    b1, b2, b3 = choices
    order = torch.argsort(sal if key is None else key, stable=True)
    s, c = sal[order], cnt[order].double()
    T = s.numel()
    total = float(c.sum())
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(c, 0)])
    ps = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)])
    w = [1.0 / (2**b - 1) ** 2 for b in choices]
    best = None
    eps = 1e-9
    for i in range(grid + 1):
        a1 = i / grid
        a3 = (bits - b2 - (b1 - b2) * a1) / (b3 - b2)
        a2 = 1 - a1 - a3
        if not (-eps <= a3 <= 1 + eps and -eps <= a2 <= 1 + eps):
            continue
        a3 = min(max(a3, 0.0), 1.0)  # the eps above admits tiny negatives from float error
        n1 = int(torch.searchsorted(cum, torch.tensor(a1 * total * (1 - 1e-12)), right=False))  # first prefix ≥ α1
        top = cum[T] - cum  # weight of the suffix starting at each position
        n3 = T - int(torch.searchsorted(-top, torch.tensor(-a3 * total * (1 + 1e-12)), right=False))
        n1 = min(n1, T)
        n3 = max(0, min(n3, T - n1))
        loss = float(ps[n1] * w[0] + (ps[T - n3] - ps[n1]) * w[1] + (ps[T] - ps[T - n3]) * w[2])
        if best is None or loss < best.loss:
            best = ThreeLevelChoice(a1, n1, n3, loss)
    if best is None:
        raise ValueError(f"bits={bits} cannot be reached with bit_choices {choices}")
    return best


def _three_level(sal, cnt, bits: float, choices, key) -> torch.Tensor:
    b1, b2, b3 = choices
    choice = scan_three_level(sal, cnt, bits, choices, key=key)
    order = torch.argsort(key, stable=True)
    T = sal.numel()
    n1, n3 = choice.n_low, choice.n_high
    sorted_bits = torch.full((T,), b2, dtype=torch.int64)
    sorted_bits[:n1] = b1
    sorted_bits[T - n3 :] = b3
    c = cnt[order]
    # Top up: the grid leaves up to two blocks of budget unused; spend it at the boundaries, which
    # keeps widths monotone in salience.
    budget = bits * float(cnt.sum()) * (1 + 1e-12)
    used = float((sorted_bits * c).sum())
    changed = True
    while changed:
        changed = False
        k = T - n3 - 1
        if k >= n1 and used + float(c[k]) * (b3 - b2) <= budget:
            sorted_bits[k] = b3
            used += float(c[k]) * (b3 - b2)
            n3 += 1
            changed = True
            continue
        k = n1 - 1
        if k >= 0 and used + float(c[k]) * (b2 - b1) <= budget:
            sorted_bits[k] = b2
            used += float(c[k]) * (b2 - b1)
            n1 -= 1
            changed = True
    out = torch.empty_like(sorted_bits)
    out[order] = sorted_bits
    return out


def allocate(blocks: Mapping[str, tuple[torch.Tensor, torch.Tensor]], bits: float,
             bit_choices: tuple[int, int, int] | None = None, rank: str = "per_weight") -> dict[str, torch.Tensor]:
    """Give every block of every layer a bit width so the weight-weighted average meets ``bits``.

    blocks: name -> (block salience float [R, G], real weights per block int [R, G]).
    bits: target average code bits. bit_choices: None for 2-level (⌊b⌋/⌈b⌉), or (b1, b2, b3).
    rank: "per_weight" (default) or "sum", the order blocks are ranked in (module docstring).
    Returns name -> uint8 [R, G] bit map; widths are monotone in the rank key.
    """
    names, sal, cnt = _flatten(blocks)
    key = rank_key(sal, cnt, rank)
    flat = (_two_level(sal, cnt, bits, key) if bit_choices is None
            else _three_level(sal, cnt, bits, tuple(bit_choices), key))
    return _unflatten(names, blocks, flat)


def average_bits(bit_maps: Mapping[str, torch.Tensor], counts: Mapping[str, torch.Tensor]) -> float:
    """Weight-count-weighted mean code width over all layers."""
    tot = sum(float((bit_maps[n].to(torch.int64) * counts[n]).sum()) for n in bit_maps)
    return tot / sum(float(counts[n].sum()) for n in bit_maps)
