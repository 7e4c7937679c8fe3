"""Save and load SFMP-quantized models: JSON + safetensors only, no pickle.

Layout of a checkpoint directory:
  sfmp.json          format marker, format version, quantization config, per-layer geometry,
                     tied-tensor aliases, a SHA-256 of every stored tensor and of config.json
  model.safetensors  the whole state dict (packed buffers of SFMPLinear layers + every other tensor)
  config.json, tokenizer files   for transformers models (so load_quantized can rebuild the model;
                     config.json's quantization_config routes from_pretrained to hf_quantizer.py)

Loading treats the directory as untrusted input: every check runs before model memory is
allocated (a skeleton rebuilt from config.json is first built on the meta device and compared with
the tensors), and anything wrong raises one CheckpointError naming it. A tensor whose bytes, dtype
or shape differ from its stored checksum is refused, so a load gives the saved model bit for bit
or fails.

Compatibility (also docs/FORMAT.md): ``format_version`` must be a JSON integer; a string or float
is refused as such, a version newer than FORMAT_VERSION is refused as written by a newer build
(the message names the newest version this build reads), any other as unsupported. Keys this
build does not know, at the top level, in a layer's geometry or in ``quant_config``, are refused
with a message naming them: a writer that adds information a reader must understand bumps the
version. ``checksums``, ``files`` and ``tied`` are optional (a checkpoint without checksums loads
unverified).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import torch
from torch import nn
from safetensors.torch import save_file

from .checkpoint_files import (CONFIG, MARKER, WEIGHTS, CheckpointError, file_digest, quant_config, read_marker,
                               read_weights, regular_file, tensor_digest, verify_checksums)
from .format import FORMAT_VERSION, PackedWeight, validate
from .permcodec import STORED_TENSORS, from_stored
from .linear import SFMPLinear
from .salience import is_linear, linear_weight

def save_quantized(model: nn.Module, out_dir: str, tokenizer=None, overwrite: bool = False) -> str:
    """Write a quantized model to ``out_dir`` (created; refused if it exists and is non-empty
    unless overwrite=True). Written to a temporary sibling and renamed, so a crash never leaves a
    half-written checkpoint where a good one was."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SFMPLinear)}
    if not layers:
        raise CheckpointError("the model has no SFMPLinear layers: quantize it before saving")
    check_out_dir(out_dir, overwrite)
    state, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():  # SFMPLinear's holds format v2's stored form
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
    meta = checkpoint_meta(type(model).__name__, cfg, {n: layer_meta(m.packed, m.bias is not None) for n, m in layers.items()},
                           aliases, {k: tensor_digest(v) for k, v in state.items()})

    def write_weights(path):
        save_file(state, path, metadata=WEIGHTS_METADATA)

    return write_checkpoint_dir(out_dir, meta, write_weights, model if hasattr(model, "config") else None,
                                tokenizer, overwrite)


# safetensors metadata of model.safetensors (save_quantized and stream.py write the same)
WEIGHTS_METADATA = {"format": "pt", "sfmp_format_version": str(FORMAT_VERSION)}


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise CheckpointError(f"output directory {out_dir} already exists and is not empty (pass overwrite=True to replace it)")


def layer_meta(p: PackedWeight, bias: bool) -> dict:
    """One layer's geometry entry of sfmp.json."""
    return p.meta() | {"version": FORMAT_VERSION, "bias": bias}


def checkpoint_meta(model_class: str, cfg, layers: dict, aliases: dict, checksums: dict) -> dict:
    """sfmp.json's content (``files`` is added by ``write_checkpoint_dir``). cfg: the QuantConfig or
    None; layers: name -> ``layer_meta``; aliases: tied key -> stored key; checksums: stored key ->
    ``tensor_digest``."""
    return {"format": "sfmp", "format_version": FORMAT_VERSION, "model_class": model_class,
            "quant_config": cfg.to_dict() if cfg is not None else None, "layers": layers, "tied": aliases,
            "checksums": checksums}


