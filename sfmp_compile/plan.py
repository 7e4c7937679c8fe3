"""A whole-model SFMP plan: per-layer row/column orders and block bit maps, decided once, globally.

Steps 1-3 of the method (salience -> reordering -> allocation) end here; quantizing a layer needs
only its weight and its LayerPlan, which is what lets the compile backend work graph by graph while
the budget stays global.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn

from .allocation import allocate, average_bits
from .blocks import BlockGrid
from .config import QuantConfig, SFMPConfigError
from .reordering import canonical as canonical_order, salience_orders
from .salience import SALIENCES, compute_salience, input_second_moments, is_linear, linear_weight
from .tp import axis_shards, check_heads, check_split


@dataclass
class LayerPlan:
    """row_order int64 [N], col_order int64 [K] (W' = W[row_order][:, col_order]), bits uint8 [R, G],
    col_weight fp32 [K] or None: E[x²] per ORIGINAL input column, for output-MSE clipping."""

    row_order: torch.Tensor
    col_order: torch.Tensor
    bits: torch.Tensor
    col_weight: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_order.numel(), self.col_order.numel())


@dataclass
class Plan:
    """The whole-model plan: the config it was made with, one LayerPlan per layer name, and the
    seconds each planning step took (``timings``)."""

    config: QuantConfig
    layers: dict[str, LayerPlan]
    timings: dict[str, float] = field(default_factory=dict)

    def average_bits(self) -> float:
        """Mean code width over all quantized weights (``allocation.average_bits`` of the bit maps)."""
        grids = {n: BlockGrid(*lp.shape, self.config.block_rows, self.config.group_size) for n, lp in self.layers.items()}
        return average_bits({n: lp.bits for n, lp in self.layers.items()}, {n: g.weight_counts() for n, g in grids.items()})


def skipped(name: str, patterns: Iterable[str]) -> bool:
    """fnmatch on the full name or on its last component (so 'lm_head' matches 'model.lm_head')."""
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


def fixed_width(name: str, config: QuantConfig, plan: "Plan | None" = None) -> int | None:
    """The ``config.skip_bits`` width of a layer outside SFMP's budget (not in ``plan`` when one is
    given, else matching ``config.skip``), or None: in the budget, or kept float."""
    outside = name not in plan.layers if plan is not None else skipped(name, config.skip)
    return next((b for p, b in config.skip_bits if skipped(name, (p,))), None) if outside else None


def fixed_width_plan(out_features: int, in_features: int, bits: int, config: QuantConfig) -> LayerPlan:
    """A layer outside SFMP's budget: every block ``bits`` wide, identity orders (no permutation cost)."""
    grid = BlockGrid(out_features, in_features, config.block_rows, config.group_size)
    return LayerPlan(torch.arange(out_features), torch.arange(in_features),
                     torch.full(grid.shape, bits, dtype=torch.uint8))


def find_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> dict[str, nn.Module]:
    """Every quantizable linear layer by qualified name, minus the skipped ones."""
    skip = tuple(skip)
    return {n: m for n, m in model.named_modules() if n and is_linear(m) and not skipped(n, skip)}


def check_weight(name: str, w: torch.Tensor) -> None:
    if not w.is_floating_point():
        raise TypeError(f"{name}: weight dtype {w.dtype} is not a floating-point type; SFMP quantizes float weights only")
    if w.is_meta:
        raise ValueError(f"{name}: weight is on the meta device (not materialised); load real weights first")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name}: weight contains NaN or inf; refusing to quantize it")


def checked_salience(saliences: Mapping[str, torch.Tensor], name: str, w: torch.Tensor) -> torch.Tensor:
    """``saliences[name]``, after checking it exists, has ``w``'s shape [N, K] and is finite."""
    s = saliences.get(name)
    if s is None:
        raise ValueError(f"no salience given for layer {name}")
    if tuple(s.shape) != tuple(w.shape):
        raise ValueError(f"{name}: salience shape {tuple(s.shape)} does not match weight shape {tuple(w.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name}: salience contains NaN or inf")
    return s


