"""The gemvu family (the opt-in M = 1 body, chosen by a config's ``family``) against the reference op.

Under Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) on CPU, or compiled on a
GPU. Covers U > 1 groups per load, the PIPE double buffer, split-K partials (plain stores + one
torch sum), the launcher-proved ALIGNED flag both ways, ragged shapes, permutations, in-kernel and
pre-gathered activations, fp16/fp32 (and bf16) activations. Small shapes: the interpreter pays
per program instance.
"""

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from sfmp_compile.codegen import Config, KernelLayer, autotune, gemvu, launch  # noqa: E402
from sfmp_compile.codegen.generate import KernelKey, emit_source  # noqa: E402
from sfmp_compile.format import layout_aligned4  # noqa: E402
from sfmp_compile.ops.reference import linear_ref, packed_args  # noqa: E402
from tests.codegen._util import KERNEL_DEVICE, TOL, max_rel_err, needs_kernels, random_packed  # noqa: E402

EXAMPLES = 15 if KERNEL_DEVICE == "cpu" else 3  # GPU: every constexpr combination is a compile (gemvu is opt-in: fewer draws than the default families)
# seven widths, not eight: the all-widths kernel never runs gemvu (test_all_widths_kernel_is_never_gemvu)
HYP_WIDTHS = ([(2, 3), (2, 3, 4), (3, 4), (2,), (1, 2, 3, 4, 5, 6, 7), (1, 5, 8)] if KERNEL_DEVICE == "cpu"
              else [(2, 3), (2, 3, 4)])


