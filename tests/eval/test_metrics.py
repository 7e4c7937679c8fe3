import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sfmp_compile.eval.metrics import (greedy_continuation, kl_divergence, output_sqnr, perplexity, score,
                                       sqnr_db, window_logits)
from sfmp_compile.eval.models import tiny_gpt2, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(0))


def perturbed(model, scale=0.05, seed=1):
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return noisy


def test_perplexity_matches_the_models_own_loss(llama, tokens):
    # 100 tokens, context 32 -> windows 32, 32, 32, 4; HF's loss averages within one window.
    windows = [tokens[:, i:i + 32] for i in range(0, 100, 32)]
    with torch.no_grad():
        losses = [llama(w, labels=w).loss.item() for w in windows]
    counts = [w.shape[1] - 1 for w in windows]
    expected = math.exp(sum(l * c for l, c in zip(losses, counts)) / sum(counts))
    assert perplexity(llama, tokens, context=32) == pytest.approx(expected, rel=1e-5)
    assert perplexity(llama, tokens, context=32, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert perplexity(llama, tokens[0], context=32) == pytest.approx(expected, rel=1e-5)  # 1-D accepted


def test_perplexity_on_gpt2_and_bad_input(tokens):
    gpt2 = tiny_gpt2()
    ppl = perplexity(gpt2, tokens, context=50)
    with torch.no_grad():
        loss = (gpt2(tokens[:, :50], labels=tokens[:, :50]).loss + gpt2(tokens[:, 50:], labels=tokens[:, 50:]).loss) / 2
    assert ppl == pytest.approx(math.exp(loss.item()), rel=1e-5)
    with pytest.raises(ValueError):
        perplexity(gpt2, tokens.float())
    with pytest.raises(ValueError):
        perplexity(gpt2, tokens.repeat(2, 1))


def test_perplexity_restores_training_mode(tokens):
    model = tiny_llama().train()
    perplexity(model, tokens, context=64)
    assert model.training


def test_kl_divergence_is_zero_for_self_and_positive_when_perturbed(llama, tokens):
    assert kl_divergence(llama, llama, tokens, context=32) == pytest.approx(0.0, abs=1e-7)
    noisy = perturbed(llama)
    kl = kl_divergence(llama, noisy, tokens, context=32)
    with torch.no_grad():
        ref = F.log_softmax(llama(tokens[:, :32]).logits, -1)
        app = F.log_softmax(noisy(tokens[:, :32]).logits, -1)
    first_window = (ref.exp() * (ref - app)).sum(-1).mean().item()
    assert kl > 0 and kl_divergence(llama, noisy, tokens[:, :32], context=32) == pytest.approx(first_window, rel=1e-4)
    assert kl_divergence(llama, perturbed(llama, scale=0.3), tokens, context=32) > kl


def test_sqnr_db_math():
    x = torch.ones(100)
    assert sqnr_db(x, x.clone()) == math.inf
    assert sqnr_db(x, x + 0.1) == pytest.approx(20.0)  # signal 100, noise 1
    assert sqnr_db(x, x * 0.5) == pytest.approx(10 * math.log10(4))
    assert sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf
    assert sqnr_db(x.half(), (x + 0.01).bfloat16()) > 30


def test_output_sqnr_matches_sqnr_of_concatenated_logits(llama, tokens):
    assert output_sqnr(llama, llama, tokens, context=32) == math.inf
    noisy = perturbed(llama)
    windows = [tokens[:, i:i + 32] for i in range(0, 100, 32)]
    with torch.no_grad():
        ref = torch.cat([llama(w).logits[0] for w in windows])
        app = torch.cat([noisy(w).logits[0] for w in windows])
    assert output_sqnr(llama, noisy, tokens, context=32) == pytest.approx(sqnr_db(ref, app), rel=1e-6)


def test_greedy_continuation_returns_only_new_text(llama):
    tok = tiny_tokenizer()
    out = greedy_continuation(llama, tok, "Hello", max_new_tokens=5)
    assert isinstance(out, str) and len(out) <= 5 and not out.startswith("Hello")
    assert out == greedy_continuation(llama, tok, "Hello", max_new_tokens=5)  # deterministic
    ids = tok("Hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        manual = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                pad_token_id=tok.pad_token_id)
    assert out == tok.decode(manual[0, ids.shape[1]:], skip_special_tokens=True)


def test_score_is_every_metric_in_one_pass_and_takes_cached_reference_logits(llama, tokens):
    noisy = perturbed(llama)
    # perplexity / kl_divergence / output_sqnr are score's fields, checked against independent
    # computations above; here: the reference's PPL, and a cached reference equals a live one.
    s = score(noisy, tokens, context=32, reference=llama)
    assert s["kl"] > 0 and math.isfinite(s["sqnr_db"])

    def own_ppl(model):  # HF's loss averages within a window; weight each by its predicted tokens
        with torch.no_grad():
            nll = sum(model(tokens[:, i:i + 32], labels=tokens[:, i:i + 32]).loss.item() * (min(32, 100 - i) - 1)
                      for i in range(0, 100, 32))
        return math.exp(nll / 96)

    assert s["ppl"] == pytest.approx(own_ppl(noisy), rel=1e-5)
    assert s["ref_ppl"] == pytest.approx(own_ppl(llama), rel=1e-5)
    cached = window_logits(llama, tokens, context=32)
    assert [c.shape[1] for c in cached] == [32, 32, 32, 4]
    assert score(noisy, tokens, context=32, reference=cached) == pytest.approx(s, rel=1e-9)
    assert score(cached, tokens, context=32)["ppl"] == pytest.approx(s["ref_ppl"], rel=1e-9)
    assert score(noisy, tokens, context=32) == {"ppl": s["ppl"], "ref_ppl": None, "kl": None, "sqnr_db": None}
    with pytest.raises(ValueError, match="cached logits"):
        score(noisy, tokens, context=64, reference=cached)  # other windows
