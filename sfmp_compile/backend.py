"""``torch.compile(model, backend=sfmp_backend(bits=3))``: quantize and rewrite linears inside Dynamo graphs.

Per graph Dynamo hands over, the backend:
  1. finds every linear (passes.find_linears) and names its weight by qualified name;
  2. plans the weights it has not seen before — salience, tied orders, one global allocation over
     all of them (passes.tie_orders) — or looks them up in a whole-model ``plan=``;
  3. quantizes each weight once, caching its SFMPWeight by parameter identity in the layout its
     device runs (a recompile for a new sequence length reuses it; all graphs share its tensors);
  4. rewrites linears into gather -> SFMP GEMM -> gather (passes.rewrite_linears) and folds the
     gathers that can be folded exactly (passes.fold_permutations);
  5. optionally frees the float weights (passes.release) and writes graph dumps (dump);
  6. hands the graph to the inner compiler (Inductor by default).

The budget is global over what one planning step sees: the whole model when Dynamo produces one
graph. When Dynamo splits the model, each new graph is planned on its own (with a warning) unless a
whole-model plan is given: ``sfmp_backend(plan=sfmp_compile.plan(model, bits=...))``.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx as fx
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .config import QuantConfig, SFMPConfigError
from .dump import GraphReport, inductor_output_code, kernel_sources, layer_row, write_graph_dump
from .format import PackedWeight
from .graph_variants import GraphVariants
from .layouts import SFMPWeight
from .ops.cpu_int4 import register_inductor_decompositions
from .ops.dispatch import CPU_KERNELS, preferred_layout
from .plan import LayerPlan, Plan, fixed_width, fixed_width_plan, make_plan, skipped
from .quantize import quantize_weight
from .salience import SALIENCES
from .passes.calibrate import graph_input_moments
from .passes.find_linears import LinearSite, find_linear_sites
from .passes.fold_permutations import gather_counts
from .passes.fx_utils import copy_graph_module, graph_constants
from .passes.names import NameResolver, is_relative
from .passes.release import params_of_non_linears, release_linear_weights
from .passes.pipeline import rewrite_graph
from .passes.tie_orders import tie_groups

INNER = ("inductor", "aot_eager", "eager")
_QUANT_OPTIONS = set(QuantConfig.__dataclass_fields__) - {"bits"}


@dataclass
class _Entry:
    """A cached quantization of one parameter: its SFMPWeight on the parameter's device, in the
    layout its graphs run from (ops.dispatch.preferred_layout). One copy of each weight is resident
    and every graph compiled from it takes its constants from this copy; the packed checkpoint form
    is rebuilt exactly on demand."""

    name: str
    layer: SFMPWeight
    version: int


def _version(p: torch.Tensor) -> int:
    """The in-place version counter (inference tensors have none and cannot change in place)."""
    return -1 if p.is_inference() else p._version


class SFMPBackend:
    """The callable ``torch.compile`` backend returned by :func:`sfmp_backend`.

    Attributes after compiling: ``plan`` (a Plan of every layer this backend quantized, names as
    in ``model.named_modules()``; feed it to ``quantize(copy, plan=...)`` for an eager twin),
    ``reports`` (one ``dump.GraphReport`` per graph), ``timings`` (seconds per phase, summed over
    graphs), ``quantize_calls`` (weights quantized so far), ``released_bytes``.

    Parameters are read when a graph is compiled: after changing weights in place, reset Dynamo
    (``torch._dynamo.reset()``) and compile again. ``unquantized(model)`` lists the linears that never
    reached a compiled graph (code Dynamo ran eagerly keeps float weights).
    """

    def __init__(self, bits: float | None = None, *, plan: Plan | None = None, model: nn.Module | None = None,
                 calibration: Iterable | None = None, inner: str | Callable = "inductor", dump_dir: str | None = None,
                 release_weights: bool = False, fold: bool = True, tie: bool = True, cpu_kernel: str = "packed",
                 **options):
        unknown = set(options) - _QUANT_OPTIONS
        if unknown:
            raise TypeError(f"sfmp_backend() got unexpected options {sorted(unknown)}; quantization options are "
                            f"{sorted(_QUANT_OPTIONS)}")
        if not callable(inner) and inner not in INNER:
            raise SFMPConfigError(f"inner must be one of {INNER} or a backend callable, got {inner!r}")
        self.saliences: Mapping[str, torch.Tensor] | None = None
        if plan is not None:
            if not isinstance(plan, Plan):
                raise SFMPConfigError(f"plan= must be an sfmp_compile.Plan (from sfmp_compile.plan(model, ...)), got {type(plan).__name__}")
            if bits is not None or options:
                raise SFMPConfigError("pass either plan= or quantization options (bits, salience, ...), not both: "
                                      "the plan already fixes them")
            self.config = plan.config
            self.user_plan = plan
        else:
            sal = options.pop("salience", None)
            if sal is None:
                kind = "activation" if calibration is not None else "weight"
            elif isinstance(sal, str):
                kind = sal
            elif isinstance(sal, Mapping):
                kind, self.saliences = "weight", sal
            else:
                raise SFMPConfigError(f"salience must be one of {list(SALIENCES)} or a dict name -> tensor, "
                                      f"got {type(sal).__name__}")
            self.config = QuantConfig(bits=3.0 if bits is None else bits, salience=kind, **options)
            entry = SALIENCES[kind]
            if entry.needs_calibration and not entry.uses_moments:
                raise SFMPConfigError(
                    f"salience={kind!r} needs more of the model than a graph's inputs (e.g. gradients of its loss), "
                    "which a backend (seeing one graph, without labels) cannot take. Plan first and pass the plan: "
                    f"sfmp_backend(plan=sfmp_compile.plan(model, bits, salience={kind!r}, calibration=data))")
            if entry.uses_moments and calibration is None:
                raise SFMPConfigError(f"salience={kind!r} needs calibration= (model inputs such as token-id "
                                      "tensors); use salience='weight' for a data-free run")
            self.user_plan = None
        if self.config.quantizer == "gptq":
            raise SFMPConfigError("quantizer='gptq' needs per-layer Hessians from calibration data: quantize first "
                                  "(sfmp_compile.quantize(model, quantizer='gptq', calibration=...)), then "
                                  "torch.compile the quantized model")
        self.calibration = list(calibration) if calibration is not None else None
        self.inner = inner
        self.dump_dir = dump_dir if dump_dir is not None else os.environ.get("SFMP_DUMP_DIR") or None
        self.release_weights, self.fold, self.tie = bool(release_weights), bool(fold), bool(tie)
        if cpu_kernel not in CPU_KERNELS:
            raise SFMPConfigError(f"cpu_kernel must be one of {CPU_KERNELS}, got {cpu_kernel!r}")
        self.cpu_kernel = cpu_kernel
        self.resolver = NameResolver(model)
        self._keep_float = params_of_non_linears(model) if model is not None else set()
        self.fixed_layers: dict[str, LayerPlan] = {}  # skip_bits layers (outside the plan's budget)
        self._cache: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._names: dict[str, int] = {}  # layer name -> id of the parameter that holds it
        self.plan = Plan(self.config, {})
        self.reports: list[GraphReport] = []
        self.timings: dict[str, float] = {}
        self.quantize_calls = self.released_bytes = self._planned_graphs = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, stacklevel=3)

    def _tick(self, report: GraphReport, phase: str, t0: float) -> float:
        t = time.perf_counter()
        report.timings[phase] = report.timings.get(phase, 0.0) + (t - t0)
        self.timings[phase] = self.timings.get(phase, 0.0) + (t - t0)
        return t

    def _cached(self, p: torch.Tensor) -> _Entry | None:
        e = self._cache.get(p)
        # a weight changed in place since it was quantized is quantized again
        return None if e is None or (e.version != _version(p) and p.untyped_storage().nbytes() > 0) else e

    def _unique_name(self, name: str, p: torch.Tensor) -> str:
        i, cand = 1, name
        while self._names.get(cand, id(p)) != id(p):  # taken by another parameter: name#2, name#3, ...
            i += 1
            cand = f"{name}#{i}"
        self._names[cand] = id(p)
        return cand

    # ------------------------------------------------------------------ planning
    def _saliences(self, gm, example_inputs, sites: list[LinearSite], weights: dict[str, torch.Tensor], report):
        """(saliences, col_weights) for the new layers of this graph."""
        moments = None
        if self.calibration is not None:
            moments = graph_input_moments(gm, example_inputs, sites, self.calibration)
            if isinstance(moments, str):
                report.notes.append(f"calibration not used: {moments}")
                self._warn_once(f"calib{report.index}", f"sfmp_backend: graph {report.index}: calibration not used "
                                f"({moments}); weight salience instead. A whole-model plan avoids this: "
                                "sfmp_backend(plan=sfmp_compile.plan(model, bits, calibration=data)).")
                moments = None
        kind = self.config.salience
        if self.saliences is not None:
            sal = {}
            for name in weights:
                key = self.resolver.resolve(name, self.saliences)
                if key is None:
                    raise ValueError(f"salience= has no entry for layer {name}")
                sal[name] = self.saliences[key].float()
        else:
            entry = SALIENCES[kind] if moments is not None or not SALIENCES[kind].uses_moments else SALIENCES["weight"]
            views = {n: SimpleNamespace(weight=w) for n, w in weights.items()}  # estimators read linear_weight(m)
            sal = entry.estimate(None, views, None, moments)
        cws = {n: moments[n] for n in weights} if moments is not None else None
        return sal, cws

    def _plan_new(self, gm, example_inputs, sites, new: dict[str, LinearSite], report) -> dict[str, LayerPlan]:
        if self.user_plan is not None:
            return {name: self.user_plan.layers[name] for name in new}
        self._planned_graphs += 1
        if self._planned_graphs == 2:
            self._warn_once("split", "sfmp_backend: Dynamo produced more than one graph with new weights, and no plan= "
                            "was given, so each graph's linears are allocated on their own budget (the average bit "
                            "width holds per graph, not across the model). For one global budget pass "
                            "sfmp_backend(plan=sfmp_compile.plan(model, bits=...)).")
        t0 = time.perf_counter()
        weights = {n: s.linear_weight() for n, s in new.items()}
        sal, cws = self._saliences(gm, example_inputs, list(new.values()), weights, report)
        t0 = self._tick(report, "salience", t0)
        rows, cols = tie_groups(new.values(), graph_constants(gm, example_inputs)) if self.tie else ([], [])
        plan = make_plan(weights, sal, self.config, cws, rows, cols)
        self._tick(report, "allocation", t0)
        return plan.layers

    # ------------------------------------------------------------------ the backend
    def __call__(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        pristine = copy_graph_module(gm)  # for recompiling the graph for other parameters (see graph_variants)
        compiled = self._compile_graph(gm, example_inputs)
        return GraphVariants(self._compile_graph, pristine, list(example_inputs), compiled, len(self.reports) - 1)

    def _compile_graph(self, gm: fx.GraphModule, example_inputs: list, variant_of: int | None = None) -> Callable:
        report = GraphReport(index=len(self.reports))
        if variant_of is not None:
            report.notes.append(f"recompiled graph {variant_of} for other parameters (Dynamo reuses a graph for "
                                "every module instance of the same code)")
        t_all = t0 = time.perf_counter()
        before = gm.print_readable(print_output=False) if self.dump_dir else ""
        report.n_nodes_before = len(gm.graph.nodes)
        sites = find_linear_sites(gm, example_inputs, self.resolver)
        t0 = self._tick(report, "find", t0)

        # Name, filter, and split into cached / new weights.
        new: dict[str, LinearSite] = {}
        for s in sites:
            if not s.quantizable or s.form == "sfmp":
                continue
            if not self.resolver.exact and is_relative(s.source):
                self._warn_once("relative", "sfmp_backend: a graph starts inside a submodule (after a graph break), so "
                                "its parameter names are relative; pass model= to sfmp_backend for exact names")
            entry = self._cached(s.weight)
            if entry is not None:
                s.name = entry.name
                continue
            name = self.resolver.resolve(s.name, self.user_plan.layers) if self.user_plan is not None else s.name
            if name is not None and self.user_plan is not None:
                if self.user_plan.layers[name].shape != (s.out_features, s.in_features):
                    raise ValueError(f"{name}: the plan is for shape {self.user_plan.layers[name].shape}, the graph's "
                                     f"weight is {(s.out_features, s.in_features)}")
                s.name = name
            elif fixed_width(s.name, self.config, self.user_plan) is None and (name is None or skipped(s.name, self.config.skip)):
                s.skip_reason = "not in the plan" if name is None else f"skip pattern {list(self.config.skip)}"
                continue
            if s.weight.untyped_storage().nbytes() == 0:
                raise RuntimeError(f"{s.name}: its float weight was released (release_weights=True) by another "
                                   "backend instance; compile again with the same backend object")
            s.name = self._unique_name(s.name, s.weight)
            new.setdefault(s.name, s)
        cached_names = {s.name for s in sites if s.quantizable and s.form != "sfmp" and s.name not in new}

        if new:
            # Skipped layers with a skip_bits width sit outside the budget: fixed width, RTN, no reordering.
            fixed = {n: fixed_width_plan(s.out_features, s.in_features, b, self.config) for n, s in new.items()
                     if (b := fixed_width(n, self.config, self.user_plan)) is not None}
            budget = {n: s for n, s in new.items() if n not in fixed}
            layer_plans = {**(self._plan_new(gm, example_inputs, sites, budget, report) if budget else {}), **fixed}
            t0 = time.perf_counter()
            for name, s in new.items():
                cfg = replace(self.config, quantizer="rtn", clip_search=False) if name in fixed else self.config
                w = SFMPWeight.from_packed(quantize_weight(s.linear_weight(), layer_plans[name], cfg, name=name))
                self.quantize_calls += 1
                dev = s.weight.device
                self._cache[s.weight] = _Entry(name, w.to_layout(preferred_layout(w, dev, self.cpu_kernel)).to(dev),
                                               _version(s.weight))
                (self.fixed_layers if name in fixed else self.plan.layers)[name] = layer_plans[name]
            t0 = self._tick(report, "quantization", t0)

        # Rewrite and fold.
        t0 = time.perf_counter()
        work = []
        for s in sites:
            if not s.quantizable:
                report.skipped.append((s.node.name, s.name, s.skip_reason))
            elif s.form == "sfmp":
                work.append((s, None))
            else:
                work.append((s, self._cache[s.weight].layer))
        records, tied, fold = rewrite_graph(gm, work, example_inputs, self.cpu_kernel, self.fold)
        report.notes += [f"{n}: the tied embedding reads the quantized weight" for n in tied]
        report.regions, report.not_folded = fold.regions, list(fold.not_folded)
        report.gathers_before, report.gathers_after = fold.gathers_before, fold.gathers_after
        report.gathers = gather_counts(gm)
        report.layers = [layer_row(r, s.name in cached_names) for r, (s, _) in zip(records, work)]
        report.n_nodes_after = len(gm.graph.nodes)
        t0 = self._tick(report, "passes", t0)

        if self.release_weights:
            self._release(gm, sites, report)
        compiled, inner_code = self._compile_inner(gm, example_inputs, report)
        report.timings["total"] = time.perf_counter() - t_all
        if self.dump_dir:
            after = gm.print_readable(print_output=False)
            kernels = kernel_sources()
            if inner_code:
                kernels = (kernels + "\n\n" if kernels else "") + "# ---- Inductor output code ----\n" + "\n\n".join(inner_code)
            write_graph_dump(self.dump_dir, report, before, after, kernels)
        self.reports.append(report)
        return compiled

    def _release(self, gm, sites, report) -> None:
        # A tied table whose every lookup now reads the quantized weight is no longer needed as float.
        served = {id(s.weight) for s in sites if s.weight_node is not None and not s.weight_node.users}
        freed, notes = release_linear_weights(sites, self._keep_float - served)
        self.released_bytes += freed
        report.notes += notes
        report.notes.append(f"released {freed} bytes of float weights")

    def _compile_inner(self, gm: fx.GraphModule, example_inputs, report) -> tuple[Callable, list[str]]:
        t0 = time.perf_counter()
        # A fresh GraphModule over the same graph: compile_fx rejects buffers registered on the module
        # Dynamo built (its parameter-source bookkeeping does not know them); a re-wrap has none of it.
        gm2 = fx.GraphModule(gm, gm.graph)
        code: list[str] = []
        if callable(self.inner):
            compiled = self.inner(gm2, example_inputs)
        elif self.inner == "eager":
            compiled = gm2.forward
        elif self.inner == "aot_eager":
            from torch._dynamo.backends.debugging import aot_eager
            compiled = aot_eager(gm2, example_inputs)
        else:
            from torch._inductor.compile_fx import compile_fx
            if any("linear_cpu_int4" in str(n.target) for n in gm.graph.nodes if n.op == "call_function"):
                register_inductor_decompositions()  # before compile_fx, which memoises its table
            if self.dump_dir:
                with inductor_output_code() as code:
                    compiled = compile_fx(gm2, example_inputs)
            else:
                compiled = compile_fx(gm2, example_inputs)
        self._tick(report, "inner_compile", t0)
        return compiled, code

    # ------------------------------------------------------------------ reports
    def gather_counts(self) -> dict[str, dict[str, int]]:
        """Per layer, the gathers left in the most recent graph that contains it: {"in", "out", "shared"}."""
        out: dict[str, dict[str, int]] = {}
        for r in self.reports:
            out.update(r.gathers)
        return out

    def unquantized(self, model: nn.Module) -> list[str]:
        """Linear layers of ``model`` (minus skip patterns) that no graph compiled by this backend
        quantized: code Dynamo ran eagerly (e.g. a frame it skipped because of a graph break inside a
        loop) keeps float linears, since a backend only sees the graphs it is given."""
        from .linear import SFMPLinear
        from .plan import find_linears
        done = {id(p) for p in self._cache.keys()}
        return [n for n, m in find_linears(model, self.config.skip).items()
                if not isinstance(m, SFMPLinear) and id(m.weight) not in done]

    @property
    def packed_bytes(self) -> int:
        """Bytes of the true-bit packed format (format v1, what a checkpoint stores) of every weight
        this backend quantized."""
        return sum(e.layer.stored_bytes for e in self._cache.values())

    @property
    def resident_bytes(self) -> int:
        """Bytes of quantized weights held in memory: the cache every compiled graph of this backend
        takes its constants from (graphs share these tensors, they hold no copies). CPU layers on the
        int4 kernel are held in the "int4" layout only; the default CPU kernel runs the packed layout itself."""
        return sum(e.layer.nbytes for e in self._cache.values())

    def packed_weights(self) -> dict[str, PackedWeight]:
        """Layer name -> the true-bit PackedWeight of every weight quantized so far (rebuilt exactly
        from the int4 form where that is what is held), e.g. to save or to compare with eager."""
        return {e.name: e.layer.packed() for e in self._cache.values()}


def sfmp_backend(bits: float | None = None, **options: Any) -> SFMPBackend:
    """A ``torch.compile`` backend that quantizes every linear with SFMP and compiles the result.

    bits: target average code bits (1 < bits <= 8; default 3.0). Options: any QuantConfig field
    (bit_choices, block_rows, group_size, salience, quantizer, clip_search, reorder_rows,
    reorder_cols, skip); ``plan=`` a whole-model Plan (from ``sfmp_compile.plan``) instead of those;
    ``model=`` the model, to name parameters exactly across graph breaks; ``calibration=`` model inputs
    run through each graph for activation salience; ``inner=`` "inductor" | "aot_eager" | "eager";
    ``dump_dir=`` (or env SFMP_DUMP_DIR) for graph dumps; ``release_weights=`` free float weights after
    compiling; ``fold=`` / ``tie=`` to disable permutation folding / order tying; ``cpu_kernel=``
    "packed" (default: CPU layers run the C++ mixed-width kernel from their true-bit packed form,
    int8 activations), "precise" (the same kernel with int8 + int8 residual activations: logits
    within ~75 dB of the exact op, 1.3-1.5x the kernel time), "int4" (torch's int4 kernel with bf16 activations, blocks of <= 4 bits widened
    to 4) or "reference" (the exact fp32 op, slow).

    Options are validated here, so a bad value fails at this call rather than inside torch.compile.
    """
    return SFMPBackend(bits, **options)
