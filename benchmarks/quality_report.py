"""The "Quality on SmolLM2" section of RESULTS.md and its PNG, from benchmarks/quality.json.

Everything here reads the JSON (``quality.migrate``d: every run carries ``group_size``) and writes text;
nothing runs a model. The grid is method x quantizer x BPW per group; a cell of it that the JSON lacks is
listed as not run, never filled. Goals follow issue 10 item 3.
"""
from __future__ import annotations

import math
from pathlib import Path

BPWS = (2.5, 3.0, 3.5, 4.0)
ABLATION_BPW = 3.5  # the group 64 ablations (reordering, salience kinds) sit at this BPW
GROUPS = (128, 64)  # 128 first: the default users get (QuantConfig: 512 x 128 blocks)
QUANTIZERS = ("rtn", "gptq")
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"

# llama.cpp (llama-cpp-python 0.3.36, no importance matrix) on the same fp32 SmolLM2 weights and the
# same 8,192 held-out tokens, context 512 (its fp32 PPL equals ours, 18.20, to 4 decimals); BPW counts
# the decoder linears only. Measured 2026-11-29 by a project session; the numbers are recorded in the
# project notes (shared/notes/anchors.md, "Measured side by side") and in issue 10's text, not in a
# JSON of this repository: benchmarks/llamacpp_peer.json is a later run on a different 2,048-token set
# (fp32 26.17) and is not comparable with this table.
LLAMA_CPP = (("Q4_K_M", 5.53, 19.31), ("Q3_K_M", 4.63, 20.66), ("IQ4_NL", 4.53, 21.46),
             ("Q4_0", 4.50, 22.64), ("Q3_K_S", 4.23, 24.71))
LLAMA_CPP_SOURCE = ("llama-cpp-python 0.3.36 on the same fp32 weights and 8,192 held-out tokens, context 512, "
                    "1 thread, no importance matrix, measured 2026-11-29 (project notes `shared/notes/anchors.md`, "
                    "\"Measured side by side\", and issue 10); linear-only BPW")


# ---- finding cells ---------------------------------------------------------------------------------

def find(runs: dict, group: int, method: str, quantizer: str, *, levels: int | None = None,
         bpw: float | None = None, bits: int | None = None) -> dict | None:
    """The grid run for one cell, or None: Fisher salience, no ablation tag; uniform by ``bits``,
    SFMP (with ``levels``) and layer-wise by target ``bpw``."""
    for r in runs.values():
        if r["group_size"] != group or r["method"] != method or r["quantizer"] != quantizer or r.get("tag"):
            continue
        if method == "uniform":
            if r["weight_bits"] == bits:
                return r
        elif r.get("salience") == "fisher" and r.get("target_bpw") == bpw and (levels is None or r["levels"] == levels):
            return r
    return None


def grid_cells() -> list[tuple]:
    """Every cell of issue 10's table: (group, method, quantizer, levels, bpw or bits), default group first."""
    cells = []
    for g in GROUPS:
        for q in QUANTIZERS:
            cells += [(g, "uniform", q, 1, b) for b in (2, 3, 4)]
            for bpw in BPWS:
                cells += [(g, "sfmp", q, 3, bpw), (g, "sfmp", q, 2, bpw), (g, "layerwise", q, None, bpw)]
    return cells


def cell_run(runs: dict, cell: tuple) -> dict | None:
    g, method, q, levels, x = cell
    if method == "uniform":
        return find(runs, g, method, q, bits=x)
    return find(runs, g, method, q, levels=levels, bpw=x)


def cell_name(cell: tuple) -> str:
    g, method, q, levels, x = cell
    what = {"uniform": f"uniform {x}-bit", "layerwise": f"layer-wise @{x}", "sfmp": f"SFMP {levels}-level @{x}"}[method]
    return f"g{g} {what} {q.upper()}"


def not_run(runs: dict) -> list[str]:
    return [cell_name(c) for c in grid_cells() if cell_run(runs, c) is None]


# ---- goals -----------------------------------------------------------------------------------------

