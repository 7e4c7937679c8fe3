"""GEMV family (M == 1): the decode hot path, bound by HBM bandwidth and integer issue rate.

Mapping: program (pid_n, pid_k, pid_m) owns BLOCK_N rows of one row-block and the groups
``pid_k, pid_k + SPLIT_K, ...`` of each width segment, for activation row pid_m (the family is
picked for M == 1; larger M just repeats the weight stream per row). Split-K partial sums meet via
fp32 atomics.

Unlike the tensor-core families it never materialises an integer code tile: each bit-plane field
becomes an fp32 value with one LOP3 + one FSUB (see templates.py), multiplied into a [words, rows]
accumulator per plane width. The accumulators are scaled per group (scales load once per
(row, group), contiguous along N) and reduced across words once, after the last group, so the
inner loop has no cross-thread reduction at all. When a group fits one chunk, each width segment
is walked with a register double buffer (gemv_segment_pipelined).
"""
from __future__ import annotations

from ..format import plane_widths
from .templates import STORE, TILE_SETUP, chunks, col_source, field_products, group_head, join_lines, split_tree, words, xscale
from .tiles import Config, pow2_at_least

FAMILY = "gemv"
VERSION = "1.4"
SIGNATURE_EXTRA = ""
INTERPRETER = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1)
FALLBACK = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=0, num_warps=2, num_stages=4)

PROLOGUE = '''
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
'''


def gemv_segment(bits: int) -> str:
    """GEMV walk over the ``bits``-bit groups: per field one LOP3 + FSUB + FMA into [words, rows]."""
    def body(ind):
        out = [
            f"{ind}kk = c0 + offs_k",
            f"{ind}mask_k = kk < cols",
            *col_source(ind),
            f"{ind}xt = tl.load(x_row + src, mask=mask_k, other=0.0).to(tl.float32)",
            f"{ind}xs += xt",
        ]
        shift = 0
        for w in plane_widths(bits):
            per = 32 // w
            W = f"BLOCK_K * {w} // 32"
            out.append(f"{ind}# plane w={w}: code bits [{shift}, {shift + w})")
            out += words(w, shift, ind)
            if per * w > 16:
                out.append(f"{ind}wdh = (wd >> 16) & 65535")
            out += xscale(w, shift, ind)
            lines, leaves = split_tree(f"tl.reshape(xt * xscale, ({W}, {per}))", W, per, f"xf{w}_", ind)
            out += lines
            out += [f"{ind}tmp{w} += {t}" for t in field_products(leaves, w, "[:, None]")]
            shift += w
        return out
    planes = plane_widths(bits)
    lines = group_head(bits, "")
    lines += [f"        tmp{w} = tl.zeros((BLOCK_K * {w} // 32, BLOCK_N), dtype=tl.float32)" for w in planes]
    lines += ["        xs = tl.zeros((BLOCK_K,), dtype=tl.float32)"]
    lines += chunks(body)
    lines += [f"        acc{w} += tmp{w} * sv[None, :]" for w in planes]
    # One [BLOCK_K] reduction per group (~2% of the group's work at M = 1) saves the extra
    # launches of a separate group-sum pass, which would cost as much as the GEMV itself.
    lines += ["        acc0 -= sv * zv * tl.sum(xs, axis=0)"]
    return join_lines(*lines)


