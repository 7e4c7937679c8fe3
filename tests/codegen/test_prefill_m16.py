"""M = 2..16 on tensor cores: prefill's dequantize-in-registers body is the m16 bucket's default,
and its fp16 arithmetic stays inside the stated bound against the exact fp32 reference.

Under the interpreter the kernels normally take the fp32 path (DOT_KIND 0); here DOT_KIND 1 is
forced for fp16 activations, so the fp16 dequantization (``0x6400 | q`` = 1024 + q, minus
1024 + z, times the fp16 scale) and fp16 x fp16 -> fp32 dots are what runs (the interpreter does
fp16 arithmetic with numpy's correctly rounded float16, and its dot accumulates in fp32). bf16 is
not emulated correctly by the interpreter, so its path is checked on a GPU only (test_kernels.py).
"""
import importlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from sfmp_compile.codegen import Config, KernelLayer, autotune, launch
from sfmp_compile.ops.reference import linear_ref, packed_args
from tests.codegen._util import INTERPRET, KERNEL_DEVICE, WIDTH_SETS, needs_kernels, random_packed

pytestmark = needs_kernels
M16 = Config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=2, num_warps=4, num_stages=1, family="prefill")
launch_mod = importlib.import_module("sfmp_compile.codegen.launch")  # the package exports the function
U16 = 2.0 ** -11  # unit roundoff of fp16 (round to nearest)


@pytest.fixture
def fp16_dots(monkeypatch):
    """Run fp16 activations through the kernels' fp16 tensor-core path even under the interpreter."""
    if INTERPRET:
        real = launch_mod._dot_kind
        monkeypatch.setattr(launch_mod, "_dot_kind",
                            lambda dtype, interpret: 1 if dtype == torch.float16 else real(dtype, interpret))


def _fp16_bound_check(p, M, seed, config):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, p.in_features, generator=g).half()
    ref = linear_ref(x, *packed_args(p)).double()
    w = p.dequantize(torch.float32).double()
    widths = tuple(sorted(set(p.bits.flatten().tolist())))
    pd = p.to(KERNEL_DEVICE)
    y = launch(x.to(KERNEL_DEVICE), KernelLayer(*packed_args(pd)), widths, family="decode" if M <= 16 else None,
               config=config).cpu()
    assert y.dtype == torch.float16 and y.shape == ref.shape
    # Each dequantized weight is rounded once to fp16 (relative <= u), x is fp16 already, products
    # are exact and summed in fp32 (relative ~K * 2^-24, far below u here), the output is rounded
    # once to fp16 (relative <= u, absolute 2^-25 near zero): the stated tolerance, elementwise.
    mag = x.double().abs() @ w.abs().t()
    bound = 1.02 * U16 * (mag + ref.abs()) + 2.0 ** -24
    err = (y.double() - ref).abs()
    worst = float((err / bound).max())
    assert worst <= 1.0, f"M={M} widths={widths}: error {worst:.2f}x the fp16 bound"
    return worst


def test_m16_bucket_defaults_to_the_tensor_core_body(monkeypatch):
    # On a GPU without a tuned entry, M 2..16 runs prefill's body (shipped table, then FALLBACK).
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    monkeypatch.setattr(autotune, "_tuned_table", lambda dev: {})
    for M in (2, 9, 16):
        cfg = autotune.get_config("decode", M, 4096, 14336, (2, 3), 128, 512, torch.float16, torch.device("cuda"))
        assert cfg.family == "prefill" and cfg.BLOCK_M == 16, cfg
    monkeypatch.setattr(autotune, "_defaults_table", lambda: {})
    cfg = autotune.get_config("decode", 5, 4096, 4096, (2, 3), 128, 512, torch.float16, torch.device("cuda"))
    assert cfg.family == "prefill" and cfg.BLOCK_M == 16
    # The tuner still weighs decode's own body, and prefill's M <= 16 tiles are 16 rows high.
    space = autotune.candidate_configs("decode", 16, 4096, 14336, 128, 512, True)
    assert {c.family for c in space} == {"", "prefill"}
    assert all(c.BLOCK_M == 16 for c in space) and 1 <= len(space) <= 48


@settings(max_examples=10 if KERNEL_DEVICE == "cpu" else 4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture is the same each example
@given(
    widths=st.sampled_from(WIDTH_SETS if KERNEL_DEVICE == "cpu" else [(2, 3), (3, 4)]),
    n_rows=st.sampled_from([19, 64, 90]), k_cols=st.sampled_from([40, 128, 150]),
    M=st.sampled_from([1, 3, 16, 17, 64, 300]), permute=st.booleans(), seed=st.integers(0, 2**16),
)
def test_fp16_tensor_core_path_within_bound(fp16_dots, widths, n_rows, k_cols, M, permute, seed):
    # M <= 16 through the m16 config; above, the prefill bucket's own config (interpreter: BLOCK_M 64).
    p = random_packed(n_rows, k_cols, 64, 64, widths, permute, seed)
    _fp16_bound_check(p, M, seed, M16 if M <= 16 else None)


@pytest.mark.parametrize("bits", range(1, 9))
def test_fp16_path_every_width_and_large_zero_points(fp16_dots, bits):
    # Each width alone (8-bit codes: 1024 + q still exact in fp16), M 2..16 on the m16 config.
    p = random_packed(70, 130, 64, 64, (bits,), True, seed=bits)
    assert _fp16_bound_check(p, 7, bits, M16) <= 1.0
