"""GEMVU family (M == 1, opt-in): U groups per load, 128-bit word loads, split-K partials by plain stores.

An alternative body for the gemv bucket, chosen by configuration (a tile ``Config`` with
``family="gemvu"`` in the tuned or shipped table, or one passed to the launcher), never by default
until a GPU run shows it wins (its compile and instruction counts are in docs/KERNELS.md).

Per program: 4 rows per thread, U groups of the current width segment loaded per iteration as
[U, words, rows] tiles (128-bit loads where the launcher proved 4-word alignment, ``ALIGNED``),
optionally double-buffered in registers (``PIPE``), reduced over words and groups inside the thread
into [BLOCK_N] row sums; split-K partials go to slices of an uninitialised fp32 [SPLIT_K, M, N]
buffer that the launcher sums (no zero-fill launch, no atomics).
"""
from __future__ import annotations

import torch

from ..format import plane_widths
from .gemv import PROLOGUE, gemv_segment
from .templates import TILE_SETUP, col_source, field_products, join_lines, split_tree
from .tiles import Config, pow2_at_least

FAMILY = "gemvu"
SERVES = ("gemv",)  # the bucket families whose launches it can take
# Not for the all-widths kernel (torch.compile's fallback when a layer's width set is unknown at trace
# time): its eight unrolled segment walks took 458 s to compile for sm_90 on 2 cores (gemv's: 41 s);
# launch.launch runs the bucket's own family there instead (families.py, NO_ALL_WIDTHS).
ALL_WIDTHS = False
VERSION = "1.4"
INTERPRETER = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1, U=2, family=FAMILY)
# 4 rows per thread, tiles double-buffered (num_stages >= 2 -> PIPE), x gathered through col_perm
# in the kernel (inside the prefetch, so its dependent load overlaps a whole multiply), split-K
# from the SM count (auto_split_k); chosen from the sm_90 compile, not measured on a GPU.
FALLBACK = Config(BLOCK_M=1, BLOCK_N=128, BLOCK_K=128, SPLIT_K=0, num_warps=1, num_stages=2, U=1, family=FAMILY)

# Extra compile-time switches of the variant-4 gemv (appended to SIGNATURE for this family only):
#   U        groups of the current width segment loaded per iteration (a power of two);
#   PIPE     double-buffer the tiles in registers (the launcher sets it from num_stages >= 2);
#   ALIGNED  the launcher proved every block offset and every row-block's row count a multiple of
#            4 words (format.layout_aligned4): word offsets may then be declared multiples of 4, which lets
#            ptxas emit 128-bit loads of 4 consecutive rows. Never set from a guess.
SIGNATURE_EXTRA = "    U: tl.constexpr, ALIGNED: tl.constexpr, PIPE: tl.constexpr,\n"

# The store: program (pid_n, pid_k) writes slice pid_k of a [SPLIT_K, M, N] buffer with a
# plain store (SPLIT_K == 1: the output itself). The launcher sums the slices (one torch reduction,
# fused with the cast by Inductor) -- no zero-fill launch, no fp32 atomics.
STORE_V4 = '''
    if HAS_ROW_PERM:
        dst = tl.load(rperm_ptr + offs_n, mask=mask_n, other=0)
    else:
        dst = offs_n
    y_ptrs = y_ptr + pid_k * M * stride_ym + offs_m[:, None] * stride_ym + dst[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
'''


# Widest segment that gets U groups per iteration and the PIPE double buffer. Per 4 rows a thread
# holds bits x 16 words of one group's tiles (BLOCK_K 128); from 4 bits on, two buffers or two
# groups spill on sm_90 (compile_check: widths {2,3,4} with PIPE spilled 154 words in the 4-bit
# walk), so wider segments walk one group at a time, single-buffered. SFMP allocations are mostly
# 2-3 bits.
V4_MULTI_MAX_BITS = 3


def _v4_u(bits: int) -> str:
    """Groups per iteration of a segment: U up to V4_MULTI_MAX_BITS, else 1."""
    return "U" if bits <= V4_MULTI_MAX_BITS else "1"


