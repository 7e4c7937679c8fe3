"""The 2-D block grid of a weight matrix: m_b output rows x n_b input columns, ragged at the edges.

Everything that reasons about blocks (allocation, quantizers, the packed format, kernels) uses this
one description so a ragged edge means the same thing everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class BlockGrid:
    """Block geometry of an ``out_features x in_features`` weight (in reordered coordinates).

    Row-block r covers rows [r*block_rows, min((r+1)*block_rows, N)); group j covers columns
    [j*group_size, min((j+1)*group_size, K)). Only the last row-block / group may be ragged.
    """

    out_features: int
    in_features: int
    block_rows: int
    group_size: int

    @property
    def n_row_blocks(self) -> int:
        return ceil_div(self.out_features, self.block_rows)

    @property
    def n_groups(self) -> int:
        return ceil_div(self.in_features, self.group_size)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_row_blocks, self.n_groups)

    def rows_in(self, r: int) -> int:
        return min(self.block_rows, self.out_features - r * self.block_rows)

    def cols_in(self, j: int) -> int:
        return min(self.group_size, self.in_features - j * self.group_size)

    def stored_cols(self, j: int) -> int:
        """Columns a packed group occupies: real columns rounded up to whole 32-bit words."""
        return ceil_div(self.cols_in(j), 32) * 32

    def weight_counts(self) -> torch.Tensor:
        """Real weights per block, int64 [R, G]."""
        rows = torch.tensor([self.rows_in(r) for r in range(self.n_row_blocks)], dtype=torch.int64)
        cols = torch.tensor([self.cols_in(j) for j in range(self.n_groups)], dtype=torch.int64)
        return rows[:, None] * cols[None, :]

    def block_sums(self, x: torch.Tensor, row_order: torch.Tensor | None = None,
                   col_order: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over each block of x[row_order][:, col_order], float64 [R, G] (fp64 so tiny saliences survive).

        x: float [N, K]; row_order int64 [N], col_order int64 [K], None for the identity. Sums each
        column group first (one gather of the columns, one contiguous fp64 reduction), then the
        row-blocks of the small [N, G] result, so the reordered matrix is never materialised.
        """
        if tuple(x.shape) != (self.out_features, self.in_features):
            raise ValueError(f"expected a tensor of shape {(self.out_features, self.in_features)}, got {tuple(x.shape)}")
        R, G = self.shape
        gs, br = self.group_size, self.block_rows
        if col_order is not None:
            x = x.index_select(1, col_order.to(x.device))
        full = (self.in_features // gs) * gs
        parts = [x[:, :full].reshape(-1, full // gs, gs).sum(-1, dtype=torch.float64)] if full else []
        if full < self.in_features:
            parts.append(x[:, full:].sum(-1, keepdim=True, dtype=torch.float64))
        per_row = torch.cat(parts, dim=1).cpu()  # [N, G]
        if row_order is not None:
            per_row = per_row.index_select(0, row_order.cpu())
        pad = R * br - self.out_features
        if pad:
            per_row = torch.nn.functional.pad(per_row, (0, 0, 0, pad))
        return per_row.view(R, br, G).sum(1)

    def expand_rows(self, per_block: torch.Tensor) -> torch.Tensor:
        """[R, G] per-block values -> [N, G] per (row, group) values."""
        return per_block.repeat_interleave(self.block_rows, dim=0)[: self.out_features]