def regroup_slots(order: torch.Tensor, slot_sizes: list[int], patterns: list[tuple]) -> torch.Tensor:
    """Within slots (row-blocks or column groups) sharing a bit pattern, put their members back in
    original order (see regroup_orders). order int64 [n]; slot_sizes sum to n; one pattern per slot."""
    out = order.clone()
    starts = [0]
    for n in slot_sizes:
        starts.append(starts[-1] + n)
    by_pattern: dict[tuple, list[int]] = {}
    for i, pat in enumerate(patterns):
        by_pattern.setdefault(pat, []).append(i)
    for slots in by_pattern.values():
        members = torch.cat([order[starts[i]:starts[i + 1]] for i in slots]).sort().values
        pos = 0
        for i in slots:  # same slots, same sizes (a ragged edge slot stays ragged)
            out[starts[i]:starts[i + 1]] = members[pos:pos + slot_sizes[i]]
            pos += slot_sizes[i]
    return out


def _slot_patterns(bit_maps: list[torch.Tensor], grid: BlockGrid, axis: int) -> tuple[list[int], list[tuple]]:
    """Sizes of the row-blocks (axis 0) or column groups (axis 1), and per slot its bit pattern: the
    slot's row (column) of every bit map in ``bit_maps`` (uint8 [R, G] each), concatenated."""
    b = [m.to(torch.int64).cpu() for m in bit_maps]
    if axis == 0:
        return [grid.rows_in(r) for r in range(grid.n_row_blocks)], [tuple(x for m in b for x in m[r, :].tolist()) for r in range(grid.n_row_blocks)]
    return [grid.cols_in(j) for j in range(grid.n_groups)], [tuple(x for m in b for x in m[:, j].tolist()) for j in range(grid.n_groups)]


