"""End-to-end tests of ``torch.compile(model, backend=sfmp_backend(...))``.

The reference for "compiled output equals eager output of the same quantized weights" is the model
with each planned weight replaced by its dequantized Ŵ (exact, plain float GEMMs), and ``quantize(copy,
plan=backend.plan)``, whose packed SFMPLinear runs the same exact reference op eagerly on CPU (only
``cpu_kernel="int4"`` tests compare at bf16 accuracy). Most use inner="aot_eager"; two run Inductor.
"""
import copy
import warnings

import pytest
import torch

import sfmp_compile
from sfmp_compile import SFMPConfigError, quantize
from sfmp_compile.backend import SFMPBackend, sfmp_backend
from sfmp_compile.eval.models import tiny_gpt2, tiny_llama
from sfmp_compile.passes.release import is_released, storage_bytes
from sfmp_compile.plan import make_plan

from .passes._helpers import (SMALL, BiasMLP, BrokenModel, ComputedWeight, LoopBreakModel, assert_close_rel,
                              dequantized_twin, quantized_twin)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _ids(t=8, seed=0):
    return torch.randint(0, 256, (1, t), generator=torch.Generator().manual_seed(seed))


def _backend(**kw):
    kw.setdefault("inner", "aot_eager")
    kw.setdefault("bits", 2.5)
    kw.setdefault("cpu_kernel", "reference")  # exactness tests: the fp32 op, not the bf16 int4 kernel
    for k, v in SMALL.items():
        kw.setdefault(k, v)
    return sfmp_backend(**kw)


def test_public_entry_point():
    assert sfmp_compile.sfmp_backend is sfmp_backend
    assert isinstance(sfmp_backend(), SFMPBackend)


def test_llama_fullgraph_equals_eager_quantized_and_recompiles_without_requantizing():
    m = tiny_llama()
    orig = copy.deepcopy(m)
    be = _backend()
    cm = torch.compile(m, backend=be, fullgraph=True)  # fullgraph: no graph break allowed
    with torch.no_grad():
        out = cm(_ids()).logits
        assert be.quantize_calls == 14 and len(be.reports) == 1
        assert abs(be.plan.average_bits() - 2.5) < 0.02
        twin, qtwin = dequantized_twin(orig, be.plan), quantized_twin(orig, be.plan)
        torch.testing.assert_close(out, twin(_ids()).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, qtwin(_ids()).logits, rtol=1e-5, atol=1e-5)  # eager: reference op too
        # a new sequence length: Dynamo recompiles, the backend reuses every packed weight
        out12 = cm(_ids(12, seed=1)).logits
        torch.testing.assert_close(out12, twin(_ids(12, seed=1)).logits, rtol=1e-5, atol=1e-5)
    assert len(be.reports) == 2 and be.quantize_calls == 14
    assert all(row.cached for row in be.reports[1].layers)
    r = be.reports[0]
    assert [s[1] for s in r.skipped] == ["lm_head"]
    # MLP: gate/up tied -> no output gathers; down's input gather composed; q/k/v share one input gather
    g = be.gather_counts()
    for i in range(2):
        p = f"model.layers.{i}.mlp."
        assert g[p + "gate_proj"]["out"] == 0 and g[p + "up_proj"]["out"] == 0
        assert g[f"model.layers.{i}.self_attn.q_proj"]["shared"] == 1
    assert r.gathers_after < r.gathers_before


def test_gpt2_conv1d():
    m = tiny_gpt2()
    orig = copy.deepcopy(m)
    be = _backend()
    with torch.no_grad():
        out = torch.compile(m, backend=be)(_ids()).logits
        twin = dequantized_twin(orig, be.plan)
        torch.testing.assert_close(out, twin(_ids()).logits, rtol=1e-5, atol=1e-5)
    names = set(be.plan.layers)
    assert "transformer.h.0.attn.c_attn" in names and "lm_head" not in names  # tied head still skipped
    # With the paper's plain salience orders (no regrouping) every layer has both permutations, and
    # c_fc -> GELU (through views) -> c_proj folds: c_fc's output gather goes, its bias is permuted offline.
    weights = {n: orig.get_submodule(n).weight.detach().t() for n in names}
    salience_plan = make_plan(weights, {n: w ** 2 for n, w in weights.items()}, be.config, regroup=False, canonical=True)
    be2 = sfmp_backend(plan=salience_plan, inner="aot_eager", cpu_kernel="reference")
    with torch.no_grad():
        out2 = torch.compile(copy.deepcopy(orig), backend=be2)(_ids()).logits
        torch.testing.assert_close(out2, dequantized_twin(orig, salience_plan)(_ids()).logits, rtol=1e-5, atol=1e-5)
    regions = be2.reports[0].regions
    assert [r["producers"] for r in regions] == [["transformer.h.0.mlp.c_fc"], ["transformer.h.1.mlp.c_fc"]]
    assert all(r["constants_permuted"] == 1 and r["gathers_after"] == 1 for r in regions)


