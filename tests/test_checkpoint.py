import json
import os

import pytest
import torch
from torch import nn

from sfmp_compile import CheckpointError, load_quantized, quantize, save_quantized
from sfmp_compile.eval.models import tiny_llama


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    m = tiny_llama()
    x = torch.randint(0, 256, (2, 16))
    quantize(m, bits=2.75, calibration=[x], block_rows=16, group_size=32)
    d = str(tmp_path_factory.mktemp("ck") / "model")
    save_quantized(m, d)
    return m, d, x


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