def _check(p, dtype, cfg, seed=0, M=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, p.in_features, generator=g).to(dtype)
    ref = linear_ref(x, *packed_args(p))
    widths = tuple(sorted(set(p.bits.flatten().tolist())))
    y = launch(x.to(KERNEL_DEVICE), KernelLayer(*packed_args(p.to(KERNEL_DEVICE))), widths, family="gemv",
               config=cfg.with_(family="gemvu")).cpu()
    assert y.dtype == dtype and y.shape == ref.shape
    err = max_rel_err(y, ref)
    assert err <= TOL[dtype], f"gemvu {dtype} widths={widths} {cfg}: max rel err {err:.2e}"


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
def test_gemvu_matches_reference(widths, n_blocks, n_rag, group_size, n_groups, k_rag, u, pipe, split_k, wide,
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
def test_gemvu_aligned_both_ways(u, pipe):
    # The same weights with ALIGNED proved (136 rows: 128 + 8) and not (147 rows: 128 + 19).
    for N, aligned in ((136, True), (147, False)):
        p = random_packed(N, 200, 128, 64, (2, 3, 4), True, seed=N)
        assert layout_aligned4(p.block_offset, N, 128) is aligned
        cfg = Config(BLOCK_M=1, BLOCK_N=128, BLOCK_K=64, SPLIT_K=2, num_warps=1, num_stages=2 if pipe else 1, U=u)
        _check(p, torch.float32, cfg, seed=N)


@needs_kernels
def test_gemvu_multi_chunk_groups_and_bf16():
    # Groups longer than BLOCK_K take gemv's walk inside the gemvu kernel (ONE_CHUNK False);
    # bf16 activations; M = 2 (the gemv family is also correct for a few rows).
    wide = (1, 3, 8) if KERNEL_DEVICE == "cpu" else (2, 3)  # GPU: an 8-bit walk takes minutes to compile
    p = random_packed(40, 552, 32, 256, wide, True, seed=3)
    cfg = Config(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, num_warps=1, num_stages=2, U=2)
    _check(p, torch.float32, cfg, M=2)
    p = random_packed(96, 160, 64, 32, (2, 3), True, seed=5)
    _check(p, torch.bfloat16, Config(BLOCK_M=1, BLOCK_N=64, BLOCK_K=32, SPLIT_K=3, num_warps=1, num_stages=1, U=4))


def test_aligned4_is_checked_on_the_offsets():
    p = random_packed(136, 200, 128, 64, (2, 3), True, seed=1)
    assert layout_aligned4(p.block_offset, 136, 128)
    p.block_offset[0, 0] += 1  # an offset the format would allow but that breaks 16-byte rows
    assert not layout_aligned4(p.block_offset, 136, 128)
    assert not layout_aligned4(p.block_offset.clone() * 0, 138, 128)  # 10-row last row-block
    assert not layout_aligned4(p.block_offset.clone() * 0, 136, 126)  # block_rows % 4


def test_gemvu_source_and_the_other_families_untouched():
    src = emit_source(KernelKey("gemvu", (2, 3)))
    assert "U: tl.constexpr, ALIGNED: tl.constexpr, PIPE: tl.constexpr" in src
    assert "atomic_add" not in src and "pid_k * M * stride_ym" in src
    for fam in ("gemv", "decode", "prefill"):
        assert "U: tl.constexpr" not in emit_source(KernelKey(fam, (2, 3)))
    assert "double-buffered" in emit_source(KernelKey("gemv", (2, 3)))


def test_gemvu_is_chosen_by_configuration(tmp_path, monkeypatch):
    """The m1 bucket runs gemv unless a config names gemvu; tuning compares both families' spaces."""
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    autotune._tuned.clear()
    dev = torch.device("cuda")  # a device object only; nothing is launched
    args = ("gemv", 1, 4096, 14336, (2, 3), 128, 512, torch.float16, dev)
    assert autotune.get_config(*args).family == ""  # the shipped default is the gemv body
    v3_tuned = Config(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, SPLIT_K=8, num_warps=1, num_stages=4)
    autotune.save_tuned(dev, autotune.config_key(*args[:-1]), v3_tuned, 0.01)
    assert autotune.get_config(*args) == v3_tuned and "family" not in v3_tuned.to_dict()
    mine = Config(BLOCK_M=1, BLOCK_N=256, BLOCK_K=128, SPLIT_K=16, num_warps=2, num_stages=1, U=2, family="gemvu")
    autotune.save_tuned(dev, autotune.config_key(*args[:-1]), mine, 0.005)
    assert autotune.get_config(*args) == mine
    assert autotune.get_config("gemv", 1, 4096, 4096, (2, 3), 128, 512, torch.float16, dev) == mine
    space = autotune.candidate_configs("gemv", 1, 4096, 14336, 128, 512, True)
    fams = [c.family for c in space]
    assert fams[:2] == ["", "gemvu"]  # interleaved: a time-boxed tune tries both families early
    assert all(c.BLOCK_N >= 32 * gemvu.launch_params(c.BLOCK_N, c.num_warps, c.U)[0]
               for c in space if c.family == "gemvu")
    autotune._tuned.clear()


def test_auto_split_k_rule():
    assert gemvu.auto_split_k(32, 1, 112) == 32  # 4096 rows / 128: 1024 warps ~ 7.8 per SM
    assert gemvu.auto_split_k(16, 2, 112, u=2) == 16  # each program keeps >= 2U groups
    assert gemvu.auto_split_k(1000, 1, 112) == 1
    assert gemvu.auto_split_k(1, 1, 3) == 1


@needs_kernels
def test_aligned4_travels_in_the_width_mask_into_traced_graphs(monkeypatch):
    """A traced graph cannot read block offsets, so the layout fact is read once from real values
    (SFMPWeight.aligned4, bit 0 of width_mask) and the op hands it to the launcher."""
    from sfmp_compile.codegen import ALL_WIDTHS_MASK, widths_of_mask
    from sfmp_compile.codegen.generate import ALIGNED4
    from sfmp_compile.layouts import SFMPWeight
    from sfmp_compile.ops.dispatch import width_mask
    p = random_packed(136, 200, 128, 64, (2, 3), True, seed=1)
    mask = width_mask(SFMPWeight.from_packed(p))
    assert mask & ALIGNED4 and widths_of_mask(mask) == (2, 3) and not ALL_WIDTHS_MASK & ALIGNED4
    bad = random_packed(136, 200, 128, 64, (2, 3), True, seed=1)
    bad.block_offset[0, 0] += 1
    assert not width_mask(SFMPWeight.from_packed(bad)) & ALIGNED4
    seen = []
    real = gemvu.launch
    monkeypatch.setattr(gemvu, "launch", lambda L, cfg: seen.append(L.aligned4) or real(L, cfg))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the launcher may not look itself
    monkeypatch.setattr(autotune, "get_config", lambda *a: gemvu.INTERPRETER)
    x = torch.randn(1, 200)
    op = torch.ops.sfmp.linear_triton_interp if KERNEL_DEVICE == "cpu" else torch.ops.sfmp.linear_triton
    y = op(x.to(KERNEL_DEVICE), *packed_args(p.to(KERNEL_DEVICE)), mask).cpu()
    assert seen == [True]  # from the mask
    assert max_rel_err(y, linear_ref(x, *packed_args(p))) <= TOL[torch.float32]


@needs_kernels
def test_all_widths_kernel_is_never_gemvu(monkeypatch):
    """torch.compile's fallback (the all-widths kernel) runs gemv even when a table names gemvu:
    gemvu's eight unrolled segment walks compile for minutes (458 s for sm_90 on 2 cores)."""
    import importlib
    launch_mod = importlib.import_module("sfmp_compile.codegen.launch")
    ran = []
    real = launch_mod.Launch.kernel
    monkeypatch.setattr(launch_mod.Launch, "kernel", lambda self, family: ran.append(family) or real(self, family))
    p = random_packed(64, 128, 64, 64, (2, 3), True, seed=4)
    x = torch.randn(1, 128)
    layer = KernelLayer(*packed_args(p.to(KERNEL_DEVICE)))
    y = launch(x.to(KERNEL_DEVICE), layer, tuple(range(1, 9)), family="gemv", config=gemvu.FALLBACK).cpu()
    assert ran == ["gemv"] and max_rel_err(y, linear_ref(x, *packed_args(p))) < 1e-4
    launch(x.to(KERNEL_DEVICE), layer, (2, 3), family="gemv", config=gemvu.FALLBACK)
    assert ran == ["gemv", "gemvu"]  # a known width set still runs the body the config names
