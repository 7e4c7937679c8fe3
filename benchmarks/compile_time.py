"""Compile time of SmolLM2 under plain Inductor vs ``sfmp_backend(bits=3)``, and where the time goes.

Each configuration runs in a fresh Python process with an empty TORCHINDUCTOR_CACHE_DIR, so none
benefits from another's warm caches (Inductor's first compile in a process has a large fixed cost;
both pay it). "first call" is the wall time of the first forward through the compiled model:
Dynamo tracing + the backend + Inductor. The backend's split comes from ``backend.timings``.

    python benchmarks/compile_time.py                  # SmolLM2, prints a table
    python benchmarks/compile_time.py --json out.json  # also writes the numbers
    python benchmarks/compile_time.py --model tiny     # a random tiny Llama (seconds, for a smoke test)

Goal: sfmp first call <= 1.5x plain Inductor first call.

Measured on the project's 2-core x86 CPU machine, SmolLM2, 32 tokens, bits=3, salience="weight", fresh
Inductor cache per run (seconds). 2026-11-27 second session (quiet machine, CPU layers decomposed into
Inductor; the op is now ops/cpu_int4.py over the "cpu" layout, layouts/cpu_int4.py):

  --threads 1            first call  x ind.  Dynamo  salience  alloc  quant  passes  Inductor
  inductor                    47.2    1.00    (all)
  sfmp                        55.8    1.18      7.2      0.3    0.4    6.8     0.1      41.0
  sfmp (clip_search=False)    48.9    1.04      6.3      0.3    0.4    2.8     0.1      39.1
  sfmp (release_weights)      49.0    1.04      5.7      0.3    0.3    4.2     0.1      38.5

First session (load average 4-7): inductor 65.6, sfmp 91.5 (1.39x), noclip 87.3, release 90.4.
  default threads (2)
  inductor                    79.8 / 82.0 (two runs)
  sfmp                       185.4 / 117.1  quantization 102 s / 18 s: two intra-op threads on two
                             busy cores stall every op (a ~1M-element op takes 25 ms instead of
                             1-5 ms), so on a loaded machine run with --threads 1 / torch.set_num_threads(1).
Float weights resident after compiling: 538 MB without release_weights, 113 MB with it (the tied
embedding stays); packed weights 43.4 MB. The rewritten graph costs Inductor ~10 s more than the
original (210 custom-op calls). Gathers at bits=3: none (one width everywhere, orders regroup to the
identity); at bits=2.75: 308 after rewriting -> 193 after folding; at bit_choices=(2,3,4): 148 -> 123.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "inductor": {},
    "sfmp": {"bits": 3.0, "salience": "weight"},  # QuantConfig defaults otherwise (clip search on)
    "sfmp_noclip": {"bits": 3.0, "salience": "weight", "clip_search": False},
    "sfmp_release": {"bits": 3.0, "salience": "weight", "release_weights": True},
    # Not a timing row: at an integer budget every block gets the same width, the plan keeps the
    # original orders and there is nothing to gather. These show the gathers at a fractional budget.
    "gathers_2.75": {"bits": 2.75, "salience": "weight", "inner": "aot_eager"},
    "gathers_234": {"bits": 3.0, "bit_choices": (2, 3, 4), "salience": "weight", "inner": "aot_eager"},
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(model_name: str, config: str, seq: int, threads: int | None) -> dict:
    """Compile and run once in this process; returns the measurements."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sfmp_compile import sfmp_backend
    from sfmp_compile.eval.models import load_model, tiny_llama
    from sfmp_compile.passes.release import storage_bytes

    if model_name == "tiny":
        model = tiny_llama()
        ids = torch.randint(0, 256, (1, seq), generator=torch.Generator().manual_seed(0))
    else:
        model, tok = load_model(model_name)
        text = "The quick brown fox jumps over the lazy dog. " * 64
        ids = tok(text, return_tensors="pt").input_ids[:, :seq]
    options = dict(CONFIGS[config])
    be = sfmp_backend(**options) if config != "inductor" else None
    param_bytes_before = storage_bytes(model.parameters())
    rss_before = _rss_bytes()
    compiled = torch.compile(model, backend=be) if be is not None else torch.compile(model)
    with torch.no_grad():
        t0 = time.perf_counter()
        compiled(ids)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled(ids)
        second = time.perf_counter() - t0
    graphs_after_first = len(be.reports) if be is not None else None
    out = {"config": config, "options": {k: v for k, v in options.items()}, "model": model_name, "seq": seq, "first_call_s": first,
           "second_call_s": second, "torch_threads": torch.get_num_threads(),
           "param_bytes_before": param_bytes_before, "param_bytes_after": storage_bytes(model.parameters()),
           "rss_before": rss_before, "rss_after": _rss_bytes()}
    if be is not None:
        backend_total = sum(r.timings.get("total", 0.0) for r in be.reports)
        out.update({
            "graphs_after_first_call": graphs_after_first,
            "graphs": len(be.reports),
            "backend_s": dict(be.timings),
            "backend_total_s": backend_total,
            "dynamo_and_rest_s": first - backend_total,
            "quantized_layers": be.quantize_calls,
            "packed_bytes": be.packed_bytes,
            "released_bytes": be.released_bytes,
            "gathers_before_fold": sum(r.gathers_before for r in be.reports),
            "gathers_after_fold": sum(r.gathers_after for r in be.reports),
        })
        per_type = collections.defaultdict(lambda: {"layers": 0, "in": 0, "out": 0, "in_shared": 0})
        for layer, c in be.gather_counts().items():
            t = per_type[layer.rsplit(".", 1)[-1]]
            t["layers"] += 1
            t["in"] += c["in"]
            t["out"] += c["out"]
            t["in_shared"] += c["shared"]
        out["gathers_per_layer_type"] = dict(per_type)
    return out


