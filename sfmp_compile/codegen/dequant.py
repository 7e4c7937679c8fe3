"""Dequant family: the packed weight -> a dense [N, K] fp16/bf16/fp32 weight, for large-M prefill.

For large M a GEMM is compute-bound and cuBLAS is hard to beat, so (as the official SFMP code does
for prefill) the layer is dequantized once per call into a transient dense weight and multiplied by
one ``torch.nn.functional.linear``. The dequantize kernel is memory-bound: it reads the packed
planes (~BPW/16 of the fp16 weight) and writes N*K elements once.

Mapping: program (pid_n, pid_k) owns BLOCK_N consecutive rows of ONE row-block (so every row of
the tile shares the bit map, as in decode/prefill) and the walk positions ``seg_lo + pid_k,
seg_lo + pid_k + SPLIT_K, ...`` of each width segment (SPLIT_K = group programs per row tile: no
partial sums here, so it only sets the parallelism; every (row, column) belongs to exactly one
(row tile, walk position), so each output element is written exactly once, no atomics). Per group
and BLOCK_K chunk it unpacks the [BLOCK_K, BLOCK_N] code tile exactly as prefill does
(``prefill.int_codes``), computes ``w = (q - z) * s`` in fp32 -- the same operations, in the same
order, as ``PackedWeight.dequantize_reordered``, so the fp32 result is bit-identical and a cast to
fp16/bf16 rounds once -- and stores it in the output dtype at the ORIGINAL row ``row_perm[n]`` and
ORIGINAL columns ``col_perm[k]`` (scatter stores through the permutations), so neither the
activations nor the output of the GEMM are gathered.

The kernel uses the shared signature (templates.SIGNATURE): ``y_ptr`` is the [N, K] output with row
stride ``stride_ym`` = K; ``x_ptr``, ``xs_ptr``, M, ``stride_xm``, BLOCK_M and DOT_KIND are not
read (there is no activation tile).

Host side: :func:`dequantize` (the weight alone: tests, benchmarks) and :func:`launch` (the family
handle's hook, so ``codegen.launch(x, ..., family="dequant")`` is dequantize + one GEMM through the
ordinary launcher, config lookup and SFMP_AUTOTUNE tuning included).

``pregather`` (a config switch, tried by the tuner for layers with a column permutation): keep the
weight's columns in reordered order and gather x through col_perm instead (launch.launch's
pre-gather). The scatter stores through col_perm compile to one 2-byte store per element (ptxas
cannot vectorise addresses it does not know), the reordered-column stores to 128-bit ones; the
price is one pass over x (M*K elements, against the N*K written). Which wins is for
benchmarks/device_check.sh to measure; the default is the original order (nothing gathered).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .prefill import int_codes
from .templates import ROW_TILE, chunks, col_source, group_head, join_lines
from .tiles import Config, pow2_at_least, tile_geometry

FAMILY = "dequant"
VERSION = "1.0"
SIGNATURE_EXTRA = ""
# SPLIT_K = 2 under the interpreter so the strided walk (several group programs per row tile) is
# what CPU tests exercise.
INTERPRETER = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=1)
# A projection until benchmarks/device_check.sh tunes it: 64 x 128 elements per program (16 KiB of
# fp16 stores), group programs chosen from the SM count.
FALLBACK = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=0, num_warps=4, num_stages=2)

# templates.ROW_TILE without the activation rows of TILE_SETUP (there are none), and the
# destination rows (through row_perm) computed once per program, not per store.
PROLOGUE = '''
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)''' + ROW_TILE + '''    offs_k = tl.arange(0, BLOCK_K)
    if HAS_ROW_PERM:
        dst = tl.load(rperm_ptr + offs_n, mask=mask_n, other=0)
    else:
        dst = offs_n
    # int64 row offsets: N * K elements can exceed 2^31 (e.g. a 128k-vocabulary head)
    y_rows = y_ptr + dst.to(tl.int64) * stride_ym
'''


def dequant_segment(bits: int) -> str:
    def body(ind):
        return int_codes(bits, ind) + [
            f"{ind}kk = c0 + offs_k",
            f"{ind}mask_k = kk < cols  # a ragged last group's padding columns are not stored",
            *col_source(ind, note="  # original column of each reordered column"),
            # fp32, as PackedWeight.dequantize_reordered: q - z is exact, the product the one rounding
            f"{ind}wq = (q.to(tl.float32) - zv[None, :]) * sv[None, :]",
            f"{ind}tl.store(y_rows[None, :] + src[:, None], wq.to(y_ptr.dtype.element_ty),",
            f"{ind}         mask=mask_k[:, None] & mask_n[None, :])",
        ]
    return join_lines(*(group_head(bits, "") + chunks(body)))


def emit_body(widths: tuple[int, ...]) -> str:
    """Kernel body after the signature: tile setup, one segment loop per width (no accumulator,
    no final store: every chunk is stored where it is dequantized)."""
    return PROLOGUE.strip("\n") + "\n" + "".join(dequant_segment(b) for b in widths)


def block_m(M: int, cfg: Config) -> int:
    """No activation rows per program (the GEMM is cuBLAS's); 1 keeps tables uniform."""
    return 1


def grid(M: int, n_tiles: int, split_k: int, bm: int) -> tuple[int, int]:
    return (n_tiles, split_k)


def group_programs(n_tiles: int, groups: int, sms: int) -> int:
    """SPLIT_K = 0 (auto): group programs per row tile so that about 8 waves of programs are in flight
    (a memory-bound kernel needs many loads in flight; there are no atomics to pay for), a power of
    two (each value is a separate compile) and no more than the groups round up to."""
    want = -(-8 * sms // max(1, n_tiles))
    return max(1, min(pow2_at_least(want), pow2_at_least(groups)))


# Candidate tiles (BLOCK_N, BLOCK_K, num_warps): 4k-16k elements per program, i.e. 16-64 fp32 values
# per thread in flight -- enough bytes per program to stream, few enough registers not to spill.
TILES = ((64, 128, 4), (128, 64, 4), (32, 128, 4), (128, 128, 8), (64, 64, 4))


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[Config]:
    """Pruned candidate configs for autotuning (GPU only; M does not change the kernel).

    Pruning: tiles clamped to the layer as the launcher would clamp them (BLOCK_N to a row-block,
    BLOCK_K to the group, rounded up to powers of two, min 16 / 32) and duplicates dropped, so a
    small layer still gets candidates but never two that launch the same kernel; group programs
    always auto (:func:`group_programs`); two and one pipeline stages; with a column permutation
    each also with ``pregather``. At most 20 configs.
    """
    rcap = max(16, pow2_at_least(block_rows))
    gmax = max(32, pow2_at_least(group_size))
    out = []
    for bn, bk, warps in TILES:
        for stages in (2, 1):
            for pg in ((False, True) if has_col_perm else (False,)):
                c = Config(BLOCK_M=1, BLOCK_N=min(bn, rcap), BLOCK_K=min(bk, gmax), SPLIT_K=0,
                           num_warps=warps, num_stages=stages, pregather=pg)
                if c not in out:
                    out.append(c)
    return out


def _run(kernel, layer, walk: Tensor, dtype: torch.dtype, cfg: Config, bn: int, bk: int, tiles_per_rb: int,
         n_tiles: int, interpret: bool, sms: int, original_cols: bool = True) -> Tensor:
    """One dequantize launch of ``kernel`` (already ``wrap_triton``-ed inside a triton_op) into a new
    [N, K] tensor of ``dtype``: rows in original order, columns in original order unless
    ``original_cols`` is False (then in the layer's reordered order)."""
    N, K, G = layer.out_features, layer.in_features, -(-layer.in_features // layer.group_size)
    split_k = cfg.SPLIT_K or group_programs(n_tiles, G, sms)
    split_k = max(1, min(split_k, G))
    # The interpreter rounds fp32 -> bf16 differently from torch (1 ulp): store fp32, cast in torch.
    f32_out = interpret and dtype == torch.bfloat16
    w = torch.empty((N, K), device=layer.qweight.device, dtype=torch.float32 if f32_out else dtype)
    has_rp, has_cp = layer.row_perm.numel() > 0, original_cols and layer.col_perm.numel() > 0
    dummy = layer.segment_ptr  # any valid pointer for the slots the kernel does not read
    kernel[grid(1, n_tiles, split_k, 1)](
        dummy, dummy, w, layer.qweight, walk, layer.group_order, layer.segment_ptr, layer.scales, layer.zeros,
        layer.row_perm if has_rp else dummy, layer.col_perm if has_cp else dummy,
        1, N, K, G, 0, K, layer.block_rows, layer.group_size, tiles_per_rb, 0,
        BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, ONE_CHUNK=bk >= layer.group_size,
        HAS_ROW_PERM=has_rp, HAS_COL_PERM=has_cp, DOT_KIND=0, ATOMIC=False,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return w.to(dtype) if f32_out else w


def launch(L, cfg: Config) -> Tensor:
    """Family hook (``L``: a ``launch.Launch``): y = x @ Ŵᵀ as dequantize + one GEMM.

    x: [..., K] fp16/bf16/fp32 -> [..., N] in x.dtype. The weight is dequantized in x.dtype (fp32 x:
    an fp32 weight and an fp32 GEMM) into a transient [N, K] buffer; torch's caching allocator hands
    the same memory to the next layer, so the peak-memory cost is one layer's dense weight. The GEMM
    takes x as it is (the weight is in original column order), or, with ``cfg.pregather``, the copy
    of x that launch.launch gathered through col_perm (the weight's columns then stay reordered).
    """
    # L.has_col_perm is False exactly when there is no column permutation or x was pre-gathered.
    w = _run(L.kernel(FAMILY), L.layer, L.walk, L.x.dtype, cfg, L.bn, L.bk, L.tiles_per_rb, L.n_tiles,
             L.interpret, L.sms, original_cols=L.has_col_perm)
    return torch.nn.functional.linear(L.x2, w).reshape(*L.lead, L.N)


def dequantize(layer, widths, dtype: torch.dtype = torch.float16, config: Config | None = None, *,
               wrap=None, interpret: bool | None = None) -> Tensor:
    """The layer's weight as a dense [N, K] tensor of ``dtype`` (fp16 / bf16 / fp32) in ORIGINAL
    row/column order, by the generated dequantize kernel: equal to
    ``PackedWeight.dequantize(torch.float32).to(dtype)``.

    layer: a ``launch.KernelLayer`` on the kernel's device (CUDA, or CPU under TRITON_INTERPRET=1).
    widths: the layer's width set (picks the generated kernel). config: a tile Config, or None (the
    tuned / shipped table for family "dequant", else FALLBACK; INTERPRETER under the interpreter).
    wrap: ``torch.library.wrap_triton`` inside a triton_op. ``config.pregather`` is ignored here: the
    result is always in original order (pre-gathering is a choice of :func:`launch`, which owns x).
    """
    # Imported here: generate, launch and autotune import families.py, which imports this module.
    from . import autotune
    from .generate import KernelKey, get_kernel
    from .launch import walk_offsets

    N, K = layer.out_features, layer.in_features
    if interpret is None:
        interpret = autotune.interpreting()
    dev = layer.qweight.device
    widths = tuple(widths)
    # M only names a table bucket here (the kernel has no M); "mlarge", the bucket it serves.
    cfg = config or autotune.get_config(FAMILY, 1 << 30, N, K, widths, layer.group_size, layer.block_rows,
                                        dtype, dev)
    bn, bk, tiles_per_rb, n_tiles = tile_geometry(cfg, N, layer.block_rows, layer.group_size)
    kernel = get_kernel(KernelKey(FAMILY, widths))
    kernel = wrap(kernel) if wrap is not None else kernel
    return _run(kernel, layer, walk_offsets(layer.block_offset, layer.group_order), dtype, cfg, bn, bk,
                tiles_per_rb, n_tiles, interpret, autotune.sm_count(dev))
