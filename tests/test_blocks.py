import torch
from hypothesis import given, settings, strategies as st

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


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 200), K=st.integers(1, 200), br=st.sampled_from([8, 32]), g=st.sampled_from([32, 64]),
       seed=st.integers(0, 1000), permute=st.booleans())
def test_block_sums_of_the_reordered_matrix(N, K, br, g, seed, permute):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(N, K, generator=gen)
    grid = BlockGrid(N, K, br, g)
    ro, co = (torch.randperm(N, generator=gen), torch.randperm(K, generator=gen)) if permute else (None, None)
    xr = x[ro][:, co] if permute else x
    got = grid.block_sums(x, ro, co)
    assert got.dtype == torch.float64 and got.shape == grid.shape
    for r in range(grid.n_row_blocks):
        for j in range(grid.n_groups):
            want = xr[r * br:(r + 1) * br, j * g:(j + 1) * g].double().sum()
            assert torch.isclose(got[r, j], want, rtol=1e-12, atol=0)
