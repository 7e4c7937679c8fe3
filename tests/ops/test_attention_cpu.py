"""sfmp::decode_attention_cpu: equal to an fp64 softmax over the attended slots (AVX2 and portable),
masked slots never read, SDPA's zeros for a row with nothing attended, clear errors, and what
Inductor sees of it."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.ops import attention_cpu

pytestmark = pytest.mark.skipif(not attention_cpu.available(), reason="no C++ compiler for the CPU kernels")

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # output rounding of the dtype


def _reference(q, k, v, allow, add, scale):
    """fp64 softmax(scale q kᵀ + add) v over the allowed slots; zeros where none is allowed.
    q [B,H,1,D], k/v [B,KVH,L,D], allow bool / add fp64 broadcastable to [B,H,1,L]."""
    B, H, _, D = q.shape
    rep = H // k.shape[1]
    k64 = k.double().repeat_interleave(rep, 1)
    v64 = v.double().repeat_interleave(rep, 1)
    s = scale * q.double() @ k64.transpose(-1, -2) + add
    allow = allow.expand_as(s) & (s > -math.inf)
    s = s.masked_fill(~allow, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row with nothing allowed: zeros
    return p @ v64


def _mask(kind, B, H, L, extra, gen):
    """A random mask [B|1, H|1, 1, L + extra] as given to the op, and (allow, add) over its first L slots."""
    b = B if torch.rand((), generator=gen) < 0.5 else 1
    h = H if torch.rand((), generator=gen) < 0.5 else 1
    shape = (b, h, 1, L + extra)
    if kind == "prefix":  # a static cache: the first n slots filled
        n = int(torch.randint(0, L + 1, (), generator=gen))
        allow = torch.zeros(shape, dtype=torch.bool)
        allow[..., :n] = True
    else:  # holes anywhere (padding, sliding windows)
        allow = torch.rand(shape, generator=gen) < 0.6
    if kind == "additive":
        add = torch.randn(shape, generator=gen).masked_fill(~allow, -math.inf)
        return add, allow[..., :L], add[..., :L].double()
    return allow, allow[..., :L], torch.zeros(shape, dtype=torch.float64)[..., :L]


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), KVH=st.integers(1, 4), rep=st.sampled_from([1, 2, 3, 8]), L=st.integers(1, 70),
       D=st.sampled_from([1, 7, 8, 16, 24, 64, 67]), dtype=st.sampled_from(list(TOL)),
       kind=st.sampled_from(["none", "prefix", "holes", "additive"]), extra=st.integers(0, 5),
       portable=st.booleans(), seed=st.integers(0, 2**16))
def test_equals_the_fp64_softmax(B, KVH, rep, L, D, dtype, kind, extra, portable, seed):
    gen = torch.Generator().manual_seed(seed)
    H = KVH * rep
    q, k, v = (torch.randn(B, n, t, D, generator=gen).to(dtype) for n, t in ((H, 1), (KVH, L), (KVH, L)))
    if kind == "none":
        mask, allow, add = None, torch.ones(1, 1, 1, L, dtype=torch.bool), torch.zeros(1, 1, 1, L, dtype=torch.float64)
    else:
        mask, allow, add = _mask(kind, B, H, L, extra, gen)
        if kind == "additive":
            mask = mask.to(dtype)
            add = mask[..., :L].double()
    scale = 0.3 + torch.rand((), generator=gen).item()
    out = attention_cpu.decode_attention(q, k, v, mask, scale, portable=portable)
    assert out.shape == (B, H, 1, D) and out.dtype == dtype
    torch.testing.assert_close(out.double(), _reference(q, k, v, allow, add, scale), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL))
def test_matches_sdpa_and_the_portable_path(dtype):
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 9, 1, 64, generator=gen), torch.randn(1, 3, 264, 64, generator=gen), torch.randn(1, 3, 264, 64, generator=gen)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    mask = torch.zeros(1, 1, 1, 264, dtype=torch.bool)
    mask[..., :64] = True
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    out = attention_cpu.decode_attention(q, k, v, mask)
    torch.testing.assert_close(out, sdpa, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(attention_cpu.decode_attention(q, k, v, mask, portable=True), out,
                               rtol=TOL[dtype], atol=TOL[dtype])


def test_masked_slots_are_never_read():
    """NaN in every masked K/V slot would poison any sum that read it; the output stays finite and
    equals the run over the filled prefix alone."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 6, 1, 16, generator=gen), torch.randn(1, 2, 40, 16, generator=gen), torch.randn(1, 2, 40, 16, generator=gen)
    mask = torch.zeros(1, 1, 1, 40, dtype=torch.bool)
    mask[..., :11] = True
    k[:, :, 11:], v[:, :, 11:] = float("nan"), float("nan")
    for portable in (False, True):
        out = attention_cpu.decode_attention(q, k, v, mask, portable=portable)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, attention_cpu.decode_attention(q, k[:, :, :11], v[:, :, :11], None))


