"""Decode family (M <= 16): bandwidth-bound GEMV / split-K GEMM over the packed weight.

Mapping: program (pid_n, pid_k, pid_m) owns BLOCK_N consecutive rows of ONE row-block (so every
row of the tile shares the bit map) and the groups ``i = pid_k, pid_k + SPLIT_K, ...`` of each
width segment of that row-block. Weight words are read once, coalesced along N (the format stores
each sub-plane [words, rows]); x is tiny and re-read from L2. With SPLIT_K > 1 the partial sums
meet through fp32 atomics in a zeroed buffer, which is what keeps enough programs in flight to
saturate HBM when N / BLOCK_N alone is below a few waves of SMs.

M is padded to 16 (mma needs 16 rows). Codes are never converted int -> float: each bit-plane
field becomes the exact fp32 q * 2^p with one LOP3 + one FSUB (templates.py), the 2^-p goes into
the activation columns, and one tf32 ``tl.dot`` per plane accumulates ``sum_k x*q`` (exact for
fp16/bf16 activations); the zero point is applied per (row, group) from precomputed group sums of x.
"""
from __future__ import annotations

from . import templates

FAMILY = "decode"
M_MAX = 16

PROLOGUE = '''
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
'''


def emit_body(widths: tuple[int, ...]) -> str:
    """Kernel body after the signature: tile setup, one segment loop per width, store."""
    return templates.tiled_body(PROLOGUE, templates.decode_segment, widths)


def block_m(M: int) -> int:
    """Rows of x per program: 16, the smallest tensor-core tile (M == 1 goes to the gemv family)."""
    return 16


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (n_tiles, split_k, -(-M // bm))


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int) -> list[dict]:
    """Pruned candidate configs for autotuning (GPU only).

    ``n_tiles_for(bn)`` gives the number of row tiles for a BLOCK_N. Pruning: BLOCK_N no wider than
    a row-block; SPLIT_K no larger than the number of groups; keep split-K choices that put the
    program count between about 1 and 8 waves of a 132-SM GPU (fewer cannot hide HBM latency,
    more only adds atomics).
    """
    bm = block_m(M)
    bk = min(128, _pow2_at_least(group_size))
    out = []
    from .templates import variant
    if variant() >= 2:
        # Kernel variant 2+ honours pregather in decode too: x gathered once in torch, so the
        # activation tile is a contiguous load instead of a col_perm load -> x gather chain per
        # group. Tried first (the shipped default tile with and without auto split-K).
        for sk in (0, 16):
            if sk <= groups and 64 <= max(16, _pow2_at_least(block_rows)):
                out.append(dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=bk, SPLIT_K=sk, num_warps=4,
                                num_stages=3, pregather=True))
    for bn, warps in ((32, 2), (64, 4), (128, 4), (256, 8)):
        if bn > _pow2_at_least(block_rows):
            continue
        n_tiles = n_tiles_for(bn)
        for sk in (1, 2, 4, 8, 16):
            if sk > groups:
                continue
            progs = n_tiles * sk
            if progs < 132 and sk != max(s for s in (1, 2, 4, 8, 16) if s <= groups):
                continue
            if progs > 8 * 132 and sk > 1:
                continue
            for stages in (1, 3):
                out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                num_stages=stages, pregather=False))
    return out


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
