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
