"""Format v1 checkpoints still load, and format v2 stores the same layers bit for bit.

tests/fixtures/ckpt_v1 was written by the v1 writer (main at 4e7b7b4: tiny_llama(), quantize(bits=2.5,
salience="weight", block_rows=16, group_size=32), save_quantized), with its logits on fixed ids in
ckpt_v1_logits.safetensors."""
import json
import os
import shutil

import torch
from safetensors.torch import load_file

from sfmp_compile import SFMPLinear, load_quantized, save_quantized
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.format import PackedWeight
from sfmp_compile.permcodec import STORED_TENSORS, TAGS

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
V1 = os.path.join(HERE, "ckpt_v1")


def test_v1_checkpoint_loads_and_resaves_as_v2(tmp_path):
    assert json.load(open(os.path.join(V1, "sfmp.json")))["format_version"] == 1
    stored = load_file(os.path.join(V1, "model.safetensors"))
    expect = load_file(os.path.join(HERE, "ckpt_v1_logits.safetensors"))
    m1 = load_quantized(V1)
    with torch.no_grad():
        out1 = m1(expect["ids"]).logits
    torch.testing.assert_close(out1, expect["logits"], rtol=1e-5, atol=1e-5)  # another CPU may round differently
    layers = {n: mod for n, mod in m1.named_modules() if isinstance(mod, SFMPLinear)}
    assert layers and any(stored[f"{n}.col_perm"].numel() for n in layers)
    for n, mod in layers.items():  # in memory: exactly the v1 tensors, int32 permutations included
        for f in PackedWeight.TENSOR_FIELDS:
            assert torch.equal(getattr(mod.packed, f), stored[f"{n}.{f}"]), (n, f)
    d = str(tmp_path / "v2")
    save_quantized(m1, d)
    meta = json.load(open(os.path.join(d, "sfmp.json")))
    assert meta["format_version"] == 2 and all(g["version"] == 2 for g in meta["layers"].values())
    t2 = load_file(os.path.join(d, "model.safetensors"))
    for n in layers:
        assert f"{n}.row_perm" not in t2 and f"{n}.col_perm" not in t2
        assert all(f"{n}.{f}" in t2 for f in STORED_TENSORS)
        for f in ("row_perm_code", "col_perm_code"):  # regrouped RTN orders: pattern keys or nothing
            c = t2[f"{n}.{f}"]
            assert c.numel() == 0 or TAGS[int(c[0])] == "pattern"
    v1_perm = sum(stored[f"{n}.{f}"].numel() * 4 for n in layers for f in ("row_perm", "col_perm"))
    v2_perm = sum(t2[f"{n}.{f}"].numel() for n in layers for f in ("row_perm_code", "col_perm_code"))
    assert v2_perm * 8 < v1_perm  # > 8x smaller
    m2 = load_quantized(d)
    with torch.no_grad():
        assert torch.equal(m2(expect["ids"]).logits, out1)  # bit-identical outputs
    for n in layers:
        a, b = m1.get_submodule(n).packed, m2.get_submodule(n).packed
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in PackedWeight.TENSOR_FIELDS)


def test_v1_loads_into_a_skeleton(tmp_path):
    d = tmp_path / "v1"
    shutil.copytree(V1, d)
    sk = tiny_llama(seed=5)
    load_quantized(str(d), model=sk)
    ref = load_quantized(V1)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(sk(ids).logits, ref(ids).logits)


def test_gptq_act_order_is_stored_packed(tmp_path):
    """GPTQ keeps the salience sort (a real permutation): v2 stores it at ceil(log2 n) bits per
    entry (6 for the 64-wide tiny model), outputs unchanged."""
    from sfmp_compile import quantize
    torch.manual_seed(0)
    m = tiny_llama()
    x = torch.randint(0, 256, (2, 16))
    quantize(m, bits=2.5, calibration=[x], quantizer="gptq", block_rows=16, group_size=32)
    d = str(tmp_path / "g")
    save_quantized(m, d)
    t = load_file(os.path.join(d, "model.safetensors"))
    tags = {TAGS[int(v[0])] for k, v in t.items() if k.endswith("_perm_code") and v.numel()}
    assert "packed" in tags and "int32" not in tags
    m2 = load_quantized(d)
    with torch.no_grad():
        assert torch.equal(m(x).logits, m2(x).logits)
