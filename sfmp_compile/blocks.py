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

    def block_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of an [N, K] tensor over each block, float64 [R, G] (fp64 so tiny saliences survive)."""
        if tuple(x.shape) != (self.out_features, self.in_features):
            raise ValueError(f"expected a tensor of shape {(self.out_features, self.in_features)}, got {tuple(x.shape)}")
        R, G = self.shape
        pad_r = R * self.block_rows - self.out_features
        pad_c = G * self.group_size - self.in_features
        x = torch.nn.functional.pad(x.double(), (0, pad_c, 0, pad_r))
        return x.view(R, self.block_rows, G, self.group_size).sum(dim=(1, 3))

    def expand_rows(self, per_block: torch.Tensor) -> torch.Tensor:
        """[R, G] per-block values -> [N, G] per (row, group) values."""
        return per_block.repeat_interleave(self.block_rows, dim=0)[: self.out_features]
