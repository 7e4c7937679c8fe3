"""Kernel variant 4 of the gemv (SFMP_KERNEL_VARIANT=4, opt-in) against the reference op.

Under Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) on CPU, or compiled on a
GPU. Covers U > 1 groups per load, the PIPE double buffer, split-K partials (plain stores + one
torch sum), the launcher-proved ALIGNED flag both ways, ragged shapes, permutations, in-kernel and
pre-gathered activations, fp16/fp32 (and bf16) activations. Small shapes: the interpreter pays
per program instance.
"""
import os
from contextlib import contextmanager

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from sfmp_compile.codegen import Config, autotune, gemv, run_triton  # noqa: E402
from sfmp_compile.codegen.generate import KernelKey, emit_source  # noqa: E402
from sfmp_compile.codegen.launch import layout_aligned4  # noqa: E402
from sfmp_compile.ops.reference import linear_ref, packed_args  # noqa: E402
from tests.codegen._util import KERNEL_DEVICE, TOL, max_rel_err, needs_kernels, random_packed  # noqa: E402

EXAMPLES = 30 if KERNEL_DEVICE == "cpu" else 3  # GPU: every constexpr combination is a compile
HYP_WIDTHS = ([(2, 3), (2, 3, 4), (3, 4), (2,), (1, 2, 3, 4, 5, 6, 7, 8), (1, 5, 8)] if KERNEL_DEVICE == "cpu"
              else [(2, 3), (2, 3, 4)])


@contextmanager
def variant4(v: str = "4"):
    """SFMP_KERNEL_VARIANT=v for the block (not a monkeypatch fixture: Hypothesis re-runs the body)."""
    old = os.environ.get("SFMP_KERNEL_VARIANT")
    os.environ["SFMP_KERNEL_VARIANT"] = v
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SFMP_KERNEL_VARIANT", None)
        else:
            os.environ["SFMP_KERNEL_VARIANT"] = old


def _check(p, dtype, cfg, seed=0, M=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, p.in_features, generator=g).to(dtype)
    ref = linear_ref(x, *packed_args(p))
    widths = tuple(sorted(set(p.bits.flatten().tolist())))
    with variant4():
        y = run_triton(x.to(KERNEL_DEVICE), *packed_args(p.to(KERNEL_DEVICE)), widths, family="gemv",
                       config=cfg).cpu()
    assert y.dtype == dtype and y.shape == ref.shape
    err = max_rel_err(y, ref)
    assert err <= TOL[dtype], f"v4 gemv {dtype} widths={widths} {cfg}: max rel err {err:.2e}"


@needs_kernels
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    widths=st.sampled_from(HYP_WIDTHS),
    n_blocks=st.integers(1, 2), n_rag=st.sampled_from([0, 8, 19]),
    group_size=st.sampled_from([32, 64, 128]), n_groups=st.integers(1, 4), k_rag=st.sampled_from([0, 5, 40]),
    u=st.sampled_from([1, 2, 4]), pipe=st.booleans(), split_k=st.sampled_from([1, 2, 3]),
    wide=st.booleans(), pregather=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16]),
    permute=st.booleans(), seed=st.integers(0, 2**16),
)
def test_v4_gemv_matches_reference(widths, n_blocks, n_rag, group_size, n_groups, k_rag, u, pipe, split_k, wide,
                                   pregather, dtype, permute, seed):
    # block_rows 128 with BLOCK_N 128 on one warp: ALIGNED exactly when the ragged last row-block
    # has a multiple of 4 rows (n_rag 0 or 8, not 19); BLOCK_N 64 never sets it.
    block_rows = 128
    N = (n_blocks - 1) * block_rows + (n_rag or block_rows)
    K = max(1, (n_groups - 1) * group_size + (min(k_rag, group_size - 1) or group_size))
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    bn = 128 if wide else 64
    cfg = Config(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=128, SPLIT_K=split_k, num_warps=1, num_stages=2 if pipe else 1,
                 pregather=pregather, U=u)
    assert layout_aligned4(p.block_offset, N, block_rows) == (n_rag in (0, 8))
    _check(p, dtype, cfg, seed)


@needs_kernels
@pytest.mark.parametrize("u,pipe", [(2, False), (1, True)])
def test_v4_aligned_both_ways(u, pipe):
    # The same weights with ALIGNED proved (136 rows: 128 + 8) and not (147 rows: 128 + 19).
    for N, aligned in ((136, True), (147, False)):
        p = random_packed(N, 200, 128, 64, (2, 3, 4), True, seed=N)
        assert layout_aligned4(p.block_offset, N, 128) is aligned
        cfg = Config(BLOCK_M=1, BLOCK_N=128, BLOCK_K=64, SPLIT_K=2, num_warps=1, num_stages=2 if pipe else 1, U=u)
        _check(p, torch.float32, cfg, seed=N)


@needs_kernels
def test_v4_multi_chunk_groups_and_bf16():
    # Groups longer than BLOCK_K take the variant-2 walk inside the v4 kernel (ONE_CHUNK False);
    # bf16 activations; M = 2 (the gemv family is also correct for a few rows).
    wide = (1, 3, 8) if KERNEL_DEVICE == "cpu" else (2, 3)  # GPU: an 8-bit walk takes minutes to compile
    p = random_packed(40, 552, 32, 256, wide, True, seed=3)
    cfg = Config(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, num_warps=1, num_stages=2, U=2)
    _check(p, torch.float32, cfg, M=2)
    p = random_packed(96, 160, 64, 32, (2, 3), True, seed=5)
    _check(p, torch.bfloat16, Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=32, SPLIT_K=3, num_warps=1, num_stages=1, U=4))


