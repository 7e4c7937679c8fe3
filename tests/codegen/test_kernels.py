"""The generated Triton kernels (both families, every width set) against the reference op.

CPU: Triton's interpreter (TRITON_INTERPRET=1). GPU: the same tests with compiled kernels
(run with TRITON_INTERPRET=0). Shapes are small and tiles large: the interpreter pays per program.
"""

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from sfmp_compile.codegen import Config, KernelLayer, launch  # noqa: E402
from sfmp_compile.codegen.generate import width_mask  # noqa: E402
from sfmp_compile.ops.dispatch import sfmp_linear  # noqa: E402
from sfmp_compile.ops.reference import linear_ref, packed_args  # noqa: E402
from tests.codegen._util import (KERNEL_DEVICE, TOL, WIDTH_SETS, max_rel_err, needs_kernels,  # noqa: E402
                                 random_packed)

pytestmark = needs_kernels
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EXAMPLES = 36 if KERNEL_DEVICE == "cpu" else 6  # GPU: every new constexpr combo is a compile
# On GPU the 7- and 8-width kernels take ~10 s each to compile: the Hypothesis draws stay on small
# sets there (the all-widths kernel is still compiled once, by test_superset_kernel_is_correct).
HYP_WIDTH_SETS = WIDTH_SETS if KERNEL_DEVICE == "cpu" else [(2,), (2, 3), (3, 4), (2, 3, 4), (1, 2)]
SINGLE_WIDTHS = range(1, 9) if KERNEL_DEVICE == "cpu" else (1, 5, 8)


def _check(p, M, dtype, family, config=None, seed=0, lead=()):
    dev = KERNEL_DEVICE
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, M, p.in_features, generator=g).to(dtype)
    ref = linear_ref(x, *packed_args(p))
    widths = tuple(sorted(set(p.bits.flatten().tolist())))
    pd = p.to(dev)
    y = launch(x.to(dev), KernelLayer(*packed_args(pd)), widths, family=family, config=config).cpu()
    assert y.dtype == dtype and y.shape == ref.shape
    err = max_rel_err(y, ref)
    assert err <= TOL[dtype], f"{family} M={M} {dtype} widths={widths}: max rel err {err:.2e}"


@pytest.mark.parametrize("family", ["gemv", "decode", "prefill"])
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    widths=st.sampled_from(HYP_WIDTH_SETS),
    n_blocks=st.integers(1, 3), n_rag=st.sampled_from([0, 8, 19]),
    block_rows=st.sampled_from([32, 64]),
    group_size=st.sampled_from([32, 64, 128]), n_groups=st.integers(1, 3), k_rag=st.sampled_from([0, 5, 32, 70]),
    M=st.sampled_from([1, 3, 16, 17, 64, 300]), dtype=st.sampled_from(DTYPES), permute=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_family_matches_reference(family, widths, n_blocks, n_rag, block_rows, group_size, n_groups, k_rag,
                                  M, dtype, permute, seed):
    # Ragged last row-block (N not a multiple of block_rows or BLOCK_N) and ragged last group
    # (K not a multiple of group_size or 32: stored columns round up, padding codes are 0).
    N = max(1, (n_blocks - 1) * block_rows + (n_rag or block_rows))
    K = max(1, (n_groups - 1) * group_size + (min(k_rag, group_size - 1) or group_size))
    if family == "gemv":
        M = min(M, 3)  # gemv streams the weight once per activation row: keep the interpreter fast
    elif family == "decode":
        M = min(M, 64)  # one 16-row program per 16 rows: 300 rows would only slow the interpreter
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    _check(p, M, dtype, family, seed=seed)


@pytest.mark.parametrize("bits", SINGLE_WIDTHS)
@pytest.mark.parametrize("family", ["gemv", "decode", "prefill"])
def test_every_single_width(bits, family):
    p = random_packed(70, 200, 64, 64, (bits,), True, seed=bits)
    _check(p, {"gemv": 1, "decode": 3, "prefill": 20}[family], torch.float32, family)


@pytest.mark.parametrize("split_k", [1, 2, 3, 16])
def test_split_k_variants(split_k):
    # Atomic split-K (SPLIT_K > 1, including a non-power of two and more splits than groups).
    p = random_packed(64, 300, 64, 64, (2, 3, 4), True, seed=split_k)
    cfg = Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=64, SPLIT_K=split_k, num_warps=4, num_stages=1)
    _check(p, 1, torch.float32, "gemv", config=cfg)
    _check(p, 1, torch.float32, "decode", config=cfg)
    cfg = Config(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, SPLIT_K=split_k, num_warps=4, num_stages=1)
    _check(p, 20, torch.float16, "prefill", config=cfg)


