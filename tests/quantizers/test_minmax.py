import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.quantizers import minmax
from sfmp_compile.quantizers.minmax import dequantize_groups, minmax_quantize


@given(N=st.integers(1, 20), K=st.integers(1, 100), bits=st.integers(1, 8), seed=st.integers(0, 1000))
def test_codes_in_range_and_error_bounded(N, K, bits, seed):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed))
    G = -(-K // 32)
    gb = torch.full((N, G), bits)
    codes, s, z = minmax_quantize(w, gb, 32)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert torch.equal(s, s.half().float())  # fp16-exact: what is stored is what was used
    wq = dequantize_groups(codes, s, z, 32)
    # round-to-nearest inside [min, max]: error ≤ one step per weight (half a step + zero rounding)
    step = s.repeat_interleave(32, 1)[:, :K]
    assert ((wq - w).abs() <= step * 1.0 + 1e-6).all()


def test_more_bits_less_error():
    w = torch.randn(64, 256)
    errs = []
    for b in range(1, 9):
        c, s, z = minmax_quantize(w, torch.full((64, 8), b), 32)
        errs.append(float((dequantize_groups(c, s, z, 32) - w).pow(2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_clip_search_never_worse_on_its_objective():
    w = torch.randn(32, 128) * torch.rand(1, 128) * 3
    cw = torch.rand(128) + 0.1
    gb = torch.full((32, 4), 3)
    base = dequantize_groups(*minmax_quantize(w, gb, 32), 32)
    clipped = dequantize_groups(*minmax_quantize(w, gb, 32, clip=True, col_weight=cw), 32)
    e = lambda wq: ((wq - w).pow(2) * cw).view(32, 4, 32).sum(-1)
    assert (e(clipped) <= e(base) + 1e-6).all()
    assert e(clipped).sum() < e(base).sum()


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 40), K=st.integers(1, 300), group=st.sampled_from([32, 64, 128]),
       slab=st.integers(1, 5000), weighted=st.booleans(), seed=st.integers(0, 1000))
def test_clip_search_does_not_depend_on_its_slab_size(N, K, group, slab, weighted, seed):
    """The clip search runs in row slabs through one buffer: any slab size picks the same ratios."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.rand(1, K, generator=g) * 3
    gb = torch.randint(1, 9, (N, -(-K // group)), generator=g)
    cw = torch.rand(K, generator=g) + 0.1 if weighted else None
    whole = minmax_quantize(w, gb, group, clip=True, col_weight=cw)
    old, minmax.CLIP_CHUNK_ELEMS = minmax.CLIP_CHUNK_ELEMS, slab
    try:
        slabs = minmax_quantize(w, gb, group, clip=True, col_weight=cw)
    finally:
        minmax.CLIP_CHUNK_ELEMS = old
    assert all(torch.equal(a, b) for a, b in zip(whole, slabs))


def test_mixed_widths_per_group():
    w = torch.randn(8, 96)
    gb = torch.tensor([[2, 3, 8]] * 8)
    codes, _, _ = minmax_quantize(w, gb, 32)
    assert int(codes[:, :32].max()) <= 3 and int(codes[:, 32:64].max()) <= 7


# ---- scale floor: relative to each group, fp16 storage limits -------------------------------------

from sfmp_compile.quantizers.minmax import FP16_MAX, FP16_TINY  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(k=st.integers(-27, 27), bits=st.integers(1, 8), seed=st.integers(0, 1000), clip=st.booleans())
def test_scaling_the_weight_scales_the_result(k, bits, seed, clip):
    """c·w (c = 2^k, 7.5e-9 .. 1.3e8) gives w's codes and c times its scales while c·scale stays in
    fp16's normal range [2^-14, 65504]; beyond 65504 a clear error; below it never silently zero."""
    c = 2.0 ** k
    w = torch.randn(6, 80, generator=torch.Generator().manual_seed(seed))
    gb = torch.full((6, 3), bits)
    codes, s, z = minmax_quantize(w, gb, 32, clip=clip)
    full = minmax_quantize(w, gb, 32)[1]  # the unclipped scales decide overflow, clipped or not
    lo_s = float(s.min()) * c
    if float(full.max()) * c * 1.001 > FP16_MAX:  # near the edge it may round either way: clear cases only
        if float(full.max()) * c > FP16_MAX * 1.001:
            with pytest.raises(ValueError, match="overflows fp16"):
                minmax_quantize(w * c, gb, 32, clip=clip)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cc, cs, cz = minmax_quantize(w * c, gb, 32, clip=clip)
    if lo_s >= FP16_TINY:
        assert torch.equal(cc, codes) and torch.equal(cz, z) and torch.equal(cs, s * c)
        assert torch.equal(dequantize_groups(cc, cs, cz, 32), dequantize_groups(codes, s, z, 32) * c)
    else:  # subnormal scales: precision lost, but never clamped (unclipped) and never silently zeroed
        wq = dequantize_groups(cc, cs, cz, 32)
        zeroed = not bool((wq != 0).any())
        assert zeroed == any("quantizes to all zeros" in str(m.message) for m in caught)
        if not clip:
            step = cs.repeat_interleave(32, 1)[:, :80]
            assert ((wq - w * c).abs() <= step * 0.5 * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits, tol", [(2, 0.01), (4, 0.05), (8, None)])
def test_tiny_layer_keeps_its_relative_error(bits, tol):
    """A layer scaled by 1e-5 used to hit the absolute 1e-5 floor and quantize to all zeros."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    gb = torch.full((64, 8), bits)
    rel = lambda x: float((dequantize_groups(*minmax_quantize(x, gb, 32), 32) - x).norm() / x.norm())
    base, tiny = rel(w), rel(w * 1e-5)
    if tol is not None:  # scales 2e-5 .. 4e-6: fp16 subnormals, a few % coarser at most
        assert tiny == pytest.approx(base, rel=tol)
    else:  # 8 bits at 1e-5: scales ~2e-7, fp16 keeps ~2 significant bits: worse, but far from zeroed
        assert base < tiny < 0.05


def test_zero_groups_are_exact_and_zeroed_layers_warn():
    w = torch.randn(4, 64)
    w[:, 32:] = 0
    w[1] = 0
    codes, s, z = minmax_quantize(w, torch.full((4, 2), 3), 32)
    wq = dequantize_groups(codes, s, z, 32)
    assert torch.equal(wq[:, 32:], torch.zeros(4, 32)) and torch.equal(wq[1], torch.zeros(64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minmax_quantize(torch.zeros(4, 64), torch.full((4, 2), 3), 32)  # all zero: exact, no warning
    with pytest.warns(UserWarning, match="layer blk.q quantizes to all zeros"):
        codes, s, z = minmax_quantize(torch.full((4, 64), 1e-12), torch.full((4, 2), 8), 32, name="blk.q")
    assert torch.isfinite(s).all() and (s > 0).all()


def test_overflowing_weights_raise():
    with pytest.raises(ValueError, match="overflows fp16 scales"):
        minmax_quantize(torch.full((2, 32), 1e30), torch.full((2, 1), 8), 32)
