import torch
from hypothesis import given, strategies as st

from sfmp_compile.blocks import BlockGrid


@given(N=st.integers(1, 1200), K=st.integers(1, 700), br=st.sampled_from([32, 128, 512]), g=st.sampled_from([32, 64, 128]))
def test_weight_counts_cover_the_matrix(N, K, br, g):
    grid = BlockGrid(N, K, br, g)
    c = grid.weight_counts()
    assert tuple(c.shape) == grid.shape
    assert int(c.sum()) == N * K
    assert (c > 0).all()


def test_block_sums_on_ragged_shapes():
    grid = BlockGrid(576, 576, 512, 128)  # SmolLM2 q_proj: ragged in both directions
    x = torch.rand(576, 576)
    s = grid.block_sums(x)
    assert s.shape == (2, 5)
    assert torch.isclose(s[1, 4], x[512:, 512:].double().sum())
    assert torch.isclose(s.sum(), x.double().sum())