def write_checkpoint_dir(out_dir: str, meta: dict, write_weights, hf_model: nn.Module | None = None,
                         tokenizer=None, overwrite: bool = False) -> str:
    """Write a checkpoint directory atomically (a temporary sibling, renamed when complete).

    write_weights(path): writes model.safetensors at ``path`` (all at once, or tensor by tensor as
    stream.py does). hf_model: a transformers model (or skeleton) whose config is saved as
    config.json, marked quantized and signed in ``meta["files"]``. tokenizer: saved beside it."""
    check_out_dir(out_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".sfmp-save-", dir=parent)
    try:
        write_weights(os.path.join(tmp, WEIGHTS))
        if hf_model is not None and hasattr(hf_model.config, "save_pretrained"):
            hf_model.config.save_pretrained(tmp)
            _mark_config_quantized(os.path.join(tmp, CONFIG), hf_model)
            # config.json rebuilds the architecture (eps, rope, activation...): an edit there
            # changes the logits as surely as an edited weight, so it is signed too
            meta["files"] = {CONFIG: file_digest(os.path.join(tmp, CONFIG))}
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(meta, f, indent=1)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# config.json's quantization_config: transformers hands a checkpoint carrying it to the quantizer
# registered for "sfmp" (hf_quantizer.py, registered by ``import sfmp_compile``).
HF_QUANT_METHOD = "sfmp"
# transformers 5 only warns about a quant_method it does not know and would then build the model
# with RANDOM weights (the packed tensors unexpected, the float ones missing). config.json therefore
# names a weights file that does not exist, so a load without the quantizer fails, and the name says
# why; the registered quantizer points transformers back at model.safetensors.
HF_WEIGHTS_TRIPWIRE = "sfmp-checkpoint--import-sfmp_compile-before-from_pretrained.safetensors"


def _mark_config_quantized(path: str, model: nn.Module) -> None:
    """Add to config.json what makes transformers route it to the SFMP quantizer (or refuse it)."""
    with open(path) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": HF_QUANT_METHOD, "format_version": FORMAT_VERSION}
    cfg["transformers_weights"] = HF_WEIGHTS_TRIPWIRE
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        # from_pretrained's dtype="auto" reads this; without it, it would take the first floating
        # tensor of the file, which may be a layer's fp16 scales
        cfg["dtype"] = str(model.dtype).removeprefix("torch.")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


