"""transformers integration (hf_quantizer.py): from_pretrained / save_pretrained / generate on SFMP checkpoints."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from sfmp_compile import CheckpointError, SFMPHfConfig, SFMPLinear, load_quantized, quantize, save_quantized, sfmp_backend
from sfmp_compile.checkpoint import HF_WEIGHTS_TRIPWIRE
from sfmp_compile.eval.models import tiny_llama
from tests.helpers import saved_tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    _, d, x = saved_tiny(tmp_path_factory.mktemp("hf"))
    return d, x


def _same_model(a, b, x):
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_from_pretrained_is_load_quantized(saved):
    d, x = saved
    hf = AutoModelForCausalLM.from_pretrained(d)
    assert isinstance(hf.model.layers[0].self_attn.q_proj, SFMPLinear)
    assert hf.config.quantization_config.quant_method == "sfmp" and hf.is_quantized
    ref = load_quantized(d)
    assert {n: type(m) for n, m in hf.named_modules()} == {n: type(m) for n, m in ref.named_modules()}
    _same_model(hf, ref, x)


def test_config_json_routes_to_sfmp(saved):
    cfg = json.loads(open(os.path.join(saved[0], "config.json")).read())
    assert cfg["quantization_config"] == {"quant_method": "sfmp", "format_version": 2}
    assert cfg["transformers_weights"] == HF_WEIGHTS_TRIPWIRE and cfg["dtype"] == "float32"


def test_without_import_the_load_fails_naming_sfmp(saved):
    """transformers alone only warns about an unknown quant_method; the tripwire makes it fail."""
    code = ("import sys, transformers\n"
            "transformers.logging.set_verbosity_warning()\n"
            "try:\n"
            f"    transformers.AutoModelForCausalLM.from_pretrained({saved[0]!r})\n"
            "except Exception as e:\n"
            "    print('ERROR', type(e).__name__, e)\n"
            "    assert 'sfmp_compile' not in sys.modules\n"
            "    sys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd="/")
    out = r.stdout + r.stderr
    assert r.returncode == 3, out
    assert "Unknown quantization type, got sfmp" in out
    assert "ERROR FileNotFoundError" in out and "import-sfmp_compile-before-from_pretrained" in out


def test_save_pretrained_round_trip(saved, tmp_path):
    d, x = saved
    hf = AutoModelForCausalLM.from_pretrained(d)
    out = tmp_path / "again"
    out.mkdir()
    (out / "tokenizer_config.json").write_text("{}")  # saved there first: save_pretrained keeps it
    hf.save_pretrained(out)
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                              "sfmp.json", "tokenizer_config.json"}
    assert json.loads((out / "config.json").read_text())["transformers_weights"] == HF_WEIGHTS_TRIPWIRE
    ref = load_quantized(d)
    _same_model(ref, AutoModelForCausalLM.from_pretrained(out), x)
    _same_model(ref, load_quantized(str(out)), x)
    hf.save_pretrained(out)  # into its own earlier output: replaced, still loads
    _same_model(ref, AutoModelForCausalLM.from_pretrained(out), x)
    with pytest.raises(ValueError, match="does not support \\['push_to_hub'\\]"):
        hf.save_pretrained(tmp_path / "hub", push_to_hub=True)


def _tamper_bytes(d):
    from safetensors.torch import load_file, save_file
    t = load_file(os.path.join(d, "model.safetensors"))
    k = next(k for k in t if k.endswith(".qweight"))
    t[k] = t[k] ^ 1
    save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def _tamper_config(d):
    p = os.path.join(d, "config.json")
    cfg = json.loads(open(p).read())
    cfg["rms_norm_eps"] = 0.5  # same shapes, different logits; its digest in sfmp.json no longer matches
    open(p, "w").write(json.dumps(cfg))


def _truncate(d):
    p = os.path.join(d, "model.safetensors")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])


def _drop_layer_geometry(d):
    p = os.path.join(d, "sfmp.json")
    meta = json.loads(open(p).read())
    meta["layers"]["model.layers.0.mlp.up_proj"].pop("group_size")
    open(p, "w").write(json.dumps(meta))


@pytest.mark.parametrize("tamper", [_tamper_bytes, _tamper_config, _truncate, _drop_layer_geometry])
def test_tampered_checkpoint_is_the_same_checkpoint_error(saved, tmp_path, tamper):
    d = str(tmp_path / "bad")
    shutil.copytree(saved[0], d)
    tamper(d)
    with pytest.raises(CheckpointError) as want:
        load_quantized(d)
    with pytest.raises(CheckpointError) as got:
        AutoModelForCausalLM.from_pretrained(d)
    assert str(got.value) == str(want.value)


def test_a_different_dtype_is_refused(saved):
    with pytest.raises(CheckpointError, match="pass no dtype="):
        AutoModelForCausalLM.from_pretrained(saved[0], dtype=torch.bfloat16)


def test_a_float_model_is_not_quantized_at_load(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "float")
    with pytest.raises(ValueError, match="pre-quantized"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=SFMPHfConfig())


def test_registration_is_idempotent():
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
    from sfmp_compile.hf_quantizer import SFMPHfQuantizer, register
    register()
    assert AUTO_QUANTIZER_MAPPING["sfmp"] is SFMPHfQuantizer


def test_generate_eager_and_compiled(saved):
    d, _ = saved
    ids = torch.randint(2, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
    hf = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        eager = hf.generate(ids, **kw)
        assert torch.equal(eager, load_quantized(d).generate(ids, **kw))
        # skip_bits={}: the float lm_head quantize() left stays float, as in the checkpoint (by
        # default the backend would quantize it to 8 bits: another model)
        be = sfmp_backend(inner="aot_eager", skip_bits={})
        hf.compile(backend=be)  # in place, so generate() calls the compiled module
        compiled = hf.generate(ids, **kw)
    assert eager.shape[1] == ids.shape[1] + 4
    assert torch.equal(compiled, eager)
    assert be.reports and be.quantize_calls == 0  # compiled from the checkpoint's layers, nothing re-quantized


@pytest.mark.slow
def test_real_smollm2_from_pretrained_and_generate(tmp_path):
    """SmolLM2 (tied embedding, real tokenizer files, ragged 576-wide blocks): layer 0 quantized
    (enough to exercise the path; the whole model takes minutes), the rest float."""
    from transformers import AutoTokenizer
    from sfmp_compile.eval.models import load_model
    model, tok = load_model("smollm2")
    quantize(model, bits=3.5, salience="weight", clip_search=False, skip=("lm_head", "model.layers.[1-9]*"))
    d = save_quantized(model, str(tmp_path / "smol"), tokenizer=tok)
    hf = AutoModelForCausalLM.from_pretrained(d)
    ref = load_quantized(d)
    assert isinstance(hf.model.layers[0].mlp.down_proj, SFMPLinear) and hf.lm_head.weight is hf.model.embed_tokens.weight
    tok = AutoTokenizer.from_pretrained(d)
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(hf(**enc).logits, ref(**enc).logits)
        got = hf.generate(**enc, max_new_tokens=5, do_sample=False)
        assert torch.equal(got, ref.generate(**enc, max_new_tokens=5, do_sample=False))
    assert "Paris" in tok.decode(got[0, enc.input_ids.shape[1]:])
