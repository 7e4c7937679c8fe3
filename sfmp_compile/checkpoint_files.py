"""Reading an SFMP checkpoint's files as untrusted input: regular files only, a bounded and
type-checked sfmp.json under the compatibility rule (see checkpoint.py), safetensors read without
pickle, and SHA-256 checksums of every stored tensor and of config.json."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat

import torch
from safetensors.torch import load_file

from .format import FORMAT_VERSION, READ_VERSIONS, PackedWeight

MARKER = "sfmp.json"
WEIGHTS = "model.safetensors"
MAX_MARKER_BYTES = 64 << 20  # a layer's geometry is ~200 bytes: 64 MiB is >300k layers
TOP_KEYS = {"format", "format_version", "model_class", "quant_config", "layers", "tied", "checksums", "files"}
CONFIG = "config.json"
LAYER_KEYS = set(PackedWeight.META_FIELDS) | {"bias"}  # the same in v1 and v2


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, foreign, or does not match the model."""


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (so a reinterpretation is caught as well)."""
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    if t.numel():
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(MAX_MARKER_BYTES + 1)).hexdigest()


def regular_file(ckpt_dir: str, name: str) -> str | None:
    """Path of ``name`` in the checkpoint if it exists, refusing anything but a regular file (a
    FIFO or device named like a checkpoint file would block or stream forever when read)."""
    path = os.path.join(ckpt_dir, name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    return path


def read_marker(ckpt_dir: str) -> dict:
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is not a directory")
    path = regular_file(ckpt_dir, MARKER)
    if path is None:
        raise CheckpointError(f"{ckpt_dir} is not an SFMP checkpoint: {MARKER} is missing")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MARKER_BYTES + 1)
        if len(raw) > MAX_MARKER_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_MARKER_BYTES} bytes: not an SFMP marker")
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # ValueError covers JSONDecodeError and huge ints
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "sfmp":
        raise CheckpointError(f"{path} does not describe an SFMP checkpoint (format marker missing)")
    v = meta.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"{ckpt_dir}: format_version must be a JSON integer, got {v!r} ({type(v).__name__})")
    if v > FORMAT_VERSION:
        raise CheckpointError(f"{ckpt_dir}: checkpoint format version {v} was written by a newer build "
                              f"(this build reads versions up to {FORMAT_VERSION})")
    if v not in READ_VERSIONS:
        raise CheckpointError(f"{ckpt_dir}: checkpoint format version {v} is not supported (this build reads versions "
                              f"{list(READ_VERSIONS)})")
    unknown = sorted(set(meta) - TOP_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {unknown} (format version {v} knows {sorted(TOP_KEYS)})")
    check_marker_types(path, meta)
    return meta


def check_marker_types(path: str, meta: dict) -> None:
    """Every value of sfmp.json has the JSON type save_quantized writes, so later code can index it."""
    def need(cond, what):
        if not cond:
            raise CheckpointError(f"{path}: {what}")

    layers = meta.get("layers")
    version = meta["format_version"]
    need(isinstance(layers, dict) and layers, "'layers' must be a non-empty object of layer name -> geometry")
    for name, geo in layers.items():
        need(isinstance(geo, dict), f"layer {name!r}: geometry must be an object, got {type(geo).__name__}")
        missing, extra = sorted(LAYER_KEYS - set(geo)), sorted(set(geo) - LAYER_KEYS)
        need(not missing, f"layer {name!r} lacks geometry fields {missing}")
        need(not extra, f"layer {name!r} has unknown geometry fields {extra}")
        need(isinstance(geo["bias"], bool), f"layer {name!r}: 'bias' must be true or false, got {geo['bias']!r}")
        for k in PackedWeight.META_FIELDS:
            v = geo[k]
            need(isinstance(v, int) and not isinstance(v, bool), f"layer {name!r}: {k} must be an integer, got {v!r}")
        need(geo["version"] == version, f"layer {name!r}: version {geo['version']} differs from the checkpoint's "
             f"format_version {version}")
    tied = meta.get("tied", {})
    need(isinstance(tied, dict) and all(isinstance(v, str) for v in tied.values()),
         "'tied' must be an object of tensor name -> tensor name")
    sums = meta.get("checksums", {})
    need(isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values()),
         "'checksums' must be an object of tensor name -> hex digest")
    files = meta.get("files", {})
    need(isinstance(files, dict) and set(files) <= {CONFIG} and all(isinstance(v, str) for v in files.values()),
         f"'files' must be an object with at most the key {CONFIG!r} -> hex digest")
    need(isinstance(meta.get("model_class", ""), str), "'model_class' must be a string")
    qc = meta.get("quant_config")
    need(qc is None or isinstance(qc, dict), f"'quant_config' must be an object or null, got {type(qc).__name__}")


def quant_config(path: str, qc: dict | None):
    if not qc:
        return None
    from .config import QuantConfig
    known = {f.name for f in dataclasses.fields(QuantConfig)}
    unknown = sorted(set(qc) - known)
    if unknown:
        raise CheckpointError(f"{path}: quant_config has unknown keys {unknown} (this build, format version "
                              f"{FORMAT_VERSION}, knows {sorted(known)})")
    try:
        return QuantConfig.from_dict(qc)
    except (TypeError, ValueError) as e:  # SFMPConfigError is a ValueError; tuple(5) etc. a TypeError
        raise CheckpointError(f"{path}: quant_config is invalid ({e})") from None


def read_weights(ckpt_dir: str) -> dict[str, torch.Tensor]:
    path = regular_file(ckpt_dir, WEIGHTS)
    if path is None:
        raise CheckpointError(f"{ckpt_dir}: {WEIGHTS} is missing")
    try:
        tensors = load_file(path)
    except Exception as e:  # a hostile header can raise SafetensorError, OSError, TypeError...: all mean "corrupt"
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    return tensors


def verify_checksums(ckpt_dir: str, tensors: dict, checksums: dict) -> None:
    """Every stored tensor against its SHA-256 in sfmp.json: the structural checks cannot see an
    edited code word or weight value, this can."""
    path = os.path.join(ckpt_dir, WEIGHTS)
    if checksums:
        if set(checksums) != set(tensors):
            diff = sorted(set(checksums) ^ set(tensors))
            raise CheckpointError(f"{path}: stored tensors and sfmp.json checksums disagree on {diff[:5]}")
        for k, t in tensors.items():
            if tensor_digest(t) != checksums[k]:
                raise CheckpointError(f"{path}: tensor {k} does not match its checksum (corrupted or edited)")
