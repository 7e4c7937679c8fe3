"""Rewrite each linear into: input gather -> SFMP GEMM op -> output gather (-> + bias).

    y = x Wᵀ + b   becomes   x_r = x[..., col_perm]            (in_gather; absent if identity)
                             y_r = op(x_r, packed, no perms)    (GEMM in reordered coordinates)
                             y   = y_r[..., inverse(row_perm)]  (out_gather; absent if identity)
                             y   = y + b                        (bias, original order)

The permutations leave the op and become explicit ``index_select`` nodes so that (1) the folding
pass can see, compose and cancel them, and (2) Inductor can fuse what is left into the neighbouring
kernels as indirect loads. The arithmetic is exactly the reference op's (which gathers x by
col_perm, multiplies by W' and scatters by row_perm), so the rewrite alone changes no bits.

``select_op`` is the one place that decides which GEMM op runs; it defers to ``sfmp_compile.codegen``
when that package provides a choice for the device.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from ..blocks import BlockGrid
from ..format import PackedWeight
from .find_linears import LinearSite
from .fx_utils import (ROLE_BIAS, ROLE_GEMM, ROLE_IN, ROLE_OUT, attach_constant, copy_value_meta, erase_if_unused,
                       insert_gather, inverse_perm)


def select_op(device, packed: PackedWeight | None = None, bits: torch.Tensor | None = None) -> tuple:
    """The GEMM op for a layer on ``device``, as ``(op, extra_args)``: the graph calls
    ``op(x, *ops.packed_args(p), *extra_args)``.

    CUDA with ``sfmp_compile.codegen`` importable: ``sfmp::linear_triton`` (generated Triton kernels),
    specialised on the layer's set of bit widths. Everything else: ``sfmp::linear_ref``. A
    ``codegen.select_op(device, packed)`` returning such a pair, if codegen ever defines one, wins.
    bits: the layer's uint8 [R, G] bit map when ``packed`` is not at hand (already-quantized layers).
    """
    dev = torch.device(device).type
    if dev == "cuda":
        try:  # codegen pulls in triton: import it only where its kernels can run
            from .. import codegen
        except Exception:
            codegen = None
        chooser = getattr(codegen, "select_op", None)
        if chooser is not None:
            choice = chooser(device, packed)
            if choice is not None:
                return choice
        if codegen is not None and hasattr(torch.ops.sfmp, "linear_triton"):
            if packed is not None:  # widths + the layout bit, read from values here, outside tracing
                mask = codegen.layer_width_mask(packed)
            else:
                mask = (codegen.width_mask(sorted(set(bits.to("cpu", torch.int64).flatten().tolist())))
                        if bits is not None else codegen.ALL_WIDTHS_MASK)
            return torch.ops.sfmp.linear_triton.default, (mask,)
    return torch.ops.sfmp.linear_ref.default, ()


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


_TENSORS = ("qweight", "bits", "block_offset", "group_order", "segment_ptr", "scales", "zeros")


def _empty_perm(gm: fx.GraphModule, device, cache: dict, before: fx.Node) -> fx.Node:
    """One shared "no permutation" argument per device, placed before its first use."""
    key = ("empty", str(device))
    if key not in cache:
        cache[key] = attach_constant(gm, f"empty_perm_{torch.device(device).type}",
                                     torch.zeros(0, dtype=torch.int32, device=device), before=before)
    return cache[key]


def _rewrite_one(gm: fx.GraphModule, site: LinearSite, packed: PackedWeight | None, cache: dict,
                 cpu_kernel: str = "reference") -> LayerRewrite:
    node = site.node
    aten_mode = isinstance(node.target, torch._ops.OpOverload)
    if site.form == "sfmp":
        pk = site.packed
        device = pk["_row_perm"].device
        row_perm, col_perm, bits_t = pk["_row_perm"], pk["_col_perm"], pk["_bits"]
        tensor_nodes = [pk[k] for k in _TENSORS]
        meta = (pk["out_features"], pk["in_features"], pk["block_rows"], pk["group_size"])
        grid = BlockGrid(*meta)
        hist = bits_histogram(bits_t, grid) if bits_t is not None else {}
        op, extra = select_op(device, None, bits_t)
    else:
        device = site.weight.device
        if not isinstance(packed, PackedWeight) and torch.device(device).type != "cpu":
            packed = packed.packed()  # an int4 CPU layer whose parameter has since moved to another device
        graph_int4 = packed if not isinstance(packed, PackedWeight) else int4_form(packed, device, cpu_kernel)
        if graph_int4 is not None:
            # CPU int4 kernel: its own prepared tensors stand in for the true-bit ones, so only the int4
            # form stays resident. The permutations are the graph's gathers (the int4 form has none).
            return _rewrite_int4(gm, site, node, aten_mode, graph_int4, cache)
        key = ("packed", id(packed), str(device))
        if key not in cache:  # the same parameter used twice in one graph shares its buffers
            p = packed.to(device)
            cache[key] = [attach_constant(gm, f"{site.name}.{k}", getattr(p, k), before=node) for k in _TENSORS]
        tensor_nodes = cache[key]
        row_perm, col_perm = packed.row_perm, packed.col_perm
        meta = (packed.out_features, packed.in_features, packed.block_rows, packed.group_size)
        hist = bits_histogram(packed.bits, packed.grid)
        op, extra = select_op(device, packed)
    empty = _empty_perm(gm, device, cache, node)

    return _finish(gm, site, node, aten_mode, op, (*tensor_nodes, empty, empty, *meta, *extra), row_perm, col_perm,
                   (meta[0], meta[1]), hist)


def _rewrite_int4(gm, site, node, aten_mode, g, cache: dict) -> LayerRewrite:
    """Rewrite onto codegen's CPU int4 GEMM from a ``codegen.cpu.GraphInt4Weight``."""
    c = g.int4
    op, (w4, sz, _, gc, n_out, n_in) = g.op()
    key = ("int4", id(g))
    if key not in cache:
        cache[key] = [attach_constant(gm, f"{site.name}.{k}", t, before=node) for k, t in (("w4", w4), ("sz", sz))]
    w4n, szn = cache[key]
    empty = _empty_perm(gm, "cpu", cache, node)
    hist = bits_histogram(c.bits, BlockGrid(c.out_features, c.in_features, c.block_rows, c.group_size))
    return _finish(gm, site, node, aten_mode, op, (w4n, szn, empty, gc, n_out, n_in), g.row_perm, g.col_perm,
                   (n_out, n_in), hist)


