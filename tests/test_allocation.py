import math

import pytest
import torch
from hypothesis import assume, given, strategies as st

from sfmp_compile.allocation import RANKS, allocate, average_bits, rank_key, scan_three_level
from sfmp_compile.blocks import BlockGrid

shapes = st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=4)


def _layers(shapes, seed, block_rows=64, group_size=32):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (N, K) in enumerate(shapes):
        grid = BlockGrid(N, K, block_rows, group_size)
        # heavy-tailed saliences, several orders of magnitude apart across layers, like real ones
        sal = torch.rand(grid.shape, generator=gen, dtype=torch.float64) ** 4 * 10.0 ** (i - 2)
        out[f"layer{i}"] = (sal, grid.weight_counts())
    return out


def _achieved(bit_maps, layers):
    return average_bits(bit_maps, {n: c for n, (_, c) in layers.items()})


def _one_block_bits(layers, gap=1):
    total = sum(float(c.sum()) for _, c in layers.values())
    return gap * max(float(c.max()) for _, c in layers.values()) / total


@given(shapes=shapes, bits=st.floats(1.01, 7.99), seed=st.integers(0, 1000))
def test_two_level_meets_budget_within_one_block(shapes, bits, seed):
    layers = _layers(shapes, seed)
    maps = allocate(layers, bits)
    got = _achieved(maps, layers)
    assert got <= bits + 1e-9
    assert bits - got <= _one_block_bits(layers) + 1e-9
    for m in maps.values():
        assert set(m.unique().tolist()) <= {math.floor(bits), math.floor(bits) + 1}


def _keys(layers, rank):
    sal = torch.cat([layers[n][0].flatten() for n in layers])
    cnt = torch.cat([layers[n][1].flatten() for n in layers])
    return rank_key(sal, cnt, rank)


@given(shapes=shapes, bits=st.floats(1.01, 7.99), seed=st.integers(0, 1000), rank=st.sampled_from(RANKS))
def test_two_level_higher_ranked_blocks_never_get_fewer_bits(shapes, bits, seed, rank):
    layers = _layers(shapes, seed)
    maps = allocate(layers, bits, rank=rank)
    b = torch.cat([maps[n].flatten().to(torch.int64) for n in layers])
    order = torch.argsort(_keys(layers, rank), descending=True, stable=True)
    assert (b[order][1:] <= b[order][:-1]).all()


@given(shapes=shapes, seed=st.integers(0, 1000), bits=st.floats(2.0, 4.0),
       choices=st.sampled_from([(2, 3, 4), (1, 2, 4), (2, 4, 8), (3, 4, 6)]), rank=st.sampled_from(RANKS))
def test_three_level_meets_budget_and_is_monotone(shapes, seed, bits, choices, rank):
    assume(choices[0] <= bits <= choices[2])
    layers = _layers(shapes, seed)
    maps = allocate(layers, bits, choices, rank=rank)
    got = _achieved(maps, layers)
    assert got <= bits + 1e-9
    gap = max(choices[1] - choices[0], choices[2] - choices[1])
    assert bits - got <= _one_block_bits(layers, gap) + 1e-9
    b = torch.cat([maps[n].flatten().to(torch.int64) for n in layers])
    order = torch.argsort(_keys(layers, rank), stable=True)
    assert (b[order][1:] >= b[order][:-1]).all()


@given(shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=4),
       bits=st.floats(2.01, 6.99), seed=st.integers(0, 1000), three=st.booleans())
def test_ranks_agree_where_every_block_is_full(shapes, bits, seed, three):
    # whole blocks only (a power-of-two weight count, so dividing by it keeps every order and tie)
    layers = _layers([(64 * r, 32 * g) for r, g in shapes], seed)
    b = round(bits)
    choices = (b - 1, b, b + 1) if three else None
    a, b = allocate(layers, bits, choices, rank="sum"), allocate(layers, bits, choices, rank="per_weight")
    assert all(torch.equal(a[n], b[n]) for n in layers)


