"""Builders shared by the tests: random packed weights that exercise ragged edges and bit mixes."""
import torch

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.format import pack


def random_codes(grid: BlockGrid, bits: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [N, K] codes, each uniformly random below 2**bits of its block."""
    lim = grid.expand_rows(bits.to(torch.int64)).repeat_interleave(grid.group_size, 1)[:, : grid.in_features]
    u = torch.rand(grid.out_features, grid.in_features, generator=gen)
    return (u * (2.0 ** lim)).floor().clamp_max(2.0 ** lim - 1).to(torch.uint8)


def random_packed(N, K, block_rows, group_size, bit_choices=(2, 3, 4), permute=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, block_rows, group_size)
    choices = torch.tensor(bit_choices)
    bits = choices[torch.randint(0, len(bit_choices), grid.shape, generator=gen)]
    codes = random_codes(grid, bits, gen)
    G = grid.n_groups
    scales = (torch.rand(N, G, generator=gen) * 0.02 + 1e-3).half().float()
    zeros = torch.floor(torch.rand(N, G, generator=gen) * (2.0 ** grid.expand_rows(bits))).float()
    rp = torch.randperm(N, generator=gen) if permute else None
    cp = torch.randperm(K, generator=gen) if permute else None
    return pack(codes, bits, scales, zeros, rp, cp, block_rows, group_size), codes