def int4_form(packed: PackedWeight, device, cpu_kernel: str):
    """codegen's ``GraphInt4Weight`` of ``packed`` when the CPU int4 kernel should run it, else None."""
    if cpu_kernel != "int4" or torch.device(device).type != "cpu":
        return None
    try:
        from ..codegen.cpu import GraphInt4Weight
    except Exception:  # codegen unavailable: the reference op is always correct
        return None
    return GraphInt4Weight.prepare(packed)


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


def rewrite_linears(gm: fx.GraphModule, work: list[tuple[LinearSite, object]],
                    cpu_kernel: str = "reference") -> list[LayerRewrite]:
    """Rewrite every (site, layer) pair in ``gm``: layer is a PackedWeight, a ``codegen.cpu.GraphInt4Weight``
    (a CPU layer held only in its int4 form), or None for form "sfmp" (the graph already holds it).

    Packed tensors become buffers of ``gm`` (get_attr nodes); the weight placeholders stay (Dynamo
    still passes them) but lose their users. Returns one record per rewritten layer.
    cpu_kernel: "int4" runs CPU layers whose blocks are all <= 4 bits on codegen's int4 kernel (bf16
    activations inside, ~40-50 dB SQNR vs the fp32 reference); "reference" keeps the exact fp32 op.
    """
    cache: dict = {}
    records = [_rewrite_one(gm, site, packed, cache, cpu_kernel) for site, packed in work]
    gm.graph.lint()
    gm.recompile()
    return records
