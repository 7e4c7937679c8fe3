"""Checkpoint fuzzer (issue 13): one mutation of a saved checkpoint per example.

The contract: ``load_quantized`` either raises CheckpointError, or gives a model whose logits on
fixed input ids are bit-identical to the saved model's. Never another exception type (at load or
at the first forward), never NaN. Mutations that re-sign the tensors (recompute sfmp.json's
checksums) can build a different but well-formed model; for those the contract is the weaker
"CheckpointError, or a model whose forward runs and is finite".
"""
import json
import os
import random
import shutil
import struct
import tempfile

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file

from sfmp_compile import CheckpointError, load_quantized, quantize, save_quantized
from sfmp_compile.checkpoint import tensor_digest
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.permcodec import STORED_TENSORS, decode
from sfmp_compile.blocks import BlockGrid
from tests.helpers import edit_code

IDS = torch.tensor([[0, 5, 17, 42, 99, 128, 200, 255]])
FIELDS = STORED_TENSORS  # format v2: the permutations as row_perm_code / col_perm_code


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = tiny_llama()
    quantize(m, bits=2.5, salience="weight", block_rows=16, group_size=32)
    d = str(tmp_path_factory.mktemp("fuzz") / "model")
    save_quantized(m, d)
    with torch.no_grad():
        ref = load_quantized(d)(IDS).logits
    meta = json.loads(open(os.path.join(d, "sfmp.json")).read())
    return d, ref, meta


def _check(d, ref, resigned=False):
    try:
        m = load_quantized(d)
    except CheckpointError:
        return "refused"
    with torch.no_grad():
        out = m(IDS).logits
    assert not torch.isnan(out).any(), "a loaded checkpoint produced NaN logits"
    if resigned:
        assert torch.isfinite(out).all()
    else:
        assert torch.equal(out, ref), "a mutated checkpoint loaded and silently changed the logits"
    return "loaded"


class _Copy:
    """A private copy of the checkpoint for one example (Hypothesis forbids function-scoped fixtures)."""

    def __init__(self, src):
        self.root = tempfile.mkdtemp(prefix="sfmp-fuzz-")
        self.d = os.path.join(self.root, "model")
        shutil.copytree(src, self.d)

    def __enter__(self):
        return self.d

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)


# --- model.safetensors: raw bytes ----------------------------------------------------------------

@settings(max_examples=40)
@given(kind=st.sampled_from(["flip_header", "flip_any", "truncate"]), seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 8))
def test_fuzz_weight_bytes(ckpt, kind, seed, n):
    src, ref, _ = ckpt
    rng = random.Random(seed)
    with _Copy(src) as d:
        path = os.path.join(d, "model.safetensors")
        data = bytearray(open(path, "rb").read())
        header = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
        if kind == "truncate":
            data = data[: rng.randrange(0, len(data))]
        else:
            hi = header if kind == "flip_header" else len(data)
            for _ in range(n):
                data[rng.randrange(0, hi)] ^= rng.randrange(1, 256)
        open(path, "wb").write(bytes(data))
        _check(d, ref)


# --- model.safetensors: well-formed files with edited tensors --------------------------------------

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.int8]


def _retype(t, dtype):
    return t.to(dtype) if t.numel() else torch.zeros(0, dtype=dtype)


