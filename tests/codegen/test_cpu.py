"""The CPU int4 fast path: exact preparation/inverse, accuracy floor, memory, module integration."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from sfmp_compile.codegen import (cpu_eligible, is_cpu_prepared, packed_of, prepare_cpu, sfmp_linear,  # noqa: E402
                                  unpack_int4, unprepare_cpu)
from sfmp_compile.codegen import cpu as cpu_mod  # noqa: E402
from sfmp_compile.format import PackedWeight  # noqa: E402
from sfmp_compile.linear import SFMPLinear  # noqa: E402
from sfmp_compile.ops.reference import linear_ref, packed_args  # noqa: E402
from tests.codegen._util import random_packed, sqnr_db  # noqa: E402

SQNR_FLOOR_DB = 35.0  # bf16 activations + bf16 scale/zero inside the int4 op; measured ~41-49 dB


def _same(a: PackedWeight, b: PackedWeight) -> bool:
    return a.meta() == b.meta() and all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.TENSOR_FIELDS)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 200), K=st.integers(1, 300), block_rows=st.sampled_from([16, 64, 128]),
       group_size=st.sampled_from([32, 64, 96, 128, 512]),
       widths=st.sampled_from([(1,), (2,), (2, 3), (3, 4), (1, 2, 3, 4), (4,)]),
       permute=st.booleans(), seed=st.integers(0, 2**16))
def test_prepare_then_unprepare_is_bit_exact(N, K, block_rows, group_size, widths, permute, seed):
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    c = prepare_cpu(p)
    assert c.w4.dtype == torch.uint8 and c.sz.dtype == torch.bfloat16
    assert _same(unprepare_cpu(c), p)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 160), K=st.integers(1, 300), group_size=st.sampled_from([32, 64, 128]),
       widths=st.sampled_from([(2,), (2, 3), (3, 4), (2, 3, 4), (1, 4)]), permute=st.booleans(),
       M=st.sampled_from([1, 3, 17, 64]), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**16))
def test_int4_path_sqnr_floor(N, K, group_size, widths, permute, M, dtype, seed):
    p = random_packed(N, K, 64, group_size, widths, permute, seed)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
    ref = linear_ref(x.float(), *packed_args(p))
    y = sfmp_linear(x, prepare_cpu(p))
    assert y.dtype == dtype and y.shape == (M, N)
    assert sqnr_db(y.float(), ref) >= SQNR_FLOOR_DB


def test_dispatch_int4_is_opt_in_and_ineligible_layers_use_the_reference():
    p = random_packed(64, 128, 64, 64, (2, 3), True, seed=1)
    x = torch.randn(2, 128)
    ref = linear_ref(x, *packed_args(p))
    assert torch.equal(sfmp_linear(x, p), ref)  # auto on an unprepared layer: exact reference
    y = sfmp_linear(x, p, backend="cpu")  # explicit: memoised int4 copy, bf16 numerics
    assert not torch.equal(y, ref) and sqnr_db(y, ref) >= SQNR_FLOOR_DB
    q = random_packed(64, 128, 64, 64, (3, 5), True, seed=2)
    assert not cpu_eligible(q)
    with pytest.raises(ValueError, match="<= 4 bits"):
        prepare_cpu(q)
    assert torch.equal(sfmp_linear(x, q, backend="cpu"), linear_ref(x, *packed_args(q)))


def test_probe_inverse_matches_fast_inverse():
    q = torch.randint(0, 16, (128, 96), dtype=torch.int32)
    w4 = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(cpu_mod._unpack_probe(w4, 128, 96).to(torch.int32), q)
    assert torch.equal(unpack_int4(w4, 128, 96).to(torch.int32), q)


def _module(N=576, K=1536, widths=(2, 3), group=128, bias=True, seed=0):
    p = random_packed(N, K, 512, group, widths, True, seed)
    return SFMPLinear(p, torch.randn(N) if bias else None), p


def test_module_prepare_replaces_codes_and_saves_true_bits():
    m, p = _module()
    fp32_bytes = 576 * 1536 * 4
    before = sum(b.numel() * b.element_size() for b in m.buffers())
    m.prepare_for("cpu")
    assert is_cpu_prepared(m) and m.qweight.numel() == 0
    resident = sum(b.numel() * b.element_size() for b in m.buffers())
    assert resident <= fp32_bytes / 6, (resident, fp32_bytes)
    assert before < resident < 2 * before  # one form resident, not both
    sd = m.state_dict()
    assert set(sd) == {*PackedWeight.TENSOR_FIELDS, "bias"}
    assert torch.equal(sd["qweight"], p.qweight)
    assert _same(m.packed, p)
    x = torch.randn(1, 1536)
    assert sqnr_db(m(x) - m.bias, linear_ref(x, *packed_args(p))) >= SQNR_FLOOR_DB
    # Load true-bit buffers into a prepared module: it drops the int4 form and is exact again.
    m2, p2 = _module(seed=1)
    m.load_state_dict(m2.state_dict())
    assert not is_cpu_prepared(m) and torch.equal(m.qweight, p2.qweight)
    assert torch.allclose(m(x) - m.bias, linear_ref(x, *packed_args(p2)), atol=1e-5)
    m.prepare_for("cpu")
    assert is_cpu_prepared(m) and sqnr_db(m(x) - m.bias, linear_ref(x, *packed_args(p2))) >= SQNR_FLOOR_DB


def test_module_forward_is_exact_until_prepared_and_ineligible_stays_true_bits():
    m, p = _module(N=128, K=256, widths=(2, 4))
    x = torch.randn(3, 256)
    assert torch.allclose(m(x) - m.bias, linear_ref(x, *packed_args(p)), atol=1e-5)
    assert not is_cpu_prepared(m)
    m.prepare_for("cpu")
    assert is_cpu_prepared(m) and sqnr_db(m(x) - m.bias, linear_ref(x, *packed_args(p))) >= SQNR_FLOOR_DB
    m5, p5 = _module(N=128, K=256, widths=(2, 6), bias=False)
    m5.prepare_for("cpu")
    assert not is_cpu_prepared(m5) and torch.equal(m5(x), linear_ref(x, *packed_args(p5)))


def test_prepared_module_back_to_true_bits():
    from sfmp_compile.codegen import unprepare_module_
    m, p = _module(N=128, K=256)
    m.prepare_for("cpu")
    unprepare_module_(m)
    assert not is_cpu_prepared(m) and torch.equal(m.qweight, p.qweight)
    assert "w4" not in dict(m.named_buffers())
    assert _same(packed_of(m), p)


def test_compiled_module_aot_eager():
    m, p = _module(N=192, K=576)
    m.prepare_for("cpu")
    x = torch.randn(1, 576)
    torch._dynamo.reset()
    out = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    assert torch.allclose(out, m(x), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 160), K=st.integers(1, 300), group_size=st.sampled_from([32, 64, 128]),
       widths=st.sampled_from([(2,), (2, 3), (3, 4), (1, 2, 3, 4)]), seed=st.integers(0, 2**16))
def test_prefill_dequantization_equals_the_int4_weights(N, K, group_size, widths, seed):
    """The prefill path's bf16 weights are the int4 op's weights rounded once to bf16."""
    c = prepare_cpu(random_packed(N, K, 64, group_size, widths, True, seed))
    n_pad, k_pad = c.w4.shape[0], c.w4.shape[1] * 2
    want = cpu_mod._dequant(c.w4, c.sz, c.gc, n_pad, k_pad).to(torch.bfloat16)
    assert torch.equal(cpu_mod._dequant_bf16(c.w4, c.sz, c.gc, n_pad, k_pad), want)


@pytest.mark.parametrize("compiled", [False, True])
def test_prefill_path_runs_from_its_threshold_and_meets_the_sqnr_floor(monkeypatch, compiled):
    """M >= the prefill threshold switches to dequantize + bf16 GEMM (forced on here even where the CPU
    lacks native bf16, where it would only be slower); eager and Inductor both take it."""
    monkeypatch.setattr(cpu_mod, "_bf16_native", True)
    p = random_packed(96, 200, 64, 64, (2, 3, 4), True, seed=3)
    c = prepare_cpu(p)
    m = max(cpu_mod.PREFILL_M_EAGER, cpu_mod.PREFILL_M_COMPILED)
    x = torch.randn(2, m // 2, 200, generator=torch.Generator().manual_seed(0))
    ref = linear_ref(x.reshape(-1, 200), *packed_args(p)).reshape(2, m // 2, 96)
    calls = []
    orig = cpu_mod._dequant_bf16
    monkeypatch.setattr(cpu_mod, "_dequant_bf16", lambda *a: calls.append(1) or orig(*a))
    if compiled:  # traced afresh (a cached graph would not call the decomposition at all)
        torch._dynamo.reset()
        with torch._functorch.config.patch(enable_autograd_cache=False), \
                torch._inductor.config.patch(fx_graph_cache=False):
            y = torch.compile(lambda t: torch.ops.sfmp.linear_cpu_int4(t, *c.op_args()), dynamic=False)(x)
    else:
        y = cpu_mod.linear_cpu(x, c)
    assert calls, "the prefill path was not taken"
    int4 = cpu_mod._linear_int4(x, *c.op_args(), prefill_m=10**9)
    assert sqnr_db(y, ref) >= SQNR_FLOOR_DB and sqnr_db(y, int4) >= SQNR_FLOOR_DB


def test_aot_cache_key_carries_the_decomposition_fingerprint():
    """AOTAutograd keys graphs before decomposition; the stub kernel registered for the op (whose
    source it does hash) must carry a hash of cpu.py, so an edit there invalidates cached graphs."""
    import inspect
    from torch._library.triton import get_triton_kernels_for_op
    prepare_cpu(random_packed(64, 64, 64, 32, (2,), False, seed=0))
    kernels = get_triton_kernels_for_op("sfmp::linear_cpu_int4")
    assert kernels and "fingerprint" in inspect.getsource(kernels[-1].fn)


def test_decomposition_is_seen_by_inductor_after_an_earlier_compile(monkeypatch):
    """Inductor memoises its decomposition table at its first compile; registering ours later (a
    float model compiled before the quantized one) must still reach the table Inductor uses."""
    from torch._inductor import decomposition as ind
    op = torch.ops.sfmp.linear_cpu_int4.default
    monkeypatch.setattr(cpu_mod, "_decomp_registered", False)
    monkeypatch.delitem(ind.decompositions, op, raising=False)
    ind.fast_random_decomps.cache_clear()
    assert op not in ind.select_decomp_table()  # the table as a first compile memoises it
    cpu_mod.register_inductor_decompositions()
    assert op in ind.select_decomp_table()
