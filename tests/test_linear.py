"""SFMPLinear: one SFMPWeight as buffers; the packed form saved whatever layout is held."""
import torch

from sfmp_compile.format import PackedWeight
from sfmp_compile.linear import SFMPLinear
from sfmp_compile.ops.reference import linear_ref, packed_args
from sfmp_compile.permcodec import STORED_TENSORS
from tests.codegen._util import random_packed, sqnr_db

SQNR_FLOOR_DB = 35.0


def _same(a: PackedWeight, b: PackedWeight) -> bool:
    return a.meta() == b.meta() and all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.TENSOR_FIELDS)


def _module(N=576, K=1536, widths=(2, 3), group=128, bias=True, seed=0):
    p = random_packed(N, K, 512, group, widths, True, seed)
    return SFMPLinear(p, torch.randn(N) if bias else None), p


def test_prepare_replaces_codes_and_state_dict_writes_the_packed_form():
    m, p = _module()
    fp32_bytes = 576 * 1536 * 4
    before = sum(b.numel() * b.element_size() for b in m.buffers())
    m.prepare_for("cpu", "int4")
    assert m.layout == "int4" and "qweight" not in dict(m.named_buffers())
    resident = sum(b.numel() * b.element_size() for b in m.buffers())
    assert resident <= fp32_bytes / 6, (resident, fp32_bytes)
    assert before < resident < 2 * before  # one form resident, not both
    sd = m.state_dict()
    assert set(sd) == {*STORED_TENSORS, "bias"}  # format v2: the permutations as codes
    assert torch.equal(sd["qweight"], p.qweight)
    assert _same(m.packed, p)
    x = torch.randn(1, 1536)
    assert sqnr_db(m(x) - m.bias, linear_ref(x, *packed_args(p))) >= SQNR_FLOOR_DB


def test_loading_keeps_the_layout_and_takes_the_new_bit_map():
    m, p = _module()
    m.prepare_for("cpu", "int4")
    m2, p2 = _module(widths=(2, 4), seed=1)
    m.load_state_dict(m2.state_dict())
    assert m.layout == "int4" and m.widths == (2, 4) and _same(m.packed, p2)
    x = torch.randn(2, 1536)
    assert sqnr_db(m(x), m2(x)) >= SQNR_FLOOR_DB
    exact, _ = _module(seed=3)
    exact.load_state_dict(m2.state_dict())
    assert exact.layout == "packed" and torch.equal(exact(x), m2(x))
    old, _ = _module(seed=4)  # a format v1 state dict (int32 permutations) still loads
    old.load_state_dict({**p2.tensors(), "bias": m2.bias})
    assert _same(old.packed, p2) and torch.equal(old(x), m2(x))


def test_cpu_forward_runs_the_packed_kernel_and_int4_is_opt_in():
    m, p = _module(N=128, K=256, widths=(2, 4))
    x = torch.randn(3, 256)
    ref = linear_ref(x, *packed_args(p))
    assert torch.equal(m(x), torch.ops.sfmp.linear_cpu(x, *packed_args(p), 0) + m.bias)
    assert m.layout == "packed" and sqnr_db(m(x) - m.bias, ref) >= SQNR_FLOOR_DB
    y = m(x)
    m.prepare_for("cpu")
    assert m.layout == "panel" and torch.equal(m(x), y)  # the same true-bit words, in the kernel's read order
    assert m.qweight.numel() == p.qweight.numel() and _same(m.packed, p)
    assert set(m.state_dict()) >= {"qweight", "bits"} and torch.equal(m.state_dict()["qweight"], p.qweight)
    m.prepare_for("cpu", "int4")
    assert m.layout == "int4" and sqnr_db(m(x) - m.bias, ref) >= SQNR_FLOOR_DB
    m5, p5 = _module(N=128, K=256, widths=(2, 6), bias=False)
    m5.prepare_for("cpu", "int4")
    assert m5.layout == "panel"  # a 6-bit block does not fit int4: the C++ kernel runs it


def test_set_weight_back_to_packed():
    m, p = _module(N=128, K=256)
    m.prepare_for("cpu", "int4")
    m.set_weight(m.sfmp_weight.to_layout("packed"))
    assert m.layout == "packed" and torch.equal(m.qweight, p.qweight)
    assert "w4" not in dict(m.named_buffers())
    assert _same(m.packed, p)


def test_compiled_module_aot_eager_equals_eager():
    m, p = _module(N=192, K=576)
    m.prepare_for("cpu")
    x = torch.randn(1, 576)
    torch._dynamo.reset()
    out = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    assert torch.equal(out, m(x))
