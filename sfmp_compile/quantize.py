"""``quantize(model, bits=...)``: plan, quantize each layer inside its blocks, pack, swap modules in.

Like torchao's ``quantize_``, it replaces layers in place. Every layer is quantized and packed
before any module is swapped, so an error leaves the user's model untouched.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .blocks import BlockGrid
from .config import MAX_BITS
from .format import PackedWeight, pack
from .linear import SFMPLinear
from .permcodec import stored_breakdown
from .progress import bar
from .plan import LayerPlan, Plan, check_weight, find_linears, plan as make_model_plan
from .quantizers.minmax import minmax_quantize
from .reordering import reorder
from .salience import linear_weight


def quantize_weight(weight: torch.Tensor, layer_plan: LayerPlan, config, hessian: torch.Tensor | None = None,
                    name: str | None = None, overwrite_hessian: bool = False) -> PackedWeight:
    """Quantize one [N, K] float weight (original order) under its plan into a PackedWeight.

    hessian: fp32 [K, K] (original column order) for the GPTQ quantizer; ignored by RTN. name: the
    layer's name, for errors and the all-zeros warning. overwrite_hessian: permute and factorise
    ``hessian`` in its own storage (it is garbage afterwards) instead of a copy: what the model
    paths do, one K × K matrix less (0.8 GB at K = 14336); the result is the same either way.
    """
    N, K = weight.shape
    if layer_plan.shape != (N, K):
        raise ValueError(f"plan is for a {layer_plan.shape} weight, got {(N, K)}")
    grid = BlockGrid(N, K, config.block_rows, config.group_size)
    if tuple(layer_plan.bits.shape) != grid.shape:
        raise ValueError(f"plan bit map {tuple(layer_plan.bits.shape)} does not match block grid {grid.shape}")
    ro, co = layer_plan.row_order, layer_plan.col_order
    w = reorder(weight.detach().float(), ro, co)
    group_bits = grid.expand_rows(layer_plan.bits.to(torch.int64)).to(w.device)
    if config.quantizer == "gptq":
        from .quantizers.gptq import gptq_quantize
        if hessian is None:
            raise ValueError("the gptq quantizer needs calibration data (a Hessian per layer)")
        from .quantizers.gptq import permute_hessian_
        h = hessian.to(w.device, torch.float32)
        if overwrite_hessian:
            h = permute_hessian_(h, co)
        else:
            h = h.index_select(0, co.to(w.device)).index_select(1, co.to(w.device))
    else:
        h = None
    try:
        if config.quantizer == "gptq":
            # h and w are this function's own (a permuted copy, or the caller's to overwrite): work space
            codes, scales, zeros = gptq_quantize(w, group_bits, config.group_size, h, damp=config.gptq_damp,
                                                 clip=config.clip_search, name=name, overwrite=True)
            del h
        else:
            cw = layer_plan.col_weight
            cw = cw.float().to(w.device)[co.to(w.device)] if cw is not None else None
            codes, scales, zeros = minmax_quantize(w, group_bits, config.group_size, clip=config.clip_search,
                                                   col_weight=cw, name=name)
    except ValueError as e:
        if name is None:
            raise
        raise ValueError(f"{name}: {e}") from None
    return pack(codes, layer_plan.bits, scales, zeros, ro, co, config.block_rows, config.group_size)


def default_bit_choices(bits: float) -> tuple[int, int, int]:
    """The three widths of the 3-level scheme when none are given, for a code-bit target ``bits``.

    (⌊bits⌋, ⌊bits⌋ + 1, ⌊bits⌋ + 2): the 2-level scheme's two widths plus one more for the most
    salient blocks (2.75 -> (2, 3, 4), the paper's set; 3.22 -> (3, 4, 5)), kept within MAX_BITS
    (7.5 -> (6, 7, 8)); an integer target is then uniform, as with 2 levels. Why not the paper's
    (2, 3, 4) everywhere: the scan's proxy loss Σ S / (2^b - 1)^2 rates a width below ⌊bits⌋ far
    cheaper than RTN and GPTQ make it, so a set reaching under ⌊bits⌋ spends its least salient
    blocks on a width that costs more than the budget it frees, while the extra width above pays
    (benchmarks/RESULTS.md, "Quality on SmolLM2", the widths table). Every target in (MIN_BITS,
    MAX_BITS] stays reachable. Used by ``sfmp --levels 3``, budgets and the experiments alike.
    """
    lo = min(math.floor(bits), MAX_BITS - 2)
    return (lo, lo + 1, lo + 2)


def quantize(model: nn.Module, bits: float = 3.0, *, calibration: Iterable | None = None,
             salience: str | Mapping[str, torch.Tensor] | None = None, plan: Plan | None = None,
             progress: Callable[[str], None] | None = None, **options) -> nn.Module:
    """Quantize every linear layer of ``model`` in place with SFMP and return the model.

    bits: target average code bits (e.g. 2.75). calibration: iterable of model inputs (token-id
    tensors [B, T] or kwargs dicts) for activation/fisher salience, clipping and GPTQ.
    salience: "weight" | "activation" | "fisher" | dict name -> fp32 [N, K]. plan: a precomputed
    Plan (bits/salience/options are then taken from it). progress: called as ``progress(name)``
    once per layer, right after that layer is quantized and packed (before any module is swapped),
    e.g. to tick a progress bar. options: QuantConfig fields, e.g. bit_choices=(2, 3, 4),
    block_rows=512, group_size=128, quantizer="gptq", skip=("lm_head",).
    """
    t0 = time.perf_counter()
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)
    if plan is None:
        plan = make_model_plan(model, bits, calibration=calibration, salience=salience, **options)
    config = plan.config
    layers = find_linears(model, ())
    missing = [n for n in plan.layers if n not in layers]
    if missing:
        raise ValueError(f"the plan names layers this model does not have (or that are already quantized): {missing[:5]}")
    t1 = time.perf_counter()
    packed = {}
    if config.quantizer == "gptq":
        if calibration is None:
            raise ValueError("quantizer='gptq' needs calibration= data")
        from .quantizers.gptq import gptq_model

        def gptq_layer(name, hessian):
            # Quantize one layer and hand back its dequantized weight, which feeds the later layers.
            m = layers[name]
            check_weight(name, m.weight)
            pw = quantize_weight(linear_weight(m), plan.layers[name], config, hessian, name=name,
                                 overwrite_hessian=True)  # gptq_model hands over each Hessian once
            if progress is not None:
                progress(name)
            return pw, pw.dequantize(torch.float32).to(m.weight.device)

        # Decoder layer by decoder layer (memory bounded by one layer's Hessians); model weights
        # are restored afterwards, so the swap below is still all-or-nothing.
        results = gptq_model(model, {n: layers[n] for n in plan.layers}, calibration, gptq_layer)
        packed = {name: (results[name], layers[name].bias) for name in plan.layers}
    todo = [n for n in plan.layers if n not in packed]
    for name in bar(todo, desc=f"quantize ({config.quantizer})", unit="layer"):
        lp = plan.layers[name]
        m = layers[name]
        check_weight(name, m.weight)
        packed[name] = (quantize_weight(linear_weight(m), lp, config, name=name), m.bias)
        if progress is not None:
            progress(name)
    for name, (p, bias) in packed.items():
        model.set_submodule(name, SFMPLinear(p.to(layers[name].weight.device), bias))
    plan.timings["quantize_s"] = time.perf_counter() - t1
    plan.timings["total_s"] = time.perf_counter() - t0
    model.sfmp_plan = plan  # kept for reports and save_quantized; plain attribute, not a submodule
    return model


def quantization_report(model: nn.Module) -> dict:
    """Bits and bytes of every SFMPLinear in ``model``, as a format v2 checkpoint stores them.

    weight_bits: average code bits over quantized weights; bpw: every stored bit over quantized
    weights, split into bpw_codes (code words, ragged-group padding included), bpw_scales_zeros,
    bpw_perms (the permutation codes, permcodec.py) and bpw_maps (bit map, offsets, walk order,
    segment table); bpw_perms_int32: what the permutations would cost as int32 (format v1);
    layers: per-layer details (the same keys); quantized_bytes / float_bytes_fp32 / other_bytes:
    the stored layers, what they would take in fp32, and every other parameter/buffer of the model.
    """
    parts = ("codes", "scales_zeros", "perms", "maps")
    layers, code_bits, n = {}, 0, 0
    totals = dict.fromkeys(parts + ("total", "perms_int32"), 0)
    q_ids = set()
    for name, m in model.named_modules():
        if isinstance(m, SFMPLinear):
            p = m.packed
            hist = torch.bincount(p.bits.to(torch.int64).flatten().cpu(), weights=p.grid.weight_counts().flatten().double(), minlength=9)
            bd = stored_breakdown(p)
            bd["perms_int32"] = 32 * (p.row_perm.numel() + p.col_perm.numel())
            layers[name] = {
                "shape": [p.out_features, p.in_features],
                "weight_bits": p.code_bits / p.n_weights,
                "bpw": bd["total"] / p.n_weights,
                "bytes": bd["total"] // 8,
                **{f"bpw_{k}": bd[k] / p.n_weights for k in parts + ("perms_int32",)},
                "bits_histogram": {b: float(hist[b]) / p.n_weights for b in range(1, 9) if hist[b] > 0},
                "row_reordered": bool(p.row_perm.numel()),
                "col_reordered": bool(p.col_perm.numel()),
            }
            code_bits += p.code_bits
            n += p.n_weights
            for k in totals:
                totals[k] += bd[k]
            q_ids.update(id(t) for t in m.buffers())
    if not layers:
        raise ValueError("the model has no SFMPLinear layers: quantize it first")
    seen, other = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in q_ids or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        other += t.numel() * t.element_size()
    return {
        "weight_bits": code_bits / n,
        "bpw": totals["total"] / n,
        **{f"bpw_{k}": totals[k] / n for k in parts + ("perms_int32",)},
        "n_quantized_weights": n,
        "quantized_bytes": totals["total"] // 8,
        "float_bytes_fp32": n * 4,
        "other_bytes": other,
        "layers": layers,
    }
