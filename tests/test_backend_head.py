"""skip_bits: lm_head (and an embedding tied to it) quantized at a fixed width outside SFMP's budget."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sfmp_compile import sfmp_backend
from sfmp_compile.config import QuantConfig, SFMPConfigError
from sfmp_compile.plan import fixed_width_plan
from sfmp_compile.quantize import quantize_weight


def _tied_llama():
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("cpu_kernel", ["reference", "packed"])
def test_tied_head_is_8_bit_and_the_embedding_reads_it(cpu_kernel):
    torch._dynamo.reset()
    m = _tied_llama()
    assert m.lm_head.weight is m.model.embed_tokens.weight
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    q = copy.deepcopy(m)
    be = sfmp_backend(bits=3.0, salience="weight", block_rows=32, group_size=32, release_weights=True, model=q,
                      inner="aot_eager", cpu_kernel=cpu_kernel)
    with torch.no_grad():
        out = torch.compile(q, backend=be)(ids).logits
    assert list(be.fixed_layers) == ["lm_head"] and "lm_head" not in be.plan.layers
    assert abs(be.plan.average_bits() - 3.0) < 1e-9  # the head sits outside the budget
    head = be.packed_weights()["lm_head"]
    assert set(head.bits.flatten().tolist()) == {8} and not head.row_perm.numel() and not head.col_perm.numel()
    assert any("tied embedding reads the quantized weight" in n for n in be.reports[0].notes)
    assert q.model.embed_tokens.weight.untyped_storage().nbytes() == 0  # the float table is gone
    # the same model with only the budget layers quantized, and W-hat of the head in both roles
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin.lm_head.weight.copy_(head.dequantize())
        for name, p in be.packed_weights().items():
            if name != "lm_head":
                twin.get_submodule(name).weight.copy_(p.dequantize())
        ref = twin(ids).logits
    if cpu_kernel == "reference":
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        from sfmp_compile.eval.metrics import sqnr_db
        assert sqnr_db(ref, out) > 30


def test_skip_bits_validation_and_float_option():
    assert QuantConfig().skip_bits == (("lm_head", 8),)
    assert QuantConfig(skip_bits={}).skip_bits == () and QuantConfig(skip_bits=None).skip_bits == ()
    assert QuantConfig.from_dict(QuantConfig(skip_bits={"lm_head": 6}).to_dict()).skip_bits == (("lm_head", 6),)
    for bad in ({"lm_head": 1}, {"lm_head": 9}, {"lm_head": 8.0}, {3: 8}, 5):
        with pytest.raises(SFMPConfigError, match="skip_bits"):
            QuantConfig(skip_bits=bad)


def test_fixed_width_plan_quantizes_8_bit_within_a_step():
    w = torch.randn(70, 100)
    cfg = QuantConfig(block_rows=32, group_size=32, clip_search=False)
    p = quantize_weight(w, fixed_width_plan(70, 100, 8, cfg), cfg)
    err = (p.dequantize() - w).abs()
    step = (p.scales.float().t().repeat_interleave(32, 1)[:, :100])
    assert bool((err <= step + 1e-6).all())  # half a step, plus the integer zero point's shift of the grid
