"""Plan a graph's linears with *tied* orders, so that the folding pass can remove gathers exactly.

Two ties, both decided from the traced graph rather than from layer names:
  rows    the linears whose outputs meet in one elementwise region (gate_proj and up_proj under
          SiLU(gate)·up) get one common row order, ranked by their summed row salience. Then all
          producers of the region emit the same permutation P and the region runs in P order with
          no gather; only the consumer (down_proj) composes P⁻¹ into its input gather.
  columns the linears that read the same activation (q/k/v, gate/up) get one common column order,
          ranked by their summed column salience, so their input gathers are identical and merge.
Both are the paper's own rule (sort by salience sums, descending) applied to the sum over the tied
layers; raw saliences are summed without normalisation, as the paper compares them across layers.
Allocation is then the usual global one over all blocks (``allocation.allocate``).
"""
from __future__ import annotations

import inspect
import time
from typing import Iterable, Mapping

import torch
import torch.fx as fx

from ..allocation import allocate
from ..blocks import BlockGrid
from ..config import QuantConfig
from ..plan import LayerPlan, Plan, checked_salience, make_plan, regroup_slots
from ..reordering import reorder
from .find_linears import LinearSite
from .regions import Region, RegionContext, find_region


def tie_groups(sites: Iterable[LinearSite], constant) -> tuple[list[list[str]], list[list[str]]]:
    """(row groups, column groups) of layer names among the quantizable ``sites`` of one graph.

    constant(node) -> tensor | None identifies parameters / buffers (permutable offline).
    """
    sites = [s for s in sites if s.quantizable and s.form != "sfmp"]
    by_node = {s.node: s for s in sites}
    ctx = RegionContext(
        is_producer=lambda n: n in by_node,
        is_consumer=lambda u, v: u in by_node and by_node[u].x is v,
        constant=constant,
    )
    rows, seen = [], set()
    for s in sites:
        if s.name in seen:
            continue
        r = find_region(s.node, ctx)
        if isinstance(r, Region) and len(r.producers) > 1:
            names = [by_node[p].name for p in r.producers]
            rows.append(names)
            seen.update(names)
    cols: dict[fx.Node, list[str]] = {}
    for s in sites:
        cols.setdefault(s.x, []).append(s.name)
    return rows, [g for g in cols.values() if len(g) > 1]


def _ranked(scores: list[torch.Tensor]) -> torch.Tensor:
    total = torch.stack(scores).sum(0)
    return torch.argsort(total, descending=True, stable=True).cpu()


def canonical(order: torch.Tensor, chunk: int) -> torch.Tensor:
    """``order`` with each consecutive chunk of ``chunk`` entries sorted ascending.

    A row-block (or column group) is quantized as a set: min-max codes are per (row, group), block
    bits per (row-block, group), so any order that puts the same rows in each row-block (the same
    columns in each group) yields the same quantized weights. Sorting inside chunks picks the order
    closest to the original one: the identity whenever the layer has a single row-block (k/v
    projections with N <= block_rows), which removes their output gather outright.
    """
    parts = [torch.sort(c).values for c in order.split(chunk)]
    return torch.cat(parts) if parts else order


def _regroup_axis(orders: dict, bit_maps: dict, grids: dict, groups: list[list[str]], axis: int) -> None:
    """Regroup every layer's row (axis 0) or column (axis 1) order, tied groups by their joint pattern."""
    grouped = {n for g in groups for n in g}
    for g in groups + [[n] for n in orders if n not in grouped]:
        grid = grids[g[0]]
        if axis == 0:
            sizes = [grid.rows_in(r) for r in range(grid.n_row_blocks)]
            pats = [tuple(x for n in g for x in bit_maps[n][r, :].tolist()) for r in range(grid.n_row_blocks)]
        else:
            sizes = [grid.cols_in(j) for j in range(grid.n_groups)]
            pats = [tuple(x for n in g for x in bit_maps[n][:, j].tolist()) for j in range(grid.n_groups)]
        # Same rule as plan.regroup_orders; a tied slot's pattern is every member's pattern
        # concatenated, so the shared order stays shared.
        new = regroup_slots(orders[g[0]][axis], sizes, pats)
        for n in g:
            o = list(orders[n])
            o[axis] = new
            orders[n] = tuple(o)


