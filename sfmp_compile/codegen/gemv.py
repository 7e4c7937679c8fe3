"""GEMV family (M == 1): the decode hot path, bound by HBM bandwidth and integer issue rate.

Mapping: program (pid_n, pid_k, pid_m) owns BLOCK_N rows of one row-block and the groups
``pid_k, pid_k + SPLIT_K, ...`` of each width segment, for activation row pid_m (the family is
picked for M == 1; larger M just repeats the weight stream per row). Split-K partial sums meet via
fp32 atomics.

Unlike the tensor-core families it never materialises an integer code tile: each bit-plane field
becomes an fp32 value with one LOP3 + one FSUB (see templates.py), multiplied into a [words, rows]
accumulator per plane width. The accumulators are scaled per group (scales load once per
(row, group), contiguous along N) and reduced across words once, after the last group, so the
inner loop has no cross-thread reduction at all.
"""
from __future__ import annotations

from . import templates
from ..format import plane_widths

FAMILY = "gemv"

PROLOGUE = '''
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
'''


def emit_body(widths: tuple[int, ...]) -> str:
    if templates.variant() >= 4:
        return _emit_body_v4(widths)
    pw = sorted({w for b in widths for w in plane_widths(b)}, reverse=True)
    parts = [PROLOGUE.strip("\n") + "\n", templates.TILE_SETUP.strip("\n") + "\n",
             "    x_row = x_ptr + pid_m * stride_xm\n",
             "    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)  # zero-point terms\n"]
    parts += [f"    acc{w} = tl.zeros((BLOCK_K * {w} // 32, BLOCK_N), dtype=tl.float32)  # {w}-bit planes\n"
              for w in pw]
    seg = templates.gemv_segment_pipelined if templates.variant() >= 3 else templates.gemv_segment
    parts += [seg(b) for b in widths]
    total = " + ".join(["acc0"] + [f"tl.sum(acc{w}, axis=0)" for w in pw])
    parts.append(f"    acc = ({total})[None, :]\n")
    parts.append(templates.STORE.strip("\n") + "\n")
    return "".join(parts)


def _emit_body_v4(widths: tuple[int, ...]) -> str:
    """Kernel variant 4 (templates.gemv_v4_body): U groups per [U, words, rows] load, 128-bit loads
    under ALIGNED, in-thread reductions into [BLOCK_N] row sums, split-K partials by plain stores."""
    return "".join([
        PROLOGUE.strip("\n") + "\n", templates.TILE_SETUP.strip("\n") + "\n",
        "    x_row = x_ptr + pid_m * stride_xm\n",
        "    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)  # row sums (and zero-point terms)\n",
        templates.gemv_v4_body(widths),
        templates.STORE_V4.strip("\n") + "\n",
    ])


def signature_extra() -> str:
    """Constexpr parameters appended to templates.SIGNATURE for this family (variant 4 only)."""
    return templates.SIGNATURE_V4_EXTRA if templates.variant() >= 4 else ""


def block_m(M: int) -> int:
    return 1


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (n_tiles, split_k, M)


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int) -> list[dict]:
    """Pruned GEMV configs: BLOCK_N x warps pairs, split-K putting 1-8 waves of a 132-SM GPU in flight.

    Kernel variant 2 (templates.variant): the H200 run showed the gemv latency-bound (every bit
    width took the same time, 17% of copy bandwidth with the 8-wave cap hit by the tuned config
    BLOCK_N=32, SPLIT_K=8, 1 warp), so the space allows up to 32 one-warp programs per SM
    (Hopper's resident-block limit) and tries pre-gathered activations.
    """
    from .templates import variant
    if variant() >= 4:
        return _config_space_v4(n_tiles_for, groups, block_rows, group_size)
    if variant() >= 2:
        return _config_space_v2(n_tiles_for, groups, block_rows, group_size)
    bk = min(128, _pow2_at_least(group_size))
    out = []
    for bn, warps in ((32, 1), (64, 2), (64, 4), (128, 4), (256, 8)):
        if bn > max(16, _pow2_at_least(block_rows)):
            continue
        n_tiles = n_tiles_for(bn)
        sks = [s for s in (1, 2, 4, 8, 16, 32) if s <= groups and n_tiles * s <= 8 * 132]
        keep = [s for s in sks if n_tiles * s >= 132] or sks[-1:]
        for sk in keep[:3]:
            for stages in (2, 4):
                out.append(dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                num_stages=stages, pregather=False))
    return out


