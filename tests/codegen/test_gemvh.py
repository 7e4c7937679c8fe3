"""The gemvh family (gemvu's walk with fp16x2 field arithmetic, opt-in by a config's ``family``).

Under Triton's interpreter the kernel runs its pure-Triton twin (DOT_KIND 0: tl.join pairs); on a
GPU the same tests run the inline-PTX body (LOP3 + two HFMA2 per field pair), so device_check.sh
checks the PTX against the reference. The field recipe itself (mask, magic, the exact HFMA2
constants) is checked bit-exactly in numpy, for every plane width and any word.
"""
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.codegen import Config, KernelLayer, autotune, gemvh, launch
from sfmp_compile.codegen.families import FAMILIES, serving
from sfmp_compile.codegen.generate import KernelKey, emit_source
from sfmp_compile.ops.reference import linear_ref, packed_args
from tests.codegen._util import KERNEL_DEVICE, TOL, max_rel_err, needs_kernels, random_packed

EXAMPLES = 10 if KERNEL_DEVICE == "cpu" else 3
HYP_WIDTHS = ([(2, 3), (2, 3, 4), (1,), (1, 2, 3, 4, 5, 6, 7), (1, 5, 8)] if KERNEL_DEVICE == "cpu"
              else [(2, 3), (2, 3, 4)])
U = 2.0 ** -11  # fp16 unit roundoff


def _run(p, x, cfg):
    widths = tuple(sorted(set(p.bits.flatten().tolist())))
    return launch(x.to(KERNEL_DEVICE), KernelLayer(*packed_args(p.to(KERNEL_DEVICE))), widths, family="gemv",
                  config=cfg.with_(family="gemvh")).cpu()


def _check_fp16(p, cfg, seed, M=1):
    """|y - ref| <= 17 u (|x| |s q|^T) + 2u |ref|: each of a word half's <= 16 fp16 products and
    partial sums rounds once (docs/KERNELS.md, gemvh), then the fp16 output rounds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, p.in_features, generator=g).half()
    ref = linear_ref(x, *packed_args(p))
    y = _run(p, x, cfg)
    assert y.dtype == torch.float16 and y.shape == ref.shape
    no_zero = dataclasses.replace(p, zeros=torch.zeros_like(p.zeros))
    sq = linear_ref(torch.eye(p.in_features), *packed_args(no_zero))  # [K, N] = (s * q)^T, original order
    bound = 17 * U * (x.double().abs() @ sq.double().abs()) + 2 * U * ref.double().abs() + 1e-6
    err = (y.double() - ref.double()).abs()
    assert bool((err <= bound).all()), f"gemvh {cfg}: worst err/bound {float((err / bound).max()):.2f}"


@needs_kernels
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    widths=st.sampled_from(HYP_WIDTHS),
    n_blocks=st.integers(1, 2), n_rag=st.sampled_from([0, 8, 19]),
    group_size=st.sampled_from([32, 64, 128]), n_groups=st.integers(1, 3), k_rag=st.sampled_from([0, 5, 40]),
    u=st.sampled_from([1, 2]), pipe=st.booleans(), split_k=st.sampled_from([1, 3]),
    wide=st.booleans(), pregather=st.booleans(), permute=st.booleans(), seed=st.integers(0, 2**16),
)
def test_gemvh_matches_reference(widths, n_blocks, n_rag, group_size, n_groups, k_rag, u, pipe, split_k, wide,
                                 pregather, permute, seed):
    block_rows = 128
    N = (n_blocks - 1) * block_rows + (n_rag or block_rows)
    K = max(1, (n_groups - 1) * group_size + (min(k_rag, group_size - 1) or group_size))
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    cfg = Config(BLOCK_M=1, BLOCK_N=128 if wide else 64, BLOCK_K=128, SPLIT_K=split_k, num_warps=1,
                 num_stages=2 if pipe else 1, pregather=pregather, U=u)
    _check_fp16(p, cfg, seed)


@needs_kernels
def test_gemvh_multi_chunk_groups_and_other_dtypes():
    # groups longer than BLOCK_K take gemv's fp32 walk inside the kernel; M = 2
    p = random_packed(40, 552, 32, 256, (1, 3, 8) if KERNEL_DEVICE == "cpu" else (2, 3), True, seed=3)
    _check_fp16(p, Config(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, num_warps=1, num_stages=2, U=2), 3, M=2)
    # fp32 / bf16 activations run gemvu's body (fp16x2 would change their range): reference tolerances
    p = random_packed(96, 160, 64, 32, (2, 3), True, seed=5)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, 160).to(dtype)
        y = _run(p, x, gemvh.INTERPRETER)
        assert y.dtype == dtype and max_rel_err(y, linear_ref(x, *packed_args(p))) <= TOL[dtype]


@settings(max_examples=50, deadline=None)
@given(word=st.integers(0, 2**32 - 1), w=st.sampled_from([1, 2, 4, 8]))
def test_pair_recipe_gives_both_codes_exactly(word, w):
    """(word [>> 8] & mask) | 0x64006400, read as two fp16, times 2^-p minus 2^(10-p) (the constants
    of gemvh.pair_asm, through gemvh._h2's bits) is exactly (field j, field j + 16/w) of the word."""
    half = 16 // w
    seen = set()
    for j, shifted, p in gemvh.pair_fields(w):
        assert p + w <= 10 and p >= 0  # 1024 + q 2^p is an exact fp16
        signed = word - 2**32 if word >= 2**31 else word  # the kernel's int32 >> is arithmetic
        src = ((signed >> 8) & 0xFFFFFFFF) if shifted else word
        mask = (((1 << w) - 1) << p) * 0x10001
        m = np.array([(src & mask) | 0x64006400], dtype=np.uint32).view(np.float16).astype(np.float64)
        c1 = np.array([gemvh._h2(2.0 ** -p) & 0xFFFF], dtype=np.uint16).view(np.float16)[0]
        c2 = np.array([gemvh._h2(-(2.0 ** (10 - p))) & 0xFFFF], dtype=np.uint16).view(np.float16)[0]
        q = m * float(c1) + float(c2)  # exact in fp64, as the fused HFMA2 is before its one rounding
        assert q.astype(np.float16).astype(np.float64).tolist() == q.tolist()  # the rounding is a no-op
        lo, hi = (word >> (j * w)) & ((1 << w) - 1), (word >> (16 + j * w)) & ((1 << w) - 1)
        assert q.tolist() == [lo, hi]
        seen |= {j, j + half}
    assert seen == set(range(32 // w))


def test_gemvh_source_and_choice_by_configuration():
    src = emit_source(KernelKey("gemvh", (2, 3)))
    assert "inline_asm_elementwise" in src and "fma.rn.f16x2" in src and "if DOT_KIND == 0:" in src
    assert "inline_asm" not in emit_source(KernelKey("gemvu", (2, 3)))
    assert FAMILIES["gemvh"] is gemvh and gemvh in serving("gemv") and not gemvh.ALL_WIDTHS
    space = autotune.candidate_configs("gemv", 1, 4096, 14336, 128, 512, True)
    assert any(c.family == "gemvh" for c in space)
    assert autotune.get_config("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16,
                               torch.device("cpu")).family != "gemvh"  # never the default


def test_h2_rejects_non_powers_of_two():
    with pytest.raises(AssertionError):
        gemvh._h2(3.0)
