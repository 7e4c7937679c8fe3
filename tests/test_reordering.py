import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.config import QuantConfig
from sfmp_compile.passes.fx_utils import inverse_perm
from sfmp_compile.plan import LayerPlan
from sfmp_compile.quantize import quantize_weight
from sfmp_compile.reordering import canonical, ranked, reorder, salience_orders

CFG = QuantConfig(bits=2.5, salience="weight", block_rows=32, group_size=32)


@given(N=st.integers(1, 50), K=st.integers(1, 50), seed=st.integers(0, 1000), rows=st.booleans(), cols=st.booleans())
def test_orders_are_permutations_sorted_by_salience(N, K, seed, rows, cols):
    s = torch.rand(N, K, generator=torch.Generator().manual_seed(seed))
    ro, co = salience_orders({"a": s}, rows=rows, cols=cols)["a"]
    assert torch.equal(torch.sort(ro).values, torch.arange(N))
    assert torch.equal(torch.sort(co).values, torch.arange(K))
    sr = reorder(s, ro, co)
    if cols:
        assert (sr.sum(0)[1:] <= sr.sum(0)[:-1] + 1e-5).all()
    else:
        assert torch.equal(co, torch.arange(K))
    if rows:
        assert (sr.sum(1)[1:] <= sr.sum(1)[:-1] + 1e-5).all()
    else:
        assert torch.equal(ro, torch.arange(N))
    assert torch.equal(reorder(sr, inverse_perm(ro), inverse_perm(co)), s)


@settings(max_examples=30)
@given(N=st.integers(1, 30), K=st.integers(1, 30), seed=st.integers(0, 1000))
def test_a_tied_group_is_ranked_by_its_summed_salience(N, K, seed):
    g = torch.Generator().manual_seed(seed)
    s = {n: torch.rand(N, K, generator=g) for n in ("a", "b", "c")}
    o = salience_orders(s, row_groups=[["a", "b", "missing"]], col_groups=[["b", "c"]])
    assert o["a"][0] is o["b"][0]  # one shared order, not two equal ones
    assert torch.equal(o["a"][0], ranked([s["a"].double().sum(1), s["b"].double().sum(1)]))
    assert torch.equal(o["b"][1], o["c"][1])
    assert torch.equal(o["b"][1], ranked([s["b"].double().sum(0), s["c"].double().sum(0)]))
    assert torch.equal(o["c"][0], ranked([s["c"].double().sum(1)]))  # untied axis: its own order


@settings(max_examples=10, deadline=None)
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