def gemv_v4_prologue(bits: int) -> list[str]:
    """Per-segment state set up before any segment loop runs (so the metadata loads of all segments
    are in flight together): bounds and the (j, word base) of the first two iterations. Names carry
    the suffix ``_{bits}``."""
    I = " " * 8
    b, UB = bits, _v4_u(bits)
    return [
        f"{I}# {b}-bit segment: walk positions lo_{b}+pid_k+SPLIT_K*({UB}*t+u), u < {UB}",
        f"{I}uu_{b} = tl.arange(0, {UB})",
        f"{I}lo_{b} = tl.load(segp_ptr + r * 10 + {b})",
        f"{I}hi_{b} = tl.load(segp_ptr + r * 10 + {b + 1})",
        f"{I}iu_{b} = lo_{b} + pid_k + uu_{b} * SPLIT_K",
        f"{I}okc_{b} = iu_{b} < hi_{b}",
        f"{I}jc_{b} = tl.load(gord_ptr + r * G + iu_{b}, mask=okc_{b}, other=0)",
        f"{I}bc_{b} = tl.load(boff_ptr + r * G + iu_{b}, mask=okc_{b}, other=0)",
        f"{I}okn_{b} = iu_{b} + {UB} * SPLIT_K < hi_{b}",
        f"{I}jn_{b} = tl.load(gord_ptr + r * G + iu_{b} + {UB} * SPLIT_K, mask=okn_{b}, other=0)",
        f"{I}bn_{b} = tl.load(boff_ptr + r * G + iu_{b} + {UB} * SPLIT_K, mask=okn_{b}, other=0)",
    ]


def _v4_meta_loads(sfx: str, j: str, base: str, ok: str, ind: str) -> list[str]:
    """Per-iteration scalars-per-group and the scales/zeros [UB, BLOCK_N] of groups ``j``."""
    return [
        f"{ind}col0{sfx} = {j} * group_size",
        f"{ind}cols{sfx} = tl.minimum(group_size, K - col0{sfx})",
        f"{ind}sc{sfx} = (cols{sfx} + 31) // 32 * 32  # stored columns",
        f"{ind}bs{sfx} = {base}",
        f"{ind}if ALIGNED:",
        f"{ind}    bs{sfx} = (bs{sfx} >> 2) * 4  # == base (ALIGNED); the product shows the compiler its alignment",
        f"{ind}mn{sfx} = {ok}[:, None] & mask_n[None, :]",
        f"{ind}sv{sfx} = tl.load(s_ptr + {j}[:, None] * Nh + offs_n[None, :], mask=mn{sfx}, other=0.0)",
        f"{ind}zv{sfx} = tl.load(z_ptr + {j}[:, None] * Nh + offs_n[None, :], mask=mn{sfx}, other=0.0)",
    ]


def _v4_chunk_loads(bits: int, t: int, sfx: str, ok: str, ind: str) -> list[str]:
    """Chunk t (columns [32t, 32t+32)): activations [UB, 32] and, per plane w, the w words covering
    the chunk as one [UB, w, BLOCK_N] load (4 consecutive rows per thread: LDG.128 under ALIGNED).
    Guarded by ``BLOCK_K > 32*t`` (chunks are literal: BLOCK_K <= 128, at most 4)."""
    guard = [f"{ind}if BLOCK_K > {32 * t}:"] if t else []
    i2 = ind + "    " if t else ind
    body = [
        f"{i2}kk = {32 * t} + tl.arange(0, 32)",
        f"{i2}mk = (kk[None, :] < cols{sfx}[:, None]) & {ok}[:, None]",
        *col_source(i2, f"col0{sfx}[:, None] + kk[None, :]", "mk",
                    note="  # inside the prefetch under PIPE: the dependent load overlaps a multiply"),
        f"{i2}x{t}{sfx} = tl.load(x_row + src, mask=mk, other=0.0)",
        f"{i2}mw = ({ok} & (sc{sfx} > {32 * t}))[:, None, None] & mask_n[None, None, :]",
    ]
    prefix = 0
    for w in plane_widths(bits):
        body.append(f"{i2}wd{w}_{t}{sfx} = tl.load(qw_ptr + (bs{sfx} + (sc{sfx} * {prefix} // 32) * nr)[:, None, None]"
                    f" + ({t * w} + ww{w}_{bits})[None, :, None] * nr + local[None, None, :], mask=mw, other=0)")
        prefix += w
    return guard + body


