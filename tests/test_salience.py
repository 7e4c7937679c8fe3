import torch
from torch import nn

from sfmp_compile.salience import activation_salience, fisher_salience, load_salience, save_salience, weight_salience
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


def test_save_load_roundtrip(tmp_path):
    s = weight_salience({"a": nn.Linear(3, 2), "b.c": nn.Linear(4, 5)})
    save_salience(s, str(tmp_path / "s.safetensors"))
    back = load_salience(str(tmp_path / "s.safetensors"))
    assert all(torch.equal(s[k], back[k]) for k in s)
