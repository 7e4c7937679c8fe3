"""Qualified names of the parameters Dynamo hands the backend.

Dynamo names a parameter by how the traced frame reached it, e.g.
``L['self']._modules['model']._modules['layers']._modules['0']._modules['mlp']._modules['up_proj']._parameters['weight']``.
We keep the ``_modules`` / ``_parameters`` / ``_buffers`` keys and drop the frame root (``L['self']``,
``G['model']``, ``L['fn'].__self__``): ``model.layers.0.mlp.up_proj.weight``, which is what
``model.named_parameters()`` calls it when the compiled frame is the model's own forward.

After a graph break *inside* a submodule, Dynamo compiles that submodule's frame (or a resume
function whose root is ``L['___stack0']``), so the path is relative to the submodule and can be
ambiguous; ``NameResolver`` then maps parameters by identity when the backend was given the model.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch
from torch import nn

_KEY = re.compile(r"\._(?:modules|parameters|buffers)\['([^']*)'\]")


def source_name(source) -> str:
    """Dynamo source (object or its ``.name`` string) of a placeholder -> its display string."""
    if source is None:
        return ""
    name = getattr(source, "name", source)
    return name() if callable(name) else str(name)


def dotted_name(source: str) -> str:
    """``L['self']._modules['a']._modules['0']._parameters['weight']`` -> ``a.0.weight``.

    Falls back to a sanitised copy of the whole source when it has no module/parameter keys (a plain
    tensor input or an attribute Dynamo spelled differently).
    """
    keys = _KEY.findall(source)
    if keys:
        return ".".join(keys)
    return re.sub(r"[^\w.]", "_", source).strip("_") or "<unnamed>"


def module_path_name(path: str) -> str:
    """``L['self'].model.layers[0].mlp`` (an nn_module_stack path) -> ``model.layers.0.mlp``."""
    path = re.sub(r"^(?:[LG]\['[^']*'\](?:\.__self__)?)\.?", "", str(path))
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    return path.strip(".") or "<root>"


def is_relative(source: str) -> bool:
    """True when the source starts below the model (a resume frame's stack slot), so names may be partial."""
    return "___stack" in source


def layer_of(param_name: str) -> str:
    """``a.b.weight`` -> ``a.b`` (the linear layer's name, as ``find_linears`` spells it)."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


class NameResolver:
    """Maps a weight parameter to the layer name used in plans, dumps and reports.

    model: optional root module; when given, names come from ``model.named_modules()`` by parameter
    identity, which is exact even for graphs Dynamo compiled from inside a submodule.
    """

    def __init__(self, model: nn.Module | None = None):
        self._by_id: dict[int, str] = {}
        self._modules: dict[str, tuple[str, nn.Module]] = {}  # str(id(module)), as nn_module_stack keys them
        self._model = model
        if model is not None:
            for mname, mod in model.named_modules():
                self._modules.setdefault(str(id(mod)), (mname, mod))
                w = getattr(mod, "weight", None)
                if isinstance(w, torch.Tensor) and id(w) not in self._by_id:
                    self._by_id[id(w)] = mname
                for bname, buf in mod.named_buffers(recurse=False):
                    self._by_id.setdefault(id(buf), mname)  # SFMPLinear: its packed buffers name the layer

    @property
    def exact(self) -> bool:
        return self._model is not None

    def layer_name(self, tensor: torch.Tensor | None, source: str, call_node=None) -> str:
        """Name of the layer whose weight is ``tensor`` (reached through Dynamo ``source``).

        call_node: the node computing the linear. Its ``nn_module_stack`` names the module that made the
        call, which is the right name for a tied weight (GPT-2's lm_head uses wte's parameter).
        """
        from_call = self._call_module_name(call_node, tensor)
        if from_call is not None:
            return from_call
        if tensor is not None and id(tensor) in self._by_id:
            return self._by_id[id(tensor)]
        return layer_of(dotted_name(source))

    def _call_module_name(self, node, tensor) -> str | None:
        stack = getattr(node, "meta", {}).get("nn_module_stack") if node is not None else None
        if not stack:
            return None
        key, (path, cls) = list(stack.items())[-1]
        if not (isinstance(cls, type) and (issubclass(cls, nn.Linear) or cls.__name__ == "Conv1D")):
            return None  # F.linear called by some other module: name it by its weight instead
        if key in self._modules:
            name, mod = self._modules[key]
            # The graph may be run for another instance of the same module class (Dynamo reuses it):
            # the recorded module is the right name only if it really holds this weight.
            if tensor is None or getattr(mod, "weight", None) is tensor:
                return name
            return None
        if self._model is not None:
            return None  # an unknown module id: identity lookup below is exact
        return module_path_name(path)

    def resolve(self, name: str, known: Iterable[str]) -> str | None:
        """The entry of ``known`` that ``name`` denotes: exact match, else the unique one ending in
        ``.name`` (a frame-relative path). None when absent; ValueError when ambiguous."""
        known = list(known) if not isinstance(known, (set, dict, Mapping)) else known
        if name in known:
            return name
        hits = [k for k in known if k.endswith("." + name)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(
                f"cannot tell which planned layer '{name}' is ({len(hits)} candidates, e.g. {hits[:3]}): Dynamo "
                "compiled a graph from inside a submodule, so its parameter names are relative. Pass the model "
                "to the backend (sfmp_backend(plan=..., model=model)) so layers are matched by identity.")
        return None
