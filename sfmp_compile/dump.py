"""Graph dumps: what the backend did to each graph, as files a person can read.

Per graph, under ``<dump_dir>/graph_<k>/``:
  before.py        the FX graph Dynamo handed over (``print_readable``), parameters as inputs
  after.py         the same graph after rewriting and folding: gathers, sfmp GEMM ops, buffers
  summary.md       one row per linear (layer, shape, bits, what happened to its permutations),
                   skipped linears with reasons, folded regions, gather counts, timings
  kernels.py       the generated Triton kernels loaded so far, and Inductor's output code when
                   Inductor compiled the graph
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field

from .codegen import kernel_source, loaded_keys
from .passes.fx_utils import ROLE_IN, ROLE_OUT, is_gather


@dataclass
class LayerRow:
    node: str
    layer: str
    form: str
    shape: tuple[int, int]
    bits: dict[int, float]
    in_perm: str      # none | kept | kept (composed) | kept (shared) | folded
    out_perm: str     # none | kept | kept (realigned) | folded
    op: str
    cached: bool      # packed weight reused from an earlier graph (no re-quantization)


@dataclass
class GraphReport:
    """Everything the backend learned about one graph. Also kept in ``backend.reports``."""

    index: int
    n_nodes_before: int = 0
    n_nodes_after: int = 0
    layers: list[LayerRow] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (node, name, reason)
    regions: list[dict] = field(default_factory=list)
    not_folded: list[tuple[str, str]] = field(default_factory=list)
    gathers_before: int = 0
    gathers_after: int = 0
    gathers: dict[str, dict[str, int]] = field(default_factory=dict)  # layer -> {"in", "out", "shared"}
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt_bits(h: dict[int, float]) -> str:
    return " ".join(f"{b}b:{f:.0%}" for b, f in sorted(h.items())) or "-"


def summary_markdown(r: GraphReport) -> str:
    """The summary table of one graph, as Markdown."""
    lines = [f"# SFMP graph {r.index}", ""]
    lines.append(f"- nodes: {r.n_nodes_before} before, {r.n_nodes_after} after")
    lines.append(f"- quantized linears: {len(r.layers)}; skipped: {len(r.skipped)}")
    lines.append(f"- permutation gathers: {r.gathers_before} after rewriting, {r.gathers_after} after folding")
    if r.timings:
        lines.append("- time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r.timings.items()))
    for note in r.notes:
        lines.append(f"- note: {note}")
    lines += ["", "## Linears", "",
              "| node | layer | form | N x K | bits | input perm | output perm | op | cached |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in r.layers:
        lines.append(f"| {row.node} | {row.layer} | {row.form} | {row.shape[0]} x {row.shape[1]} | {_fmt_bits(row.bits)} "
                     f"| {row.in_perm} | {row.out_perm} | {row.op} | {'yes' if row.cached else 'no'} |")
    lines += ["", "## Skipped", ""]
    if r.skipped:
        lines += ["| node | name | reason |", "|---|---|---|"]
        lines += [f"| {n} | {name} | {why} |" for n, name, why in r.skipped]
    else:
        lines.append("(none)")
    lines += ["", "## Folded regions", ""]
    if r.regions:
        lines += ["| producers | consumers | pointwise ops | constants permuted | gathers before -> after |",
                  "|---|---|---|---|---|"]
        for g in r.regions:
            lines.append(f"| {', '.join(g['producers'])} | {', '.join(g['consumers'])} | {g['interior_ops']} "
                         f"| {g['constants_permuted']} | {g['gathers_before']} -> {g['gathers_after']} |")
    else:
        lines.append("(none)")
    if r.not_folded:
        lines += ["", "## Output gathers kept", "", "| layer | why not folded |", "|---|---|"]
        lines += [f"| {l} | {why} |" for l, why in r.not_folded]
    lines += ["", "## Gathers per layer", "", "| layer | in | out | in shared with others |", "|---|---|---|---|"]
    for layer, c in r.gathers.items():
        lines.append(f"| {layer} | {c['in']} | {c['out']} | {c['shared']} |")
    return "\n".join(lines) + "\n"


def kernel_sources() -> str:
    """Source of every kernel sfmp_compile.codegen has generated in this process ("" if none)."""
    parts = []
    try:
        for key in loaded_keys():
            parts.append(f"# ---- kernel {key.name} ----\n{kernel_source(key)}")
    except Exception as e:  # noqa: BLE001 - a dump must never break compilation
        parts.append(f"# kernel_source failed: {e}")
    return "\n\n".join(parts)


def layer_row(r, cached: bool) -> LayerRow:
    """The summary row of one ``passes.rewrite_linears.LayerRewrite`` after folding: what became of
    its input and output permutations."""
    g = r.gemm
    a = g.args[0]
    if is_gather(a, (ROLE_IN,)):
        flags = [k for k in ("composed", "shared") if a.meta["sfmp"].get(k)]
        in_perm = "kept" + (f" ({', '.join(flags)})" if flags else "")
    else:
        in_perm = "folded" if r.has_col_perm else "none"
    outs = [u for u in g.users if is_gather(u, (ROLE_OUT,))]
    if outs:
        out_perm = "kept (realigned)" if outs[0].meta["sfmp"].get("realigned") else "kept"
    else:
        out_perm = "folded" if r.has_row_perm else "none"
    op = r.op.replace("sfmp.", "").replace(".default", "")
    return LayerRow(r.node, r.layer, r.form, r.shape, r.bits_hist, in_perm, out_perm, op, cached)


class _Collect(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Output code: \n"):
            self.sink.append(msg[len("Output code: \n"):])


@contextlib.contextmanager
def inductor_output_code():
    """Collect the output code Inductor compiles inside the block, from torch's ``output_code``
    logging artifact (its logger is raised to DEBUG for the block only). Yields the list."""
    import torch._logging
    log = torch._logging.getArtifactLogger("torch._inductor.codecache", "output_code")
    sink: list[str] = []
    handler, level = _Collect(sink), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield sink
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def write_graph_dump(dump_dir: str, report: GraphReport, before: str, after: str, kernels: str = "") -> str:
    """Write one graph's dump files; returns the graph's directory."""
    d = os.path.join(dump_dir, f"graph_{report.index:03d}")
    os.makedirs(d, exist_ok=True)
    files = {"before.py": before, "after.py": after, "summary.md": summary_markdown(report)}
    if kernels:
        files["kernels.py"] = kernels
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(report.to_dict(), f, indent=1, default=str)
    return d
