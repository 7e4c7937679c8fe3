"""The ``sfmp`` command line: quantize, eval, inspect, bench, demo.

  sfmp quantize MODEL --bits 2.75 [--levels 3 | --bit-choices 2,3,4] [--salience fisher]
                [--quantizer gptq] [--group-size 128] [--block-rows 512] --out DIR
  sfmp eval MODEL_OR_DIR [--compare uniform,layerwise] [--bits 2.75,3.25] [--json F] [--plot F.png]
  sfmp inspect DIR [--plot F.png]
  sfmp bench
  sfmp demo

MODEL is "smollm2" (SmolLM2-135M-Instruct, the default real model), "tiny" (a random 2-layer
Llama with a character tokenizer, for tests), or a local transformers model directory. Text comes
from the Wikipedia excerpt in gensim's wheel (calibration from its first articles, evaluation from
its last) unless ``--text FILE`` is given (first half calibrates, second half evaluates).
User errors (missing model or text, bad options, an existing output directory) print one line on
stderr and exit with status 2; no tracebacks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from .config import MAX_BITS, MIN_BITS, QUANTIZERS, SALIENCE_KINDS, QuantConfig, SFMPConfigError

EXIT_USAGE = 2
TINY = "tiny"


class CLIError(ValueError):
    """A user error the CLI reports as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        print(f"{self.prog}: error: {message} (try: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------

def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise CLIError(f"{what} is empty")
    return vals


def _bit_choices(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise CLIError(f"--bit-choices must be three integers such as 2,3,4, got {text!r}") from None


def _check_bits(b: float) -> None:
    if not (MIN_BITS < b <= MAX_BITS) or not math.isfinite(b):
        raise CLIError(f"--bits {b:g} is out of range: the average code width must be in ({MIN_BITS}, {MAX_BITS}]")


def default_choices(bits: float) -> tuple[int, int, int]:
    """The 3-level widths for a target: the paper's (2, 3, 4) when 2 <= bits <= 4, else the three
    integers around it (e.g. 1.8 -> (1, 2, 3), 4.5 -> (3, 4, 5)... rounded, within 1..8)."""
    if 2 <= bits <= 4:
        return (2, 3, 4)
    c = min(max(round(bits), MIN_BITS + 1), MAX_BITS - 1)
    return (c - 1, c, c + 1)


def _config(args, bits: float) -> QuantConfig:
    """Validate every quantization option up front, before any model is loaded."""
    _check_bits(bits)
    choices = _bit_choices(getattr(args, "bit_choices", None))
    levels = getattr(args, "levels", None)
    if choices is not None and levels == 2:
        raise CLIError("--levels 2 and --bit-choices contradict each other (bit choices mean 3 levels)")
    if choices is None and levels == 3:
        choices = default_choices(bits)
    return QuantConfig(bits=bits, bit_choices=choices, block_rows=args.block_rows, group_size=args.group_size,
                       salience=args.salience, quantizer=args.quantizer)


def _load(model_arg: str):
    """(model, tokenizer) for "smollm2", "tiny" or a local directory; FileNotFoundError if absent."""
    if model_arg == TINY:
        from .eval.models import tiny_llama, tiny_tokenizer
        return tiny_llama(), tiny_tokenizer()
    from .eval.models import load_model
    if model_arg.lower() != "smollm2" and not Path(model_arg).expanduser().exists():
        raise FileNotFoundError(f"model not found: {model_arg!r} is neither 'smollm2', 'tiny' nor an existing directory")
    return load_model(model_arg)


def _texts(args):
    """(calibration text or None, eval text or None): None means the Wikipedia split."""
    if not getattr(args, "text", None):
        return None, None
    from .eval.text import load_text
    t = load_text(args.text)
    half = len(t) // 2
    return t[:half], t[half:]


def _calibration(tokenizer, args):
    from .eval.text import calibration_batches
    cal_text, _ = _texts(args)
    return calibration_batches(tokenizer, args.calib_sequences, args.seq_len, text=cal_text)


def _eval_ids(tokenizer, args):
    from .eval.text import eval_tokens
    _, ev_text = _texts(args)
    return eval_tokens(tokenizer, args.eval_tokens, text=ev_text)


def _check_out(path: str, overwrite: bool) -> None:
    p = Path(path)
    if p.exists() and not overwrite and (not p.is_dir() or any(p.iterdir())):
        raise CLIError(f"output directory {path} already exists; choose another --out or pass --overwrite")


def _check_writable_file(path: str | None, what: str) -> None:
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise CLIError(f"{what}: directory {parent} does not exist")


class _Ticking(list):
    """A calibration list that ticks a progress bar each time one of its items is consumed."""

    def __init__(self, items, bar):
        super().__init__(items)
        self.bar = bar

    def __iter__(self):
        for x in super().__iter__():
            yield x
            self.bar.update(1)


class _LayerProgress:
    """Ticks a bar once per quantized layer by wrapping quantize.quantize_weight for the duration."""

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm
        import importlib
        qmod = importlib.import_module("sfmp_compile.quantize")  # the module, not the function
        self.qmod, self.bar = qmod, tqdm(total=total, desc=desc, unit="layer", file=sys.stderr)
        self.orig = qmod.quantize_weight

    def __enter__(self):
        def wrapped(*a, **k):
            out = self.orig(*a, **k)
            self.bar.update(1)
            return out
        self.qmod.quantize_weight = wrapped
        return self

    def __exit__(self, *exc):
        self.qmod.quantize_weight = self.orig
        self.bar.close()


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """Plain-text table; cols: (key, header, format)."""
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


def _by_type(report: dict) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for n, lr in report["layers"].items():
        t = acc.setdefault(n.rsplit(".", 1)[-1], [0.0, 0.0])
        k = lr["shape"][0] * lr["shape"][1]
        t[0] += lr["weight_bits"] * k
        t[1] += k
    return {k: v[0] / v[1] for k, v in acc.items()}


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------

def cmd_quantize(args) -> int:
    config = _config(args, args.bits)
    _check_out(args.out, args.overwrite)
    from tqdm.auto import tqdm
    from .checkpoint import save_quantized
    from .plan import plan as make_plan
    from .quantize import quantization_report, quantize
    t0 = time.perf_counter()
    model, tok = _load(args.model)
    # Calibration serves the salience, the clip search's column weights and GPTQ's Hessians.
    cal = _calibration(tok, args)
    with tqdm(desc=f"calibration passes ({config.salience} salience)", unit="seq", file=sys.stderr) as bar:
        plan = make_plan(model, config.bits, calibration=_Ticking(cal, bar), salience=config.salience,
                         bit_choices=config.bit_choices, block_rows=config.block_rows, group_size=config.group_size,
                         quantizer=config.quantizer)
    n_layers = len(plan.layers)
    with _LayerProgress(n_layers, f"quantize ({config.quantizer})"):
        quantize(model, plan=plan, calibration=cal)
    rep = quantization_report(model)
    save_quantized(model, args.out, tokenizer=tok, overwrite=args.overwrite)
    print(f"quantized {n_layers} layers of {args.model}: weight_bits {rep['weight_bits']:.3f}, BPW {rep['bpw']:.3f}, "
          f"{rep['quantized_bytes'] / 2**20:.2f} MiB packed (fp32 {rep['float_bytes_fp32'] / 2**20:.2f} MiB) "
          f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _is_checkpoint(path: str) -> bool:
    return (Path(path) / "sfmp.json").is_file()


def _plot_ppl(rows: list[dict], path: str, fp32_ppl: float | None, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["series"], []).append(r)
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["bpw"])
        ax.plot([r["bpw"] for r in rs], [r["ppl"] for r in rs], "o-", label=name)
    if fp32_ppl:
        ax.axhline(fp32_ppl, color="k", ls="--", lw=1, label=f"fp32 ({fp32_ppl:.2f})")
    ax.set_xlabel("bits per weight (everything stored)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_eval(args) -> int:
    compare = [c.strip() for c in (args.compare or "").split(",") if c.strip()]
    bad = [c for c in compare if c not in ("uniform", "layerwise")]
    if bad:
        raise CLIError(f"--compare takes uniform and/or layerwise, got {','.join(bad)}")
    bits_list = _floats(args.bits, "--bits") if args.bits else []
    for b in bits_list:
        _config(args, b)
    _check_writable_file(args.json, "--json")
    _check_writable_file(args.plot, "--plot")
    from .eval.experiments import Bench
    rows = []
    if _is_checkpoint(args.model):
        from transformers import AutoTokenizer
        from .checkpoint import load_quantized
        from .quantize import quantization_report
        from .eval.experiments import dense_copy
        qmodel = load_quantized(args.model)
        try:
            tok = AutoTokenizer.from_pretrained(args.model)
        except (OSError, ValueError) as e:
            raise CLIError(f"{args.model} has no tokenizer ({str(e).splitlines()[0]})") from None
        rep = quantization_report(qmodel)
        ref = None
        if args.reference:
            ref, _ = _load(args.reference)
        bench = Bench(ref if ref is not None else qmodel, tok, _calibration(tok, args) if (bits_list or compare) else [],
                      _eval_ids(tok, args), args.context, args.group_size, args.block_rows, verbose=False)
        if ref is not None:
            bench.prepare()
        s = bench.score(dense_copy(qmodel)) if ref is not None else {"ppl": _ppl(qmodel, bench), "kl": None}
        rows.append({"series": "checkpoint", "label": f"checkpoint {Path(args.model).name}", "bpw": rep["bpw"],
                     "weight_bits": rep["weight_bits"], "ppl": s["ppl"], "kl": s["kl"],
                     "quantized_bytes": rep["quantized_bytes"]})
        if ref is None and (bits_list or compare):
            raise CLIError("comparing methods needs the float model: pass --reference MODEL")
        fp32 = bench.fp32.get("ppl")
        if ref is not None:
            rows.insert(0, {"series": "fp32", "label": "fp32", "bpw": 32.0, "weight_bits": 32.0, "ppl": fp32, "kl": 0.0})
    else:
        from .eval.experiments import load_bench
        model, tok = _load(args.model)
        cal = _calibration(tok, args)
        ids = _eval_ids(tok, args)
        bench = Bench(model, tok, cal, ids, args.context, args.group_size, args.block_rows, verbose=not args.quiet).prepare()
        fp32 = bench.fp32["ppl"]
        rows.append({"series": "fp32", "label": "fp32", "bpw": 32.0, "weight_bits": 32.0, "ppl": fp32, "kl": 0.0})
        if not bits_list:
            bits_list = [3.0]
    if bits_list and bench.calibration:
        levels = args.levels or (3 if args.bit_choices else 2)
        done_uniform = set()
        for b in bits_list:
            # SFMP at code bits b; baselines at the same measured BPW (layer-wise) or integer widths.
            r = _sfmp_at_code_bits(bench, b, args, levels)
            r["series"] = f"SFMP {levels}-level ({args.salience})"
            rows.append(r)
            if "layerwise" in compare:
                lw = bench.layerwise(r["bpw"], salience=args.salience, quantizer=args.quantizer)
                lw["series"] = f"layer-wise ({args.salience})"
                rows.append(lw)
            if "uniform" in compare:
                for w in sorted({math.floor(b), math.ceil(b)}):
                    if w in done_uniform or not (1 <= w <= 8):
                        continue
                    done_uniform.add(w)
                    u = bench.uniform(w, args.quantizer)
                    u["series"] = "uniform"
                    rows.append(u)
    cols = [("label", "method", ""), ("bpw", "BPW", ".3f"), ("weight_bits", "code bits", ".3f"), ("ppl", "PPL", ".3f"),
            ("kl", "KL", ".4f"), ("alloc_s", "alloc s", ".2f"), ("quant_s", "quant s", ".1f")]
    print(_table(rows, cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rows": rows, "fp32_ppl": fp32}, f, indent=1, default=str)
    if args.plot:
        _plot_ppl([r for r in rows if r["series"] != "fp32"], args.plot, fp32, f"{args.model}: PPL vs BPW")
    return 0


def _ppl(model, bench) -> float:
    from .eval.metrics import perplexity
    return perplexity(model, bench.eval_ids, bench.context)


def _sfmp_at_code_bits(bench, bits: float, args, levels: int) -> dict:
    from .plan import default_regroup, make_plan
    sal, sal_s = bench.salience(args.salience)
    cfg = _config(args, bits)
    if levels == 3 and cfg.bit_choices is None:
        args = argparse.Namespace(**{**vars(args), "levels": 3})
        cfg = _config(args, bits)
    plan = make_plan(bench.weights, sal, cfg, bench.moments, regroup=default_regroup(cfg))
    return bench.run(plan, {"method": "sfmp", "label": f"SFMP {levels}-level {args.salience} w{bits:g}",
                            "quantizer": args.quantizer, "salience": args.salience, "levels": levels,
                            "code_bits_target": bits, "alloc_s": plan.timings["reorder_s"] + plan.timings["allocate_s"],
                            "salience_s": sal_s})


def _bitmap_figure(model, path: str) -> None:
    """One subplot per layer type: every layer's block bit map stacked top to bottom (layer order)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from .linear import SFMPLinear
    per_type: dict[str, list] = {}
    for name, m in model.named_modules():
        if isinstance(m, SFMPLinear):
            per_type.setdefault(name.rsplit(".", 1)[-1], []).append(m.bits.to(torch.int64).cpu())
    types = list(per_type)
    fig, axes = plt.subplots(1, len(types), figsize=(2.2 * len(types) + 1.5, 6), squeeze=False)
    cmap = ListedColormap(plt.get_cmap("viridis")(torch.linspace(0, 1, 8).tolist()))
    norm = BoundaryNorm([b + 0.5 for b in range(0, 9)], cmap.N)
    im = None
    for ax, t in zip(axes[0], types):
        maps = per_type[t]
        G = max(x.shape[1] for x in maps)
        rows = [torch.nn.functional.pad(x, (0, G - x.shape[1]), value=0) for x in maps]
        img = torch.cat(rows).float()
        img[img == 0] = float("nan")
        im = ax.imshow(img.numpy(), aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
        ax.set_title(f"{t}\n{len(maps)} layers", fontsize=9)
        ax.set_xlabel("group (reordered)")
        ax.set_yticks([])
    axes[0][0].set_ylabel("layers top→bottom (row-blocks stacked)")
    fig.colorbar(im, ax=axes[0].tolist(), ticks=range(1, 9), label="bits")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_inspect(args) -> int:
    _check_writable_file(args.plot, "--plot")
    from .checkpoint import load_quantized
    from .quantize import quantization_report
    model = load_quantized(args.dir)
    rep = quantization_report(model)
    rows = []
    for n, lr in rep["layers"].items():
        hist = " ".join(f"{b}b:{f * 100:.0f}%" for b, f in sorted(lr["bits_histogram"].items()))
        rows.append({"layer": n, "shape": "x".join(map(str, lr["shape"])), "bits": lr["weight_bits"], "bpw": lr["bpw"],
                     "kib": lr["bytes"] / 1024, "hist": hist,
                     "perm": ("r" if lr["row_reordered"] else "-") + ("c" if lr["col_reordered"] else "-")})
    print(_table(rows, [("layer", "layer", ""), ("shape", "shape", ""), ("bits", "code bits", ".3f"),
                        ("bpw", "BPW", ".3f"), ("kib", "KiB", ".1f"), ("perm", "perm", ""), ("hist", "widths", "")]))
    print()
    by = _by_type(rep)
    print("by layer type: " + ", ".join(f"{k} {v:.3f}" for k, v in by.items()))
    print(f"total: {len(rows)} layers, weight_bits {rep['weight_bits']:.4f}, BPW {rep['bpw']:.4f}, "
          f"{rep['quantized_bytes'] / 2**20:.2f} MiB packed + {rep['other_bytes'] / 2**20:.2f} MiB other")
    plot = args.plot or str(Path(args.dir) / "bitmaps.png")
    try:
        _bitmap_figure(model, plot)
    except OSError as e:
        raise CLIError(f"cannot write {plot}: {e}") from None
    print(f"bit-map heatmap: {plot}")
    return 0


def cmd_bench(args) -> int:
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    scripts = [root / "kernels.py", root / "compile_time.py"]
    found = [s for s in scripts if s.is_file()]
    if not found:
        raise CLIError(f"no benchmark scripts found under {root} (expected kernels.py, compile_time.py)")
    rc = 0
    for s in scripts:
        if not s.is_file():
            print(f"skipping {s.name}: not present", file=sys.stderr)
            continue
        print(f"== {s.name}", flush=True)
        r = subprocess.run([sys.executable, str(s)] + list(args.extra or []), cwd=str(root.parent))
        rc = rc or r.returncode
    return rc


def _threads(n: int | None) -> None:
    """Torch CPU threads: ``n`` if given; else the default, or 1 when other processes already keep
    every core busy (oversubscribed OpenMP threads spin: a SmolLM2 forward measured 4-5x slower)."""
    import torch
    if n:
        torch.set_num_threads(n)
        return
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores:
        torch.set_num_threads(1)
        print(f"note: load average {load:.1f} on {cores} cores: using 1 torch thread (--threads to override)")


def cmd_demo(args) -> int:
    _check_bits(args.bits)
    import copy
    import torch
    _threads(args.threads)
    from .eval.metrics import greedy_continuation
    from .eval.text import wiki_split
    t_start = time.perf_counter()
    model, tok = _load(args.model)
    ref = copy.deepcopy(model)
    cal_text, ev_text = _texts(args)
    if cal_text is None:
        cal_articles, _ = wiki_split(8)
        # A few paragraphs are enough for activation salience (forward only).
        cal_text = "\n\n".join(t for _, t in cal_articles)
    from .eval.text import calibration_batches, eval_tokens
    cal = calibration_batches(tok, args.calib_sequences, args.seq_len, text=cal_text)
    ids = eval_tokens(tok, args.eval_tokens, text=ev_text)
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; calibration "
          f"{len(cal)}x{args.seq_len} tokens, held-out {ids.shape[1]} tokens")
    t0 = time.perf_counter()
    backend = None
    from .plan import plan as make_plan
    # A whole-model plan (activation salience from the calibration windows, one global allocation):
    # the backend then quantizes each graph's linears from it, whatever shapes Dynamo sees.
    plan = make_plan(model, args.bits, calibration=cal, salience="activation", group_size=args.group_size,
                     block_rows=args.block_rows)
    try:
        from .backend import sfmp_backend
        backend = sfmp_backend(plan=plan, model=model, inner=args.inner)
        # In-place compile (nn.Module.compile), so generate() -- which calls the module itself --
        # runs the compiled, quantized graphs too (torch.compile(model).generate would not).
        model.compile(backend=backend)
        how = f"torch.compile(model, backend=sfmp_backend(plan=plan(model, bits={args.bits:g})), inner={args.inner})"
    except ImportError as e:
        from .quantize import quantize
        print(f"note: the sfmp_backend is not importable ({e}); using quantize() + torch.compile instead")
        quantize(model, plan=plan, calibration=cal)
        model.compile()
        how = "quantize() + torch.compile"
    qmodel = model
    # One pass over the held-out windows serves PPL of both models and the output SQNR; the first
    # call of the compiled model quantizes (backend) and compiles.
    ppl_q, ppl_f, sqnr = _demo_scores(ref, qmodel, ids, args.context)
    t_q = time.perf_counter() - t0
    prompt = args.prompt
    cont_f = greedy_continuation(ref, tok, prompt, args.new_tokens)
    cont_q = greedy_continuation(qmodel, tok, prompt, args.new_tokens)
    print(f"\nquantized via {how}: {t_q:.1f} s for plan + quantize + compile + the scoring pass")
    print(f"\nprompt: {prompt!r}")
    print(f"  fp32      : {cont_f!r}")
    print(f"  sfmp {args.bits:g}-bit: {cont_q!r}")
    # Sizes: from the backend's plan and packed cache, or from the eagerly quantized model.
    size = _demo_sizes(backend, model, ref)
    print()
    rows = [{"k": "perplexity (held-out)", "fp32": f"{ppl_f:.3f}", "q": f"{ppl_q:.3f}"},
            {"k": "output SQNR vs fp32 (dB)", "fp32": "-", "q": f"{sqnr:.2f}"},
            {"k": "weight_bits (avg code bits)", "fp32": "32", "q": f"{size['weight_bits']:.3f}"},
            {"k": "BPW (everything stored)", "fp32": "32", "q": f"{size['bpw']:.3f}"},
            {"k": "quantized linears, MiB", "fp32": f"{size['fp32_bytes'] / 2**20:.2f}", "q": f"{size['bytes'] / 2**20:.2f}"},
            {"k": "whole model, MiB", "fp32": f"{size['model_fp32'] / 2**20:.2f}",
             "q": f"{(size['bytes'] + size['other']) / 2**20:.2f}"}]
    rows += [{"k": f"bits {t}", "fp32": "32", "q": f"{v:.3f}"} for t, v in size["by_type"].items()]
    print(_table(rows, [("k", "", ""), ("fp32", "fp32", ""), ("q", f"SFMP {args.bits:g}-bit", "")]))
    print(f"\ndemo done in {time.perf_counter() - t_start:.0f} s")
    return 0


def _demo_scores(ref, qmodel, ids, context: int) -> tuple[float, float, float]:
    """(PPL quantized, PPL fp32, output SQNR dB of the quantized logits vs fp32) in one pass."""
    import torch
    import torch.nn.functional as F
    from .eval.metrics import _db
    nll_q = nll_f = 0.0
    n = 0
    signal = noise = 0.0
    with torch.inference_mode():
        for s in range(0, ids.shape[1] - 1, context):
            w = ids[:, s:s + context]
            if w.shape[1] < 2:
                continue
            lf = ref(input_ids=w, use_cache=False).logits.float()
            lq = qmodel(input_ids=w, use_cache=False).logits.float()
            tgt = w[:, 1:].reshape(-1)
            nll_f += float(F.cross_entropy(lf[:, :-1].reshape(-1, lf.shape[-1]), tgt, reduction="sum"))
            nll_q += float(F.cross_entropy(lq[:, :-1].reshape(-1, lq.shape[-1]), tgt, reduction="sum"))
            n += tgt.numel()
            signal += float(lf.double().pow(2).sum())
            noise += float((lf.double() - lq.double()).pow(2).sum())
    return math.exp(nll_q / n), math.exp(nll_f / n), _db(signal, noise)


def _demo_sizes(backend, model, ref) -> dict:
    import torch
    from .blocks import BlockGrid
    params = {id(p): p for p in ref.parameters()}
    model_fp32 = sum(p.numel() * p.element_size() for p in params.values())
    if backend is not None and getattr(backend, "plan", None) is not None and backend.plan.layers:
        plan = backend.plan
        n, code, acc = 0, 0.0, {}
        for name, lp in plan.layers.items():
            N, K = lp.shape
            c = BlockGrid(N, K, plan.config.block_rows, plan.config.group_size).weight_counts()
            bits = float((lp.bits.to(torch.int64) * c).sum())
            n += N * K
            code += bits
            t = acc.setdefault(name.rsplit(".", 1)[-1], [0.0, 0.0])
            t[0] += bits
            t[1] += N * K
        stored = backend.packed_bytes
        return {"weight_bits": code / n, "bpw": stored * 8 / n, "bytes": stored, "fp32_bytes": 4 * n,
                "other": model_fp32 - 4 * n, "model_fp32": model_fp32, "by_type": {k: v[0] / v[1] for k, v in acc.items()}}
    from .quantize import quantization_report
    rep = quantization_report(model)
    return {"weight_bits": rep["weight_bits"], "bpw": rep["bpw"], "bytes": rep["quantized_bytes"],
            "fp32_bytes": rep["float_bytes_fp32"], "other": rep["other_bytes"], "model_fp32": model_fp32,
            "by_type": _by_type(rep)}


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------

def _common_quant(p, bits_default=None):
    p.add_argument("--levels", type=int, choices=(2, 3), default=None,
                   help="2: floor/ceil of --bits (default); 3: three widths around it (the paper's 2,3,4)")
    p.add_argument("--bit-choices", default=None, help="three widths for the 3-level scheme, e.g. 2,3,4")
    p.add_argument("--salience", choices=SALIENCE_KINDS, default="activation")
    p.add_argument("--quantizer", choices=QUANTIZERS, default="rtn")
    p.add_argument("--group-size", type=int, default=128, help="input columns per block and scale group")
    p.add_argument("--block-rows", type=int, default=512, help="output rows per block")


def _common_data(p, cal=16, seq=512, ev=8192, ctx=512):
    p.add_argument("--text", default=None, help="UTF-8 text file (first half calibrates, second half evaluates)")
    p.add_argument("--calib-sequences", type=int, default=cal)
    p.add_argument("--seq-len", type=int, default=seq)
    p.add_argument("--eval-tokens", type=int, default=ev)
    p.add_argument("--context", type=int, default=ctx)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sfmp", description="Search-free mixed-precision (SFMP) LLM weight quantization")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize a model and save it (load with load_quantized)")
    q.add_argument("model", help="'smollm2', 'tiny' or a local model directory")
    q.add_argument("--bits", type=float, required=True, help="average code bits, e.g. 2.75")
    _common_quant(q)
    _common_data(q)
    q.add_argument("--out", required=True, help="output directory (must not exist)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity/KL of SFMP (and baselines) or of a saved checkpoint")
    e.add_argument("model", help="'smollm2', 'tiny', a local model directory, or an sfmp checkpoint directory")
    e.add_argument("--bits", default=None, help="comma-separated SFMP code-bit targets, e.g. 2.75,3.25")
    e.add_argument("--compare", default=None, help="baselines at the same budget: uniform,layerwise")
    e.add_argument("--reference", default=None, help="float model for KL/baselines when MODEL is a checkpoint")
    _common_quant(e)
    _common_data(e)
    e.add_argument("--json", default=None, help="write the results as JSON")
    e.add_argument("--plot", default=None, help="write a PPL-vs-BPW PNG")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inspect", help="per-layer bits/BPW of a checkpoint and a bit-map heatmap PNG")
    i.add_argument("dir")
    i.add_argument("--plot", default=None, help="PNG path (default DIR/bitmaps.png)")
    i.set_defaults(func=cmd_inspect)

    b = sub.add_parser("bench", help="run benchmarks/kernels.py and benchmarks/compile_time.py")
    b.add_argument("extra", nargs="*", help="arguments passed to each script")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="SmolLM2 at 3 bits through torch.compile: text, PPL, sizes")
    d.add_argument("--model", default="smollm2")
    d.add_argument("--bits", type=float, default=3.0)
    d.add_argument("--group-size", type=int, default=64)
    d.add_argument("--block-rows", type=int, default=512)
    d.add_argument("--inner", default="inductor", choices=("inductor", "aot_eager", "eager"))
    d.add_argument("--prompt", default="The capital of France is")
    d.add_argument("--new-tokens", type=int, default=24)
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: auto)")
    _common_data(d, cal=8, seq=256, ev=2048, ctx=512)
    d.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sfmp`` console script; returns the exit status."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, SFMPConfigError, FileNotFoundError, ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"sfmp {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sfmp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