def _gemv_prefetch(bits: int, sfx: str, j: str, base: str, ok: str, ind: str) -> list[str]:
    """Issue (not wait for) the loads of one group's tiles: scales, zeros, col_perm slice and the
    [words, rows] tile of every plane, for group ``j`` at word offset ``base``; all masked by the
    scalar ``ok`` (False past the segment's end). Names get the suffix ``sfx``."""
    out = [
        f"{ind}col0{sfx} = {j} * group_size",
        f"{ind}cols{sfx} = tl.minimum(group_size, K - col0{sfx})",
        f"{ind}sc{sfx} = (cols{sfx} + 31) // 32 * 32",
        f"{ind}sv{sfx} = tl.load(s_ptr + {j} * N + offs_n, mask=mask_n & {ok}, other=0.0)",
        f"{ind}zv{sfx} = tl.load(z_ptr + {j} * N + offs_n, mask=mask_n & {ok}, other=0.0)",
        f"{ind}mk{sfx} = (offs_k < cols{sfx}) & {ok}",
        *col_source(ind, f"col0{sfx} + offs_k", f"mk{sfx}", f"src{sfx}"),
    ]
    prefix = 0
    for w in plane_widths(bits):
        out.append(f"{ind}wd{w}{sfx} = tl.load(qw_ptr + {base} + (sc{sfx} * {prefix} // 32) * nr + wi{w}[:, None] * nr"
                   f" + local[None, :], mask=(wi{w}[:, None] < (sc{sfx} * {w}) // 32) & mask_n[None, :] & {ok},"
                   f" other=0)")
        prefix += w
    return out


def gemv_segment_pipelined(bits: int) -> str:
    """Variant 3 gemv walk: a register double buffer over the groups of one width segment.

    While group i is multiplied, the tiles of group i+SPLIT_K are already in flight and the walk
    metadata (j, word base) of group i+2*SPLIT_K too; the activation gather for i+SPLIT_K is issued
    after the multiply (its col_perm slice has arrived by then). No load waits on a load of the
    same iteration, so one warp keeps ~one group of loads in flight behind its FMAs. Only when a
    group fits one chunk (ONE_CHUNK); longer groups fall back to gemv_segment.
    """
    planes = plane_widths(bits)
    I1, I2 = " " * 8, " " * 12
    fallback = gemv_segment(bits)
    lines = [
        f"    # ---- segment: {bits}-bit blocks, planes {planes} (double-buffered) ----",
        "    if ONE_CHUNK:",
        f"{I1}seg_lo = tl.load(segp_ptr + r * 10 + {bits})",
        f"{I1}seg_hi = tl.load(segp_ptr + r * 10 + {bits + 1})",
    ]
    lines += [f"{I1}wi{w} = tl.arange(0, BLOCK_K * {w} // 32)" for w in planes]
    lines += [
        f"{I1}i0 = seg_lo + pid_k",
        f"{I1}ok_c = i0 < seg_hi",
        f"{I1}j_c = tl.load(gord_ptr + r * G + i0, mask=ok_c, other=0)",
        f"{I1}b_c = tl.load(boff_ptr + r * G + i0, mask=ok_c, other=0)",
        f"{I1}ok_n0 = i0 + SPLIT_K < seg_hi",
        f"{I1}j_n = tl.load(gord_ptr + r * G + i0 + SPLIT_K, mask=ok_n0, other=0)",
        f"{I1}b_n = tl.load(boff_ptr + r * G + i0 + SPLIT_K, mask=ok_n0, other=0)",
    ]
    lines += _gemv_prefetch(bits, "_c", "j_c", "b_c", "ok_c", I1)
    lines += [f"{I1}xt_c = tl.load(x_row + src_c, mask=mk_c, other=0.0)"]
    lines += [f"{I1}for i in range(i0, seg_hi, SPLIT_K):",
              f"{I2}ok_n = i + SPLIT_K < seg_hi"]
    lines += _gemv_prefetch(bits, "_n", "j_n", "b_n", "ok_n", I2)
    lines += [
        f"{I2}ok_2 = i + 2 * SPLIT_K < seg_hi",
        f"{I2}j_2 = tl.load(gord_ptr + r * G + i + 2 * SPLIT_K, mask=ok_2, other=0)",
        f"{I2}b_2 = tl.load(boff_ptr + r * G + i + 2 * SPLIT_K, mask=ok_2, other=0)",
        f"{I2}xt = xt_c.to(tl.float32)",
        f"{I2}sv = sv_c.to(tl.float32)",
        f"{I2}zv = zv_c.to(tl.float32)",
    ]
    shift = 0
    for w in planes:
        per = 32 // w
        W = f"BLOCK_K * {w} // 32"
        lines.append(f"{I2}# plane w={w}: code bits [{shift}, {shift + w})")
        lines.append(f"{I2}wd = wd{w}_c")
        if per * w > 16:
            lines.append(f"{I2}wdh = (wd >> 16) & 65535")
        lines += xscale(w, shift, I2)
        tree, leaves = split_tree(f"tl.reshape(xt * xscale, ({W}, {per}))", W, per, f"xf{w}_", I2)
        lines += tree
        terms = field_products(leaves, w, "[:, None]")
        lines.append(f"{I2}tmp = {terms[0]}")
        lines += [f"{I2}tmp += {t}" for t in terms[1:]]
        lines.append(f"{I2}acc{w} += tmp * sv[None, :]")
        shift += w
    lines += [
        f"{I2}acc0 -= sv * zv * tl.sum(xt, axis=0)",
        f"{I2}xt_c = tl.load(x_row + src_n, mask=mk_n, other=0.0)  # its col_perm slice is here by now",
        f"{I2}sv_c = sv_n",
        f"{I2}zv_c = zv_n",
    ]
    lines += [f"{I2}wd{w}_c = wd{w}_n" for w in planes]
    lines += [f"{I2}j_n = j_2", f"{I2}b_n = b_2", "    else:"]
    lines += ["    " + ln if ln else ln for ln in fallback.rstrip("\n").split("\n")]
    return join_lines(*lines)