@settings(max_examples=60)
@given(kind=st.sampled_from(["swap", "dtype", "shape", "drop", "add", "value"]), layer=st.integers(0, 13),
       a=st.sampled_from(FIELDS), b=st.sampled_from(FIELDS), dtype=st.sampled_from(_DTYPES),
       resign=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_tensor_edits(ckpt, kind, layer, a, b, dtype, resign, seed):
    src, ref, meta = ckpt
    rng = random.Random(seed)
    names = sorted(meta["layers"])
    name = names[layer % len(names)]
    with _Copy(src) as d:
        path = os.path.join(d, "model.safetensors")
        t = load_file(path)
        ka, kb = f"{name}.{a}", f"{name}.{b}"
        other = rng.choice(sorted(k for k in t if not k.startswith(name + ".")))
        if kind == "swap":
            t[ka], t[kb] = t[kb], t[ka]
            if a == b:  # swap with a tensor of another layer / a float tensor instead
                t[ka], t[other] = t[other], t[ka]
        elif kind == "dtype":
            key = rng.choice([ka, other])
            if t[key].dtype == dtype:
                dtype = torch.float32 if dtype != torch.float32 else torch.int32
            t[key] = _retype(t[key], dtype)
        elif kind == "shape":
            key = rng.choice([ka, other])
            v = t[key]
            t[key] = rng.choice([v.reshape(-1), v.reshape(1, -1), v.reshape(-1)[:-1] if v.numel() else torch.zeros(1, dtype=v.dtype),
                                 torch.cat([v.reshape(-1), v.reshape(-1)[:1]]) if v.numel() else torch.zeros(1, dtype=v.dtype)]).contiguous()
        elif kind == "drop":
            t.pop(rng.choice([ka, other]))
        elif kind == "add":
            t[rng.choice([f"{name}.bias", f"{name}.extra", "lm_head.bias", "model.extra"])] = torch.ones(rng.choice([1, 64, 128]))
        else:  # one entry of a table set to an adversarial value
            v = t[ka].clone()
            if v.numel():
                i = rng.randrange(v.numel())
                bad = [-1, 1000, 2**31 - 1, -(2**31)] if not v.is_floating_point() else [float("nan"), float("inf"), -1.0, 0.0, 1e4]
                if v.dtype == torch.uint8:
                    bad = [0, 9, 255]
                v.view(-1)[i] = rng.choice(bad)
            t[ka] = v
        save_file({k: x.contiguous() for k, x in t.items()}, path)
        if resign:  # the attacker also recomputes the checksums: only the structural checks remain
            mp = os.path.join(d, "sfmp.json")
            m = json.load(open(mp))
            m["checksums"] = {k: tensor_digest(x) for k, x in t.items()}
            json.dump(m, open(mp, "w"))
        _check(d, ref, resigned=resign)


# --- format v2 permutation codes: every corrupted encoding refused by name, before any model -------

@settings(max_examples=60)
@given(layer=st.integers(0, 13), field=st.sampled_from(["row_perm_code", "col_perm_code"]),
       edit=st.sampled_from(["flip", "tag", "truncate", "extend", "pad_bits", "int16", "packed", "identity"]),
       pos=st.integers(0, 10**6), val=st.integers(1, 255))
def test_fuzz_perm_codes(ckpt, layer, field, edit, pos, val):
    """Re-signed edits of one permutation code: refused with a CheckpointError naming the layer and
    the code whenever the bytes are not the exact form the writer gives some permutation (checked
    against permcodec.decode, the oracle); otherwise a well-formed model (the other order)."""
    src, ref, meta = ckpt
    names = sorted(meta["layers"])
    name = names[layer % len(names)]
    with _Copy(src) as d:
        path = os.path.join(d, "model.safetensors")
        t = load_file(path)
        key = f"{name}.{field}"
        c = t[key].clone()
        geo = meta["layers"][name]
        n = geo["out_features"] if field == "row_perm_code" else geo["in_features"]
        byte_edit = edit_code(c, edit, pos, val)
        if byte_edit is not None:
            c = byte_edit
        elif edit == "pad_bits" and c.numel():
            c[-1] |= 0x80
        elif edit == "int16":  # a real permutation where a key code (or nothing) belongs
            p = torch.randperm(n, generator=torch.Generator().manual_seed(pos))
            c = torch.cat([torch.tensor([3], dtype=torch.uint8),
                           torch.stack([p & 255, p >> 8], 1).reshape(-1).to(torch.uint8)])
        elif edit == "packed":  # a valid-looking packed permutation, maybe not the shortest form
            k = max(1, (n - 1).bit_length())
            p = torch.randperm(n, generator=torch.Generator().manual_seed(pos))
            bitsof = ((p[:, None] >> torch.arange(k)) & 1).reshape(-1)
            bitsof = torch.nn.functional.pad(bitsof, (0, -bitsof.numel() % 8)).view(-1, 8)
            c = torch.cat([torch.tensor([5], dtype=torch.uint8), (bitsof << torch.arange(8)).sum(1).to(torch.uint8)])
        else:
            c = torch.zeros(0, dtype=torch.uint8)
        if torch.equal(c, t[key]) if c.shape == t[key].shape else False:
            return
        t[key] = c.contiguous()
        save_file({k: x.contiguous() for k, x in t.items()}, path)
        m = json.load(open(os.path.join(d, "sfmp.json")))
        m["checksums"] = {k: tensor_digest(x) for k, x in t.items()}
        json.dump(m, open(os.path.join(d, "sfmp.json"), "w"))
        grid = BlockGrid(geo["out_features"], geo["in_features"], geo["block_rows"], geo["group_size"])
        try:
            decode(c, grid, t[f"{name}.bits"], 0 if field == "row_perm_code" else 1, "x", field)
            valid = True
        except ValueError:
            valid = False
        if valid:
            assert _check(d, ref, resigned=True) in ("loaded", "refused")
        else:
            with pytest.raises(CheckpointError, match=f"layer {name}: {field}"):
                load_quantized(d)


# --- sfmp.json edits -----------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from([0, 1, -1, 16, 32, 10**12, "1", "sfmp"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    """Every (container path, key) in a JSON tree, so an edit can land anywhere."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield prefix, k
        yield from _paths(v, prefix + (k,))


def _deep(depth):
    return "[" * depth + "]" * depth


@settings(max_examples=80)
@given(kind=st.sampled_from(["replace", "drop", "add", "deep"]), pick=st.integers(0, 10**6), value=_JSON,
       key=st.text(min_size=1, max_size=8), depth=st.sampled_from([50, 2000, 100_000]))
def test_fuzz_marker_edits(ckpt, kind, pick, value, key, depth):
    src, ref, meta = ckpt
    meta = json.loads(json.dumps(meta))
    paths = list(_paths(meta))
    prefix, k = paths[pick % len(paths)]
    parent = meta
    for p in prefix:
        parent = parent[p]
    text = None
    if kind == "replace":
        parent[k] = value
    elif kind == "drop":
        parent.pop(k)
    elif kind == "add":
        target = parent[k] if isinstance(parent[k], dict) else parent
        if isinstance(target, dict):
            target[key] = value
        else:
            target.append(value)
    else:  # nesting deeper than any parser recursion limit, spliced in as raw text
        parent[k] = "@@DEEP@@"
        text = json.dumps(meta).replace('"@@DEEP@@"', _deep(depth))
    with _Copy(src) as d:
        with open(os.path.join(d, "sfmp.json"), "w") as f:
            f.write(text if text is not None else json.dumps(meta))
        _check(d, ref)


def test_the_fuzzer_can_see_a_silent_change(ckpt):
    """The fuzz oracle is not vacuous: a re-signed code edit loads and does change the logits."""
    src, ref, meta = ckpt
    with _Copy(src) as d:
        path = os.path.join(d, "model.safetensors")
        t = load_file(path)
        key = sorted(k for k in t if k.endswith(".qweight"))[0]
        t[key] = t[key] ^ -1  # every code flipped: still valid codes, a different weight
        save_file(t, path)
        m = json.load(open(os.path.join(d, "sfmp.json")))
        m["checksums"][key] = tensor_digest(t[key])
        json.dump(m, open(os.path.join(d, "sfmp.json"), "w"))
        with pytest.raises(AssertionError, match="silently changed"):
            _check(d, ref)
