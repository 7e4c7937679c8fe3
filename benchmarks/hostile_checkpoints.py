"""Checkpoint scenarios for benchmarks/hostile.py (issue 13): each tampers with a copy of a saved
checkpoint and loads it. A case returns ("correct" | "wrong", detail): the load gave the saved
model's logits bit for bit, or it loaded something else; exceptions are classified by hostile.py.
``ctx`` holds the worker's paths (tmp dir, base checkpoints) and reference logits.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

IDS = torch.tensor([[0, 5, 17, 42, 99, 128, 200, 255]])


# --- helpers ----------------------------------------------------------------------------------

def _copy(ctx, src: str) -> str:
    d = tempfile.mkdtemp(prefix="ck-", dir=ctx["tmp"])
    dst = os.path.join(d, "model")
    shutil.copytree(src, dst)
    return dst


def _meta(d):
    with open(os.path.join(d, "sfmp.json")) as f:
        return json.load(f)


def _write_meta(d, meta):
    with open(os.path.join(d, "sfmp.json"), "w") as f:
        json.dump(meta, f)


def _resign(d):
    """Recompute every checksum (a hostile but careful editor): only structure can refuse it."""
    from safetensors.torch import load_file
    from sfmp_compile.checkpoint_files import file_digest, tensor_digest
    meta = _meta(d)
    meta["checksums"] = {k: tensor_digest(v) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    if os.path.isfile(os.path.join(d, "config.json")) and "files" in meta:
        meta["files"] = {"config.json": file_digest(os.path.join(d, "config.json"))}
    _write_meta(d, meta)


def _logits(m):
    with torch.no_grad():
        return m(IDS).logits


def _same_logits(m, ref) -> tuple[str, str]:
    out = _logits(m)
    if torch.equal(out, ref):
        return "correct", "loaded, logits bit-identical"
    bad = "NaN" if torch.isnan(out).any() else f"max |diff| {float((out - ref).abs().max()):.3g}"
    return "wrong", f"loaded, logits differ ({bad})"


def _skeleton(kind):
    from sfmp_compile.eval.models import tiny_gpt2, tiny_llama
    return tiny_llama() if kind == "llama" else tiny_gpt2()


# --- checkpoints ------------------------------------------------------------------------------

def _edit_tensor(d, key, fn):
    from safetensors.torch import load_file, save_file
    path = os.path.join(d, "model.safetensors")
    t = load_file(path)
    out = fn(t[key].clone()) if key in t else fn(None)
    if out is None:
        t.pop(key, None)
    else:
        t[key] = out.contiguous()
    save_file(t, path, metadata={"format": "pt"})


TENSOR_EDITS = {
    "segment_ptr_9_1000": ("segment_ptr", lambda t: t.index_fill_(1, torch.tensor([9]), 1000)),
    "segment_ptr_zero": ("segment_ptr", lambda t: t.zero_()),
    "segment_ptr_plus1": ("segment_ptr", lambda t: t.index_put_((torch.tensor([0]), torch.tensor([2])), torch.tensor(t[0, 2] + 1, dtype=t.dtype))),
    "block_offset_-64": ("block_offset", lambda t: t.fill_(-64)),
    "block_offset_plus1": ("block_offset", lambda t: t + 1),
    "block_offset_huge": ("block_offset", lambda t: t.index_fill_(0, torch.tensor([0]), 2**31 - 1)),
    "group_order_flip": ("group_order", lambda t: t.flip(1)),
    "group_order_zero": ("group_order", lambda t: t.zero_()),
    "group_order_oob": ("group_order", lambda t: t + 1000),
    "scales_nan": ("scales", lambda t: t.index_fill_(0, torch.tensor([0]), float("nan"))),
    "scales_inf": ("scales", lambda t: t.index_fill_(0, torch.tensor([0]), float("inf"))),
    "scales_zero": ("scales", lambda t: t.index_fill_(0, torch.tensor([0]), 0.0)),
    "scales_neg": ("scales", lambda t: -t),
    "zeros_plus100": ("zeros", lambda t: t + 100),
    "zeros_neg": ("zeros", lambda t: t.fill_(-1)),
    "zeros_nan": ("zeros", lambda t: t.index_fill_(0, torch.tensor([0]), float("nan"))),
    "zeros_half": ("zeros", lambda t: t + 0.5),
    "bits_zero": ("bits", lambda t: t.index_fill_(0, torch.tensor([0]), 0)),
    "bits_nine": ("bits", lambda t: t.index_fill_(0, torch.tensor([0]), 9)),
    "bits_changed": ("bits", lambda t: torch.where(t == t.max(), t.min(), t)),
    "qweight_truncated": ("qweight", lambda t: t[:-1]),
    "qweight_extended": ("qweight", lambda t: torch.cat([t, t[:1]])),
    "qweight_int64": ("qweight", lambda t: t.to(torch.int64)),
    "qweight_2d": ("qweight", lambda t: t.view(1, -1)),
    "scales_fp32": ("scales", lambda t: t.float()),
    # format v2 stores each permutation as a uint8 code (tag byte + payload, empty for the identity)
    "row_perm_code_tag": ("row_perm_code", lambda t: t.index_fill_(0, torch.tensor([0]), 99) if t.numel() else torch.full((3,), 99, dtype=torch.uint8)),
    "row_perm_code_extended": ("row_perm_code", lambda t: torch.cat([t, torch.zeros(1, dtype=torch.uint8)]) if t.numel() else torch.ones(3, dtype=torch.uint8)),
    "col_perm_code_short": ("col_perm_code", lambda t: t[:-1] if t.numel() else torch.zeros(5, dtype=torch.uint8)),
    "col_perm_code_int32": ("col_perm_code", lambda t: t.to(torch.int32)),
    "missing_tensor": ("zeros", lambda t: None),
}


def ckpt_tensor(ctx, base, layer, edit, resign, into):
    """One table of one layer tampered; resign: checksums recomputed; into: load into a skeleton."""
    from sfmp_compile import load_quantized
    d = _copy(ctx, ctx[base])
    field, fn = TENSOR_EDITS[edit]
    _edit_tensor(d, f"{layer}.{field}", fn)
    if resign:
        _resign(d)
    m = load_quantized(d, model=_skeleton(base) if into else None)
    return _same_logits(m, ctx["ref_" + base])


def _json_edit(name):
    big = 10**9
    L = "model.layers.0.self_attn.q_proj"
    edits = {
        "layers_list": lambda m: m.update(layers=[]),
        "layers_string": lambda m: m.update(layers="x"),
        "layers_empty": lambda m: m.update(layers={}),
        "layer_geo_int": lambda m: m["layers"].update({L: 5}),
        "layer_geo_missing_field": lambda m: m["layers"][L].pop("group_size"),
        "layer_out_features_str": lambda m: m["layers"][L].update(out_features="64"),
        "layer_out_features_neg": lambda m: m["layers"][L].update(out_features=-64),
        "layer_out_features_huge": lambda m: m["layers"][L].update(out_features=big),
        "layer_group_size_48": lambda m: m["layers"][L].update(group_size=48),
        "layer_block_rows_1": lambda m: m["layers"][L].update(block_rows=1),
        "layer_bias_str": lambda m: m["layers"][L].update(bias="no"),
        "layer_unknown_field": lambda m: m["layers"][L].update(shift=1),
        "layer_renamed": lambda m: m["layers"].update({"model.nope": m["layers"].pop(L)}),
        "layer_dropped": lambda m: m["layers"].pop(L),
        "tied_list": lambda m: m.update(tied=[]),
        "tied_value_int": lambda m: m.update(tied={"a": 5}),
        "tied_string": lambda m: m.update(tied="x"),
        "tied_overwrites_real": lambda m: m.update(tied={"model.norm.weight": "model.layers.0.input_layernorm.weight"}),
        "tied_to_missing": lambda m: m.update(tied={"lm_head.weight": "nope.weight"}),
        "tied_self": lambda m: m.update(tied={"lm_head.weight": "lm_head.weight"}),
        "checksums_list": lambda m: m.update(checksums=[]),
        "checksums_wrong": lambda m: m["checksums"].update({k: "0" * 64 for k in list(m["checksums"])[:1]}),
        "files_wrong": lambda m: m.update(files={"config.json": "0" * 64}),
        "files_extra": lambda m: m.update(files={"config.json": "0" * 64, "evil.py": "0"}),
        "quant_config_unknown_key": lambda m: m["quant_config"].update(future_knob=1),
        "quant_config_int": lambda m: m.update(quant_config=5),
        "quant_config_bad_bits": lambda m: m["quant_config"].update(bits=-1),
        "quant_config_bits_str": lambda m: m["quant_config"].update(bits="3"),
        "quant_config_skip_int": lambda m: m["quant_config"].update(skip=5),
        "format_version_str": lambda m: m.update(format_version="2"),
        "format_version_float": lambda m: m.update(format_version=2.0),
        "format_version_3": lambda m: m.update(format_version=3),
        "format_version_0": lambda m: m.update(format_version=0),
        "format_version_bool": lambda m: m.update(format_version=True),
        "format_version_null": lambda m: m.update(format_version=None),
        "format_version_missing": lambda m: m.pop("format_version"),
        "format_missing": lambda m: m.pop("format"),
        "top_unknown_key": lambda m: m.update(extra={}),
        "model_class_int": lambda m: m.update(model_class=3),
    }
    return edits[name]


JSON_EDITS = ["layers_list", "layers_string", "layers_empty", "layer_geo_int", "layer_geo_missing_field",
              "layer_out_features_str", "layer_out_features_neg", "layer_out_features_huge", "layer_group_size_48",
              "layer_block_rows_1", "layer_bias_str", "layer_unknown_field", "layer_renamed", "layer_dropped",
              "tied_list", "tied_value_int", "tied_string", "tied_overwrites_real", "tied_to_missing", "tied_self",
              "checksums_list", "checksums_wrong", "files_wrong", "files_extra", "quant_config_unknown_key",
              "quant_config_int", "quant_config_bad_bits", "quant_config_bits_str", "quant_config_skip_int",
              "format_version_str", "format_version_float", "format_version_3", "format_version_0",
              "format_version_bool", "format_version_null", "format_version_missing", "format_missing",
              "top_unknown_key", "model_class_int"]


def ckpt_json(ctx, base, edit, into):
    from sfmp_compile import load_quantized
    d = _copy(ctx, ctx[base])
    meta = _meta(d)
    _json_edit(edit)(meta)
    _write_meta(d, meta)
    m = load_quantized(d, model=_skeleton(base) if into else None)
    return _same_logits(m, ctx["ref_" + base])


def _deep(n):
    return "[" * n + "]" * n


RAW_FILES = {
    "marker_deep_json": ("sfmp.json", lambda b: b.replace(b'"tied"', b'"deep": ' + _deep(200000).encode() + b', "tied"', 1)),
    "marker_deep_json_in_layers": ("sfmp.json", lambda b: b.replace(b'"layers": {', b'"layers": {"x": ' + _deep(100000).encode() + b', ', 1)),
    "marker_huge_int": ("sfmp.json", lambda b: b.replace(b'"format_version": 2', b'"format_version": ' + b"9" * 5000, 1)),
    "marker_not_utf8": ("sfmp.json", lambda b: b"\xff\xfe" + b),
    "marker_truncated": ("sfmp.json", lambda b: b[: len(b) // 2]),
    "marker_empty": ("sfmp.json", lambda b: b""),
    "marker_nan_literal": ("sfmp.json", lambda b: b.replace(b'"format_version": 2', b'"format_version": NaN', 1)),
    "weights_truncated": ("model.safetensors", lambda b: b[: len(b) // 2]),
    "weights_empty": ("model.safetensors", lambda b: b""),
    "weights_header_huge_len": ("model.safetensors", lambda b: (2**62).to_bytes(8, "little") + b[8:]),
    "weights_header_flip": ("model.safetensors", lambda b: b[:20] + bytes([b[20] ^ 0x55]) + b[21:]),
    "weights_tail_flip": ("model.safetensors", lambda b: b[:-5] + bytes([b[-5] ^ 0xFF]) + b[-4:]),
    "weights_dtype_swap": ("model.safetensors", lambda b: b.replace(b'"dtype":"I32"', b'"dtype":"F32"', 1)),
    "weights_pickle": ("model.safetensors", lambda b: b"\x80\x04\x95" + b[:100]),
    "config_not_json": ("config.json", lambda b: b"{not json"),
    "config_vocab_4M": ("config.json", lambda b: _cfg(b, vocab_size=4_000_000)),
    "config_vocab_1e9": ("config.json", lambda b: _cfg(b, vocab_size=10**9)),
    "config_hidden_neg": ("config.json", lambda b: _cfg(b, hidden_size=-1)),
    "config_layers_1e6": ("config.json", lambda b: _cfg(b, num_hidden_layers=10**6)),
    "config_model_type_unknown": ("config.json", lambda b: _cfg(b, model_type="evil")),
    "config_eps_changed": ("config.json", lambda b: _cfg(b, rms_norm_eps=0.5)),
    "config_dtype_fp16": ("config.json", lambda b: _cfg(b, torch_dtype="float16", dtype="float16")),
}


def _cfg(b, **kw):
    c = json.loads(b)
    c.update(kw)
    return json.dumps(c).encode()


def ckpt_file(ctx, base, edit, resign, into):
    from sfmp_compile import load_quantized
    d = _copy(ctx, ctx[base])
    name, fn = RAW_FILES[edit]
    p = os.path.join(d, name)
    with open(p, "rb") as f:
        raw = f.read()
    with open(p, "wb") as f:
        f.write(fn(raw))
    if resign and name == "config.json":
        meta = _meta(d)
        from sfmp_compile.checkpoint_files import file_digest
        meta["files"] = {"config.json": file_digest(p)}
        _write_meta(d, meta)
    m = load_quantized(d, model=_skeleton(base) if into else None)
    if resign and edit in VALUE_EDITS:  # a well-formed, re-signed config: the edited model is the checkpoint
        ok = VALUE_EDITS[edit](m.config) and bool(torch.isfinite(_logits(m)).all())
        return ("correct", "loaded the edited (well-formed) model as written") if ok else ("wrong", "edit lost or NaN")
    return _same_logits(m, ctx["ref_" + base])


# Edits that leave a valid model: re-signed, loading the edited model is right (unsigned, refused).
VALUE_EDITS = {"config_eps_changed": lambda c: c.rms_norm_eps == 0.5}


def plant_special(path, what: str) -> bool:
    """Put a FIFO ("fifo"), a directory ("dir" / "directory") or a symlink to /dev/zero ("devzero")
    at ``path`` and return True; for any other ``what`` plant nothing and return False."""
    if what == "fifo":
        os.mkfifo(path)
    elif what in ("dir", "directory"):
        os.makedirs(path)
    elif what == "devzero":
        os.symlink("/dev/zero", path)
    return what in ("fifo", "dir", "directory", "devzero")


def ckpt_special(ctx, base, name, what, into):
    """A FIFO, directory, symlink to /dev/zero, or nothing in place of one of the checkpoint's files."""
    from sfmp_compile import load_quantized
    d = _copy(ctx, ctx[base])
    p = os.path.join(d, name)
    os.remove(p)
    plant_special(p, what)
    m = load_quantized(d, model=_skeleton(base) if into else None)
    return _same_logits(m, ctx["ref_" + base])


def ckpt_bias(ctx, base, how, into):
    """Bias tampering: an undeclared <layer>.bias, a wrong-shape one, a declared bias removed."""
    from sfmp_compile import load_quantized
    d = _copy(ctx, ctx[base])
    if base == "llama":
        layer = "model.layers.0.self_attn.q_proj"
        if how == "undeclared":
            _edit_tensor(d, f"{layer}.bias", lambda t: torch.ones(64))
        elif how == "declared_missing":
            meta = _meta(d)
            meta["layers"][layer]["bias"] = True
            _write_meta(d, meta)
    else:
        layer = "transformer.h.0.attn.c_attn"
        if how == "wrong_shape":
            _edit_tensor(d, f"{layer}.bias", lambda t: t[:-1])
        elif how == "wrong_dtype":
            _edit_tensor(d, f"{layer}.bias", lambda t: t.double())
        elif how == "removed":
            _edit_tensor(d, f"{layer}.bias", lambda t: None)
        elif how == "nan":
            _edit_tensor(d, f"{layer}.bias", lambda t: t.fill_(float("nan")))
    _resign(d)
    m = load_quantized(d, model=_skeleton(base) if into else None)
    return _same_logits(m, ctx["ref_" + base])
