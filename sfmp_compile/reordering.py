"""Row-column reordering (step 2): gather salient weights into the top-left blocks."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch


def ranked(scores: Iterable[torch.Tensor], shards: int = 1) -> torch.Tensor:
    """Positions by descending sum of ``scores`` (each float [n], summed in the order given), ties in
    index order: the paper's rule, applied to the sum over layers that share one order. int64 [n], CPU.

    shards: rank inside each of that many equal consecutive slices (tensor-parallel shards, ``tp``),
    so the order maps every slice onto itself; n must divide (``tp.check_split`` says so first)."""
    total = torch.stack(list(scores)).sum(0).cpu()
    per = total.numel() // shards
    return torch.cat([k * per + torch.argsort(total[k * per:(k + 1) * per], descending=True, stable=True)
                      for k in range(shards)])


def salience_orders(saliences: Mapping[str, torch.Tensor], row_groups: Iterable[Iterable[str]] = (),
                col_groups: Iterable[Iterable[str]] = (), rows: bool = True, cols: bool = True,
                shards: Mapping[str, tuple[int, int]] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(row_order int64 [N], col_order int64 [K]) per layer, from saliences fp32 [N, K] per layer.

    The paper orders columns by descending salience sums, then rows on the column-reordered salience
    (row sums do not depend on the column order, so each axis is ranked on its own). A layer in no
    group is ranked by its own fp64 row (column) sums; the members of a row (column)
    group share one order, ranked by the sum of their sums (the group's layers must agree in N (K)).
    Group members missing from ``saliences`` are ignored. A disabled axis gets the identity.
    shards: name -> (row shards, column shards) (default 1, 1): each axis is ranked inside its
    tensor-parallel shards (``ranked``); a tied group uses the most shards any member has.
    """
    sh = lambda n, axis: (shards or {}).get(n, (1, 1))[axis]  # noqa: E731
    row_sum = {n: s.sum(1, dtype=torch.float64).cpu() for n, s in saliences.items()}
    col_sum = {n: s.sum(0, dtype=torch.float64).cpu() for n, s in saliences.items()}
    row_order = {n: ranked([v], sh(n, 0)) if rows else torch.arange(v.numel()) for n, v in row_sum.items()}
    col_order = {n: ranked([v], sh(n, 1)) if cols else torch.arange(v.numel()) for n, v in col_sum.items()}
    for axis, (groups, sums, order, on) in enumerate(((row_groups, row_sum, row_order, rows),
                                                      (col_groups, col_sum, col_order, cols))):
        for group in groups if on else ():
            group = [g for g in group if g in saliences]
            if len(group) > 1:
                o = ranked([sums[g] for g in group], max(sh(g, axis) for g in group))
                order.update({g: o for g in group})
    return {n: (row_order[n], col_order[n]) for n in saliences}


def canonical(order: torch.Tensor, chunk: int) -> torch.Tensor:
    """``order`` (int64 [n]) with each consecutive chunk of ``chunk`` entries sorted ascending.

    A row-block (or column group) is quantized as a set: min-max codes are per (row, group), block
    bits per (row-block, group), so any order that puts the same rows in each row-block (the same
    columns in each group) yields the same quantized weights. Sorting inside chunks picks the order
    closest to the original one: the identity whenever the layer has a single row-block (k/v
    projections with N <= block_rows), which removes their output gather outright.
    """
    parts = [torch.sort(c).values for c in order.split(chunk)]
    return torch.cat(parts) if parts else order


def reorder(t: torch.Tensor, row_order: torch.Tensor, col_order: torch.Tensor) -> torch.Tensor:
    """t[row_order][:, col_order] for an [N, K] tensor."""
    return t.index_select(0, row_order.to(t.device)).index_select(1, col_order.to(t.device))
