"""One tensor-parallel rank's part of a packed layer: the reference for what a TP loader would hold.

A layer planned with ``QuantConfig.tp_shards = S`` (``tp``) permutes its split axis only inside
shards, and its shards are whole blocks or parts of one, so rank k's part is itself a valid
``PackedWeight``: the rows (column-parallel) or columns (row-parallel) of shard k, their blocks'
bit map, scales and zeros, and the shard's permutation shifted to start at 0. This reference
unpacks and re-packs the codes; a server's loader would copy the block words instead (see
docs/SCALE.md), with the same result.
"""
from __future__ import annotations

import torch

from .blocks import ceil_div
from .format import PackedWeight, pack, unpack_codes


def _local(perm: torch.Tensor, lo: int, hi: int) -> torch.Tensor | None:
    """The shard [lo, hi) of a permutation ([0] = identity), shifted to 0..hi-lo-1; None for the identity."""
    if perm.numel() == 0:
        return None
    p = perm[lo:hi].to(torch.int64) - lo
    if bool((p < 0).any() or (p >= hi - lo).any()):
        raise ValueError(f"the permutation moves indices out of shard [{lo}, {hi}): plan with tp_shards to keep them in")
    return p


def rank_slice(p: PackedWeight, axis: int, shards: int, rank: int) -> PackedWeight:
    """Rank ``rank`` of ``shards``'s part of ``p``, split along ``axis`` (0: output rows, a
    column-parallel layer; 1: input columns, a row-parallel one). Its ``dequantize()`` equals the
    matching slice of ``p.dequantize()`` (original coordinates). Raises ValueError if the axis does not
    split evenly or the permutation leaves a shard; the block geometry is assumed to pass
    ``tp.check_split``."""
    n = p.out_features if axis == 0 else p.in_features
    if n % shards or not 0 <= rank < shards:
        raise ValueError(f"cannot take rank {rank} of {shards} shards of {n} {'rows' if axis == 0 else 'columns'}")
    per = n // shards
    lo, hi = rank * per, (rank + 1) * per
    codes = unpack_codes(p)[:, :p.in_features]
    scales, zeros = p.scales.t().float(), p.zeros.t().float()  # [N, G]
    if axis == 0:
        blocks = slice(lo // p.block_rows, ceil_div(hi, p.block_rows))
        return pack(codes[lo:hi], p.bits[blocks], scales[lo:hi], zeros[lo:hi], _local(p.row_perm, lo, hi),
                    p.col_perm.to(torch.int64) if p.col_perm.numel() else None, p.block_rows, p.group_size)
    groups = slice(lo // p.group_size, ceil_div(hi, p.group_size))
    return pack(codes[:, lo:hi], p.bits[:, groups], scales[:, groups], zeros[:, groups],
                p.row_perm.to(torch.int64) if p.row_perm.numel() else None, _local(p.col_perm, lo, hi),
                p.block_rows, p.group_size)
