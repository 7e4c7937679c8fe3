import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.config import QuantConfig
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.passes.tie_orders import canonical, make_tied_plan
from sfmp_compile.plan import LayerPlan, find_linears, make_plan
from sfmp_compile.quantize import quantize_weight

from ._helpers import SMALL

CFG = QuantConfig(bits=2.5, salience="weight", **SMALL)


def _llama_weights():
    m = tiny_llama()
    w = {n: mod.weight.detach() for n, mod in find_linears(m).items()}
    return w, {n: x.float() ** 2 for n, x in w.items()}


def test_without_ties_it_is_make_plan():
    w, s = _llama_weights()
    a, b = make_plan(w, s, CFG), make_tied_plan(w, s, CFG)
    for n in w:
        for f in ("row_order", "col_order", "bits"):
            assert torch.equal(getattr(a.layers[n], f), getattr(b.layers[n], f)), (n, f)


def test_tied_layers_share_orders_and_budget_holds():
    w, s = _llama_weights()
    rows = [["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]]
    cols = [["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]]
    for regroup in (True, False):
        p = make_tied_plan(w, s, CFG, None, rows, cols, regroup_orders=regroup)
        assert torch.equal(p.layers[rows[0][0]].row_order, p.layers[rows[0][1]].row_order)
        assert all(torch.equal(p.layers[cols[0][0]].col_order, p.layers[n].col_order) for n in cols[0])
        assert abs(p.average_bits() - 2.5) < 0.02 and p.average_bits() <= 2.5
        for n, lp in p.layers.items():  # still permutations
            assert torch.equal(lp.row_order.sort().values, torch.arange(w[n].shape[0]))


@settings(max_examples=10)
@given(seed=st.integers(0, 1000), n=st.integers(1, 100), k=st.sampled_from([32, 64, 96]))
def test_canonical_orders_quantize_to_the_same_weights(seed, n, k):
    """Sorting inside row-blocks and column groups changes no quantized weight (min-max quantizer)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    ro, co = torch.randperm(n, generator=g), torch.randperm(k, generator=g)
    R, G = -(-n // CFG.block_rows), -(-k // CFG.group_size)
    bits = torch.randint(2, 5, (R, G), generator=g).to(torch.uint8)
    a = quantize_weight(w, LayerPlan(ro, co, bits), CFG).dequantize()
    cro, cco = canonical(ro, CFG.block_rows), canonical(co, CFG.group_size)
    b = quantize_weight(w, LayerPlan(cro, cco, bits), CFG).dequantize()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    if n <= CFG.block_rows:
        assert torch.equal(cro, torch.arange(n))  # one row-block: no row permutation at all
