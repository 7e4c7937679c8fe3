"""What keeping SFMP's permutations inside tensor-parallel shards costs, on SmolLM2 (QuantConfig.tp_shards).

  python benchmarks/tp_split.py                # every run, resumable -> benchmarks/tp_split.json + RESULTS.md
  python benchmarks/tp_split.py --bpw 3.0      # only BPW 3.0
  python benchmarks/tp_split.py --report       # rewrite the RESULTS.md section from the JSON

Setup: sfmp_compile.eval.experiments.load_bench, as benchmarks/quality.py (16 x 512 calibration tokens
from the first wiki articles, 8,192 held-out tokens from the last ones, context 512, clip search on),
SFMP 3-level, Fisher salience (cached on disk by quality.py's cache), RTN, the BPW target met exactly
(``budget.code_bits_for_bpw``). With tp_shards = S, the rows of q/k/v/gate/up and the columns of
o/down are ranked inside S equal shards (``sfmp_compile.tp``). A shard must be whole row-blocks
(groups) or lie inside one, so the block geometry has to fit SmolLM2's shapes (q/o 576, k/v 192,
gate/up 1536): group = block rows = 64 splits 3 ways (SmolLM2's real TP degree: 9 heads, 3 KV heads),
96 splits 2 ways; nothing splits o_proj's 576 input columns 4 ways (144 per rank is no multiple of a
group of 32·m; only groups of 288 or 576 would hold whole shards), so S = 4 is recorded as refused,
with the planner's message. Each S > 1 is compared
with S = 1 at the same geometry.

tp_split.json: {"setup": {...as quality.py, "salience", "levels", "quantizer"}, "runs": {key: record}},
key "g{group}-tp{S}-{bpw}". A record holds: group_size, block_rows, tp_shards, target_bpw; then either
"refused" (the SFMPConfigError text) or bpw, weight_bits, bpw_perms (the permutation codes' share),
ppl, kl (mean KL(fp32 ‖ quantized) per token), quantized_bytes, rank_bytes (per rank, codes + fp16
scales/zeros summed over all layers, ``tp.rank_bytes``), max_rank_bytes, min_rank_bytes,
rank_spread (max/min − 1), critical_bytes (Σ over layers of the largest rank's bytes: what a
bandwidth-bound decode step waits for, each layer ending in a collective) and critical_over_mean
(critical_bytes / (Σ rank_bytes / S): the slowdown against perfectly balanced ranks), plus
alloc/quant/eval seconds and wall_s.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# (group_size = block_rows, tp_shards): S = 1 is each geometry's baseline.
GEOMETRIES = ((64, (1, 3, 2, 4)), (96, (1, 2, 4)))
BPWS = (3.0, 3.5)
BEGIN, END = "<!-- tp_split:begin -->", "<!-- tp_split:end -->"


def rank_stats(plan) -> dict:
    """Per-rank byte counts of a plan's layers under its config.tp_shards (see the module docstring)."""
    from sfmp_compile.blocks import BlockGrid
    from sfmp_compile.tp import rank_bytes, split_axis
    cfg = plan.config
    S = cfg.tp_shards
    totals, critical = [0] * S, 0
    for n, lp in plan.layers.items():
        per = rank_bytes(lp.bits, BlockGrid(*lp.shape, cfg.block_rows, cfg.group_size), split_axis(n), S)
        totals = [a + b for a, b in zip(totals, per)]
        critical += max(per)
    return {"rank_bytes": totals, "max_rank_bytes": max(totals), "min_rank_bytes": min(totals),
            "rank_spread": max(totals) / min(totals) - 1, "critical_bytes": critical,
            "critical_over_mean": critical / (sum(totals) / S)}


def one_run(bench, bpw: float, group: int, S: int) -> dict:
    from sfmp_compile.budget import code_bits_for_bpw
    from sfmp_compile.config import SFMPConfigError
    from sfmp_compile.plan import default_regroup, make_plan
    from sfmp_compile.quantize import default_bit_choices
    rec = {"group_size": group, "block_rows": group, "tp_shards": S, "target_bpw": bpw}
    sal, sal_s = bench.salience("fisher")
    weights = bench.weights

    def make(b):
        ch = default_bit_choices(b)
        cfg = bench.config(bits=min(max(b, ch[0]), ch[-1]), bit_choices=ch, salience="fisher", quantizer="rtn",
                           group_size=group, block_rows=group, tp_shards=S)
        return make_plan(weights, sal, cfg, bench.moments, regroup=default_regroup(cfg))

    t0 = time.perf_counter()
    try:
        code_bits, plan = code_bits_for_bpw(bpw, make, lo=1.0 + 1e-6)
    except SFMPConfigError as e:
        rec["refused"] = str(e)
        bench.log(f"g{group} tp{S} @{bpw}: refused: {e}")
        return rec
    rec.update(rank_stats(plan))
    rec.update({"code_bits_target": code_bits, "bpw_targeting_s": time.perf_counter() - t0, "salience_s": sal_s,
                "label": f"SFMP 3-level fisher rtn @{bpw:g} g{group} tp{S}", "method": "sfmp", "quantizer": "rtn",
                "salience": "fisher", "alloc_s": plan.timings["reorder_s"] + plan.timings["allocate_s"]})
    out = bench.run(plan, rec)
    out["bpw_perms"] = _perm_bpw(bench, plan)
    return out


