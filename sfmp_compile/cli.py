"""The ``sfmp`` command line: quantize, generate, eval, inspect, bench, demo.

  sfmp quantize MODEL (--bits 2.75 | --bpw 3.5 | --size-mb 60) [--levels 2 | --bit-choices 2,3,4]
                [--salience activation] [--quantizer rtn] [--group-size 128] [--block-rows 512] --out DIR
  sfmp quantize --stream MODEL_DIR --bits 2.75 ... --out DIR   (layer by layer; torchrun-able)
  sfmp generate MODEL_OR_DIR --prompt TEXT [--max-new-tokens N] [--compile]
  sfmp eval MODEL_OR_DIR [--compare uniform,layerwise] [--bits 2.75,3.25 | --bpw 3,3.5 | --size-mb 50,60]
            [--json F] [--plot F.png]
  sfmp inspect DIR [--plot F.png]
  sfmp bench
  sfmp demo

MODEL is "smollm2" (SmolLM2-135M-Instruct, the default real model), "tiny" (a random 2-layer
Llama with a character tokenizer, for tests), a local transformers model directory, or a hub id
when the hub can serve it (one clear error when it cannot). --bits is the average code width;
--bpw counts every stored bit of the quantized linears, --size-mb (MiB) the whole checkpoint's
tensors; each is a cap met to within one block (``budget.py``). Long steps show progress bars
on a terminal (``--quiet``: none; ``SFMP_PROGRESS=1`` forces them, e.g. into a log). Text comes
from the Wikipedia excerpt in gensim's wheel (calibration from its first articles, evaluation from
its last) unless ``--text FILE`` is given (first half calibrates, second half evaluates).
User errors (missing model or text, bad options, an existing output path, a corrupt or missing
checkpoint) print one line on stderr and exit with status 2; no tracebacks. User errors are
``CLIError``, ``SFMPConfigError``, ``CheckpointError``, missing files, and the ``ValueError`` the
library raises for bad inputs (its convention); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from .config import MAX_BITS, MIN_BITS, QUANTIZERS, SALIENCE_KINDS, QuantConfig, SFMPConfigError
from .progress import quiet

EXIT_USAGE = 2


class CLIError(ValueError):
    """A user error the CLI reports as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        print(f"{self.prog}: error: {message} (try: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


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


def _config(args, bits: float, levels: int | None = None, budget_levels: bool = False) -> QuantConfig:
    """Validate every quantization option up front, before any model is loaded; ``levels`` overrides
    --levels. budget_levels: the code bits are solved later (--bpw / --size-mb), so 3 levels without
    --bit-choices leave the widths to follow them."""
    from .quantize import default_bit_choices
    _check_bits(bits)
    choices = _bit_choices(getattr(args, "bit_choices", None))
    levels = levels or getattr(args, "levels", None)
    if choices is not None and levels == 2:
        raise CLIError("--levels 2 and --bit-choices contradict each other (bit choices mean 3 levels)")
    if choices is not None and budget_levels:
        QuantConfig(bits=float(choices[1]), bit_choices=choices)  # checked now; the bits are solved later
    elif choices is None and levels == 3 and not budget_levels:
        choices = default_bit_choices(bits)
    return QuantConfig(bits=bits, bit_choices=choices, block_rows=args.block_rows, group_size=args.group_size,
                       salience=args.salience, quantizer=args.quantizer, tp_shards=getattr(args, "tp_shards", 1))


def _calibration(tokenizer, args):
    """Calibration windows from the first half of --text, or from the Wikipedia calibration articles."""
    from .eval.text import calibration_batches, text_halves
    return calibration_batches(tokenizer, args.calib_sequences, args.seq_len, text=text_halves(args.text)[0])


def _positive(text: str) -> int:
    """argparse type for counts (sequences, lengths, tokens, sizes): an integer >= 1."""
    v = int(text) if text.strip().lstrip("+-").isdigit() else 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _check_out(path: str, overwrite: bool) -> None:
    """--out must be a directory or not exist: an existing file (or a link, or anything else) is
    refused even with --overwrite, which replaces directories only."""
    p = Path(path)
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise CLIError(f"--out {path} exists and is not a directory; refusing to replace it (--overwrite replaces "
                       "directories only)")
    if p.exists() and not overwrite and any(p.iterdir()):
        raise CLIError(f"output directory {path} already exists; choose another --out or pass --overwrite")


def _check_writable_file(path: str | None, what: str) -> None:
    if path is None:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise CLIError(f"{what} {path} is a directory; give a file path")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise CLIError(f"{what}: directory {parent} does not exist")


def _budget(args):
    """The memory budget of --bpw / --size-mb (the first value of a list), or None for --bits."""
    from .budget import Budget
    if getattr(args, "bpw", None) is not None:
        return Budget(bpw=_floats(args.bpw, "--bpw")[0])
    if getattr(args, "size_mb", None) is not None:
        return Budget(size_mb=_floats(args.size_mb, "--size-mb")[0])
    return None


def _budgets(args) -> list:
    """Every budget of a comma-separated --bpw or --size-mb list."""
    from .budget import Budget
    if args.bpw is not None:
        return [Budget(bpw=b) for b in _floats(args.bpw, "--bpw")]
    if args.size_mb is not None:
        return [Budget(size_mb=b) for b in _floats(args.size_mb, "--size-mb")]
    return []


def _distributed() -> bool:
    import os
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cmd_quantize(args) -> int:
    budget = _budget(args)
    if budget is not None and "," in (args.bpw or args.size_mb or ""):
        raise CLIError("quantize takes one budget, not a list")
    config = _config(args, args.bits if budget is None else 3.0, budget_levels=budget is not None)
    _check_out(args.out, args.overwrite)
    if args.stream:
        from .cli_stream import cmd_quantize_stream
        return cmd_quantize_stream(args, config)
    if _distributed():
        raise CLIError("under torchrun, quantize needs --stream (the in-memory path runs in one process)")
    from .budget import MIB, plan_for_budget, stored_bytes
    from .checkpoint import save_quantized
    from .eval.models import load_named
    from .plan import plan as make_plan
    from .quantize import quantization_report, quantize
    t0 = time.perf_counter()
    model, tok = load_named(args.model)
    # Calibration serves the salience, the clip search's column weights and GPTQ's Hessians.
    cal = _calibration(tok, args)
    opts = dict(calibration=cal, salience=config.salience, block_rows=config.block_rows,
                group_size=config.group_size, quantizer=config.quantizer, tp_shards=config.tp_shards)
    if budget is None:
        plan = make_plan(model, config.bits, bit_choices=config.bit_choices, **opts)
        target = f"code bits {config.bits:g}"
    else:
        plan, info = plan_for_budget(model, budget, levels=args.levels, bit_choices=config.bit_choices, **opts)
        target = budget.describe() + f" (code bits {info['code_bits']:.3f})"
    quantize(model, plan=plan, calibration=cal)
    rep = quantization_report(model)
    size = stored_bytes(model)
    save_quantized(model, args.out, tokenizer=tok, overwrite=args.overwrite)
    print(f"quantized {len(plan.layers)} layers of {args.model} in {time.perf_counter() - t0:.1f} s -> {args.out}\n"
          f"  target   {target}\n"
          f"  achieved weight_bits {rep['weight_bits']:.3f}, BPW {rep['bpw']:.3f}, checkpoint {size / MIB:.2f} MiB "
          f"({rep['quantized_bytes'] / MIB:.2f} MiB packed linears; fp32 {rep['float_bytes_fp32'] / MIB:.2f} MiB)")
    return 0


def cmd_generate(args) -> int:
    from .eval.generate import generate, load_for_generation
    model, tok = load_for_generation(args.model)
    print(args.prompt, end="", flush=True)
    r = generate(model, tok, args.prompt, args.max_new_tokens, compiled=args.compile)
    warm = f", compile {r['compile_s']:.1f} s before" if "compile_s" in r else ""
    print(f"[{len(r['new_ids'])} tokens in {r['seconds']:.2f} s: {r['tokens_per_s']:.2f} tokens/s, "
          f"{r['backend']}{warm}]", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    compare = [c.strip() for c in (args.compare or "").split(",") if c.strip()]
    bad = [c for c in compare if c not in ("uniform", "layerwise")]
    if bad:
        raise CLIError(f"--compare takes uniform and/or layerwise, got {','.join(bad)}")
    bits_list = _floats(args.bits, "--bits") if args.bits else []
    budgets = _budgets(args)
    for b in bits_list:
        _config(args, b)
    if budgets:
        bits_list = [3.0]  # only its other options are used: each budget solves its own code bits
    _check_writable_file(args.json, "--json")
    _check_writable_file(args.plot, "--plot")
    from .eval.plots import plot_ppl_vs_bpw
    from .eval.quality import COLUMNS, evaluate, is_checkpoint
    from .eval.report import format_table
    if not bits_list and not is_checkpoint(args.model):
        bits_list = [3.0]
    levels = args.levels
    configs = [_config(args, b, levels, budget_levels=bool(budgets)) for b in bits_list]
    rows, fp32 = evaluate(args.model, configs, compare, budgets=budgets, levels=levels, reference=args.reference,
                          text_path=args.text, n_calibration=args.calib_sequences, seq_len=args.seq_len,
                          n_eval_tokens=args.eval_tokens, context=args.context, group_size=args.group_size,
                          block_rows=args.block_rows, verbose=not args.quiet)
    print(format_table(rows, COLUMNS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rows": rows, "fp32_ppl": fp32}, f, indent=1, default=str)
    if args.plot:
        plot_ppl_vs_bpw([r for r in rows if r["series"] != "fp32"], args.plot, fp32, f"{args.model}: PPL vs BPW")
    return 0


def cmd_inspect(args) -> int:
    _check_writable_file(args.plot, "--plot")
    from .checkpoint import load_quantized
    from .eval.plots import bitmap_figure
    from .eval.report import inspect_text
    from .quantize import quantization_report
    model = load_quantized(args.dir)
    print(inspect_text(quantization_report(model)))
    plot = args.plot or str(Path(args.dir) / "bitmaps.png")
    try:
        widths = bitmap_figure(model, plot)
    except OSError as e:
        raise CLIError(f"cannot write {plot}: {e}") from None
    print(f"bit-map heatmap: {plot} (one colour per width present: {', '.join(f'{b}-bit' for b in widths)})")
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


def cmd_demo(args) -> int:
    from .budget import Budget
    Budget(bpw=args.bpw)
    from .eval.demo import run_demo, set_threads
    set_threads(args.threads)
    run_demo(args.model, args.bpw, salience=args.salience, quantizer=args.quantizer, text_path=args.text,
             n_calibration=args.calib_sequences, seq_len=args.seq_len, n_eval_tokens=args.eval_tokens,
             context=args.context, group_size=args.group_size, block_rows=args.block_rows, prompt=args.prompt,
             new_tokens=args.new_tokens, decode=not args.no_decode)
    return 0


def _common_quant(p):
    # Defaults: the configuration that wins RESULTS.md's quality table (Fisher, GPTQ, 3 levels).
    p.add_argument("--levels", type=int, choices=(2, 3), default=3,
                   help="3 (default): floor/ceil of --bits and one width above (2.75: the paper's 2,3,4); 2: floor/ceil")
    p.add_argument("--bit-choices", default=None, help="three widths for the 3-level scheme, e.g. 2,3,4")
    p.add_argument("--salience", choices=SALIENCE_KINDS, default="fisher")
    p.add_argument("--quantizer", choices=QUANTIZERS, default="gptq")
    p.add_argument("--group-size", type=_positive, default=128, help="input columns per block and scale group")
    p.add_argument("--block-rows", type=_positive, default=512, help="output rows per block")


def _budget_options(p, required: bool, many: bool):
    """--bits / --bpw / --size-mb: one of them (comma-separated lists where ``many``)."""
    s = "comma-separated " if many else ""
    m = p.add_mutually_exclusive_group(required=required)
    m.add_argument("--bits", type=str if many else float, default=None, help=f"{s}average code bits, e.g. 2.75")
    m.add_argument("--bpw", default=None, help=f"{s}bits per weight, everything stored for the quantized linears "
                   "(codes, scales, zeros, permutations, maps), e.g. 3.5")
    m.add_argument("--size-mb", default=None, help=f"{s}whole-checkpoint tensor size in MiB (2^20 bytes)")


def _common_data(p, cal=16, seq=512, ev=8192, ctx=512):
    p.add_argument("--text", default=None, help="UTF-8 text file (first half calibrates, second half evaluates)")
    p.add_argument("--calib-sequences", type=_positive, default=cal)
    p.add_argument("--seq-len", type=_positive, default=seq)
    p.add_argument("--eval-tokens", type=_positive, default=ev)
    p.add_argument("--context", type=_positive, default=ctx)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sfmp", description="Search-free mixed-precision (SFMP) LLM weight quantization")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize a model and save it (load with load_quantized)")
    q.add_argument("model", help="'smollm2', 'tiny' or a local model directory")
    _budget_options(q, required=True, many=False)
    _common_quant(q)
    _common_data(q)
    q.add_argument("--tp-shards", type=_positive, default=1,
                   help="tensor-parallel ranks the checkpoint will be served on: permutations stay inside each "
                        "rank's shard (docs/SCALE.md)")
    q.add_argument("--out", required=True, help="output directory (must not exist)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    q.add_argument("--stream", action="store_true",
                   help="read MODEL (a local directory, or smollm2) one decoder layer at a time; under torchrun "
                        "the calibration is split across processes")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity/KL of SFMP (and baselines) or of a saved checkpoint")
    e.add_argument("model", help="'smollm2', 'tiny', a local model directory, or an sfmp checkpoint directory")
    _budget_options(e, required=False, many=True)
    e.add_argument("--compare", default=None, help="baselines at the same budget: uniform,layerwise")
    e.add_argument("--reference", default=None, help="float model for KL/baselines when MODEL is a checkpoint")
    _common_quant(e)
    _common_data(e)
    e.add_argument("--json", default=None, help="write the results as JSON")
    e.add_argument("--plot", default=None, help="write a PPL-vs-BPW PNG")
    e.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="stream a greedy continuation of a prompt and print tokens/s")
    g.add_argument("model", help="an sfmp checkpoint directory, 'smollm2', 'tiny', a local model directory or a hub id")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_positive, default=64)
    g.add_argument("--compile", action="store_true",
                   help="static-cache decode under torch.compile (sfmp_backend() for a quantized model)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("inspect", help="per-layer bits/BPW of a checkpoint and a bit-map heatmap PNG")
    i.add_argument("dir")
    i.add_argument("--plot", default=None, help="PNG path (default DIR/bitmaps.png)")
    i.set_defaults(func=cmd_inspect)

    b = sub.add_parser("bench", help="run benchmarks/kernels.py and benchmarks/compile_time.py")
    b.add_argument("extra", nargs="*", help="arguments passed to each script")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="SmolLM2: SFMP at BPW 3.5 beside uniform 3-bit at the same memory, and fp32")
    d.add_argument("--model", default="smollm2")
    d.add_argument("--bpw", type=float, default=3.5, help="SFMP's budget, bits per weight, everything stored")
    # Fisher: with GPTQ at BPW 3.5 it beat uniform 3-bit in benchmarks/RESULTS.md; activation lost here (README).
    d.add_argument("--salience", choices=SALIENCE_KINDS, default="fisher")
    d.add_argument("--quantizer", choices=QUANTIZERS, default="gptq")
    d.add_argument("--group-size", type=_positive, default=64)
    d.add_argument("--block-rows", type=_positive, default=512)
    d.add_argument("--prompt", default="The capital of France is")
    d.add_argument("--new-tokens", type=_positive, default=24)
    d.add_argument("--no-decode", action="store_true", help="skip the compiled decode timing (two compiles)")
    d.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: auto)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    _common_data(d, cal=8, seq=256, ev=2048, ctx=512)
    d.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sfmp`` console script; returns the exit status."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        with quiet(getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except (CLIError, SFMPConfigError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"sfmp {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sfmp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
