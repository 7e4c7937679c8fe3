"""Small FX helpers shared by the passes: shapes from node meta, attaching constants, gather nodes.

Dynamo graphs carry FakeTensor ``meta["example_value"]``; graphs that came through AOT / make_fx carry
``meta["val"]``. The passes read shapes from either and copy them onto the nodes they create, so a
later pass (folding) can reason about the nodes an earlier pass (rewriting) made.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx as fx

# Tag every node the passes create: meta["sfmp"] = {"role": ..., "layers": [...]}.
ROLE_IN = "in_gather"      # x[..., col_perm] before the GEMM
ROLE_OUT = "out_gather"    # y_r[..., inverse(row_perm)] after the GEMM (back to original row order)
ROLE_GEMM = "gemm"
ROLE_BIAS = "bias"
GATHER_ROLES = (ROLE_IN, ROLE_OUT)
BUFFER_PREFIX = "sfmp_"  # every buffer the passes register; unused ones are dropped by drop_unused_buffers
GATHER_FNS = (torch.index_select, torch.ops.aten.index_select.default)


def node_value(node: Any):
    """The example value (FakeTensor, SymInt, ...) recorded on a node, or None."""
    if not isinstance(node, fx.Node):
        return None
    v = node.meta.get("example_value")
    if v is None:
        v = node.meta.get("val")
    if v is None:  # torch.fx.passes.shape_prop.ShapeProp records shapes only
        tm = node.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape") and hasattr(tm, "dtype"):
            v = torch.empty(tm.shape, dtype=tm.dtype, device="meta")
    return v


def node_shape(node: Any) -> tuple | None:
    """Shape of a tensor-valued node (entries may be SymInts), or None when unknown / not a tensor."""
    v = node_value(node)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def static_int(d) -> int | None:
    """d as a Python int when it is static, else None (a symbolic size we must not guard on)."""
    if isinstance(d, int):
        return d
    try:
        return d.node.maybe_as_int()  # SymInt: an int only when it is a constant
    except AttributeError:
        return None


def last_dim(node: Any) -> int | None:
    s = node_shape(node)
    if s is None or len(s) == 0:
        return None
    return static_int(s[-1])


def copy_value_meta(dst: fx.Node, src: fx.Node) -> None:
    """Give ``dst`` the example value of ``src`` (used when ``dst`` has the same shape and dtype)."""
    for key in ("example_value", "val", "tensor_meta"):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def sanitize(name: str) -> str:
    """A string usable as a Python attribute name (for buffers registered on the GraphModule)."""
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else "_" + s


def attach_constant(gm: fx.GraphModule, name: str, tensor: torch.Tensor, before: fx.Node | None = None,
                    after: fx.Node | None = None) -> fx.Node:
    """Register ``tensor`` as a buffer of ``gm`` and return a get_attr node for it.

    The node goes right before ``before`` (or right after ``after``), i.e. next to its first use, so
    dumps read top to bottom; with neither, right after the placeholders. Buffers (not plain
    attributes) are what compile_fx accepts once the GraphModule is re-wrapped with
    ``torch.fx.GraphModule(gm, gm.graph)``. A unique name is chosen if ``name`` is taken.
    """
    base, i = BUFFER_PREFIX + sanitize(name), 0
    attr = base
    while hasattr(gm, attr):
        i += 1
        attr = f"{base}_{i}"
    gm.register_buffer(attr, tensor)
    if after is not None:
        ctx = gm.graph.inserting_after(after)
    else:
        ctx = gm.graph.inserting_before(before if before is not None else first_node(gm))
    with ctx:
        node = gm.graph.get_attr(attr)
    node.meta["example_value"] = tensor
    return node


def get_constant(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor behind a get_attr node."""
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def insert_gather(gm: fx.GraphModule, src: fx.Node, index: torch.Tensor, role: str, layers: list[str],
                  name: str, *, before: fx.Node | None = None, aten_mode: bool = False) -> fx.Node:
    """Insert ``index_select(src, -1, index)`` before ``before`` (default: right after ``src``).

    index: int64 [n] — output column i reads input column index[i]. Inductor lowers index_select to an
    indirect load it can fuse into the producer or the consumer.
    """
    index = index.to(torch.int64).contiguous()
    if before is None and src.op == "placeholder":
        before = first_node(gm)  # keep the placeholders together at the top
    if before is not None:
        idx = attach_constant(gm, name, index, before=before)
    else:
        idx = attach_constant(gm, name, index, after=src)
    fn = torch.ops.aten.index_select.default if aten_mode else torch.index_select
    with gm.graph.inserting_after(idx):
        g = gm.graph.call_function(fn, (src, -1, idx))
    copy_value_meta(g, src)
    g.meta["sfmp"] = {"role": role, "layers": list(layers)}
    return g


