"""The baselines SFMP is measured against, expressed as Plans so they share its quantize/pack/BPW path.

uniform    every layer at one integer width, identity orders (no permutation stored or gathered).
layerwise  per-layer integer widths chosen by an exact knapsack (dynamic programme) over per-layer
           error estimates under the same code-bit budget: the "layer-wise mixed precision" the
           paper compares against (as HAWQ/SliM-LLM-style searches do, but solved exactly).

Also here: ``plan_bpw``, the exact stored bits per weight a Plan will pack to (what
``quantization_report(model)["bpw"]`` reports afterwards), and ``code_bits_for_bpw``, which turns a
BPW budget (everything counted) into the code-bit target of an SFMP plan.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import reduce
from typing import Callable, Mapping, Sequence

import torch

from ..blocks import BlockGrid
from ..config import QuantConfig
from ..plan import LayerPlan, Plan
from ..permcodec import encode as encode_perm
from ..quantizers.minmax import dequantize_groups, minmax_quantize


# --------------------------------------------------------------------------------------------------
# Exact byte accounting of a plan
# --------------------------------------------------------------------------------------------------

def layer_bytes(lp: LayerPlan, block_rows: int, group_size: int) -> int:
    """Bytes a format v2 checkpoint stores for one layer under ``lp`` (mirrors
    ``permcodec.stored_breakdown``, which ``quantization_report`` sums).

    codes rows·stored_cols·b/8 per block; bit map uint8, block_offset and group_order int32 per
    block; segment_ptr int32 [R, 10]; scales and zeros fp16 [G, N]; row/col permutations as their
    permcodec codes (empty for the identity).
    """
    N, K = lp.shape
    grid = BlockGrid(N, K, block_rows, group_size)
    R, G = grid.shape
    rows = torch.tensor([grid.rows_in(r) for r in range(R)], dtype=torch.int64)
    cols = torch.tensor([grid.stored_cols(j) for j in range(G)], dtype=torch.int64)
    words = int((rows[:, None] * cols[None, :] * lp.bits.to(torch.int64).cpu()).sum()) // 32
    n = 4 * words + R * G * (1 + 4 + 4) + R * 10 * 4 + 2 * 2 * G * N
    bits = lp.bits.to("cpu", torch.uint8)
    return n + sum(encode_perm(o, grid, bits, axis).numel() for axis, o in ((0, lp.row_order), (1, lp.col_order)))


def plan_bpw(plan: Plan) -> float:
    """Stored bits per quantized weight, everything counted, before quantizing (exact)."""
    c = plan.config
    stored = sum(layer_bytes(lp, c.block_rows, c.group_size) for lp in plan.layers.values())
    n = sum(lp.shape[0] * lp.shape[1] for lp in plan.layers.values())
    return stored * 8 / n


def code_bits_for_bpw(bpw: float, make: Callable[[float], Plan], lo: float = 1.0, hi: float = 8.0,
                      iters: int = 6, refine: int = 12) -> tuple[float, Plan]:
    """The largest code-bit target b (to ~1e-4) whose plan packs to at most ``bpw`` bits per weight.

    make(b) -> Plan. The overhead (scales, zeros, permutations, maps) is measured on the plan itself
    (``plan_bpw - average_bits``) and subtracted; a few fixed-point steps settle it (it only moves
    when a permutation appears or vanishes). Then b is bracketed between a target that fits and one
    that does not and bisected ``refine`` times. Returns (b, make(b)).
    """
    clamp = lambda x: min(max(x, lo), hi)  # noqa: E731
    b = clamp(bpw - 0.5)
    for _ in range(iters):
        plan = make(b)
        nb = clamp(bpw - (plan_bpw(plan) - plan.average_bits()))
        if abs(nb - b) < 1e-9:
            break
        b = nb
    fits = lambda p: plan_bpw(p) <= bpw + 1e-12  # noqa: E731
    plan = make(b)
    step = 1e-3
    if fits(plan):
        good, good_plan, bad = b, plan, None
        x = b
        while x < hi:  # look a little higher: the overhead estimate can be conservative
            x = clamp(x + step)
            p = make(x)
            if not fits(p):
                bad = x
                break
            good, good_plan, step = x, p, step * 2
        if bad is None:
            return good, good_plan
    else:
        bad, x = b, b
        good = good_plan = None
        while x > lo:
            x = clamp(x - step)
            p = make(x)
            if fits(p):
                good, good_plan = x, p
                break
            bad, step = x, step * 2
        if good is None:
            raise ValueError(f"no code-bit target >= {lo} fits {bpw} bits per weight: the fixed overhead is too large")
    for _ in range(refine):
        mid = (good + bad) / 2
        p = make(mid)
        if fits(p):
            good, good_plan = mid, p
        else:
            bad = mid
    return good, good_plan


# --------------------------------------------------------------------------------------------------
# Uniform
# --------------------------------------------------------------------------------------------------

def _identity_plan(shapes: Mapping[str, tuple[int, int]], widths: Mapping[str, int], config: QuantConfig,
                   col_weights: Mapping[str, torch.Tensor] | None) -> Plan:
    layers = {}
    cws = col_weights or {}
    for n, (N, K) in shapes.items():
        grid = BlockGrid(N, K, config.block_rows, config.group_size)
        layers[n] = LayerPlan(torch.arange(N), torch.arange(K), torch.full(grid.shape, int(widths[n]), dtype=torch.uint8),
                              cws.get(n))
    return Plan(config, layers)


def uniform_plan(shapes: Mapping[str, tuple[int, int]], bits: int, config: QuantConfig | None = None,
                 col_weights: Mapping[str, torch.Tensor] | None = None) -> Plan:
    """Every layer at ``bits`` (an integer), identity orders. shapes: name -> (out, in)."""
    if isinstance(bits, bool) or int(bits) != bits:
        raise ValueError(f"uniform precision needs an integer bit width, got {bits!r}")
    config = replace(config or QuantConfig(), bits=float(bits), bit_choices=None, reorder_rows=False, reorder_cols=False)
    return _identity_plan(shapes, {n: int(bits) for n in shapes}, config, col_weights)


# --------------------------------------------------------------------------------------------------
# Layer-wise mixed precision
# --------------------------------------------------------------------------------------------------

def layer_errors(weights: Mapping[str, torch.Tensor], error_weights: Mapping[str, torch.Tensor],
                 choices: Sequence[int], config: QuantConfig,
                 col_weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, dict[int, float]]:
    """Per-layer error estimate at each width: Σ E ⊙ (W − Q_b(W))², Q_b the RTN quantizer SFMP uses
    (min-max per (row, group), clip search as configured), original column order.

    weights: name -> [N, K]. error_weights: name -> [N, K] or [K] (broadcast over rows): Fisher F for a
    loss estimate, E[x²] for an output-MSE estimate, ones for weight MSE.
    Returns name -> {bits: float error}.
    """
    out = {}
    cws = col_weights or {}
    for n, w in weights.items():
        w = w.detach().float()
        N, K = w.shape
        G = -(-K // config.group_size)
        e = error_weights[n].float().to(w.device)
        e = e[None, :] if e.dim() == 1 else e
        cw = cws.get(n)
        out[n] = {}
        for b in choices:
            codes, s, z = minmax_quantize(w, torch.full((N, G), int(b)), config.group_size, clip=config.clip_search,
                                          col_weight=None if cw is None else cw.float().to(w.device))
            d = w - dequantize_groups(codes, s, z, config.group_size)
            out[n][int(b)] = float((d.pow(2) * e).double().sum())
    return out


def knapsack_bits(errors: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int], bits: float,
                  max_cells: int = 50_000_000) -> dict[str, int]:
    """Exact minimum of Σ_l err_l(b_l) subject to Σ_l n_l·b_l ≤ bits·Σ_l n_l (dynamic programme).

    errors: name -> {width: error}; sizes: name -> weight count n_l. Costs are counted in units of
    gcd(n_l), so the budget is met exactly whenever integer widths can meet it, and never exceeded.
    If the table would exceed ``max_cells``, sizes are rounded *up* to a coarser unit (the budget
    still holds, possibly with slack). Returns name -> width.
    """
    names = list(errors)
    if not names:
        raise ValueError("nothing to allocate: no layers were given")
    choices = sorted({b for n in names for b in errors[n]})
    for n in names:
        if sorted(errors[n]) != choices:
            raise ValueError(f"{n}: errors must be given for the same widths {choices} as every other layer")
        if sizes[n] <= 0:
            raise ValueError(f"{n}: layer size must be positive")
    total = sum(int(sizes[n]) for n in names)
    b0 = choices[0]
    if bits < b0 - 1e-12:
        raise ValueError(f"bits={bits} is below the smallest width {b0}: no layer-wise assignment fits")
    unit = reduce(math.gcd, (int(sizes[n]) for n in names))
    # Capacity in units of `unit` weight-bits above the all-b0 floor.
    cap = math.floor((bits - b0) * total / unit * (1 + 1e-12) + 1e-9)
    while (cap + 1) * len(names) * len(choices) > max_cells:
        unit *= 2
        cap = math.floor((bits - b0) * total / unit + 1e-9)
    units = {n: -(-int(sizes[n]) // unit) for n in names}
    inf = float("inf")
    dp = torch.full((cap + 1,), inf, dtype=torch.float64)
    dp[0] = 0.0
    pick = torch.zeros(len(names), cap + 1, dtype=torch.int8)
    for li, n in enumerate(names):
        new = torch.full_like(dp, inf)
        arg = torch.zeros(cap + 1, dtype=torch.int8)
        for ci, b in enumerate(choices):
            shift = (b - b0) * units[n]
            if shift > cap:
                continue
            cand = torch.full_like(dp, inf)
            cand[shift:] = dp[: cap + 1 - shift] + float(errors[n][b])
            better = cand < new
            new = torch.where(better, cand, new)
            arg[better] = ci
        dp, pick[li] = new, arg
    if not torch.isfinite(dp).any():
        raise ValueError("no layer-wise assignment meets the budget")
    # Least error; among equal errors, the fullest use of the budget.
    best = float(dp.min())
    c = int(torch.nonzero(dp <= best).max())
    out = {}
    for li in range(len(names) - 1, -1, -1):
        n = names[li]
        b = choices[int(pick[li, c])]
        out[n] = b
        c -= (b - b0) * units[n]
    return out


def layerwise_plan(weights: Mapping[str, torch.Tensor], error_weights: Mapping[str, torch.Tensor], bits: float,
                   config: QuantConfig | None = None, choices: Sequence[int] = (2, 3, 4),
                   col_weights: Mapping[str, torch.Tensor] | None = None) -> Plan:
    """Layer-wise mixed precision as a Plan: per-layer integer widths from ``knapsack_bits`` over
    ``layer_errors``; each layer's bit map uniform at its width, identity orders.

    weights: name -> [N, K] (original order). bits: target average code bits. The plan's timings
    hold the full allocation cost: ``measure_s`` (quantizing every layer at every width) and
    ``allocate_s`` (the dynamic programme).
    """
    config = replace(config or QuantConfig(), bits=float(bits), bit_choices=None, reorder_rows=False, reorder_cols=False)
    t0 = time.perf_counter()
    errs = layer_errors(weights, error_weights, choices, config, col_weights)
    t1 = time.perf_counter()
    widths = knapsack_bits(errs, {n: w.numel() for n, w in weights.items()}, bits)
    t2 = time.perf_counter()
    plan = _identity_plan({n: tuple(w.shape) for n, w in weights.items()}, widths, config, col_weights)
    plan.timings.update({"measure_s": t1 - t0, "allocate_s": t2 - t1})
    plan.layer_errors = errs  # kept for reports
    return plan
