"""Shared builders for the codegen tests: random packed layers straight from format.pack."""
import os

import pytest
import torch

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.format import pack

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
# Where the Triton kernels can run in this process: the interpreter on CPU, or a real GPU.
KERNEL_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
needs_kernels = pytest.mark.skipif(
    KERNEL_DEVICE is None, reason="Triton kernels need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA GPU")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU with compiled (not interpreted) Triton")

# A few width sets keep the number of distinct compiled kernels bounded on GPU.
WIDTH_SETS = [(2,), (2, 3), (3, 4), (2, 3, 4), (1, 2), (5, 6, 7, 8), (1, 2, 3, 4, 5, 6, 7, 8)]


def random_packed(N, K, block_rows, group_size, widths=(2, 3, 4), permute=True, seed=0):
    """A PackedWeight with uniformly random codes/bits, fp16-exact scales and integer zeros."""
    g = torch.Generator().manual_seed(seed)
    grid = BlockGrid(N, K, block_rows, group_size)
    R, G = grid.shape
    choices = torch.tensor(widths, dtype=torch.int64)
    bits = choices[torch.randint(0, len(widths), (R, G), generator=g)]
    # Every width in the set appears at least once, so the kernel for the set is really exercised.
    flat = bits.view(-1)
    for i, b in enumerate(widths[: flat.numel()]):
        flat[i] = b
    lim = grid.expand_rows(bits).repeat_interleave(group_size, dim=1)[:, :K]
    codes = (torch.rand(N, K, generator=g) * 2.0 ** lim).floor().clamp_max(2.0 ** lim - 1).to(torch.uint8)
    scales = (torch.rand(N, G, generator=g) * 0.05 + 1e-3).half().float()
    zeros = torch.floor(torch.rand(N, G, generator=g) * 2.0 ** grid.expand_rows(bits).float())
    rp = torch.randperm(N, generator=g) if permute else None
    cp = torch.randperm(K, generator=g) if permute else None
    return pack(codes, bits, scales, zeros, rp, cp, block_rows, group_size)


def sqnr_db(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum().clamp_min(1e-300)))


def max_rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


# Output rounding of the activation dtype bounds how close a kernel can be to the reference.
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