def regroup_orders(row_order: torch.Tensor, col_order: torch.Tensor, bits: torch.Tensor,
                   grid: BlockGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep WHICH columns (rows) get which bit widths, but not the salience sort inside a width.

    Columns of all groups with the same bit column bits[:, j] (rows of row-blocks with the same
    bits[r, :]) are put back in their original relative order. Salience-sorted groups bundle the
    high-E[x²] columns into shared scale groups, which lowers the plain weight MSE but raises the
    output error ‖X(W - Ŵ)ᵀ‖² (docs/ARCHITECTURE.md, "Regroup inside a width"); groups of columns in
    original order mix them with ordinary columns. Rows only share the bit map, never a scale, so
    their order inside a pattern changes no error, and a uniform layer ends up with identity orders
    (no permutation stored or gathered). int64 [N], int64 [K], uint8 [R, G] in; int64 [N], [K] out.
    """
    row_order = regroup_slots(row_order, *_slot_patterns([bits], grid, 0))
    col_order = regroup_slots(col_order, *_slot_patterns([bits], grid, 1))
    return row_order, col_order


def default_regroup(config: QuantConfig) -> bool:
    """Whether to regroup inside widths for this config: yes for RTN; no for GPTQ, which sweeps the
    columns in storage order, so the salience sort is its act-order (docs/ARCHITECTURE.md, "GPTQ
    keeps the salience sort")."""
    return config.quantizer != "gptq"


def _tied(groups: Iterable[Iterable[str]], layers: Mapping) -> list[list[str]]:
    """The groups that still tie anything: members present in ``layers``, at least two of them."""
    kept = [[n for n in g if n in layers] for g in groups]
    return [g for g in kept if len(g) > 1]


@dataclass
class LayerSummary:
    """What the global allocation needs from one layer, and all it keeps of its salience:
    row_order int64 [N], col_order int64 [K], block_sums fp64 [R, G] (salience summed over each
    block of the reordered weight), grid (its BlockGrid). A streamed run (stream.py) keeps one of
    these per layer instead of the [N, K] salience."""

    row_order: torch.Tensor
    col_order: torch.Tensor
    block_sums: torch.Tensor
    grid: BlockGrid


def summarize_layers(layers: Mapping[str, torch.Tensor], saliences: Mapping[str, torch.Tensor], config: QuantConfig,
                     row_groups: Iterable[Iterable[str]] = (), col_groups: Iterable[Iterable[str]] = (), *,
                     canonical: bool = False) -> dict[str, LayerSummary]:
    """Step 2 (reordering) and the block sums for a set of layers: name -> LayerSummary.

    layers: name -> weight [N, K]; saliences: name -> float [N, K]. A tied group must lie inside
    ``layers`` (its members are ranked together). canonical: sort inside each row-block / column
    group (``reordering.canonical``), see ``make_plan``. Layers in no group get the same summary
    whether summarised together or one set at a time, which is what lets ``stream.py`` go decoder
    layer by decoder layer and still share ``make_plan``'s allocation.
    """
    sal = {n: checked_salience(saliences, n, w) for n, w in layers.items()}
    grids = {n: BlockGrid(w.shape[0], w.shape[1], config.block_rows, config.group_size) for n, w in layers.items()}
    shards = {n: axis_shards(n, config.tp_shards) for n in layers}  # (1, 1) everywhere unless tp_shards > 1
    for n in layers:
        for axis in (0, 1):
            check_split(n, grids[n], axis, shards[n][axis])
    orders = salience_orders(sal, _tied(row_groups, layers), _tied(col_groups, layers),
                             config.reorder_rows, config.reorder_cols, shards)
    if canonical:
        orders = {n: (canonical_order(ro, config.block_rows), canonical_order(co, config.group_size))
                  for n, (ro, co) in orders.items()}
    return {n: LayerSummary(*orders[n], grids[n].block_sums(sal[n], *orders[n]), grids[n]) for n in layers}


def plan_from_summaries(summaries: Mapping[str, LayerSummary], config: QuantConfig,
                        col_weights: Mapping[str, torch.Tensor] | None = None, row_groups: Iterable[Iterable[str]] = (),
                        col_groups: Iterable[Iterable[str]] = (), *, regroup: bool = True) -> Plan:
    """Step 3: the one global allocation over every block of every summarised layer, then (regroup)
    original order restored inside each bit pattern (``regroup_orders``; a tied group's pattern is
    all its members' patterns, so a shared order stays shared). col_weights: name -> fp32 [K] E[x²]
    kept in the LayerPlans, or None. Timings: allocate_s, regroup_s."""
    t1 = time.perf_counter()
    row_groups, col_groups = _tied(row_groups, summaries), _tied(col_groups, summaries)
    bit_maps = allocate({n: (s.block_sums, s.grid.weight_counts()) for n, s in summaries.items()},
                        config.bits, config.bit_choices, config.rank)
    t2 = time.perf_counter()
    orders = {n: (s.row_order, s.col_order) for n, s in summaries.items()}
    if regroup:
        for axis, groups in ((0, row_groups), (1, col_groups)):
            grouped = {n for g in groups for n in g}
            for g in groups + [[n] for n in summaries if n not in grouped]:
                new = regroup_slots(orders[g[0]][axis], *_slot_patterns([bit_maps[n] for n in g],
                                                                         summaries[g[0]].grid, axis))
                for n in g:
                    orders[n] = (new, orders[n][1]) if axis == 0 else (orders[n][0], new)
    t3 = time.perf_counter()
    cws = col_weights or {}
    layer_plans = {n: LayerPlan(orders[n][0], orders[n][1], bit_maps[n], cws.get(n)) for n in summaries}
    return Plan(config, layer_plans, {"allocate_s": t2 - t1, "regroup_s": t3 - t2})


def make_plan(layers: Mapping[str, torch.Tensor], saliences: Mapping[str, torch.Tensor], config: QuantConfig,
              col_weights: Mapping[str, torch.Tensor] | None = None, row_groups: Iterable[Iterable[str]] = (),
              col_groups: Iterable[Iterable[str]] = (), *, regroup: bool = True, canonical: bool = False) -> Plan:
    """Reorder and allocate from given saliences: steps 2-3 of SFMP for a set of layers
    (``summarize_layers`` then ``plan_from_summaries``).

    layers: name -> weight [N, K] (original order); saliences: name -> float [N, K]; col_weights:
    name -> fp32 [K] E[x²] (stored in the LayerPlans for output-MSE clipping) or None.
    row_groups / col_groups: lists of layer names whose row (column) orders are tied: each group
    gets one order, ranked by the members' summed salience (``reordering.salience_orders``); the
    compile backend finds them in the graph (``passes.tie_orders.tie_groups``) so that the folding
    pass can drop the gathers between tied layers.
    regroup: after allocation, restore original order inside each bit pattern (``regroup_orders``).
    Right for RTN, where column order only decides which columns share a scale; ``plan()`` turns it
    off for GPTQ (``default_regroup``). canonical: with regroup=False and the min-max quantizer
    ("rtn"), sort inside each row-block / column group (``reordering.canonical``): the same quantized
    weights with fewer or cheaper gathers. Ignored for GPTQ, whose column order is its sweep order.
    With ``config.tp_shards`` > 1 every order on a tensor-parallel split axis is ranked inside its
    shards, and a shape that does not split raises SFMPConfigError (``tp``). Regrouping needs no
    change: each shard is whole slots (or lies inside one slot) and holds only its own indices, so
    the sorted members of a pattern's slots come shard by shard and refill the slots shard by shard.
    """
    t0 = time.perf_counter()
    row_groups, col_groups = _tied(row_groups, layers), _tied(col_groups, layers)
    summaries = summarize_layers(layers, saliences, config, row_groups, col_groups,
                                 canonical=canonical and not regroup and config.quantizer == "rtn")
    t1 = time.perf_counter()
    p = plan_from_summaries(summaries, config, col_weights, row_groups, col_groups, regroup=regroup)
    p.timings = {"reorder_s": t1 - t0 + p.timings.pop("regroup_s"), "allocate_s": p.timings["allocate_s"]}
    return p


def plan_inputs(model: nn.Module, bits: float = 3.0, *, calibration: Iterable | None = None,
                salience: str | Mapping[str, torch.Tensor] | None = None, **options):
    """What ``make_plan`` needs for a whole model, measured once: (config, weights name -> [N, K],
    saliences name -> fp32 [N, K], col_weights name -> fp32 [K] or None, timings).

    Arguments as for ``plan``. Kept apart so a caller solving for a memory budget
    (``budget.plan_for_budget``) can re-run steps 2-3 at many code-bit targets on one salience.
    """
    kind = salience if isinstance(salience, str) else None
    if salience is None:
        kind = "activation" if calibration is not None else "weight"
    elif kind is None and not isinstance(salience, Mapping):
        raise SFMPConfigError(f"salience must be one of {list(SALIENCES)} or a dict name -> tensor, got {type(salience).__name__}")
    config = QuantConfig(bits=bits, salience="weight" if kind is None else kind, **options)
    check_heads(getattr(model, "config", None), config.tp_shards)  # before any salience pass is paid for
    layers = find_linears(model, config.skip)
    if not layers:
        raise ValueError("the model has no linear layers to quantize (after skipping " + ", ".join(config.skip) + ")")
    weights = {}
    for n, m in layers.items():
        check_weight(n, m.weight)
        weights[n] = linear_weight(m).detach()
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)  # iterated more than once below
    t0 = time.perf_counter()
    col_weights = None
    if kind is not None and SALIENCES[kind].uses_moments and calibration is not None:
        col_weights = input_second_moments(model, layers, calibration)  # one pass: salience and clip weights
    sal = dict(salience) if kind is None else compute_salience(kind, model, layers, calibration, col_weights)
    t1 = time.perf_counter()
    if col_weights is None and calibration is not None and config.clip_search:
        col_weights = input_second_moments(model, layers, calibration)
    t2 = time.perf_counter()
    return config, weights, sal, col_weights, {"salience_s": t1 - t0, "moments_s": t2 - t1}


def plan(model: nn.Module, bits: float = 3.0, *, calibration: Iterable | None = None,
         salience: str | Mapping[str, torch.Tensor] | None = None, **options) -> Plan:
    """Decide every layer's orders and block bit widths for a whole model, without quantizing.

    salience: a name in ``salience.SALIENCES`` ("weight", "activation", "fisher"), or a precomputed
    dict name -> fp32 [N, K]; default "activation" when calibration is given, else "weight".
    options: QuantConfig fields. With calibration, E[x²] per layer is measured once, for an
    estimator that reads it and/or clip_search, and kept as the LayerPlans' col_weight.
    """
    config, weights, sal, col_weights, timings = plan_inputs(model, bits, calibration=calibration, salience=salience,
                                                             **options)
    p = make_plan(weights, sal, config, col_weights, regroup=default_regroup(config))
    p.timings.update(timings)
    return p
