"""Builders shared by the tests: random packed weights that exercise ragged edges and bit mixes."""
import torch

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.format import PackedWeight, pack


def random_codes(grid: BlockGrid, bits: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [N, K] codes, each uniformly random below 2**bits of its block."""
    lim = grid.expand_rows(bits.to(torch.int64)).repeat_interleave(grid.group_size, 1)[:, : grid.in_features]
    u = torch.rand(grid.out_features, grid.in_features, generator=gen)
    return (u * (2.0 ** lim)).floor().clamp_max(2.0 ** lim - 1).to(torch.uint8)


def random_packed(N, K, block_rows, group_size, widths=(2, 3, 4), permute=True, seed=0, with_codes=False):
    """A PackedWeight with random block widths from ``widths`` (each appears at least once, so a
    kernel for the set is really exercised), uniformly random codes, fp16-exact scales and integer
    zeros; with ``with_codes`` also the uint8 [N, K] codes it packed (reordered coordinates)."""
    g = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, block_rows, group_size)
    R, G = grid.shape
    choices = torch.tensor(widths, dtype=torch.int64)
    bits = choices[torch.randint(0, len(widths), (R, G), generator=g)]
    flat = bits.view(-1)
    for i, b in enumerate(widths[: flat.numel()]):
        flat[i] = b
    codes = random_codes(grid, bits, g)
    scales = (torch.rand(N, G, generator=g) * 0.05 + 1e-3).half().float()
    zeros = torch.floor(torch.rand(N, G, generator=g) * 2.0 ** grid.expand_rows(bits).float())
    rp = torch.randperm(N, generator=g) if permute else None
    cp = torch.randperm(K, generator=g) if permute else None
    p: PackedWeight = pack(codes, bits, scales, zeros, rp, cp, block_rows, group_size)
    return (p, codes) if with_codes else p