def block_sums(s: torch.Tensor, ro: torch.Tensor, co: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """Salience per block of the reordered matrix, fp64 [R, G]; equals grid.block_sums(reorder(s, ro, co)).

    Sums over each column group first (one gather of the columns, one contiguous reduction in fp64),
    then over row-blocks on the small [N, G] result: one pass over the full matrix instead of a
    reorder, a pad and a strided reduction.
    """
    R, G = grid.shape
    gs, br = grid.group_size, grid.block_rows
    x = s.index_select(1, co.to(s.device))
    full = (grid.in_features // gs) * gs
    parts = [x[:, :full].reshape(-1, full // gs, gs).sum(-1, dtype=torch.float64)] if full else []
    if full < grid.in_features:
        parts.append(x[:, full:].sum(-1, keepdim=True, dtype=torch.float64))
    per_row = torch.cat(parts, dim=1).cpu().index_select(0, ro.cpu())  # [N, G] in reordered rows
    pad = R * br - grid.out_features
    if pad:
        per_row = torch.nn.functional.pad(per_row, (0, 0, 0, pad))
    return per_row.view(R, br, G).sum(1)


def _make_plan_regroups() -> bool:
    """make_plan's default for its ``regroup`` option (False if it has none)."""
    p = inspect.signature(make_plan).parameters.get("regroup")
    return bool(p.default) if p is not None and p.default is not inspect.Parameter.empty else False


def make_tied_plan(weights: Mapping[str, torch.Tensor], saliences: Mapping[str, torch.Tensor], config: QuantConfig,
                   col_weights: Mapping[str, torch.Tensor] | None = None, row_groups: Iterable[Iterable[str]] = (),
                   col_groups: Iterable[Iterable[str]] = (), regroup_orders: bool | None = None) -> Plan:
    """Like ``plan.make_plan`` (weights: name -> W [N, K]; saliences fp32 [N, K]) with tied orders.

    Layers in no group are ordered as ``make_plan`` orders them. regroup_orders (None: whatever
    ``make_plan`` does by default, so both planners agree) True restores original order inside each bit pattern (``regroup``), jointly for tied layers;
    False keeps the salience sort but sorts inside each row-block / column group (``canonical``:
    identical quantized weights, fewer or cheaper gathers; min-max quantizer only, since GPTQ's
    column order is its processing order).
    """
    t0 = time.perf_counter()
    if regroup_orders is None:
        regroup_orders = _make_plan_regroups()
    row_groups, col_groups = [list(g) for g in row_groups], [list(g) for g in col_groups]
    row_sum, col_sum = {}, {}
    for name, w in weights.items():
        s = checked_salience(saliences, name, w)
        row_sum[name] = s.sum(1, dtype=torch.float64).cpu()  # fp64 sums, as salience_orders does
        col_sum[name] = s.sum(0, dtype=torch.float64).cpu()
    row_order = {n: _ranked([v]) for n, v in row_sum.items()}
    col_order = {n: _ranked([v]) for n, v in col_sum.items()}
    for group in row_groups:
        group = [g for g in group if g in weights]
        if len(group) > 1:
            o = _ranked([row_sum[g] for g in group])
            row_order.update({g: o for g in group})
    for group in col_groups:
        group = [g for g in group if g in weights]
        if len(group) > 1:
            o = _ranked([col_sum[g] for g in group])
            col_order.update({g: o for g in group})
    blocks, orders = {}, {}
    for name, w in weights.items():
        N, K = w.shape
        ro = row_order[name] if config.reorder_rows else torch.arange(N)
        co = col_order[name] if config.reorder_cols else torch.arange(K)
        if not regroup_orders and config.quantizer == "rtn":
            ro, co = canonical(ro, config.block_rows), canonical(co, config.group_size)
        grid = BlockGrid(N, K, config.block_rows, config.group_size)
        blocks[name] = (block_sums(saliences[name], ro, co, grid), grid.weight_counts())
        orders[name] = (ro, co)
    t1 = time.perf_counter()
    bit_maps = allocate(blocks, config.bits, config.bit_choices)
    t2 = time.perf_counter()
    if regroup_orders:
        grids = {n: BlockGrid(w.shape[0], w.shape[1], config.block_rows, config.group_size) for n, w in weights.items()}
        rg = [[n for n in g if n in weights] for g in row_groups]
        cg = [[n for n in g if n in weights] for g in col_groups]
        _regroup_axis(orders, bit_maps, grids, [g for g in rg if len(g) > 1], 0)
        _regroup_axis(orders, bit_maps, grids, [g for g in cg if len(g) > 1], 1)
    cws = col_weights or {}
    layers = {n: LayerPlan(orders[n][0], orders[n][1], bit_maps[n], cws.get(n)) for n in weights}
    return Plan(config, layers, {"reorder_s": t1 - t0, "allocate_s": t2 - t1})