def emit_body(widths: tuple[int, ...]) -> str:
    pw = sorted({w for b in widths for w in plane_widths(b)}, reverse=True)
    parts = [PROLOGUE.strip("\n") + "\n", TILE_SETUP.strip("\n") + "\n",
             "    x_row = x_ptr + pid_m * stride_xm\n",
             "    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)  # zero-point terms\n"]
    parts += [f"    acc{w} = tl.zeros((BLOCK_K * {w} // 32, BLOCK_N), dtype=tl.float32)  # {w}-bit planes\n"
              for w in pw]
    # The all-widths kernel (torch.compile's fallback for a width set unknown at trace time) walks
    # its segments single-buffered: the register double buffer doubles eight unrolled walks and
    # pushed its sm_90 compile over a minute (benchmarks/compile_check.py --all-widths).
    segment = gemv_segment if len(widths) == 8 else gemv_segment_pipelined
    parts += [segment(b) for b in widths]
    total = " + ".join(["acc0"] + [f"tl.sum(acc{w}, axis=0)" for w in pw])
    parts.append(f"    acc = ({total})[None, :]\n")
    parts.append(STORE.strip("\n") + "\n")
    return "".join(parts)


def block_m(M: int, cfg: Config) -> int:
    return 1  # one activation row per program (grid axis 2 walks the rows)


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (n_tiles, split_k, M)


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[Config]:
    """Pruned GEMV configs: BLOCK_N x warps pairs, split-K putting many one-warp programs per SM in
    flight (the gemv is latency-bound, docs/KERNELS.md; Hopper holds up to 32 resident blocks per SM),
    with and without pre-gathered activations; most programs in flight first."""
    bk = min(128, pow2_at_least(group_size))
    out = []
    for bn, warps in ((32, 1), (64, 2), (16, 1), (128, 4)):
        if bn > max(16, pow2_at_least(block_rows)):
            continue
        n_tiles = n_tiles_for(bn)
        sks = [s for s in (1, 2, 4, 8, 16, 32, 64) if s <= groups and n_tiles * s <= 32 * 132 * max(1, 2 // warps)]
        keep = [s for s in sks if n_tiles * s >= 2 * 132] or sks[-1:]
        for sk in keep[::-1][:3]:
            for pg in (True, False):
                out.append(Config(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                  num_stages=2, pregather=pg))
    return out