def test_aligned4_is_never_guessed(monkeypatch):
    p = random_packed(136, 200, 128, 64, (2, 3), True, seed=1)
    assert layout_aligned4(p.block_offset, 136, 128)
    assert layout_aligned4(p.block_offset, 136, 128)  # memoised
    p.block_offset[0, 0] += 1  # an offset the format would allow but that breaks 16-byte rows
    assert not layout_aligned4(p.block_offset, 136, 128)
    assert not layout_aligned4(p.block_offset.clone() * 0, 138, 128)  # 10-row last row-block
    assert not layout_aligned4(p.block_offset.clone() * 0, 136, 126)  # block_rows % 4
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not layout_aligned4(torch.zeros_like(p.block_offset), 136, 128)  # tracing: no values, no claim


def test_v4_source_and_variants_1_to_3_untouched():
    with variant4():
        src = emit_source(KernelKey("gemv", (2, 3)))
        dec = emit_source(KernelKey("decode", (2, 3)))
    assert "U: tl.constexpr, ALIGNED: tl.constexpr, PIPE: tl.constexpr" in src
    assert "atomic_add" not in src and "pid_k * M * stride_ym" in src
    assert "U: tl.constexpr" not in dec  # decode / prefill are variant 3's
    src3 = emit_source(KernelKey("gemv", (2, 3)))  # default variant (3 unless the env says otherwise)
    if os.environ.get("SFMP_KERNEL_VARIANT", "3") == "3":
        assert "U: tl.constexpr" not in src3 and "double-buffered" in src3


def test_v4_config_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    autotune._tuned.clear()
    dev = torch.device("cuda")  # a device object only; nothing is launched
    args = ("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev)
    v3_tuned = Config(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, SPLIT_K=8, num_warps=1, num_stages=4)
    with variant4("3"):
        autotune.save_tuned(dev, autotune.config_key(*args[:-1]), v3_tuned, 0.01)
        assert autotune.get_config(*args) == v3_tuned
    assert "U" not in v3_tuned.to_dict()  # variants 1-3 write the entries they always wrote
    with variant4():
        # v3's tuned gemv tile is ignored; the shipped 'gemv|m1|v4' entry (or FALLBACK_GEMV_V4) wins
        cfg = autotune.get_config(*args)
        assert cfg.BLOCK_N == 128 and cfg.num_stages >= 2 and cfg.U == 1
        warps, u = gemv.v4_launch_params(cfg.BLOCK_N, cfg.num_warps, cfg.U)
        assert cfg.BLOCK_N >= 32 * warps
        mine = Config(BLOCK_M=1, BLOCK_N=256, BLOCK_K=128, SPLIT_K=16, num_warps=2, num_stages=1, U=2)
        key = autotune.config_key(*args[:-1])
        assert key.endswith("|v4")
        autotune.save_tuned(dev, key, mine, 0.005)
        assert autotune.get_config(*args) == mine
        assert autotune.get_config("gemv", 1, 4096, 4096, (2, 3), 128, 512, torch.float16, dev) == mine
        space = autotune.candidate_configs("gemv", 1, 4096, 14336, 128, 512, True)
        assert 1 <= len(space) <= 16 and space[0] == autotune.FALLBACK_GEMV_V4
        assert all(c.BLOCK_N >= 32 * gemv.v4_launch_params(c.BLOCK_N, c.num_warps, c.U)[0] for c in space)
    with variant4("3"):
        assert autotune.get_config(*args) == v3_tuned  # and variant 3 never sees the v4 entry
    autotune._tuned.clear()


def test_v4_split_k_rule():
    assert gemv.v4_split_k(32, 1, 112) == 32  # 4096 rows / 128: 1024 warps ~ 7.8 per SM
    assert gemv.v4_split_k(16, 2, 112, u=2) == 16  # each program keeps >= 2U groups
    assert gemv.v4_split_k(1000, 1, 112) == 1
    assert gemv.v4_split_k(1, 1, 3) == 1


@needs_kernels
def test_aligned4_travels_in_the_width_mask_into_traced_graphs(monkeypatch):
    """A traced graph cannot read block offsets, so the layout fact is read once from real values
    (layer_width_mask, bit 0 of width_mask) and the op hands it to the launcher."""
    from sfmp_compile.codegen import ALL_WIDTHS_MASK, layer_width_mask, launch as launch_mod, widths_of_mask
    from sfmp_compile.codegen.generate import ALIGNED4
    p = random_packed(136, 200, 128, 64, (2, 3), True, seed=1)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # e.g. inside a compile backend
    mask = layer_width_mask(p)
    assert mask & ALIGNED4 and widths_of_mask(mask) == (2, 3) and not ALL_WIDTHS_MASK & ALIGNED4
    bad = random_packed(136, 200, 128, 64, (2, 3), True, seed=1)
    bad.block_offset[0, 0] += 1
    assert not layer_width_mask(bad) & ALIGNED4
    seen = []
    real = launch_mod._launch_gemv_v4
    monkeypatch.setattr(launch_mod, "_launch_gemv_v4", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    x = torch.randn(1, 200)
    with variant4():
        op = torch.ops.sfmp.linear_triton_interp if KERNEL_DEVICE == "cpu" else torch.ops.sfmp.linear_triton
        y = op(x.to(KERNEL_DEVICE), *packed_args(p.to(KERNEL_DEVICE)), mask).cpu()
    assert seen == [True]  # from the mask: layout_aligned4 itself refuses while "compiling"
    assert max_rel_err(y, linear_ref(x, *packed_args(p))) <= TOL[torch.float32]
