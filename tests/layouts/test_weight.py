"""SFMPWeight: one weight type whose layouts all convert back to the checkpoint form exactly."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.format import layout_aligned4
from sfmp_compile.layouts import LAYOUTS, SFMPWeight
from tests.codegen._util import random_packed


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 300), K=st.integers(1, 300), block_rows=st.sampled_from([16, 64, 512]),
       group_size=st.sampled_from([32, 64, 128]), widths=st.sampled_from([(2,), (2, 3), (1, 2, 3, 4), (3, 5, 8)]),
       permute=st.booleans(), seed=st.integers(0, 2**16))
def test_every_layout_round_trips_and_counts_its_bytes(N, K, block_rows, group_size, widths, permute, seed):
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    w = SFMPWeight.from_packed(p)
    assert w.widths == tuple(sorted(set(p.bits.long().flatten().tolist())))
    assert w.aligned4 == layout_aligned4(p.block_offset, N, block_rows)
    for name in LAYOUTS:
        if not w.can_take(name):
            continue
        v = w.to_layout(name)
        assert v.layout == name and v.widths == w.widths
        back = v.packed()
        assert all(torch.equal(getattr(back, f), getattr(p, f)) for f in p.TENSOR_FIELDS)
        assert v.stored_bytes == p.nbytes  # computed from the bit map, without packing
        assert v.nbytes == sum(t.numel() * t.element_size() for t in v.state().values())


def test_packed_layout_shares_the_packed_tensors_and_unknown_layouts_are_named():
    p = random_packed(64, 96, 32, 32)
    w = SFMPWeight.from_packed(p)
    assert w.data["qweight"] is p.qweight and w.row_perm is p.row_perm
    assert w.to_layout("packed") is w
    with pytest.raises(ValueError, match="unknown layout 'gpu'"):
        w.to_layout("gpu")


def test_to_device_keeps_the_layout():
    w = SFMPWeight.from_packed(random_packed(64, 96, 32, 32, (2, 3)), "int4")
    v = w.to("cpu")
    assert v.layout == "int4" and v.device.type == "cpu" and set(v.data) == set(w.data)
