"""Fold the permutation gathers that the rewrite made explicit, where that is exact.

Four rules, applied until nothing changes:
  regions    An output gather (y = y_r[..., P⁻¹], i.e. y_r = y[..., P]) whose value only flows through
             an elementwise region (see ``regions``) into other linears' inputs is dropped: the region
             runs in P order and every consumer composes P⁻¹ into its input gather
             (x[..., Q] = x'[..., P⁻¹[Q]]). Producers of the same region with another order P_i keep
             one gather that realigns them to P (index = P_i⁻¹[P]). Per-channel constants in the
             region (biases) are permuted offline. Applied only if it strictly removes gathers; with
             the plan's tied row orders (gate/up) the whole MLP needs one gather instead of three.
  compose    gather(gather(t, a), b) -> gather(t, a[b]); dropped if a[b] is the identity (inverse pair).
  dedup      gathers of the same tensor by equal indices (q/k/v with tied column orders) -> one.
  identity   a gather by the identity permutation -> removed.
Every rule only re-indexes: each element is computed by the same arithmetic from the same inputs, so
the folded graph is bitwise equal to the unfolded one (tested, see tests/passes/test_fold_permutations.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .fx_utils import (ROLE_GEMM, ROLE_IN, ROLE_OUT, attach_constant, drop_unused_buffers,
                       erase_if_unused, gather_index, insert_gather, inverse_perm, is_gather, is_identity,
                       sfmp_role)
from .regions import Region, RegionContext, find_region


@dataclass
class FoldReport:
    """What folding did to one graph."""

    gathers_before: int = 0
    gathers_after: int = 0
    regions: list[dict] = field(default_factory=list)        # folded: producers, consumers, gathers before/after
    not_folded: list[tuple[str, str]] = field(default_factory=list)  # (layers of an output gather, why kept)
    composed: int = 0
    deduplicated: int = 0
    identity_removed: int = 0


def count_gathers(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if is_gather(n))


def _layers(node) -> list[str]:
    return list(node.meta.get("sfmp", {}).get("layers", []))


def _is_consumer(u: fx.Node, v: fx.Node) -> bool:
    return (is_gather(u, (ROLE_IN,)) or sfmp_role(u) == ROLE_GEMM) and u.args[0] is v


def _set_index(gm: fx.GraphModule, g: fx.Node, index: torch.Tensor, tag: str) -> None:
    """Point gather ``g`` at a new constant index (a fresh buffer: old ones may be shared)."""
    old = g.args[2]
    new = attach_constant(gm, f"{'_'.join(_layers(g)) or g.name}.{tag}", index.to(torch.int64).contiguous(), before=g)
    g.replace_input_with(old, new)
    g.meta.setdefault("sfmp", {})[tag] = True
    erase_if_unused(gm, old)


def _drop(gm: fx.GraphModule, g: fx.Node) -> None:
    """Remove gather ``g``, its users reading its input instead."""
    idx = g.args[2]
    g.replace_all_uses_with(g.args[0])
    gm.graph.erase_node(g)
    erase_if_unused(gm, idx)


def _plan_region(gm, region: Region):
    """Best reference order P for a region: (P, gathers after, gathers before)."""
    perms = [inverse_perm(gather_index(gm, p)) for p in region.producers]  # y_r = y[..., P_i]
    before = len(region.producers) + sum(1 for c, _ in region.consumers if is_gather(c, (ROLE_IN,)))
    best = None
    for P in {tuple(p.tolist()): p for p in perms}.values():
        Pinv = inverse_perm(P)
        cost = sum(1 for p in perms if not torch.equal(p, P))
        for c, _ in region.consumers:
            if is_gather(c, (ROLE_IN,)):
                cost += 0 if is_identity(Pinv[gather_index(gm, c)]) else 1
            else:
                cost += 1  # a consumer with no column order now needs P⁻¹
        if best is None or cost < best[1]:
            best = (P, cost)
    return best[0], best[1], before


def _apply_region(gm, region: Region, P: torch.Tensor, constant) -> None:
    Pinv = inverse_perm(P)
    for g in region.producers:
        Pi = inverse_perm(gather_index(gm, g))
        if torch.equal(Pi, P):
            _drop(gm, g)
        else:
            _set_index(gm, g, gather_index(gm, g)[P], "realigned")  # y[..., P] = y_r[..., P_i⁻¹[P]]
    for node, const in region.constants:
        t = constant(const)
        new = attach_constant(gm, f"{const.name}.permuted", t.index_select(-1, P.to(t.device)).contiguous(), before=node)
        node.replace_input_with(const, new)
    for c, v in region.consumers:
        if is_gather(c, (ROLE_IN,)):
            idx = Pinv[gather_index(gm, c)]
            if is_identity(idx):
                _drop(gm, c)
            else:
                _set_index(gm, c, idx, "composed")
        else:
            g = insert_gather(gm, v, Pinv, ROLE_IN, _layers(c), f"{'_'.join(_layers(c))}.col_perm_folded", before=c)
            c.replace_input_with(v, g)
            g.meta["sfmp"]["composed"] = True


def _fold_regions(gm, constant, report: FoldReport) -> bool:
    ctx = RegionContext(is_producer=lambda n: is_gather(n, (ROLE_OUT,)), is_consumer=_is_consumer, constant=constant)
    changed = False
    for g in [n for n in gm.graph.nodes if is_gather(n, (ROLE_OUT,))]:
        if g._erased:  # removed by an earlier region this round
            continue
        if g.meta.get("sfmp", {}).get("realigned"):
            continue  # already the cheapest form of its region
        region = find_region(g, ctx)
        if isinstance(region, str):
            report.not_folded.append((",".join(_layers(g)), region))
            continue
        P, after, before = _plan_region(gm, region)
        if after >= before:
            report.not_folded.append((",".join(_layers(g)), f"folding would keep {after} of {before} gathers"))
            continue
        report.regions.append({
            "producers": [l for p in region.producers for l in _layers(p)],
            "consumers": [l for c, _ in region.consumers for l in _layers(c)],
            "interior_ops": len(region.interior),
            "constants_permuted": len(region.constants),
            "gathers_before": before, "gathers_after": after,
        })
        _apply_region(gm, region, P, constant)
        changed = True
    return changed


def _compose(gm, report: FoldReport) -> bool:
    changed = False
    for g in [n for n in gm.graph.nodes if is_gather(n)]:
        if g._erased:
            continue
        inner = g.args[0]
        if not is_gather(inner):
            continue
        idx = gather_index(gm, inner)[gather_index(gm, g)]  # (t[a])[b] = t[a[b]]
        if is_identity(idx):  # an inverse pair: both vanish (inner stays if others read it)
            g.replace_all_uses_with(inner.args[0])
            idx_node = g.args[2]
            gm.graph.erase_node(g)
            erase_if_unused(gm, idx_node)
            if not inner.users:
                _drop(gm, inner)
        elif len(inner.users) == 1:
            g.replace_input_with(inner, inner.args[0])
            _set_index(gm, g, idx, "composed")
            _drop(gm, inner)
        else:
            continue
        report.composed += 1
        changed = True
    return changed


def _dedup(gm, report: FoldReport) -> bool:
    changed = False
    seen: dict[fx.Node, list[fx.Node]] = {}
    for g in [n for n in gm.graph.nodes if is_gather(n)]:
        twins = seen.setdefault(g.args[0], [])
        idx = gather_index(gm, g)
        keep = next((k for k in twins if torch.equal(gather_index(gm, k), idx)), None)
        if keep is None:
            twins.append(g)
            continue
        keep.meta["sfmp"]["layers"] = _layers(keep) + [l for l in _layers(g) if l not in _layers(keep)]
        keep.meta["sfmp"]["shared"] = True
        idx_node = g.args[2]
        g.replace_all_uses_with(keep)
        gm.graph.erase_node(g)
        erase_if_unused(gm, idx_node)
        report.deduplicated += 1
        changed = True
    return changed


def _identity(gm, report: FoldReport) -> bool:
    changed = False
    for g in [n for n in gm.graph.nodes if is_gather(n)]:
        if is_identity(gather_index(gm, g)):
            _drop(gm, g)
            report.identity_removed += 1
            changed = True
    return changed


def fold_permutations(gm: fx.GraphModule, constant=lambda node: None, max_rounds: int = 8) -> FoldReport:
    """Fold / compose / merge the passes' gathers in ``gm`` in place. Returns a FoldReport.

    constant(node) -> tensor | None: the real tensor behind a parameter / buffer / get_attr node,
    for per-channel constants (biases) inside a region that must be permuted offline.
    """
    report = FoldReport(gathers_before=count_gathers(gm))
    for _ in range(max_rounds):
        report.not_folded.clear()
        changed = _identity(gm, report)
        changed |= _fold_regions(gm, constant, report)
        changed |= _compose(gm, report)
        changed |= _dedup(gm, report)
        if not changed:
            break
    drop_unused_buffers(gm)
    gm.graph.lint()
    gm.recompile()
    report.gathers_after = count_gathers(gm)
    return report


def gather_counts(gm: fx.GraphModule) -> dict[str, dict[str, int]]:
    """Per layer: gathers left on its input ("in") and output ("out"); "shared" counts an input gather
    that serves several layers (counted once per layer, so sum over layers ≥ gathers in the graph)."""
    out: dict[str, dict[str, int]] = {}
    for n in gm.graph.nodes:
        role = sfmp_role(n)
        if role == ROLE_GEMM:
            for l in _layers(n):
                out.setdefault(l, {"in": 0, "out": 0, "shared": 0})
        if is_gather(n):
            key = "in" if role == ROLE_IN else "out"
            for l in _layers(n):
                c = out.setdefault(l, {"in": 0, "out": 0, "shared": 0})
                c[key] += 1
                if n.meta["sfmp"].get("shared"):
                    c["shared"] += 1
    return out
