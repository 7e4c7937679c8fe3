"""Memory budgets: from bits per weight (BPW, everything stored) or a checkpoint size to a plan.

``QuantConfig.bits`` is the average *code* width. What a user budgets is memory: BPW counts every
stored bit of the quantized linears (codes, fp16 scales and zeros, permutations, bit maps, block
offsets; exactly what ``format.pack`` writes, see docs/FORMAT.md), and a size counts the whole
checkpoint's tensors (the packed linears plus every float tensor kept beside them: embeddings,
norms, an unquantized lm_head). Both are met the way ``bits`` is: a cap, never exceeded, reached to
within one block (a block's width step, plus the permutation that step can bring into being).

The solver (``code_bits_for_bpw``) bisects the code-bit target of a plan maker ``make(b) -> Plan``
whose packed size ``plan_bpw`` is computed exactly from the plan, before anything is quantized; the
saliences are computed once by the caller (``plan.plan_inputs``) and only steps 2-3 are repeated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .blocks import BlockGrid
from .config import MAX_BITS, MIN_BITS, QuantConfig, SFMPConfigError
from .permcodec import encode as encode_perm
from .plan import LayerPlan, Plan, default_regroup, find_linears, make_plan, plan_inputs
from .quantize import default_bit_choices

MIB = 2 ** 20
# Code-bit targets are searched in (MIN_BITS, MAX_BITS]; QuantConfig refuses MIN_BITS itself.
LOWEST_CODE_BITS = MIN_BITS + 1e-6


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


def plan_bytes(plan: Plan) -> int:
    """Bytes the plan's layers will pack to, everything counted (exact, before quantizing)."""
    c = plan.config
    return sum(layer_bytes(lp, c.block_rows, c.group_size) for lp in plan.layers.values())


def plan_weights(plan: Plan) -> int:
    """Number of quantized weights in the plan (Σ N·K)."""
    return sum(lp.shape[0] * lp.shape[1] for lp in plan.layers.values())


def plan_bpw(plan: Plan) -> float:
    """Stored bits per quantized weight, everything counted, before quantizing (exact)."""
    return plan_bytes(plan) * 8 / plan_weights(plan)


