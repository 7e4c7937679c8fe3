"""``sfmp demo``: a model quantized through ``torch.compile(backend=sfmp_backend(...))``, side by side with fp32.

Prints the model and data sizes, a greedy continuation of a prompt from both models, and a table of
held-out perplexity, output SQNR, bits and sizes.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Callable

import torch

from ..backend import sfmp_backend
from ..plan import plan as make_plan
from .metrics import greedy_continuation, score
from .models import load_named
from .report import demo_table, size_summary
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


def run_demo(model_name: str = "smollm2", bits: float = 3.0, *, text_path: str | None = None, n_calibration: int = 8,
             seq_len: int = 256, n_eval_tokens: int = 2048, context: int = 512, group_size: int = 64,
             block_rows: int = 512, inner: str = "inductor", prompt: str = "The capital of France is",
             new_tokens: int = 24, out: Callable[[str], None] = print) -> None:
    """Quantize ``model_name`` (a ``load_named`` name) to ``bits`` average code bits through the
    compile backend and report it against its fp32 copy through ``out``, line by line.

    Calibration: the first half of ``text_path``, or a few Wikipedia articles (activation salience
    needs forward passes only); held-out tokens: the second half, or the last articles.
    """
    t_start = time.perf_counter()
    model, tok = load_named(model_name)
    ref = copy.deepcopy(model)
    cal_text, ev_text = text_halves(text_path)
    if cal_text is None:
        cal_text = "\n\n".join(t for _, t in wiki_split(8)[0])
    cal = calibration_batches(tok, n_calibration, seq_len, text=cal_text)
    ids = eval_tokens(tok, n_eval_tokens, text=ev_text)
    out(f"model {model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; calibration "
        f"{len(cal)}x{seq_len} tokens, held-out {ids.shape[1]} tokens")
    t0 = time.perf_counter()
    # A whole-model plan (activation salience from the calibration windows, one global allocation):
    # the backend then quantizes each graph's linears from it, whatever shapes Dynamo sees.
    plan = make_plan(model, bits, calibration=cal, salience="activation", group_size=group_size, block_rows=block_rows)
    backend = sfmp_backend(plan=plan, model=model, inner=inner)
    # In-place compile (nn.Module.compile), so generate() -- which calls the module itself --
    # runs the compiled, quantized graphs too (torch.compile(model).generate would not).
    model.compile(backend=backend)
    how = f"torch.compile(model, backend=sfmp_backend(plan=plan(model, bits={bits:g})), inner={inner})"
    # One pass over the held-out windows serves PPL of both models and the output SQNR; the first
    # call of the compiled model quantizes (backend) and compiles.
    scores = score(model, ids, context, reference=ref)
    t_q = time.perf_counter() - t0
    cont_f = greedy_continuation(ref, tok, prompt, new_tokens)
    cont_q = greedy_continuation(model, tok, prompt, new_tokens)
    out(f"\nquantized via {how}: {t_q:.1f} s for plan + quantize + compile + the scoring pass")
    out(f"\nprompt: {prompt!r}")
    out(f"  fp32      : {cont_f!r}")
    out(f"  sfmp {bits:g}-bit: {cont_q!r}")
    out("")
    out(demo_table(scores, size_summary(ref, backend=backend), bits))
    out(f"\ndemo done in {time.perf_counter() - t_start:.0f} s")
