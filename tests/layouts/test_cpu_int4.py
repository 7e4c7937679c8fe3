"""The "int4" layout: exact conversion both ways, and the inverse of torch's int4 converter."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.layouts import SFMPWeight, cpu_int4
from tests.codegen._util import random_packed


def _same(a, b) -> bool:
    return a.meta() == b.meta() and all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.TENSOR_FIELDS)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 200), K=st.integers(1, 300), block_rows=st.sampled_from([16, 64, 128]),
       group_size=st.sampled_from([32, 64, 96, 128, 512]),
       widths=st.sampled_from([(1,), (2,), (2, 3), (3, 4), (1, 2, 3, 4), (4,)]),
       permute=st.booleans(), seed=st.integers(0, 2**16))
def test_to_cpu_layout_and_back_is_bit_exact(N, K, block_rows, group_size, widths, permute, seed):
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    w = SFMPWeight.from_packed(p, "int4")
    assert w.layout == "int4" and set(w.data) == set(cpu_int4.TENSORS)
    assert w.data["w4"].dtype == torch.uint8 and w.data["sz"].dtype == torch.bfloat16
    assert _same(w.packed(), p)
    assert _same(w.to_layout("packed").packed(), p)


def test_layers_wider_than_4_bits_are_refused():
    p = random_packed(64, 128, 64, 64, (3, 5), True, seed=2)
    assert not cpu_int4.eligible(p.bits) and not SFMPWeight.from_packed(p).can_take("int4")
    with pytest.raises(ValueError, match="<= 4 bits"):
        SFMPWeight.from_packed(p, "int4")


def test_probe_inverse_matches_the_analytic_inverse():
    q = torch.randint(0, 16, (128, 96), dtype=torch.int32)
    w4 = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(cpu_int4.unpack_probe(w4, 128, 96).to(torch.int32), q)
    assert torch.equal(cpu_int4.unpack_int4(w4, 128, 96).to(torch.int32), q)


def test_the_converter_layout_is_recognised_on_this_cpu():
    """AVX-512 interleaves 64 rows, AVX2 32: either must be recognised (the prefill switch and the
    fast inverse depend on it); the probe is only a fallback for an unknown future layout."""
    assert cpu_int4.layout_block() in (32, 64)


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 160), K=st.integers(1, 300), group_size=st.sampled_from([32, 64, 128]),
       widths=st.sampled_from([(2,), (2, 3), (3, 4), (1, 2, 3, 4)]), seed=st.integers(0, 2**16))
def test_dequantize_is_the_packed_weight_up_to_bf16_scales(N, K, group_size, widths, seed):
    """The layout's weights are the codes' exact (q - z) * s with s and s * (8 - z) rounded to bf16."""
    p = random_packed(N, K, 64, group_size, widths, False, seed)
    w = SFMPWeight.from_packed(p, "int4")
    gc = cpu_int4.int4_group(group_size, K)
    got = cpu_int4.dequantize(w.data["w4"], w.data["sz"], gc)[:N, :K]
    want = p.dequantize_reordered()
    scale = p.scales.float().t().repeat_interleave(group_size, dim=1)[:, :K]
    # bf16 keeps 8 significant bits of s and of s * (8 - z); |q - 8| and |8 - z| are at most 8 here
    assert bool(((got - want).abs() <= 2 ** -8 * 16 * scale + 1e-7).all())


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 130), K=st.integers(1, 200), group_size=st.sampled_from([32, 64]),
       widths=st.sampled_from([(1,), (2,), (1, 2, 3)]), seed=st.integers(0, 2**16))
def test_low_width_groups_round_only_the_scale(N, K, group_size, widths, seed):
    """<= 3-bit groups are stored shifted (q' = q - z + 8, zero' = 0): the layout's weight is
    (q - z) * bf16(s) exactly, with no second bf16 rounding of s * (8 - z) (issue 13: 1-bit layers
    reached 29-33 dB SQNR through it)."""
    p = random_packed(N, K, 64, group_size, widths, False, seed)
    w = SFMPWeight.from_packed(p, "int4")
    gc = cpu_int4.int4_group(group_size, K)
    assert not w.data["sz"][:, :N, 1].any()
    got = cpu_int4.dequantize(w.data["w4"], w.data["sz"], gc)[:N, :K]
    s = p.scales.to(torch.bfloat16).float().t().repeat_interleave(group_size, dim=1)[:, :K]
    z = p.zeros.float().t().repeat_interleave(group_size, dim=1)[:, :K]
    assert torch.equal(got, (p.codes().float() - z) * s)
