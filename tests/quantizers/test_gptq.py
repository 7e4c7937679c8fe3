"""GPTQ under a block bit map: contract, error feedback beats round-to-nearest, model-level wiring."""
import pytest
import torch

from sfmp_compile import quantize, quantization_report
from sfmp_compile.blocks import BlockGrid
from sfmp_compile.eval.models import tiny_gpt2, tiny_llama
from sfmp_compile.quantizers.gptq import collect_hessians, gptq_model, gptq_quantize
from sfmp_compile.quantizers.minmax import dequantize_groups, minmax_quantize


def correlated_inputs(n, K, seed=0):
    """[n, K] inputs with strongly correlated columns and a few outlier channels, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g) / K**0.5 + torch.eye(K)
    x = torch.randn(n, K // 4, generator=g) @ torch.randn(K // 4, K, generator=g) + 0.3 * torch.randn(n, K, generator=g) @ mix
    x[:, :3] *= 8
    return x


def out_err(x, w, wq):
    return float((x @ (w - wq).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("bits", [(2,), (3,), (2, 3, 4)])
def test_gptq_beats_rtn_on_output_error(bits, clip):
    N, K, gs = 48, 160, 32  # ragged last group (160 = 5 x 32 ... plus ragged rows via block_rows below)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(N, K, generator=g)
    x = correlated_inputs(1024, K)
    h = 2 * x.t() @ x / x.shape[0]
    grid = BlockGrid(N, K, 32, gs)
    choices = torch.tensor(bits)
    bmap = choices[torch.randint(0, len(bits), grid.shape, generator=g)]
    gb = grid.expand_rows(bmap)
    codes, s, z = gptq_quantize(w, gb, gs, h, clip=clip)
    # Contract: uint8 codes within each group's width, fp16-exact scales, integer zeros.
    assert codes.dtype == torch.uint8 and codes.shape == (N, K)
    lim = gb.repeat_interleave(gs, 1)[:, :K]
    assert (codes.long() < (1 << lim)).all()
    assert torch.equal(s, s.half().float()) and torch.equal(z, z.round())
    wq = dequantize_groups(codes, s, z, gs)
    rc, rs, rz = minmax_quantize(w, gb, gs, clip=clip, col_weight=torch.diagonal(h))
    wr = dequantize_groups(rc, rs, rz, gs)
    e_gptq, e_rtn = out_err(x, w, wq), out_err(x, w, wr)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_gptq_dead_columns_and_identity_hessian():
    N, K, gs = 16, 64, 32
    w = torch.randn(N, K)
    gb = torch.full((N, 2), 4)
    # H = I: no correlation, so GPTQ degenerates to round-to-nearest (same codes as minmax).
    codes, s, z = gptq_quantize(w, gb, gs, torch.eye(K), damp=0.0)
    rc, rs, rz = minmax_quantize(w, gb, gs)
    assert torch.equal(codes, rc) and torch.equal(s, rs) and torch.equal(z, rz)
    # Dead inputs (always zero): diag 0 must not break the factorisation; their weights are zeroed.
    x = torch.randn(256, K)
    x[:, 5] = 0
    h = 2 * x.t() @ x / 256
    codes, s, z = gptq_quantize(w, gb, gs, h)
    wq = dequantize_groups(codes, s, z, gs)
    assert torch.isfinite(wq).all()
    # A dead column is set to 0 and decoupled in H (its Cholesky rows/columns are exact zeros), so
    # no error feedback reaches it: its code is the group's zero point and it dequantizes to exactly 0.
    assert torch.equal(wq[:, 5], torch.zeros(N))
    assert torch.equal(codes[:, 5].float(), z[:, 0])
    assert (wq[:, :5] != 0).any()


def test_gptq_uses_the_relative_scale_rule():
    """Same scales as min-max for a 1e-5-scaled layer (identity H): no absolute floor zeroing it."""
    w = torch.randn(16, 64) * 1e-5
    gb = torch.full((16, 2), 4)
    codes, s, z = gptq_quantize(w, gb, 32, torch.eye(64), damp=0.0)
    rc, rs, rz = minmax_quantize(w, gb, 32)
    assert torch.equal(codes, rc) and torch.equal(s, rs) and torch.equal(z, rz)
    assert float((dequantize_groups(codes, s, z, 32) - w).norm() / w.norm()) < 0.15
    with pytest.warns(UserWarning, match="layer L quantizes to all zeros"):
        gptq_quantize(torch.full((4, 32), 1e-12), torch.full((4, 1), 8), 32, torch.eye(32), name="L")


@pytest.mark.parametrize("damp", [-1.0, float("nan"), float("inf")])
def test_gptq_rejects_bad_damp(damp):
    with pytest.raises(ValueError, match="damp must be a finite number"):
        gptq_quantize(torch.randn(4, 32), torch.full((4, 1), 3), 32, torch.eye(32), damp=damp)


def test_gptq_shape_errors():
    with pytest.raises(ValueError, match="group_bits"):
        gptq_quantize(torch.randn(4, 64), torch.full((4, 3), 3), 32, torch.eye(64))
    with pytest.raises(ValueError, match="hessian"):
        gptq_quantize(torch.randn(4, 64), torch.full((4, 2), 3), 32, torch.eye(32))


def test_collect_hessians_matches_definition():
    model = tiny_llama()
    layer = model.model.layers[0].mlp.down_proj
    xs = []
    hook = layer.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    calib = [torch.randint(0, 256, (2, 16)) for _ in range(2)]
    h = collect_hessians(model, {"down": layer}, calib)["down"]
    hook.remove()
    x = torch.cat(xs)
    torch.testing.assert_close(h, 2 * x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_sequential_gptq_quantizes_model_and_beats_rtn(make):
    torch.manual_seed(0)
    calib = [torch.randint(0, 256, (1, 64)) for _ in range(8)]
    held = torch.randint(0, 256, (1, 128))
    ref = make()
    with torch.no_grad():
        y = ref(held).logits
    errs = {}
    for q in ("rtn", "gptq"):
        m = make()
        quantize(m, 2, calibration=calib, quantizer=q, group_size=32, block_rows=32, salience="activation")
        with torch.no_grad():
            errs[q] = float((m(held).logits - y).pow(2).mean())
        assert quantization_report(m)["weight_bits"] == pytest.approx(2.0)
    assert errs["gptq"] < errs["rtn"], errs


def test_sequential_matches_all_at_once_for_first_block():
    """Block 0 sees float inputs either way, so its Hessians (and GPTQ results) must agree."""
    model = tiny_llama()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    calib = [torch.randint(0, 256, (1, 32)) for _ in range(3)]
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    seen_seq, seen_all = {}, {}

    def record(store):
        def f(name, h):
            store[name] = h
            return name, layers[name].weight.detach() * 0  # propagate garbage: must not leak into block 0
        return f

    gptq_model(model, layers, calib, record(seen_seq), sequential=True)
    gptq_model(model, layers, calib, record(seen_all), sequential=False)
    for n in layers:
        if n.startswith("model.layers.0."):
            torch.testing.assert_close(seen_seq[n], seen_all[n], rtol=1e-4, atol=1e-5)
        assert torch.equal(layers[n].weight, before[n])  # weights restored
    # Block 1 saw the zeroed ("quantized") block 0 outputs in sequential mode, so its Hessians differ.
    n1 = "model.layers.1.self_attn.q_proj"
    assert not torch.allclose(seen_seq[n1], seen_all[n1])


# --------------------------------------------------------------------------------------------------
# In-place Hessian work (issue 11: an 8B down_proj's 14336² Hessian must not be copied)
# --------------------------------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from sfmp_compile.config import QuantConfig  # noqa: E402
from sfmp_compile.plan import LayerPlan  # noqa: E402
from sfmp_compile.quantize import quantize_weight  # noqa: E402
from sfmp_compile.quantizers.gptq import _inverse_hessian_factor_, permute_hessian_  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 70), chunk=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_permute_hessian_in_place_is_the_double_gather(K, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(K, K, generator=g)  # need not be symmetric
    order = torch.randperm(K, generator=g)
    want = h.index_select(0, order).index_select(1, order)
    ptr = h.data_ptr()
    got = permute_hessian_(h, order, chunk=chunk)
    assert got.data_ptr() == ptr and torch.equal(got, want)


def _reference_factor(h, damp):
    """The pre-issue-11 factorisation: fp64 copies, out of place."""
    h = h.double().clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    a = h + damp * float(diag.mean()) * torch.eye(h.shape[0], dtype=torch.float64)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(a)), upper=True).float()


def test_in_place_factor_fp64_is_the_old_factor_and_fp32_is_close():
    x = correlated_inputs(96, 80)  # rank 80 of 80, outlier channels
    x[:, 7] = 0  # a dead column
    h = 2 * x.t() @ x / x.shape[0]
    ref = _reference_factor(h, 0.01)
    for dtype, tol in ((torch.float64, 0.0), (torch.float32, 1e-3)):
        work = h.clone()
        U, dead = _inverse_hessian_factor_(work, 0.01, dtype)
        assert U.data_ptr() == work.data_ptr() and U.dtype == torch.float32  # returned in h's own storage
        assert dead.nonzero().flatten().tolist() == [7]
        assert torch.equal(U, U.triu())
        err = float((U - ref).abs().max() / ref.abs().max())
        assert err <= tol, (dtype, err)


def test_in_place_factor_retries_from_the_intact_hessian():
    """An indefinite H (eigenvalue -0.05) fails at λ = 0.01 and succeeds at λ = 0.1: the retry must
    start again from H, not from what the failed in-place factorisation left."""
    K = 40
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.5, 1.5, K, dtype=torch.float64)
    eig[3] = -0.05
    h = ((q * eig) @ q.t()).float()
    h = (h + h.t()) / 2
    lam = 0.1 * float(torch.diagonal(h).double().mean())
    a = h.double() + lam * torch.eye(K, dtype=torch.float64)
    want = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(a)), upper=True).float()
    U, _ = _inverse_hessian_factor_(h.clone(), 0.01, torch.float64)
    torch.testing.assert_close(U, want, rtol=1e-6, atol=1e-6)


def test_overwrite_gives_the_same_result_as_copies():
    N, K, gs = 64, 256, 32
    g = torch.Generator().manual_seed(3)
    w = torch.randn(N, K, generator=g)
    x = correlated_inputs(512, K)
    h = 2 * x.t() @ x / 512
    cfg = QuantConfig(bits=3.0, bit_choices=(2, 3, 4), quantizer="gptq", block_rows=32, group_size=gs)
    bits = torch.tensor([2, 3, 4], dtype=torch.uint8)[torch.randint(0, 3, (N // 32, K // gs), generator=g)]
    lp = LayerPlan(torch.randperm(N, generator=g), torch.randperm(K, generator=g), bits)
    h_kept, w_kept = h.clone(), w.clone()
    a = quantize_weight(w, lp, cfg, h).dequantize()
    assert torch.equal(h, h_kept) and torch.equal(w, w_kept)  # default: the caller's tensors untouched
    b = quantize_weight(w, lp, cfg, h, overwrite_hessian=True).dequantize()
    assert torch.equal(a, b)
    assert not torch.equal(h, h_kept)  # it really was the work space
    codes = gptq_quantize(w.clone(), torch.full((N, K // gs), 3), gs, h_kept.clone(), overwrite=True)
    assert all(torch.equal(p, q) for p, q in zip(codes, gptq_quantize(w, torch.full((N, K // gs), 3), gs, h_kept)))


def test_factor_work_space_is_one_matrix(tmp_path):
    """Peak RSS of the factorisation (in a fresh process, LAPACK warmed up, VmHWM reset first) stays
    near one extra K×K fp32 matrix (the old code held ~5 fp64-sized copies: > 8 matrices)."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import torch
        from sfmp_compile.quantizers.gptq import _inverse_hessian_factor_
        torch.set_num_threads(1)
        K = 2048
        small = torch.randn(64, 64)
        _inverse_hessian_factor_(small @ small.t() + 64 * torch.eye(64), 0.01)  # LAPACK's code and buffers load now
        x = torch.randn(300, K)
        h = x.t() @ x
        del x
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        _inverse_hessian_factor_(h, 0.01)
        print((status("VmHWM") - base) / (K * K * 4))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra = float(p.stdout.strip().splitlines()[-1])
    assert extra < 1.6, extra  # one work matrix (measured 1.00 once warmed up); the old code: > 8
