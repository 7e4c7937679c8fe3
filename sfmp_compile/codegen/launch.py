"""Host-side launcher shared by both kernel families.

``launch`` turns a flattened activation and a layer's packed tensors into one kernel launch (plus,
for split-K, a zeroed fp32 output and a cast). It is written with traceable torch ops only, so the
same function serves ``triton_op`` (pass ``wrap=torch.library.wrap_triton``), the opaque
interpreter op, and direct calls.
"""
from __future__ import annotations

import weakref

import torch

from . import autotune, decode, gemv, prefill, templates
from .autotune import Config
from .generate import FAMILIES, KernelKey, get_kernel


_MAGIC_BITS = 0x4B000000  # fp32 bits of 2^23; a kernel argument so ptxas fuses AND+OR into one LOP3


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def _group_sums(x2: torch.Tensor, col_perm, K: int, G: int, group_size: int) -> torch.Tensor:
    """fp32 [M, G]: sum of the (gathered) activations over each group's columns.

    The decode kernel applies zero points per (row, group) as z * sum_k x; summing here (one tiny
    pass over x, fused into neighbours by Inductor) keeps [16, BLOCK_K] reductions out of its loop.
    """
    xg = x2.index_select(1, col_perm) if col_perm is not None else x2
    xg = xg.to(torch.float32)
    pad = G * group_size - K
    if pad:
        xg = torch.nn.functional.pad(xg, (0, pad))
    return xg.reshape(xg.shape[0], G, group_size).sum(-1)


def _walk_offsets(block_offset: torch.Tensor, group_order: torch.Tensor) -> torch.Tensor:
    """int32 [R, G]: ``block_offset[r, group_order[r, i]]``, the word offset of the i-th group of
    row-block r's width-sorted walk (kernel variant 2 reads it at walk position i, so the word base
    no longer waits on the group_order load). Memoised on the ``block_offset`` tensor for eager
    launches (a layer's metadata is constant); computed in-graph while tracing."""
    eager = type(block_offset) is torch.Tensor and type(group_order) is torch.Tensor
    if eager and not torch.compiler.is_compiling():
        tag = (id(group_order), group_order._version, block_offset._version, block_offset.device)
        hit = getattr(block_offset, "_sfmp_walk", None)
        if hit is not None and hit[0] == tag and hit[1]() is group_order:
            return hit[2]
        walk = torch.gather(block_offset, 1, group_order.long()).to(torch.int32).contiguous()
        try:
            block_offset._sfmp_walk = (tag, weakref.ref(group_order), walk)
        except (AttributeError, TypeError):  # pragma: no cover - exotic tensor subclasses
            pass
        return walk
    return torch.gather(block_offset, 1, group_order.long()).to(torch.int32).contiguous()


def layout_aligned4(block_offset: torch.Tensor, N: int, block_rows: int, real_values: bool = False) -> bool:
    """True when every row-block's row count and every block offset is a multiple of 4 words, i.e.
    when 4 consecutive rows of any sub-plane word are one 16-byte-aligned chunk (relative to qweight's
    start; Triton checks the base pointer's own alignment). The variant-4 gemv then declares its word
    offsets multiples of 4 (``ALIGNED``) and ptxas can emit 128-bit loads. The format guarantees
    neither (``format.validate`` does not check offsets), so the offsets are inspected: once per
    layer in eager (memoised on ``block_offset`` like :func:`_walk_offsets`; one device sync), and
    never while tracing (no values then: False, the safe answer). ``real_values``: the caller holds
    the layer's real tensors although a compile is in progress (a compile backend rewriting a graph,
    which then passes the answer to the op as ``width_mask`` bit 0)."""
    if block_rows % 4 or (N % block_rows) % 4:
        return False
    if type(block_offset) is not torch.Tensor or (torch.compiler.is_compiling() and not real_values):
        return False
    tag = (block_offset._version, block_offset.device, N, block_rows)
    hit = getattr(block_offset, "_sfmp_aligned4", None)
    if hit is not None and hit[0] == tag:
        return hit[1]
    ok = bool((block_offset % 4 == 0).all())
    try:
        block_offset._sfmp_aligned4 = (tag, ok)
    except (AttributeError, TypeError):  # pragma: no cover - exotic tensor subclasses
        pass
    return ok


