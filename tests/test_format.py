import pytest
import torch
from hypothesis import given, strategies as st

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.format import PackedWeight, pack, plane_widths, unpack_codes, validate
from sfmp_compile.quantizers.minmax import dequantize_groups
from tests.helpers import random_codes, random_packed


def test_plane_widths_sum_to_bits():
    for b in range(1, 9):
        ws = plane_widths(b)
        assert sum(ws) == b and all(w in (1, 2, 4, 8) for w in ws)


@given(N=st.integers(1, 70), K=st.integers(1, 150), block_rows=st.sampled_from([8, 16, 32]),
       group_size=st.sampled_from([32, 64]), seed=st.integers(0, 10_000))
def test_pack_unpack_roundtrip_any_bits(N, K, block_rows, group_size, seed):
    gen = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, block_rows, group_size)
    bits = torch.randint(1, 9, grid.shape, generator=gen)
    codes = random_codes(grid, bits, gen)
    G = grid.n_groups
    p = pack(codes, bits, torch.ones(N, G), torch.zeros(N, G), None, None, block_rows, group_size)
    validate(p)
    assert torch.equal(unpack_codes(p), codes)
    # true bit width: words stored == sum over blocks of rows * stored_cols * bits / 32
    stored = sum(grid.rows_in(r) * grid.stored_cols(j) * int(bits[r, j]) for r in range(grid.n_row_blocks) for j in range(G))
    assert p.qweight.numel() * 32 == stored


@given(seed=st.integers(0, 10_000), permute=st.booleans())
def test_dequantize_undoes_permutations(seed, permute):
    p, codes = random_packed(45, 100, 16, 32, permute=permute, seed=seed, with_codes=True)
    w_reordered = dequantize_groups(codes, p.scales.float().t(), p.zeros.float().t(), 32)
    w = p.dequantize()
    rp = p.row_perm.long() if p.row_perm.numel() else torch.arange(45)
    cp = p.col_perm.long() if p.col_perm.numel() else torch.arange(100)
    assert torch.equal(w[rp][:, cp], w_reordered)
    # and the inverse gather gives back the original order
    assert torch.equal(w_reordered[torch.argsort(rp)][:, torch.argsort(cp)], w)


def test_segments_walk_groups_by_width():
    p = random_packed(64, 256, 32, 32, widths=(2, 3, 4, 8), seed=3)
    for r in range(p.bits.shape[0]):
        for b in range(1, 9):
            lo, hi = int(p.segment_ptr[r, b]), int(p.segment_ptr[r, b + 1])
            js = p.group_order[r, lo:hi].long()
            assert (p.bits[r, js] == b).all()
            assert torch.equal(js, torch.sort(js).values)
        assert int(p.segment_ptr[r, 9]) == p.bits.shape[1]


def test_identity_permutations_are_not_stored():
    p = random_packed(32, 64, 16, 32, permute=False)
    assert p.row_perm.numel() == 0 and p.col_perm.numel() == 0


def _fields(p):
    return dict(p.tensors(), **p.meta())


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.update(version=99), "format version 99"),
    (lambda f: f.update(qweight=f["qweight"][:-1]), "truncated or corrupt"),
    (lambda f: f.update(scales=f["scales"].float()), "scales must be torch.float16"),
    (lambda f: f.update(bits=f["bits"][:, :1]), "bits must be"),
    (lambda f: f.update(row_perm=torch.zeros(f["out_features"], dtype=torch.int32)), "not a permutation"),
])
def test_validate_says_what_is_wrong(mutate, message):
    p = random_packed(40, 96, 16, 32)
    f = _fields(p)
    mutate(f)
    with pytest.raises(ValueError, match=message):
        validate(PackedWeight(**f))