def _perm_bpw(bench, plan) -> float:
    """BPW of the stored permutation codes alone (format v2), from the plan without quantizing."""
    from sfmp_compile.blocks import BlockGrid
    from sfmp_compile.permcodec import encode
    cfg = plan.config
    bits = n = 0
    for lp in plan.layers.values():
        grid = BlockGrid(*lp.shape, cfg.block_rows, cfg.group_size)
        bits += 8 * sum(encode(o, grid, lp.bits, a).numel() for a, o in enumerate((lp.row_order, lp.col_order)))
        n += lp.shape[0] * lp.shape[1]
    return bits / n


def table(data) -> str:
    head = ("| group = block rows | tp_shards | target BPW | BPW | code bits | perm BPW | PPL | KL | "
            "max / min rank MiB | rank spread | critical / mean |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in sorted(data["runs"].values(), key=lambda r: (r["target_bpw"], r["group_size"], r["tp_shards"])):
        if "refused" in r:
            m = re.search(r"\.(\w+) \(.*has shards of (\d+) (rows|input columns), but (\w+)=(\d+)", r["refused"])
            why = f"{m[1]}: shards of {m[2]} {m[3]}, {m[4]} {m[5]}" if m else r["refused"][:80]
            rows.append(f"| {r['group_size']} | {r['tp_shards']} | {r['target_bpw']} | refused ({why}) | | | | | | | |")
            continue
        rows.append(f"| {r['group_size']} | {r['tp_shards']} | {r['target_bpw']} | {r['bpw']:.3f} | {r['weight_bits']:.3f} | "
                    f"{r['bpw_perms']:.4f} | {r['ppl']:.2f} | {r['kl']:.4f} | {r['max_rank_bytes'] / 2**20:.2f} / "
                    f"{r['min_rank_bytes'] / 2**20:.2f} | {100 * r['rank_spread']:.1f} % | {r['critical_over_mean']:.3f} |")
    return "\n".join(rows)


def report(data, results_md: Path) -> None:
    s = data["setup"]
    text = f"""{BEGIN}
## Tensor-parallel shards (tp_shards) on SmolLM2

What it costs to keep SFMP's permutations inside tensor-parallel shards (`QuantConfig.tp_shards`, docs/SCALE.md):
rows of q/k/v/gate/up and columns of o/down ranked inside S equal shards, shard boundaries on block
boundaries. SmolLM2-135M, SFMP 3-level, {s['salience']} salience (cached), RTN, clip search, calibration
{s['calibration']}, {s['eval_tokens']} held-out tokens, context {s['context']}; fp32 PPL {s['fp32']['ppl']:.2f}.
Group = block rows = 64 splits SmolLM2 3 ways (its real TP degree: 9 heads, 3 KV heads per model), 96
splits it 2 ways; 4 ways splits neither q_proj's rows at these block sizes nor, at any useful group
size, o_proj's 576 input columns (144 per rank: whole groups of no multiple of 32, inside one group
only for groups of 288 or 576), so the planner refuses it (the message names the first layer that fails).
"Rank MiB": codes + fp16 scales and zeros per rank, all layers; "rank spread": max/min − 1; "critical / mean": Σ over layers of the
largest rank's bytes over the balanced share (a bandwidth-bound decode step waits for the slowest
rank at every layer's collective). Commands: {', '.join(f'`{c}`' for c in s.get('commands', [s.get('command', '?')]))}
(1 thread, {s['machine']['cpu_count']} shared cores).

{table(data)}
{END}"""
    old = results_md.read_text() if results_md.exists() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    results_md.write_text(new)


def run(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from benchmarks.quality import machine
    from sfmp_compile.eval.experiments import load_bench
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    bpws = [float(b) for b in args.bpw.split(",")] if args.bpw else list(BPWS)
    todo = [(bpw, g, S) for bpw in bpws for g, shards in GEOMETRIES for S in shards
            if f"g{g}-tp{S}-{bpw}" not in data["runs"]]
    print(f"[tp_split] {len(todo)} runs to do -> {out}", flush=True)
    if todo:
        bench = load_bench("smollm2", cache_dir=args.cache)
        command = " ".join(["python"] + sys.argv)
        old = data.get("setup", {})
        commands = old.get("commands", [old["command"]] if "command" in old else []) + [command]  # resumed: keep all
        data["setup"] = {"model": "smollm2", "salience": "fisher", "levels": 3, "quantizer": "rtn",
                         "calibration": f"{len(bench.calibration)}x{bench.calibration[0].shape[1]} tokens (first wiki articles)",
                         "eval_tokens": int(bench.eval_ids.shape[1]), "context": bench.context, "fp32": bench.fp32,
                         "machine": machine(), "commands": commands}
        for bpw, g, S in todo:
            t = time.perf_counter()
            rec = one_run(bench, bpw, g, S)
            rec["wall_s"] = time.perf_counter() - t
            data["runs"][f"g{g}-tp{S}-{bpw}"] = rec
            out.write_text(json.dumps(data, indent=1, default=float))
    print(table(data))
    report(data, Path(args.results))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bpw", default=None, help="comma-separated BPW targets (default 3.0,3.5)")
    ap.add_argument("--out", default=str(HERE / "tp_split.json"))
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine's cores are shared)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "sfmp_compile" / "quality"),
                    help="moments / Fisher salience cache, shared with benchmarks/quality.py")
    ap.add_argument("--report", action="store_true", help="only print the table and rewrite RESULTS.md from --out")
    args = ap.parse_args(argv)
    if args.report:
        data = json.loads(Path(args.out).read_text())
        print(table(data))
        report(data, Path(args.results))
        return
    run(args)


if __name__ == "__main__":
    main()
