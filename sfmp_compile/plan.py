"""A whole-model SFMP plan: per-layer row/column orders and block bit maps, decided once, globally.

Steps 1-3 of the method (salience -> reordering -> allocation) end here; quantizing a layer needs
only its weight and its LayerPlan, which is what lets the compile backend work graph by graph while
the budget stays global.
"""
from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn
from safetensors.torch import load_file, save_file

from .allocation import allocate
from .blocks import BlockGrid
from .config import QuantConfig
from .reordering import reorder, salience_orders
from .salience import compute_salience, input_second_moments, is_linear, linear_weight, salience_from_moments


@dataclass
class LayerPlan:
    """row_order int64 [N], col_order int64 [K] (W' = W[row_order][:, col_order]), bits uint8 [R, G],
    col_weight fp32 [K] or None: E[x²] per ORIGINAL input column, for output-MSE clipping."""

    row_order: torch.Tensor
    col_order: torch.Tensor
    bits: torch.Tensor
    col_weight: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_order.numel(), self.col_order.numel())


@dataclass
class Plan:
    config: QuantConfig
    layers: dict[str, LayerPlan]
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, path: str) -> None:
        """One safetensors file; the config rides in its metadata."""
        tensors = {}
        for name, lp in self.layers.items():
            tensors[f"{name}::row_order"] = lp.row_order.to(torch.int32).contiguous()
            tensors[f"{name}::col_order"] = lp.col_order.to(torch.int32).contiguous()
            tensors[f"{name}::bits"] = lp.bits.contiguous()
            if lp.col_weight is not None:
                tensors[f"{name}::col_weight"] = lp.col_weight.float().contiguous()
        save_file(tensors, path, metadata={"sfmp_plan": json.dumps({"config": self.config.to_dict(), "layers": list(self.layers)})})

    @classmethod
    def load(cls, path: str) -> "Plan":
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            meta = (f.metadata() or {}).get("sfmp_plan")
        if meta is None:
            raise ValueError(f"{path} is not an SFMP plan file (no 'sfmp_plan' metadata)")
        meta = json.loads(meta)
        t = load_file(path)
        layers = {n: LayerPlan(t[f"{n}::row_order"].long(), t[f"{n}::col_order"].long(), t[f"{n}::bits"],
                               t.get(f"{n}::col_weight")) for n in meta["layers"]}
        return cls(QuantConfig.from_dict(meta["config"]), layers)

    def average_bits(self) -> float:
        num = den = 0.0
        for lp in self.layers.values():
            N, K = lp.shape
            c = BlockGrid(N, K, self.config.block_rows, self.config.group_size).weight_counts()
            num += float((lp.bits.to(torch.int64) * c).sum())
            den += float(c.sum())
        return num / den


def skipped(name: str, patterns: Iterable[str]) -> bool:
    """fnmatch on the full name or on its last component (so 'lm_head' matches 'model.lm_head')."""
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


def find_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> dict[str, nn.Module]:
    """Every quantizable linear layer by qualified name, minus the skipped ones."""
    skip = tuple(skip)
    return {n: m for n, m in model.named_modules() if n and is_linear(m) and not skipped(n, skip)}


def check_weight(name: str, w: torch.Tensor) -> None:
    if not w.is_floating_point():
        raise TypeError(f"{name}: weight dtype {w.dtype} is not a floating-point type; SFMP quantizes float weights only")
    if w.is_meta:
        raise ValueError(f"{name}: weight is on the meta device (not materialised); load real weights first")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name}: weight contains NaN or inf; refusing to quantize it")


def checked_salience(saliences: Mapping[str, torch.Tensor], name: str, w: torch.Tensor) -> torch.Tensor:
    """``saliences[name]``, after checking it exists, has ``w``'s shape [N, K] and is finite."""
    s = saliences.get(name)
    if s is None:
        raise ValueError(f"no salience given for layer {name}")
    if tuple(s.shape) != tuple(w.shape):
        raise ValueError(f"{name}: salience shape {tuple(s.shape)} does not match weight shape {tuple(w.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name}: salience contains NaN or inf")
    return s


def regroup_slots(order: torch.Tensor, slot_sizes: list[int], patterns: list[tuple]) -> torch.Tensor:
    """Within slots (row-blocks or column groups) sharing a bit pattern, put their members back in
    original order (see regroup_orders). order int64 [n]; slot_sizes sum to n; one pattern per slot."""
    out = order.clone()
    starts = [0]
    for n in slot_sizes:
        starts.append(starts[-1] + n)
    by_pattern: dict[tuple, list[int]] = {}
    for i, pat in enumerate(patterns):
        by_pattern.setdefault(pat, []).append(i)
    for slots in by_pattern.values():
        members = torch.cat([order[starts[i]:starts[i + 1]] for i in slots]).sort().values
        pos = 0
        for i in slots:  # same slots, same sizes (a ragged edge slot stays ragged)
            out[starts[i]:starts[i + 1]] = members[pos:pos + slot_sizes[i]]
            pos += slot_sizes[i]
    return out