def test_pack_rejects_codes_too_wide_for_their_block():
    grid = BlockGrid(8, 32, 8, 32)
    codes = torch.full((8, 32), 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        pack(codes, torch.full(grid.shape, 2), torch.ones(8, 1), torch.zeros(8, 1), None, None, 8, 32)


# --- validate: every table must be exactly what pack writes -----------------------------------

_TABLES = ("segment_ptr", "group_order", "block_offset")


@st.composite
def _packed(draw):
    N, K = draw(st.integers(1, 70)), draw(st.integers(1, 150))
    br, gs = draw(st.sampled_from([8, 16, 32])), draw(st.sampled_from([32, 64]))
    widths = tuple(sorted(draw(st.sets(st.integers(1, 8), min_size=1, max_size=4))))
    return random_packed(N, K, br, gs, widths=widths, permute=draw(st.booleans()), seed=draw(st.integers(0, 10_000)))


def _mutated(p, field, idx, data):
    f = _fields(p)
    t = f[field].clone()
    old = float(t[idx])
    if field in _TABLES:
        t[idx] = int(old) + data.draw(st.sampled_from([-1, 1, 2, -64, 1000, 2**30]))
    elif field == "bits":
        t[idx] = data.draw(st.integers(1, 8).filter(lambda b: b != old))
    elif field == "scales":
        t[idx] = data.draw(st.sampled_from([0.0, -max(old, 1e-3), float("nan"), float("inf")]))
    else:  # zeros: out of range for the block width, fractional, or not finite
        bmax = 2 ** int(p.grid.expand_rows(p.bits.long()).t()[idx]) - 1
        t[idx] = data.draw(st.sampled_from([-1.0, bmax + 1.0, bmax + 100.0, old + 0.5, float("nan"), float("-inf")]))
    f[field] = t
    return PackedWeight(**f)


@given(p=_packed(), data=st.data())
def test_pack_validates_and_every_single_table_edit_is_refused(p, data):
    validate(p)  # pack's output is always valid
    for field in _TABLES + ("scales", "zeros", "bits"):  # one random single-entry edit of each table
        idx = tuple(data.draw(st.integers(0, n - 1)) for n in getattr(p, field).shape)
        with pytest.raises(ValueError, match=field if field != "bits" else "bit map needs|truncated"):
            validate(_mutated(p, field, idx, data))


@given(seed=st.integers(0, 10_000))
def test_swapping_two_groups_in_the_walk_order_is_refused(seed):
    p = random_packed(40, 200, 16, 32, widths=(2, 3, 4), seed=seed)
    f = _fields(p)
    go = f["group_order"].clone()
    go[0, [0, -1]] = go[0, [-1, 0]]  # still a permutation, but not the (bits, j) order pack wrote
    f["group_order"] = go
    with pytest.raises(ValueError, match=r"group_order\[0\]"):
        validate(PackedWeight(**f))


@pytest.mark.parametrize("field, mutate, message", [
    ("segment_ptr", lambda t: t[:, 9].fill_(1000), r"segment_ptr\[0\]"),
    ("segment_ptr", lambda t: t.zero_(), r"segment_ptr\[0\]"),
    ("block_offset", lambda t: t.fill_(-64), r"block_offset\[0\]"),
    ("block_offset", lambda t: t.add_(1), r"block_offset\[0\]"),
    ("zeros", lambda t: t.add_(100), "zeros must be integers in"),
    ("scales", lambda t: t.view(-1)[3].fill_(float("nan")), "scales must be finite"),
])
def test_issue_13_reproductions_are_refused(field, mutate, message):
    p = random_packed(40, 96, 16, 32)
    f = _fields(p)
    f[field] = f[field].clone()
    mutate(f[field])
    with pytest.raises(ValueError, match=message):
        validate(PackedWeight(**f))


def test_expected_tables_match_the_docs_worked_example():
    from sfmp_compile.format import expected_tables
    order, seg, offs = expected_tables(BlockGrid(3, 64, 2, 32), torch.tensor([[3, 2], [4, 3]]))
    assert order.tolist() == [[1, 0], [1, 0]]
    assert seg.tolist() == [[0, 0, 0, 1, 2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 1, 2, 2, 2, 2, 2]]
    assert offs.tolist() == [[4, 0], [13, 10]]


def test_validate_refuses_bad_geometry_integers():
    p = random_packed(40, 96, 16, 32)
    for k, v, msg in (("group_size", 48, "multiple of 32"), ("block_rows", True, "positive integer"),
                      ("in_features", -1, "positive integer")):
        f = _fields(p)
        f[k] = v
        with pytest.raises(ValueError, match=msg):
            validate(PackedWeight(**f))