def test_a_ragged_block_is_ranked_by_its_salience_per_weight():
    # a 192-row GQA k/v block twice as salient per weight as two full 512-row blocks: its block sum is
    # only 0.75 of theirs. The budget holds exactly its weights at one bit more.
    small, full = BlockGrid(192, 128, 512, 128), BlockGrid(512, 128, 512, 128)
    layers = {"k": (torch.full(small.shape, 2.0 * 192 * 128, dtype=torch.float64), small.weight_counts()),
              "a": (torch.full(full.shape, 1.0 * 512 * 128, dtype=torch.float64), full.weight_counts()),
              "b": (torch.full(full.shape, 1.0 * 512 * 128, dtype=torch.float64), full.weight_counts())}
    bits = 3 + 192 / (192 + 512 + 512)
    per_weight, by_sum = allocate(layers, bits), allocate(layers, bits, rank="sum")
    assert (per_weight["k"] == 4).all() and (per_weight["a"] == 3).all() and (per_weight["b"] == 3).all()
    assert (by_sum["k"] == 3).all()  # ranked below blocks that do not fit the budget


def test_unknown_rank_is_refused():
    g = BlockGrid(32, 32, 32, 32)
    with pytest.raises(ValueError, match="rank must be one of"):
        allocate({"x": (torch.ones(g.shape, dtype=torch.float64), g.weight_counts())}, 3.5, rank="mean")


def _brute_force_scan(sal, cnt, bits, choices):
    """The paper's scan written the slow, obvious way: per α1, walk the sorted blocks."""
    b1, b2, b3 = choices
    items = sorted(zip(sal.tolist(), cnt.tolist()), key=lambda t: t[0])
    total = sum(c for _, c in items)
    best = None
    for i in range(101):
        a1 = i / 100
        a3 = (bits - b2 - (b1 - b2) * a1) / (b3 - b2)
        a2 = 1 - a1 - a3
        if not (-1e-9 <= a3 <= 1 + 1e-9 and -1e-9 <= a2 <= 1 + 1e-9):
            continue
        n1, acc = 0, 0
        while n1 < len(items) and acc < a1 * total * (1 - 1e-12):
            acc += items[n1][1]
            n1 += 1
        n3, acc = 0, 0
        while n3 < len(items) - n1 and acc + items[len(items) - 1 - n3][1] <= a3 * total * (1 + 1e-12):
            acc += items[len(items) - 1 - n3][1]
            n3 += 1
        widths = [b1] * n1 + [b2] * (len(items) - n1 - n3) + [b3] * n3
        loss = sum(s / (2**w - 1) ** 2 for (s, _), w in zip(items, widths))
        if best is None or loss < best[0] - 1e-15:
            best = (loss, a1)
    return best


@given(n=st.integers(1, 40), seed=st.integers(0, 1000), bits=st.floats(2.05, 3.95), ragged=st.booleans())
def test_three_level_scan_matches_brute_force(n, seed, bits, ragged):
    gen = torch.Generator().manual_seed(seed)
    sal = torch.rand(n, generator=gen, dtype=torch.float64)
    cnt = torch.randint(1, 50, (n,), generator=gen) if ragged else torch.full((n,), 16)
    got = scan_three_level(sal, cnt, bits, (2, 3, 4))
    loss, a1 = _brute_force_scan(sal, cnt, bits, (2, 3, 4))
    assert got.loss == pytest.approx(loss, rel=1e-9, abs=1e-12)


def test_integer_target_is_uniform():
    layers = _layers([(100, 100), (64, 200)], 0)
    maps = allocate(layers, 3.0)
    assert all((m == 3).all() for m in maps.values())


def test_one_global_quantile_across_layers():
    # a layer whose blocks are all more salient than another's gets all the high bits first
    g = BlockGrid(64, 64, 32, 32)
    layers = {"hot": (torch.full(g.shape, 10.0, dtype=torch.float64), g.weight_counts()),
              "cold": (torch.full(g.shape, 1.0, dtype=torch.float64), g.weight_counts())}
    maps = allocate(layers, 3.5)
    assert (maps["hot"] == 4).all() and (maps["cold"] == 3).all()


def test_bad_saliences_are_rejected():
    g = BlockGrid(32, 32, 32, 32)
    with pytest.raises(ValueError, match="NaN or inf"):
        allocate({"x": (torch.tensor([[float("nan")]]), g.weight_counts())}, 3.5)
    with pytest.raises(ValueError, match="differ in shape"):
        allocate({"x": (torch.ones(2, 2), g.weight_counts())}, 3.5)
