"""Fisher salience for streamed quantization: a backward pass one decoder layer at a time.

The diagonal Fisher S = Σ_n (∂L_n/∂W)² needs each sequence's loss gradient at every linear weight,
which a whole-model backward gives and a run that holds one decoder layer cannot. Here it is
computed in three sweeps, each holding one layer:

1. forward: this rank's sequences run through the layers as in the activation-salience pass (E[x²]
   recorded when the clip search needs it); every layer's input hidden states go to a file in a
   temporary directory (offload; read back memory-mapped), the last layer's output stays.
2. head: the model's own loss (``salience.sequence_loss``, what ``fisher_salience`` calls) with its
   decoder layers replaced by stand-ins that hand the stored last output on; autograd gives ∂L_n/∂h.
3. backward, last layer first: the layer is read again, its forward recomputed from the stored
   input with gradients on, and backpropagated from ∂L_n/∂h_out; the linears' squared weight
   gradients are summed over sequences in item order (``distributed.OrderedSums``, so torchrun ranks
   give one process's bits) and ∂L_n/∂h_in goes to the layer below. A layer whose sum is complete is
   reduced to its ``plan.LayerSummary`` and released.

Every step is the arithmetic the whole-model autograd does (the same ops on the same values), so
the saliences, and with them the checkpoint, are ``quantize``'s with salience="fisher".
Cost: each layer is read twice and its forward run twice; disk: this rank's tokens × hidden size ×
layers in the compute dtype; memory: one layer with its weight gradients, plus ∂L/∂h and one layer's
stored inputs for this rank's sequences. Across ranks every sequence's squared gradients (one
layer's weights in fp32) are broadcast once: the price of bit-identity (distributed.py).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import torch
from torch import nn

from .distributed import OrderedSums
from .plan import summarize_layers
from .progress import bar
from .quantizers.gptq import block_input, layer_output
from .salience import check_weights, is_conv1d, linear_weight, sequence_loss
from .stream_steps import release_params

SEQUENCES_NEEDED = ("salience='fisher' in streamed quantization takes one sequence per calibration item (its loss "
                    "is per sequence, as in memory); split each [B, T] batch into [1, T] items, e.g. "
                    "[b[i:i + 1] for b in calibration for i in range(len(b))]")


def one_sequence_each(calibration: list) -> bool:
    """Whether every calibration item holds one sequence ([T] or [1, T] ids, or a dict whose
    input_ids are)."""
    def rows(item) -> int:
        ids = item.get("input_ids") if isinstance(item, Mapping) else item
        if not isinstance(ids, torch.Tensor):
            return -1
        return 1 if ids.dim() == 1 else ids.shape[0]
    return all(rows(item) == 1 for item in calibration)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _Replay(nn.Module):
    """Stands in for a decoder layer during the head step: the first returns the stored last hidden
    states, the others pass theirs on, each in the form (tensor or 1-tuple) the real layer returns."""

    def __init__(self, h: torch.Tensor | None, as_tuple: bool, like: nn.Module):
        super().__init__()
        self.h, self.as_tuple = h, as_tuple
        if hasattr(like, "attention_type"):  # models that pick a mask per layer read it
            self.attention_type = like.attention_type

    def forward(self, hidden_states=None, *args, **kwargs):
        h = hidden_states if self.h is None else self.h
        return (h,) if self.as_tuple else h


def fisher_summaries(s, need_moments: bool):
    """Fisher salience of every streamed layer, reduced as ``_Streamer.summaries`` reduces it.

    s: a ``stream._Streamer`` whose calibration items are single sequences. Returns (name ->
    LayerSummary, name -> E[x²] fp32 [K] or None)."""
    with tempfile.TemporaryDirectory(prefix="sfmp-fisher-") as tmp:
        last, moments, as_tuple = _forward(s, need_moments, tmp)
        grads = _head_gradients(s, last, as_tuple)
        del last
        summaries = {}
        for i in bar(reversed(range(len(s.blocks))), total=len(s.blocks), desc="stream fisher backward",
                     unit="decoder layer"):
            summaries.update(_backward_layer(s, i, grads, tmp))
    return {n: summaries[n] for n in s.layers}, ({n: moments[n] for n in s.layers} if need_moments else None)


def _path(tmp: str, i: int) -> str:
    return os.path.join(tmp, f"layer{i}.pt")


def _forward(s, need_moments: bool, tmp: str):
    """Sweep 1: (this rank's last hidden states, E[x²] per layer, whether layers return tuples)."""
    moments, kinds = {}, set()
    inputs = s.first_inputs
    for i in bar(range(len(s.blocks)), desc="stream fisher forward", unit="decoder layer"):
        blk, mods = s.load_block(i), s.block_layers(i)
        check_weights(mods)
        if i > 0:
            torch.save([_hidden(*x) for x in inputs], _path(tmp, i))
        handle = blk.register_forward_hook(lambda mod, args, out: kinds.add(isinstance(out, tuple)))
        try:
            inputs = s.run_block(blk, mods, inputs, moments if need_moments else None)
        finally:
            handle.remove()
        release_params(blk)
    return [_hidden(*x) for x in inputs], moments, True in kinds


def _head_gradients(s, last: list, as_tuple: bool) -> list:
    """Sweep 2: ∂L_n/∂h for the last layer's output of each of this rank's sequences."""
    saved, grads = list(s.blocks), []
    with s.outside_stack(head=True), torch.enable_grad():
        try:
            for item, h in zip(s.items, last):
                leaf = h.detach().requires_grad_(True)
                for j, blk in enumerate(saved):
                    s.blocks[j] = _Replay(leaf if j == 0 else None, as_tuple, blk)
                sequence_loss(s.model, item).backward()
                grads.append(leaf.grad)
        finally:
            for j, blk in enumerate(saved):
                s.blocks[j] = blk
    return grads


def _backward_layer(s, i: int, grads: list, tmp: str) -> dict:
    """Sweep 3 for layer i: its LayerSummaries; ``grads`` becomes ∂L_n/∂h of its input."""
    blk, mods = s.load_block(i), s.block_layers(i)
    weights = {n: linear_weight(m).detach() for n, m in mods.items()}
    stored = torch.load(_path(tmp, i), mmap=True, weights_only=True) if i > 0 else [_hidden(*x) for x in s.first_inputs]
    sums = OrderedSums(s.ranks, s.n_items, {n: tuple(m.weight.shape) for n, m in mods.items()})
    for m in mods.values():
        m.weight.requires_grad_(True)
    below = []
    with torch.enable_grad():
        for j in range(s.ranks.rounds(s.n_items)):
            if j < len(s.items):
                h = stored[j].detach().requires_grad_(i > 0)
                args, kwargs = block_input(*s.first_inputs[j], h)
                out = layer_output(blk(*args, **kwargs))
                out.backward(grads[j])
                for n, m in mods.items():
                    if m.weight.grad is None:
                        raise ValueError(f"fisher salience: no gradient reached {n} (is it used by its decoder layer?)")
                    sums.record(n, m.weight.grad.float().pow_(2), 1)  # in place: the grad is dropped next
                    m.weight.grad = None
                below.append(h.grad)
            sums.end_round(j)
    grads[:] = below
    del stored
    if i > 0:
        os.remove(_path(tmp, i))
    sal = sums.result(lambda t, c: t)
    for n, m in mods.items():
        if is_conv1d(m):
            sal[n] = sal[n].t().contiguous()
        if not torch.isfinite(sal[n]).all():
            raise ValueError(f"{n}: fisher salience is not finite (the loss gradients overflow fp32 or contain NaN); "
                             "the weight itself is finite and in range")
    out = summarize_layers(weights, sal, s.config)
    release_params(blk)
    return out
