"""eval.decode.StaticDecoder: a compiled static-cache decode that equals the model's own greedy decode."""
import pytest
import torch

from sfmp_compile import sfmp_backend
from sfmp_compile.eval.decode import StaticDecoder
from sfmp_compile.eval.models import tiny_llama


def _greedy(model, ids, n):
    out = ids
    with torch.no_grad():
        for _ in range(n):
            nxt = model(out).logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
    return out


@pytest.mark.parametrize("backend", ["eager", "sfmp"])
def test_static_decoder_equals_greedy_and_does_not_recompile(backend):
    torch._dynamo.reset()
    m = tiny_llama()
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    be = sfmp_backend(bits=3.0, inner="aot_eager", cpu_kernel="reference", block_rows=32, group_size=32,
                      skip_bits={}, model=m) if backend == "sfmp" else "eager"
    dec = StaticDecoder(m, max_len=16, backend=be)
    got = dec.generate(ids, 5)
    if backend == "sfmp":  # the same quantized weights, eager: the reference
        from tests.passes._helpers import dequantized_twin
        m = dequantized_twin(m, be.plan)
    assert torch.equal(got, _greedy(m, ids, 5))
    # decode from a truncated cache: the same logits as the first time at that position
    dec.truncate(6)
    again = dec(got[:, 6:7])
    dec.truncate(6)
    assert torch.equal(dec(got[:, 6:7]), again)
    dec.reset()
    assert torch.equal(dec.generate(ids, 5), got)  # a reset cache decodes the same again
    if backend == "sfmp":
        assert len(be.reports) == 2  # prompt length and one token: one graph each, no per-position graph
    with pytest.raises(ValueError, match="exceed the cache length"):
        dec(torch.zeros(1, 20, dtype=torch.long))


@pytest.mark.parametrize("decode_kernel", [True, False])
def test_logits_equal_the_full_forward(monkeypatch, decode_kernel):
    """Prefill and one-token steps (CPU: the decode-attention kernel over a cache with empty slots;
    last-position logits only) give the logits of the model's own forward over the whole prefix."""
    from sfmp_compile.ops import attention_cpu
    torch._dynamo.reset()
    calls = []
    real = attention_cpu.decode_attention
    monkeypatch.setattr(attention_cpu, "decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = tiny_llama()
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    dec = StaticDecoder(m, max_len=24, backend="eager", decode_kernel=decode_kernel)
    with torch.no_grad():
        full = m(ids).logits
    torch.testing.assert_close(dec(ids[:, :6]), full[:, 5], rtol=1e-5, atol=1e-5)
    assert not calls  # prefill keeps SDPA
    for t in range(6, 9):
        torch.testing.assert_close(dec(ids[:, t : t + 1]), full[:, t], rtol=1e-5, atol=1e-5)
    assert len(calls) == (3 * m.config.num_hidden_layers if decode_kernel and attention_cpu.available() else 0)


def test_lean_inductor_config_rejects_unknown_names():
    from sfmp_compile.eval.decode import LEAN_INDUCTOR, lean_inductor_config
    assert lean_inductor_config() == LEAN_INDUCTOR
    assert lean_inductor_config({"size_asserts": True})["size_asserts"] is True
    with pytest.raises(ValueError, match="unknown torch._inductor.config names.*no_such_option"):
        lean_inductor_config({"no_such_option": 1})


def test_static_decoder_compiles_sfmp_graphs_without_asserts(tmp_path):
    """Through sfmp_backend's Inductor: the lean settings reach the inner compile (no per-call size
    asserts in the wrapper), the decode equals the same quantized model compiled without them, and
    one-token steps reuse one graph."""
    torch._dynamo.reset()
    m = tiny_llama(layers=1)
    ids = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(1))
    be = sfmp_backend(bits=3.0, block_rows=32, group_size=32, skip_bits={}, model=m, dump_dir=str(tmp_path))
    dec = StaticDecoder(m, max_len=12, backend=be)
    got = dec.generate(ids, 4)
    code = "\n".join(p.read_text() for p in tmp_path.glob("graph_*/kernels.py"))
    assert "def call(" in code and "assert_size_stride(" not in code
    assert len(be.reports) == 2  # prompt and one token
    checked = StaticDecoder(m, max_len=12, backend=be, inductor_config={"size_asserts": True})
    assert torch.equal(checked.generate(ids, 4), got)
    assert len(be.reports) == 4  # its own graphs, not the first decoder's
    code = "\n".join(p.read_text() for p in sorted(tmp_path.glob("graph_*/kernels.py"))[2:])
    assert "assert_size_stride(" in code  # the override reached the compile too
