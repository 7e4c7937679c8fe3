import torch
from hypothesis import given, strategies as st

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


def test_mixed_widths_per_group():
    w = torch.randn(8, 96)
    gb = torch.tensor([[2, 3, 8]] * 8)
    codes, _, _ = minmax_quantize(w, gb, 32)
    assert int(codes[:, :32].max()) <= 3 and int(codes[:, 32:64].max()) <= 7