def interpolate_log(points, x: float) -> float | None:
    """log-PPL piecewise-linear in BPW through sorted (bpw, ppl) points; None outside their range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            return math.exp(math.log(y0) + (math.log(y1) - math.log(y0)) * t)
    return None


def uniform_line(runs: dict, group: int, quantizer: str, bpw: float) -> tuple[float, str] | None:
    """(PPL of the uniform line at ``bpw``, how it was read) for one group and quantizer, or None.

    Between two measured uniform points: log-interpolated. Just below the lowest one (within 0.05 BPW,
    e.g. BPW 2.5 against 2-bit's 2.504 at group 64): that point itself, which has more bits, so
    beating it beats the line. Anywhere else the line is not measured."""
    pts = sorted((r["bpw"], r["ppl"]) for b in (2, 3, 4) if (r := find(runs, group, "uniform", quantizer, bits=b)))
    v = interpolate_log(pts, bpw)
    if v is not None:
        return v, "interpolated"
    if pts and 0 <= pts[0][0] - bpw < 0.05:
        return pts[0][1], f"2-bit at BPW {pts[0][0]:.3f}"
    return None


def verdict(ppl: float | None, ref: float | None) -> str:
    if ppl is None or ref is None:
        return "not run"
    return "met" if ppl < ref else "**missed**"


def goal_rows(runs: dict) -> list[dict]:
    """One row per (group, quantizer, BPW, SFMP levels): SFMP's PPL against layer-wise and the uniform
    line of the same group and quantizer."""
    rows = []
    for g in GROUPS:
        for q in QUANTIZERS:
            for bpw in BPWS:
                lw = find(runs, g, "layerwise", q, bpw=bpw)
                line = uniform_line(runs, g, q, bpw)
                has_uniform = any(find(runs, g, "uniform", q, bits=b) for b in (2, 3, 4))
                for lv in (3, 2):
                    sf = find(runs, g, "sfmp", q, levels=lv, bpw=bpw)
                    s = sf["ppl"] if sf else None
                    rows.append({"group": g, "quantizer": q, "bpw": bpw, "levels": lv, "sfmp": s,
                                 "layerwise": lw["ppl"] if lw else None,
                                 "uniform": line[0] if line else None, "uniform_how": line[1] if line else "",
                                 "vs_layerwise": verdict(s, lw["ppl"] if lw else None),
                                 "vs_uniform": verdict(s, line[0]) if line else
                                 "not run" if sf is None or not has_uniform else "line not measured here"})
    return rows


def _f(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def goals_table(runs: dict) -> str:
    out = ["| group | quantizer | BPW | SFMP levels | SFMP PPL | layer-wise PPL | beats layer-wise | uniform line PPL | beats uniform line |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in goal_rows(runs):
        how = f" ({r['uniform_how']})" if r["uniform_how"] and r["uniform_how"] != "interpolated" else ""
        out.append(f"| {r['group']} | {r['quantizer'].upper()} | {r['bpw']} | {r['levels']} | {_f(r['sfmp'])} | "
                   f"{_f(r['layerwise'])} | {r['vs_layerwise']} | {_f(r['uniform'])}{how} | {r['vs_uniform']} |")
    return "\n".join(out)


def other_goals(runs: dict, fp32_ppl: float) -> list[str]:
    """BPW 4.0 against the best uniform 4-bit at BPW >= 4.5 and against llama.cpp Q3_K_M; the moonshot."""
    u45 = [r for r in runs.values() if r["method"] == "uniform" and r["weight_bits"] == 4 and r["bpw"] >= 4.49]
    best = min(u45, key=lambda r: r["ppl"]) if u45 else None
    q3km = dict((n, p) for n, _, p in LLAMA_CPP)["Q3_K_M"]
    lines = []
    for g in GROUPS:
        for q in QUANTIZERS:
            for lv in (3, 2):
                r = find(runs, g, "sfmp", q, levels=lv, bpw=4.0)
                name = f"g{g} SFMP {lv}-level {q.upper()} @4.0"
                if r is None:
                    lines.append(f"- {name}: not run")
                    continue
                a = (f"≤ best uniform 4-bit at BPW ≥ 4.5 (g{best['group_size']} {best['quantizer'].upper()}, "
                     f"BPW {best['bpw']:.3f}, {best['ppl']:.2f}): {'met' if r['ppl'] <= best['ppl'] else '**missed**'}"
                     if best else "uniform 4-bit at BPW ≥ 4.5: not run")
                lines.append(f"- {name}: PPL {r['ppl']:.2f}; {a}; ≤ llama.cpp Q3_K_M ({q3km:.2f} at 4.63): "
                             f"{'met' if r['ppl'] <= q3km else '**missed**'}")
    for q in QUANTIZERS:
        for lv in (3, 2):
            r = find(runs, 128, "sfmp", q, levels=lv, bpw=2.5)
            name = f"Moonshot, g128 SFMP {lv}-level {q.upper()} @2.5 ≤ 2 × fp32 ({2 * fp32_ppl:.2f})"
            lines.append(f"- {name}: " + ("not run" if r is None else
                                          f"PPL {r['ppl']:.2f}: {'met' if r['ppl'] <= 2 * fp32_ppl else '**missed**'}"))
    return lines


# ---- the table and the plot ------------------------------------------------------------------------

def _row_order(r: dict):
    return (GROUPS.index(r["group_size"]) if r["group_size"] in GROUPS else len(GROUPS), r["method"] != "uniform",
            r["method"], r["quantizer"], r.get("levels") or 0, r.get("salience") or "", r["bpw"], r.get("tag") or "")


def table(data: dict) -> str:
    runs = data["runs"]
    head = ("| group | method | quantizer | salience | BPW | code bits | PPL | KL | MiB (linears) | format | alloc s | quant s | total s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    out = [head]
    fp = fp32(data)
    mib = next(iter(runs.values()))["fp32_linear_bytes"] / 2**20 if runs else float("nan")
    out.append(f"| - | fp32 | - | - | 32 | 32 | {fp:.2f} | 0 | {mib:.1f} | - | - | - | - |")
    for n, bpw, ppl in LLAMA_CPP:
        out.append(f"| - | llama.cpp {n} | llama.cpp | - | {bpw:.2f} (linears) | - | {ppl:.2f} | - | - | GGUF | - | - | - |")
    for r in sorted(runs.values(), key=_row_order):
        out.append(f"| {r['group_size']} | {r['label']} | {r['quantizer']} | {r.get('salience') or '-'} | {r['bpw']:.3f} | "
                   f"{r['weight_bits']:.3f} | {r['ppl']:.2f} | {r['kl']:.4f} | {r['quantized_bytes'] / 2**20:.2f} | "
                   f"v{r['format_version']} | {r['alloc_s']:.2f} | {r['quant_s']:.0f} | {r['total_s']:.0f} |")
    return "\n".join(out)


def fp32(data: dict) -> float:
    return next(iter(data["setups"].values()))["fp32"]["ppl"]


SERIES = {"uniform": "uniform", "layerwise": "layer-wise (Fisher)"}


def plot(data: dict, path: Path) -> None:
    """PPL vs BPW, one panel per (group, quantizer), the grid's series only; llama.cpp on every panel."""
    from sfmp_compile.eval.plots import plot_ppl_panels
    panels = {}
    for g in GROUPS:
        for q in QUANTIZERS:
            rows = []
            for c in grid_cells():
                r = cell_run(data["runs"], c)
                if c[0] == g and c[2] == q and r is not None:
                    rows.append({"series": SERIES.get(c[1], f"SFMP {c[3]}-level (Fisher)"), "bpw": r["bpw"], "ppl": r["ppl"]})
            panels[f"SmolLM2-135M, group {g}{' (default)' if g == 128 else ''}, {q.upper()}"] = rows
    peers = [{"label": f"llama.cpp {n}", "bpw": b, "ppl": p} for n, b, p in LLAMA_CPP]
    plot_ppl_panels(panels, str(path), fp32(data), peers, ylim=(15, 300))


# ---- the section -----------------------------------------------------------------------------------

def formats_sentence(runs: dict) -> str:
    """Which rows were measured with which packed format (v1 stored int32 permutations)."""
    v1 = [r for r in runs.values() if r["format_version"] == 1]
    grid_v1 = [r for r in v1 if not r.get("tag") and r["method"] == "sfmp"]
    text = ("Format v2 stores a regrouped order as a few bits per row/column (docs/FORMAT.md); v1 stored int32 "
            "permutations, 0.092 BPW on SmolLM2's shapes at full reordering, so at equal BPW a v1 SFMP row has "
            "fewer code bits.")
    if not v1:
        return text + " Every row here is v2."
    if not grid_v1:
        return text + f" Every grid SFMP row is v2; the {len(v1)} v1 rows (column \"format\") are older group 64 ablations."
    return text + f" {len(grid_v1)} grid SFMP rows are still v1 (column \"format\")."


def setup_lines(data: dict) -> str:
    lines = []
    for g, s in sorted(data["setups"].items(), key=lambda kv: -int(kv[0])):
        m = s["machine"]
        n = sum(1 for r in data["runs"].values() if r["group_size"] == int(g))
        wall = sum(r.get("wall_s", 0) for r in data["runs"].values() if r["group_size"] == int(g))
        lines.append(f"- group {g}, block rows {s['block_rows']}: {n} runs, summed run wall time {wall / 60:.0f} min; "
                     f"{m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, {m['threads']} thread per process, "
                     f"load average {m['loadavg_at_start'][0]:.1f} at start. Command: {s['command']}")
    return "\n".join(lines)


def report(data: dict, results_md: Path, png: Path, sections: str = "") -> None:
    """Rewrite the section between BEGIN and END of ``results_md`` (appended if absent) and the PNG.
    ``sections``: further markdown (analysis) placed after the goals."""
    plot(data, png)
    s = next(iter(data["setups"].values()))
    sal = data.get("saliences_s", {})
    miss = not_run(data["runs"])
    text = f"""{BEGIN}
## Quality on SmolLM2

SmolLM2-135M-Instruct (fp32 from the Q4_1 GGUF) at group 128 (the default users get: 512 × 128 blocks) and at
group 64; block rows 512, clip search on (E[x²]-weighted), calibration {s['calibration']}, {s['eval_tokens']}
held-out tokens from the last wiki articles, context {s['context']}. PPL and KL(fp32 ‖ quantized, nats/token) on
the held-out tokens; the quantized model is evaluated with its exact dequantized weights in fp32. BPW =
`quantization_report(model)["bpw"]`: codes, fp16 scales and zeros, row/column permutations, bit maps,
offsets. {formats_sentence(data['runs'])} SFMP's BPW target is
converted to a code-bit target on the plan itself (`budget.code_bits_for_bpw`); layer-wise uses the same
budget (identity orders). 3-level widths: `quantize.default_bit_choices` of the code-bit target b, (⌊b⌋, ⌊b⌋+1, ⌊b⌋+2) (the widths section
below), the same for layer-wise; blocks ranked by salience per weight.
Shared salience (not charged to either method): moments {s['moments_s']:.0f} s, Fisher
{sal.get('fisher', float('nan')):.0f} s, cached on disk and reused across groups. fp32 PPL {fp32(data):.2f}.

{setup_lines(data)}

llama.cpp rows: {LLAMA_CPP_SOURCE}. It cannot go below ~4.23 BPW on this model (k-/i-quants need
multiples of 256; SmolLM2 is 576 wide, so they fall back to 32-wide Q4_0/Q5_0/IQ4_NL blocks).

**Caveat: the source weights are on a 4-bit grid.** SmolLM2's "fp32" weights are the dequantized Q4_1 GGUF
(asymmetric 4-bit, groups of 32): a quantizer on that same grid reproduces them almost exactly (llama.cpp
Q4_1: PPL 18.28 vs fp32 18.20). This favours llama.cpp's rows (their 32-wide blocks can sit on or near the
source grid; Q5_1 blocks contain it exactly) and, among ours, 4-bit rows and the smaller group (a 4-bit
group-64 grid reproduces two source groups when their ranges agree; a 128-wide one rarely does). Our rows
at 2-3 bits and at group 128 get no such help, so the distance from llama.cpp at ≥ 4 BPW overstates what it
would be on a model trained in float.

{table(data)}

Grid cells not run (missing, not filled): {', '.join(miss) if miss else 'none'}.

![PPL vs BPW]({png.name}) (points above PPL 300 are off the chart; the table has them)

### Goals (issue 10 item 3)

Same quantizer, same group, same grid. "Uniform line": log-PPL interpolated in BPW between the uniform
points of the same group and quantizer; "met" means strictly lower PPL.

{goals_table(data['runs'])}

{chr(10).join(other_goals(data['runs'], fp32(data)))}
{sections}
{END}"""
    old = results_md.read_text() if results_md.exists() else "# Results\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    results_md.write_text(new)


def reorder_table(study: dict) -> str:
    lines = ["| layer type | clip | output error, original → sorted | weight error, original → sorted | "
             "output error on the top-64 salience columns, original → sorted | mean step on those columns |",
             "|---|---|---|---|---|---|"]
    for t, r in study.items():
        for clip in ("", "+clip"):
            o, s = r["original" + clip], r["sorted" + clip]
            lines.append(f"| {t} | {'yes' if clip else 'no'} | {o['out_err']:.0f} → {s['out_err']:.0f} "
                         f"({(s['out_err'] / o['out_err'] - 1) * 100:+.0f} %) | {o['w_err']:.0f} → {s['w_err']:.0f} "
                         f"({(s['w_err'] / o['w_err'] - 1) * 100:+.0f} %) | {o['out_err_top_cols']:.0f} → "
                         f"{s['out_err_top_cols']:.0f} | {o['step_top_cols'] / o['n']:.4f} → {s['step_top_cols'] / s['n']:.4f} |")
    return "\n".join(lines)
