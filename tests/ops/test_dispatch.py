"""ops.dispatch: the table from (layout, device) to a kernel, and explicit backends."""
import pytest
import torch

from sfmp_compile.layouts import SFMPWeight
from sfmp_compile.ops.dispatch import BACKENDS, kernel_for, preferred_layout, sfmp_linear
from sfmp_compile.ops.reference import linear_ref, packed_args
from tests.codegen._util import random_packed, sqnr_db

SQNR_FLOOR_DB = 35.0


def test_table():
    assert kernel_for("packed", "cuda") == "triton"
    assert kernel_for("packed", "cpu") == "cpu" and kernel_for("packed", "meta") == "ref"
    assert kernel_for("packed", "cpu", cpu_kernel="reference") == "ref"
    assert kernel_for("int4", "cpu") == "int4" and kernel_for("int4", "cuda") is None
    assert kernel_for("panel", "cpu") == "cpu" and kernel_for("panel", "cpu", "precise") == "precise"
    assert kernel_for("panel", "cuda") is None  # run from its packed form there


def test_cpu_default_is_the_packed_kernel():
    p = random_packed(64, 128, 64, 64, (2, 3, 5), True, seed=1)
    x = torch.randn(2, 128)
    ref = linear_ref(x, *packed_args(p))
    y = sfmp_linear(x, p)  # auto on the packed layout: the C++ kernel, int8 activations
    assert torch.equal(y, torch.ops.sfmp.linear_cpu(x, *packed_args(p), 0))
    assert not torch.equal(y, ref) and sqnr_db(y, ref) >= SQNR_FLOOR_DB
    assert torch.equal(sfmp_linear(x, p, backend="ref"), ref)
    # held for the C++ kernel, a CPU layer's words are in its read order; same bits either way
    assert preferred_layout(SFMPWeight.from_packed(p), "cpu") == "panel"
    assert preferred_layout(SFMPWeight.from_packed(p), "cpu", "reference") == "packed"
    assert preferred_layout(SFMPWeight.from_packed(p), "meta") == "packed"
    assert torch.equal(sfmp_linear(x, SFMPWeight.from_packed(p, "panel")), y)
    assert torch.equal(sfmp_linear(x, SFMPWeight.from_packed(p, "panel"), backend="ref"), ref)
    with pytest.raises(ValueError, match="cpu_kernel must be one of"):
        preferred_layout(SFMPWeight.from_packed(p), "cpu", cpu_kernel="fast")


def test_int4_is_opt_in_and_ineligible_layers_use_the_reference():
    p = random_packed(64, 128, 64, 64, (2, 3), True, seed=1)
    x = torch.randn(2, 128)
    ref = linear_ref(x, *packed_args(p))
    y = sfmp_linear(x, p, backend="int4")  # explicit: memoised int4 layout, bf16 numerics
    assert not torch.equal(y, ref) and sqnr_db(y, ref) >= SQNR_FLOOR_DB
    assert torch.equal(sfmp_linear(x, SFMPWeight.from_packed(p, "int4")), y)  # auto on the int4 layout
    assert torch.equal(sfmp_linear(x, SFMPWeight.from_packed(p, "int4"), backend="ref"), ref)
    q = random_packed(64, 128, 64, 64, (3, 5), True, seed=2)
    assert preferred_layout(SFMPWeight.from_packed(q), "cpu", "int4") == "panel"  # the C++ kernel runs it
    assert torch.equal(sfmp_linear(x, q, backend="int4"), linear_ref(x, *packed_args(q)))


def test_bias_and_unknown_backend():
    p = random_packed(32, 64, 32, 32, (2,), True, seed=0)
    x, b = torch.randn(3, 64), torch.randn(32)
    assert torch.equal(sfmp_linear(x, p, b, backend="ref"), linear_ref(x, *packed_args(p)) + b)
    with pytest.raises(ValueError, match="backend must be one of"):
        sfmp_linear(x, p, backend="fast")
    assert "interp" in BACKENDS and "auto" in BACKENDS