def regroup_orders(row_order: torch.Tensor, col_order: torch.Tensor, bits: torch.Tensor,
                   grid: BlockGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep WHICH columns (rows) get which bit widths, but not the salience sort inside a width.

    Columns of all groups with the same bit column bits[:, j] (rows of row-blocks with the same
    bits[r, :]) are put back in their original relative order. Measured on SmolLM2 (3 bits, g64):
    salience-sorted groups bundle the high-E[x²] columns into shared scale groups, which lowers the
    plain weight MSE but raises the output error ‖X(W - Ŵ)ᵀ‖² by 5-26 % per layer type; groups of
    columns in original order mix them with ordinary columns. Rows only share the bit map, never a
    scale, so their order inside a pattern changes no error, and a uniform layer ends up with
    identity orders (no permutation stored or gathered). int64 [N], int64 [K] in, same out.
    """
    R, G = grid.shape
    b = bits.to(torch.int64).cpu()
    col_order = regroup_slots(col_order, [grid.cols_in(j) for j in range(G)], [tuple(b[:, j].tolist()) for j in range(G)])
    row_order = regroup_slots(row_order, [grid.rows_in(r) for r in range(R)], [tuple(b[r, :].tolist()) for r in range(R)])
    return row_order, col_order


def default_regroup(config: QuantConfig) -> bool:
    """Whether to regroup inside widths for this config: yes for RTN; no for GPTQ, which sweeps the
    columns in storage order, so the salience sort is its act-order (measured on SmolLM2, 3-bit g64
    GPTQ: PPL 28.4 with the Fisher column sort vs 34.6 in original order)."""
    return config.quantizer != "gptq"


def make_plan(layers: Mapping[str, torch.Tensor], saliences: Mapping[str, torch.Tensor], config: QuantConfig,
              col_weights: Mapping[str, torch.Tensor] | None = None, regroup: bool = True) -> Plan:
    """Reorder and allocate from given saliences. layers: name -> weight [N, K] (original order).

    regroup: after allocation, restore original order inside each bit width (``regroup_orders``);
    False keeps the plain salience sort. Right for RTN, where column order only decides which
    columns share a scale (sorted groups measured worse); ``plan()`` turns it off for GPTQ (see
    ``default_regroup``)."""
    t0 = time.perf_counter()
    blocks, orders = {}, {}
    for name, w in layers.items():
        s = checked_salience(saliences, name, w).float()
        row_order, col_order = salience_orders(s, config.reorder_rows, config.reorder_cols)
        grid = BlockGrid(w.shape[0], w.shape[1], config.block_rows, config.group_size)
        blocks[name] = (grid.block_sums(reorder(s, row_order, col_order)), grid.weight_counts())
        orders[name] = (row_order, col_order)
    t1 = time.perf_counter()
    bit_maps = allocate(blocks, config.bits, config.bit_choices)
    t2 = time.perf_counter()
    cws = col_weights or {}
    if regroup:
        for n, w in layers.items():
            grid = BlockGrid(w.shape[0], w.shape[1], config.block_rows, config.group_size)
            orders[n] = regroup_orders(orders[n][0], orders[n][1], bit_maps[n], grid)
    t3 = time.perf_counter()
    layer_plans = {n: LayerPlan(orders[n][0], orders[n][1], bit_maps[n], cws.get(n)) for n in layers}
    return Plan(config, layer_plans, {"reorder_s": t1 - t0 + t3 - t2, "allocate_s": t2 - t1})


def plan(model: nn.Module, bits: float = 3.0, *, calibration: Iterable | None = None,
         salience: str | Mapping[str, torch.Tensor] | None = None, **options) -> Plan:
    """Decide every layer's orders and block bit widths for a whole model, without quantizing.

    salience: "weight" | "activation" | "fisher", or a precomputed dict name -> fp32 [N, K];
    default "activation" when calibration is given, else "weight". options: QuantConfig fields.
    """
    kind = salience if isinstance(salience, str) else None
    if salience is None:
        kind = "activation" if calibration is not None else "weight"
    config = QuantConfig(bits=bits, salience=kind or "weight", **options)
    layers = find_linears(model, config.skip)
    if not layers:
        raise ValueError("the model has no linear layers to quantize (after skipping " + ", ".join(config.skip) + ")")
    weights = {}
    for n, m in layers.items():
        check_weight(n, m.weight)
        weights[n] = linear_weight(m).detach()
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)  # iterated more than once below
    t0 = time.perf_counter()
    col_weights = None
    if kind == "activation":
        # One calibration pass serves both the salience and the clip-search column weights.
        col_weights = input_second_moments(model, layers, calibration) if calibration is not None else None
        if col_weights is None:
            compute_salience(kind, model, layers, None)  # raises the clear "needs calibration" error
        sal = {n: salience_from_moments(w, col_weights[n]) for n, w in weights.items()}
    elif kind is None:
        sal = dict(salience)
    else:
        sal = compute_salience(kind, model, layers, calibration)
    t1 = time.perf_counter()
    if col_weights is None and calibration is not None and config.clip_search:
        col_weights = input_second_moments(model, layers, calibration)
    t2 = time.perf_counter()
    p = make_plan(weights, sal, config, col_weights, regroup=default_regroup(config))
    p.timings.update({"salience_s": t1 - t0, "moments_s": t2 - t1})
    return p
