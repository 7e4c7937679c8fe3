"""Quality experiments on a real model: SFMP against uniform and layer-wise mixed precision at equal BPW.

One ``Bench`` holds everything the methods share: the fp32 model (never modified), calibration
windows, held-out tokens, the fp32 reference's next-token log-probabilities (for KL, computed once),
the calibration input moments E[x²] (clip-search weights and activation salience) and each salience
kind, computed once and timed once. Every method then costs: its allocation (whatever it does beyond
the shared salience), quantization, and evaluation. BPW is always ``quantization_report(model)["bpw"]``
(codes, scales, zeros, permutations, bit maps, offsets).
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from filelock import FileLock, Timeout
from torch import nn

from ..config import QuantConfig
from ..format import FORMAT_VERSION
from ..linear import SFMPLinear
from ..plan import Plan, default_regroup, find_linears, make_plan
from ..quantize import default_bit_choices, quantization_report, quantize
from ..salience import fisher_salience, input_second_moments, linear_weight, salience_from_moments
from ..budget import code_bits_for_bpw, plan_bpw
from .baselines import layerwise_plan, uniform_plan
from .metrics import score, window_logits
from .models import load_named
from .report import report_bits_by_type
from .text import calibration_batches, eval_tokens, text_halves


def dense_copy(model: nn.Module) -> nn.Module:
    """Swap every SFMPLinear for an nn.Linear holding its dequantized weight (in place; returns model).

    The same function x·Ŵᵀ + b (fp32), computed without unpacking the codes on every call: used to
    evaluate many quantized variants quickly. The checked equivalence lives in tests/eval/test_baselines.py.
    """
    for name, m in list(model.named_modules()):
        if isinstance(m, SFMPLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(m.packed.dequantize(torch.float32))
                if m.bias is not None:
                    lin.bias.copy_(m.bias)
            lin.requires_grad_(False)
            model.set_submodule(name, lin)
    return model


@dataclass
class Bench:
    """Shared state of one experiment. model: fp32 reference; eval_ids LongTensor [1, T]."""

    model: nn.Module
    tokenizer: object
    calibration: list
    eval_ids: torch.Tensor
    context: int = 512
    group_size: int = 64
    block_rows: int = 512
    clip_search: bool = True
    ref_logits: list = field(default_factory=list)  # fp32 reference logits [1, L, V] per held-out window
    fp32: dict = field(default_factory=dict)
    moments: dict = field(default_factory=dict)
    moments_s: float = 0.0
    saliences: dict = field(default_factory=dict)  # kind -> (dict name -> fp32 [N, K], seconds)
    verbose: bool = True
    cache_dir: str | None = None  # moments / Fisher salience saved here (with their measured seconds)

    # ---- shared statistics ----
    @property
    def layers(self) -> dict[str, nn.Module]:
        return find_linears(self.model, ("lm_head",))

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return {n: linear_weight(m).detach().float() for n, m in self.layers.items()}

    def prepare(self) -> "Bench":
        """Reference logits on the held-out windows (fp32 PPL from them) and calibration moments E[x²]."""
        t0 = time.perf_counter()
        self.ref_logits = window_logits(self.model, self.eval_ids, self.context)
        self.fp32 = {"ppl": score(self.ref_logits, self.eval_ids, self.context)["ppl"], "kl": 0.0,
                     "eval_s": time.perf_counter() - t0,
                     "bytes": sum(t.numel() * t.element_size() for t in self.model.state_dict().values())}
        self.moments, self.moments_s = self._compute_once(
            "moments", lambda: input_second_moments(self.model, self.layers, self.calibration))
        self.log(f"fp32 PPL {self.fp32['ppl']:.3f} ({self.fp32['eval_s']:.0f} s); moments {self.moments_s:.0f} s")
        return self

    def salience(self, kind: str) -> tuple[dict, float]:
        """(name -> fp32 [N, K], seconds) for kind in weight / activation / fisher, computed once."""
        if kind not in self.saliences:
            t0 = time.perf_counter()
            w = self.weights
            if kind == "weight":
                s = {n: salience_from_moments(x) for n, x in w.items()}
            elif kind == "activation":
                # The moments pass is shared with clip search; its time is charged to activation here.
                s = {n: salience_from_moments(x, self.moments[n]) for n, x in w.items()}
            elif kind == "fisher":
                s, dt = self._compute_once("fisher", lambda: fisher_salience(self.model, self.layers, self.calibration))
                self.saliences[kind] = (s, dt)
                self.log(f"salience fisher: {dt:.1f} s")
                return self.saliences[kind]
            else:
                raise ValueError(f"unknown salience kind {kind!r}")
            dt = time.perf_counter() - t0 + (self.moments_s if kind == "activation" else 0.0)
            self.saliences[kind] = (s, dt)
            self.log(f"salience {kind}: {dt:.1f} s")
        return self.saliences[kind]

    def error_weights(self, kind: str) -> dict[str, torch.Tensor]:
        """What a layer's quantization error is weighted by for the layer-wise search: the loss proxy
        each salience stands for (Fisher: F ⊙ δ², activation: E[x²] ⊙ δ² = output MSE, weight: δ²)."""
        if kind == "fisher":
            return self.salience("fisher")[0]
        if kind == "activation":
            return dict(self.moments)
        return {n: torch.ones(w.shape[1]) for n, w in self.weights.items()}

    def _cache_path(self, what: str) -> str | None:
        if not self.cache_dir:
            return None
        h = hashlib.sha1()
        for c in self.calibration:
            h.update(c.numpy().tobytes())
        for n, m in self.layers.items():  # which model: names, shapes and a weight checksum
            h.update(f"{n}{tuple(m.weight.shape)}{float(m.weight.detach().double().sum()):.12e}".encode())
        os.makedirs(self.cache_dir, exist_ok=True)
        return os.path.join(self.cache_dir, f"{what}-{h.hexdigest()[:12]}.safetensors")

    def _compute_once(self, what: str, fn) -> tuple[dict, float]:
        """fn() -> tensors, cached on disk with its measured seconds. Parallel processes sharing the
        cache compute it once: the first holds a file lock, the others wait on it, then read the result."""
        cached = self._load_cached(what)
        if cached is not None:
            return cached
        path = self._cache_path(what)
        if path is None:
            t0 = time.perf_counter()
            return fn(), time.perf_counter() - t0
        lock = FileLock(path + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.log(f"waiting for another process to compute {what}")
            lock.acquire()
        try:
            cached = self._load_cached(what)  # written while this process waited
            if cached is not None:
                return cached
            t0 = time.perf_counter()
            tensors = fn()
            dt = time.perf_counter() - t0
            self._save_cached(what, tensors, dt)
        finally:
            lock.release()
        return tensors, dt

    def _load_cached(self, what: str):
        from safetensors import safe_open
        from safetensors.torch import load_file
        path = self._cache_path(what)
        if path is None or not os.path.exists(path):
            return None
        with safe_open(path, "pt") as f:
            seconds = float((f.metadata() or {}).get("seconds", "nan"))
        return load_file(path), seconds

    def _save_cached(self, what: str, tensors: dict, seconds: float) -> None:
        from safetensors.torch import save_file
        path = self._cache_path(what)
        if path is not None:
            save_file({k: v.float().contiguous() for k, v in tensors.items()}, path + ".tmp", metadata={"seconds": repr(seconds)})
            os.replace(path + ".tmp", path)  # readers never see a half-written file

    # ---- evaluation ----
    def score(self, model: nn.Module) -> dict:
        """``metrics.score`` of ``model`` on the held-out tokens against the fp32 reference logits:
        ppl, kl (mean KL(fp32 ‖ model) per position), sqnr_db and ref_ppl, one pass."""
        return score(model, self.eval_ids, self.context, reference=self.ref_logits)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[quality] {msg}", flush=True)

    # ---- running one method ----
    def config(self, **kw) -> QuantConfig:
        base = dict(group_size=self.group_size, block_rows=self.block_rows, clip_search=self.clip_search)
        base.update(kw)
        return QuantConfig(**base)

    def run(self, plan: Plan, record: dict) -> dict:
        """Quantize a fresh copy of the model under ``plan``, measure it, return ``record`` filled in."""
        model = copy.deepcopy(self.model)
        t0 = time.perf_counter()
        quantize(model, plan=plan, calibration=self.calibration)
        quant_s = time.perf_counter() - t0
        rep = quantization_report(model)
        dense_copy(model)
        t1 = time.perf_counter()
        scores = self.score(model)
        eval_s = time.perf_counter() - t1
        alloc_s = record.pop("alloc_s", 0.0)
        record.update({
            "bpw": rep["bpw"], "weight_bits": rep["weight_bits"], "quantized_bytes": rep["quantized_bytes"],
            "model_bytes": rep["quantized_bytes"] + rep["other_bytes"], "fp32_linear_bytes": rep["float_bytes_fp32"],
            "ppl": scores["ppl"], "kl": scores["kl"],
            # The blocks and the format that produced this BPW (v1 stored int32 permutations).
            "group_size": plan.config.group_size, "block_rows": plan.config.block_rows,
            "format_version": FORMAT_VERSION,
            "bits_by_type": report_bits_by_type(rep),
            "alloc_s": alloc_s, "quant_s": quant_s, "total_s": record.get("salience_s", 0.0) + alloc_s + quant_s,
            "eval_s": eval_s,
        })
        if plan_bpw(plan) and abs(plan_bpw(plan) - rep["bpw"]) > 1e-9:
            raise AssertionError(f"plan_bpw {plan_bpw(plan)} != packed bpw {rep['bpw']}")
        self.log(f"{record['label']:<42} BPW {rep['bpw']:.3f}  bits {rep['weight_bits']:.3f}  PPL {scores['ppl']:8.3f}  "
                 f"KL {scores['kl']:.4f}  alloc {alloc_s:.2f} s  quant {quant_s:.1f} s  eval {eval_s:.0f} s")
        del model
        return record

    def uniform(self, bits: int, quantizer: str = "rtn") -> dict:
        cfg = self.config(bits=float(bits), quantizer=quantizer)
        plan = uniform_plan({n: tuple(w.shape) for n, w in self.weights.items()}, bits, cfg, self.moments)
        return self.run(plan, {"method": "uniform", "label": f"uniform {bits}-bit {quantizer}", "quantizer": quantizer,
                               "salience": None, "target_bpw": None, "levels": 1, "alloc_s": 0.0, "salience_s": 0.0})

    def layerwise(self, bpw: float, salience: str = "fisher", quantizer: str = "rtn",
                  choices: Sequence[int] | None = None) -> dict:
        sal_s = self.salience(salience)[1] if salience != "activation" else self.moments_s
        weights = self.weights
        errw = self.error_weights(salience)
        shapes_plan = uniform_plan({n: tuple(w.shape) for n, w in weights.items()}, 2, self.config())
        overhead = plan_bpw(shapes_plan) - 2.0  # identity orders: scales, zeros, maps only
        code_bits = bpw - overhead
        ch = tuple(choices) if choices else default_bit_choices(code_bits)
        plan = layerwise_plan(weights, errw, code_bits, self.config(quantizer=quantizer), ch, self.moments)
        alloc = plan.timings["measure_s"] + plan.timings["allocate_s"]
        return self.run(plan, {"method": "layerwise", "label": f"layer-wise {salience} {quantizer} @{round(bpw, 3):g}",
                               "quantizer": quantizer, "salience": salience, "target_bpw": bpw, "levels": len(ch),
                               "bit_choices": list(ch), "code_bits_target": code_bits, "alloc_s": alloc,
                               "measure_s": plan.timings["measure_s"], "dp_s": plan.timings["allocate_s"],
                               "salience_s": sal_s})

    def sfmp(self, bpw: float, salience: str = "fisher", levels: int = 3, quantizer: str = "rtn",
             reorder_rows: bool = True, reorder_cols: bool = True, regroup: bool | None = None, tag: str = "",
             choices: Sequence[int] | None = None) -> dict:
        sal, sal_s = self.salience(salience)
        weights = self.weights
        t0 = time.perf_counter()

        def make(b):
            ch = (tuple(choices) if choices else default_bit_choices(b)) if levels == 3 else None
            if ch is not None:
                b = min(max(b, ch[0]), ch[-1])
            cfg = self.config(bits=b, bit_choices=ch, salience=salience, quantizer=quantizer,
                              reorder_rows=reorder_rows, reorder_cols=reorder_cols)
            return make_plan(weights, sal, cfg, self.moments,
                             regroup=default_regroup(cfg) if regroup is None else regroup)

        code_bits, plan = code_bits_for_bpw(bpw, make, lo=1.0 + 1e-6)
        alloc = time.perf_counter() - t0
        one = plan.timings["reorder_s"] + plan.timings["allocate_s"]  # one make_plan call (the method itself)
        label = f"SFMP {levels}-level {salience} {quantizer} @{round(bpw, 3):g}" + (f" {tag}" if tag else "")
        return self.run(plan, {"method": "sfmp", "label": label, "quantizer": quantizer, "salience": salience,
                               "target_bpw": bpw, "levels": levels, "code_bits_target": code_bits,
                               "bit_choices": list(plan.config.bit_choices) if plan.config.bit_choices else None,
                               "reorder_rows": reorder_rows, "reorder_cols": reorder_cols,
                               "regroup": (quantizer != "gptq") if regroup is None else regroup,
                               "rank": plan.config.rank,
                               "alloc_s": one, "bpw_targeting_s": alloc, "salience_s": sal_s, "tag": tag})


def load_bench(model: str = "smollm2", n_calibration: int = 16, seq_len: int = 512, n_eval_tokens: int = 8192,
               context: int = 512, group_size: int = 64, block_rows: int = 512, verbose: bool = True,
               text_path: str | None = None, cache_dir: str | None = None) -> Bench:
    """Model, tokenizer, calibration windows and held-out tokens: the first and last wiki articles, or
    the two halves of the file at ``text_path``. ``model``: "smollm2", "tiny" or a local directory."""
    m, tok = load_named(model)
    cal_text, ev_text = text_halves(text_path)
    cal = calibration_batches(tok, n_calibration, seq_len, text=cal_text)
    ev = eval_tokens(tok, n_eval_tokens, text=ev_text)
    return Bench(m, tok, cal, ev, context, group_size, block_rows, verbose=verbose, cache_dir=cache_dir).prepare()


def interpolate(points: Sequence[tuple[float, float]], x: float, log: bool = False) -> float | None:
    """Piecewise-linear y(x) through sorted (x, y) points; None outside their range.

    log: interpolate log y (geometric): the right reading for perplexity, which falls roughly
    exponentially with bits (linear interpolation between 2-bit PPL 5000 and 3-bit PPL 32 would
    credit a point just below 3 bits with PPL ~50)."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            if log:
                return math.exp(math.log(y0) + (math.log(y1) - math.log(y0)) * t)
            return y0 + (y1 - y0) * t
    return None