@pytest.mark.parametrize("family", ["gemv", "decode", "prefill"])
def test_multi_chunk_groups(family):
    # BLOCK_K smaller than the group: the kernel walks each group in K chunks (ONE_CHUNK False),
    # including the ragged last group (K = 2*256 + 40 -> 64 stored columns).
    p = random_packed(40, 552, 32, 256, (1, 3, 8), True, seed=3)
    cfg = Config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=1)
    _check(p, {"gemv": 1, "decode": 1, "prefill": 20}[family], torch.float32, family, config=cfg)


@pytest.mark.parametrize("family", ["gemv", "decode", "prefill"])
def test_small_block_n_and_pregather(family):
    # BLOCK_N below block_rows: several row tiles per row-block; pregather on (prefill only).
    p = random_packed(100, 160, 64, 32, (2, 3), True, seed=5)
    cfg = Config(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, num_warps=4, num_stages=1, pregather=True)
    _check(p, {"gemv": 2, "decode": 3, "prefill": 33}[family], torch.float16, family, config=cfg)


def test_leading_dims_and_noncontiguous():
    p = random_packed(64, 128, 64, 64, (2, 3), True, seed=7)
    _check(p, 3, torch.float32, None, lead=(2,))
    x = torch.randn(5, 256)[:, ::2]  # stride 2 in the last dim
    ref = linear_ref(x, *packed_args(p))
    y = launch(x.to(KERNEL_DEVICE), KernelLayer(*packed_args(p.to(KERNEL_DEVICE))), (2, 3)).cpu()
    assert max_rel_err(y, ref) < 1e-4


def test_empty_batch():
    p = random_packed(64, 128, 64, 64, (2, 3), True)
    y = launch(torch.randn(0, 128, device=KERNEL_DEVICE), KernelLayer(*packed_args(p.to(KERNEL_DEVICE))), (2, 3))
    assert y.shape == (0, 64)


def test_superset_kernel_is_correct():
    # The all-widths kernel (used when the width set is unknown at trace time) serves any layer.
    p = random_packed(64, 128, 64, 64, (2, 3), True, seed=9)
    x = torch.randn(2, 128)
    y = launch(x.to(KERNEL_DEVICE), KernelLayer(*packed_args(p.to(KERNEL_DEVICE))), tuple(range(1, 9))).cpu()
    assert max_rel_err(y, linear_ref(x, *packed_args(p))) < 1e-4


@pytest.mark.parametrize("M", [1, 17])
def test_interp_op_and_dispatch(M):
    p = random_packed(96, 200, 64, 64, (2, 3, 4), True, seed=M)
    x = torch.randn(M, 200)
    ref = linear_ref(x, *packed_args(p))
    pd, xd = p.to(KERNEL_DEVICE), x.to(KERNEL_DEVICE)
    backend = "interp" if KERNEL_DEVICE == "cpu" else "triton"
    bias = torch.randn(96)
    y = sfmp_linear(xd, pd, bias.to(KERNEL_DEVICE), backend=backend).cpu()
    assert max_rel_err(y - bias, ref) < 1e-4
    op = torch.ops.sfmp.linear_triton_interp if KERNEL_DEVICE == "cpu" else torch.ops.sfmp.linear_triton
    y2 = op(xd, *packed_args(pd), width_mask((2, 3, 4))).cpu()
    assert max_rel_err(y2, ref) < 1e-4


def test_walk_offsets_memo():
    """The kernels read block_offset in walk order; the memo follows in-place metadata changes."""
    from sfmp_compile.codegen.launch import walk_offsets

    p = random_packed(150, 200, 64, 64, widths=(2, 3), seed=3)
    want = torch.stack([p.block_offset[r, p.group_order[r].long()] for r in range(p.block_offset.shape[0])])
    w = walk_offsets(p.block_offset, p.group_order)
    assert w.dtype == torch.int32 and torch.equal(w, want)
    assert walk_offsets(p.block_offset, p.group_order) is w  # memoised
    p.block_offset.add_(1)
    assert torch.equal(walk_offsets(p.block_offset, p.group_order), want + 1)
    go = p.group_order.flip(1).contiguous()
    assert torch.equal(walk_offsets(p.block_offset, go), torch.gather(p.block_offset, 1, go.long()))


@pytest.mark.parametrize("M", [2, 5, 16])
def test_prefill_body_serves_the_m16_bucket_by_configuration(M):
    """The m16 bucket can run prefill's dequantize-in-registers + tensor-core body (a config naming
    family "prefill"), which the tuner weighs against decode's; it must equal the reference too."""
    from sfmp_compile.codegen import autotune
    p = random_packed(70, 150, 64, 64, (2, 3, 4), True, seed=M)
    cfg = Config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=2, num_warps=4, num_stages=1, family="prefill")
    _check(p, M, torch.float16, "decode", config=cfg)
    space = autotune.candidate_configs("decode", M, 4096, 14336, 128, 512, True)
    assert [c.family for c in space[:2]] == ["", "prefill"]
