"""Folding is exact: the folded graph's outputs are bitwise equal to the unfolded graph's."""
import operator

import torch
import torch.fx as fx
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.config import QuantConfig
from sfmp_compile.passes.find_linears import find_linear_sites
from sfmp_compile.passes.fold_permutations import count_gathers, fold_permutations, gather_counts
from sfmp_compile.passes.fx_utils import (ROLE_IN, ROLE_OUT, copy_graph_module, get_constant, insert_gather,
                                          inverse_perm)
from sfmp_compile.passes.regions import Region, RegionContext, find_region
from sfmp_compile.passes.rewrite_linears import rewrite_linears
from sfmp_compile.passes.tie_orders import tie_groups
from sfmp_compile.plan import LayerPlan, make_plan
from sfmp_compile.quantize import quantize_weight

from ._helpers import SMALL, BiasMLP, dequantized_twin

CFG = QuantConfig(bits=2.5, salience="weight", **SMALL)


class ViewMLP(nn.Module):
    """GPT-2's Conv1D shape games: 2-D GEMM, view to 3-D, pointwise, view back to 2-D."""

    def __init__(self, d=64, h=96):
        super().__init__()
        self.fc = nn.Linear(d, h)
        self.proj = nn.Linear(h, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.fc(x.view(-1, d)).view(b, t, -1)
        h = 0.5 * h * (1.0 + torch.tanh(0.79 * (h + 0.04 * torch.pow(h, 3.0))))
        return self.proj(h.view(b * t, -1)).view(b, t, -1)


def constant_of(gm):
    return lambda n: get_constant(gm, n) if n.op == "get_attr" else None


def _rewritten(model, x, layer_plans):
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    sites = find_linear_sites(gm)
    packed = {s.name: quantize_weight(s.linear_weight(), layer_plans[s.name], CFG) for s in sites}
    rewrite_linears(gm, [(s, packed[s.name]) for s in sites], cpu_kernel="reference")
    return gm


def _random_plans(model, seed):
    g = torch.Generator().manual_seed(seed)
    plans = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            n, k = mod.weight.shape
            grid = BlockGrid(n, k, CFG.block_rows, CFG.group_size)
            bits = torch.tensor([2, 3, 4])[torch.randint(0, 3, grid.shape, generator=g)].to(torch.uint8)
            plans[name] = LayerPlan(torch.randperm(n, generator=g), torch.randperm(k, generator=g), bits)
    return plans


def _fold_and_compare(gm, x):
    folded = copy_graph_module(gm)
    report = fold_permutations(folded, constant_of(folded))
    with torch.no_grad():
        assert torch.equal(folded(x), gm(x)), "folding changed the result"
    return folded, report


@settings(max_examples=12)
@given(seed=st.integers(0, 10_000), tie=st.booleans())
def test_mlp_fold_is_bitwise_exact(seed, tie):
    torch.manual_seed(seed % 97)
    m = BiasMLP()
    x = torch.randn(2, 3, 64)
    plans = _random_plans(m, seed)
    if tie:  # gate and up share one row order: the whole region runs in it with no realignment
        plans["up"].row_order = plans["gate"].row_order
    gm = _rewritten(m, x, plans)
    before = count_gathers(gm)
    folded, report = _fold_and_compare(gm, x)
    (region,) = report.regions
    assert sorted(region["producers"]) == ["gate", "up"] and region["consumers"] == ["down"]
    assert region["constants_permuted"] == 2  # both biases, permuted offline
    assert region["gathers_before"] == 3 and region["gathers_after"] == (1 if tie else 2)
    assert report.gathers_after == before - (2 if tie else 1)
    counts = gather_counts(folded)
    assert counts["down"]["in"] == 1 and counts["down"]["out"] == 1
    assert counts["gate"]["out"] + counts["up"]["out"] == (0 if tie else 1)


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000))
def test_fold_through_views_is_exact(seed):
    torch.manual_seed(seed % 89)
    m = ViewMLP()
    x = torch.randn(2, 3, 64)
    gm = _rewritten(m, x, _random_plans(m, seed))
    folded, report = _fold_and_compare(gm, x)
    assert [r["producers"] for r in report.regions] == [["fc"]]
    assert gather_counts(folded)["fc"]["out"] == 0


def test_inverse_pair_cancels_to_no_gather():
    """fc's row order = proj's column order: the composed gather is the identity and disappears."""
    torch.manual_seed(0)
    m = ViewMLP()
    x = torch.randn(2, 3, 64)
    plans = _random_plans(m, 1)
    plans["proj"].col_order = plans["fc"].row_order
    gm = _rewritten(m, x, plans)
    folded, _ = _fold_and_compare(gm, x)
    counts = gather_counts(folded)
    assert counts["fc"]["out"] == 0 and counts["proj"]["in"] == 0


