"""sfmp::linear_cpu_int4: accuracy floor, the prefill switch, and what Inductor sees of it."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.layouts import SFMPWeight
from sfmp_compile.ops import cpu_int4 as cpu_op
from sfmp_compile.ops.dispatch import KERNELS, sfmp_linear
from sfmp_compile.ops.reference import linear_ref, packed_args
from tests.codegen._util import random_packed, sqnr_db

SQNR_FLOOR_DB = 35.0  # bf16 activations + bf16 scales inside the int4 op
# The promise at every width (issue 13: 1- and 2-bit layers reached only 29-33 dB while zero' =
# s * (8 - z) was rounded to bf16 apart from s). With codes shifted to zero' = 0 the worst of 480
# random layers per width set measured 47.9 dB (1-bit 48.8, 2-bit 49.4; 32.2 / 37.5 before).
MEASURED_FLOOR_DB = 45.0


def _cpu(p):
    w = SFMPWeight.from_packed(p, "int4")
    return w, KERNELS["int4"].args(w)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(16, 160), K=st.integers(32, 300), group_size=st.sampled_from([32, 64, 128]),
       widths=st.sampled_from([(1,), (2,), (2, 3), (3, 4), (2, 3, 4), (1, 4), (4,)]), permute=st.booleans(),
       M=st.sampled_from([1, 3, 17, 64]), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**16))
def test_int4_op_meets_the_sqnr_floor(N, K, group_size, widths, permute, M, dtype, seed):
    """A floor over a layer's outputs: a single weight whose code sits next to its zero point can
    lose more (bf16 s*(8-z) and (q-8)*s cancel), so layers here have >= 16 x 32 weights."""
    p = random_packed(N, K, 64, group_size, widths, permute, seed)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
    ref = linear_ref(x.float(), *packed_args(p))
    w, args = _cpu(p)
    y = torch.ops.sfmp.linear_cpu_int4(x, *args)
    assert y.dtype == dtype and y.shape == (M, N)
    assert sqnr_db(y.float(), ref) >= MEASURED_FLOOR_DB
    assert torch.equal(sfmp_linear(x, w), y)  # the eager fast path is the op's body


@pytest.mark.parametrize("compiled", [False, True])
def test_prefill_path_runs_from_its_threshold_and_meets_the_sqnr_floor(monkeypatch, compiled):
    """M >= the prefill threshold switches to dequantize + bf16 GEMM (forced on here even where the CPU
    lacks native bf16, where it would only be slower); eager and Inductor both take it."""
    monkeypatch.setattr(cpu_op, "_bf16_native", True)
    p = random_packed(96, 200, 64, 64, (2, 3, 4), True, seed=3)
    w, args = _cpu(p)
    m = max(cpu_op.PREFILL_M_EAGER, cpu_op.PREFILL_M_COMPILED)
    x = torch.randn(2, m // 2, 200, generator=torch.Generator().manual_seed(0))
    ref = linear_ref(x.reshape(-1, 200), *packed_args(p)).reshape(2, m // 2, 96)
    calls = []
    orig = cpu_op.dequant_bf16
    monkeypatch.setattr(cpu_op, "dequant_bf16", lambda *a: calls.append(1) or orig(*a))
    if compiled:  # traced afresh (a cached graph would not call the decomposition at all)
        torch._dynamo.reset()
        with torch._functorch.config.patch(enable_autograd_cache=False), \
                torch._inductor.config.patch(fx_graph_cache=False):
            y = torch.compile(lambda t: torch.ops.sfmp.linear_cpu_int4(t, *args), dynamic=False)(x)
    else:
        y = cpu_op.linear_cpu(x, *args)
    assert calls, "the prefill path was not taken"
    int4 = cpu_op.linear_int4(x, *args, prefill_m=10**9)
    assert sqnr_db(y, ref) >= SQNR_FLOOR_DB and sqnr_db(y, int4) >= SQNR_FLOOR_DB


def test_aot_cache_key_carries_the_decomposition_fingerprint():
    """AOTAutograd keys graphs before decomposition; the stub kernel registered for the op (whose
    source it does hash) must carry a hash of the op's files, so an edit there invalidates cached
    graphs. Its source lives in memory: nothing is written to the cache directory."""
    import inspect
    from torch._library.triton import get_triton_kernels_for_op
    cpu_op.register_inductor_decompositions()
    kernels = get_triton_kernels_for_op("sfmp::linear_cpu_int4")
    assert kernels and "fingerprint" in inspect.getsource(kernels[-1].fn)


def test_decomposition_is_seen_by_inductor_after_an_earlier_compile(monkeypatch):
    """Inductor memoises its decomposition table at its first compile; registering ours later (a
    float model compiled before the quantized one) must still reach the table Inductor uses."""
    from torch._inductor import decomposition as ind
    op = torch.ops.sfmp.linear_cpu_int4.default
    monkeypatch.setattr(cpu_op, "_decomp_registered", False)
    monkeypatch.delitem(ind.decompositions, op, raising=False)
    ind.fast_random_decomps.cache_clear()
    assert op not in ind.select_decomp_table()  # the table as a first compile memoises it
    cpu_op.register_inductor_decompositions()
    assert op in ind.select_decomp_table()
