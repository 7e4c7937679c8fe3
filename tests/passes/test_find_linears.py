import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from sfmp_compile.eval.models import tiny_gpt2, tiny_llama
from sfmp_compile.passes.find_linears import find_linear_sites
from sfmp_compile.passes.names import NameResolver, dotted_name, module_path_name
from sfmp_compile.plan import find_linears

from ._helpers import ComputedWeight, capture


def test_dotted_names_from_dynamo_sources():
    src = "L['self']._modules['model']._modules['layers']._modules['0']._modules['mlp']._modules['up_proj']._parameters['weight']"
    assert dotted_name(src) == "model.layers.0.mlp.up_proj.weight"
    assert dotted_name("G['m']._modules['0']._parameters['bias']") == "0.bias"
    assert dotted_name("L['fn'].__self__._modules['a']._buffers['qweight']") == "a.qweight"
    assert module_path_name("L['self'].model.layers[3].mlp") == "model.layers.3.mlp"


def test_resolver_suffix_match_and_ambiguity():
    r = NameResolver()
    known = ["model.layers.0.mlp.up", "model.layers.1.mlp.up", "head"]
    assert r.resolve("head", known) == "head"
    assert r.resolve("layers.1.mlp.up", known) == "model.layers.1.mlp.up"
    assert r.resolve("nothing", known) is None
    with pytest.raises(ValueError, match="model="):
        r.resolve("mlp.up", known)


def test_llama_graph_every_linear_named_like_the_model():
    m = tiny_llama()
    gm, ex = capture(m, torch.randint(0, 256, (1, 8)))
    sites = find_linear_sites(gm, ex)
    names = [s.name for s in sites]
    assert set(find_linears(m, skip=())) == set(names)
    for s in sites:
        assert s.quantizable and s.form == "linear"
        assert s.weight is m.get_submodule(s.name).weight  # the real parameter, not a copy
        assert (s.out_features, s.in_features) == tuple(s.weight.shape)


def test_gpt2_conv1d_found_as_transposed_addmm_and_tied_head_named_by_caller():
    m = tiny_gpt2()
    gm, ex = capture(m, torch.randint(0, 256, (1, 8)))
    sites = {s.name: s for s in find_linear_sites(gm, ex)}
    c = sites["transformer.h.0.attn.c_attn"]
    assert c.form == "addmm" and c.transposed and c.bias is not None
    assert (c.out_features, c.in_features) == (192, 64)
    assert torch.equal(c.linear_weight(), m.transformer.h[0].attn.c_attn.weight.t())
    # lm_head's weight IS wte's parameter; the layer is still called lm_head (so skip=("lm_head",) works)
    assert sites["lm_head"].weight is m.transformer.wte.weight


def test_symbolic_trace_call_module():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    gm = fx.symbolic_trace(m)
    sites = find_linear_sites(gm)
    assert [s.form for s in sites] == ["module", "module"]
    assert [s.name for s in sites] == ["0", "2"]
    assert sites[0].weight is m[0].weight


@pytest.mark.parametrize("bias", [False, True])
def test_aten_decomposed_forms(bias):
    w = nn.Parameter(torch.randn(12, 8))
    b = nn.Parameter(torch.randn(12)) if bias else None

    def f(x, w, b):
        return torch.nn.functional.linear(x, w, b)

    x = torch.randn(2, 3, 8)
    gm = make_fx(f)(x, w, b)  # aten.t + aten.mm/addmm + views
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.t.default in targets
    sites = find_linear_sites(gm, [x, w, b])
    assert len(sites) == 1
    s = sites[0]
    assert s.form == ("addmm" if bias else "mm") and not s.transposed and s.weight is w
    assert (s.bias is not None) == bias


def test_aten_linear_default_from_a_hand_built_graph():
    g = fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    g.output(g.call_function(torch.ops.aten.linear.default, (x, w)))
    gm = fx.GraphModule(nn.Module(), g)
    wp = nn.Parameter(torch.randn(4, 8))
    (s,) = find_linear_sites(gm, [torch.randn(2, 8), wp])
    assert s.form == "linear" and s.weight is wp and s.quantizable


def test_computed_and_non_float_weights_are_skipped_with_reasons():
    gm, ex = capture(ComputedWeight(), torch.randn(2, 64))
    sites = find_linear_sites(gm, ex)
    reasons = [s.skip_reason for s in sites if not s.quantizable]
    assert len(sites) == 2 and reasons == ["weight is computed in the graph, not a parameter"]

    g = fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    g.output(g.call_function(torch.nn.functional.linear, (x, w)))
    gm = fx.GraphModule(nn.Module(), g)
    wi = nn.Parameter(torch.randint(-8, 8, (4, 8), dtype=torch.int8), requires_grad=False)
    (s,) = find_linear_sites(gm, [torch.randn(2, 8), wi])
    assert not s.quantizable and "not floating point" in s.skip_reason
    (s,) = find_linear_sites(gm, [torch.randn(2, 8), torch.randn(4, 8)])  # a plain tensor input
    assert not s.quantizable and "not a parameter" in s.skip_reason


def test_activation_matmuls_are_not_linears():
    def attn(q, k):
        return torch.matmul(q, k.transpose(-1, -2))

    gm = fx.symbolic_trace(attn)
    assert find_linear_sites(gm, [torch.randn(2, 4, 8), torch.randn(2, 4, 8)]) == []
