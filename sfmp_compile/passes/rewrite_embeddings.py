"""Rewrite an embedding lookup whose table is a quantized head's weight (tied embeddings) into an
sfmp embedding op, so that the float table is no longer needed by the graph.

``F.embedding(ids, W)`` -> ``sfmp::embedding_*(ids, <W's packed tensors>)`` (cast back to W's dtype).
Only plain lookups are rewritten: ``max_norm`` renormalises the table in place and stays as it is.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..layouts import SFMPWeight
from ..ops.dispatch import embedding_call
from .fx_utils import attach_constant, copy_value_meta, node_value

EMBEDDING_FNS = (F.embedding, torch.embedding, torch.ops.aten.embedding.default)


def _ids_and_table(node: fx.Node):
    """(ids, table) of an embedding call, or None when it is not a plain lookup."""
    if node.target is F.embedding:
        args = dict(zip(("input", "weight", "padding_idx", "max_norm"), node.args)) | dict(node.kwargs)
        if args.get("max_norm") is not None:
            return None
        return args["input"], args["weight"]
    return node.args[1], node.args[0]  # torch.embedding / aten.embedding: (weight, indices, ...)


def rewrite_embeddings(gm: fx.GraphModule, tables: dict[fx.Node, tuple[str, SFMPWeight]],
                       cpu_kernel: str = "packed") -> list[str]:
    """Rewrite every plain embedding lookup of ``gm`` whose table node is a key of ``tables``
    (node -> (layer name, its quantized weight in the packed or panel layout)). Returns the rewritten layers'
    names, one per lookup."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in EMBEDDING_FNS:
            continue
        got = _ids_and_table(node)
        if got is None or got[1] not in tables:
            continue
        ids, table = got
        name, w = tables[table]
        op, args = embedding_call(w, w.device, cpu_kernel)
        with gm.graph.inserting_before(node):
            consts = [attach_constant(gm, f"{name}.embedding.{i}", a, before=node) if isinstance(a, torch.Tensor)
                      else a for i, a in enumerate(args)]
            new = gm.graph.call_function(op, (ids, *consts))
            dtype = getattr(node_value(table), "dtype", torch.float32)
            if dtype != torch.float32:
                new = gm.graph.call_method("to", (new, dtype))
        copy_value_meta(new, node)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        done.append(name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