def code_bits_for_bpw(bpw: float, make: Callable[[float], Plan], lo: float = LOWEST_CODE_BITS, hi: float = MAX_BITS,
                      iters: int = 6, refine: int = 12) -> tuple[float, Plan]:
    """The largest code-bit target b (to ~1e-4) whose plan packs to at most ``bpw`` bits per weight.

    make(b) -> Plan. The overhead (scales, zeros, permutations, maps) is measured on the plan itself
    (``plan_bpw - average_bits``) and subtracted; a few fixed-point steps settle it (it only moves
    when a permutation appears or vanishes). Then b is bracketed between a target that fits and one
    that does not and bisected ``refine`` times. Returns (b, make(b)). Raises ValueError when even
    ``make(lo)`` does not fit.
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
# Budgets
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """A memory budget: ``bpw`` bits per quantized weight (everything stored), or ``size_mb`` MiB
    (2^20 bytes) for the whole checkpoint's tensors. Exactly one is set."""

    bpw: float | None = None
    size_mb: float | None = None

    def __post_init__(self):
        if (self.bpw is None) == (self.size_mb is None):
            raise SFMPConfigError("a budget is either bpw or size_mb, exactly one of them")
        for what, v in (("bpw", self.bpw), ("size_mb", self.size_mb)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise SFMPConfigError(f"{what} must be a positive number, got {v!r}")

    def describe(self) -> str:
        return f"BPW {self.bpw:g}" if self.bpw is not None else f"{self.size_mb:g} MiB"


def stored_bytes(model: nn.Module, exclude: Iterable[str] = ()) -> int:
    """Bytes of the tensors a checkpoint of ``model`` stores (its state dict, tied tensors once), less
    the state-dict keys in ``exclude``."""
    drop = set(exclude)
    seen, total = set(), 0
    for k, v in model.state_dict().items():
        if k in drop:
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else k
        if key in seen:
            continue
        seen.add(key)
        total += v.numel() * v.element_size()
    return total


def float_bytes_outside(model: nn.Module, layers: Iterable[str]) -> int:
    """Bytes a checkpoint of the float ``model`` stores besides the weights of ``layers`` (the
    quantized ones; their biases stay float and count here)."""
    return stored_bytes(model, {f"{n}.weight" for n in layers})


def target_bpw(budget: Budget, n_weights: int, other_bytes: int) -> float:
    """The BPW a budget allows ``n_weights`` quantized weights when ``other_bytes`` are stored beside them."""
    if budget.bpw is not None:
        return float(budget.bpw)
    room = budget.size_mb * MIB - other_bytes
    if room <= 0:
        raise SFMPConfigError(f"--size-mb {budget.size_mb:g} is smaller than what stays float alone "
                              f"({other_bytes / MIB:.2f} MiB: embeddings, norms, skipped layers)")
    return room * 8 / n_weights


def plan_maker(weights: Mapping[str, torch.Tensor], saliences: Mapping[str, torch.Tensor], config: QuantConfig,
               col_weights: Mapping[str, torch.Tensor] | None = None, levels: int | None = None
               ) -> Callable[[float], Plan]:
    """``make(b) -> Plan``: steps 2-3 (reorder, allocate) at code-bit target b, everything else as in
    ``config``. levels 3 without ``config.bit_choices``: ``default_bit_choices(b)`` for each b; given
    bit choices: b is clamped into their range. weights/saliences: name -> [N, K]."""
    fixed = config.bit_choices
    three = levels == 3 or fixed is not None

    def make(b: float) -> Plan:
        ch = (fixed or default_bit_choices(b)) if three else None
        if ch is not None:
            b = min(max(b, ch[0]), ch[-1])
            if b - ch[0] < 1e-3:  # at its floor the 3-level scan has no room; it is the 2-level plan there
                ch = None
        cfg = replace(config, bits=b, bit_choices=ch)
        return make_plan(weights, saliences, cfg, col_weights, regroup=default_regroup(cfg))
    return make


def solve(make: Callable[[float], Plan], bpw: float, what: str = "--bpw") -> tuple[float, Plan]:
    """(code bits, plan) of the largest code-bit target whose plan packs to at most ``bpw``; a clear
    ``SFMPConfigError`` when the target is below the least or above the most this plan maker can store."""
    least, most = make(LOWEST_CODE_BITS), make(MAX_BITS)
    if bpw < plan_bpw(least):
        raise SFMPConfigError(f"{what} asks for {bpw:.3f} BPW, below the least these layers can be stored in "
                              f"({plan_bpw(least):.3f} BPW: 1-bit codes plus scales, zeros and maps at this group size)")
    if bpw >= plan_bpw(most):
        raise SFMPConfigError(f"{what} asks for {bpw:.3f} BPW, at or above what 8-bit codes take "
                              f"({plan_bpw(most):.3f} BPW): there is nothing to trade; use a smaller budget")
    return code_bits_for_bpw(bpw, make)


def plan_for_budget(model: nn.Module, budget: Budget, *, calibration: Iterable | None = None,
                    salience: str | None = None, levels: int | None = None, **options) -> tuple[Plan, dict]:
    """A whole-model plan meeting ``budget``: ``plan.plan``'s salience, computed once, then the
    code-bit target solved. options: QuantConfig fields (not ``bits``). Returns (plan, info) with
    info: code_bits (the solved target), target_bpw, other_bytes (float tensors stored beside the
    quantized linears), n_weights, and for a size budget target_bytes."""
    choices = options.get("bit_choices")
    start = float(choices[1]) if choices else 3.0  # any valid target: the solver replaces it
    names = find_linears(model, QuantConfig(bits=start, **options).skip)
    n = sum(m.weight.numel() for m in names.values())
    other = float_bytes_outside(model, names)
    bpw = target_bpw(budget, n, other)  # an impossible size is refused before any calibration pass
    config, weights, sal, col_weights, timings = plan_inputs(model, start, calibration=calibration, salience=salience,
                                                             **options)
    what = "--bpw" if budget.bpw is not None else f"--size-mb {budget.size_mb:g}"
    bits, p = solve(plan_maker(weights, sal, config, col_weights, levels), bpw, what)
    p.timings.update(timings)
    info = {"code_bits": bits, "target_bpw": bpw, "other_bytes": other, "n_weights": n}
    if budget.size_mb is not None:
        info["target_bytes"] = budget.size_mb * MIB
    return p, info
