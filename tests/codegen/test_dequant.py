"""The dequant family (codegen/dequant.py): the generated dequantize kernel against
``PackedWeight.dequantize``, and the dequantize + GEMM path the ops take for large M.

CPU: Triton's interpreter (TRITON_INTERPRET=1); GPU: the same tests with compiled kernels.
"""
import os


import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from sfmp_compile.codegen import Config, KernelKey, KernelLayer, autotune, emit_source, launch  # noqa: E402
from sfmp_compile.codegen import dequant  # noqa: E402
from sfmp_compile.codegen.generate import width_mask  # noqa: E402
from sfmp_compile.ops import triton as triton_ops  # noqa: E402
from sfmp_compile.ops.reference import linear_ref, packed_args  # noqa: E402
from tests.codegen._util import (KERNEL_DEVICE, TOL, WIDTH_SETS, max_rel_err, needs_cuda,  # noqa: E402
                                 needs_kernels, random_packed)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EXAMPLES = 60 if KERNEL_DEVICE == "cpu" else 6  # GPU: every new constexpr combo is a compile
HYP_WIDTH_SETS = WIDTH_SETS + [(1,), (4,), (8,), (1, 5), (6, 7)]


def _widths(p):
    return tuple(sorted(set(p.bits.flatten().tolist())))


def _dequantize(p, dtype, config=None):
    pd = p.to(KERNEL_DEVICE)
    return dequant.dequantize(KernelLayer(*packed_args(pd)), _widths(p), dtype, config).cpu()


def _assert_exact(w, p, dtype):
    # Both sides compute (q - z) * s in fp32 and cast once: the results are bit-identical.
    ref = p.dequantize(torch.float32).to(dtype)
    assert w.dtype == dtype and w.shape == (p.out_features, p.in_features)
    assert torch.equal(w, ref), f"max abs diff {(w.float() - ref.float()).abs().max().item()}"


def test_source_is_specialised_on_the_width_set():
    src = emit_source(KernelKey("dequant", (2, 5)))
    compile(src, "<generated>", "exec")
    assert src.count("# ---- segment:") == 2
    assert "segp_ptr + r * 10 + 2)" in src and "segp_ptr + r * 10 + 6)" in src  # literal bounds
    assert "tl.dot" not in src and "atomic" not in src  # a pure dequantize: no GEMM, no partial sums


@needs_kernels
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    widths=st.sampled_from(HYP_WIDTH_SETS),
    n_blocks=st.integers(1, 3), n_rag=st.sampled_from([0, 8, 19]),
    block_rows=st.sampled_from([32, 64]),
    group_size=st.sampled_from([32, 64, 128]), n_groups=st.integers(1, 3), k_rag=st.sampled_from([0, 5, 32, 70]),
    dtype=st.sampled_from(DTYPES), permute=st.booleans(),
    tile=st.sampled_from([None, (32, 32, 1), (64, 64, 3), (16, 128, 0), (128, 32, 16)]),
    seed=st.integers(0, 2**16),
)
def test_dequantize_equals_packed_dequantize(widths, n_blocks, n_rag, block_rows, group_size, n_groups, k_rag,
                                            dtype, permute, tile, seed):
    # Ragged last row-block (N not a multiple of block_rows or BLOCK_N) and ragged last group
    # (K not a multiple of group_size or 32: padding columns must not be stored). Tiles: BLOCK_K
    # below the group (the chunk loop), BLOCK_N below / above a row-block, SPLIT_K 1, auto, and
    # more group programs than groups.
    N = max(1, (n_blocks - 1) * block_rows + (n_rag or block_rows))
    K = max(1, (n_groups - 1) * group_size + (min(k_rag, group_size - 1) or group_size))
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    cfg = None if tile is None else Config(BLOCK_M=1, BLOCK_N=tile[0], BLOCK_K=tile[1], SPLIT_K=tile[2],
                                           num_warps=4, num_stages=1)
    _assert_exact(_dequantize(p, dtype, cfg), p, dtype)


