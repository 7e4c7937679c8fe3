"""Fisher salience in streamed quantization (sfmp_compile/stream_fisher.py): the layer-by-layer
backward gives the whole-model autograd's saliences bit for bit, and so the in-memory checkpoint."""
from __future__ import annotations

import pytest
import torch

from sfmp_compile import quantize, save_quantized
from sfmp_compile import stream_fisher
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.plan import find_linears
from sfmp_compile.salience import fisher_salience
from sfmp_compile.stream import stream_quantize
from tests.test_stream import OPTS, _same_checkpoint, _tied_bf16


def _sequences(n=3, t=16, batch=1):
    g = torch.Generator().manual_seed(2)
    return [torch.randint(0, 256, (batch, t), generator=g) for _ in range(n)]


@pytest.mark.parametrize("model", ["tiny", "tied_bf16", "untied_bf16"])
def test_streamed_fisher_equals_whole_model_backward(tmp_path, monkeypatch, model):
    """Every layer's streamed Fisher equals fisher_salience on the loaded model (torch.equal), and the
    checkpoints match tensor for tensor (clip search on, so E[x²] from the forward sweep is used too).
    bf16: both compute in fp32 (salience.calibration_dtype); the streamer keeps an untied input
    table in bf16 and casts what it looks up, a tied one is the head and is read in fp32."""
    from transformers import AutoModelForCausalLM
    src = str(tmp_path / "src")
    {"tiny": lambda: tiny_llama(layers=3), "tied_bf16": _tied_bf16,
     "untied_bf16": lambda: tiny_llama().to(torch.bfloat16)}[model]().save_pretrained(src)
    load = lambda: AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32 if model == "tiny" else torch.bfloat16).eval()
    cal = _sequences()
    seen = {}
    summarize = stream_fisher.summarize_layers

    def spy(weights, sal, config):
        seen.update(sal)
        return summarize(weights, sal, config)
    monkeypatch.setattr(stream_fisher, "summarize_layers", spy)
    stream_quantize(src, str(tmp_path / "str"), calibration=cal, salience="fisher", **OPTS)
    m = load()
    expect = fisher_salience(m, find_linears(m), cal)
    assert set(seen) == set(expect)
    differ = [n for n in expect if not torch.equal(seen[n], expect[n])]
    assert not differ, differ
    assert all(s.abs().sum() > 0 for s in expect.values())
    quantize(m, calibration=cal, salience="fisher", **OPTS)
    save_quantized(m, str(tmp_path / "mem"))
    _same_checkpoint(str(tmp_path / "mem"), str(tmp_path / "str"))


def test_streamed_fisher_leaves_no_offload_files(tmp_path, monkeypatch):
    """The layer inputs written during the forward sweep are gone afterwards (here: TMPDIR)."""
    src = str(tmp_path / "src")
    tiny_llama().save_pretrained(src)
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv("TMPDIR", str(spill))
    monkeypatch.setattr("tempfile.tempdir", None)
    stream_quantize(src, str(tmp_path / "o"), calibration=_sequences(2), salience="fisher", clip_search=False, **OPTS)
    assert list(spill.iterdir()) == []


def test_streamed_fisher_refuses_batched_items(tmp_path):
    src = str(tmp_path / "src")
    tiny_llama().save_pretrained(src)
    with pytest.raises(ValueError, match=r"one sequence per calibration item.*\[1, T\]"):
        stream_quantize(src, str(tmp_path / "o"), calibration=_sequences(batch=2), salience="fisher", **OPTS)
    assert not (tmp_path / "o").exists()


def test_smollm2_prefix_streamed_fisher_equals_in_memory(tmp_path):
    """The real model (tied head, 9 / 3 heads, trained weights), its first 2 decoder layers: the
    streamed Fisher checkpoint equals in-memory quantize of the same 2-layer model (the whole model:
    ``python benchmarks/stream_smollm2_check.py rtn fisher``)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from sfmp_compile.eval.models import smollm2_cache_path
    src = str(smollm2_cache_path())
    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers = 2
    m = AutoModelForCausalLM.from_pretrained(src, config=config, dtype=torch.float32).eval()
    cal = [torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    opts = dict(bits=2.75, group_size=64, block_rows=64)
    stream_quantize(src, str(tmp_path / "str"), calibration=cal, salience="fisher", num_layers=2, **opts)
    quantize(m, calibration=cal, salience="fisher", **opts)
    save_quantized(m, str(tmp_path / "mem"))
    _same_checkpoint(str(tmp_path / "mem"), str(tmp_path / "str"))
