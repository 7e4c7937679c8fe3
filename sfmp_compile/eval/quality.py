"""The rows of ``sfmp eval``'s quality table: fp32, a saved checkpoint, SFMP at code-bit targets, baselines.

Every row is a dict with at least series (the plot line it belongs to), label, bpw, weight_bits,
ppl and kl (None when there is no float reference); method rows are ``Bench.run`` records.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from torch import nn

from ..budget import MIB, Budget, float_bytes_outside, plan_maker, solve, stored_bytes, target_bpw
from ..config import QuantConfig
from ..plan import default_regroup, make_plan
from ..quantize import quantization_report
from .experiments import Bench, dense_copy
from .metrics import score

COLUMNS = [("label", "method", ""), ("target", "target", ""), ("bpw", "BPW", ".3f"), ("size_mib", "MiB", ".2f"), ("weight_bits", "code bits", ".3f"), ("ppl", "PPL", ".3f"),
           ("kl", "KL", ".4f"), ("alloc_s", "alloc s", ".2f"), ("quant_s", "quant s", ".1f")]


def fp32_row(bench: Bench) -> dict:
    """The float reference's row (``bench`` prepared)."""
    return {"series": "fp32", "label": "fp32", "bpw": 32.0, "weight_bits": 32.0, "ppl": bench.fp32["ppl"], "kl": 0.0}


def checkpoint_rows(qmodel: nn.Module, bench: Bench, name: str) -> list[dict]:
    """Rows of a loaded quantized model: [fp32, checkpoint] with KL when ``bench`` is prepared on its
    float reference, else [checkpoint] with its PPL only. ``qmodel`` is densified in place then."""
    rep = quantization_report(qmodel)
    size = stored_bytes(qmodel) / MIB
    prepared = bool(bench.ref_logits)
    s = bench.score(dense_copy(qmodel)) if prepared else score(qmodel, bench.eval_ids, bench.context)
    row = {"series": "checkpoint", "label": f"checkpoint {name}", "bpw": rep["bpw"], "weight_bits": rep["weight_bits"],
           "ppl": s["ppl"], "kl": s["kl"], "quantized_bytes": rep["quantized_bytes"], "size_mib": size}
    return [fp32_row(bench), row] if prepared else [row]


def sfmp_at_code_bits(bench: Bench, config: QuantConfig) -> dict:
    """SFMP under ``config`` as given (its bits are the code-bit target, not a BPW budget): a ``Bench.run`` record."""
    sal, sal_s = bench.salience(config.salience)
    plan = make_plan(bench.weights, sal, config, bench.moments, regroup=default_regroup(config))
    r = bench.run(plan, {"method": "sfmp", "label": f"SFMP {config.levels}-level {config.salience} w{config.bits:g}",
                            "quantizer": config.quantizer, "salience": config.salience, "levels": config.levels,
                            "code_bits_target": config.bits,
                            "alloc_s": plan.timings["reorder_s"] + plan.timings["allocate_s"], "salience_s": sal_s})
    r["size_mib"] = (r["quantized_bytes"] + float_bytes_outside(bench.model, bench.weights)) / MIB
    return r


def sfmp_at_budget(bench: Bench, config: QuantConfig, budget: Budget, levels: int | None = None) -> dict:
    """SFMP under ``config`` with the code-bit target solved for a memory ``budget`` (``budget.solve``
    on the bench's shared salience): a ``Bench.run`` record with the target and the checkpoint size."""
    sal, sal_s = bench.salience(config.salience)
    weights = bench.weights
    other = float_bytes_outside(bench.model, weights)
    bpw = target_bpw(budget, sum(w.numel() for w in weights.values()), other)
    what = "--bpw" if budget.bpw is not None else f"--size-mb {budget.size_mb:g}"
    bits, plan = solve(plan_maker(weights, sal, config, bench.moments, levels), bpw, what)
    lv = plan.config.levels
    r = bench.run(plan, {"method": "sfmp", "label": f"SFMP {lv}-level {config.salience} {budget.describe()}",
                         "quantizer": config.quantizer, "salience": config.salience, "levels": lv,
                         "target": budget.describe(), "target_bpw": bpw, "code_bits_target": bits,
                         "alloc_s": plan.timings["reorder_s"] + plan.timings["allocate_s"], "salience_s": sal_s})
    r["size_mib"] = (r["quantized_bytes"] + other) / MIB
    return r


