import torch
from hypothesis import given, strategies as st

import sfmp_compile  # noqa: F401  (registers the ops)
from sfmp_compile.ops import packed_args
from tests.helpers import random_packed


@given(N=st.integers(1, 70), K=st.integers(1, 130), M=st.sampled_from([1, 3, 17]), seed=st.integers(0, 1000),
       permute=st.booleans(), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_op_equals_reference_formula(N, K, M, seed, permute, dtype):
    p = random_packed(N, K, 16, 32, widths=(1, 2, 3, 4, 5, 8), permute=permute, seed=seed)
    x = torch.randn(2, M, K).to(dtype)
    y = torch.ops.sfmp.linear_ref(x, *packed_args(p))
    assert y.dtype == dtype and y.shape == (2, M, N)
    want = (x.float() @ p.dequantize().t()).to(dtype)
    torch.testing.assert_close(y, want, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_opcheck():
    p = random_packed(40, 96, 16, 32)
    x = torch.randn(3, 96, requires_grad=True)
    torch.library.opcheck(torch.ops.sfmp.linear_ref.default, (x, *packed_args(p)))


def test_input_gradient_matches_dense():
    p = random_packed(24, 64, 16, 32)
    x = torch.randn(5, 64, requires_grad=True)
    torch.ops.sfmp.linear_ref(x, *packed_args(p)).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (x2 @ p.dequantize().t()).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
