"""Save and load SFMP-quantized models: JSON + safetensors only, no pickle.

Layout of a checkpoint directory:
  sfmp.json          format marker, format version, quantization config, per-layer geometry
  model.safetensors  the whole state dict (packed buffers of SFMPLinear layers + every other tensor)
  config.json, tokenizer files   for transformers models (so load_quantized can rebuild the model)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .format import FORMAT_VERSION, PackedWeight, validate
from .linear import SFMPLinear
from .salience import is_linear, linear_weight

MARKER = "sfmp.json"
WEIGHTS = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, foreign, or does not match the model."""


def save_quantized(model: nn.Module, out_dir: str, tokenizer=None, overwrite: bool = False) -> str:
    """Write a quantized model to ``out_dir`` (created; refused if it exists and is non-empty
    unless overwrite=True). Written to a temporary sibling and renamed, so a crash never leaves a
    half-written checkpoint where a good one was."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SFMPLinear)}
    if not layers:
        raise CheckpointError("the model has no SFMPLinear layers: quantize it before saving")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise CheckpointError(f"output directory {out_dir} already exists and is not empty (pass overwrite=True to replace it)")
    state, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        if v.is_meta:
            raise CheckpointError(f"tensor {k} is on the meta device (released or never loaded); cannot save it")
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else None
        if key is not None and key in seen:  # tied weights: safetensors refuses shared storage
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        state[k] = v.detach().contiguous().cpu()
    cfg = getattr(getattr(model, "sfmp_plan", None), "config", None)
    meta = {
        "format": "sfmp",
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "quant_config": cfg.to_dict() if cfg is not None else None,
        "layers": {n: m.packed.meta() | {"bias": m.bias is not None} for n, m in layers.items()},
        "tied": aliases,
    }
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".sfmp-save-", dir=parent)
    try:
        save_file(state, os.path.join(tmp, WEIGHTS), metadata={"format": "pt", "sfmp_format_version": str(FORMAT_VERSION)})
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(meta, f, indent=1)
        if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
            model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _read_marker(ckpt_dir: str) -> dict:
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is not a directory")
    path = os.path.join(ckpt_dir, MARKER)
    if not os.path.exists(path):
        raise CheckpointError(f"{ckpt_dir} is not an SFMP checkpoint: {MARKER} is missing")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "sfmp":
        raise CheckpointError(f"{path} does not describe an SFMP checkpoint (format marker missing)")
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt_dir}: checkpoint format version {v} is not supported (this build reads version {FORMAT_VERSION})")
    return meta


def _read_weights(ckpt_dir: str) -> dict[str, torch.Tensor]:
    path = os.path.join(ckpt_dir, WEIGHTS)
    if not os.path.exists(path):
        raise CheckpointError(f"{ckpt_dir}: {WEIGHTS} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({e})") from None


def _skeleton_from_config(ckpt_dir: str) -> nn.Module:
    if not os.path.exists(os.path.join(ckpt_dir, "config.json")):
        raise CheckpointError(f"{ckpt_dir} has no config.json: pass model=<skeleton module> to load_quantized")
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        from transformers.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover - older/newer transformers
        no_init_weights = contextlib.nullcontext
    config = AutoConfig.from_pretrained(ckpt_dir)
    with no_init_weights():  # the float weights are about to be replaced; don't pay for init
        return AutoModelForCausalLM.from_config(config)


def load_quantized(ckpt_dir: str, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by save_quantized.

    Without ``model``, a transformers model is rebuilt from config.json. With ``model`` (any
    nn.Module of the original architecture), its quantized linears are replaced in place. Version,
    shapes and dtypes are checked, and a mismatch raises CheckpointError naming the tensor.
    """
    meta = _read_marker(ckpt_dir)
    tensors = _read_weights(ckpt_dir)
    if model is None:
        model = _skeleton_from_config(ckpt_dir)
    layers = meta.get("layers") or {}
    new_modules = {}
    for name, geo in layers.items():
        try:
            target = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint layer {name} does not exist in the model") from None
        fields = {}
        for f in PackedWeight.TENSOR_FIELDS:
            key = f"{name}.{f}"
            if key not in tensors:
                raise CheckpointError(f"{ckpt_dir}: tensor {key} is missing")
            fields[f] = tensors.pop(key)
        try:
            p = PackedWeight(**fields, **{k: geo[k] for k in PackedWeight.META_FIELDS})
            validate(p, where=f"{ckpt_dir}: layer {name}")
        except KeyError as e:
            raise CheckpointError(f"{ckpt_dir}: layer {name} lacks geometry field {e}") from None
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if is_linear(target):
            want = tuple(linear_weight(target).shape)
        else:
            want = (getattr(target, "out_features", None), getattr(target, "in_features", None))
        if want != (p.out_features, p.in_features):
            raise CheckpointError(f"layer {name}: checkpoint shape {(p.out_features, p.in_features)} does not match the model's {want}")
        bias = tensors.pop(f"{name}.bias", None)
        if geo.get("bias") and bias is None:
            raise CheckpointError(f"{ckpt_dir}: tensor {name}.bias is missing")
        new_modules[name] = SFMPLinear(p, bias)
    for name, m in new_modules.items():
        model.set_submodule(name, m)
    for alias, canon in (meta.get("tied") or {}).items():
        if canon in tensors:
            tensors[alias] = tensors[canon]
    expected = {k: v for k, v in model.state_dict().items() if not any(k.startswith(n + ".") for n in new_modules)}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        raise CheckpointError(f"{ckpt_dir}: tensors not in the model: {unexpected[:5]}")
    if missing:
        raise CheckpointError(f"{ckpt_dir}: model tensors missing from the checkpoint: {missing[:5]}")
    for k, v in tensors.items():
        if tuple(expected[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{ckpt_dir}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=False)
    if hasattr(model, "tie_weights") and meta.get("tied"):
        model.tie_weights()
    if meta.get("quant_config"):
        from .config import QuantConfig
        from .plan import Plan
        model.sfmp_plan = Plan(QuantConfig.from_dict(meta["quant_config"]), {})
    return model.to(device).eval()
