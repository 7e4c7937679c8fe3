"""sfmp::linear_cpu.v2's C++ Autograd kernel (ops/cpu_autograd.cpp): no Python on calls that need no
gradient, the frozen-weight backward (dX = dY @ Ŵ) on calls that do, in both CPU layouts, eager and compiled."""
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.layouts import SFMPWeight
from sfmp_compile.ops import cpu
from sfmp_compile.ops.dispatch import op_call
from sfmp_compile.ops.reference import frozen_grad_input
from tests.codegen._util import random_packed

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C++ compiler for the CPU kernel")


def _layer(N, K, block_rows, group_size, widths, permute, seed, layout):
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    return p, op_call(SFMPWeight.from_packed(p).to_layout(layout), "cpu")


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 140), K=st.integers(1, 200), block_rows=st.sampled_from([8, 64, 512]),
       widths=st.sampled_from([(3,), (2, 3, 4), (1, 8)]), permute=st.booleans(),
       layout=st.sampled_from(["packed", "panel"]), residual=st.booleans(), lead=st.sampled_from([(1,), (2, 3)]),
       seed=st.integers(0, 2**16))
def test_input_gradient_is_the_frozen_weight_formula(N, K, block_rows, widths, permute, layout, residual, lead, seed):
    """dX = dY @ Ŵ on the packed form (reference.frozen_grad_input), whatever the layout the forward
    read (the panel order's words are moved back first) and its activation numerics."""
    p, (op, args) = _layer(N, K, block_rows, 32, widths, permute, seed, layout)
    args = (*args[:-1], args[-1] | cpu.flags(residual=residual))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, K, generator=gen, requires_grad=True)
    dy = torch.randn(*lead, N, generator=gen)
    op(x, *args).backward(dy)
    torch.testing.assert_close(x.grad, frozen_grad_input(dy, p), rtol=0, atol=0)


def test_outputs_without_a_gradient_are_the_kernels_and_record_nothing():
    """no_grad, inference mode, grad mode with an x that needs none, and a recorded call: one output,
    bit for bit; only the last has a graph."""
    p, (op, args) = _layer(100, 150, 512, 32, (2, 3, 8), True, 3, "panel")
    x = torch.randn(2, 150)
    with torch.inference_mode():
        y_inf = op(x, *args)
    with torch.no_grad():
        y_ng = op(x.clone().requires_grad_(True), *args)
    y_plain = op(x, *args)
    y_rec = op(x.clone().requires_grad_(True), *args)
    for y in (y_ng, y_plain, y_rec):
        assert torch.equal(y, y_inf)
    assert y_ng.grad_fn is None and y_plain.grad_fn is None and not y_plain.requires_grad
    assert y_rec.requires_grad and y_rec.grad_fn is not None


def test_a_call_that_needs_no_gradient_runs_no_python_below_the_op():
    """Under no_grad the only Python frame is OpOverload.__call__ (the old Python autograd kernel
    ran torch/_library/autograd.py on every call)."""
    _, (op, args) = _layer(64, 64, 512, 32, (3, 4), False, 4, "panel")
    x = torch.randn(1, 64, requires_grad=True)
    frames = []

    def record(frame, event, arg):
        if event == "call":
            frames.append(frame.f_code.co_filename)
    with torch.no_grad():
        sys.setprofile(record)
        try:
            op(x, *args)
        finally:
            sys.setprofile(None)
    assert frames and all(f.endswith("torch/_ops.py") for f in frames), frames


def test_bad_input_gives_the_kernels_message_with_or_without_a_gradient():
    _, (op, args) = _layer(8, 70, 64, 32, (3,), False, 5, "packed")
    for requires_grad in (False, True):
        with pytest.raises(RuntimeError, match="71 features, the layer takes 70"):
            op(torch.randn(2, 71, requires_grad=requires_grad), *args)


def test_compiled_gradient_equals_eager():
    """Inductor traces the forward through the fake kernel and the backward through
    sfmp::linear_cpu_grad_input's fake, in the panel layout; the gradient is eager's."""
    _, (op, args) = _layer(96, 80, 512, 32, (2, 3, 8), True, 6, "panel")
    x = torch.randn(3, 80)
    torch._dynamo.reset()
    f = torch.compile(lambda t: (op(t, *args) * 2.0).pow(2).sum(), fullgraph=True)
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    f(xc).backward()
    (op(xe, *args) * 2.0).pow(2).sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the same compiled function, no gradient wanted: its output only
        torch.testing.assert_close(f(x), (op(x, *args) * 2.0).pow(2).sum(), rtol=1e-5, atol=1e-4)


def test_the_backward_op_passes_opcheck():
    p, (op, args) = _layer(40, 70, 512, 32, (3, 8), True, 7, "panel")
    torch.library.opcheck(torch.ops.sfmp.linear_cpu_grad_input.default, (torch.randn(2, 40), *args),
                          test_utils=("test_schema", "test_faketensor"))