def _v4_loads(bits: int, sfx: str, j: str, base: str, ok: str, ind: str) -> list[str]:
    """Issue (not wait for) every load of one iteration's UB groups ``j`` ([UB]) at word offsets
    ``base``, masked by ``ok``: _v4_meta_loads, then every chunk's _v4_chunk_loads. Names get the
    suffix ``sfx``."""
    out = _v4_meta_loads(sfx, j, base, ok, ind)
    for t in range(4):
        out += _v4_chunk_loads(bits, t, sfx, ok, ind)
    return out


def _v4_chunk_compute(bits: int, t: int, sfx: str, ind: str) -> list[str]:
    """Multiply chunk t: one LOP3 + FADD + FFMA per field into [UB, w, rows], then an in-thread sum
    over the chunk's w words into the [UB, rows] row sums ``rs`` (only this chunk's activations are
    live in the replicated layout)."""
    UB = _v4_u(bits)
    guard = [f"{ind}if BLOCK_K > {32 * t}:"] if t else []
    i2 = ind + "    " if t else ind
    body = [f"{i2}xt = x{t}{sfx}.to(tl.float32)", f"{i2}xs += tl.sum(xt, axis=1)"]
    for w in plane_widths(bits):
        per = 32 // w
        body.append(f"{i2}wd = wd{w}_{t}{sfx}")
        if per * w > 16:
            body.append(f"{i2}wdh = (wd >> 16) & 65535")
        tree, leaves = split_tree(f"tl.reshape(xt * xsc{w}_{bits}[None, :], ({UB}, {w}, {per}))", f"{UB}, {w}",
                                  per, f"xf{w}_", i2)
        body += tree
        terms = field_products(leaves, w, "[:, :, None]")
        body.append(f"{i2}tmp = {terms[0]}")
        body += [f"{i2}tmp += {tt}" for tt in terms[1:]]
        body.append(f"{i2}rs += tl.sum(tmp, axis=1)  # over the chunk's {w} word(s): inside the thread")
    return guard + body


def _v4_compute(bits: int, sfx: str, ind: str, chunk_loads=None, chunk=None) -> list[str]:
    """Multiply the loaded tiles (suffix ``sfx``) chunk by chunk, then once per iteration the
    scale/zero-point step into ``acc0`` (an in-thread sum over the UB groups). ``chunk_loads(t)``,
    if given, emits chunk t's loads just before chunk t-1 is multiplied (a one-chunk pipeline).
    ``chunk``: the chunk multiply (default _v4_chunk_compute; gemvh passes its fp16x2 one)."""
    UB = _v4_u(bits)
    out = [f"{ind}rs = tl.zeros(({UB}, BLOCK_N), dtype=tl.float32)",
           f"{ind}xs = tl.zeros(({UB},), dtype=tl.float32)"]
    for t in range(4):
        if chunk_loads is not None and t < 3:
            out += chunk_loads(t + 1)
        out += (chunk or _v4_chunk_compute)(bits, t, sfx, ind)
    out.append(f"{ind}acc0 += tl.sum((rs - zv{sfx}.to(tl.float32) * xs[:, None]) * sv{sfx}.to(tl.float32), axis=0)")
    return out


