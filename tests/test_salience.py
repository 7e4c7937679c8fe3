import torch
from torch import nn

import pytest
from hypothesis import given, settings, strategies as st

from sfmp_compile import config
from sfmp_compile.salience import (SALIENCES, activation_salience, compute_salience, fisher_salience,
                                   input_second_moments, salience_from_moments)
from sfmp_compile.plan import find_linears
from sfmp_compile.eval.models import tiny_llama


def test_activation_salience_is_w2_times_input_moment():
    lin = nn.Linear(8, 4)
    model = nn.Sequential(lin)
    xs = [torch.randn(5, 8), torch.randn(3, 8)]
    s = activation_salience(model, {"0": lin}, xs)["0"]
    moment = torch.cat(xs).pow(2).mean(0)
    torch.testing.assert_close(s, lin.weight.detach().pow(2) * moment)


def test_fisher_is_sum_of_per_sequence_squared_gradients():
    m = tiny_llama()
    layers = find_linears(m)
    x = torch.randint(0, 256, (2, 12))
    s = fisher_salience(m, layers, [x])
    name = "model.layers.0.mlp.down_proj"
    want = torch.zeros_like(s[name])
    for i in range(2):
        m.zero_grad()
        m(input_ids=x[i : i + 1], labels=x[i : i + 1]).loss.backward()
        want += layers[name].weight.grad.pow(2)
    torch.testing.assert_close(s[name], want)
    assert all(v.dtype == torch.float32 for v in s.values())
    assert "lm_head" not in s


def test_config_validates_against_the_registry():
    assert config.SALIENCE_KINDS == list(SALIENCES) and len(SALIENCES) >= 3
    for kind in SALIENCES:
        assert config.QuantConfig(salience=kind).salience == kind


@pytest.mark.parametrize("kind", list(SALIENCES))
def test_every_registered_salience_dispatches(kind):
    m = tiny_llama()
    layers = find_linears(m)
    cal = [torch.randint(0, 256, (2, 8))]
    s = compute_salience(kind, m, layers, cal)
    assert set(s) == set(layers)
    for n, mod in layers.items():
        assert s[n].dtype == torch.float32 and s[n].shape == mod.weight.shape and torch.isfinite(s[n]).all()
        assert (s[n] >= 0).all()
    entry = SALIENCES[kind]
    if entry.needs_calibration:
        with pytest.raises(ValueError, match="needs calibration"):
            compute_salience(kind, m, layers, None)
    else:
        assert all(torch.equal(s[n], v) for n, v in compute_salience(kind, m, layers, None).items())
    if entry.uses_moments:  # given moments replace the pass over calibration, same result
        moments = input_second_moments(m, layers, cal)
        assert all(torch.equal(s[n], v) for n, v in compute_salience(kind, m, layers, None, moments).items())


def test_unknown_salience_is_refused():
    with pytest.raises(ValueError, match="unknown salience kind 'hessian'"):
        compute_salience("hessian", nn.Linear(2, 2), {}, None)


@settings(max_examples=30)
@given(n=st.integers(1, 9), k=st.integers(1, 9), seed=st.integers(0, 1000), with_moments=st.booleans())
def test_salience_from_moments_is_w2_times_column_moment(n, k, seed, with_moments):
    g = torch.Generator().manual_seed(seed)
    w, mom = torch.randn(n, k, generator=g).half(), torch.rand(k, generator=g)
    s = salience_from_moments(w, mom if with_moments else None)
    want = torch.stack([w[i].float() ** 2 * (mom if with_moments else 1) for i in range(n)])
    assert s.dtype == torch.float32 and torch.equal(s, want)


# ---- one calibration convention for activation, fisher and GPTQ (issue 13 item 9) -----------------

def _token_seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 20))


def _float_seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("make, batch", [
    (_token_seq, lambda: torch.randint(0, 20, (3, 10))),     # LongTensor batch
    (_float_seq, lambda: torch.randn(5, 8)),                 # float tensor batch
    (_float_seq, lambda: (torch.randn(5, 8),)),              # tuple of positional args
])
def test_all_calibration_users_take_the_same_inputs(make, batch):
    from sfmp_compile import quantize, quantization_report
    from sfmp_compile.quantizers.gptq import collect_hessians
    torch.manual_seed(1)
    cal = [batch(), batch()]
    model = make()
    layers = find_linears(model, ())
    for kind in ("activation", "fisher"):
        s = compute_salience(kind, model, layers, cal)
        assert set(s) == set(layers) and all(torch.isfinite(v).all() and (v > 0).any() for v in s.values())
    hess = collect_hessians(model, layers, cal)
    assert all(h.shape == (m.in_features,) * 2 and torch.isfinite(h).all() for h, m in zip(hess.values(), layers.values()))
    for kind in ("activation", "fisher"):
        m = make()
        quantize(m, 3, calibration=cal, salience=kind, quantizer="gptq", group_size=32, block_rows=8, skip=())
        assert quantization_report(m)["weight_bits"] == pytest.approx(3.0)


def test_fisher_on_token_sequential_is_causal_next_token_loss():
    model = _token_seq()
    lin = model[3]
    x = torch.randint(0, 20, (2, 10))
    s = fisher_salience(model, {"3": lin}, [x])["3"]
    want = torch.zeros_like(s)
    for i in range(2):
        lin.weight.grad = None
        logits = model(x[i : i + 1])
        nn.functional.cross_entropy(logits[0, :-1], x[i, 1:]).backward()
        want += lin.weight.grad.pow(2)
    torch.testing.assert_close(s, want)


@pytest.mark.parametrize("value, needle", [(1e30, "overflows what fp16 scales can store"),
                                           (float("inf"), "contains NaN or inf")])
def test_bad_weights_are_named_before_salience(value, needle):
    """A 1e30 weight used to surface as 'salience contains NaN or inf'."""
    from sfmp_compile import quantize
    m = tiny_llama()
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight[3, 4] = value
    for kind in ("weight", "activation"):
        with pytest.raises(ValueError, match=f"model.layers.1.mlp.up_proj: weight .*{needle}"):
            quantize(m, 3, calibration=[torch.randint(0, 256, (1, 8))], salience=kind)
    assert isinstance(m.model.layers[1].mlp.up_proj, nn.Linear)  # untouched


def test_non_finite_salience_names_its_cause():
    lin = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"0: activation salience is not finite \(the layer's inputs"):
        compute_salience("activation", nn.Sequential(lin), {"0": lin}, [torch.full((2, 4), 1e30)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_calibrates_in_fp32_and_keeps_its_tensors(dtype):
    """On the CPU a half-precision model calibrates as its fp32 twin does (the same values, fp32
    arithmetic: salience.calibration_dtype), and gets its own tensors back, not casts of copies."""
    from sfmp_compile.quantizers.gptq import collect_hessians
    from sfmp_compile.salience import calibration_precision
    half = tiny_llama().to(dtype)
    twin = tiny_llama().to(dtype).float()
    cal = [torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    before = {n: (p, p.data, p.data_ptr()) for n, p in half.named_parameters()}
    with calibration_precision(half):
        assert all(p.dtype == torch.float32 for p in half.parameters())
    for fn in (fisher_salience, input_second_moments, collect_hessians):
        got, want = fn(half, find_linears(half), cal), fn(twin, find_linears(twin), cal)
        assert all(torch.equal(got[n], want[n]) for n in want), fn.__name__
    for n, p in half.named_parameters():
        assert p is before[n][0] and p.dtype == dtype and p.data_ptr() == before[n][2] and p.grad is None
