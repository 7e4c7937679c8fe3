"""Plain-text reports of quantized models: tables, bits by layer type, per-layer and size summaries.

What ``sfmp inspect`` and ``sfmp demo`` print, built from ``quantization_report(model)`` (a quantized
model) or from a backend's Plan and packed cache (a model compiled with ``sfmp_backend``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..blocks import BlockGrid
from ..quantize import quantization_report


def layer_type(name: str) -> str:
    """The layer type of a module name: its last component ("model.layers.3.mlp.up_proj" -> "up_proj")."""
    return name.rsplit(".", 1)[-1]


def bits_by_layer_type(layers: Mapping[str, tuple[float, int]]) -> dict[str, float]:
    """Average code bits per layer type, each layer weighted by its number of weights.

    layers: name -> (code bits per weight, number of weights). Types keep first-seen order.
    """
    acc: dict[str, list[float]] = {}
    for name, (bits, n) in layers.items():
        t = acc.setdefault(layer_type(name), [0.0, 0.0])
        t[0] += bits * n
        t[1] += n
    return {k: v[0] / v[1] for k, v in acc.items()}


def report_bits_by_type(report: dict) -> dict[str, float]:
    """``bits_by_layer_type`` of a ``quantization_report``."""
    return bits_by_layer_type({n: (lr["weight_bits"], lr["shape"][0] * lr["shape"][1])
                               for n, lr in report["layers"].items()})


def format_table(rows: Sequence[Mapping], cols: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table of ``rows`` (dicts); cols: (key, header, format spec). Missing values print "-";
    the first column is left-aligned, the others right-aligned."""
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        line = []
        for k, _, f in cols:
            v = r.get(k)
            line.append("-" if v is None else (format(v, f) if f else str(v)))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    out = ["  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(cols))) for c in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def inspect_text(report: dict) -> str:
    """Per-layer table (shape, code bits, BPW, KiB, permutations, width histogram), bits by layer
    type and totals of a ``quantization_report``: what ``sfmp inspect`` prints."""
    rows = []
    for n, lr in report["layers"].items():
        hist = " ".join(f"{b}b:{f * 100:.0f}%" for b, f in sorted(lr["bits_histogram"].items()))
        rows.append({"layer": n, "shape": "x".join(map(str, lr["shape"])), "bits": lr["weight_bits"], "bpw": lr["bpw"],
                     "kib": lr["bytes"] / 1024, "hist": hist,
                     "perm": ("r" if lr["row_reordered"] else "-") + ("c" if lr["col_reordered"] else "-")})
    table = format_table(rows, [("layer", "layer", ""), ("shape", "shape", ""), ("bits", "code bits", ".3f"),
                                ("bpw", "BPW", ".3f"), ("kib", "KiB", ".1f"), ("perm", "perm", ""),
                                ("hist", "widths", "")])
    by = report_bits_by_type(report)
    return "\n".join([
        table, "",
        "by layer type: " + ", ".join(f"{k} {v:.3f}" for k, v in by.items()),
        f"total: {len(rows)} layers, weight_bits {report['weight_bits']:.4f}, BPW {report['bpw']:.4f}, "
        f"{report['quantized_bytes'] / 2**20:.2f} MiB packed + {report['other_bytes'] / 2**20:.2f} MiB other"])


def size_summary(reference: torch.nn.Module, model: torch.nn.Module | None = None, backend=None) -> dict:
    """Bits and bytes of a quantized model, from ``backend``'s plan and packed cache when it has
    quantized layers, else from ``quantization_report(model)``.

    reference: the float model (its parameters give the fp32 size). Returns weight_bits, bpw,
    bytes (packed linears), fp32_bytes (the same linears in fp32), other (every other parameter;
    buffers too on the report path), model_fp32 (the float model's parameters) and by_type (code
    bits per layer type).
    """
    params = {id(p): p for p in reference.parameters()}  # tied weights once
    model_fp32 = sum(p.numel() * p.element_size() for p in params.values())
    plan = getattr(backend, "plan", None)
    if plan is not None and plan.layers:
        layers = {}
        for name, lp in plan.layers.items():
            N, K = lp.shape
            c = BlockGrid(N, K, plan.config.block_rows, plan.config.group_size).weight_counts()
            layers[name] = (float((lp.bits.to(torch.int64) * c).sum()) / (N * K), N * K)
        n = sum(k for _, k in layers.values())
        stored = backend.packed_bytes
        return {"weight_bits": sum(b * k for b, k in layers.values()) / n, "bpw": stored * 8 / n, "bytes": stored,
                "fp32_bytes": 4 * n, "other": model_fp32 - 4 * n, "model_fp32": model_fp32,
                "by_type": bits_by_layer_type(layers)}
    rep = quantization_report(model)
    return {"weight_bits": rep["weight_bits"], "bpw": rep["bpw"], "bytes": rep["quantized_bytes"],
            "fp32_bytes": rep["float_bytes_fp32"], "other": rep["other_bytes"], "model_fp32": model_fp32,
            "by_type": report_bits_by_type(rep)}


def demo_table(columns: Sequence[tuple[str, Mapping]]) -> str:
    """Models side by side, one column each: held-out PPL, KL to fp32, code bits, BPW, the linears'
    and the whole checkpoint's MiB, code bits per layer type.

    columns: (header, values) with values' keys ppl, kl, weight_bits, bpw, linear_bytes, model_bytes
    and by_type (layer type -> code bits); a missing value prints "-".
    """
    mib = lambda b: None if b is None else f"{b / 2**20:.2f}"  # noqa: E731
    num = lambda v, f: None if v is None else format(v, f)  # noqa: E731
    lines = [("perplexity (held-out)", lambda c: num(c.get("ppl"), ".2f")),
             ("KL to fp32 (nats/token)", lambda c: num(c.get("kl"), ".4f")),
             ("code bits (avg width)", lambda c: num(c.get("weight_bits"), ".3f")),
             ("BPW (everything stored)", lambda c: num(c.get("bpw"), ".3f")),
             ("quantized linears, MiB", lambda c: mib(c.get("linear_bytes"))),
             ("whole checkpoint, MiB", lambda c: mib(c.get("model_bytes")))]
    types = list(dict.fromkeys(t for _, c in columns for t in (c.get("by_type") or {})))
    lines += [(f"bits {t}", lambda c, t=t: num((c.get("by_type") or {}).get(t), ".2f")) for t in types]
    rows = [{"k": k, **{str(i): fn(c) for i, (_, c) in enumerate(columns)}} for k, fn in lines]
    return format_table(rows, [("k", "", "")] + [(str(i), h, "") for i, (h, _) in enumerate(columns)])
