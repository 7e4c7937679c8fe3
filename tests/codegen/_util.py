"""Shared facts and measures for the kernel tests (random layers come from tests/helpers.py)."""
import os

import pytest
import torch

from tests.helpers import random_packed  # noqa: F401  (re-exported for the kernel tests)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
# Where the Triton kernels can run in this process: the interpreter on CPU, or a real GPU.
KERNEL_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
needs_kernels = pytest.mark.skipif(
    KERNEL_DEVICE is None, reason="Triton kernels need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA GPU")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU with compiled (not interpreted) Triton")

# A few width sets keep the number of distinct compiled kernels bounded on GPU.
WIDTH_SETS = [(2,), (2, 3), (3, 4), (2, 3, 4), (1, 2), (5, 6, 7, 8), (1, 2, 3, 4, 5, 6, 7, 8)]


def sqnr_db(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum().clamp_min(1e-300)))


def max_rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


# Output rounding of the activation dtype bounds how close a kernel can be to the reference.
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