def gemv_v4_segment(bits: int, chunk=None) -> list[str]:
    """The gemvu walk over the ``bits``-bit groups of row-block r (ONE_CHUNK only).

    Iteration t handles the UB groups at walk positions lo + pid_k + SPLIT_K*(UB*t + u) (UB = U, or
    1 above V4_MULTI_MAX_BITS bits, where PIPE is ignored too). No load waits on a load of its own iteration: (j, base) come two iterations
    ahead. PIPE (launcher: num_stages >= 2) double-buffers the tiles in registers -- the next
    iteration's loads are issued before this one is multiplied; without PIPE an iteration issues
    its own tiles first and waits once (other warps on the SM cover the wait).
    """
    b, planes, UB = bits, plane_widths(bits), _v4_u(bits)
    I2, I3, I4 = " " * 8, " " * 12, " " * 16
    out = [f"{I2}# ---- segment: {b}-bit blocks, planes {planes} ({UB} groups per load) ----"]
    shift = 0
    for w in planes:
        per = 32 // w
        out += [
            f"{I2}ww{w}_{b} = tl.arange(0, {w})",
            f"{I2}pk = (tl.arange(0, 32) % {per}) * {w}",
            f"{I2}pk = tl.where(pk >= 16, pk - 16, pk)",
            f"{I2}xsc{w}_{b} = ((127 + {shift} - pk) << 23).to(tl.float32, bitcast=True)  # 2^(shift - p(k))",
        ]
        shift += w
    tiles = (["cols", "sv", "zv"] + [f"x{t}" for t in range(4)]
             + [f"wd{w}_{t}" for t in range(4) for w in planes])
    rotate_tiles = []
    for name in tiles:
        t = int(name[-1]) if name[-1].isdigit() and name[0] in "xw" else 0
        line = f"{name}_c = {name}_n"
        rotate_tiles.append((t, line))
    if b > V4_MULTI_MAX_BITS:  # wide blocks: one group at a time, single-buffered (see V4_MULTI_MAX_BITS)
        out.append(f"{I2}if True:")
        out += _v4_single(b, UB, I3, I4, chunk)
        return out
    out.append(f"{I2}if PIPE:")
    out += _v4_loads(b, "_c", f"jc_{b}", f"bc_{b}", f"okc_{b}", I3)
    out += [
        f"{I3}for i in range(lo_{b} + pid_k, hi_{b}, SPLIT_K * {UB}):",
        f"{I4}okn = i + ({UB} * SPLIT_K) + uu_{b} * SPLIT_K < hi_{b}",
    ]
    out += _v4_loads(b, "_n", f"jn_{b}", f"bn_{b}", "okn", I4)
    out += [
        f"{I4}i2 = i + (2 * {UB} * SPLIT_K) + uu_{b} * SPLIT_K",
        f"{I4}j2 = tl.load(gord_ptr + r * G + i2, mask=i2 < hi_{b}, other=0)",
        f"{I4}b2 = tl.load(boff_ptr + r * G + i2, mask=i2 < hi_{b}, other=0)",
    ]
    out += _v4_compute(b, "_c", I4, chunk=chunk)
    for t, line in rotate_tiles:
        out += ([f"{I4}if BLOCK_K > {32 * t}:", f"{I4}    {line}"] if t else [f"{I4}{line}"])
    out += [f"{I4}jn_{b} = j2", f"{I4}bn_{b} = b2"]
    out.append(f"{I2}else:")
    return out + _v4_single(b, UB, I3, I4, chunk)


