"""Op registration: opcheck, fake tensors, autograd, and compiling around the ops."""

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmp_compile.codegen.generate import width_mask  # noqa: E402
from sfmp_compile.layouts import SFMPWeight  # noqa: E402
from sfmp_compile.ops.dispatch import KERNELS, sfmp_linear  # noqa: E402
from sfmp_compile.ops.reference import linear_ref, packed_args  # noqa: E402
from tests.codegen._util import KERNEL_DEVICE, max_rel_err, needs_cuda, needs_kernels, random_packed, sqnr_db  # noqa: E402


def _layer(seed=0):
    return random_packed(72, 150, 64, 64, (2, 3, 4), True, seed)


def _cpu(p):
    """The cpu layout of ``p`` and the int4 op's arguments after x."""
    w = SFMPWeight.from_packed(p, "int4")
    return w, KERNELS["int4"].args(w)


@pytest.mark.parametrize("M", [1, 20])
def test_opcheck_linear_triton_cpu_branch(M):
    # On CPU the triton_op's body takes the plain-torch branch (the reference op).
    p = _layer()
    x = torch.randn(M, 150)
    torch.library.opcheck(torch.ops.sfmp.linear_triton, (x, *packed_args(p), width_mask((2, 3, 4))))
    y = torch.ops.sfmp.linear_triton(x, *packed_args(p), width_mask((2, 3, 4)))
    assert torch.equal(y, linear_ref(x, *packed_args(p)))


@needs_kernels
@pytest.mark.parametrize("M", [1, 20])
def test_opcheck_linear_triton_interp(M):
    p = _layer().to(KERNEL_DEVICE)
    x = torch.randn(M, 150, device=KERNEL_DEVICE)
    torch.library.opcheck(torch.ops.sfmp.linear_triton_interp, (x, *packed_args(p), width_mask((2, 3, 4))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_linear_cpu_int4(dtype):
    c, cargs = _cpu(_layer())
    x = torch.randn(3, 150).to(dtype)
    torch.library.opcheck(torch.ops.sfmp.linear_cpu_int4, (x, *cargs))


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    p = _layer()
    c, cargs = _cpu(p)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 5, 150, dtype=torch.float16)
        assert torch.ops.sfmp.linear_cpu_int4(x, *cargs).shape == (2, 5, 72)
        assert torch.ops.sfmp.linear_triton_interp(x, *packed_args(p), 12).shape == (2, 5, 72)
        assert torch.ops.sfmp.linear_triton(x, *packed_args(p), 12).dtype == torch.float16


def test_cpu_op_gradient_matches_reference():
    p = _layer(1)
    c, cargs = _cpu(p)
    x = torch.randn(4, 150, requires_grad=True)
    torch.ops.sfmp.linear_cpu_int4(x, *cargs).pow(2).sum().backward()
    g = x.grad.clone()
    x.grad = None
    linear_ref(x, *packed_args(p)).pow(2).sum().backward()
    assert sqnr_db(g, x.grad) > 45  # measured ~53.7 dB (bf16 activations)


@needs_kernels
def test_interp_op_gradient_matches_reference():
    p = _layer(2)
    x = torch.randn(3, 150, requires_grad=True)
    pd = p.to(KERNEL_DEVICE)
    op = torch.ops.sfmp.linear_triton_interp if KERNEL_DEVICE == "cpu" else torch.ops.sfmp.linear_triton
    op(x.to(KERNEL_DEVICE), *packed_args(pd), width_mask((2, 3, 4))).sum().backward()
    g = x.grad.clone()
    x.grad = None
    linear_ref(x, *packed_args(p)).sum().backward()
    assert max_rel_err(g, x.grad) < 1e-4


def _mlp(w_fn):
    def f(x):
        h = torch.nn.functional.silu(w_fn(x * 0.5))
        return h * 2 + 1
    return f


def test_compile_aot_eager_cpu_paths():
    # The CPU int4 op and the triton_op's CPU branch inside a compiled graph, eager == compiled.
    p = _layer(3)
    c, cargs = _cpu(p)
    x = torch.randn(5, 150)
    w = SFMPWeight.from_packed(p)  # widths are read from values here, never while tracing
    for fn in (lambda t: sfmp_linear(t, c), lambda t: sfmp_linear(t, w, backend="triton")):
        f = _mlp(fn)
        torch._dynamo.reset()
        out = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
        assert torch.allclose(out, f(x), atol=1e-6, rtol=1e-6)


@needs_kernels
def test_compile_aot_eager_interp_op():
    p = _layer(4).to(KERNEL_DEVICE)
    p = SFMPWeight.from_packed(p)  # its widths: the compiled graph gets the (2,3,4) kernel
    x = torch.randn(2, 150, device=KERNEL_DEVICE)
    backend = "interp" if KERNEL_DEVICE == "cpu" else "triton"
    f = _mlp(lambda t: sfmp_linear(t, p, backend=backend))
    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    assert torch.allclose(out, f(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_inductor_cpu_int4_with_decomposition():
    from sfmp_compile.ops.cpu_int4 import register_inductor_decompositions
    assert register_inductor_decompositions()
    p = _layer(5)
    c, cargs = _cpu(p)
    x = torch.randn(1, 150)
    f = _mlp(lambda t: sfmp_linear(t, c))
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(x)
    assert torch.allclose(out, f(x), atol=1e-5, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("M", [1, 64])
def test_cuda_triton_op_opcheck_and_inductor(M):
    # triton_op + wrap_triton: Inductor sees the generated kernel (GPU only).
    p = _layer(6).to("cuda")
    x = torch.randn(M, 150, device="cuda", dtype=torch.float16)
    args = (x, *packed_args(p), width_mask((2, 3, 4)))
    torch.library.opcheck(torch.ops.sfmp.linear_triton, args)
    f = _mlp(lambda t: torch.ops.sfmp.linear_triton(t, *args[1:]))
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(x)
    ref = f(x)
    assert max_rel_err(out.float(), ref.float()) < 5e-3
    assert max_rel_err(ref.float(), _mlp(lambda t: linear_ref(t, *packed_args(p)))(x).float()) < 5e-3