@contextlib.contextmanager
def _parameters_on_meta():
    """Create every nn.Parameter on the meta device while buffers stay real: the parameters are
    all about to come from the checkpoint, but non-persistent buffers (rotary inv_freq...) are not
    in it and must be computed by the module's own __init__."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


# Config fields that count modules: building them costs time even on the meta device (10**6 layers
# hung the load), and a model has at least one stored tensor per layer or expert.
_MODULE_COUNTS = ("num_hidden_layers", "num_local_experts", "num_experts", "n_routed_experts")


def _skeleton_from_config(ckpt_dir: str, meta_only: bool, digest: str | None = None,
                          n_tensors: int | None = None) -> nn.Module:
    """The transformers model config.json describes. meta_only: everything on the meta device
    (no memory, whatever sizes the config claims) for checking; else parameters on meta and
    buffers real, to be filled by load_state_dict(assign=True). digest: config.json's SHA-256
    from sfmp.json, when the checkpoint has one. n_tensors: how many tensors the checkpoint
    stores; a config claiming more layers (or experts) than that is refused before building."""
    path = regular_file(ckpt_dir, CONFIG)
    if path is None:
        raise CheckpointError(f"{ckpt_dir} has no config.json: pass model=<skeleton module> to load_quantized")
    if digest is not None and file_digest(path) != digest:
        raise CheckpointError(f"{path} does not match its checksum in {MARKER} (edited after saving)")
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        from transformers.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover - older/newer transformers
        no_init_weights = contextlib.nullcontext
    try:
        config = AutoConfig.from_pretrained(ckpt_dir)
        for name in _MODULE_COUNTS if n_tensors is not None else ():
            v = getattr(config, name, None)
            if isinstance(v, int) and v > n_tensors:
                raise CheckpointError(f"{path}: {name}={v} but the checkpoint stores only {n_tensors} tensors")
        with no_init_weights(), (torch.device("meta") if meta_only else _parameters_on_meta()):
            return AutoModelForCausalLM.from_config(config)
    except CheckpointError:
        raise
    except Exception as e:  # third-party code on untrusted input: any failure means a bad config.json
        raise CheckpointError(f"{path} does not describe a model this build can construct ({type(e).__name__}: {str(e)[:200]})") from None


def _tensor_ids(model: nn.Module) -> dict[str, int]:
    """State-dict key -> identity of the parameter/buffer object behind it (tied keys share one)."""
    ids = {k: id(v) for k, v in model.named_parameters(remove_duplicate=False)}
    ids.update({k: id(v) for k, v in model.named_buffers(remove_duplicate=False)})
    return ids


def _plan(ckpt_dir: str, meta: dict, tensors: dict, model: nn.Module, uniform_dtype: bool) -> tuple[dict, dict]:
    """Check the checkpoint against ``model`` without changing either. Returns ({layer name:
    (PackedWeight, bias)}, {state key: tensor} for everything else, tied aliases filled in).

    uniform_dtype: the model was rebuilt from config.json, so it adopts the checkpoint's floating
    dtype, which must then be one dtype for every float tensor (a mixed one is an edit)."""
    tensors = dict(tensors)
    packed = {}
    for name, geo in meta["layers"].items():
        try:
            target = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint layer {name!r} does not exist in the model") from None
        if is_linear(target):
            want = tuple(linear_weight(target).shape)
        else:
            want = (getattr(target, "out_features", None), getattr(target, "in_features", None))
        v1 = meta["format_version"] == 1
        fields = {}
        for f in PackedWeight.TENSOR_FIELDS if v1 else STORED_TENSORS:
            key = f"{name}.{f}"
            if key not in tensors:
                raise CheckpointError(f"{ckpt_dir}: tensor {key} is missing")
            fields[f] = tensors.pop(key)
        where = f"{ckpt_dir}: layer {name}"
        try:
            geometry = {k: geo[k] for k in PackedWeight.META_FIELDS}
            if v1:
                p = PackedWeight(**fields, **geometry)
            else:  # v2: the permutations are rebuilt from their codes, each refused by name if corrupt
                p = from_stored(fields, geometry, where)
            validate(p, where=where)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if want != (p.out_features, p.in_features):
            raise CheckpointError(f"layer {name}: checkpoint shape {(p.out_features, p.in_features)} does not match the model's {want}")
        bias = tensors.pop(f"{name}.bias", None)
        model_bias = getattr(target, "bias", None)
        if geo["bias"] != (model_bias is not None):
            raise CheckpointError(f"layer {name}: checkpoint declares bias={geo['bias']} but the model's layer "
                                  f"{'has' if model_bias is not None else 'has no'} bias")
        if geo["bias"] != (bias is not None):
            raise CheckpointError(f"{ckpt_dir}: tensor {name}.bias is {'missing' if geo['bias'] else 'stored but the layer declares no bias'}")
        if bias is not None and (tuple(bias.shape) != (p.out_features,) or
                                 (not uniform_dtype and bias.dtype != model_bias.dtype) or not bias.is_floating_point()):
            raise CheckpointError(f"{ckpt_dir}: tensor {name}.bias is {bias.dtype} {tuple(bias.shape)}, the layer needs "
                                  f"{model_bias.dtype} ({p.out_features},)")
        packed[name] = (p, bias)
    under = tuple(n + "." for n in packed)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(under)}
    ids = _tensor_ids(model)
    for alias, canon in meta.get("tied", {}).items():
        if alias in tensors:
            raise CheckpointError(f"{ckpt_dir}: tensor {alias} is stored and also declared tied to {canon}")
        if alias not in expected or canon not in tensors or ids.get(alias) is None or ids.get(alias) != ids.get(canon):
            raise CheckpointError(f"{ckpt_dir}: declared tie {alias} -> {canon} is not a tie of the model")
        tensors[alias] = tensors[canon]
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        raise CheckpointError(f"{ckpt_dir}: tensors not in the model: {unexpected[:5]}")
    if missing:
        raise CheckpointError(f"{ckpt_dir}: model tensors missing from the checkpoint: {missing[:5]}")
    # Two stored (not aliased) tensors behind one tied parameter: load_state_dict would keep
    # whichever it copies last, silently; save_quantized stores a tie once.
    owner = {}
    for k in tensors:
        if k in meta.get("tied", {}) or ids.get(k) is None:  # None: a state entry that is no parameter/buffer
            continue
        if ids.get(k) in owner:
            raise CheckpointError(f"{ckpt_dir}: tensors {owner[ids[k]]} and {k} are one tied parameter of the model "
                                  "but are both stored (save_quantized stores a tie once)")
        owner[ids.get(k)] = k
    # A NaN/inf parameter or bias is never a model save_quantized wrote from a working one (it
    # refuses non-finite weights to quantize); loaded, it would turn every logit NaN. Buffers may
    # hold infinities legitimately (masks), so only parameters are checked.
    params = {id(v) for v in model.parameters()}
    for k, v in list(tensors.items()) + [(f"{n}.bias", b) for n, (_, b) in packed.items() if b is not None]:
        if v.is_floating_point() and ids.get(k) in params and not torch.isfinite(v).all():
            raise CheckpointError(f"{ckpt_dir}: tensor {k} holds NaN or infinite values")
    floats = {v.dtype for k, v in tensors.items() if v.is_floating_point()}
    floats |= {b.dtype for _, b in packed.values() if b is not None}
    if uniform_dtype and len(floats) > 1:
        raise CheckpointError(f"{ckpt_dir}: floating tensors mix dtypes {sorted(map(str, floats))}; a saved model has one")
    for k, v in tensors.items():
        e = expected[k]
        if tuple(e.shape) != tuple(v.shape):
            raise CheckpointError(f"{ckpt_dir}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(e.shape)}")
        same_kind = v.is_floating_point() == e.is_floating_point()
        if not same_kind or (v.dtype != e.dtype and not (uniform_dtype and v.is_floating_point())):
            raise CheckpointError(f"{ckpt_dir}: tensor {k} is {v.dtype}, the model expects {e.dtype}")
    return packed, tensors


def load_quantized(ckpt_dir: str, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by save_quantized.

    Without ``model``, a transformers model is rebuilt from config.json (in the checkpoint's
    floating dtype). With ``model`` (any nn.Module of the original architecture), its quantized
    linears are replaced in place and its other tensors overwritten; it is left untouched when the
    checkpoint is refused. Every check runs before anything is allocated or changed, and anything
    wrong raises CheckpointError naming it.
    """
    meta = read_marker(ckpt_dir)
    path = os.path.join(ckpt_dir, MARKER)
    cfg = quant_config(path, meta.get("quant_config"))
    tensors = read_weights(ckpt_dir)
    rebuilt = model is None
    # Structure first (its messages name what is inconsistent), then the checksums (which catch
    # what is consistent but edited), all before anything is built or changed.
    if rebuilt:
        # Checked against a meta-device skeleton, so a config.json claiming a huge model costs
        # nothing; only after every check passes is the real one built (its parameters then come
        # from the checked tensors, so its size is bounded by the file).
        digest = meta.get("files", {}).get(CONFIG)
        _plan(ckpt_dir, meta, tensors, _skeleton_from_config(ckpt_dir, True, digest, len(tensors)), uniform_dtype=True)
        verify_checksums(ckpt_dir, tensors, meta.get("checksums", {}))
        model = _skeleton_from_config(ckpt_dir, False, digest)
        packed, rest = _plan(ckpt_dir, meta, tensors, model, uniform_dtype=True)
    else:
        packed, rest = _plan(ckpt_dir, meta, tensors, model, uniform_dtype=False)
        verify_checksums(ckpt_dir, tensors, meta.get("checksums", {}))
    for name, (p, bias) in packed.items():
        model.set_submodule(name, SFMPLinear(p, bias))
    model.load_state_dict(rest, strict=False, assign=rebuilt)
    if hasattr(model, "tie_weights") and meta.get("tied"):
        model.tie_weights()
    if rebuilt:
        still = [k for k, v in model.state_dict().items() if v.is_meta]
        if still:  # cannot happen after _plan's missing-tensor check; a silent meta tensor would crash later
            raise CheckpointError(f"{ckpt_dir}: model tensors not loaded: {still[:5]}")
    if cfg is not None:
        from .plan import Plan
        model.sfmp_plan = Plan(cfg, {})
    return model.to(device).eval()
