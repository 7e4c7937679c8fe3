import torch
from hypothesis import given, strategies as st

from sfmp_compile.reordering import inverse, reorder, salience_orders


@given(N=st.integers(1, 50), K=st.integers(1, 50), seed=st.integers(0, 1000), rows=st.booleans(), cols=st.booleans())
def test_orders_are_permutations_sorted_by_salience(N, K, seed, rows, cols):
    s = torch.rand(N, K, generator=torch.Generator().manual_seed(seed))
    ro, co = salience_orders(s, rows, cols)
    assert torch.equal(torch.sort(ro).values, torch.arange(N))
    assert torch.equal(torch.sort(co).values, torch.arange(K))
    sr = reorder(s, ro, co)
    if cols:
        assert (sr.sum(0)[1:] <= sr.sum(0)[:-1] + 1e-5).all()
    else:
        assert torch.equal(co, torch.arange(K))
    if rows:
        assert (sr.sum(1)[1:] <= sr.sum(1)[:-1] + 1e-5).all()
    assert torch.equal(reorder(sr, inverse(ro), inverse(co)), s)