def _v4_single(b: int, UB: str, I3: str, I4: str, chunk=None) -> list[str]:
    """The single-buffered loop: an iteration issues its own tiles, then multiplies.
    Segments up to V4_MULTI_MAX_BITS issue all chunks' loads first; wider ones only one chunk ahead
    of the multiply (their whole group would not fit in registers next to the multiply)."""
    out = [
        f"{I3}for i in range(lo_{b} + pid_k, hi_{b}, SPLIT_K * {UB}):",
        f"{I4}ok = i + uu_{b} * SPLIT_K < hi_{b}",
    ]
    if b <= V4_MULTI_MAX_BITS:
        out += _v4_loads(b, "", f"jc_{b}", f"bc_{b}", "ok", I4)
        loads_ahead = None
    else:
        out += _v4_meta_loads("", f"jc_{b}", f"bc_{b}", "ok", I4) + _v4_chunk_loads(b, 0, "", "ok", I4)

        def loads_ahead(t):
            return _v4_chunk_loads(b, t, "", "ok", I4)
    out += [
        f"{I4}i2 = i + (2 * {UB} * SPLIT_K) + uu_{b} * SPLIT_K",
        f"{I4}j2 = tl.load(gord_ptr + r * G + i2, mask=i2 < hi_{b}, other=0)",
        f"{I4}b2 = tl.load(boff_ptr + r * G + i2, mask=i2 < hi_{b}, other=0)",
    ]
    out += _v4_compute(b, "", I4, loads_ahead, chunk)
    out += [f"{I4}jc_{b} = jn_{b}", f"{I4}bc_{b} = bn_{b}", f"{I4}jn_{b} = j2", f"{I4}bn_{b} = b2"]
    return out


def gemv_v4_body(widths: tuple[int, ...], chunk=None) -> str:
    """Segment walks of the gemvu kernel after TILE_SETUP / x_row / acc0: the U-group walk when a
    group fits one chunk (ONE_CHUNK), else gemv.gemv_segment's walk with [words, rows] accumulators.
    Leaves ``acc`` ([1, BLOCK_N]) for STORE_V4."""
    pw = sorted({w for b in widths for w in plane_widths(b)}, reverse=True)
    lines = [
        "    if ALIGNED:",
        "        # launcher-proved (format.layout_aligned4): every row-block's row count and every block",
        "        # offset is a multiple of 4 words, hence so are row0, nr and N",
        "        nr = tl.multiple_of(nr, 4)",
        "        row0 = tl.multiple_of(row0, 4)",
        "        local = tl.max_contiguous(tl.multiple_of(local, 4), 4)",
        "        mask_n = local < nr",
        "        offs_n = row0 + local",
        "        Nh = tl.multiple_of(N, 4)",
        "    else:",
        "        Nh = N",
        "    if ONE_CHUNK:",
    ]
    for b in widths:
        lines += gemv_v4_prologue(b)
    for b in widths:
        lines += gemv_v4_segment(b, chunk)
    lines += ["        acc = acc0[None, :]", "    else:"]
    lines += [f"        acc{w} = tl.zeros((BLOCK_K * {w} // 32, BLOCK_N), dtype=tl.float32)" for w in pw]
    for b in widths:
        lines += ["    " + ln if ln else ln for ln in gemv_segment(b).rstrip("\n").split("\n")]
    total = " + ".join(["acc0"] + [f"tl.sum(acc{w}, axis=0)" for w in pw])
    lines.append(f"        acc = ({total})[None, :]")
    return join_lines(*lines)


def emit_body(widths: tuple[int, ...]) -> str:
    return "".join([
        PROLOGUE.strip("\n") + "\n", TILE_SETUP.strip("\n") + "\n",
        "    x_row = x_ptr + pid_m * stride_xm\n",
        "    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)  # row sums (and zero-point terms)\n",
        gemv_v4_body(widths),
        STORE_V4.strip("\n") + "\n",
    ])