def _config_space_v2(n_tiles_for, groups: int, block_rows: int, group_size: int) -> list[dict]:
    bk = min(128, _pow2_at_least(group_size))
    out = []
    for bn, warps in ((32, 1), (64, 2), (16, 1), (128, 4)):
        if bn > max(16, _pow2_at_least(block_rows)):
            continue
        n_tiles = n_tiles_for(bn)
        sks = [s for s in (1, 2, 4, 8, 16, 32, 64) if s <= groups and n_tiles * s <= 32 * 132 * max(1, 2 // warps)]
        keep = [s for s in sks if n_tiles * s >= 2 * 132] or sks[-1:]
        for sk in keep[::-1][:3]:  # most programs in flight first
            for pg in (True, False):
                out.append(dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                num_stages=2, pregather=pg))
    return out


def _config_space_v4(n_tiles_for, groups: int, block_rows: int, group_size: int) -> list[dict]:
    """Variant 4: 4 rows per thread (one 128-bit load per word when ALIGNED), BLOCK_N = 128 rows per
    warp. Two families, from the sm_90 compile (benchmarks/compile_check.py --goal):
      * U = 1 with PIPE (num_stages 2: the next group's tiles in flight during the multiply), 1 warp
        (254 registers, no spills);
      * U = 2 or 4 groups per load without PIPE, 2 warps x 256 rows (U = 2: 254 registers, no
        spills; U = 2 with PIPE spills, and so does U = 2 on one warp, where ptxas stops at 168
        registers). U > 1 wastes the multiply of masked slots when a program walks few groups, so
        split-K stays where each program sees >= 2U groups;
      * U = 1 without PIPE, 1 warp (164 registers: up to 12 warps per SM).
    Split-K: 0 (v4_split_k: ~6 warps per SM) and the neighbouring powers of two. x gathered in the
    kernel with PIPE, pre-gathered without (plus one pre-gathered PIPE config). <= 16 configs, the
    default first."""
    bk = min(128, _pow2_at_least(group_size))
    out = []
    for bn, warps, stages, us in ((128, 1, 2, (1,)), (256, 2, 1, (2, 4)), (128, 1, 1, (1,))):
        if bn > max(16, _pow2_at_least(block_rows)):
            continue
        n_tiles = n_tiles_for(bn)
        for u in us:
            auto = v4_split_k(n_tiles, warps, groups, u)
            for sk in dict.fromkeys((0, auto * 2, max(1, auto // 2))):
                if sk and sk * 2 * u > max(groups, 2 * u):
                    continue
                # PIPE prefetches the col_perm slice and x a whole multiply ahead: gather in-kernel;
                # single-buffered loops would wait on that dependent load: pre-gather there.
                out.append(dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                num_stages=stages, pregather=stages < 2, U=u))
    if out:  # a time-boxed tune reaches each family's default split first, pre-gathered PIPE last
        first = [c for c in out if c["SPLIT_K"] == 0]
        out = first + [c for c in out if c["SPLIT_K"] != 0] + [{**out[0], "pregather": True}]
    return out[:16]


def v4_split_k(n_tiles: int, warps: int, groups: int, u: int = 1, sms: int = 132) -> int:
    """Variant-4 split-K for SPLIT_K = 0: the smallest power of two putting >= 6 warps per SM in
    flight (a single-buffered warp waits about one memory latency per iteration; 2 per scheduler
    cover it), but no more splits than leave each program >= 2U groups to walk (fewer and the
    masked slots of a U-group load cost their multiply for nothing), at most 64."""
    sk = 1
    while n_tiles * sk * warps < 6 * sms and sk * 2 * 2 * u <= groups and sk < 64:
        sk *= 2
    return sk


def v4_launch_params(bn: int, warps: int, u: int) -> tuple[int, int]:
    """(num_warps, U) the variant-4 gemv really launches with: U a power of two in 1..8; at most
    BLOCK_N/32 warps, so a warp's 32 lanes all lie along rows and a group's words (and the U groups)
    stay inside each thread -- the per-iteration sums over them are then register adds, never shuffles."""
    u = min(8, _pow2_at_least(max(1, int(u))))
    return max(1, min(int(warps), bn // 32)), u


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
