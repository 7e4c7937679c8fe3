"""The graph passes in the order the backend runs them: rewrite linears, rewrite tied embeddings, fold."""
from __future__ import annotations

import torch.fx as fx

from .find_linears import LinearSite
from .fold_permutations import FoldReport, count_gathers, fold_permutations
from .fx_utils import graph_constants
from .rewrite_embeddings import rewrite_embeddings
from .rewrite_linears import LayerRewrite, rewrite_linears


def rewrite_graph(gm: fx.GraphModule, work: list[tuple[LinearSite, object]], example_inputs, cpu_kernel: str,
                  fold: bool) -> tuple[list[LayerRewrite], list[str], FoldReport]:
    """Rewrite every (site, weight) of ``work`` (see ``rewrite_linears``), then every embedding lookup
    whose table is one of those weights held packed (or panel) (``rewrite_embeddings``), then fold the
    permutations (or only count the gathers when ``fold`` is False).
    Returns (one record per layer, the layer names whose tied embedding was rewritten, the fold report)."""
    records = rewrite_linears(gm, work, cpu_kernel)
    tables = {s.weight_node: (s.name, w) for s, w in work
              if s.form != "sfmp" and s.weight_node is not None and getattr(w, "layout", None) in ("packed", "panel")}
    tied = sorted(set(rewrite_embeddings(gm, tables, cpu_kernel)))
    report = FoldReport()
    if fold:
        report = fold_permutations(gm, graph_constants(gm, example_inputs))
    else:
        report.gathers_before = report.gathers_after = count_gathers(gm)
    return records, tied, report
