import json
import os

import pytest
import torch
from torch import nn

from sfmp_compile import CheckpointError, load_quantized, quantize, save_quantized
from sfmp_compile.eval.models import tiny_llama
from tests.helpers import saved_tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_tiny(tmp_path_factory.mktemp("ck"))


def test_save_load_is_exact(saved):
    m, d, x = saved
    m2 = load_quantized(d)
    assert torch.equal(m(x).logits, m2(x).logits)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in os.listdir(d))  # no pickle


def test_load_into_skeleton(saved):
    m, d, x = saved
    skeleton = tiny_llama(seed=123)
    load_quantized(d, model=skeleton)
    assert torch.equal(m(x).logits, skeleton(x).logits)


def test_refuses_to_overwrite(saved):
    m, d, _ = saved
    with pytest.raises(CheckpointError, match="already exists"):
        save_quantized(m, d)


def test_refuses_unquantized_model(tmp_path):
    with pytest.raises(CheckpointError, match="no SFMPLinear"):
        save_quantized(nn.Linear(4, 4), str(tmp_path / "x"))


def _copy(d, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(d, out)
    return out


def test_truncated_weights(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors"):
        load_quantized(str(d))


def test_foreign_and_versioned_files(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    meta = json.loads((d / "sfmp.json").read_text())
    meta["format_version"] = 99
    (d / "sfmp.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_quantized(str(d))
    (d / "sfmp.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_quantized(str(d))
    (d / "sfmp.json").unlink()
    with pytest.raises(CheckpointError, match="not an SFMP checkpoint"):
        load_quantized(str(d))


def test_shape_and_dtype_mismatches_are_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file
    d = _copy(saved[1], tmp_path)
    t = load_file(str(d / "model.safetensors"))
    key = next(k for k in t if k.endswith(".scales"))
    t[key] = t[key].float()
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="scales must be torch.float16"):
        load_quantized(str(d))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_quantized(saved[1], model=tiny_llama(hidden=96, intermediate=160))


# --- hostile checkpoints (issue 13): every one is a CheckpointError, never a crash or a wrong answer


def _edit_marker(d, edit):
    meta = json.loads((d / "sfmp.json").read_text())
    edit(meta)
    (d / "sfmp.json").write_text(json.dumps(meta))


def _edit_tensors(d, edit, fix_checksums=False):
    """Rewrite model.safetensors through ``edit``; with fix_checksums the sfmp.json digests are
    recomputed too, so only the structural checks stand between the edit and the model."""
    from safetensors.torch import load_file, save_file
    from sfmp_compile.checkpoint import tensor_digest
    t = load_file(str(d / "model.safetensors"))
    edit(t)
    save_file(t, str(d / "model.safetensors"))
    if fix_checksums:
        _edit_marker(d, lambda m: m.update(checksums={k: tensor_digest(v) for k, v in t.items()}))


def _edit_config(d, resign=True, **kw):
    """Edit config.json; resign also updates its digest in sfmp.json, so the checks behind the
    digest are what is tested."""
    import hashlib
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))
    if resign:
        digest = hashlib.sha256((d / "config.json").read_bytes()).hexdigest()
        _edit_marker(d, lambda m: m.update(files={"config.json": digest}))


def test_config_edit_that_changes_logits_is_refused(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    _edit_config(d, resign=False, rms_norm_eps=0.5)  # well-formed, same shapes, different logits
    with pytest.raises(CheckpointError, match="config.json does not match its checksum"):
        load_quantized(str(d))
    load_quantized(str(d), model=tiny_llama())  # a given model does not read config.json


@pytest.mark.parametrize("vocab", [4_000_000, 10**9])
def test_huge_config_is_refused_before_allocating(saved, tmp_path, vocab):
    import resource
    d = _copy(saved[1], tmp_path)
    _edit_config(d, vocab_size=vocab)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    with pytest.raises(CheckpointError, match=r"weight has shape \(256, 64\), the model expects"):
        load_quantized(str(d))
    # the 4M-vocab skeleton alone is 2 x 1 GiB of fp32: the peak must not have moved by that much
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024


def test_config_claiming_more_layers_than_stored_tensors_is_refused_before_building(saved, tmp_path):
    """issue 13's hostile run: num_hidden_layers = 10**6 (re-signed) hung the load building a
    million-layer skeleton on the meta device."""
    import time
    d = _copy(saved[1], tmp_path)
    _edit_config(d, num_hidden_layers=10**6)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"num_hidden_layers=1000000 but the checkpoint stores only \d+ tensors"):
        load_quantized(str(d))
    assert time.perf_counter() - t0 < 20


def test_unbuildable_config_is_a_checkpoint_error(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    _edit_config(d, hidden_size="wide")
    with pytest.raises(CheckpointError, match="config.json does not describe a model"):
        load_quantized(str(d))


def test_tampered_tie_cannot_overwrite_a_real_tensor(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    _edit_marker(d, lambda m: m.update(tied={"lm_head.weight": "model.embed_tokens.weight"}))
    with pytest.raises(CheckpointError, match="stored and also declared tied"):
        load_quantized(str(d))
    # and with lm_head removed from the file, the tie is still not one the (untied) model has
    _edit_tensors(d, lambda t: t.pop("lm_head.weight"), fix_checksums=True)
    with pytest.raises(CheckpointError, match="not a tie of the model"):
        load_quantized(str(d))


def test_undeclared_bias_is_refused(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    _edit_tensors(d, lambda t: t.update({"model.layers.0.mlp.up_proj.bias": torch.ones(128)}), fix_checksums=True)
    with pytest.raises(CheckpointError, match="up_proj.bias is stored but the layer declares no bias"):
        load_quantized(str(d))
    # declaring it does not help: the model's layer has no bias
    _edit_marker(d, lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(bias=True))
    with pytest.raises(CheckpointError, match="declares bias=True but the model's layer has no bias"):
        load_quantized(str(d))


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    """GPT-2: Conv1D layers with biases and lm_head tied to wte."""
    from sfmp_compile.eval.models import tiny_gpt2
    m = tiny_gpt2()
    quantize(m, bits=2.5, salience="weight", block_rows=16, group_size=32)
    d = str(tmp_path_factory.mktemp("ck") / "gpt2")
    save_quantized(m, d)
    return m, d


def test_gpt2_roundtrip_keeps_the_tie(saved_gpt2):
    m, d = saved_gpt2
    x = torch.randint(0, 256, (1, 12))
    m2 = load_quantized(d)
    assert torch.equal(m(x).logits, m2(x).logits)
    assert m2.lm_head.weight is m2.transformer.wte.weight


@pytest.mark.parametrize("bias", [lambda b: b[:-1], lambda b: b.half(), lambda b: b.int()])
def test_wrong_shape_or_dtype_bias_is_refused(saved_gpt2, tmp_path, bias):
    d = _copy(saved_gpt2[1], tmp_path)
    key = "transformer.h.0.attn.c_attn.bias"
    _edit_tensors(d, lambda t: t.update({key: bias(t[key])}), fix_checksums=True)
    with pytest.raises(CheckpointError, match="c_attn.bias|mix dtypes"):
        load_quantized(str(d))
    from sfmp_compile.eval.models import tiny_gpt2
    with pytest.raises(CheckpointError, match="c_attn.bias"):  # into a given model, named exactly
        load_quantized(str(d), model=tiny_gpt2())


@pytest.mark.parametrize("key", ["transformer.h.0.attn.c_attn.bias", "transformer.ln_f.weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_parameters_are_refused(saved_gpt2, tmp_path, key, value):
    """issue 13's hostile run: a NaN bias (checksums recomputed) loaded and turned every logit NaN."""
    from sfmp_compile.eval.models import tiny_gpt2
    d = _copy(saved_gpt2[1], tmp_path)
    _edit_tensors(d, lambda t: t[key].view(-1).__setitem__(0, value), fix_checksums=True)
    for model in (None, tiny_gpt2()):
        with pytest.raises(CheckpointError, match=f"{key} holds NaN or infinite values"):
            load_quantized(str(d), model=model)


def test_both_halves_of_a_tie_stored_is_refused(saved_gpt2, tmp_path):
    d = _copy(saved_gpt2[1], tmp_path)
    _edit_tensors(d, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}), fix_checksums=True)
    _edit_marker(d, lambda m: m.update(tied={}))
    with pytest.raises(CheckpointError, match="one tied parameter"):
        load_quantized(str(d))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(layers=[1, 2]), "'layers' must be"),
    (lambda m: m.update(layers={"model.layers.0.mlp.up_proj": 7}), "geometry must be an object"),
    (lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(block_rows="16"), "block_rows must be an integer"),
    (lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(bias="no"), "'bias' must be true or false"),
    (lambda m: m["layers"]["model.layers.0.mlp.up_proj"].pop("group_size"), r"lacks geometry fields \['group_size'\]"),
    (lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(shift=1), r"unknown geometry fields \['shift'\]"),
    (lambda m: m.update(tied=[["a", "b"]]), "'tied' must be"),
    (lambda m: m.update(tied={"a": 3}), "'tied' must be"),
    (lambda m: m.update(checksums="abc"), "'checksums' must be"),
    (lambda m: m.update(files={"../etc/passwd": "x"}), "'files' must be"),
    (lambda m: m.update(quant_config=[1]), "'quant_config' must be"),
    (lambda m: m["quant_config"].update(future_knob=1), r"unknown keys \['future_knob'\].*knows"),
    (lambda m: m["quant_config"].update(skip=5), "quant_config is invalid"),
    (lambda m: m["quant_config"].update(bits="many"), "quant_config is invalid"),
    (lambda m: m.update(extra={}), r"unknown keys \['extra'\]"),
    (lambda m: m.update(format_version="1"), "format_version must be a JSON integer, got '1'"),
    (lambda m: m.update(format_version=1.0), "format_version must be a JSON integer"),
    (lambda m: m.update(format_version=True), "format_version must be a JSON integer"),
    (lambda m: m.update(format_version=3), "written by a newer build.*reads versions up to 2"),
    (lambda m: m.update(format_version=0), "version 0 is not supported"),
])
def test_corrupt_marker_values_are_named(saved, tmp_path, edit, message):
    d = _copy(saved[1], tmp_path)
    _edit_marker(d, edit)
    with pytest.raises(CheckpointError, match=message):
        load_quantized(str(d))


def test_deep_json_and_huge_numbers(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    meta = (d / "sfmp.json").read_text()
    (d / "sfmp.json").write_text(meta[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_quantized(str(d))
    (d / "sfmp.json").write_text(meta.replace('"format_version": 2', '"format_version": ' + "9" * 5000))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_quantized(str(d))


@pytest.mark.parametrize("name", ["sfmp.json", "model.safetensors", "config.json"])
def test_fifo_is_refused_without_blocking(saved, tmp_path, name):
    import threading
    d = _copy(saved[1], tmp_path)
    (d / name).unlink()
    os.mkfifo(d / name)
    out = {}

    def run():
        try:
            load_quantized(str(d))
        except Exception as e:  # recorded, asserted below
            out["e"] = e

    th = threading.Thread(target=run, daemon=True)  # a blocked open() must fail the test, not hang it
    th.start()
    th.join(60)
    assert not th.is_alive(), "load_quantized blocked on a FIFO"
    assert isinstance(out.get("e"), CheckpointError) and "not a regular file" in str(out["e"])


def test_edited_tensor_bytes_fail_the_checksum(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    key = "model.layers.1.mlp.down_proj.qweight"
    _edit_tensors(d, lambda t: t[key].__setitem__(0, t[key][0] ^ 1))  # a valid code, a different weight
    with pytest.raises(CheckpointError, match=f"{key} does not match its checksum"):
        load_quantized(str(d))


def test_table_edits_are_named_even_with_fixed_checksums(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    key = "model.layers.0.self_attn.q_proj.segment_ptr"
    _edit_tensors(d, lambda t: t[key][:, 9].fill_(1000), fix_checksums=True)
    with pytest.raises(CheckpointError, match=r"segment_ptr\[0\]"):
        load_quantized(str(d))


def test_mixed_float_dtypes_are_refused(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    _edit_tensors(d, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].half()}), fix_checksums=True)
    with pytest.raises(CheckpointError, match="mix dtypes"):
        load_quantized(str(d))
    with pytest.raises(CheckpointError, match="model.norm.weight is torch.float16, the model expects torch.float32"):
        load_quantized(str(d), model=tiny_llama())


def test_refused_load_leaves_the_given_model_untouched(saved, tmp_path):
    d = _copy(saved[1], tmp_path)
    _edit_tensors(d, lambda t: t.pop("lm_head.weight"), fix_checksums=True)
    skeleton = tiny_llama(seed=5)
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_quantized(str(d), model=skeleton)
    after = skeleton.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("cpu_kernel", ["int4", "reference"])
def test_save_after_prepare_for_writes_the_same_checkpoint(saved, tmp_path, cpu_kernel):
    """Preparing layers for a CPU kernel (int4 layout, or the reference) changes what is resident,
    never what is saved: the checkpoint is bit-identical and loads to the original's outputs."""
    from sfmp_compile.linear import SFMPLinear
    m, d, x = saved
    m2 = load_quantized(d)
    for mod in m2.modules():
        if isinstance(mod, SFMPLinear):
            mod.prepare_for("cpu", cpu_kernel)
    d2 = str(tmp_path / "again")
    save_quantized(m2, d2)
    a, b = load_quantized(d).state_dict(), load_quantized(d2).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(load_quantized(d2)(x).logits, m(x).logits)