def first_node(gm: fx.GraphModule) -> fx.Node:
    """First non-placeholder node: constants go right after the placeholders so they dominate every use."""
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            return n
    return gm.graph.output_node() if hasattr(gm.graph, "output_node") else list(gm.graph.nodes)[-1]


def is_gather(node: Any, roles=GATHER_ROLES) -> bool:
    """A gather node created by the passes (index_select on the last dim with a constant index)."""
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target in GATHER_FNS
            and node.meta.get("sfmp", {}).get("role") in roles)


def gather_index(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    return get_constant(gm, node.args[2])


def sfmp_role(node: Any) -> str | None:
    return node.meta.get("sfmp", {}).get("role") if isinstance(node, fx.Node) else None


def is_identity(index: torch.Tensor) -> bool:
    return torch.equal(index.cpu(), torch.arange(index.numel(), dtype=index.dtype))


def inverse_perm(p: torch.Tensor) -> torch.Tensor:
    """inverse(p)[p[i]] = i, int64."""
    p = p.to(torch.int64).cpu()
    inv = torch.empty_like(p)
    inv[p] = torch.arange(p.numel(), dtype=torch.int64)
    return inv


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """Every fx.Node among a node's args and kwargs (flattened), in order, without duplicates."""
    out: list[fx.Node] = []

    def visit(a):
        if isinstance(a, fx.Node):
            if a not in out:
                out.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(node.args)
    visit(node.kwargs)
    return out


def erase_if_unused(gm: fx.GraphModule, node: Any) -> None:
    """Erase ``node`` (and, recursively, its now-unused pure inputs) when nothing uses it any more."""
    if not isinstance(node, fx.Node) or node.users or node.op in ("placeholder", "output"):
        return
    if node.op == "call_function" and getattr(node.target, "_schema", None) is not None and node.target._schema.is_mutable:
        return
    inputs = tensor_args(node)
    gm.graph.erase_node(node)
    for a in inputs:
        if a.op in ("call_function", "call_method", "get_attr"):
            erase_if_unused(gm, a)


def drop_unused_buffers(gm: fx.GraphModule) -> None:
    """Delete the passes' buffers that no get_attr reads any more (folded gathers' indices)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in list(gm._buffers):
        if name.startswith(BUFFER_PREFIX) and name not in used:
            del gm._buffers[name]


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule over a copy of ``gm``'s graph (node meta shallow-copied), so passes that edit
    in place leave ``gm`` untouched."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    new = fx.GraphModule(gm, graph)
    new.meta = dict(getattr(gm, "meta", {}))
    return new


def is_state_input(node: fx.Node, value) -> bool:
    """Whether a Dynamo placeholder carries a parameter or a buffer (from its source name)."""
    if isinstance(value, torch.nn.Parameter):
        return True
    ga = node.meta.get("grapharg")
    src = str(getattr(getattr(ga, "source", None), "name", "")) if ga is not None else ""
    return isinstance(value, torch.Tensor) and "_buffers[" in src


def graph_constants(gm: fx.GraphModule, example_inputs):
    """``constant(node)``: the real tensor behind a parameter / buffer placeholder or a get_attr
    (the constants a pass may read or permute), or None (activations, released weights)."""
    phs = {n: e for n, e in zip([n for n in gm.graph.nodes if n.op == "placeholder"], example_inputs)}

    def constant(node: fx.Node):
        if node.op == "get_attr":
            try:
                return get_constant(gm, node)
            except AttributeError:
                return None
        if node.op == "placeholder":
            e = phs.get(node)
            if e is not None and is_state_input(node, e):
                return None if e.untyped_storage().nbytes() == 0 else e  # released: values gone
        return None

    return constant
