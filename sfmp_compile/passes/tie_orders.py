"""Find which of a graph's linears must share orders, so that the folding pass can remove gathers exactly.

Two ties, both decided from the traced graph rather than from layer names:
  rows    the linears whose outputs meet in one elementwise region (gate_proj and up_proj under
          SiLU(gate)·up) get one common row order, ranked by their summed row salience. Then all
          producers of the region emit the same permutation P and the region runs in P order with
          no gather; only the consumer (down_proj) composes P⁻¹ into its input gather.
  columns the linears that read the same activation (q/k/v, gate/up) get one common column order,
          ranked by their summed column salience, so their input gathers are identical and merge.
``plan.make_plan(..., row_groups, col_groups)`` then plans with these ties: the paper's own rule
(sort by salience sums, descending) applied to the sum over the tied layers, and the usual global
allocation over all blocks.
"""
from __future__ import annotations

from typing import Iterable

import torch.fx as fx

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
