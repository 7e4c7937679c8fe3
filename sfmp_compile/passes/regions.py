"""Elementwise regions: where a permutation of the last dimension can travel without changing results.

A *region* is a connected set of graph values that all have last dimension N and are only combined
by pointwise ops (SiLU, GELU, ·, +, dtype casts, eval-mode dropout) and reshapes that keep the last
dimension whole. It is entered only through *producers* (linear outputs) and left only through
*consumers* (linear inputs). Other operands are scalars, tensors broadcast along the last dim
(last dim 1), or constants shaped [1, ..., 1, N] (biases, per-channel scales) we can permute offline.

Why this makes folding exact: write v' = v[..., P] for every value v in the region, for one
permutation P. A producer can emit y[..., P] directly (it is y in reordered row order); a pointwise
op satisfies f(a', b')[..., i] = f(a[..., P[i]], b[..., P[i]]) = f(a, b)'[..., i] because each output
element reads only the same-index input elements (broadcast operands are constant along the last
dim, permuted constants are read at P[i] too); a reshape that keeps the last dim maps element
(row r, column i) to (row r', column i), so it commutes with P. No region value is observed by
anything else (we check every user), so the only place the layout shows is at the consumers, which
read h = h'[..., P⁻¹] and can compose P⁻¹ into their own input gather. Every element is computed by
the same arithmetic on the same inputs, so the folded graph is bitwise identical, not just close.

The same analysis runs twice: on the traced graph (to tie the row orders of the linears that meet
in one region, so all producers share P) and on the rewritten graph (to fold the gathers).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx

from .fx_utils import last_dim, node_shape, node_value, static_int, tensor_args

F = torch.nn.functional

POINTWISE_FNS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow, torch.where, torch.clamp,
    torch.exp, torch.sigmoid, torch.tanh, torch.erf, torch.relu, torch.abs, torch.square, torch.sqrt,
    torch.rsqrt, torch.reciprocal, torch.sin, torch.cos, torch.log, torch.clone,
    F.silu, F.gelu, F.relu, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.softplus, F.mish, F.hardswish,
    F.relu6, F.hardtanh,
}
POINTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "pow", "exp", "sigmoid", "tanh", "relu", "abs", "square", "sqrt",
    "rsqrt", "reciprocal", "clamp", "clone", "contiguous", "float", "half", "bfloat16", "double", "to",
    "type",
}
VIEW_FNS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze,
            torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default,
            torch.ops.aten.unsqueeze.default, torch.ops.aten.squeeze.dim, torch.ops.aten.clone.default,
            torch.ops.aten.alias.default}
VIEW_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
TRANSPOSE_FNS = {torch.transpose, torch.permute, torch.ops.aten.transpose.int, torch.ops.aten.permute.default}
TRANSPOSE_METHODS = {"transpose", "permute"}


def is_pointwise(node: fx.Node) -> bool:
    """A pure op applied element by element (with broadcasting) to all its tensor operands."""
    if node.op == "call_method":
        if node.target == "to":
            # .to(dtype) / .to(device, dtype) only: .to(other_tensor) takes a tensor that is not data
            return not any(isinstance(a, fx.Node) and isinstance(node_value(a), torch.Tensor) for a in node.args[1:])
        return node.target in POINTWISE_METHODS
    if node.op != "call_function":
        return False
    t = node.target
    if t is F.dropout:  # eval-mode dropout is the identity; training-mode masks are position-random
        training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", True)
        return training is False
    if t in POINTWISE_FNS:
        return True
    if isinstance(t, torch._ops.OpOverload):
        return torch.Tag.pointwise in t.tags and not t._schema.is_mutable
    return False


def _ndim(node) -> int | None:
    s = node_shape(node)
    return None if s is None else len(s)


def keeps_last_dim(node: fx.Node, src: fx.Node, n: int) -> bool:
    """A reshape / leading-dim transpose of ``src`` whose last dim stays whole and last (size n)."""
    if not node.args or node.args[0] is not src or last_dim(node) != n or last_dim(src) != n:
        return False
    t = node.target
    if (node.op == "call_method" and t in VIEW_METHODS) or (node.op == "call_function" and t in VIEW_FNS):
        return True  # row-major reshape with equal last dims maps (row r, col i) -> (row r', col i)
    if (node.op == "call_method" and t in TRANSPOSE_METHODS) or (node.op == "call_function" and t in TRANSPOSE_FNS):
        nd = _ndim(src)
        if nd is None:
            return False
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if not all(isinstance(d, int) for d in dims):
            return False
        if t in ("permute", torch.permute, torch.ops.aten.permute.default):
            return len(dims) == nd and dims[-1] % nd == nd - 1
        return len(dims) == 2 and all(d % nd != nd - 1 for d in dims)
    if node.op == "call_function" and t is operator.getitem:
        nd = _ndim(src)
        idx = node.args[1]
        if nd is None or nd < 2:
            return False
        if isinstance(idx, (int, slice)):
            return True  # indexes dim 0 only
        if isinstance(idx, tuple) and len(idx) == nd and not any(i is None or i is Ellipsis for i in idx):
            return idx[-1] == slice(None, None, None) and all(isinstance(i, (int, slice)) for i in idx)
    return False


@dataclass
class RegionContext:
    """How a particular graph spells producers, consumers and constants.

    is_producer(node): node's value is a linear output in original row order (the region's inputs).
    is_consumer(user, value): ``user`` reads ``value`` as a linear's input activation.
    constant(node): the real tensor behind a parameter / buffer / get_attr node, else None.
    """

    is_producer: Callable[[fx.Node], bool]
    is_consumer: Callable[[fx.Node, fx.Node], bool]
    constant: Callable[[fx.Node], torch.Tensor | None]


@dataclass
class Region:
    width: int
    producers: list[fx.Node] = field(default_factory=list)
    interior: list[fx.Node] = field(default_factory=list)
    consumers: list[tuple[fx.Node, fx.Node]] = field(default_factory=list)  # (consumer, value it reads)
    constants: list[tuple[fx.Node, fx.Node]] = field(default_factory=list)  # (interior node, constant operand)


def _broadcast_safe(node) -> bool:
    """Non-tensor operands and tensors constant along the last dim (0-d or last dim 1)."""
    v = node_value(node)
    if not isinstance(v, torch.Tensor):
        return isinstance(v, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool, torch.dtype))
    return v.dim() == 0 or static_int(v.shape[-1]) == 1


def _permutable_constant(ctx: RegionContext, node: fx.Node, n: int) -> bool:
    t = ctx.constant(node)
    return t is not None and t.dim() >= 1 and t.shape[-1] == n and all(d == 1 for d in t.shape[:-1])


def find_region(start: fx.Node, ctx: RegionContext) -> Region | str:
    """The region entered by producer ``start``, or a string saying why there is no foldable region."""
    n = last_dim(start)
    if n is None:
        return f"{start.name}: output width unknown or symbolic"
    region = Region(n, producers=[start])
    members = {start}
    interior = set()
    stack = [start]
    while stack:
        v = stack.pop()
        for u in list(v.users):
            if u in members:
                continue
            if ctx.is_consumer(u, v):
                if (u, v) not in region.consumers:
                    region.consumers.append((u, v))
                continue
            if u.op == "output":
                return f"{v.name} is a graph output"
            if not (is_pointwise(u) or keeps_last_dim(u, v, n)) or last_dim(u) != n:
                return f"{v.name} feeds {u.name} ({u.op} {getattr(u.target, '__name__', u.target)}), which mixes the last dim"
            members.add(u)
            interior.add(u)
            region.interior.append(u)
            stack.append(u)
        if v not in interior:
            continue
        data_args = tensor_args(v) if is_pointwise(v) else [v.args[0]]
        for a in data_args:
            if a in members:
                continue
            if ctx.is_producer(a):
                if last_dim(a) != n:
                    return f"{a.name} has a different width"
                members.add(a)
                region.producers.append(a)
                stack.append(a)
            elif _broadcast_safe(a):
                continue
            elif _permutable_constant(ctx, a, n):
                region.constants.append((v, a))
            elif a.op in ("call_function", "call_method") and a.args and (
                    is_pointwise(a) or (isinstance(a.args[0], fx.Node) and keeps_last_dim(a, a.args[0], n))):
                members.add(a)  # walk backwards: e.g. silu(gate) met from the up_proj side of gate*up
                interior.add(a)
                region.interior.append(a)
                stack.append(a)
            else:
                return f"{v.name} combines with {a.name}, which is neither a linear output nor broadcast"
    if not region.consumers:
        return f"{start.name}: region reaches no linear"
    return region