class _NanEmpty:
    """Stands in for ``torch`` inside dequant.py: ``empty`` returns NaN-filled memory, so an element
    the kernel never stores cannot pass for a correct one by chance."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(shape, **kw):
        return torch.full(shape, float("nan"), **kw)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_element_is_stored(monkeypatch, dtype):
    monkeypatch.setattr(dequant, "torch", _NanEmpty())
    p = random_packed(83, 301, 32, 64, (1, 3, 4, 8), True, seed=3)
    _assert_exact(_dequantize(p, dtype), p, dtype)


@needs_kernels
def test_every_config_in_the_space_is_exact():
    # What the tuner may pick must be correct: every candidate, on a ragged layer.
    p = random_packed(150, 330, 128, 128, (2, 3, 4), True, seed=5)
    space = autotune.candidate_configs("dequant", 4096, p.out_features, p.in_features, p.group_size,
                                       p.block_rows, True)
    assert 1 <= len(space) <= 20 and all(c.BLOCK_N <= 128 and c.BLOCK_K <= 128 for c in space)
    assert any(c.pregather for c in space)
    for cfg in space:
        _assert_exact(_dequantize(p, torch.float16, cfg), p, torch.float16)
    assert not any(c.pregather for c in dequant.config_space(4096, None, 3, 128, 128, has_col_perm=False))


@needs_kernels
@pytest.mark.parametrize("pregather", [False, True])
@pytest.mark.parametrize("permute", [True, False])
def test_launch_with_the_dequant_family_is_a_dense_gemm(pregather, permute):
    # codegen.launch(family="dequant") == x @ dequantized weight (fp32 here: an fp32 weight and GEMM),
    # whether the weight keeps reordered columns against a pre-gathered x or is in original order.
    p = random_packed(100, 150, 64, 32, (1, 2, 8), permute, seed=9)
    x = torch.randn(2, 9, p.in_features)
    cfg = dequant.INTERPRETER.with_(pregather=pregather)
    y = launch(x.to(KERNEL_DEVICE), KernelLayer(*packed_args(p.to(KERNEL_DEVICE))), _widths(p),
               family="dequant", config=cfg).cpu()
    ref = torch.nn.functional.linear(x, p.dequantize(torch.float32))
    assert y.shape == ref.shape
    if pregather and permute:
        assert max_rel_err(y, ref) <= TOL[torch.float32]  # the same products, summed in another order
    else:
        assert torch.equal(y, ref)  # the same weight, the same GEMM


def test_config_space_is_pruned_to_the_layer():
    # A small layer (row-blocks of 32, groups of 32) still gets candidates, clamped and distinct.
    space = dequant.config_space(4096, None, 4, 32, 32, True)
    assert space and all(c.BLOCK_N <= 32 and c.BLOCK_K <= 32 for c in space)
    assert len(set(space)) == len(space)
    assert dequant.group_programs(n_tiles=1000, groups=112, sms=132) == 2
    assert dequant.group_programs(n_tiles=4, groups=3, sms=132) == 4  # capped at the groups, rounded up


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("permute", [True, False])
def test_interp_op_takes_the_dequant_path_above_the_threshold(monkeypatch, dtype, permute):
    p = random_packed(70, 200, 32, 64, (2, 3, 4), permute, seed=7)
    args = (*packed_args(p.to(KERNEL_DEVICE)), width_mask(_widths(p)))
    calls = []
    run = dequant._run
    monkeypatch.setattr(dequant, "_run", lambda *a, **k: calls.append(1) or run(*a, **k))
    monkeypatch.setattr(triton_ops, "PREFILL_DEQUANT_M", 12)
    g = torch.Generator().manual_seed(1)
    for lead, path in (((3, 4), 1), ((11,), 0)):  # 12 rows: dequantize + linear; 11: the prefill kernel
        x = torch.randn(*lead, p.in_features, generator=g).to(dtype)
        op = torch.ops.sfmp.linear_triton_interp if KERNEL_DEVICE == "cpu" else torch.ops.sfmp.linear_triton
        y = op(x.to(KERNEL_DEVICE), *args).cpu()
        ref = linear_ref(x, *packed_args(p))
        assert y.dtype == dtype and y.shape == ref.shape
        assert max_rel_err(y, ref) <= TOL[dtype]
        assert len(calls) == path
        calls.clear()


@needs_cuda
def test_triton_op_dequant_path_on_gpu(monkeypatch):
    # The triton_op's CUDA branch (wrap_triton around the dequantize kernel, then cuBLAS).
    monkeypatch.setattr(triton_ops, "PREFILL_DEQUANT_M", 64)
    p = random_packed(300, 520, 128, 128, (2, 3, 4), True, seed=11)
    for dtype in DTYPES:
        x = torch.randn(80, p.in_features).to(dtype)
        y = torch.ops.sfmp.linear_triton(x.cuda(), *packed_args(p.to("cuda")), width_mask(_widths(p))).cpu()
        assert max_rel_err(y, linear_ref(x, *packed_args(p))) <= TOL[dtype]


@pytest.mark.slow
def test_dequant_kernels_compile_for_sm90():
    # The family's representative kernels (compile_check.py --family dequant) through Triton + ptxas
    # for sm_90, without a GPU; a subprocess because compiled Triton needs TRITON_INTERPRET=0 at import.
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "compile_check.py"), "--family", "dequant"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("OK   dequant") == 4 and "FAIL" not in r.stdout