def _dot_kind(dtype: torch.dtype, interpret: bool) -> int:
    if interpret:
        return 0  # the interpreter computes bf16 (and we keep fp16) in fp32
    # fp32 on GPU: tf32x3 (three tensor-core passes, ~fp32 accuracy; codes are exact in tf32).
    return {torch.float16: 1, torch.bfloat16: 2}.get(dtype, 3)


def launch(x: torch.Tensor, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros,
           row_perm, col_perm, out_features: int, in_features: int, block_rows: int, group_size: int,
           widths, *, family: str | None = None, config: Config | None = None, wrap=None,
           interpret: bool | None = None, aligned4: bool = False) -> torch.Tensor:
    """y = x @ Ŵᵀ with a generated kernel. x: [..., K] fp16/bf16/fp32 -> [..., N] in x.dtype.

    family: "gemv" / "decode" / "prefill" / None (by M: gemv for 1, decode for <= 16, else prefill). config: a tile Config or None
    (looked up, see autotune.get_config). wrap: ``torch.library.wrap_triton`` inside a triton_op.
    ``bits`` is not read on the device: the width set ``widths`` (a tuple) already fixed the kernel.
    aligned4: the caller checked :func:`layout_aligned4` on real values (``width_mask`` bit 0); otherwise
    it is checked here, which is impossible while tracing.
    """
    N, K = out_features, in_features
    torch._check(x.shape[-1] == K, lambda: f"x has {x.shape[-1]} features, the layer expects {K}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return x.new_empty((*lead, N))
    if interpret is None:
        interpret = autotune.interpreting()
    family = family or autotune.family_for(M)
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}")
    if (config is None and not interpret and wrap is None and autotune.autotune_requested()
            and type(x) is torch.Tensor and not torch.compiler.is_compiling()):
        # SFMP_AUTOTUNE=1: tune this (family, bucket, shape, widths, dtype) once, eagerly, on first
        # sight; the result lands in the on-disk JSON and every later lookup finds it.
        autotune.tune_if_missing(
            lambda cfg: launch(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                               col_perm, out_features, in_features, block_rows, group_size, widths,
                               family=family, config=cfg, interpret=False),
            family, M, N, K, widths, group_size, block_rows, x.dtype, x.device, col_perm.numel() > 0)
    cfg = config or autotune.get_config(family, M, N, K, widths, group_size, block_rows, x.dtype, x.device)
    if family == gemv.FAMILY:
        bm = 1  # one activation row per program (grid axis 2 walks the rows)
    elif family == decode.FAMILY:
        bm = decode.block_m(M)  # 16: the smallest tl.dot tile
    else:
        bm = max(16, cfg.BLOCK_M)

    bn = min(cfg.BLOCK_N, _pow2(block_rows))  # a tile never crosses a row-block
    bk = max(32, min(cfg.BLOCK_K, _pow2(group_size)))
    R = -(-N // block_rows)
    G = -(-K // group_size)
    tiles_per_rb = -(-min(block_rows, N) // bn)
    n_tiles = R * tiles_per_rb
    has_cp = col_perm.numel() > 0
    v2 = templates.variant() >= 2
    if has_cp and cfg.pregather and (v2 or family == prefill.FAMILY):
        x2 = x2.index_select(1, col_perm)  # one coalesced pass instead of scattered in-kernel loads
        has_cp = False
    m_tiles = -(-M // bm)
    if family == gemv.FAMILY and templates.variant() >= 4:
        warps, u = gemv.v4_launch_params(bn, cfg.num_warps, cfg.U)
        split_k = cfg.SPLIT_K or gemv.v4_split_k(n_tiles, warps, G, u, autotune.sm_count(x.device))
        split_k = max(1, min(split_k, G))
        return _launch_gemv_v4(x, x2, lead, qweight, block_offset, group_order, segment_ptr, scales, zeros,
                               row_perm, col_perm if has_cp else None, N, K, G, M, bn, bk, tiles_per_rb,
                               n_tiles, split_k, block_rows, group_size, widths, cfg, wrap, interpret, aligned4)
    split_k = cfg.SPLIT_K or autotune.auto_split_k(n_tiles * m_tiles, G, x.device)
    split_k = max(1, min(split_k, G))
    atomic = split_k > 1
    # The interpreter rounds fp32 -> bf16 differently from torch (1 ulp): cast in torch there.
    f32_out = atomic or (interpret and x.dtype == torch.bfloat16)
    if atomic:
        y = torch.zeros((M, N), device=x.device, dtype=torch.float32)
    else:
        y = torch.empty((M, N), device=x.device, dtype=torch.float32 if f32_out else x.dtype)
    has_rp = row_perm.numel() > 0
    if family == decode.FAMILY:
        xs = _group_sums(x2, col_perm if has_cp else None, K, G, group_size)
    else:
        xs = segment_ptr  # gemv sums in-kernel; prefill dequantizes in registers (no sums needed)
    dummy = segment_ptr  # any valid int32 pointer for the permutation slots that are not read

    if v2:
        block_offset = _walk_offsets(block_offset, group_order)  # see templates.variant()
    kernel = get_kernel(KernelKey(family, tuple(widths)))
    k = wrap(kernel) if wrap is not None else kernel
    mod = FAMILIES[family]
    grid = mod.grid(M, n_tiles, split_k, bm)
    k[grid](
        x2, xs, y, qweight, block_offset, group_order, segment_ptr, scales, zeros,
        row_perm if has_rp else dummy, col_perm if has_cp else dummy,
        M, N, K, G, x2.stride(0), y.stride(0), block_rows, group_size, tiles_per_rb, _MAGIC_BITS,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, ONE_CHUNK=bk >= group_size,
        HAS_ROW_PERM=has_rp, HAS_COL_PERM=has_cp, DOT_KIND=_dot_kind(x.dtype, interpret),
        ATOMIC=atomic, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if f32_out:
        y = y.to(x.dtype)
    return y.reshape(*lead, N)


def _launch_gemv_v4(x, x2, lead, qweight, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                    col_perm, N, K, G, M, bn, bk, tiles_per_rb, n_tiles, split_k, block_rows, group_size,
                    widths, cfg, wrap, interpret, aligned4=False):
    """Kernel variant 4 gemv: split-K partial sums go to slices of an uninitialised fp32
    [SPLIT_K, M, N] buffer (plain stores) and are summed here -- one reduction that Inductor fuses
    with the cast -- instead of a zero-fill launch + fp32 atomics + a cast launch. SPLIT_K == 1
    stores the output dtype directly: one launch."""
    warps, u = gemv.v4_launch_params(bn, cfg.num_warps, cfg.U)
    aligned = (aligned4 or layout_aligned4(block_offset, N, block_rows)) and bn % (4 * 32 * warps) == 0
    f32_out = split_k > 1 or (interpret and x.dtype == torch.bfloat16)
    shape = (split_k, M, N) if split_k > 1 else (M, N)
    y = torch.empty(shape, device=x.device, dtype=torch.float32 if f32_out else x.dtype)
    has_rp = row_perm.numel() > 0
    dummy = segment_ptr
    walk = _walk_offsets(block_offset, group_order)
    kernel = get_kernel(KernelKey(gemv.FAMILY, tuple(widths)))
    k = wrap(kernel) if wrap is not None else kernel
    k[gemv.grid(M, n_tiles, split_k, 1)](
        x2, segment_ptr, y, qweight, walk, group_order, segment_ptr, scales, zeros,
        row_perm if has_rp else dummy, col_perm if col_perm is not None else dummy,
        M, N, K, G, x2.stride(0), N, block_rows, group_size, tiles_per_rb, _MAGIC_BITS,
        BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, ONE_CHUNK=bk >= group_size,
        HAS_ROW_PERM=has_rp, HAS_COL_PERM=col_perm is not None, DOT_KIND=_dot_kind(x.dtype, interpret),
        ATOMIC=False, U=u, ALIGNED=aligned, PIPE=cfg.num_stages >= 2, num_warps=warps,
        num_stages=cfg.num_stages,
    )
    if split_k > 1:
        y = y.sum(0)
    if f32_out:
        y = y.to(x.dtype)
    return y.reshape(*lead, N)


def require_interpreter() -> None:
    """Raise a clear error when Triton kernels are asked for on CPU without the interpreter."""
    if not autotune.interpreting():
        raise RuntimeError(
            "Running the SFMP Triton kernels on CPU needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 in the environment before triton (and sfmp_compile) is imported.")
