import copy

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from sfmp_compile import SFMPLinear, plan, quantization_report, quantize
from sfmp_compile.blocks import BlockGrid
from sfmp_compile.config import QuantConfig, SFMPConfigError
from sfmp_compile.eval.models import tiny_llama


class MLP(nn.Module):
    def __init__(self, d=96, h=160, bias=True):
        super().__init__()
        self.up = nn.Linear(d, h, bias=bias)
        self.down = nn.Linear(h, d, bias=bias)
        self.lm_head = nn.Linear(d, 10)

    def forward(self, x):
        return self.lm_head(self.down(torch.relu(self.up(x))))


def _steps_in_original_order(p):
    """Per weight of a PackedWeight, in the ORIGINAL [N, K] order: its group's stored scale and qmax."""
    N, K = p.out_features, p.in_features
    s = p.scales.float().t().repeat_interleave(p.group_size, 1)[:, :K]
    b = p.bits.long().repeat_interleave(p.block_rows, 0)[:N].repeat_interleave(p.group_size, 1)[:, :K]
    rp = p.row_perm.long() if p.row_perm.numel() else torch.arange(N)
    cp = p.col_perm.long() if p.col_perm.numel() else torch.arange(K)
    scale, qmax = torch.empty(N, K), torch.empty(N, K)
    scale[rp[:, None], cp[None, :]] = s
    qmax[rp[:, None], cp[None, :]] = (2.0 ** b) - 1
    return scale, qmax


@given(seed=st.integers(0, 100), bits=st.floats(1.5, 6.0), rows=st.booleans(), cols=st.booleans(),
       bias=st.booleans(), clip=st.booleans())
def test_layer_output_equals_dequantized_weight_in_original_order(seed, bits, rows, cols, bias, clip):
    torch.manual_seed(seed)
    m = MLP(bias=bias)
    original = {"up": m.up.weight.detach().clone(), "down": m.down.weight.detach().clone()}
    x = torch.randn(4, 96)
    quantize(m, bits=bits, calibration=[x], block_rows=32, group_size=32, reorder_rows=rows, reorder_cols=cols,
             clip_search=clip)
    for name, layer in (("up", m.up), ("down", m.down)):
        assert isinstance(layer, SFMPLinear)
        layer.prepare_for("cpu", "reference")  # the exact op: this checks orders and values, not a kernel
        inp = torch.randn(3, layer.in_features)
        w_hat = layer.packed.dequantize()
        want = inp @ w_hat.t() + (layer.bias if bias else 0)
        torch.testing.assert_close(layer(inp), want, rtol=1e-5, atol=1e-5)
        # Against the ORIGINAL float weight: round-to-nearest is within half a step of it. The fp16
        # rounding of a scale (relative 2^-11) can push a group's top code past qmax, which is then
        # clamped: at most qmax·2^-11 more steps. Scales are no wider than the group's range needs.
        W = original[name]
        scale, qmax = _steps_in_original_order(layer.packed)
        assert (scale * qmax <= 2 * W.abs().amax(1, keepdim=True) * (1 + 2**-10)).all()
        if not clip:  # clipping trades the extremes' error for the rest: no per-weight bound
            bound = scale * (0.5 + qmax * 2**-11) * (1 + 1e-6)
            assert ((w_hat - W).abs() <= bound).all(), float(((w_hat - W).abs() / scale).max())
    assert isinstance(m.lm_head, nn.Linear)  # skipped by default


@pytest.mark.parametrize("bits", [2.25, 2.75, 3.0, 3.5])
def test_budget_met_on_ragged_real_shapes(bits):
    # SmolLM2's shapes: 576 and 192 divide neither 512 nor 128
    m = nn.Sequential(nn.Linear(576, 576), nn.Linear(576, 192), nn.Linear(576, 1536), nn.Linear(1536, 576))
    weights = {str(i): l.weight for i, l in enumerate(m)}
    p = plan(m, bits=bits, skip=())
    got = p.average_bits()
    max_block = max(int(BlockGrid(*w.shape, 512, 128).weight_counts().max()) for w in weights.values())
    assert got <= bits + 1e-9 and bits - got <= max_block / sum(w.numel() for w in weights.values())


def test_quantize_report_counts_every_bit():
    m = MLP()
    quantize(m, bits=2.5, block_rows=32, group_size=32)
    r = quantization_report(m)
    assert r["weight_bits"] == pytest.approx(2.5, abs=0.05)
    stored = sum(t.numel() * t.element_size() for l in (m.up, m.down) for t in l.packed.tensors().values())
    assert r["quantized_bytes"] == stored
    assert r["bpw"] == pytest.approx(stored * 8 / (96 * 160 * 2))
    assert r["bpw"] > r["weight_bits"] + 1.0  # 2 fp16 per 32 weights = +1 bit, plus perms and maps
    assert set(r["layers"]) == {"up", "down"}


def test_three_level_end_to_end():
    m = tiny_llama()
    x = torch.randint(0, 256, (2, 16))
    quantize(m, bits=3.0, bit_choices=(2, 3, 4), calibration=[x], block_rows=16, group_size=32)
    r = quantization_report(m)
    share = {}
    for layer in r["layers"].values():
        n = layer["shape"][0] * layer["shape"][1]
        for b, f in layer["bits_histogram"].items():
            share[b] = share.get(b, 0.0) + f * n / r["n_quantized_weights"]
    assert set(share) == {2, 3, 4} and min(share.values()) > 0.05, share  # all three widths really used
    # The budget is a cap met to within one block (16 x 32 weights) of the target, from both sides.
    assert 3.0 - 16 * 32 / r["n_quantized_weights"] <= r["weight_bits"] <= 3.0 + 1e-9


