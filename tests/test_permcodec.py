"""permcodec: format v2's stored permutations (round trip, size, and refusal of any other bytes)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.permcodec import TAGS, decode, encode, key_width, slot_labels
from sfmp_compile.plan import regroup_orders
from sfmp_compile.reordering import canonical
from tests.helpers import edit_code


@st.composite
def layers(draw):
    """(grid, bit map uint8 [R, G], seed): small ragged grids, 2- and 3-level bit maps."""
    br = draw(st.sampled_from([8, 16, 32]))
    gs = draw(st.sampled_from([32, 64]))
    N = draw(st.integers(1, 4 * br))
    K = draw(st.integers(1, 5 * gs))
    grid = BlockGrid(N, K, br, gs)
    widths = draw(st.sampled_from([(2, 3), (3, 4), (2, 3, 4), (3,)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    bits = torch.tensor(widths, dtype=torch.uint8)[torch.randint(len(widths), grid.shape, generator=g)]
    return grid, bits, g


def _orders(grid, bits, g, kind):
    N, K = grid.out_features, grid.in_features
    ro, co = torch.randperm(N, generator=g), torch.randperm(K, generator=g)
    if kind == "regrouped":  # what plan() hands the RTN quantizer
        return regroup_orders(ro, co, bits, grid)
    if kind == "canonical":
        return canonical(ro, grid.block_rows), canonical(co, grid.group_size)
    return ro, co  # a salience sort kept as is (GPTQ's act-order)


@settings(max_examples=150, deadline=None)
@given(layer=layers(), kind=st.sampled_from(["regrouped", "canonical", "random"]))
def test_round_trip_and_size(layer, kind):
    grid, bits, g = layer
    for axis, perm in enumerate(_orders(grid, bits, g, kind)):
        n = perm.numel()
        code = encode(perm, grid, bits, axis)
        back = decode(code, grid, bits, axis, "w", "code")
        assert torch.equal(back.long(), perm) if back.numel() else torch.equal(perm, torch.arange(n))
        assert code.dtype == torch.uint8 and (code.numel() == 0) == torch.equal(perm, torch.arange(n))
        if kind == "regrouped" and code.numel():  # a few bits per index, never a real permutation
            _, _, n_labels = slot_labels(grid, bits, axis, "pattern")
            assert TAGS[int(code[0])] == "pattern"
            assert code.numel() == 1 + -(-n * key_width(n_labels) // 8)
        if kind == "random" and code.numel():
            assert code.numel() <= 1 + -(-n * key_width(n) // 8)  # bits of n - 1 per entry at worst


@settings(max_examples=150, deadline=None)
@given(layer=layers(), kind=st.sampled_from(["regrouped", "canonical", "random"]),
       edit=st.sampled_from(["flip", "tag", "truncate", "extend", "empty_to_tag"]), pos=st.integers(0, 10**6),
       val=st.integers(1, 255))
def test_any_other_bytes_are_refused_or_another_exact_form(layer, kind, edit, pos, val):
    """A changed code either raises ValueError naming it, or is exactly what encode writes for the
    permutation it decodes to (a different, valid order: the checkpoint checksum catches that)."""
    grid, bits, g = layer
    axis = pos % 2
    code = encode(_orders(grid, bits, g, kind)[axis], grid, bits, axis)
    c = edit_code(code, edit, pos, val)
    if c is None:  # "empty_to_tag", or an edit the empty (identity) code cannot take
        c = torch.tensor([val % 6], dtype=torch.uint8)
    if torch.equal(c, code):
        return
    try:
        p = decode(c, grid, bits, axis, "layer x", "col_perm_code")
    except ValueError as e:
        assert "layer x: col_perm_code" in str(e)
        return
    assert torch.equal(encode(p, grid, bits, axis), c)
    if p.numel():
        assert torch.equal(torch.sort(p.long()).values, torch.arange(p.numel()))


def test_wrong_types_and_a_large_dimension():
    grid = BlockGrid(16, 70000, 16, 32)
    bits = torch.full(grid.shape, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="c must be a 1-D uint8 tensor, got torch.int32"):
        decode(torch.zeros(3, dtype=torch.int32), grid, bits, 1, "w", "c")
    perm = torch.randperm(70000)
    code = encode(perm, grid, bits, 1)
    assert TAGS[int(code[0])] == "packed" and code.numel() == 1 + -(-70000 * 17 // 8)
    assert torch.equal(decode(code, grid, bits, 1, "w", "c").long(), perm)
    fake16 = torch.cat([torch.tensor([3], dtype=torch.uint8), torch.zeros(2 * 70000, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"c \(int16\) cannot hold a permutation of 70000"):
        decode(fake16, grid, bits, 1, "w", "c")
