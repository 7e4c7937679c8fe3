"""Produce the graph dumps committed under examples/dumps/ (see examples/README.md).

    python examples/compile_dumps.py                 # tiny random Llama + SmolLM2
    python examples/compile_dumps.py --skip-smollm2  # tiny Llama only (seconds)
    python examples/compile_dumps.py --full DIR      # also keep the untruncated dumps in DIR

The backend writes every graph's full dump; this script keeps the first graph of each model and
cuts long files down so the committed text stays small: a graph keeps its first decoder layer and
its tail (the other layers repeat the pattern), very long lines are shortened.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sfmp_compile import sfmp_backend  # noqa: E402
from sfmp_compile.eval.models import load_model, tiny_llama  # noqa: E402

MAX_LINE = 300
TAIL = 40


def shorten(text: str, max_lines: int, layer_marker: str | None = None) -> str:
    """Readable and small: drop Dynamo's placeholder aliases and local paths, keep the text up to the
    first computation on layer 1 (``layer_marker``) or ``max_lines``, plus the last TAIL lines."""
    alias = re.compile(r"^\s*\w+ = \w+$")  # ``l_x_ = L_x_``: one per parameter, hundreds of them
    lines, run = [], []

    def flush():
        if len(run) > 3:
            lines.append(f"{run[0][:len(run[0]) - len(run[0].lstrip())]}# ... {len(run)} placeholder aliases (l_x_ = L_x_) omitted")
        else:
            lines.extend(run)
        run.clear()

    for ln in text.splitlines():
        ln = re.sub(r"# File: \S*/site-packages/", "# File: ", ln)
        if alias.match(ln):
            run.append(ln)
            continue
        flush()
        lines.append(ln if len(ln) <= MAX_LINE else ln[:MAX_LINE] + f" …[{len(ln) - MAX_LINE} more chars]")
    flush()
    cut = len(lines)
    if layer_marker:
        pat = re.compile(layer_marker)
        cut = next((i for i, ln in enumerate(lines) if pat.search(ln) and "def forward" not in ln), len(lines))
    cut = min(cut, max_lines)
    if cut + TAIL >= len(lines):
        return "\n".join(lines) + "\n"
    omitted = len(lines) - cut - TAIL
    note = f"# ... {omitted} lines omitted (later layers repeat the pattern above; run examples/compile_dumps.py --full DIR for everything) ..."
    return "\n".join(lines[:cut] + ["", note, ""] + lines[-TAIL:]) + "\n"


def keep_first_graph(src: str, dst: str, layer_marker: str | None, max_lines: int) -> None:
    g = os.path.join(src, "graph_000")
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(g)):
        if name.endswith(".json"):
            continue  # machine-readable twin of summary.md; not needed in the repo
        with open(os.path.join(g, name)) as f:
            text = f.read()
        limit = max_lines if name != "summary.md" else 10_000
        marker = layer_marker if name in ("before.py", "after.py") else None
        with open(os.path.join(dst, name), "w") as f:
            f.write(shorten(text, limit, marker))


def run(model, ids, out_dir: str, full_dir: str | None, layer_marker: str, max_lines: int, **options) -> None:
    tmp = tempfile.mkdtemp(prefix="sfmp-dump-")
    be = sfmp_backend(dump_dir=tmp, **options)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=be)(ids)
    keep_first_graph(tmp, out_dir, layer_marker, max_lines)
    if full_dir:
        shutil.copytree(tmp, full_dir, dirs_exist_ok=True)
    shutil.rmtree(tmp)
    r = be.reports[0]
    print(f"{out_dir}: {len(r.layers)} linears, gathers {r.gathers_before} -> {r.gathers_after}, "
          f"backend {r.timings.get('total', 0):.1f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "dumps"))
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--full", help="also copy the complete dumps here")
    args = ap.parse_args(argv)

    # Tiny random Llama, 2 layers, small blocks so every layer has several blocks and permutations.
    # Inductor as the inner compiler, so kernels.py shows the code it generated around the sfmp ops.
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    run(tiny_llama(), ids, os.path.join(args.out, "tiny_llama"), args.full and os.path.join(args.full, "tiny_llama"),
        r"layers_modules_1_|layers_1_", 400, bits=2.5, block_rows=32, group_size=32, inner="inductor")

    if not args.skip_smollm2:
        model, tok = load_model("smollm2")
        ids = tok("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
        run(model, ids, os.path.join(args.out, "smollm2"), args.full and os.path.join(args.full, "smollm2"),
            r"layers_modules_1_|layers_1_", 300, bits=2.75, salience="weight", inner="aot_eager")


if __name__ == "__main__":
    main()