def run_config(model_name: str, config: str, seq: int, threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-cache-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", config, "--model", model_name,
                               "--seq", str(seq)] + (["--threads", str(threads)] if threads else []), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{config} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"config": config, "error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    base = next((r["first_call_s"] for r in results if r["config"] == "inductor" and "error" not in r), None)
    lines = ["| config | first call (s) | x inductor | Dynamo+rest | find | salience | allocation | quantization "
             "| passes | inner Inductor | gathers (before -> after fold) | float weights kept (MB) | packed (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | failed (see stderr / JSON) |" + " |" * 11)
            continue
        b = r.get("backend_s", {})
        ratio = f"{r['first_call_s'] / base:.2f}" if base else "-"
        cells = [r["config"], f"{r['first_call_s']:.1f}", ratio, f"{r.get('dynamo_and_rest_s', r['first_call_s']):.1f}"]
        cells += [f"{b[k]:.1f}" if k in b else "-" for k in ("find", "salience", "allocation", "quantization", "passes",
                                                             "inner_compile")]
        cells.append(f"{r['gathers_before_fold']} -> {r['gathers_after_fold']}" if "gathers_after_fold" in r else "-")
        cells.append(f"{r['param_bytes_after'] / 1e6:.0f}")
        cells.append(f"{r['packed_bytes'] / 1e6:.1f}" if "packed_bytes" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="'smollm2' (default) or 'tiny'")
    ap.add_argument("--configs", default="inductor,sfmp,sfmp_noclip,sfmp_release,gathers_2.75,gathers_234",
                    help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--seq", type=int, default=32, help="tokens in the compiled call")
    ap.add_argument("--json", help="write all measurements here")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads in every run (default: torch's)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.model, args.worker, args.seq, args.threads)))
        return
    results = []
    for config in args.configs.split(","):
        print(f"running {config} ...", file=sys.stderr, flush=True)
        results.append(run_config(args.model, config, args.seq, args.threads))
    print(table(results))
    for r in results:
        if "gathers_per_layer_type" in r:
            print(f"\ngathers per layer type ({r['config']}): " + json.dumps(r["gathers_per_layer_type"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "threads": args.threads,
                       "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
