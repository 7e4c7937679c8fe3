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