def test_fisher_salience_quantizes_llama():
    m = tiny_llama()
    ref = copy.deepcopy(m)
    x = torch.randint(0, 256, (2, 16))
    held = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        y = ref(held).logits
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    quantize(m, bits=3.5, salience="fisher", calibration=[x], block_rows=16, group_size=32)
    # The backward passes leave no gradients or changed requires_grad behind on what stays float.
    assert all(p.grad is None and p.requires_grad == flags[n] for n, p in m.named_parameters())
    with torch.no_grad():
        got = m(held).logits
    rel = float((got - y).norm() / y.norm())
    assert 0 < rel < 0.15, rel  # measured 0.090 at 3.5 bits (0.188 at 2.25)


def _bad_model(weight):
    m = nn.Sequential(nn.Linear(32, 32))
    m[0].weight = nn.Parameter(weight, requires_grad=False)
    return m


@pytest.mark.parametrize("make, exc, message", [
    (lambda: _bad_model(torch.full((32, 32), float("nan"))), ValueError, "NaN or inf"),
    (lambda: _bad_model(torch.full((32, 32), float("inf"))), ValueError, "NaN or inf"),
    (lambda: _bad_model(torch.ones(32, 32, dtype=torch.int32)), TypeError, "not a floating-point"),
])
def test_bad_weights_are_refused_and_model_untouched(make, exc, message):
    m = make()
    before = m[0].weight.clone()
    with pytest.raises(exc, match=message):
        quantize(m, bits=3.0, group_size=32, skip=())
    assert isinstance(m[0], nn.Linear)
    torch.testing.assert_close(m[0].weight.detach(), before, equal_nan=True, rtol=0, atol=0)


def test_bad_bits_and_salience_shapes():
    with pytest.raises(SFMPConfigError, match="out of range"):
        quantize(MLP(), bits=1.0)
    with pytest.raises(SFMPConfigError, match="out of range"):
        quantize(MLP(), bits=9)
    m = MLP()
    with pytest.raises(ValueError, match="salience shape"):
        quantize(m, bits=3.0, salience={"up": torch.ones(3, 3), "down": torch.ones(96, 160)}, group_size=32)
    assert isinstance(m.up, nn.Linear)
    with pytest.raises(ValueError, match="needs calibration"):
        quantize(MLP(), bits=3.0, salience="activation")


def test_partial_failure_leaves_model_untouched():
    m = MLP()
    m.down.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="down"):
        quantize(m, bits=3.0, group_size=32)
    assert isinstance(m.up, nn.Linear) and isinstance(m.down, nn.Linear)


@pytest.mark.parametrize("quantizer", ["rtn", "gptq"])
def test_progress_is_called_once_per_layer_before_the_swap(quantizer):
    model = tiny_llama()
    calib = [torch.randint(0, 256, (1, 16)) for _ in range(2)]
    seen = []

    def progress(name):
        # Still the float layer: every layer is packed before any module is swapped in.
        assert isinstance(model.get_submodule(name), nn.Linear)
        seen.append(name)

    quantize(model, 3.0, calibration=calib, group_size=32, block_rows=32, quantizer=quantizer, progress=progress)
    assert sorted(seen) == sorted(model.sfmp_plan.layers) and len(seen) == len(set(seen))


def test_default_bit_choices_keep_the_papers_set_and_reach_every_target():
    from sfmp_compile.quantize import default_bit_choices
    for bits in (2.0, 2.22, 2.75, 2.99):  # the paper's set where the paper's targets lie
        assert default_bit_choices(bits) == (2, 3, 4)
    for bits in (3.0, 3.22, 3.72):  # never below the 2-level scheme's lower width
        assert default_bit_choices(bits) == (3, 4, 5)
    assert default_bit_choices(1.8) == (1, 2, 3) and default_bit_choices(7.9) == (6, 7, 8)
    assert default_bit_choices(8.0) == (6, 7, 8)
    for bits in [1.01 + i * 0.07 for i in range(100)] + [8.0]:
        ch = default_bit_choices(bits)
        assert ch[0] <= bits <= ch[-1] and list(ch) == list(range(ch[0], ch[0] + 3)), (bits, ch)
        QuantConfig(bits=bits, bit_choices=ch)  # accepted as a 3-level config



def test_report_breaks_bpw_into_parts():
    """quantization_report: codes + scales/zeros + permutations + maps = bpw (format v2 stored
    bits), and regrouped permutations cost a small fraction of their int32 form."""
    torch.manual_seed(0)
    m = tiny_llama(hidden=128)
    quantize(m, bits=2.5, salience="weight", block_rows=32, group_size=32)
    r = quantization_report(m)
    parts = r["bpw_codes"] + r["bpw_scales_zeros"] + r["bpw_perms"] + r["bpw_maps"]
    assert abs(parts - r["bpw"]) < 1e-12 and r["bpw_codes"] >= r["weight_bits"]
    assert 0 < r["bpw_perms"] < r["bpw_perms_int32"] / 4
    for lr in r["layers"].values():
        assert abs(lr["bpw_codes"] + lr["bpw_scales_zeros"] + lr["bpw_perms"] + lr["bpw_maps"] - lr["bpw"]) < 1e-12
