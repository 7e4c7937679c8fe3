"""Activation statistics from inside a traced graph: E[x²] of every linear's input columns.

The backend only sees a GraphModule, not the model, so calibration runs *the graph*: the calibration
batches are substituted for the user inputs (parameters stay the real ones Dynamo passed) and an FX
Interpreter records each linear's input as it goes. Dynamo specialised the graph to the shapes of
the first call (e.g. ``view(1, 8, -1, 16)``), so calibration tensors of another shape are re-cut into
windows of the compiled shape (token ids: consecutive windows of the flattened text).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch
import torch.fx as fx
from torch import nn

from .find_linears import LinearSite
from .names import source_name

_ARG = re.compile(r"^L\['args'\]\[(\d+)\]$")
_KWARG = re.compile(r"^L\['kwargs'\]\['(\w+)'\]$")
_LOCAL = re.compile(r"^L\['(\w+)'\]$")


def _user_inputs(gm: fx.GraphModule, example_inputs) -> list[tuple[int, str | int, torch.Tensor]]:
    """(placeholder index, key, example) for every user tensor input: key is a position or a kwarg name."""
    out = []
    for i, (node, ex) in enumerate(zip([n for n in gm.graph.nodes if n.op == "placeholder"], example_inputs)):
        if not isinstance(ex, torch.Tensor) or isinstance(ex, nn.Parameter):
            continue
        ga = node.meta.get("grapharg")
        src = source_name(ga.source) if ga is not None else ""
        if "._parameters[" in src or "._buffers[" in src:
            continue
        m = _ARG.match(src)
        if m:
            out.append((i, int(m.group(1)), ex))
            continue
        m = _KWARG.match(src) or _LOCAL.match(src)
        out.append((i, m.group(1) if m else src, ex))
    return out


def _value_for(item, key, n_user: int):
    """The part of one calibration item that feeds graph input ``key`` (None if the item has none)."""
    if isinstance(item, Mapping):
        if key in item:
            return item[key]
        if key == 0 and "input_ids" in item:
            return item["input_ids"]
        return None
    if isinstance(item, (tuple, list)):
        return item[key] if isinstance(key, int) and key < len(item) else None
    if isinstance(item, torch.Tensor) and (key in (0, "input_ids", "x", "input") or n_user == 1):
        return item
    return None


def _windows(t: torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
    """``t`` as a list of tensors shaped like ``like``: itself, or consecutive windows of its flat data."""
    t = t.to(like.device)
    if tuple(t.shape) == tuple(like.shape):
        return [t.to(like.dtype)]
    flat = t.reshape(-1).to(like.dtype)
    n = like.numel()
    return [flat[i * n : (i + 1) * n].view(like.shape) for i in range(flat.numel() // n)]


class _Recorder(fx.Interpreter):
    def __init__(self, gm, sites: Mapping[fx.Node, LinearSite]):
        super().__init__(gm)
        self.sites = sites
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, n):
        site = self.sites.get(n)
        if site is not None:
            x = self.env[site.x].detach().float()
            x = x.reshape(-1, x.shape[-1])
            s = x.pow(2).sum(0)
            self.sums[site.name] = self.sums[site.name] + s if site.name in self.sums else s
            self.counts[site.name] = self.counts.get(site.name, 0) + x.shape[0]
        return super().run_node(n)


def graph_input_moments(gm: fx.GraphModule, example_inputs, sites: Iterable[LinearSite],
                        calibration: Iterable) -> dict[str, torch.Tensor] | str:
    """E[x_k²] fp32 [K] per layer name, or a string saying why calibration cannot feed this graph.

    calibration: model inputs as given to the model (token-id tensors, kwargs dicts or arg tuples).
    """
    example_inputs = list(example_inputs)
    users = _user_inputs(gm, example_inputs)
    if not users:
        return "the graph has no user inputs to substitute"
    site_map = {s.node: s for s in sites}
    rec = _Recorder(gm, site_map)
    n_runs = 0
    with torch.no_grad():
        for item in calibration:
            parts = {}
            for idx, key, ex in users:
                v = _value_for(item, key, len(users))
                if isinstance(v, torch.Tensor):
                    parts[idx] = _windows(v, ex)
            if not parts:
                return ("calibration items do not name this graph's inputs "
                        f"({[key for _, key, _ in users]}); it was probably split off by a graph break")
            n_win = min(len(w) for w in parts.values())
            for j in range(n_win):
                args = list(example_inputs)
                for idx, wins in parts.items():
                    args[idx] = wins[j]
                rec.run(*args)
                n_runs += 1
    if n_runs == 0:
        return "calibration gave no window of the compiled input shape"
    missing = [s.name for s in site_map.values() if s.name not in rec.sums]
    if missing:
        return f"calibration never reached {missing[:3]}"
    return {n: rec.sums[n] / rec.counts[n] for n in rec.sums}