def block_m(M: int, cfg: Config) -> int:
    return 1


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int, int]:
    return (n_tiles, split_k, M)


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[Config]:
    """4 rows per thread (one 128-bit load per word when ALIGNED), BLOCK_N = 128 rows per warp. Three
    families, from the sm_90 compile (benchmarks/compile_check.py --goal):
      * U = 1 with PIPE (num_stages 2: the next group's tiles in flight during the multiply), 1 warp;
      * U = 2 or 4 groups per load without PIPE, 2 warps x 256 rows (U = 2 with PIPE spills, and so
        does U = 2 on one warp). U > 1 wastes the multiply of masked slots when a program walks few
        groups, so split-K stays where each program sees >= 2U groups;
      * U = 1 without PIPE, 1 warp.
    Split-K: 0 (auto_split_k) and the neighbouring powers of two. x gathered in the kernel with PIPE,
    pre-gathered without (plus one pre-gathered PIPE config). <= 16 configs, each family's auto
    split first so a time-boxed tune reaches them all."""
    bk = min(128, pow2_at_least(group_size))
    out = []
    for bn, warps, stages, us in ((128, 1, 2, (1,)), (256, 2, 1, (2, 4)), (128, 1, 1, (1,))):
        if bn > max(16, pow2_at_least(block_rows)):
            continue
        n_tiles = n_tiles_for(bn)
        for u in us:
            auto = auto_split_k(n_tiles, warps, groups, u)
            for sk in dict.fromkeys((0, auto * 2, max(1, auto // 2))):
                if sk and sk * 2 * u > max(groups, 2 * u):
                    continue
                out.append(Config(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps,
                                  num_stages=stages, pregather=stages < 2, U=u, family=FAMILY))
    if out:
        first = [c for c in out if c.SPLIT_K == 0]
        out = first + [c for c in out if c.SPLIT_K != 0] + [out[0].with_(pregather=True)]
    return out[:16]


def auto_split_k(n_tiles: int, warps: int, groups: int, u: int = 1, sms: int = 132) -> int:
    """Split-K for SPLIT_K = 0: the smallest power of two putting >= 6 warps per SM in flight (a
    single-buffered warp waits about one memory latency per iteration; 2 per scheduler cover it),
    but no more splits than leave each program >= 2U groups to walk (fewer and the masked slots of
    a U-group load cost their multiply for nothing), at most 64."""
    sk = 1
    while n_tiles * sk * warps < 6 * sms and sk * 2 * 2 * u <= groups and sk < 64:
        sk *= 2
    return sk


def launch_params(bn: int, warps: int, u: int) -> tuple[int, int]:
    """(num_warps, U) the kernel really launches with: U a power of two in 1..8; at most BLOCK_N/32
    warps, so a warp's 32 lanes all lie along rows and a group's words (and the U groups) stay inside
    each thread -- the per-iteration sums over them are then register adds, never shuffles."""
    u = min(8, pow2_at_least(max(1, int(u))))
    return max(1, min(int(warps), bn // 32)), u


def launch(L, cfg: Config, family: str = FAMILY) -> torch.Tensor:
    """Host side (``L``: a ``launch.Launch``): split-K partial sums go to slices of an uninitialised
    fp32 [SPLIT_K, M, N] buffer (plain stores) and are summed here -- one reduction that Inductor
    fuses with the cast; SPLIT_K == 1 stores the output dtype directly: one launch. ``family``: the
    body to launch (gemvh shares this host side)."""
    warps, u = launch_params(L.bn, cfg.num_warps, cfg.U)
    split_k = cfg.SPLIT_K or auto_split_k(L.n_tiles, warps, L.G, u, L.sms)
    split_k = max(1, min(split_k, L.G))
    aligned = L.aligned4 and L.bn % (4 * 32 * warps) == 0
    f32_out = split_k > 1 or (L.interpret and L.x.dtype == torch.bfloat16)
    shape = (split_k, L.M, L.N) if split_k > 1 else (L.M, L.N)
    y = torch.empty(shape, device=L.x.device, dtype=torch.float32 if f32_out else L.x.dtype)
    L.kernel(family)[grid(L.M, L.n_tiles, split_k, 1)](
        *L.pointers(L.segment_ptr, y), *L.ints(L.N),
        BLOCK_M=1, BLOCK_N=L.bn, BLOCK_K=L.bk, SPLIT_K=split_k, ONE_CHUNK=L.bk >= L.group_size,
        HAS_ROW_PERM=L.has_row_perm, HAS_COL_PERM=L.has_col_perm, DOT_KIND=L.dot_kind,
        ATOMIC=False, U=u, ALIGNED=aligned, PIPE=cfg.num_stages >= 2, num_warps=warps,
        num_stages=cfg.num_stages,
    )
    if split_k > 1:
        y = y.sum(0)
    if f32_out:
        y = y.to(L.x.dtype)
    return y.reshape(*L.lead, L.N)
