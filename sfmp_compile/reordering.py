"""Row-column reordering (step 2): gather salient weights into the top-left blocks."""
from __future__ import annotations

import torch


def salience_orders(salience: torch.Tensor, rows: bool = True, cols: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Column order then row order from salience sums, both descending.

    salience: fp32 [N, K]. Returns (row_order int64 [N], col_order int64 [K]) with
    W' = W[row_order][:, col_order]. A disabled axis gets the identity. Columns are ordered first and
    rows are ranked on the column-reordered salience, as the paper does (row sums don't depend on
    the column order, so the result equals ordering each axis independently).
    """
    N, K = salience.shape
    s = salience.double()
    col_order = torch.argsort(s.sum(0), descending=True, stable=True) if cols else torch.arange(K)
    row_order = torch.argsort(s.sum(1), descending=True, stable=True) if rows else torch.arange(N)
    return row_order.cpu(), col_order.cpu()


def reorder(t: torch.Tensor, row_order: torch.Tensor, col_order: torch.Tensor) -> torch.Tensor:
    """t[row_order][:, col_order] for an [N, K] tensor."""
    return t.index_select(0, row_order.to(t.device)).index_select(1, col_order.to(t.device))


def inverse(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``: inverse(o)[o[i]] = i."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), dtype=order.dtype, device=order.device)
    return inv
