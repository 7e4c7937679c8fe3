"""The per-layer steps both streamed sweeps share (stream.py, stream_fisher.py): a decoder layer's
parameters read from the shards and released, hooks on its linears' inputs, and running this rank's
calibration items through it in rounds."""
from __future__ import annotations

import torch
from torch import nn

from .checkpoint_files import CheckpointError
from .distributed import OrderedSums, Ranks
from .quantizers.gptq import block_outputs
from .shards import ShardReader


def materialize(module: nn.Module, prefix: str, reader: ShardReader, dtype: torch.dtype, keys: dict) -> None:
    """Fill ``module``'s meta parameters from the shards (prefix: its name in the state dict + '.').
    keys: state key -> stored key (a tied parameter is read under the name it is stored as)."""
    names = [n for n, p in module.named_parameters() if p.is_meta]
    tensors = reader.load([keys.get(prefix + n, prefix + n) for n in names], dtype)
    for n in names:
        owner, _, leaf = n.rpartition(".")
        mod = module.get_submodule(owner) if owner else module
        t = tensors[keys.get(prefix + n, prefix + n)]
        if tuple(t.shape) != tuple(mod._parameters[leaf].shape):
            raise CheckpointError(f"{reader.model_dir}: tensor {prefix + n} has shape {tuple(t.shape)}, config.json "
                                  f"implies {tuple(mod._parameters[leaf].shape)}")
        mod._parameters[leaf] = nn.Parameter(t, requires_grad=False)


def release_params(module: nn.Module) -> None:
    """Put ``module``'s parameters back on the meta device (their memory is freed)."""
    for mod in module.modules():
        for leaf, p in list(mod._parameters.items()):
            if p is not None and not p.is_meta:
                mod._parameters[leaf] = nn.Parameter(p.to("meta"), requires_grad=False)


class InputHooks:
    """Forward pre-hooks that hand each named linear's input to ``fn(name, x)``; removed on exit."""

    def __init__(self, modules: dict[str, nn.Module], fn):
        self.modules, self.fn = modules, fn

    def __enter__(self):
        self.handles = [m.register_forward_pre_hook(lambda mod, args, n=n: self.fn(n, args[0]))
                        for n, m in self.modules.items()]

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def run_rounds(blk: nn.Module, inputs: list, ranks: Ranks, n_items: int, sums: OrderedSums | None,
                keep: bool) -> list:
    """Run this rank's items through ``blk`` round by round (summing each round's contributions in
    item order, ``OrderedSums``); returns the outputs as the next block's inputs when ``keep``."""
    outs = []
    for j in range(ranks.rounds(n_items)):
        if j < len(inputs):
            o = block_outputs(blk, [inputs[j]])
            if keep:
                outs += o
        if sums is not None:
            sums.end_round(j)
    return outs
