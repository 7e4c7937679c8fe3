"""Prefill family (M > 16, and by default M 2..16): tiled tensor-core GEMM with dequantization in registers.

Mapping: program (pid_m, pid_n, pid_k) computes a BLOCK_M x BLOCK_N output tile (BLOCK_N rows of
one row-block). Per group it unpacks the codes of a [BLOCK_K, BLOCK_N] tile into registers,
dequantizes them in the dot dtype (w = (q - z)*s: an OR into a power of two's mantissa, a subtract
and a multiply per weight, amortised over BLOCK_M rows) and ``tl.dot``s them against the gathered activation tile, accumulating in fp32 on
fp16/bf16 tensor cores; a single accumulator, no per-group epilogue. pid_m varies fastest so
consecutive programs reuse the same weight tile from L2. Split-K (fp32 atomics) only when the
M x N tile count is below a wave.

``pregather`` (a config switch): gather x through col_perm once in torch instead of inside the
kernel's loads. For large M the in-kernel gather reads scattered 2-byte elements; a pre-gather is
one extra pass over x that Inductor can fuse into the op producing x.
"""
from __future__ import annotations

from ..format import plane_widths
from .tiles import Config, pow2_at_least
from .templates import chunks, group_head, join_lines, tiled_body, words, x_tile

FAMILY = "prefill"
VERSION = "1.4"
# Also the body for the m16 bucket (M 2..16) by default: codes dequantized in registers in fp16/bf16
# and fed to tensor-core tl.dot with M padded to 16 (decode.FALLBACK and the shipped decode|m16
# entries name family "prefill"; decode's exact tf32 field dots stay in the tuner's space). Chosen on
# sm_90 SASS (benchmarks/compile_check.py --m16: 10.5 vs 17.3 loop instructions per 3-bit weight),
# not yet measured on a GPU. fp16 tolerance vs the fp32 reference: each dequantized weight is rounded
# once to fp16 (relative 2^-11), products are exact and summed in fp32 -- tests/codegen/test_kernels.py
# checks |y - ref| <= 2^-11 * (|x| @ |W|^T) + output rounding, elementwise.
SERVES = ("decode",)
SIGNATURE_EXTRA = ""
INTERPRETER = Config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, num_warps=4, num_stages=1)
FALLBACK = Config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3)

PROLOGUE = '''
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
'''


def int_codes(bits: int, ind: str) -> list[str]:
    """``q`` (int32 [BLOCK_K, BLOCK_N]) for chunk c0: each word fanned out to its 32/w fields with
    a broadcast shift, [words, fields, rows] viewed as [BLOCK_K, rows] (column = word*per + i);
    planes OR-ed in at their bit offset. Shifts and masks are literals."""
    out = [f"{ind}# {bits}-bit code = sub-planes {plane_widths(bits)} (lowest bits first)"]
    prefix = 0
    for p, w in enumerate(plane_widths(bits)):
        out += words(w, prefix, ind)
        out.append(f"{ind}v = (wd[:, None, :] >> (tl.arange(0, {32 // w}) * {w})[None, :, None]) & {(1 << w) - 1}")
        v = "tl.reshape(v, (BLOCK_K, BLOCK_N))"
        if p == 0:
            out.append(f"{ind}q = {v}" if prefix == 0 else f"{ind}q = {v} << {prefix}")
        else:
            out.append(f"{ind}q = q | ({v} << {prefix})")
        prefix += w
    return out