def test_tied_plan_folds_the_llama_mlp_to_one_gather():
    torch.manual_seed(0)
    m = BiasMLP()
    x = torch.randn(2, 3, 64)
    gm = fx.symbolic_trace(m)
    ShapeProp(gm).propagate(x)
    sites = find_linear_sites(gm)
    rows, cols = tie_groups(sites, constant_of(gm))
    assert [sorted(g) for g in rows] == [["gate", "up"]] and [sorted(g) for g in cols] == [["gate", "up"]]
    weights = {s.name: s.linear_weight() for s in sites}
    plan = make_plan(weights, {n: w ** 2 for n, w in weights.items()}, CFG, None, rows, cols,
                     regroup=False, canonical=True)
    assert torch.equal(plan.layers["gate"].row_order, plan.layers["up"].row_order)
    assert torch.equal(plan.layers["gate"].col_order, plan.layers["up"].col_order)
    packed = {s.name: quantize_weight(weights[s.name], plan.layers[s.name], CFG) for s in sites}
    rewrite_linears(gm, [(s, packed[s.name]) for s in sites], cpu_kernel="reference")
    folded, report = _fold_and_compare(gm, x)
    counts = gather_counts(folded)
    # gate/up: one shared input gather, no output gathers; down: one composed input gather
    assert counts["gate"] == {"in": 1, "out": 0, "shared": 1} and counts["up"] == {"in": 1, "out": 0, "shared": 1}
    assert report.deduplicated == 1
    ref = dequantized_twin(m, plan)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref(x), rtol=1e-5, atol=1e-5)


class Leaky(nn.Module):
    """Patterns that must NOT fold: a linear output that is also returned, a softmax (mixes the last dim),
    a product with an activation that is not a linear output."""

    def __init__(self, d=64):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        ya = self.a(x)
        yb = torch.softmax(self.b(x), -1)
        yc = self.c(x) * x
        return self.d(ya + yb + yc), ya


def test_unfoldable_patterns_are_left_alone():
    torch.manual_seed(0)
    m = Leaky()
    x = torch.randn(2, 64)
    gm = _rewritten(m, x, _random_plans(m, 3))
    folded = copy_graph_module(gm)
    report = fold_permutations(folded, constant_of(folded))
    assert report.regions == []
    reasons = dict(report.not_folded)
    assert "graph output" in reasons["a"]
    assert "mixes the last dim" in reasons["b"]
    assert "neither a linear output nor broadcast" in reasons["c"]
    with torch.no_grad():
        for u, v in zip(folded(x), gm(x)):
            assert torch.equal(u, v)


def _chain_graph(perms, shared_input=False):
    """x -> gather(p0) -> gather(p1) -> ... (or several gathers of x) -> sum of outputs."""
    g = fx.Graph()
    x = g.placeholder("x")
    out = g.output(x)
    gm = fx.GraphModule(nn.Module(), g)
    g = gm.graph
    nodes, cur = [], x
    for i, p in enumerate(perms):
        src = x if shared_input else cur
        with g.inserting_before(out):
            node = insert_gather(gm, src, p, ROLE_IN if i % 2 else ROLE_OUT, [f"l{i}"], f"p{i}", before=out)
        nodes.append(node)
        cur = node
    with g.inserting_before(out):
        total = nodes[0]
        for n in nodes[1:]:
            total = g.call_function(operator.add, (total, n))
    out.args = (total,)
    gm.recompile()
    return gm


def test_compose_dedup_and_identity_rules():
    p = torch.randperm(16)
    x = torch.randn(3, 16)
    # an inverse pair collapses into nothing; the first gather survives only because the sum reads it
    gm = _chain_graph([p, inverse_perm(p)])
    ref = gm(x)
    r = fold_permutations(gm)
    assert torch.equal(gm(x), ref) and r.gathers_after == 1 and r.composed == 1
    # three equal gathers of one tensor become one
    gm = _chain_graph([p, p, p], shared_input=True)
    ref = gm(x)
    r = fold_permutations(gm)
    assert torch.equal(gm(x), ref) and r.deduplicated == 2 and r.gathers_after == 1
    # the identity gather is dropped
    gm = _chain_graph([torch.arange(16)])
    ref = gm(x)
    r = fold_permutations(gm)
    assert torch.equal(gm(x), ref) and r.identity_removed == 1 and r.gathers_after == 0


def test_region_analysis_on_traced_graph():
    gm = fx.symbolic_trace(BiasMLP())
    ShapeProp(gm).propagate(torch.randn(2, 64))
    sites = {s.node: s for s in find_linear_sites(gm)}
    ctx = RegionContext(is_producer=lambda n: n in sites, is_consumer=lambda u, v: u in sites and sites[u].x is v,
                        constant=constant_of(gm))
    gate = next(n for n, s in sites.items() if s.name == "gate")
    r = find_region(gate, ctx)
    assert isinstance(r, Region)
    assert sorted(sites[p].name for p in r.producers) == ["gate", "up"]
    assert [sites[c].name for c, _ in r.consumers] == ["down"]
    down = next(n for n, s in sites.items() if s.name == "down")
    assert isinstance(find_region(down, ctx), str)  # the residual add reads x, which is not a linear output
