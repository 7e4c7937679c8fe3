import copy

import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.shape_prop import ShapeProp

from sfmp_compile import quantize
from sfmp_compile.config import QuantConfig
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.passes.find_linears import find_linear_sites
from sfmp_compile.passes.fold_permutations import count_gathers, gather_counts
from sfmp_compile.passes.fx_utils import ROLE_GEMM, sfmp_role
from sfmp_compile.passes.rewrite_linears import rewrite_linears
from sfmp_compile.plan import make_plan
from sfmp_compile.quantize import quantize_weight

from ._helpers import SMALL, BiasMLP, capture, dequantized_twin

CFG = QuantConfig(bits=2.5, salience="weight", **SMALL)


def _plan_and_pack(sites, config=CFG, regroup=False):
    weights = {s.name: s.linear_weight() for s in sites if s.quantizable}
    plan = make_plan(weights, {n: w.float() ** 2 for n, w in weights.items()}, config, regroup=regroup, canonical=True)
    packed = {n: quantize_weight(w, plan.layers[n], config) for n, w in weights.items()}
    return plan, packed


def test_symbolic_mlp_with_biases_equals_dequantized_weights():
    torch.manual_seed(0)
    m = BiasMLP()
    x = torch.randn(3, 5, 64)
    gm = fx.symbolic_trace(m)
    sites = find_linear_sites(gm)
    plan, packed = _plan_and_pack(sites)
    records = rewrite_linears(gm, [(s, packed[s.name]) for s in sites], cpu_kernel="reference")
    assert [r.layer for r in records] == ["gate", "up", "down", "out"]
    # every layer: a gather in (if its column order is not the identity), the op, a gather out (rows)
    expected = sum(bool(p.col_perm.numel()) + bool(p.row_perm.numel()) for p in packed.values())
    assert expected > 4 and count_gathers(gm) == expected
    assert sum(1 for n in gm.graph.nodes if sfmp_role(n) == ROLE_GEMM) == 4
    ref = dequantized_twin(m, plan)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref(x), rtol=1e-5, atol=1e-5)


def test_aten_graph_rewrite():
    w = nn.Parameter(torch.randn(48, 64) * 0.1)
    b = nn.Parameter(torch.randn(48))
    x = torch.randn(2, 3, 64)
    gm = make_fx(lambda x, w, b: torch.nn.functional.linear(x, w, b))(x, w, b)
    sites = find_linear_sites(gm, [x, w, b])
    plan, packed = _plan_and_pack(sites)
    rewrite_linears(gm, [(s, packed[s.name]) for s in sites], cpu_kernel="reference")
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.addmm.default not in targets and torch.ops.aten.t.default not in targets
    assert torch.ops.aten.index_select.default in targets  # aten graphs get aten gathers
    expected = torch.nn.functional.linear(x, packed[sites[0].name].dequantize(), b)
    torch.testing.assert_close(gm(x, w, b), expected, rtol=1e-5, atol=1e-5)


def test_already_quantized_graph_permutations_split_out_exactly():
    m = quantize(tiny_llama(), bits=2.5, salience="weight", **SMALL)
    ids = torch.randint(0, 256, (1, 8))
    gm, ex = capture(m, ids)
    with torch.no_grad():
        before = gm(*ex)
    sites = [s for s in find_linear_sites(gm, ex) if s.form == "sfmp"]
    assert len(sites) == 14
    records = rewrite_linears(gm, [(s, None) for s in sites], cpu_kernel="packed")  # the op the trace holds
    counts = gather_counts(gm)
    for r in records:
        assert counts[r.layer]["in"] == int(r.has_col_perm) and counts[r.layer]["out"] == int(r.has_row_perm)
    with torch.no_grad():
        after = gm(*ex)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same arithmetic, only re-indexed


def test_rewrite_keeps_shape_meta_for_later_passes():
    torch.manual_seed(0)
    m = BiasMLP()
    x = torch.randn(3, 5, 64)
    gm = fx.symbolic_trace(m)
    ShapeProp(gm).propagate(x)
    sites = find_linear_sites(gm)
    _, packed = _plan_and_pack(sites)
    rewrite_linears(gm, [(s, packed[s.name]) for s in sites], cpu_kernel="reference")
    for n in gm.graph.nodes:
        if sfmp_role(n) is not None:
            assert "tensor_meta" in n.meta, n.name
