"""Quality on SmolLM2: SFMP vs uniform and layer-wise mixed precision at equal bits per weight.

  python benchmarks/quality.py                       # the group 128 grid (the default blocks), resumable
  python benchmarks/quality.py --group-size 64       # the group 64 table (grid + ablations)
  python benchmarks/quality.py --shard 0/2 --out /tmp/q0.json &   # two 1-thread shards in parallel
  python benchmarks/quality.py --shard 1/2 --out /tmp/q1.json &
  python benchmarks/quality.py --merge /tmp/q0.json /tmp/q1.json  # -> quality.json, RESULTS.md, PNG
  python benchmarks/quality.py --report              # rewrite RESULTS.md section + PNG from the JSON

Setup (sfmp_compile.eval.experiments.load_bench): groups of 128 x 512 rows (QuantConfig's default) or
64 (SmolLM2's source weights are Q4_1 g32, so g32 4-bit would land on the old grid), 16 x 512
calibration tokens from the first wiki articles, 8,192 held-out tokens from the last ones, context 512.
BPW counts everything stored. Runs are keyed (group 64 keys carry no group, others start ``g{group}-``);
an output JSON that already holds a key is not rerun (delete it to redo). Every record carries method,
quantizer, group_size, block_rows, format_version, target_bpw, bpw, weight_bits, ppl, kl. The report
(tables, goals, plot) is quality_report.py, its prose quality_analysis.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sfmp_compile.config import QuantConfig  # noqa: E402  (after the path insert above)
from quality_analysis import (alloc_section, alloc_study, analysis_g64, analysis_g128, goal40_section,  # noqa: E402
                              missed_section, rank_section, reorder_section)
from quality_report import ABLATION_BPW, BPWS, reorder_table, report, table  # noqa: E402


def run_specs(group_size: int = 64):
    """(key, callable(bench) -> record) for the table at ``group_size``, cheap RTN runs first, GPTQ last.

    Group 64 is the first table (its keys carry no group, its ablations live there); any other group
    gets the grid alone, keys prefixed ``g{group}-``, in order of value: what the goals need first."""
    if group_size != 64:
        return grid_specs(group_size)
    specs = []
    for b in (2, 3, 4):
        specs.append((f"uniform-rtn-{b}", lambda B, b=b: B.uniform(b, "rtn")))
    for bpw in BPWS:
        specs.append((f"sfmp3-fisher-rtn-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 3, "rtn")))
        specs.append((f"sfmp2-fisher-rtn-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 2, "rtn")))
        specs.append((f"layerwise-fisher-rtn-{bpw}", lambda B, bpw=bpw: B.layerwise(bpw, "fisher", "rtn")))
    a = ABLATION_BPW
    specs += [
        (f"sfmp3-fisher-rtn-{a}-norow", lambda B: B.sfmp(a, "fisher", 3, "rtn", reorder_rows=False, tag="no row reorder")),
        (f"sfmp3-fisher-rtn-{a}-nocol", lambda B: B.sfmp(a, "fisher", 3, "rtn", reorder_cols=False, tag="no col reorder")),
        (f"sfmp3-fisher-rtn-{a}-sorted", lambda B: B.sfmp(a, "fisher", 3, "rtn", regroup=False, tag="salience-sorted groups")),
        (f"sfmp3-activation-rtn-{a}", lambda B: B.sfmp(a, "activation", 3, "rtn")),
        (f"sfmp3-weight-rtn-{a}", lambda B: B.sfmp(a, "weight", 3, "rtn")),
        (f"layerwise-activation-rtn-{a}", lambda B: B.layerwise(a, "activation", "rtn")),
        ("uniform-rtn-3-colsorted", lambda B: _uniform_sorted(B, 3)),
    ]
    # Permutations cost 32(N+K)/(NK) BPW (0.08 on SmolLM2's small matrices): SFMP without them.
    specs.append(("sfmp3-fisher-rtn-4.0-norow", lambda B: B.sfmp(4.0, "fisher", 3, "rtn", reorder_rows=False, tag="no row reorder")))
    for bpw in (3.0, 3.5, 4.0):
        specs.append((f"sfmp3-fisher-rtn-{bpw}-noperm", lambda B, bpw=bpw: B.sfmp(
            bpw, "fisher", 3, "rtn", reorder_rows=False, reorder_cols=False, tag="no reordering (no permutations)")))
    for b in (3, 4, 2):
        specs.append((f"uniform-gptq-{b}", lambda B, b=b: B.uniform(b, "gptq")))
    for bpw in (3.5, 4.0, 3.0):
        specs.append((f"sfmp3-fisher-gptq-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 3, "gptq")))
    specs.append((f"layerwise-fisher-gptq-{a}", lambda B: B.layerwise(a, "fisher", "gptq")))
    # GPTQ sweeps columns in storage order, so the salience sort is also its act-order: regrouping
    # (original order inside a width, the RTN default) measured worse with GPTQ, so GPTQ keeps the sort.
    for bpw in (3.5, 4.0, 3.0):
        specs.append((f"sfmp3-fisher-gptq-{bpw}-regrouped", lambda B, bpw=bpw: B.sfmp(
            bpw, "fisher", 3, "gptq", regroup=True, tag="regrouped (original order inside a width)")))
    specs.append(("uniform-gptq-3-actorder", lambda B: _uniform_sorted(B, 3, "gptq", "fisher")))
    # Row order is not GPTQ's sweep order: without row permutations GPTQ keeps act-order and gains bits.
    for bpw in (3.5, 4.0):
        specs.append((f"sfmp3-fisher-gptq-{bpw}-norow", lambda B, bpw=bpw: B.sfmp(
            bpw, "fisher", 3, "gptq", reorder_rows=False, tag="no row reorder")))
    # the rest of the grid (issue 10's table at group 64 too), under group 64's unprefixed keys
    have = {k for k, _ in specs}
    specs += [(k[len("g64-"):], fn) for k, fn in grid_specs(64) if k[len("g64-"):] not in have]
    return specs


def grid_specs(group_size: int):
    """The method x quantizer x BPW grid at one group, keys ``g{group}-...``: uniform RTN at its integer
    points, then SFMP 3-level / 2-level / layer-wise Fisher RTN at each BPW, then GPTQ (uniform 3/4,
    SFMP 3-level, layer-wise, SFMP 2-level at 3.5, 4.0, 3.0, the 2-bit / BPW 2.5 cells last)."""
    p = f"g{group_size}-"
    specs = [(f"{p}uniform-rtn-{b}", lambda B, b=b: B.uniform(b, "rtn")) for b in (2, 3, 4)]
    for bpw in BPWS:
        specs += [(f"{p}sfmp3-fisher-rtn-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 3, "rtn")),
                  (f"{p}sfmp2-fisher-rtn-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 2, "rtn")),
                  (f"{p}layerwise-fisher-rtn-{bpw}", lambda B, bpw=bpw: B.layerwise(bpw, "fisher", "rtn"))]
    specs += [(f"{p}uniform-gptq-{b}", lambda B, b=b: B.uniform(b, "gptq")) for b in (3, 4)]
    # 3.5 and 4.0 first: the uniform 3/4-bit points bracket them (BPW 3.0 needs the 2-bit point too)
    gptq_bpws = (3.5, 4.0, 3.0)
    specs += [(f"{p}sfmp3-fisher-gptq-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 3, "gptq")) for bpw in gptq_bpws]
    specs += [(f"{p}layerwise-fisher-gptq-{bpw}", lambda B, bpw=bpw: B.layerwise(bpw, "fisher", "gptq")) for bpw in gptq_bpws]
    specs += [(f"{p}sfmp2-fisher-gptq-{bpw}", lambda B, bpw=bpw: B.sfmp(bpw, "fisher", 2, "gptq")) for bpw in gptq_bpws]
    # The widths around the code bits (quantize.default_bit_choices): (3, 4, 5) at BPW 4.0 (~3.7 code
    # bits at group 128, ~3.5 at 64) and 3.5 (~3.2 / ~3.0), (1, 2, 3) at BPW 2.5 (~2.2 at group 128)
    for bpw, ch in ((4.0, (3, 4, 5)), (3.5, (3, 4, 5)), (2.5, (1, 2, 3))):
        specs += [(f"{p}sfmp3-fisher-{q}-{bpw}-w{''.join(map(str, ch))}", lambda B, q=q, bpw=bpw, ch=ch: B.sfmp(
            bpw, "fisher", 3, q, choices=ch, tag=f"widths {ch}")) for q in ("rtn", "gptq")]
    bpw = BPWS[0]
    specs += [(f"{p}uniform-gptq-2", lambda B: B.uniform(2, "gptq")),
              (f"{p}sfmp3-fisher-gptq-{bpw}", lambda B: B.sfmp(bpw, "fisher", 3, "gptq")),
              (f"{p}layerwise-fisher-gptq-{bpw}", lambda B: B.layerwise(bpw, "fisher", "gptq")),
              (f"{p}sfmp2-fisher-gptq-{bpw}", lambda B: B.sfmp(bpw, "fisher", 2, "gptq"))]
    return specs


SUM_RANK_TAG = "ranked by block sum (the paper)"


def _rekey(runs: dict, key: str, suffix: str, tag: str) -> None:
    """Move runs[key] to key + suffix as an ablation: ``tag`` joins its tag and its label."""
    r = runs.pop(key)
    r["tag"] = f"{r['tag']}, {tag}" if r.get("tag") else tag
    r["label"] += f" {tag}"
    r["key"] = key + suffix
    runs[r["key"]] = r


def migrate(data: dict) -> dict:
    """Bring an older quality JSON up to date, in place: its one ``setup`` (group 64) becomes
    ``setups["64"]``, and every record gets ``group_size`` and ``block_rows`` from that setup and
    ``format_version`` 1 (they were measured before format v2, so their BPW counts int32 row/column
    permutations); SFMP records ranked by block sum (no ``rank``: written before it existed) become
    ablations keyed ``...-sumrank``, and grid records whose 3-level widths differ from today's
    ``default_bit_choices`` ablations keyed ``...-w234`` (their widths), tagged so. Records that carry these fields keep them."""
    setups = data.setdefault("setups", {})
    legacy = data.pop("setup", None)
    if legacy is not None:
        setups.setdefault(str(legacy["group_size"]), legacy)
    for r in data.get("runs", {}).values():
        if "group_size" not in r:
            if legacy is None:
                raise ValueError(f"run {r.get('key')!r} has no group_size and the JSON has no legacy setup to take it from")
            r["group_size"], r["block_rows"] = legacy["group_size"], legacy["block_rows"]
        r.setdefault("format_version", 1)
    # SFMP runs from before allocation ranked blocks by salience per weight ranked them by block sum:
    # they stay as ablation rows under a "-sumrank" key, and their keys go to the per-weight reruns.
    for key in [k for k, r in data.get("runs", {}).items()
                if r["method"] == "sfmp" and r.get("rank", "sum") == "sum" and not k.endswith("-sumrank")]:
        data["runs"][key]["rank"] = "sum"
        _rekey(data["runs"], key, "-sumrank", SUM_RANK_TAG)
    # A grid run whose widths are not what default_bit_choices gives its code bits today (the rule
    # changed: (3, 4, 5) from 3.5 code bits up) becomes an ablation keyed by its widths.
    from sfmp_compile.quantize import default_bit_choices
    for key in [k for k, r in data.get("runs", {}).items() if not r.get("tag") and r.get("bit_choices")
                and r.get("levels") == 3 and tuple(r["bit_choices"]) != default_bit_choices(r["code_bits_target"])]:
        ch = tuple(data["runs"][key]["bit_choices"])
        _rekey(data["runs"], key, f"-w{''.join(map(str, ch))}", f"widths {ch}")
    return data


def _uniform_sorted(B, bits, quantizer="rtn", salience="activation"):
    """Integer bits with the salience column sort kept (no regroup): with RTN and activation salience
    the prototype's problem case; with GPTQ, GPTQ's act-order (the permutation is its g_idx)."""
    from sfmp_compile.plan import make_plan
    sal, sal_s = B.salience(salience)
    cfg = B.config(bits=float(bits), salience=salience, quantizer=quantizer, reorder_rows=False)
    plan = make_plan(B.weights, sal, cfg, B.moments, regroup=False)
    what = "activation col sort (prototype)" if quantizer == "rtn" else f"act-order ({salience} col sort)"
    return B.run(plan, {"method": "ablation", "label": f"uniform {bits}-bit {quantizer}, {what}",
                        "quantizer": quantizer, "salience": salience, "target_bpw": None, "levels": 1,
                        "regroup": False, "alloc_s": plan.timings["reorder_s"] + plan.timings["allocate_s"],
                        "salience_s": sal_s})


def reorder_study(model_name: str = "smollm2", group_size: int = 64, bits: int = 3) -> dict:
    """Why column reordering hurts at integer bits: per layer type, the output error
    tr(ΔW H ΔWᵀ)/2 = Σ_t ‖x_t ΔWᵀ‖² / n and the plain weight error ‖ΔW‖², RTN at ``bits``, with columns in
    original order vs sorted by activation salience (what make_plan did before regrouping), with and
    without clip search; plus where the error sits (the 64 top-salience columns = the first group
    after sorting) and the quantization step those columns get."""
    import torch
    from sfmp_compile.eval.experiments import load_bench
    from sfmp_compile.quantizers.gptq import collect_hessians
    from sfmp_compile.quantizers.minmax import dequantize_groups, minmax_quantize
    from sfmp_compile.salience import salience_from_moments
    bench = load_bench(model_name, group_size=group_size, n_eval_tokens=2, context=2, verbose=False)
    H = collect_hessians(bench.model, bench.layers, bench.calibration)
    out: dict = {}
    for n, w in bench.weights.items():
        h = H.pop(n).double()
        ex2 = torch.diagonal(h).float() / 2
        co = torch.argsort(salience_from_moments(w, ex2).sum(0).double(), descending=True, stable=True)
        N, K = w.shape
        G = -(-K // group_size)
        top = co[:group_size]
        t = out.setdefault(n.rsplit(".", 1)[-1], {})
        for clip in (False, True):
            for name, order in (("original", torch.arange(K)), ("sorted", co)):
                c, sc, z = minmax_quantize(w[:, order], torch.full((N, G), bits), group_size, clip=clip, col_weight=ex2[order])
                wq = torch.empty_like(w)
                wq[:, order] = dequantize_groups(c, sc, z, group_size)
                d = (w - wq).double()
                per_col = ((d @ h) * d).sum(0) / 2
                step = torch.empty_like(w)
                step[:, order] = sc.repeat_interleave(group_size, 1)[:, :K]
                key = f"{name}{'+clip' if clip else ''}"
                r = t.setdefault(key, {"out_err": 0.0, "w_err": 0.0, "out_err_top_cols": 0.0, "step_top_cols": 0.0, "n": 0})
                r["out_err"] += float(per_col.sum())
                r["w_err"] += float(d.pow(2).sum())
                r["out_err_top_cols"] += float(per_col[top].sum())
                r["step_top_cols"] += float(step[:, top].mean())
                r["n"] += 1
    return out


def _write(path: Path, data: dict) -> None:
    """Write the JSON whole or not at all (a run killed mid-write must not lose the table)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def machine() -> dict:
    import torch
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()}


