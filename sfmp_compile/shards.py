"""safetensors files one tensor at a time: reading a transformers model directory's shards by
tensor name, and writing a safetensors file whose tensors arrive one by one.

Both exist so that a model larger than RAM can be quantized (stream.py): a read opens a shard
memory-mapped only for as long as it takes to copy out the tensors asked for (an open map keeps
every page it touched resident and counted in the process's RSS), and a write appends each tensor's
bytes to a data file, so no more than one tensor is ever held for it. The file written is a plain
safetensors file (8-byte little-endian header length, JSON header, data), read back by
``safetensors.torch.load_file`` like any other.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Iterable

import torch

from .checkpoint_files import CheckpointError

INDEX = "model.safetensors.index.json"
# torch dtype <-> safetensors dtype name (the ones a model or an SFMP checkpoint stores)
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
FLOAT_SOURCES = (torch.float32, torch.float16, torch.bfloat16)


def _safe_open(path: str):
    from safetensors import safe_open
    try:
        return safe_open(path, framework="pt")
    except Exception as e:  # SafetensorError, OSError...: all mean the shard cannot be used
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({type(e).__name__}: {str(e)[:200]})") from None


class ShardReader:
    """The tensors of a transformers model directory (``model.safetensors``, or shards named in
    ``model.safetensors.index.json``, or every ``*.safetensors`` file), by state-dict key."""

    def __init__(self, model_dir: str):
        if not os.path.isdir(model_dir):
            raise CheckpointError(f"{model_dir} is not a directory")
        self.model_dir = model_dir
        index = os.path.join(model_dir, INDEX)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
                assert isinstance(weight_map, dict)
            except Exception as e:
                raise CheckpointError(f"{index} is not a safetensors index ({type(e).__name__}: {str(e)[:200]})") from None
            self.files = {k: os.path.join(model_dir, v) for k, v in weight_map.items()}
            for path in sorted(set(self.files.values())):
                if not os.path.isfile(path):
                    raise CheckpointError(f"{path}: shard named in {INDEX} is missing")
        else:
            shards = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
            if not shards:
                raise CheckpointError(f"{model_dir} holds no *.safetensors file (streamed quantization reads safetensors only)")
            self.files = {}
            for name in shards:
                path = os.path.join(model_dir, name)
                with _safe_open(path) as f:
                    self.files.update({k: path for k in f.keys()})

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def load(self, keys: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """key -> tensor (copied out of the map, which is closed before returning; float tensors
        converted to ``dtype`` when given). Refuses a missing key, a corrupt shard, or a float
        dtype other than fp32 / fp16 / bf16, each naming the tensor and file."""
        by_file: dict[str, list[str]] = {}
        for k in keys:
            if k not in self.files:
                raise CheckpointError(f"{self.model_dir}: tensor {k} is missing from the model's safetensors files")
            by_file.setdefault(self.files[k], []).append(k)
        out = {}
        for path, ks in by_file.items():
            with _safe_open(path) as f:
                for k in ks:
                    try:
                        t = f.get_tensor(k)
                    except Exception as e:
                        raise CheckpointError(f"{path}: tensor {k} cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
                    if t.is_floating_point() and t.dtype not in FLOAT_SOURCES:
                        raise CheckpointError(f"{path}: tensor {k} is {t.dtype}; streamed quantization reads fp32, fp16 or bf16")
                    out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def dtype_of(self, key: str) -> torch.dtype:
        """The stored dtype of one tensor (reads its header entry only)."""
        if key not in self.files:
            raise CheckpointError(f"{self.model_dir}: tensor {key} is missing from the model's safetensors files")
        with _safe_open(self.files[key]) as f:
            return _slice_dtype(f, key)


_NAME_TO_DTYPE = {v: k for k, v in DTYPES.items()}


def _slice_dtype(f, key: str) -> torch.dtype:
    name = f.get_slice(key).get_dtype()
    if name not in _NAME_TO_DTYPE:
        raise CheckpointError(f"tensor {key} has safetensors dtype {name}, which this build does not read")
    return _NAME_TO_DTYPE[name]


def _copy(src, dst, n: int, chunk: int) -> None:
    """Copy ``n`` bytes from file ``src`` to ``dst`` (both at their current positions) without a
    user-space buffer where the OS allows (copy_file_range), else through ``chunk``-byte reads."""
    if hasattr(os, "copy_file_range"):
        try:
            while n > 0:
                done = os.copy_file_range(src.fileno(), dst.fileno(), min(n, 1 << 30))
                if done == 0:
                    break
                n -= done
            if n == 0:
                return
        except OSError:
            pass  # e.g. across file systems on old kernels: fall back to reads (positions are current)
    shutil.copyfileobj(src, dst, chunk)


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor: ``add(name, tensor)`` appends the bytes to
    ``path + '.data'``; ``close()`` writes the header and then copies the data behind it (in the
    kernel where it can, else in 8 MiB chunks), and deletes the data file. Memory: one tensor's
    bytes at a time."""

    CHUNK = 8 << 20

    def __init__(self, path: str, metadata: dict[str, str] | None = None):
        self.path, self.metadata = path, dict(metadata or {})
        self.data_path = path + ".data"
        self._data = open(self.data_path, "wb")
        self.entries: dict[str, dict] = {}
        self.offset = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        """Append one tensor (any device; copied to CPU, contiguous)."""
        if name in self.entries or name == "__metadata__":
            raise ValueError(f"tensor {name!r} written twice (or a reserved name)")
        if t.dtype not in DTYPES:
            raise TypeError(f"tensor {name}: dtype {t.dtype} cannot be stored in safetensors here")
        data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        n = len(data) if isinstance(data, bytes) else data.nbytes
        self._data.write(data if isinstance(data, bytes) else data.data)
        self.entries[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [self.offset, self.offset + n]}
        self.offset += n

    def close(self) -> str:
        self._data.close()
        header = dict(self.entries)
        if self.metadata:
            header["__metadata__"] = self.metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
        with open(self.path, "wb") as out, open(self.data_path, "rb") as data:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            out.flush()
            _copy(data, out, self.offset, self.CHUNK)
        os.remove(self.data_path)
        return self.path

    def abort(self) -> None:
        """Drop a half-written file (its data file and any output)."""
        if not self._data.closed:
            self._data.close()
        for p in (self.data_path, self.path):
            if os.path.exists(p):
                os.remove(p)
