"""``sfmp::linear_cpu_int4``: the GEMM over the "int4" layout (layouts/cpu_int4.py), by torch's int4 CPU kernel.

Inside the op: gather x by col_perm, round to bf16, pad K, int4 GEMM (bf16 out), drop padded rows,
scatter rows back through row_perm. A compile pass splits the permutations out as graph gathers
(then both are empty here). Numerics: activations and scale' are bf16 (zero' too, on the 4-bit
groups whose codes cannot be shifted to zero' = 0, see layouts/cpu_int4.py), so outputs differ from
the fp32 reference by about 2^-9 relative per term: >= 47.9 dB measured at every width 1-4 on random
layers of >= 16 x 32 weights; tests assert >= 45 dB (the promise: >= 35 dB at every width).

Prefill: torch's int4 kernel costs time linear in M, while a bf16 GEMM on CPUs with native bf16
dot products runs at about twice the fp32 rate. From ``PREFILL_M_*`` rows on, the layer is
dequantized to a transient bf16 [N, K] for one bf16 GEMM instead (measured in docs/KERNELS.md,
"Prefill on CPU"); the threshold is lower inside Inductor graphs, which fuse the dequantization.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layouts import cpu_int4 as layout
from . import cache_key
from .signature import CPU_INT4, typed

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


def dequant_bf16(w4: Tensor, sz: Tensor, gc: int) -> Tensor:
    """The prefill path's transient bf16 weights [N_pad, K_pad] (reordered coordinates)."""
    return layout.dequantize(w4, sz, gc, torch.bfloat16)


def linear_int4(x: Tensor, w4: Tensor, sz: Tensor, row_perm: Tensor, col_perm: Tensor, out_features: int,
                in_features: int, gc: int, prefill_m: int = PREFILL_M_EAGER) -> Tensor:
    """The op's body, its eager fast path and its Inductor decomposition (plain aten ops only)."""
    k_pad = w4.shape[1] * 2
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if col_perm.numel():
        x2 = x2.index_select(1, col_perm)
    x2 = x2.to(torch.bfloat16)
    if k_pad != in_features:
        x2 = F.pad(x2, (0, k_pad - in_features))
    if x2.shape[0] >= prefill_m and layout._block and has_native_bf16():
        y = F.linear(x2, dequant_bf16(w4, sz, gc))
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), w4, gc, sz)
    if y.shape[1] != out_features:
        y = y[:, :out_features].contiguous()  # drop rows padded to 64; always a fresh tensor
    if row_perm.numel():
        y = y.new_zeros(y.shape).index_copy(1, row_perm.long(), y)
    return y.to(x.dtype).reshape(*lead, out_features)


def _linear_int4_compiled(x, w4, sz, row_perm, col_perm, out_features, in_features, gc):
    return linear_int4(x, w4, sz, row_perm, col_perm, out_features, in_features, gc, PREFILL_M_COMPILED)


@torch.library.custom_op("sfmp::linear_cpu_int4", mutates_args=())
@typed("x", CPU_INT4)
def linear_cpu_int4(x: Tensor, *args) -> Tensor:
    """y = x @ Ŵᵀ on CPU through the int4 kernel. x: [..., K] any float dtype -> [..., N] x.dtype.
    Arguments after x: the "int4" layout's w4 / sz, the permutations, N, K and the int4 group."""
    return linear_int4(x, *args)


@linear_cpu_int4.register_fake
def _(x, w4, sz, row_perm, col_perm, out_features, in_features, gc):
    torch._check(x.shape[-1] == in_features)
    return x.new_empty((*x.shape[:-1], out_features))


def _setup_ctx(ctx, inputs, output):
    x, w4, sz, row_perm, col_perm, n, k, gc = inputs
    ctx.save_for_backward(w4, sz, row_perm, col_perm)
    ctx.meta = (gc, n, k)


def _backward(ctx, grad):
    # Frozen weights: dX = dY @ W (W as the forward used it), in reordered coordinates in between.
    w4, sz, row_perm, col_perm = ctx.saved_tensors
    gc, n, k = ctx.meta
    w = layout.dequantize(w4, sz, gc)[:n, :k]
    g = grad.to(torch.float32).reshape(-1, n)
    if row_perm.numel():
        g = g.index_select(1, row_perm.long())
    gx = g @ w
    if col_perm.numel():
        gx = gx.new_zeros(gx.shape).index_copy(1, col_perm.long(), gx)
    return (gx.reshape(*grad.shape[:-1], k).to(grad.dtype),) + (None,) * 7


linear_cpu_int4.register_autograd(_backward, setup_context=_setup_ctx)


def linear_cpu(x: Tensor, w4: Tensor, sz: Tensor, row_perm: Tensor, col_perm: Tensor, out_features: int,
               in_features: int, gc: int) -> Tensor:
    """The int4 path for a layer in the "int4" layout. Eager calls that need no gradient skip the
    custom-op dispatch (its Python costs as much as a small layer's GEMV); everything else goes
    through ``sfmp::linear_cpu_int4``."""
    args = (w4, sz, row_perm, col_perm, out_features, in_features, gc)
    if not (torch.is_grad_enabled() and x.requires_grad) and not torch.compiler.is_compiling():
        return linear_int4(x, *args)
    return torch.ops.sfmp.linear_cpu_int4(x, *args)


_decomp_registered = False


def register_inductor_decompositions() -> bool:
    """Let Inductor see through ``sfmp::linear_cpu_int4``.

    Inductor then fuses the gather + bf16 cast (+ pad) into the kernel that produces x and calls
    the int4 GEMM as an extern kernel, instead of one opaque Python call per layer. It imports
    torch._inductor (seconds), so it runs when a module is prepared for the int4 layout or the compile
    backend compiles a graph holding the op, not at import. Returns True once registered.
    """
    global _decomp_registered
    if _decomp_registered:
        return True
    try:
        from torch._inductor import decomposition as inductor_decomp
    except ImportError:  # pragma: no cover - torch without Inductor
        return False
    layout.layout_block()  # decided on real tensors here, never while a graph is traced
    inductor_decomp.register_decomposition(torch.ops.sfmp.linear_cpu_int4.default)(_linear_int4_compiled)
    # Inductor memoises its decomposition table at its first compile in the process (e.g. a float
    # model compiled before the quantized one); without this our entry would be missed and the op
    # would run opaque (its eager body, called from the compiled graph).
    cached = getattr(inductor_decomp, "fast_random_decomps", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
    _decomp_registered = True
    here = Path(__file__).parent
    cache_key.register("sfmp::linear_cpu_int4", cache_key.files_hash(
        [here / "cpu_int4.py", here.parent / "layouts" / "cpu_int4.py"],
        f"{has_native_bf16()}{PREFILL_M_COMPILED}".encode()))
    return True
