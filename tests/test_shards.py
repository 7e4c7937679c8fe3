"""shards.py: a safetensors file written tensor by tensor reads back with safetensors itself; shards
are read by tensor name with clear errors."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sfmp_compile.checkpoint_files import CheckpointError
from sfmp_compile.shards import DTYPES, SafetensorsWriter, ShardReader

_DTYPES = sorted(DTYPES, key=str)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_DTYPES), st.lists(st.integers(0, 5), max_size=3)), min_size=1, max_size=6),
       st.integers(0, 2**31 - 1))
def test_writer_round_trips_through_safetensors(tmp_path_factory, specs, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (dtype, shape) in enumerate(specs):
        t = torch.randint(0, 2, shape, generator=g) if dtype == torch.bool else torch.randn(shape, generator=g) * 100
        tensors[f"t{i}.x"] = t.to(dtype)
    path = str(tmp_path_factory.mktemp("w") / "a.safetensors")
    w = SafetensorsWriter(path, {"format": "pt"})
    for k, v in tensors.items():
        w.add(k, v)
    w.close()
    assert not os.path.exists(path + ".data")
    back = load_file(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_writer_refuses_a_name_twice(tmp_path):
    w = SafetensorsWriter(str(tmp_path / "a.safetensors"))
    w.add("a", torch.zeros(2))
    with pytest.raises(ValueError, match="twice"):
        w.add("a", torch.zeros(2))
    w.abort()
    assert not os.listdir(tmp_path)


def test_reader_by_name_across_shards(tmp_path):
    save_file({"a": torch.ones(2, dtype=torch.bfloat16)}, str(tmp_path / "x-1.safetensors"))
    save_file({"b": torch.arange(3.0)}, str(tmp_path / "x-2.safetensors"))
    r = ShardReader(str(tmp_path))
    got = r.load(["a", "b"], torch.float32)
    assert got["a"].dtype == torch.float32 and torch.equal(got["b"], torch.arange(3.0))
    assert r.dtype_of("a") == torch.bfloat16
    with pytest.raises(CheckpointError, match="tensor c is missing"):
        r.load(["c"])
    save_file({"d": torch.zeros(2, dtype=torch.float64)}, str(tmp_path / "x-3.safetensors"))
    with pytest.raises(CheckpointError, match="fp32, fp16 or bf16"):
        ShardReader(str(tmp_path)).load(["d"])
