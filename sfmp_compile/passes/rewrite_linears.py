"""Rewrite each linear into: input gather -> SFMP GEMM op -> output gather (-> + bias).

    y = x Wᵀ + b   becomes   x_r = x[..., col_perm]            (in_gather; absent if identity)
                             y_r = op(x_r, packed, no perms)    (GEMM in reordered coordinates)
                             y   = y_r[..., inverse(row_perm)]  (out_gather; absent if identity)
                             y   = y + b                        (bias, original order)

The permutations leave the op and become explicit ``index_select`` nodes so that (1) the folding
pass can see, compose and cancel them, and (2) Inductor can fuse what is left into the neighbouring
kernels as indirect loads. The arithmetic is exactly the reference op's (which gathers x by
col_perm, multiplies by W' and scatters by row_perm), so the rewrite alone changes no bits.

Which op runs a layer is ``ops.dispatch``'s table, by the layout the backend holds it in.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from ..blocks import BlockGrid
from ..format import PackedWeight
from ..layouts import SFMPWeight
from ..ops import cpu
from ..ops.dispatch import KERNELS, kernel_for, op_call
from .find_linears import LinearSite
from .fx_utils import (ROLE_BIAS, ROLE_GEMM, ROLE_IN, ROLE_OUT, attach_constant, copy_value_meta, erase_if_unused,
                       insert_gather, inverse_perm)

_PERMS = ("row_perm", "col_perm")


@dataclass
class LayerRewrite:
    """What the rewrite did to one linear (the dump summary reads these)."""

    layer: str
    node: str
    form: str
    shape: tuple[int, int]
    op: str
    bits_hist: dict[int, float] = field(default_factory=dict)  # bit width -> fraction of weights
    has_col_perm: bool = False
    has_row_perm: bool = False
    gemm: fx.Node | None = None


def bits_histogram(bits: torch.Tensor, packed_grid) -> dict[int, float]:
    counts = packed_grid.weight_counts()
    hist = torch.bincount(bits.to(torch.int64).flatten().cpu(), weights=counts.flatten().double(), minlength=9)
    total = float(counts.sum())
    return {b: round(float(hist[b]) / total, 4) for b in range(1, 9) if hist[b] > 0}


def _empty_perm(gm: fx.GraphModule, device, cache: dict, before: fx.Node) -> fx.Node:
    """One shared "no permutation" argument per device, placed before its first use."""
    key = ("empty", str(device))
    if key not in cache:
        cache[key] = attach_constant(gm, f"empty_perm_{torch.device(device).type}",
                                     torch.zeros(0, dtype=torch.int32, device=device), before=before)
    return cache[key]


def _op_args(op, args: tuple, empty: fx.Node, constant) -> tuple:
    """The op's arguments with both permutations replaced by ``empty`` (the graph gathers instead)
    and every other tensor made a graph constant by ``constant(name, tensor)``."""
    names = [a.name for a in op._schema.arguments[1:]]
    return tuple(empty if n in _PERMS else constant(n, a) if isinstance(a, torch.Tensor) else a
                 for n, a in zip(names, args))


def _packed_op_for(op, device, cpu_kernel: str, traced_flags: int) -> tuple:
    """``(op, overrides)``: an eager-traced packed- or panel-layout op on CPU (the reference or the C++
    kernel, whichever the module chose) becomes the one this compile asked for, with the C++ kernel's
    ``flags`` argument set for it (the panel bit kept: it says how the module holds its words);
    every other op is kept as it is."""
    if torch.device(device).type != "cpu" or op._schema.name not in ("sfmp::linear_ref", "sfmp::linear_cpu"):
        return op, {}
    panel = bool(traced_flags & cpu.PANEL)
    name = kernel_for("panel" if panel else "packed", device, cpu_kernel)
    new = KERNELS[name].op()
    if new._schema.name != "sfmp::linear_cpu":
        if panel:  # only the C++ kernel reads the panel order
            return op, {}
        return new, {}
    return new, {"flags": cpu.flags(residual=name == "precise", panel=panel)}


def _rewrite_one(gm: fx.GraphModule, site: LinearSite, w: SFMPWeight | None, cache: dict,
                 cpu_kernel: str = "packed") -> LayerRewrite:
    node = site.node
    aten_mode = isinstance(node.target, torch._ops.OpOverload)
    if site.form == "sfmp":
        # An already-quantized layer: keep its op and layout tensors, split the permutations out.
        pk = site.packed
        device = pk["_row_perm"].device
        row_perm, col_perm, bits = pk["_row_perm"], pk["_col_perm"], pk["_bits"]
        empty = _empty_perm(gm, device, cache, node)
        op = node.target if isinstance(node.target, torch._ops.OpOverload) else node.target.default
        op, overrides = _packed_op_for(op, device, cpu_kernel, int(pk.get("flags", 0)))
        defaults = {a.name: a.default_value for a in op._schema.arguments[1:] if a.has_default_value()}
        names = [a.name for a in op._schema.arguments[1:]]
        op_args = tuple(empty if n in _PERMS else overrides[n] if n in overrides else pk[n] if n in pk
                        else defaults[n] for n in names)
        geometry = (pk["out_features"], pk["in_features"], pk.get("block_rows"), pk.get("group_size"))
        hist = bits_histogram(bits, BlockGrid(*geometry)) if bits is not None and None not in geometry else {}
    else:
        if isinstance(w, PackedWeight):
            w = SFMPWeight.from_packed(w).to(site.weight.device)
        device = w.device
        empty = _empty_perm(gm, device, cache, node)
        op, args = op_call(w, device, cpu_kernel=cpu_kernel)

        def constant(name, t):
            key = ("const", id(t))  # the graph's buffer keeps t alive, so its id stays unique
            if key not in cache:  # the same parameter used twice in one graph shares its buffers
                cache[key] = attach_constant(gm, f"{site.name}.{name}", t, before=node)
            return cache[key]

        op_args = _op_args(op, args, empty, constant)
        row_perm, col_perm = w.row_perm, w.col_perm
        hist = bits_histogram(w.bits, BlockGrid(w.out_features, w.in_features, w.block_rows, w.group_size))
    return _finish(gm, site, node, aten_mode, op, op_args, row_perm, col_perm,
                   (site.out_features, site.in_features), hist)


def _finish(gm, site, node, aten_mode, op, op_args, row_perm, col_perm, shape, hist) -> LayerRewrite:
    rec = LayerRewrite(site.name, node.name, site.form, shape, str(op), hist,
                       has_col_perm=bool(col_perm.numel()), has_row_perm=bool(row_perm.numel()))
    # Every new node goes right before the linear it replaces, in data order.
    cur = site.x
    if col_perm.numel():
        cur = insert_gather(gm, cur, col_perm.to(torch.int64).cpu(), ROLE_IN, [site.name], f"{site.name}.col_perm",
                            before=node, aten_mode=aten_mode)
    with gm.graph.inserting_before(node):
        gemm = gm.graph.call_function(op, (cur, *op_args))
    copy_value_meta(gemm, node)
    gemm.meta["sfmp"] = {"role": ROLE_GEMM, "layers": [site.name], "col_perm": rec.has_col_perm, "row_perm": rec.has_row_perm}
    out = gemm
    if row_perm.numel():
        out = insert_gather(gm, gemm, inverse_perm(row_perm), ROLE_OUT, [site.name], f"{site.name}.row_perm_inv",
                            before=node, aten_mode=aten_mode)
    bias = site.bias
    if bias is None and site.bias_attr is not None:
        with gm.graph.inserting_before(node):
            bias = gm.graph.get_attr(site.bias_attr)
        bias.meta["example_value"] = gm.get_parameter(site.bias_attr)
    if bias is not None:
        with gm.graph.inserting_before(node):
            add = gm.graph.call_function(torch.ops.aten.add.Tensor if aten_mode else operator.add, (out, bias))
        copy_value_meta(add, node)
        add.meta["sfmp"] = {"role": ROLE_BIAS, "layers": [site.name]}
        out = add
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)
    for dead in site.dead_after_rewrite:
        erase_if_unused(gm, dead)
    rec.gemm = gemm
    return rec


def rewrite_linears(gm: fx.GraphModule, work: list[tuple[LinearSite, SFMPWeight | PackedWeight | None]],
                    cpu_kernel: str = "packed") -> list[LayerRewrite]:
    """Rewrite every (site, weight) pair in ``gm``: ``weight`` is the layer's SFMPWeight on the
    site's device, in the layout it should run from (``ops.dispatch.preferred_layout``), a
    PackedWeight (run as the packed layout on the site's device), or None for form "sfmp" (the
    graph already holds it).

    The layout's tensors become buffers of ``gm`` (get_attr nodes) shared with the weight; the weight
    placeholders stay (Dynamo still passes them) but lose their users. Returns one record per layer.
    """
    cache: dict = {}
    records = [_rewrite_one(gm, site, w, cache, cpu_kernel) for site, w in work]
    gm.graph.lint()
    gm.recompile()
    return records
