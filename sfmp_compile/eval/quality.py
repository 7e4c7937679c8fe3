"""The rows of ``sfmp eval``'s quality table: fp32, a saved checkpoint, SFMP at code-bit targets, baselines.

Every row is a dict with at least series (the plot line it belongs to), label, bpw, weight_bits,
ppl and kl (None when there is no float reference); method rows are ``Bench.run`` records.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from torch import nn

from ..config import QuantConfig
from ..plan import default_regroup, make_plan
from ..quantize import quantization_report
from .experiments import Bench, dense_copy
from .metrics import score

COLUMNS = [("label", "method", ""), ("bpw", "BPW", ".3f"), ("weight_bits", "code bits", ".3f"), ("ppl", "PPL", ".3f"),
           ("kl", "KL", ".4f"), ("alloc_s", "alloc s", ".2f"), ("quant_s", "quant s", ".1f")]


def fp32_row(bench: Bench) -> dict:
    """The float reference's row (``bench`` prepared)."""
    return {"series": "fp32", "label": "fp32", "bpw": 32.0, "weight_bits": 32.0, "ppl": bench.fp32["ppl"], "kl": 0.0}


def checkpoint_rows(qmodel: nn.Module, bench: Bench, name: str) -> list[dict]:
    """Rows of a loaded quantized model: [fp32, checkpoint] with KL when ``bench`` is prepared on its
    float reference, else [checkpoint] with its PPL only. ``qmodel`` is densified in place then."""
    rep = quantization_report(qmodel)
    prepared = bool(bench.ref_logits)
    s = bench.score(dense_copy(qmodel)) if prepared else score(qmodel, bench.eval_ids, bench.context)
    row = {"series": "checkpoint", "label": f"checkpoint {name}", "bpw": rep["bpw"], "weight_bits": rep["weight_bits"],
           "ppl": s["ppl"], "kl": s["kl"], "quantized_bytes": rep["quantized_bytes"]}
    return [fp32_row(bench), row] if prepared else [row]


def sfmp_at_code_bits(bench: Bench, config: QuantConfig) -> dict:
    """SFMP under ``config`` as given (its bits are the code-bit target, not a BPW budget): a ``Bench.run`` record."""
    sal, sal_s = bench.salience(config.salience)
    plan = make_plan(bench.weights, sal, config, bench.moments, regroup=default_regroup(config))
    return bench.run(plan, {"method": "sfmp", "label": f"SFMP {config.levels}-level {config.salience} w{config.bits:g}",
                            "quantizer": config.quantizer, "salience": config.salience, "levels": config.levels,
                            "code_bits_target": config.bits,
                            "alloc_s": plan.timings["reorder_s"] + plan.timings["allocate_s"], "salience_s": sal_s})


def method_rows(bench: Bench, configs: Sequence[QuantConfig], compare: Sequence[str] = ()) -> list[dict]:
    """SFMP at each config's code bits, each followed by the asked baselines: "layerwise" at the BPW
    that SFMP run measured, "uniform" at the integer widths around its code bits (each width once)."""
    rows, done_uniform = [], set()
    for cfg in configs:
        r = sfmp_at_code_bits(bench, cfg)
        r["series"] = f"SFMP {cfg.levels}-level ({cfg.salience})"
        rows.append(r)
        if "layerwise" in compare:
            lw = bench.layerwise(r["bpw"], salience=cfg.salience, quantizer=cfg.quantizer)
            lw["series"] = f"layer-wise ({cfg.salience})"
            rows.append(lw)
        if "uniform" in compare:
            for w in sorted({math.floor(cfg.bits), math.ceil(cfg.bits)}):
                if w in done_uniform or not (1 <= w <= 8):
                    continue
                done_uniform.add(w)
                u = bench.uniform(w, cfg.quantizer)
                u["series"] = "uniform"
                rows.append(u)
    return rows


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a directory written by ``save_quantized``."""
    return (Path(path) / "sfmp.json").is_file()


def evaluate(model: str, configs: Sequence[QuantConfig] = (), compare: Sequence[str] = (), *,
             reference: str | None = None, text_path: str | None = None, n_calibration: int = 16,
             seq_len: int = 512, n_eval_tokens: int = 8192, context: int = 512, group_size: int = 128,
             block_rows: int = 512, verbose: bool = True) -> tuple[list[dict], float | None]:
    """The rows of ``sfmp eval`` and the fp32 PPL (None when no float model is given).

    model: a checkpoint directory (``is_checkpoint``), or a name for ``load_named`` (the fp32 row
    first then). configs: SFMP code-bit targets, each followed by the ``compare`` baselines
    ("uniform", "layerwise"); with a checkpoint they need ``reference``, its float model, which
    also gives the checkpoint's KL. Data: ``text_halves(text_path)``, or the Wikipedia split.
    """
    from transformers import AutoTokenizer
    from ..checkpoint import load_quantized
    from .models import load_named
    from .text import calibration_batches, eval_tokens, text_halves
    cal_text, ev_text = text_halves(text_path)

    def data(tok, calibrate: bool = True):
        cal = calibration_batches(tok, n_calibration, seq_len, text=cal_text) if calibrate else []
        return cal, eval_tokens(tok, n_eval_tokens, text=ev_text)

    if is_checkpoint(model):
        qmodel = load_quantized(model)
        try:
            tok = AutoTokenizer.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise ValueError(f"{model} has no tokenizer ({str(e).splitlines()[0]})") from None
        ref = load_named(reference)[0] if reference else None
        bench = Bench(ref if ref is not None else qmodel, tok, *data(tok, bool(configs or compare)), context,
                      group_size, block_rows, verbose=False)
        if ref is not None:
            bench.prepare()
        rows = checkpoint_rows(qmodel, bench, Path(model).name)
        if ref is None and (configs or compare):
            raise ValueError("comparing methods needs the float model: pass --reference MODEL")
    else:
        fp32_model, tok = load_named(model)
        bench = Bench(fp32_model, tok, *data(tok), context, group_size, block_rows, verbose=verbose).prepare()
        rows = [fp32_row(bench)]
    if configs and bench.calibration:
        rows += method_rows(bench, configs, compare)
    return rows, bench.fp32.get("ppl")