def run(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from sfmp_compile.eval.experiments import load_bench
    out = Path(args.out)
    data = migrate(json.loads(out.read_text())) if out.exists() else {"runs": {}, "setups": {}}
    specs = run_specs(args.group_size)
    if args.only:
        specs = [s for s in specs if any(s[0] == o[:-1] if o.endswith("$") else o in s[0] for o in args.only.split(","))]
    k, n = (int(x) for x in args.shard.split("/"))
    specs = [s for i, s in enumerate(specs) if i % n == k]
    todo = [s for s in specs if s[0] not in data["runs"]]
    print(f"[quality] {len(todo)} of {len(specs)} runs to do -> {out}", flush=True)
    if not todo:
        return
    t0 = time.perf_counter()
    bench = load_bench(args.model, cache_dir=args.cache, group_size=args.group_size, block_rows=args.block_rows)
    prev = data["setups"].get(str(args.group_size), {})
    data["setups"][str(args.group_size)] = {"model": args.model, "group_size": bench.group_size, "block_rows": bench.block_rows,
                     "calibration": f"{len(bench.calibration)}x{bench.calibration[0].shape[1]} tokens (first wiki articles)",
                     "eval_tokens": int(bench.eval_ids.shape[1]), "context": bench.context,
                     "fp32": bench.fp32, "moments_s": bench.moments_s, "machine": machine(),
                     "command": " ".join([Path(sys.executable).name] + sys.argv),
                     "wall_s": prev.get("wall_s", 0.0)}
    setup = data["setups"][str(args.group_size)]
    for key, fn in todo:
        t = time.perf_counter()
        rec = fn(bench)
        rec["key"] = key
        rec["wall_s"] = time.perf_counter() - t
        data["runs"][key] = rec
        data.setdefault("saliences_s", {}).update({k: v[1] for k, v in bench.saliences.items()})
        setup["wall_s"] = prev.get("wall_s", 0.0) + time.perf_counter() - t0
        _write(out, data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=str(HERE / "quality.json"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (1: the 2-core machine is shared; oversubscribed OpenMP spins)")
    ap.add_argument("--group-size", type=int, default=QuantConfig.group_size,
                    help="scale group = block columns (default: what users get, QuantConfig's)")
    ap.add_argument("--block-rows", type=int, default=QuantConfig.block_rows)
    ap.add_argument("--shard", default="0/1", help="k/n: run every n-th spec starting at k")
    ap.add_argument("--only", default=None, help="comma-separated substrings of run keys (KEY$: that key exactly)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "sfmp_compile" / "quality"),
                    help="where calibration moments and Fisher salience are cached")
    ap.add_argument("--merge", nargs="*", default=None, help="merge shard JSONs into --out, then report")
    ap.add_argument("--report", action="store_true", help="only rewrite RESULTS.md and the PNG from --out")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--alloc-study", action="store_true",
                    help="code bits per layer type from the allocation alone (block sum vs per-weight ranking), "
                         "Fisher read from --cache, -> --alloc-json")
    ap.add_argument("--alloc-json", default=str(HERE / "quality_alloc.json"))
    ap.add_argument("--reorder-study", action="store_true",
                    help="measure per-layer errors of column reordering at integer bits, store them in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        data = migrate(json.loads(out.read_text())) if out.exists() else {"runs": {}, "setups": {}}
        for f in args.merge:
            d = migrate(json.loads(Path(f).read_text()))
            data["runs"].update(d["runs"])
            data.setdefault("saliences_s", {}).update(d.get("saliences_s", {}))
            for g, st in d["setups"].items():
                mine = data["setups"].setdefault(g, st)
                if mine is not st:  # a second shard of a group already here: keep one setup, add its wall time
                    mine["shard_wall_s"] = mine.get("shard_wall_s", [mine.get("wall_s")]) + [st.get("wall_s")]
        _write(out, data)
        args.report = True
    if args.alloc_study:
        from safetensors.torch import load_file
        found = sorted(Path(args.cache).glob("fisher-*.safetensors"))
        if len(found) != 1:
            raise SystemExit(f"--alloc-study needs exactly one cached Fisher salience in {args.cache}, found {len(found)}")
        study = alloc_study(load_file(found[0]), group_size=args.group_size, block_rows=args.block_rows)
        study["fisher_file"] = found[0].name
        _write(Path(args.alloc_json), study)
        args.report = True
    if args.reorder_study:
        import torch
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        study = reorder_study(args.model)
        data = migrate(json.loads(out.read_text())) if out.exists() else {"runs": {}, "setups": {}}
        data["reorder_study"] = {"layers": study, "seconds": time.perf_counter() - t0, "bits": 3, "group_size": 64}
        _write(out, data)
        print(reorder_table(study))
        return 0
    if not args.report:
        run(args)
    data = migrate(json.loads(out.read_text()))
    alloc = Path(args.alloc_json)
    study = json.loads(alloc.read_text()) if alloc.exists() else None
    report(data, Path(args.results), out.with_suffix(".png"),
           rank_section(data) + analysis_g128(data, alloc_section(study, data)) + missed_section(data, study)
           + goal40_section(data) + analysis_g64(data)
           + reorder_section(data))
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
