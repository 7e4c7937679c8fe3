"""Synthetic SFMP layers for the benchmarks: real format-v1 metadata, random code words.

Kernel speed does not depend on code values, and ``format.pack`` on a 14336x4096 layer costs
seconds on a CPU; so the walk metadata is derived exactly as ``pack()`` does (``self_check`` compares
them on a small ragged layer) and ``qweight`` is random words. Used by benchmarks/kernels.py and
benchmarks/decoder_e2e.py.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfmp_compile.blocks import BlockGrid  # noqa: E402
from sfmp_compile.format import PackedWeight, validate  # noqa: E402

BLOCK_ROWS, GROUP = 512, 128


def bit_map(R: int, G: int, bpw: float, group: int, gen) -> torch.Tensor:
    """[R, G] bits with exactly the fraction of high-width blocks that hits ``bpw``."""
    code_bits = bpw - 32.0 / group
    lo = int(math.floor(code_bits + 1e-9))
    n_hi = round((code_bits - lo) * R * G)
    bits = torch.full((R * G,), lo, dtype=torch.int64)
    bits[torch.randperm(R * G, generator=gen)[:n_hi]] = lo + 1
    return bits.view(R, G)


def synthetic_packed(N: int, K: int, bits: torch.Tensor, block_rows: int, group: int, seed: int = 0) -> PackedWeight:
    """A valid PackedWeight with random code words, built without packing real codes.

    Kernel speed does not depend on code values, and format.pack on a 14336x4096 layer costs
    seconds; so the walk metadata is derived exactly as pack() does and qweight is random words.
    """
    gen = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, block_rows, group)
    R, G = grid.shape
    order = torch.sort(bits * G + torch.arange(G), dim=1).indices
    seg = torch.zeros(R, 10, dtype=torch.int64)
    for b in range(1, 10):
        seg[:, b] = (bits < b).sum(dim=1)
    offsets = torch.zeros(R, G, dtype=torch.int64)
    cursor = 0
    for r in range(R):
        nr = grid.rows_in(r)
        for b in range(1, 9):
            js = order[r, seg[r, b]: seg[r, b + 1]].tolist()
            full = [j for j in js if grid.cols_in(j) == group]
            ragged = [j for j in js if grid.cols_in(j) != group]
            for grp in (full, ragged):
                for j in grp:
                    offsets[r, j] = cursor
                    cursor += nr * grid.stored_cols(j) * b // 32
    qweight = torch.randint(-2**31, 2**31 - 1, (cursor,), dtype=torch.int32, generator=gen)
    scales = (torch.rand(G, N, generator=gen) * 0.01 + 1e-3).half()
    zeros = torch.floor(torch.rand(G, N, generator=gen) * 2.0 ** grid.expand_rows(bits).t().float()).half()
    p = PackedWeight(qweight=qweight, bits=bits.to(torch.uint8), block_offset=offsets.to(torch.int32),
                     group_order=order.to(torch.int32), segment_ptr=seg.to(torch.int32), scales=scales,
                     zeros=zeros, row_perm=torch.randperm(N, generator=gen).to(torch.int32),
                     col_perm=torch.randperm(K, generator=gen).to(torch.int32),
                     out_features=N, in_features=K, block_rows=block_rows, group_size=group)
    validate(p, "synthetic layer")
    return p


def self_check() -> None:
    """The synthetic metadata equals format.pack's on a small ragged layer (so timings are real)."""
    from sfmp_compile.format import pack
    gen = torch.Generator().manual_seed(1)
    N, K = 600, 300
    grid = BlockGrid(N, K, 256, 128)
    bits = bit_map(*grid.shape, 3.0, 128, gen)
    ref = pack(torch.zeros(N, K, dtype=torch.uint8), bits, torch.ones(N, grid.n_groups),
               torch.zeros(N, grid.n_groups), None, None, 256, 128)
    syn = synthetic_packed(N, K, bits, 256, 128)
    for f in ("block_offset", "group_order", "segment_ptr", "bits"):
        assert torch.equal(getattr(ref, f), getattr(syn, f)), f
    assert ref.qweight.numel() == syn.qweight.numel()


def layer(N, K, bpw, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, BLOCK_ROWS, GROUP)
    return synthetic_packed(N, K, bit_map(*grid.shape, bpw, GROUP, gen), BLOCK_ROWS, GROUP, seed)


def widths_of(p) -> tuple[int, ...]:
    return tuple(sorted(set(p.bits.flatten().tolist())))