def test_fully_masked_rows_give_zeros_like_sdpa():
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.ones(2, 4, 1, 5, dtype=torch.bool)
    mask[1, 2] = False
    out = attention_cpu.decode_attention(q, k, v, mask)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.equal(out[1, 2], torch.zeros(1, 8)) and torch.equal(sdpa[1, 2], torch.zeros(1, 8))
    torch.testing.assert_close(out, sdpa)
    add = torch.zeros(2, 4, 1, 5).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(attention_cpu.decode_attention(q, k, v, add), out)


@pytest.mark.parametrize("q_shape, kv_shape, mask_shape, match", [
    ((1, 6, 1, 8), (1, 4, 5, 8), None, "multiple of KV heads"),
    ((1, 6, 2, 8), (1, 2, 5, 8), None, "one query token"),
    ((1, 6, 1, 8), (1, 2, 5, 4), None, r"k and v must both be \[B, KVH, L, D\]"),
    ((2, 6, 1, 8), (1, 2, 5, 8), None, r"k and v must both be \[B, KVH, L, D\]"),
    ((1, 6, 8), (1, 2, 5, 8), None, "must be 4-D"),
    ((1, 6, 1, 8), (1, 2, 5, 8), (1, 1, 1, 4), r"mask must be \[B\|1, H\|1, 1, >=L\]"),
    ((1, 6, 1, 8), (1, 2, 5, 8), (1, 3, 1, 5), r"mask must be \[B\|1, H\|1, 1, >=L\]"),
])
def test_bad_shapes_give_one_clear_error(q_shape, kv_shape, mask_shape, match):
    mask = torch.ones(mask_shape, dtype=torch.bool) if mask_shape else None
    with pytest.raises(RuntimeError, match=match):
        attention_cpu.decode_attention(torch.randn(q_shape), torch.randn(kv_shape), torch.randn(kv_shape), mask)


def test_bad_dtypes_give_one_clear_error():
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 3, 8)
    with pytest.raises(RuntimeError, match="must share a dtype"):
        attention_cpu.decode_attention(q, k.half(), k.half())
    with pytest.raises(RuntimeError, match="mask must be bool"):
        attention_cpu.decode_attention(q, k, k, torch.ones(1, 1, 1, 3, dtype=torch.int32))


def test_inductor_calls_it_as_an_extern_op():
    torch._dynamo.reset()
    from torch._inductor.utils import run_and_get_code

    def f(q, k, v, pos):
        mask = (torch.arange(k.shape[2]) <= pos).view(1, 1, 1, -1)
        return attention_cpu.decode_attention(q * 2, k, v, mask).sum(1)
    args = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16), torch.tensor(5)
    out, code = run_and_get_code(torch.compile(f, fullgraph=True), *args)
    assert "decode_attention_cpu" in "\n".join(code)
    torch.testing.assert_close(out, f(*args))


def test_opcheck_schema_and_fake():
    q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 1, 7, dtype=torch.bool)
    torch.library.opcheck(torch.ops.sfmp.decode_attention_cpu.v1, (q, k, k.clone(), mask, 0.5, 0),
                          test_utils=("test_schema", "test_faketensor"))
