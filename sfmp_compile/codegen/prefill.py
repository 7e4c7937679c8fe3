"""Prefill family (M > 16): tiled tensor-core GEMM with dequantization in registers.

Mapping: program (pid_m, pid_n, pid_k) computes a BLOCK_M x BLOCK_N output tile (BLOCK_N rows of
one row-block). Per group it unpacks the codes of a [BLOCK_K, BLOCK_N] tile into registers,
dequantizes them in the dot dtype (w = (q - z)*s: a convert, a subtract and a multiply per weight, amortised over
BLOCK_M rows) and ``tl.dot``s them against the gathered activation tile, accumulating in fp32 on
fp16/bf16 tensor cores; a single accumulator, no per-group epilogue. pid_m varies fastest so
consecutive programs reuse the same weight tile from L2. Split-K (fp32 atomics) only when the
M x N tile count is below a wave.

``pregather`` (a config switch): gather x through col_perm once in torch instead of inside the
kernel's loads. For large M the in-kernel gather reads scattered 2-byte elements; a pre-gather is
one extra pass over x that Inductor can fuse into the op producing x.
"""
from __future__ import annotations

from . import templates

FAMILY = "prefill"

PROLOGUE = '''
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
'''


def emit_body(widths: tuple[int, ...]) -> str:
    """Kernel body after the signature: tile setup, one segment loop per width, store."""
    return templates.tiled_body(PROLOGUE, templates.prefill_segment, widths)


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (-(-M // bm), n_tiles, split_k)


# Candidate tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps): mma-friendly shapes whose fp32
# accumulator + per-group partial + unpacked code tile fit the register file without spilling.
TILES = ((32, 64, 128, 4), (64, 64, 128, 4), (64, 128, 64, 4), (64, 128, 64, 8), (128, 64, 64, 4),
         (128, 128, 64, 8), (128, 128, 128, 8), (128, 256, 64, 8), (256, 128, 64, 8), (256, 64, 64, 8))


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[dict]:
    """Pruned candidate configs for autotuning (GPU only).

    Pruning: BLOCK_M no larger than M rounded up to a power of two (min 32); BLOCK_N no wider than a
    row-block; BLOCK_K no larger than the group; split-K (auto = about two waves) only when the tile
    count is below one wave of a 132-SM GPU; pregather tried only for M >= 256 with a column
    permutation. Three pipeline stages (Hopper/Ampere sweet spot for this operand size).
    """
    mcap = max(32, _pow2_at_least(M))
    gmax = max(32, _pow2_at_least(group_size))
    out = []
    for bm, bn, bk, warps in TILES:
        if bm > mcap or bn > max(16, _pow2_at_least(block_rows)) or bk > gmax:
            continue
        tiles = -(-M // bm) * n_tiles_for(bn)
        for sk in ((1,) if tiles >= 132 or groups == 1 else (1, 0)):
            for pg in ((False, True) if has_col_perm and M >= 256 else (False,)):
                out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                num_stages=3, pregather=pg))
    return out


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
