"""Decode family (M <= 16): bandwidth-bound GEMV / split-K GEMM over the packed weight.

The m16 bucket is named after this family, but by default (FALLBACK, default_configs.json) its
launches run prefill's tensor-core body (a config with family "prefill"); this body is the tuner's
alternative and runs when a config names no family.

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

from ..format import plane_widths
from .templates import chunks, field_tile, group_head, join_lines, tiled_body, words, x_tile, xscale
from .tiles import Config, pow2_at_least

FAMILY = "decode"
VERSION = "1.3"
SIGNATURE_EXTRA = ""
M_MAX = 16
NEEDS_GROUP_SUMS = True  # xs_ptr: fp32 [M, G] activation sums per (row, group), from the launcher
# Under the interpreter SPLIT_K = 2, so the atomic split-K path is what CPU tests exercise.
INTERPRETER = Config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1)
# With no tuned or shipped entry, M 2..16 runs prefill's tensor-core body (fewer instructions per
# weight on sm_90, see prefill.py); this body is what a config without "family" (or the tuner) picks.
FALLBACK = Config(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=0, num_warps=4, num_stages=3, family="prefill")

PROLOGUE = '''
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
'''


def decode_segment(bits: int) -> str:
    def body(ind):
        out = x_tile(ind)
        shift = 0
        for w in plane_widths(bits):
            out.append(f"{ind}# plane w={w}: code bits [{shift}, {shift + w})")
            out += words(w, shift, ind) + field_tile(w, ind) + xscale(w, shift, ind)
            out += [
                f"{ind}xp = xt * xscale[None, :]",
                f"{ind}if DOT_KIND == 0:",
                f"{ind}    part = tl.dot(xp, v, part, input_precision=\"ieee\")",
                f"{ind}elif DOT_KIND == 3:",
                f"{ind}    part = tl.dot(xp, v, part, input_precision=\"tf32x3\")",
                f"{ind}else:",
                f"{ind}    # tf32 is exact here: fields have <= 8 significant bits, fp16/bf16 x <= 11",
                f"{ind}    part = tl.dot(xp, v, part, input_precision=\"tf32\")",
            ]
            shift += w
        return out
    lines = group_head(bits, "") + [
        "        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
    ] + chunks(body) + [
        "        xsum = tl.load(xs_ptr + offs_m * G + j, mask=mask_m, other=0.0)",
        "        acc += (part - xsum[:, None] * zv[None, :]) * sv[None, :]",
    ]
    return join_lines(*lines)


def emit_body(widths: tuple[int, ...]) -> str:
    """Kernel body after the signature: tile setup, one segment loop per width, store."""
    return tiled_body(PROLOGUE, decode_segment, widths)


def block_m(M: int, cfg: Config) -> int:
    """Rows of x per program: 16, the smallest tensor-core tile (M == 1 goes to the gemv family)."""
    return 16


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (n_tiles, split_k, -(-M // bm))


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[Config]:
    """Pruned candidate configs for autotuning (GPU only).

    ``n_tiles_for(bn)`` gives the number of row tiles for a BLOCK_N. Pre-gathered x first (the
    activation tile is then a contiguous load instead of a col_perm -> x chain per group), with and
    without auto split-K. Then BLOCK_N no wider than a row-block; SPLIT_K no larger than the number
    of groups; split-K choices that put the program count between about 1 and 8 waves of a 132-SM
    GPU (fewer cannot hide HBM latency, more only adds atomics).
    """
    bm = 16
    bk = min(128, pow2_at_least(group_size))
    out = []
    for sk in (0, 16):
        if sk <= groups and 64 <= max(16, pow2_at_least(block_rows)):
            out.append(Config(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, num_stages=3,
                              pregather=True))
    for bn, warps in ((32, 2), (64, 4), (128, 4), (256, 8)):
        if bn > pow2_at_least(block_rows):
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
                out.append(Config(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                  num_stages=stages, pregather=False))
    return out
