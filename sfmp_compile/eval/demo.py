"""``sfmp demo``: what SFMP is for — a fractional memory budget spent where it matters.

SmolLM2 is quantized twice into (about) the same memory: SFMP at a BPW budget (a global salience
ranking gives each block 2, 3 or 4 bits, so the average lands between integers), and uniform
precision at the integer width that budget buys (every block the same width, no permutations).
Printed side by side with fp32: held-out perplexity and KL, BPW and sizes, code bits per layer
type (where SFMP put its bits), a greedy continuation of a prompt from each model, and the decode
time per token of the SFMP model compiled through ``sfmp_backend()`` against fp32.
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Callable

import torch

from ..backend import sfmp_backend
from ..budget import Budget, plan_for_budget, stored_bytes
from ..config import QuantConfig
from ..progress import bar
from ..quantize import quantization_report, quantize
from .baselines import uniform_plan
from .decode import StaticDecoder
from .metrics import greedy_continuation, score, window_logits
from .models import load_named
from .report import demo_table, report_bits_by_type
from .text import calibration_batches, eval_tokens, text_halves, wiki_split


def set_threads(n: int | None, out: Callable[[str], None] = print) -> None:
    """Torch CPU threads: ``n`` if given; else the default, or 1 when other processes already keep
    every core busy (oversubscribed OpenMP threads spin instead of working; benchmarks/RESULTS.md)."""
    if n:
        torch.set_num_threads(n)
        return
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores:
        torch.set_num_threads(1)
        out(f"note: load average {load:.1f} on {cores} cores: using 1 torch thread (--threads to override)")


def decode_ms(model, ids: torch.Tensor, backend, steps: int = 16) -> float:
    """Median ms per single-token decode step of ``model`` in a ``StaticDecoder`` under ``backend``,
    after a warm-up that compiles (the prompt is fed one token at a time: a single graph, M = 1)."""
    dec = StaticDecoder(model, ids.shape[1] + steps + 1, backend=backend)
    with torch.inference_mode():
        for i in range(ids.shape[1]):
            logits = dec(ids[:, i:i + 1])
        times = []
        nxt = logits.argmax(-1, keepdim=True)
        for _ in range(steps):
            t = time.perf_counter()
            nxt = dec(nxt).argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def _column(model, ref_logits, ids, context) -> dict:
    rep = quantization_report(model)
    s = score(model, ids, context, reference=ref_logits)
    return {"ppl": s["ppl"], "kl": s["kl"], "weight_bits": rep["weight_bits"], "bpw": rep["bpw"],
            "linear_bytes": rep["quantized_bytes"], "model_bytes": stored_bytes(model),
            "by_type": report_bits_by_type(rep)}


def run_demo(model_name: str = "smollm2", bpw: float = 3.5, *, salience: str = "fisher", quantizer: str = "gptq",
             text_path: str | None = None, n_calibration: int = 8, seq_len: int = 256, n_eval_tokens: int = 2048,
             context: int = 512, group_size: int = 64, block_rows: int = 512, prompt: str = "The capital of France is",
             new_tokens: int = 24, decode: bool = True, out: Callable[[str], None] = print) -> dict:
    """Quantize ``model_name`` (a ``load_named`` name) with SFMP at ``bpw`` bits per weight and
    uniformly at the integer width that budget buys (same group size and quantizer), and report
    both against fp32 through ``out``. Returns the table's columns by name.

    Calibration: the first half of ``text_path``, or a few Wikipedia articles; held-out tokens:
    the second half, or the last articles. decode: also time compiled decoding (a compile each).
    """
    t_start = time.perf_counter()
    model, tok = load_named(model_name)
    cal_text, ev_text = text_halves(text_path)
    if cal_text is None:
        cal_text = "\n\n".join(t for _, t in wiki_split(8)[0])
    cal = calibration_batches(tok, n_calibration, seq_len, text=cal_text)
    ids = eval_tokens(tok, n_eval_tokens, text=ev_text)
    out(f"model {model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; calibration "
        f"{len(cal)}x{seq_len} tokens, held-out {ids.shape[1]} tokens; {salience} salience, {quantizer} quantizer, "
        f"group {group_size}")
    ref_logits = window_logits(model, ids, context)
    cols: dict[str, dict] = {"fp32": {"ppl": score(ref_logits, ids, context)["ppl"], "kl": 0.0, "weight_bits": 32.0,
                                      "bpw": 32.0, "model_bytes": stored_bytes(model)}}

    t0 = time.perf_counter()
    sfmp = copy.deepcopy(model)
    plan, info = plan_for_budget(sfmp, Budget(bpw=bpw), calibration=cal, salience=salience, levels=3,
                                 group_size=group_size, block_rows=block_rows, quantizer=quantizer)
    quantize(sfmp, plan=plan, calibration=cal)
    sfmp_name = f"SFMP BPW {bpw:g}"
    cols[sfmp_name] = _column(sfmp, ref_logits, ids, context)
    out(f"{sfmp_name}: code bits {info['code_bits']:.3f} solved for the budget, plan + quantize "
        f"{time.perf_counter() - t0:.0f} s")

    # Uniform at the same memory: the integer width whose stored size is nearest the budget.
    t0 = time.perf_counter()
    width = max(2, min(8, math.floor(info["code_bits"] + 0.5)))
    uni = copy.deepcopy(model)
    cfg = QuantConfig(bits=float(width), group_size=group_size, block_rows=block_rows, quantizer=quantizer)
    shapes = {n: tuple(lp.shape) for n, lp in plan.layers.items()}
    quantize(uni, plan=uniform_plan(shapes, width, cfg, {n: lp.col_weight for n, lp in plan.layers.items()
                                                         if lp.col_weight is not None}), calibration=cal)
    uni_name = f"uniform {width}-bit"
    cols[uni_name] = _column(uni, ref_logits, ids, context)
    out(f"{uni_name}: quantize {time.perf_counter() - t0:.0f} s")

    conts = {name: greedy_continuation(m, tok, prompt, new_tokens)
             for name, m in bar([("fp32", model), (sfmp_name, sfmp), (uni_name, uni)], desc="continuations",
                                unit="model")}
    # Quality first, so it is on screen while the two compiles of the decode timing run.
    out("")
    out(demo_table(list(cols.items())))
    out(f"\nprompt: {prompt!r}")
    for name, text in conts.items():
        out(f"  {name:<14}: {text!r}")
    if decode:
        prompt_ids = tok(prompt, return_tensors="pt")["input_ids"]
        with bar(total=2, desc="compile + time decode", unit="model") as b:
            torch._dynamo.reset()
            cols[sfmp_name]["decode_ms"] = decode_ms(sfmp, prompt_ids, sfmp_backend())
            b.update(1)
            torch._dynamo.reset()
            cols["fp32"]["decode_ms"] = decode_ms(model, prompt_ids, "inductor")
            b.update(1)
        out(f"\ndecode ms/token: {sfmp_name} {cols[sfmp_name]['decode_ms']:.1f} (torch.compile with sfmp_backend(); on "
            f"CPU the true-bit kernel) vs fp32 {cols['fp32']['decode_ms']:.1f} (Inductor); one token at a time "
            f"through a static KV cache (decode.StaticDecoder), {torch.get_num_threads()} thread(s)")
    out(f"\ndemo done in {time.perf_counter() - t_start:.0f} s")
    return cols
