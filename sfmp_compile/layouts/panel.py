"""The "panel" layout: the packed layout with its words in the order the C++ CPU kernel reads them.

The CPU kernel (``ops/cpu_kernel.cpp``) works on chunks of ``PANEL_ROWS`` output rows. In the
packed layout a block's sub-plane is ``[words, rows_in_block]`` with rows contiguous, so a chunk
reads a 256-byte strip per word at a stride of the whole block: the hardware prefetchers never get
going, and a decode step, whose weights come from DRAM, ran at 2-3 GB/s. The panel layout moves the
same words so that each chunk's words, for every block of its row-block in storage order, are one
contiguous run::

    row-block r (starts where the packed layout's does, same length):
      chunk 0 (rows 0..31):   block g0 planes [words_g0, 32] | block g1 planes [words_g1, 32] | ...
      chunk 1 (rows 32..63):  ...
      last chunk: n = rows_in_block mod 32 rows (when not 0), [words, n] per block

where g0, g1, ... is ``group_order[r]`` (the packed storage order). It is a permutation of
``qweight``: the same number of words, every other tensor shared with the packed layout, so
resident bytes stay the checkpoint's. ``block_offset`` keeps its packed meaning; the kernel
derives panel addresses from it (``Layer::chunk_block``). Both conversions are exact.

32 rows is the kernel's decode register block (4 vectors of 8 rows), so at M = 1 every word the
kernel loads is the next 128 bytes of one run; with 64-row chunks it read half of each 256-byte
strip, then came back for the other half, and the decode step was slower (docs/KERNELS.md).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..format import PackedWeight

NAME = "panel"
TENSORS = ("qweight", "bits", "block_offset", "group_order", "segment_ptr", "scales", "zeros")
PANEL_ROWS = 32  # = CHUNK in cpu_kernel.cpp (they must agree: the panel tests in tests/ops/test_cpu.py fail otherwise)


def eligible(bits: Tensor) -> bool:
    return True


def _row_blocks(p: PackedWeight):
    """(first word, words per row, rows) of every row-block of ``p``, from its tables."""
    bits, grid = p.bits.to("cpu", torch.int64), p.grid
    R, G = bits.shape
    cols = torch.tensor([grid.stored_cols(j) for j in range(G)], dtype=torch.int64)
    row_words = (bits * cols).sum(dim=1) // 32
    first = p.group_order.to("cpu", torch.int64)[:, 0] if G else torch.zeros(R, dtype=torch.int64)
    base = p.block_offset.to("cpu", torch.int64).gather(1, first[:, None])[:, 0] if G else first
    for r in range(R):
        yield int(base[r]), int(row_words[r]), grid.rows_in(r)


def _panel_index(p: PackedWeight) -> Tensor:
    """int64 [total_words]: panel word i is packed word ``index[i]`` (one gather each way)."""
    index = torch.arange(p.qweight.numel())
    c = PANEL_ROWS
    for base, words, rows in _row_blocks(p):
        slab = index[base : base + words * rows].view(words, rows)  # a row-block: [words, rows]
        chunks = [slab[:, i0 : i0 + c].reshape(-1) for i0 in range(0, rows, c)]
        index[base : base + words * rows] = torch.cat(chunks) if chunks else slab.reshape(-1)
    return index


def from_packed(p: PackedWeight) -> dict[str, Tensor]:
    """The panel layout's tensors: ``qweight`` re-ordered, the other six shared with ``p``."""
    return {"qweight": p.qweight[_panel_index(p).to(p.qweight.device)],
            **{f: getattr(p, f) for f in TENSORS if f != "qweight"}}


def to_packed(t: dict[str, Tensor], row_perm: Tensor, col_perm: Tensor, block_rows: int, group_size: int,
              out_features: int, in_features: int) -> PackedWeight:
    """The packed form, bit for bit (the words moved back)."""
    p = PackedWeight(**t, row_perm=row_perm, col_perm=col_perm, out_features=out_features,
                     in_features=in_features, block_rows=block_rows, group_size=group_size)
    packed = torch.empty_like(p.qweight)
    packed[_panel_index(p).to(p.qweight.device)] = p.qweight
    return PackedWeight(**{**p.tensors(), "qweight": packed}, **p.meta())