def test_model_with_biases():
    torch.manual_seed(0)
    m = BiasMLP()
    orig = copy.deepcopy(m)
    be = _backend(skip=())
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        out = torch.compile(m, backend=be)(x)
        torch.testing.assert_close(out, dequantized_twin(orig, be.plan)(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, quantized_twin(orig, be.plan)(x), rtol=1e-5, atol=1e-5)  # both: reference op
    (region,) = be.reports[0].regions
    assert region["gathers_after"] == 1 and region["constants_permuted"] == 2


def test_graph_break_global_budget_needs_a_plan():
    torch.manual_seed(0)
    m = BrokenModel()
    x = torch.randn(2, 5, 64)
    # Without a plan: one budget per graph, and one warning that says so.
    be = _backend(skip=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            torch.compile(copy.deepcopy(m), backend=be)(x)
    msgs = [str(w.message) for w in caught if "sfmp_backend" in str(w.message)]
    assert len(msgs) == 1 and "own budget" in msgs[0] and "plan=" in msgs[0]
    assert len(be.reports) == 2
    # With a whole-model plan: the graphs take their layers from it, so the average is global.
    plan = sfmp_compile.plan(m, bits=2.5, skip=(), **SMALL)
    be = sfmp_backend(plan=plan, inner="aot_eager", cpu_kernel="reference")
    orig = copy.deepcopy(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-graph warning
        with torch.no_grad():
            out = torch.compile(m, backend=be)(x)
    assert len(be.reports) == 2 and set(be.plan.layers) == set(plan.layers) and be.unquantized(m) == []
    for n, lp in plan.layers.items():
        assert torch.equal(be.plan.layers[n].bits, lp.bits) and torch.equal(be.plan.layers[n].row_order, lp.row_order)
    assert abs(be.plan.average_bits() - 2.5) < 0.02
    half = {n: plan.layers[n] for n in plan.layers if n.startswith("a_")}
    b_half = {n: plan.layers[n] for n in plan.layers if n.startswith("b_")}
    avg = lambda d: sfmp_compile.Plan(plan.config, d).average_bits()  # noqa: E731
    assert avg(b_half) > 2.5 > avg(half)  # the 3x larger half got more bits: one budget spans both graphs
    with torch.no_grad():
        torch.testing.assert_close(out, dequantized_twin(orig, plan)(x), rtol=1e-5, atol=1e-5)


def test_reused_graph_is_specialised_per_module_instance():
    """Dynamo compiles Block.forward once and runs it for both blocks (parameters are inputs);
    the backend must not apply block 0's packed weights to block 1."""
    torch.manual_seed(0)
    m = LoopBreakModel()
    orig = copy.deepcopy(m)
    be = _backend(model=m, skip=())
    x = torch.randn(2, 5, 64)
    with torch.no_grad(), pytest.warns(UserWarning, match="own budget"):
        out = torch.compile(m, backend=be)(x)
    with torch.no_grad():
        torch.testing.assert_close(out, dequantized_twin(orig, be.plan)(x), rtol=1e-5, atol=1e-5)
        torch.compile(m, backend=be)(x)  # warm: no new compilation
    assert sorted(be.plan.layers) == ["blocks.0.down", "blocks.0.up", "blocks.1.down", "blocks.1.up"]
    assert len(be.reports) == 4 and be.quantize_calls == 4
    assert be.unquantized(m) == []
    assert any("other parameters" in n for r in be.reports for n in r.notes)


def test_activation_salience_from_calibration():
    m = tiny_llama()
    calib = [_ids(16, seed=s) for s in range(3)]  # re-cut into windows of the compiled shape [1, 8]
    be = _backend(calibration=calib)
    assert be.config.salience == "activation"
    with torch.no_grad():
        out = torch.compile(copy.deepcopy(m), backend=be)(_ids()).logits
    lp = be.plan.layers["model.layers.0.mlp.down_proj"]
    assert lp.col_weight is not None and lp.col_weight.shape == (128,) and (lp.col_weight > 0).all()
    be_w = _backend()
    with torch.no_grad():
        torch.compile(copy.deepcopy(m), backend=be_w)(_ids())
    assert any(not torch.equal(be.plan.layers[n].bits, be_w.plan.layers[n].bits) for n in be.plan.layers)
    with torch.no_grad():
        torch.testing.assert_close(out, dequantized_twin(m, be.plan)(_ids()).logits, rtol=1e-5, atol=1e-5)


def test_bad_options_fail_at_the_call():
    with pytest.raises(SFMPConfigError, match="out of range"):
        sfmp_backend(bits=0.5)
    with pytest.raises(SFMPConfigError, match="out of range"):
        sfmp_backend(bits=9)
    with pytest.raises(SFMPConfigError, match="not both"):
        sfmp_backend(bits=3, plan=sfmp_compile.plan(torch.nn.Sequential(torch.nn.Linear(64, 64)), bits=3))
    with pytest.raises(SFMPConfigError, match="fisher"):
        sfmp_backend(salience="fisher")
    with pytest.raises(SFMPConfigError, match="calibration"):
        sfmp_backend(salience="activation")
    with pytest.raises(SFMPConfigError, match="inner"):
        sfmp_backend(inner="tvm")
    with pytest.raises(TypeError, match="unexpected options"):
        sfmp_backend(bitz=3)


def test_computed_weight_is_skipped_and_listed(tmp_path):
    torch.manual_seed(0)
    m = ComputedWeight()
    be = _backend(skip=(), dump_dir=str(tmp_path))
    x = torch.randn(2, 64)
    with torch.no_grad():
        out = torch.compile(m, backend=be)(x)
        ref = dequantized_twin(m, be.plan)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (skipped,) = be.reports[0].skipped
    assert "computed in the graph" in skipped[2]
    summary = (tmp_path / "graph_000" / "summary.md").read_text()
    assert "computed in the graph" in summary and "| proj |" in summary


def test_grad_mode_compiles_and_gives_input_gradients():
    m = tiny_llama()
    orig = copy.deepcopy(m)
    be = _backend()
    emb = m.model.embed_tokens(_ids()).detach()
    x1 = emb.clone().requires_grad_(True)
    out = torch.compile(m, backend=be)(inputs_embeds=x1).logits  # grad mode on: AOT builds a backward
    out.pow(2).sum().backward()
    twin = dequantized_twin(orig, be.plan)
    x2 = emb.clone().requires_grad_(True)
    ref = twin(inputs_embeds=x2).logits
    ref.pow(2).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_already_quantized_model_no_requantization():
    orig = tiny_llama()
    m = quantize(copy.deepcopy(orig), bits=2.5, salience="weight", **SMALL)
    be = sfmp_backend(inner="aot_eager", cpu_kernel="reference", skip_bits={})
    with torch.no_grad():
        out = torch.compile(m, backend=be, fullgraph=True)(_ids()).logits
        ref = dequantized_twin(orig, m.sfmp_plan)(_ids()).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert be.quantize_calls == 0
    r = be.reports[0]
    assert len(r.layers) == 14 and all(row.form == "sfmp" for row in r.layers)
    assert r.gathers_after <= r.gathers_before


def test_generate():
    m = tiny_llama()
    orig = copy.deepcopy(m)
    be = _backend()
    m.forward = torch.compile(m.forward, backend=be)
    ids = _ids(6)
    with torch.no_grad():
        got = m.generate(ids, max_new_tokens=4, do_sample=False)
        want = dequantized_twin(orig, be.plan).generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, want)
    assert be.quantize_calls == 14  # prefill and every decode step share the packed weights


def test_dump_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMP_DUMP_DIR", str(tmp_path))
    be = _backend()
    with torch.no_grad():
        torch.compile(tiny_llama(layers=1), backend=be)(_ids())
    d = tmp_path / "graph_000"
    assert {p.name for p in d.iterdir()} >= {"before.py", "after.py", "summary.md", "summary.json"}
    after = (d / "after.py").read_text()
    assert "torch.ops.sfmp.linear_ref.default" in after and "index_select" in after
    assert "torch._C._nn.linear(" in (d / "before.py").read_text()
    summary = (d / "summary.md").read_text()
    assert "model.layers.0.mlp.down_proj" in summary and "Folded regions" in summary


@pytest.mark.slow
def test_inductor_end_to_end_releases_float_weights():
    m = tiny_llama()
    orig = copy.deepcopy(m)
    linear_weights = [m.get_submodule(n).weight for n in sfmp_compile.find_linears(m)]
    before = storage_bytes(m.parameters())
    be = _backend(inner="inductor", release_weights=True, model=m)
    cm = torch.compile(m, backend=be)
    with torch.no_grad():
        out = cm(_ids()).logits
        twin = dequantized_twin(orig, be.plan)
        assert_close_rel(out, twin(_ids()).logits, 1e-5)
        after = storage_bytes(m.parameters())
        freed = sum(w.numel() * w.element_size() for w in linear_weights)
        assert before - after == freed == be.released_bytes
        assert all(is_released(w) for w in linear_weights)
        assert be.packed_bytes < freed / 4  # ~2.5 bits + scales vs 32-bit floats
        # a new length recompiles from the cache: the float values are gone and not needed
        out12 = cm(_ids(12, seed=1)).logits
        assert_close_rel(out12, twin(_ids(12, seed=1)).logits, 1e-5)
    assert be.quantize_calls == 14 and len(be.reports) == 2


@pytest.mark.slow
def test_plain_inductor_compiles_a_quantized_model_without_graph_breaks():
    orig = tiny_llama()
    m = quantize(copy.deepcopy(orig), bits=2.5, salience="weight", **SMALL)
    with torch.no_grad():
        eager = m(_ids()).logits
        out = torch.compile(m, fullgraph=True)(_ids()).logits
    assert_close_rel(out, eager, 1e-5)


def test_unquantized_lists_linears_no_graph_reached():
    torch.manual_seed(0)
    m = LoopBreakModel()
    be = _backend(skip=())
    with torch.no_grad(), pytest.warns(UserWarning, match="own budget"):
        torch.compile(m.blocks[0], backend=be)(torch.randn(2, 5, 64))
    assert be.unquantized(m) == ["blocks.1.up", "blocks.1.down"]
