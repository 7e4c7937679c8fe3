"""CPU fast path: SFMP layers whose blocks are all <= 4 bits, run by torch's int4 CPU kernel.

x86 CPUs have no kernel for 2/3-bit codes, but ``aten._weight_int4pack_mm_for_cpu`` (bf16
activations) is fast: a 4096x4096 GEMV in ~0.9 ms at 1 thread vs ~3.2 ms for fp32 dense. Its weight
convention is ``w = (q - 8) * scale' + zero'`` with ``[K/g, N, 2]`` scale-and-zero, and every
asymmetric code of b <= 4 bits maps onto it exactly: ``q`` unchanged, ``scale' = s``,
``zero' = s * (8 - z)``. So at preparation time we:

  * unpack the true-bit codes once, put the ROWS back in original order (rows are independent,
    so the row permutation folds away offline and the output needs no scatter),
  * keep the columns in reordered order (groups are defined over reordered columns) and gather
    x through ``col_perm`` at run time, inside the op,
  * pad N to a multiple of 64 and K to a multiple of 32 (the kernel's layout constraints; padded
    codes/scales are 0, padded x columns are 0).

Memory (bits per weight, 4096x4096, group 128): int4 codes 4.0 + bf16 scale/zero 0.25 + the fp16
scales/zeros kept for the exact inverse 0.25 + bit map/perms ~0.02 = ~4.5, i.e. 1/7 of fp32. The
true-bit ``qweight`` is NOT kept: :func:`unprepare_cpu` rebuilds it bit-exactly (codes from the
int4 form, layout from :func:`sfmp_compile.format.pack`), so saving still writes format v1.

Numerics: activations are rounded to bf16 and scale' / zero' are bf16, so outputs differ from the
fp32 reference by about 2^-9 relative per term (SQNR ~45-55 dB; tests assert >= 35 dB).
Layers with any block > 4 bits are not eligible; they use the reference op.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ..format import PackedWeight, pack

INT4_GROUPS = (256, 128, 64, 32)  # group sizes the int4 CPU kernel accepts
_ROW_ALIGN = 64  # pad N so every 64-row block of torch's layout is full (uniform, invertible)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def cpu_eligible(p) -> bool:
    """True when every block of the layer has <= 4 bits (then the int4 path is exact in codes)."""
    return int(p.bits.max()) <= 4 if p.bits.numel() else False


def int4_group(group_size: int, k_pad: int) -> int:
    """Largest int4-kernel group dividing both our group size and the padded K."""
    for g in INT4_GROUPS:
        if group_size % g == 0 and k_pad % g == 0:
            return g
    raise ValueError(f"group_size {group_size} has no int4 CPU group (needs a multiple of 32)")


@dataclass
class CpuInt4Weight:
    """A layer prepared for the CPU int4 kernel; replaces the true-bit ``qweight`` in memory.

    w4        uint8 [N_pad, K_pad/2]      torch's int4 CPU layout, rows in ORIGINAL order
    sz        bf16  [K_pad/gc, N_pad, 2]  (scale', zero') per (int4 group, original row)
    col_perm  int32 [K] or [0]            gathered at run time
    gc        int                         the int4 kernel's group size (divides group_size)
    bits, scales, zeros, row_perm + meta  kept only so :func:`unprepare_cpu` is exact
    """

    w4: Tensor
    sz: Tensor
    col_perm: Tensor
    gc: int
    bits: Tensor
    scales: Tensor
    zeros: Tensor
    row_perm: Tensor
    out_features: int
    in_features: int
    block_rows: int
    group_size: int

    @property
    def nbytes(self) -> int:
        """Resident bytes of everything this object holds."""
        return sum(getattr(self, f.name).numel() * getattr(self, f.name).element_size()
                   for f in fields(self) if isinstance(getattr(self, f.name), Tensor))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.out_features * self.in_features)

    def op_args(self) -> tuple:
        """Arguments after ``x`` of ``torch.ops.sfmp.linear_cpu_int4``."""
        return (self.w4, self.sz, self.col_perm, self.gc, self.out_features, self.in_features)


def prepare_cpu(p: PackedWeight) -> CpuInt4Weight:
    """Convert a packed layer (all blocks <= 4 bits) to the CPU int4 form. Exact in codes.

    Cost: one unpack of the codes and one ``_convert_weight_to_int4pack_for_cpu``; run it once at
    load / compile time, never per call. Raises ValueError for layers with blocks > 4 bits.
    """
    register_inductor_decompositions()
    layout_is_blocked64()  # decided here, on real tensors, never while a graph is traced
    if not cpu_eligible(p):
        raise ValueError("the CPU int4 path needs every block to have <= 4 bits; use the reference op")
    p = p.to("cpu")
    N, K, gs = p.out_features, p.in_features, p.group_size
    n_pad, k_pad = _ceil_to(N, _ROW_ALIGN), _ceil_to(K, 32)
    gc = int4_group(gs, k_pad)
    codes = p.codes()  # uint8 [N, K], reordered coordinates
    q = torch.zeros(n_pad, k_pad, dtype=torch.int32)
    rows = p.row_perm.long() if p.row_perm.numel() else torch.arange(N)
    q[rows, :K] = codes.to(torch.int32)  # original row row_perm[i] <- reordered row i
    w4 = torch._convert_weight_to_int4pack_for_cpu(q, 1)

    s = torch.zeros(p.scales.shape[0], n_pad, dtype=torch.float32)
    z = torch.zeros_like(s)
    s[:, rows] = p.scales.float()
    z[:, rows] = p.zeros.float()
    rep = gs // gc
    s = s.repeat_interleave(rep, 0)[: k_pad // gc]
    z = z.repeat_interleave(rep, 0)[: k_pad // gc]
    sz = torch.stack([s, s * (8.0 - z)], dim=-1).to(torch.bfloat16).contiguous()
    return CpuInt4Weight(w4=w4, sz=sz, col_perm=p.col_perm, gc=gc, bits=p.bits, scales=p.scales,
                         zeros=p.zeros, row_perm=p.row_perm, out_features=N, in_features=K,
                         block_rows=p.block_rows, group_size=gs)


# --- inverse -----------------------------------------------------------------------------------

_layout_blocked64: bool | None = None


def _unpack_blocked64(w4: Tensor, n_pad: int, k_pad: int) -> Tensor:
    """torch's AVX-512 int4 CPU layout: bytes [N/64, K, 32]; low nibble = row d, high = row d+32."""
    b = w4.reshape(n_pad // 64, k_pad, 32)
    lo, hi = b & 15, b >> 4
    return torch.cat([lo, hi], dim=2).permute(0, 2, 1).reshape(n_pad, k_pad)


def _unpack_probe(w4: Tensor, n_pad: int, k_pad: int) -> Tensor:
    """Layout-agnostic inverse: learn where each nibble comes from by packing index probes.

    Packs the (n*K + k) index of every weight, 4 bits at a time, with torch's own converter; the
    nibble found at each packed position then names its source. Costs ~8 conversions of the layer.
    """
    n = n_pad * k_pad
    idx = torch.arange(n, dtype=torch.int64).view(n_pad, k_pad)
    src = torch.zeros(n, dtype=torch.int64)
    for p in range(0, max(1, (n - 1).bit_length() + 3) // 4):
        probe = torch._convert_weight_to_int4pack_for_cpu(((idx >> (4 * p)) & 15).to(torch.int32), 1)
        nib = torch.stack([probe & 15, probe >> 4], dim=-1).reshape(-1).to(torch.int64)
        src |= nib << (4 * p)
    packed = torch.stack([w4 & 15, w4 >> 4], dim=-1).reshape(-1)
    out = torch.empty(n, dtype=torch.uint8)
    out[src] = packed
    return out.view(n_pad, k_pad)


def layout_is_blocked64() -> bool:
    """Whether torch's int4 CPU converter uses the layout ``_unpack_blocked64`` inverts (checked
    once per process against the converter; the layout is an implementation detail that may depend
    on the CPU ISA)."""
    global _layout_blocked64
    if _layout_blocked64 is None:
        g = torch.Generator().manual_seed(0)
        t = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=g)
        w = torch._convert_weight_to_int4pack_for_cpu(t, 1)
        _layout_blocked64 = tuple(w.shape) == (128, 32) and torch.equal(
            _unpack_blocked64(w, 128, 64).to(torch.int32), t)
    return _layout_blocked64


def unpack_int4(w4: Tensor, n_pad: int, k_pad: int) -> Tensor:
    """uint8 codes [N_pad, K_pad] from torch's CPU int4 layout (exact inverse of the converter)."""
    if layout_is_blocked64() and n_pad % 64 == 0:
        return _unpack_blocked64(w4, n_pad, k_pad)
    return _unpack_probe(w4, n_pad, k_pad)


def unprepare_cpu(c: CpuInt4Weight) -> PackedWeight:
    """Exact inverse of :func:`prepare_cpu`: the true-bit PackedWeight, bit for bit."""
    N, K = c.out_features, c.in_features
    n_pad, k_pad = c.w4.shape[0], c.w4.shape[1] * 2
    codes = unpack_int4(c.w4, n_pad, k_pad)
    rows = c.row_perm.long() if c.row_perm.numel() else torch.arange(N)
    codes = codes[rows, :K]  # back to reordered coordinates
    return pack(codes, c.bits, c.scales.t(), c.zeros.t(),
                c.row_perm if c.row_perm.numel() else None,
                c.col_perm if c.col_perm.numel() else None, c.block_rows, c.group_size)


def dequantize_cpu(c: CpuInt4Weight) -> Tensor:
    """fp32 [N, K]: what the int4 op multiplies by (original rows, REORDERED columns, bf16 scales)."""
    n_pad, k_pad = c.w4.shape[0], c.w4.shape[1] * 2
    return _dequant(c.w4, c.sz, c.gc, n_pad, k_pad)[: c.out_features, : c.in_features]


def _dequant(w4, sz, gc, n_pad, k_pad, dtype=torch.float32) -> Tensor:
    """[N_pad, K_pad] weights of the int4 form, computed in fp32 and rounded once to ``dtype``."""
    q = unpack_int4(w4, n_pad, k_pad).view(n_pad, k_pad // gc, gc).float()
    s = sz[..., 0].t().unsqueeze(-1).float()  # [N, K/gc, 1]: one scale per (row, int4 group)
    z = sz[..., 1].t().unsqueeze(-1).float()
    return ((q - 8.0) * s + z).to(dtype).reshape(n_pad, k_pad)


# --- the op ------------------------------------------------------------------------------------

# Prefill: torch's int4 kernel costs time linear in M (no faster than fp32 dense from M ~ 128 at
# 1 thread), while a bf16 GEMM on CPUs with native bf16 dot products is ~2.4x faster than fp32.
# From these M on, dequantizing the layer to a transient bf16 [N, K] and running one bf16 GEMM wins
# (measured in docs/KERNELS.md, "Prefill on CPU"): the dequantization is ~3 ms per 4M weights when Inductor
# fuses it (compiled graphs), ~9 ms as eager torch ops, hence two thresholds.
PREFILL_M_COMPILED = 128
PREFILL_M_EAGER = 256
_bf16_native: bool | None = None


def has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512_BF16 or AMX), so that a bf16 GEMM
    runs at twice the fp32 rate. Read from /proc/cpuinfo (Linux); False where unknown."""
    global _bf16_native
    if _bf16_native is None:
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            flags = ""
        _bf16_native = any(f in flags for f in (" avx512_bf16", " amx_bf16"))
    return _bf16_native


def _dequant_bf16(w4: Tensor, sz: Tensor, gc: int, n_pad: int, k_pad: int) -> Tensor:
    """The prefill path's transient bf16 weights (used only when the layout is blocked-64, so the
    unpack is the analytic one: plain aten ops Inductor fuses)."""
    return _dequant(w4, sz, gc, n_pad, k_pad, torch.bfloat16)


def _linear_int4(x: Tensor, w4: Tensor, sz: Tensor, col_perm: Tensor, gc: int, out_features: int,
                 in_features: int, prefill_m: int = PREFILL_M_EAGER) -> Tensor:
    # Plain aten ops only: this is the op body, its eager fast path and its Inductor decomposition.
    k_pad = w4.shape[1] * 2
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if col_perm.numel():
        x2 = x2.index_select(1, col_perm)
    x2 = x2.to(torch.bfloat16)
    if k_pad != in_features:
        x2 = F.pad(x2, (0, k_pad - in_features))
    if x2.shape[0] >= prefill_m and _layout_blocked64 and has_native_bf16():
        y = F.linear(x2, _dequant_bf16(w4, sz, gc, w4.shape[0], k_pad))
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), w4, gc, sz)
    if y.shape[1] != out_features:
        y = y[:, :out_features].contiguous()  # drop rows padded to 64; always a fresh tensor
    return y.to(x.dtype).reshape(*lead, out_features)


def _linear_int4_compiled(x, w4, sz, col_perm, gc, out_features, in_features):
    return _linear_int4(x, w4, sz, col_perm, gc, out_features, in_features, PREFILL_M_COMPILED)


@torch.library.custom_op("sfmp::linear_cpu_int4", mutates_args=())
def linear_cpu_int4(x: Tensor, w4: Tensor, sz: Tensor, col_perm: Tensor, gc: int, out_features: int,
                    in_features: int) -> Tensor:
    """y = x @ Ŵᵀ on CPU through the int4 kernel. x: [..., K] any float dtype -> [..., N] x.dtype.

    Inside: gather x by col_perm, round to bf16, pad K, int4 GEMM (bf16 out), drop padded rows.
    Prefill (M >= PREFILL_M_EAGER, or PREFILL_M_COMPILED inside Inductor graphs) on CPUs with native
    bf16: the layer is dequantized to a transient bf16 [N, K] and multiplied by one bf16 GEMM instead.
    w4 / sz / gc from :func:`prepare_cpu` (``CpuInt4Weight.op_args()``).
    """
    return _linear_int4(x, w4, sz, col_perm, gc, out_features, in_features)


@linear_cpu_int4.register_fake
def _(x, w4, sz, col_perm, gc, out_features, in_features):
    torch._check(x.shape[-1] == in_features)
    return x.new_empty((*x.shape[:-1], out_features))


def _setup_ctx(ctx, inputs, output):
    x, w4, sz, col_perm, gc, n, k = inputs
    ctx.save_for_backward(w4, sz, col_perm)
    ctx.meta = (gc, n, k)


def _backward(ctx, grad):
    # Frozen weights: dX = dY @ W (W as the forward used it), then undo the column gather.
    w4, sz, col_perm = ctx.saved_tensors
    gc, n, k = ctx.meta
    w = _dequant(w4, sz, gc, w4.shape[0], w4.shape[1] * 2)[:n, :k]
    gx = grad.to(torch.float32).reshape(-1, n) @ w
    if col_perm.numel():
        out = torch.empty_like(gx)
        out[:, col_perm.long()] = gx
        gx = out
    return gx.reshape(*grad.shape[:-1], k).to(grad.dtype), None, None, None, None, None, None


linear_cpu_int4.register_autograd(_backward, setup_context=_setup_ctx)


def linear_cpu(x: Tensor, c: CpuInt4Weight) -> Tensor:
    """The int4 path for a prepared layer. Eager calls that need no gradient skip the custom-op
    dispatch (~15 us of Python per call, as much as a small layer's GEMV); everything else goes
    through ``sfmp::linear_cpu_int4``."""
    if not (torch.is_grad_enabled() and x.requires_grad) and not torch.compiler.is_compiling():
        return _linear_int4(x, *c.op_args())
    return torch.ops.sfmp.linear_cpu_int4(x, *c.op_args())


_decomp_registered = False


def register_inductor_decompositions() -> bool:
    """Let Inductor see through ``sfmp::linear_cpu_int4``.

    Inductor then fuses the gather + bf16 cast (+ pad) into the kernel that produces x and calls
    the int4 GEMM as an extern kernel, instead of one opaque Python call per layer: on a SmolLM2
    block's 7 linears at M = 1 (1 thread) 0.22 ms vs 0.33 ms opaque vs 0.30 ms fp32 dense. It
    imports torch._inductor (~2 s), so it is not done at import time but by :func:`prepare_cpu`
    (once per process); a compile backend that builds the op another way should call it before
    ``compile_fx``. Returns True once registered (False if Inductor cannot be imported).
    """
    global _decomp_registered
    if _decomp_registered:
        return True
    try:
        from torch._inductor.decomposition import register_decomposition
    except ImportError:  # pragma: no cover - torch without Inductor
        return False

    register_decomposition(torch.ops.sfmp.linear_cpu_int4.default)(_linear_int4_compiled)
    # Inductor memoises its decomposition table at its first compile in the process (e.g. a float
    # model compiled before the quantized one); without this our entry would be missed and the op
    # would run opaque (its eager body, called from the compiled graph).
    from torch._inductor import decomposition as _inductor_decomp
    cached = getattr(_inductor_decomp, "fast_random_decomps", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
    _decomp_registered = True
    _register_cache_fingerprint()
    return True


def _register_cache_fingerprint() -> None:
    """Make AOTAutograd's cache key depend on what the op decomposes into.

    That cache keys a graph before decomposition, so a graph holding this op would otherwise
    replay a stale lowering after this file (or the CPU's bf16 support) changes. It does hash the
    Triton sources registered for an op name, so we register a stub kernel whose text carries a
    hash of this module and the prefill switch. Private torch API: best effort, never fatal.
    """
    try:
        from pathlib import Path
        from torch._library import triton as _lib_triton
        from .generate import fingerprint_kernel
        salt = Path(__file__).read_bytes() + f"{has_native_bf16()}{PREFILL_M_COMPILED}".encode()
        _lib_triton.triton_ops_to_kernels.setdefault("sfmp::linear_cpu_int4", []).append(fingerprint_kernel(salt))
    except Exception:  # noqa: BLE001
        pass


@dataclass
class GraphInt4Weight:
    """A layer for graph rewriters: its int4 form with the permutations left OUT of the weights.

    The graph applies them as gathers (``x[..., col_perm]`` before the op, the inverse of
    ``row_perm`` after it) that its folding pass can cancel, so ``int4`` is permutation-free
    (rows and columns in reordered order). This is the only form a compile backend needs to keep
    resident: ~4.5 bits/weight at group 128, vs 4.5 + the true-bit ~3.3 when both are held.
    :meth:`packed` rebuilds the true-bit PackedWeight exactly (for saving or another device).

    int4      CpuInt4Weight with empty row_perm / col_perm
    row_perm  int32 [N] or [0]   the layer's output permutation (applied by the graph)
    col_perm  int32 [K] or [0]   the layer's input permutation (applied by the graph)
    """

    int4: CpuInt4Weight
    row_perm: Tensor
    col_perm: Tensor

    @staticmethod
    def prepare(p: PackedWeight) -> "GraphInt4Weight | None":
        """The graph form of ``p``, or None when a block has > 4 bits (the reference op runs it)."""
        if not cpu_eligible(p):
            return None
        empty = torch.zeros(0, dtype=torch.int32)
        stripped = PackedWeight(**{**p.tensors(), "row_perm": empty, "col_perm": empty}, **p.meta())
        return GraphInt4Weight(prepare_cpu(stripped), p.row_perm.cpu(), p.col_perm.cpu())

    def packed(self) -> PackedWeight:
        """The true-bit PackedWeight this was prepared from, bit for bit (one unpack + pack)."""
        q = unprepare_cpu(self.int4)
        return PackedWeight(**{**q.tensors(), "row_perm": self.row_perm, "col_perm": self.col_perm}, **q.meta())

    @property
    def nbytes(self) -> int:
        """Resident bytes (int4 codes, bf16 scale/zero, the fp16 scales kept for the inverse, perms)."""
        return self.int4.nbytes + sum(t.numel() * t.element_size() for t in (self.row_perm, self.col_perm))

    def op(self) -> tuple:
        """``(op, args_after_x)``: ``op(x_reordered, *args_after_x)`` is the layer's GEMM in reordered
        coordinates (x already gathered by col_perm; output rows still in reordered order)."""
        return torch.ops.sfmp.linear_cpu_int4.default, self.int4.op_args()


# --- prepared copies for callers that pass a bare PackedWeight ----------------------------------

_prepared: "weakref.WeakKeyDictionary[Tensor, CpuInt4Weight]" = weakref.WeakKeyDictionary()


def cached_prepare(p: PackedWeight) -> CpuInt4Weight:
    """prepare_cpu(p), memoised on p.qweight's identity (the int4 copy lives as long as qweight).

    Convenience for eager callers holding a PackedWeight: both forms stay resident. To get the
    memory saving, keep only the CpuInt4Weight (or use SFMPLinear.prepare_for("cpu")).
    """
    c = _prepared.get(p.qweight)
    if c is None:
        c = prepare_cpu(p)
        _prepared[p.qweight] = c
    return c
