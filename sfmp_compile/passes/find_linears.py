"""Find every linear layer in an FX graph, whatever form it took on the way in.

Forms recognised (y = x Wᵀ + b, W [N, K] in nn.Linear layout):
  linear   torch._C._nn.linear / F.linear / aten.linear.default    (Dynamo, export)
  addmm    torch.addmm / aten.addmm(b, x2d, Wᵀ)                     (AOT decomposition, with bias)
  mm       torch.mm / torch.matmul / ``@`` / aten.mm(x, Wᵀ)          (AOT decomposition, no bias)
  module   call_module of an nn.Linear / Conv1D                       (torch.fx.symbolic_trace)
  sfmp     an sfmp::* linear op over a weight layout                  (an already-quantized SFMPLinear)
``Wᵀ`` is ``t``/``transpose``/``permute`` of a parameter. A mm/addmm/matmul whose second operand is a
parameter *without* a transpose is transformers' Conv1D (GPT-2): its weight is stored [K, N].

Only parameters are quantized. A linear whose weight is computed in the graph, is a plain input or
buffer, or is not floating point is returned with ``skip_reason`` set, so dumps can list it. A
mm/matmul whose operands are both activations (attention scores) is not a linear and is ignored.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ..salience import is_conv1d, is_linear
from .fx_utils import get_constant, node_shape, sfmp_role, static_int
from .names import NameResolver, dotted_name, layer_of, module_path_name, source_name

aten = torch.ops.aten

LINEAR_FNS = {torch._C._nn.linear, torch.nn.functional.linear, aten.linear.default}
ADDMM_FNS = {torch.addmm, aten.addmm.default}
MM_FNS = {torch.mm, torch.matmul, operator.matmul, aten.mm.default, aten.matmul.default}
TRANSPOSE_FNS = {torch.t, aten.t.default, torch.transpose, aten.transpose.int, aten.permute.default,
                 torch.permute, torch.swapaxes, torch.swapdims}
# What makes an sfmp op a linear the passes can rewrite: x first, the permutations and geometry
# by name (ops/signature.py); the layout's tensors in between may be anything.
SFMP_REQUIRED_ARGS = ("row_perm", "col_perm", "out_features", "in_features")


@dataclass
class LinearSite:
    """One linear in the graph. ``node`` outputs y [..., N] = x [..., K] · Wᵀ (+ bias)."""

    node: fx.Node
    x: fx.Node
    form: str
    name: str
    source: str
    out_features: int = 0
    in_features: int = 0
    weight: torch.Tensor | None = None          # the nn.Parameter, in its own layout
    weight_node: fx.Node | None = None
    transposed: bool = False                   # weight stored [K, N] (Conv1D)
    bias: fx.Node | None = None                # node added to the output ([N])
    bias_attr: str | None = None               # form "module": qualified name of the module's bias
    packed: dict | None = None                 # form "sfmp": op argument name -> node / int
    skip_reason: str | None = None
    dead_after_rewrite: list = field(default_factory=list)  # e.g. the transpose feeding mm

    @property
    def quantizable(self) -> bool:
        return self.skip_reason is None

    def linear_weight(self) -> torch.Tensor:
        """W [N, K] in nn.Linear layout (a view for Conv1D), detached."""
        w = self.weight.detach()
        return w.t() if self.transposed else w


def _is_transpose(node) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target in ("t", "transpose", "permute", "swapaxes", "swapdims"):
        args = node.args[1:]
    elif node.op == "call_function" and node.target in TRANSPOSE_FNS:
        args = node.args[1:]
    elif node.op == "call_function" and node.target is getattr and node.args[1] in ("T", "mT"):
        return True
    else:
        return False
    if node.target in ("t", torch.t, aten.t.default):
        return True
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        return False
    if node.target in ("permute", aten.permute.default, torch.permute):
        return [d % 2 for d in dims] == [1, 0]
    return dims[0] % 2 != dims[1] % 2


class _Finder:
    def __init__(self, gm: fx.GraphModule, example_inputs, resolver: NameResolver):
        self.gm = gm
        self.resolver = resolver
        phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.inputs = dict(zip(phs, example_inputs)) if example_inputs is not None else {}

    def source(self, node: fx.Node) -> str:
        if node.op == "get_attr":
            return f"self.{node.target}"
        if node.op == "call_module":
            return f"self.{node.target}"
        ga = node.meta.get("grapharg")
        return source_name(ga.source) if ga is not None else node.name

    def tensor_of(self, node: fx.Node):
        """The real tensor behind a placeholder / get_attr node, else None."""
        if node.op == "placeholder":
            v = self.inputs.get(node)
            if v is None:
                ga = node.meta.get("grapharg")
                v = getattr(ga, "example", None) if ga is not None else None
            return v if isinstance(v, torch.Tensor) else None
        if node.op == "get_attr":
            try:
                return get_constant(self.gm, node)
            except AttributeError:
                return None
        return None

    def weight(self, wnode, transposed: bool, site: LinearSite) -> LinearSite:
        """Fill the weight fields of ``site`` from the node holding W; set skip_reason if unusable."""
        if not isinstance(wnode, fx.Node):
            site.skip_reason = "weight is not a tensor node"
            return site
        t = self.tensor_of(wnode)
        src = self.source(wnode)
        site.source = src
        site.weight_node = wnode
        site.transposed = transposed
        shape = tuple(t.shape) if t is not None else node_shape(wnode)
        if shape is not None and len(shape) == 2:
            n, k = (shape[1], shape[0]) if transposed else shape
            site.out_features, site.in_features = static_int(n) or 0, static_int(k) or 0
        if t is None:
            site.name = site.name or f"<computed:{wnode.name}>"
            site.skip_reason = "weight is computed in the graph, not a parameter"
            return site
        site.weight = t
        site.name = self.resolver.layer_name(t, src, site.node)
        if not isinstance(t, nn.Parameter):
            site.skip_reason = "weight is a graph input or buffer, not a parameter"
        elif t.dim() != 2:
            site.skip_reason = f"weight has {t.dim()} dims, expected 2"
        elif not t.is_floating_point():
            site.skip_reason = f"weight dtype {t.dtype} is not floating point"
        elif t.is_meta:
            site.skip_reason = "weight is on the meta device"
        return site

    def visit(self, node: fx.Node) -> LinearSite | None:
        if node.op == "call_function" and sfmp_role(node) is None:
            t = node.target
            if t in LINEAR_FNS:
                return self._linear(node)
            if t in ADDMM_FNS:
                return self._addmm(node)
            if t in MM_FNS:
                return self._mm(node, node.args[0], node.args[1], "mm")
            if _is_sfmp_op(t):
                return self._sfmp(node)
            if _sfmp_namespace(t):
                return self._opaque(node)
        elif node.op == "call_method" and node.target in ("matmul", "mm") and len(node.args) == 2:
            return self._mm(node, node.args[0], node.args[1], "mm")
        elif node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            if is_linear(mod):
                return self._module(node, mod)
        return None

    def _linear(self, node):
        x = node.args[0]
        w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        site = LinearSite(node, x, "linear", "", "", bias=b if isinstance(b, fx.Node) else None)
        return self.weight(w, False, site)

    def _resolve_mat2(self, m2):
        """(weight node, transposed, dead nodes) when mat2 is a parameter or a transpose of one."""
        if _is_transpose(m2) and isinstance(m2.args[0], fx.Node):
            base = m2.args[0]
            t = self.tensor_of(base)
            if isinstance(t, nn.Parameter) and t.dim() == 2:
                return base, False, [m2]
            return None
        t = self.tensor_of(m2) if isinstance(m2, fx.Node) else None
        if isinstance(t, nn.Parameter) and t.dim() == 2:
            return m2, True, []
        return None

    def _mm(self, node, x, m2, form):
        r = self._resolve_mat2(m2)
        if r is None or not isinstance(x, fx.Node):
            return None  # an activation @ activation product (attention), not a linear
        wnode, transposed, dead = r
        site = LinearSite(node, x, form, "", "", dead_after_rewrite=dead)
        return self.weight(wnode, transposed, site)

    def _addmm(self, node):
        if any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
            return None
        bias, x, m2 = node.args[:3]
        site = self._mm(node, x, m2, "addmm")
        if site is None:
            return None
        bshape = node_shape(bias) if isinstance(bias, fx.Node) else None
        if bshape is None and isinstance(bias, fx.Node) and self.tensor_of(bias) is not None:
            bshape = tuple(self.tensor_of(bias).shape)
        if bshape is None or len(bshape) != 1:
            return None  # addmm with a full matrix as the additive term is not a biased linear
        site.bias = bias
        return site

    def _module(self, node, mod):
        w = mod.weight
        transposed = is_conv1d(mod)
        site = LinearSite(node, node.args[0], "module", "", f"self.{node.target}.weight")
        site.weight, site.transposed = w, transposed
        if getattr(mod, "bias", None) is not None:
            site.bias_attr = f"{node.target}.bias"
        n, k = (w.shape[1], w.shape[0]) if transposed else w.shape
        site.out_features, site.in_features = int(n), int(k)
        site.name = self.resolver.layer_name(w, f"{node.target}.weight")
        if not w.is_floating_point():
            site.skip_reason = f"weight dtype {w.dtype} is not floating point"
        return site

    def _opaque(self, node):
        """An sfmp op that is not a linear over a layout (no permutation arguments): listed, left alone."""
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else node.name
        name = module_path_name(path) if stack else node.name
        schema = _schema_of(node.target)
        return LinearSite(node, node.args[0], "sfmp_opaque", name, str(path),
                          skip_reason=f"{schema.name} takes no permutations; compiled as is")

    def _sfmp(self, node):
        """An sfmp op over any layout (an already-quantized SFMPLinear): its permutations can be split out."""
        names = [a.name for a in _schema_of(node.target).arguments]
        args = list(node.args) + [node.kwargs[k] for k in names[len(node.args):] if k in node.kwargs]
        if len(args) < len(names):
            return None
        packed = dict(zip(names, args))
        first = next((packed[n] for n in names[1:] if isinstance(packed[n], fx.Node)), None)
        src = self.source(first) if first is not None else node.name
        t0 = self.tensor_of(first) if first is not None else None
        name = self.resolver.layer_name(t0, src, node) if t0 is not None else layer_of(dotted_name(src))
        site = LinearSite(node, packed["x"], "sfmp", name, src, out_features=int(packed["out_features"]),
                          in_features=int(packed["in_features"]), packed=packed)
        for k in ("row_perm", "col_perm", "bits"):
            t = self.tensor_of(packed[k]) if isinstance(packed.get(k), fx.Node) else None
            packed["_" + k] = t  # the real tensors: the rewrite splits the permutations out of the op
            if t is None and k != "bits":
                site.skip_reason = f"{k} is not a constant tensor; permutations cannot be split out"
        return site


def _schema_of(target):
    schema = getattr(target, "_schema", None)
    if schema is None:
        schema = getattr(getattr(target, "default", None), "_schema", None)
    return schema


def _sfmp_namespace(target) -> bool:
    schema = _schema_of(target)
    return schema is not None and schema.name.startswith("sfmp::") and len(schema.arguments) > 1 \
        and schema.arguments[0].name == "x"


def _is_sfmp_op(target) -> bool:
    """An sfmp linear op: x first, then the permutations and geometry somewhere by name."""
    if not _sfmp_namespace(target):
        return False
    names = {a.name for a in _schema_of(target).arguments}
    return all(n in names for n in SFMP_REQUIRED_ARGS)


def find_linear_sites(gm: fx.GraphModule, example_inputs=None, resolver: NameResolver | None = None) -> list[LinearSite]:
    """Every linear of ``gm`` in graph order, quantizable or not (see ``LinearSite.skip_reason``).

    example_inputs: what the backend received (the real nn.Parameters for weight placeholders); None
    for symbolically traced graphs, whose parameters are module attributes.
    """
    finder = _Finder(gm, example_inputs, resolver or NameResolver())
    sites = []
    for node in gm.graph.nodes:
        site = finder.visit(node)
        if site is not None:
            sites.append(site)
    return sites