def prefill_segment(bits: int) -> str:
    def body(ind):
        # w = (q - z) * s in the dot dtype: q - z is an exact small integer there, so the only
        # rounding is the product's (a fused q*s - z*s would cancel catastrophically for large z).
        # fp16/bf16: q enters the mantissa of a power of two with one OR (no int -> float convert,
        # which issues at a quarter rate): fp16 0x6400 | q = 1024 + q (q < 1024), bf16 0x4300 | q =
        # 128 + q (q < 128, so widths <= 7); zv16 holds that power of two + z, so the subtraction
        # is still the exact q - z.
        bf16_q = f"(q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)" if bits <= 7 else "q.to(tl.bfloat16)"
        return int_codes(bits, ind) + x_tile(ind) + [
            f"{ind}if DOT_KIND == 1:",
            f"{ind}    wq = ((q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - zv16[None, :]) * sv16[None, :]",
            f"{ind}    acc = tl.dot(xt.to(tl.float16), wq, acc)",
            f"{ind}elif DOT_KIND == 2:",
            f"{ind}    wq = ({bf16_q} - zv16[None, :]) * sv16[None, :]",
            f"{ind}    acc = tl.dot(xt.to(tl.bfloat16), wq, acc)",
            f"{ind}elif DOT_KIND == 3:",
            f"{ind}    wq = (q.to(tl.float32) - zv[None, :]) * sv[None, :]",
            f"{ind}    acc = tl.dot(xt, wq, acc, input_precision=\"tf32x3\")",
            f"{ind}else:",
            f"{ind}    wq = (q.to(tl.float32) - zv[None, :]) * sv[None, :]",
            f"{ind}    acc = tl.dot(xt, wq, acc, input_precision=\"ieee\")",
        ]
    lines = group_head(bits, "") + [
        "        if DOT_KIND == 1:",
        "            sv16 = sv.to(tl.float16)",
        "            zv16 = (zv + 1024.0).to(tl.float16)",
        "        elif DOT_KIND == 2:",
        "            sv16 = sv.to(tl.bfloat16)",
        f"            zv16 = (zv + {128.0 if bits <= 7 else 0.0}).to(tl.bfloat16)",
    ] + chunks(body)
    return join_lines(*lines)


def emit_body(widths: tuple[int, ...]) -> str:
    """Kernel body after the signature: tile setup, one segment loop per width, store."""
    return tiled_body(PROLOGUE, prefill_segment, widths)


def block_m(M: int, cfg: Config) -> int:
    return max(16, cfg.BLOCK_M)


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (-(-M // bm), n_tiles, split_k)


# Candidate tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps): mma-friendly shapes whose fp32
# accumulator + per-group partial + unpacked code tile fit the register file without spilling.
TILES = ((32, 64, 128, 4), (64, 64, 128, 4), (64, 128, 64, 4), (64, 128, 64, 8), (128, 64, 64, 4),
         (128, 128, 64, 8), (128, 128, 128, 8), (128, 256, 64, 8), (256, 128, 64, 8), (256, 64, 64, 8))


# M <= 16 (the m16 bucket, which this body serves by default): one 16-row mma tile, bandwidth-bound,
# so split-K (atomics) keeps enough programs in flight; auto (0) first, then fixed splits.
TILES_M16 = ((16, 128, 128, 4), (16, 64, 128, 4), (16, 256, 64, 8), (16, 128, 64, 4))


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[Config]:
    """Pruned candidate configs for autotuning (GPU only).

    M <= 16 (the m16 bucket): the ``TILES_M16`` tiles, each with auto / 4 / 16-way split-K.
    Above, pruning: BLOCK_M no larger than M rounded up to a power of two (min 32); BLOCK_N no wider than a
    row-block; BLOCK_K no larger than the group; split-K (auto = about two waves) only when the tile
    count is below one wave of a 132-SM GPU; pregather tried only for M >= 256 with a column
    permutation. Three pipeline stages (Hopper/Ampere sweet spot for this operand size). Big tiles
    first from M = 1024 on, so a time-boxed tune reaches them.
    """
    gmax = max(32, pow2_at_least(group_size))
    if M <= 16:
        return [Config(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=min(bk, gmax), SPLIT_K=sk, num_warps=warps, num_stages=3)
                for bn, bk, warps in ((t[1], t[2], t[3]) for t in TILES_M16)
                if bn <= max(16, pow2_at_least(block_rows))
                for sk in ((0, 4, 16) if groups > 1 else (1,)) if sk <= groups]
    mcap = max(32, pow2_at_least(M))
    out = []
    for bm, bn, bk, warps in TILES:
        if bm > mcap or bn > max(16, pow2_at_least(block_rows)) or bk > gmax:
            continue
        tiles = -(-M // bm) * n_tiles_for(bn)
        for sk in ((1,) if tiles >= 132 or groups == 1 else (1, 0)):
            for pg in ((False, True) if has_col_perm and M >= 256 else (False,)):
                out.append(Config(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                  num_stages=3, pregather=pg))
    return out[::-1] if M >= 1024 else out
