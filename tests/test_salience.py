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