def method_rows(bench: Bench, configs: Sequence[QuantConfig], compare: Sequence[str] = (),
                budgets: Sequence[Budget] = (), levels: int | None = None) -> list[dict]:
    """SFMP at each config's code bits, then (with ``configs[0]``'s options) at each memory budget,
    each followed by the asked baselines: "layerwise" at the BPW that SFMP run measured, "uniform" at
    the integer widths around its code bits (each width once)."""
    runs = [(cfg, lambda cfg=cfg: sfmp_at_code_bits(bench, cfg)) for cfg in configs if not budgets]
    runs += [(configs[0], lambda b=b: sfmp_at_budget(bench, configs[0], b, levels)) for b in budgets]
    rows, done_uniform = [], set()
    other = float_bytes_outside(bench.model, bench.weights)  # what a checkpoint stores besides the linears
    size = lambda rec: {**rec, "size_mib": (rec["quantized_bytes"] + other) / MIB}  # noqa: E731
    for cfg, run in runs:
        r = run()
        r["series"] = f"SFMP {r['levels']}-level ({cfg.salience})"
        rows.append(r)
        if "layerwise" in compare:
            lw = bench.layerwise(r["bpw"], salience=cfg.salience, quantizer=cfg.quantizer)
            lw["series"] = f"layer-wise ({cfg.salience})"
            rows.append(size(lw))
        if "uniform" in compare:
            code_bits = r["code_bits_target"]
            for w in sorted({math.floor(code_bits), math.ceil(code_bits)}):
                if w in done_uniform or not (1 <= w <= 8):
                    continue
                done_uniform.add(w)
                u = bench.uniform(w, cfg.quantizer)
                u["series"] = "uniform"
                rows.append(size(u))
    return rows


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a directory written by ``save_quantized``."""
    return (Path(path) / "sfmp.json").is_file()


def load_checkpoint(path: str):
    """``(model, tokenizer)`` of a checkpoint directory: ``load_quantized`` and the tokenizer saved
    beside it (a clear ValueError when there is none). Eval mode."""
    from transformers import AutoTokenizer
    from ..checkpoint import load_quantized
    model = load_quantized(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} has no tokenizer ({str(e).splitlines()[0]})") from None
    return model.eval(), tok


def evaluate(model: str, configs: Sequence[QuantConfig] = (), compare: Sequence[str] = (), *,
             reference: str | None = None, text_path: str | None = None, n_calibration: int = 16,
             seq_len: int = 512, n_eval_tokens: int = 8192, context: int = 512, group_size: int = 128,
             block_rows: int = 512, verbose: bool = True, budgets: Sequence[Budget] = (),
             levels: int | None = None) -> tuple[list[dict], float | None]:
    """The rows of ``sfmp eval`` and the fp32 PPL (None when no float model is given).

    model: a checkpoint directory (``is_checkpoint``), or a name for ``load_named`` (the fp32 row
    first then). configs: SFMP code-bit targets, each followed by the ``compare`` baselines
    ("uniform", "layerwise"); with a checkpoint they need ``reference``, its float model, which
    also gives the checkpoint's KL. budgets: memory budgets to meet instead of code-bit targets
    (``configs[0]`` then gives the other options; ``levels`` 3 lets the widths follow the solved
    bits). Data: ``text_halves(text_path)``, or the Wikipedia split.
    """
    from .models import load_named
    from .text import calibration_batches, eval_tokens, text_halves
    cal_text, ev_text = text_halves(text_path)

    def data(tok, calibrate: bool = True):
        cal = calibration_batches(tok, n_calibration, seq_len, text=cal_text) if calibrate else []
        return cal, eval_tokens(tok, n_eval_tokens, text=ev_text)

    if is_checkpoint(model):
        qmodel, tok = load_checkpoint(model)
        ref = load_named(reference)[0] if reference else None
        bench = Bench(ref if ref is not None else qmodel, tok, *data(tok, bool(configs or compare or budgets)), context,
                      group_size, block_rows, verbose=False)
        if ref is not None:
            bench.prepare()
        rows = checkpoint_rows(qmodel, bench, Path(model).name)
        if ref is None and (configs or compare or budgets):
            raise ValueError("comparing methods needs the float model: pass --reference MODEL")
    else:
        fp32_model, tok = load_named(model)
        bench = Bench(fp32_model, tok, *data(tok), context, group_size, block_rows, verbose=verbose).prepare()
        rows = [fp32_row(bench)]
    if configs and bench.calibration:
        rows += method_rows(bench, configs, compare, budgets, levels)
    return rows, bench.fp32.get("ppl")
