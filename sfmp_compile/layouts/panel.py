"""The "panel" layout: the packed layout with its words in the order the C++ CPU kernel reads them.

The CPU kernel (``ops/cpu_kernel.cpp``) works on chunks of ``PANEL_ROWS`` output rows. In the
packed layout a block's sub-plane is ``[words, rows_in_block]`` with rows contiguous, so a chunk
reads a 256-byte strip per word at a stride of the whole block: the hardware prefetchers never get
going, and a decode step, whose weights come from DRAM, ran at 2-3 GB/s. The panel layout moves the
same words so that each chunk's words, for every block of its row-block in storage order, are one
contiguous run::

    row-block r (starts where the packed layout's does, same length):
      chunk 0 (rows 0..63):   block g0 planes [words_g0, 64] | block g1 planes [words_g1, 64] | ...
      chunk 1 (rows 64..127): ...
      last chunk: n = rows_in_block mod 64 rows (when not 0), [words, n] per block

where g0, g1, ... is ``group_order[r]`` (the packed storage order). It is a permutation of
``qweight``: the same number of words, every other tensor shared with the packed layout, so
resident bytes stay the checkpoint's. ``block_offset`` keeps its packed meaning; the kernel
derives panel addresses from it (``Layer::chunk_block``). Both conversions are exact.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..format import PackedWeight

NAME = "panel"
TENSORS = ("qweight", "bits", "block_offset", "group_order", "segment_ptr", "scales", "zeros")
PANEL_ROWS = 64  # = CHUNK in cpu_kernel.cpp (the kernel and this file must agree; tests check it)


def eligible(bits: Tensor) -> bool:
    return True


def _row_blocks(p: PackedWeight):
    """(first word, words per row, rows) of every row-block of ``p``, from its tables."""
    bits = p.bits.to("cpu", torch.int64)
    R, G = bits.shape
    cols = torch.tensor([-(-min(p.group_size, p.in_features - j * p.group_size) // 32) * 32 for j in range(G)])
    row_words = (bits * cols).sum(dim=1) // 32
    first = p.group_order.to("cpu", torch.int64)[:, 0] if G else torch.zeros(R, dtype=torch.int64)
    base = p.block_offset.to("cpu", torch.int64).gather(1, first[:, None])[:, 0] if G else first
    for r in range(R):
        yield int(base[r]), int(row_words[r]), min(p.block_rows, p.out_features - r * p.block_rows)


def _move(q: Tensor, p: PackedWeight, to_panel: bool) -> Tensor:
    out = q.clone()
    c = PANEL_ROWS
    for base, words, rows in _row_blocks(p):
        n = words * rows
        src = q[base : base + n]
        full = rows // c * c
        if to_panel:
            slab = src.view(words, rows)
            head = slab[:, :full].reshape(words, rows // c, c).permute(1, 0, 2).reshape(-1)
            tail = slab[:, full:].reshape(-1)
        else:
            head = src[: words * full].view(rows // c, words, c).permute(1, 0, 2).reshape(words, full)
            tail = src[words * full :].view(words, rows - full)
            head = torch.cat([head, tail], dim=1).reshape(-1)
            tail = head[:0]
        out[base : base + n] = torch.cat([head, tail])
    return out


def from_packed(p: PackedWeight) -> dict[str, Tensor]:
    """The panel layout's tensors: ``qweight`` re-ordered, the other six shared with ``p``."""
    return {"qweight": _move(p.qweight, p, to_panel=True),
            **{f: getattr(p, f) for f in TENSORS if f != "qweight"}}


def to_packed(t: dict[str, Tensor], row_perm: Tensor, col_perm: Tensor, block_rows: int, group_size: int,
              out_features: int, in_features: int) -> PackedWeight:
    """The packed form, bit for bit (the words moved back)."""
    p = PackedWeight(**t, row_perm=row_perm, col_perm=col_perm, out_features=out_features,
                     in_features=in_features, block_rows=block_rows, group_size=group_size)
    return PackedWeight(**{**p.tensors(), "qweight": _move(p.qweight, p, to_panel=False)}, **p.meta())
