"""Prose of the "Quality on SmolLM2" section: what the runs say, every number read from the JSON's runs
(so the text cannot drift from them; a run that is missing reads nan)."""
from __future__ import annotations

import math
from functools import partial

from quality_report import ABLATION_BPW, reorder_table


def _field(runs: dict, key: str, field: str = "ppl") -> float:
    """runs[key][field], or nan for a run that is missing (the prose then reads nan, never a stale number)."""
    r = runs.get(key)
    return float("nan") if r is None else r[field]

def analysis_g64(data) -> str:
    """What the group 64 table says, with its numbers pulled from the runs (so it cannot drift from them)."""
    runs = data["runs"]

    g = partial(_field, runs)

    return f"""
### Reading the group 64 table

- **Allocation cost.** Beyond the shared salience, SFMP's allocation is one reorder + one global
  quantile/scan: {g('sfmp3-fisher-rtn-3.5', 'alloc_s'):.1f} s at BPW 3.5 (most of it the per-layer argsorts).
  Layer-wise mixed precision must first quantize every layer at every candidate width to measure its
  error, then solve the knapsack: {g('layerwise-fisher-rtn-3.5', 'alloc_s'):.0f} s at BPW 3.5
  (measurement {g('layerwise-fisher-rtn-3.5', 'measure_s'):.0f} s, dynamic programme {g('layerwise-fisher-rtn-3.5', 'dp_s'):.3f} s).
  (SFMP's conversion of a BPW target into a code-bit target re-runs the plan ~20 times in a bisection:
  {g('sfmp3-fisher-rtn-3.5', 'bpw_targeting_s'):.0f} s, a cost of targeting BPW exactly, not of the method;
  a user who asks for code bits pays one plan.)
- **Permutations.** Format v1 stored them as int32 per row and per column: 32(N+K)/(NK) bits per weight,
  0.092 BPW summed over SmolLM2's shapes (0.016 for a 4096×4096 layer), so at BPW 4.0 a v1 SFMP row had
  {g('sfmp3-fisher-rtn-4.0-sumrank', 'weight_bits'):.3f} code bits against layer-wise's {g('layerwise-fisher-rtn-4.0', 'weight_bits'):.3f}.
  Format v2 stores a regrouped order in a few bits per row/column: {g('sfmp3-fisher-rtn-4.0', 'weight_bits'):.3f} code bits now.
  Ablations at BPW 3.5 / 4.0 (RTN, v2): full SFMP {g('sfmp3-fisher-rtn-3.5'):.2f} / {g('sfmp3-fisher-rtn-4.0'):.2f}; no row
  reorder {g('sfmp3-fisher-rtn-3.5-norow'):.2f} / {g('sfmp3-fisher-rtn-4.0-norow'):.2f}; no column reorder (3.5)
  {g('sfmp3-fisher-rtn-3.5-nocol'):.2f}; no reordering at all {g('sfmp3-fisher-rtn-3.5-noperm'):.2f} /
  {g('sfmp3-fisher-rtn-4.0-noperm'):.2f}; layer-wise {g('layerwise-fisher-rtn-3.5'):.2f} / {g('layerwise-fisher-rtn-4.0'):.2f}.
  At BPW 3.0: {g('sfmp3-fisher-rtn-3.0'):.2f} with reordering, {g('sfmp3-fisher-rtn-3.0-noperm'):.2f} without.
- **GPTQ wants the salience order.** GPTQ sweeps columns in storage order, so SFMP's column sort is GPTQ's
  act-order. Uniform 3-bit GPTQ: {g('uniform-gptq-3'):.2f} in original order, {g('uniform-gptq-3-actorder'):.2f} with the
  Fisher column sort (BPW {g('uniform-gptq-3-actorder', 'bpw'):.3f}, the permutation is its g_idx). So with GPTQ the
  plan keeps the sort (`make_plan(regroup=None)` regroups only for RTN): SFMP GPTQ at BPW 3.5,
  sorted {g('sfmp3-fisher-gptq-3.5'):.2f} vs regrouped {g('sfmp3-fisher-gptq-3.5-regrouped'):.2f}.
- **Salience.** SFMP 3-level at BPW 3.5 (RTN): Fisher {g('sfmp3-fisher-rtn-3.5'):.2f}, activation
  {g('sfmp3-activation-rtn-3.5'):.2f}, weight {g('sfmp3-weight-rtn-3.5'):.2f}; activation salience compares raw
  W²·E[x²] across layers whose outputs matter very differently, and the Fisher fixes that.
  Layer-wise with activation (output-MSE) errors: {g('layerwise-activation-rtn-3.5'):.2f}.
- **BPW 2.5 is out of reach at group 64.** fp16 scale + zero per 64 weights is 0.5 BPW, leaving < 2 code
  bits: SFMP must use 1-bit blocks (3-level (1,2,3): {g('sfmp3-fisher-rtn-2.5'):.0f}, 2-level:
  {g('sfmp2-fisher-rtn-2.5'):.0f}), layer-wise stays mostly at 2 bits ({g('layerwise-fisher-rtn-2.5'):.0f}); uniform
  2-bit is {g('uniform-rtn-2'):.0f} (RTN) / {g('uniform-gptq-2'):.0f} (GPTQ) at BPW 2.504. None is usable;
  groups of 128 (0.25 BPW) are the way to this budget.
"""


def reorder_section(data) -> str:
    runs = data["runs"]
    get = lambda k: runs.get(k, {}).get("ppl", float("nan"))  # noqa: E731
    text = f"""
### Reordering at integer bits (the prototype's 3-bit regression)

At an integer width every block has the same bits, so column reordering can only change which columns
share a scale group. Sorting columns by activation salience (W²·E[x²] column sums) bundles the columns
with the largest E[x²] into the same groups. Measured (table below): plain weight error goes *down*
(similar magnitudes share a scale) but the output error ‖X(W − Ŵ)ᵀ‖² (= tr(ΔW H ΔWᵀ)/2, H from the
calibration inputs) goes *up*, and the increase sits on the top-salience columns themselves. It is
not a coarser step (the step those columns get is about the same either way) and not correlation
between rounding errors (the full error equals its diagonal part Σ E[x²]·ΔW² to within 3 %): each
(row, group) gets one fitted grid (min-max range, then the E[x²]-weighted clip search), and a grid
fitted to a group with one dominant column serves that column; in a group of 64 dominant columns it
can serve none of them in particular. The effect is largest with the clip search on (k_proj +26 %,
down_proj +24 %), the setting every run uses.

Fix (in `plan.make_plan`, `plan.regroup_orders`): after allocation, the columns (rows) of all groups
(row-blocks) with the same bit pattern are put back in original order. Which columns get which widths
is unchanged; a uniform layer gets identity orders (no permutation stored, nothing gathered), so at
integer bits SFMP is exactly the uniform baseline. PPL, RTN 3-bit: original order {get('uniform-rtn-3'):.2f},
activation-sorted columns (the prototype's behaviour) {get('uniform-rtn-3-colsorted'):.2f}; SFMP 3-level
Fisher at BPW {ABLATION_BPW}: regrouped {get(f'sfmp3-fisher-rtn-{ABLATION_BPW}'):.2f}, salience-sorted
{get(f'sfmp3-fisher-rtn-{ABLATION_BPW}-sorted'):.2f}.
"""
    st = data.get("reorder_study")
    if st:
        text += (f"\nPer layer type, summed over the 30 decoder layers, RTN {st['bits']}-bit g{st['group_size']}, "
                 f"activation-salience column sort (`python benchmarks/quality.py --reorder-study`, "
                 f"{st['seconds']:.0f} s):\n\n" + reorder_table(st["layers"]) + "\n")
    return text


def analysis_g128(data, alloc: str = "") -> str:
    """What the group 128 rows say next to group 64 (the cells both groups have, side by side), then
    ``alloc`` (the allocation study's markdown)."""
    from quality_report import cell_name, cell_run, grid_cells
    runs = data["runs"]
    pairs = []
    for c in grid_cells():
        if c[0] != 128:
            continue
        a, b = cell_run(runs, c), cell_run(runs, (64,) + c[1:])
        if a and b:
            pairs.append(f"{cell_name(c)[5:]}: {a['ppl']:.2f} (BPW {a['bpw']:.3f}) vs {b['ppl']:.2f} (BPW {b['bpw']:.3f})")
    text = "\n### Group 128 next to group 64\n\nPPL at group 128 vs group 64, same cell: " + "; ".join(pairs) + ".\n" if pairs else ""

    g = partial(_field, runs)

    if all(f"g128-{m}-fisher-rtn-{b}" in runs for m in ("sfmp3", "layerwise") for b in (3.0, 3.5, 4.0)):
        from quality_report import goal_rows
        rows = [r for r in goal_rows(runs) if r["quantizer"] == "rtn" and r["levels"] == 3]
        missed = {gr: sum("missed" in r[k] for r in rows if r["group"] == gr for k in ("vs_layerwise", "vs_uniform"))
                  for gr in (128, 64)}
        both = [(g(f"g128-sfmp{lv}-fisher-rtn-{b}"), g(f"sfmp{lv}-fisher-rtn-{b}")) for lv in (3, 2) for b in (2.5, 3.0, 3.5, 4.0)]
        both = [p for p in both if p[0] == p[0] and p[1] == p[1]]  # both measured (nan != nan)
        wins = sum(a < b for a, b in both)
        fmt = {gr: sorted({r["format_version"] for r in runs.values() if r["group_size"] == gr and r["method"] == "sfmp"
                           and not r.get("tag")}) for gr in (128, 64)}
        text += f"""
With RTN, SFMP 3-level misses {missed[128]} of its 8 comparisons (layer-wise and uniform line at 4 BPWs) at
group 128 and {missed[64]} of 8 at group 64 (grid SFMP rows in format {'/'.join(f'v{v}' for v in fmt[128])} and
{'/'.join(f'v{v}' for v in fmt[64])}). Group 128 leaves more code bits at each BPW (BPW 3.5:
{g('g128-sfmp3-fisher-rtn-3.5', 'weight_bits'):.3f} vs {g('sfmp3-fisher-rtn-3.5', 'weight_bits'):.3f}): its RTN SFMP
row is the better one in {wins} of {len(both)} cells both groups have, while uniform RTN is better at group 64
at equal width (paying 0.23 BPW more for it). The 2-level scheme at BPW 3.0: {g('g128-sfmp2-fisher-rtn-3.0'):.2f}, layer-wise
{g('g128-layerwise-fisher-rtn-3.0'):.2f}, with v_proj at {runs['g128-sfmp2-fisher-rtn-3.0']['bits_by_type']['v_proj']:.2f}
bits against layer-wise's {runs['g128-layerwise-fisher-rtn-3.0']['bits_by_type']['v_proj']:.2f}.
"""
    return text + alloc


def _line(runs, group, bpw):
    from quality_report import uniform_line
    v = uniform_line(runs, group, "rtn", bpw)
    return float("nan") if v is None else v[0]


def alloc_study(fisher: dict, bits: float = 3.25, group_size: int = 128, block_rows: int = 512) -> dict:
    """Allocation only (no quantization, no model): the code bits per layer type that SFMP's global
    ranking gives at ``bits`` average code bits when blocks are ranked by their salience SUM (the paper,
    ``rank="sum"``) and by their salience per weight (sum / real weights, ``allocate``'s default). The two agree
    when every block is full; on ragged shapes (SmolLM2's k/v have 192 rows < 512 block rows) the sum
    ranks a small block low for its size alone. Also the mean Fisher per weight of each layer type.
    fisher: name -> fp32 [N, K] (the cached ``fisher_salience``)."""
    from sfmp_compile.allocation import allocate
    from sfmp_compile.blocks import BlockGrid
    from sfmp_compile.eval.report import layer_type
    from sfmp_compile.reordering import salience_orders
    orders = salience_orders(fisher)
    blocks = {}
    for n, s in fisher.items():
        g = BlockGrid(s.shape[0], s.shape[1], block_rows, group_size)
        blocks[n] = (g.block_sums(s, *orders[n]), g.weight_counts())

    def by_type(maps):
        acc: dict = {}
        for n, m in maps.items():
            c = blocks[n][1]
            a = acc.setdefault(layer_type(n), [0.0, 0])
            a[0] += float((m.long() * c).sum())
            a[1] += int(c.sum())
        return {t: a / b for t, (a, b) in acc.items()}

    mean_f: dict = {}
    for n, s in fisher.items():
        a = mean_f.setdefault(layer_type(n), [0.0, 0])
        a[0] += float(s.double().sum())
        a[1] += s.numel()
    out = {"bits": bits, "group_size": group_size, "block_rows": block_rows,
           "mean_fisher": {t: a / b for t, (a, b) in mean_f.items()}, "levels": {}}
    for name, ch in (("3", (2, 3, 4)), ("2", None)):
        out["levels"][name] = {r: by_type(allocate(blocks, bits, ch, rank=r)) for r in ("sum", "per_weight")}
    return out


def alloc_section(study: dict | None, data: dict) -> str:
    """The allocation study as a table, with the layer-wise search's bits beside it where it ran."""
    if not study:
        return ""
    types = list(study["mean_fisher"])
    lw = [r for r in data["runs"].values() if r["method"] == "layerwise" and r["quantizer"] == "rtn"
          and r["group_size"] == study["group_size"] and r.get("salience") == "fisher" and r.get("target_bpw") == 3.5]
    lines = ["| | " + " | ".join(types) + " |", "|---|" + "---|" * len(types),
             "| mean Fisher per weight (×1e-6) | " + " | ".join(f"{study['mean_fisher'][t] * 1e6:.2f}" for t in types) + " |"]
    for lv, d in study["levels"].items():
        for how, label in (("sum", "ranked by block sum (the paper)"), ("per_weight", "ranked by salience per weight (default)")):
            lines.append(f"| SFMP {lv}-level, {label} | " + " | ".join(f"{d[how][t]:.2f}" for t in types) + " |")
    for r in lw:
        lines.append(f"| layer-wise RTN @3.5 (measured run, {r['weight_bits']:.3f} code bits) | "
                     + " | ".join(f"{r['bits_by_type'].get(t, float('nan')):.2f}" for t in types) + " |")
    return (f"\nCode bits per layer type from the allocation alone at {study['bits']} average code bits, group "
            f"{study['group_size']}, block rows {study['block_rows']} (`python benchmarks/quality.py --alloc-study`, "
            "Fisher from the cache; no quantization):\n\n" + "\n".join(lines) + "\n")


def missed_lines(data) -> list[str]:
    """Each missed goal cell: SFMP's code bits and its k/v bits against layer-wise at the same BPW
    (the cell's bits_by_type; what the layer-wise search spent differently)."""
    from quality_report import find, goal_rows
    runs, out = data["runs"], []
    for row in goal_rows(runs):
        if "missed" not in row["vs_layerwise"] + row["vs_uniform"]:
            continue
        g, q, bpw, lv = row["group"], row["quantizer"], row["bpw"], row["levels"]
        sf = find(runs, g, "sfmp", q, levels=lv, bpw=bpw)
        lw = find(runs, g, "layerwise", q, bpw=bpw)
        what = [k for k in ("layer-wise", "uniform line") if "missed" in row["vs_" + k.split()[0].replace("-", "")]]
        line = (f"- g{g} {q.upper()} @{bpw}, SFMP {lv}-level {sf['ppl']:.2f} misses {' and '.join(what)}: "
                f"code bits {sf['weight_bits']:.3f}")
        bt = sf["bits_by_type"]
        if lw:
            lt = lw["bits_by_type"]
            line += (f" vs layer-wise {lw['weight_bits']:.3f}; k_proj / v_proj {bt['k_proj']:.2f} / {bt['v_proj']:.2f} vs "
                     f"{lt['k_proj']:.2f} / {lt['v_proj']:.2f}")
        else:
            line += f"; k_proj / v_proj {bt['k_proj']:.2f} / {bt['v_proj']:.2f}"
        out.append(line)
    return out


def _why(data, row) -> str:
    """What a missed cell's own runs say about it (the reasons this table has met so far)."""
    from quality_report import find
    runs = data["runs"]
    g, q, bpw, lv = row["group"], row["quantizer"], row["bpw"], row["levels"]
    sf = find(runs, g, "sfmp", q, levels=lv, bpw=bpw)
    b = sf["code_bits_target"]
    if lv == 2 and abs(b - round(b)) < 0.05:
        lo = math.floor(b)
        three = find(runs, g, "sfmp", q, levels=3, bpw=bpw)
        alt = f"; the 3-level run of the same cell reads {three['ppl']:.2f}" if three else ""
        return (f"the 2-level widths at {b:.3f} code bits are {{{lo}, {lo + 1}}} with {(lo + 1 - b) * 100:.1f} % of the "
                f"weights at width {lo}: near-uniform {lo + 1}-bit by construction, and no layer can get the "
                f"{lo + 2}-bit width that layer-wise's choices give k/v{alt}")
    return "see the k/v bits against layer-wise's in the line above"


def missed_section(data, study: dict | None) -> str:
    """Where a goal is missed: the per-cell evidence (``missed_lines``) and what each cell's runs say."""
    from quality_report import goal_rows
    lines = missed_lines(data)
    if not lines:
        return ""
    whys = [f"- g{r['group']} {r['quantizer'].upper()} @{r['bpw']}, {r['levels']}-level: {_why(data, r)}."
            for r in goal_rows(data["runs"]) if "missed" in r["vs_layerwise"] + r["vs_uniform"]]
    return ("\n### Where the goals are missed, and why\n\n" + "\n".join(lines) + "\n\nWhat each cell's runs say:\n\n"
            + "\n".join(whys) + "\n\nBefore blocks were ranked per weight, every missed RTN cell had one signature: "
            "the layer-wise search spent far more bits on the small k/v projections than SFMP did, because ranking by "
            "block sum under-ranks their 192-row blocks (the allocation study above and the ranking section).\n")


def rank_rows(data) -> list[dict]:
    """Each grid cell measured both ways: the per-weight run (the grid key) beside its ``-sumrank``
    twin (ranked by block sum, from before the change), with their PPL and k/v code bits."""
    runs, out = data["runs"], []
    for key, old in runs.items():
        if not key.endswith("-sumrank"):
            continue
        base = key[: -len("-sumrank")]
        ch = "".join(map(str, old.get("bit_choices") or ()))
        twins = [runs.get(base), runs.get(f"{base}-w{ch}")]  # the same widths: only the ranking differs
        new = next((t for t in twins if t and t.get("rank") == "per_weight" and t.get("bit_choices") == old.get("bit_choices")), None)
        if new is None:
            continue
        out.append({"key": new["key"], "group": new["group_size"], "label": new["label"], "sum": old, "per_weight": new})
    return sorted(out, key=lambda r: (-r["group"], r["per_weight"]["quantizer"], r["per_weight"]["target_bpw"],
                                      -r["per_weight"]["levels"], r["key"]))


def rank_section(data) -> str:
    """The ranking change measured cell by cell (``rank_rows``)."""
    rows = rank_rows(data)
    if not rows:
        return ""
    lines = ["| group | run | PPL, ranked by sum | PPL, per weight | change | v_proj bits (sum → per weight) | "
             "k_proj bits | formats |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["sum"], r["per_weight"]
        ba, bb = a["bits_by_type"], b["bits_by_type"]
        lines.append(f"| {r['group']} | {b['label']} | {a['ppl']:.2f} | {b['ppl']:.2f} | {(b['ppl'] / a['ppl'] - 1) * 100:+.1f} % | "
                     f"{ba['v_proj']:.2f} → {bb['v_proj']:.2f} | {ba['k_proj']:.2f} → {bb['k_proj']:.2f} | "
                     f"v{a['format_version']} → v{b['format_version']} |")
    same = [r for r in rows if r["sum"]["format_version"] == r["per_weight"]["format_version"]]
    better = sum(r["per_weight"]["ppl"] < r["sum"]["ppl"] for r in same)
    return f"""
### Ranking blocks by salience per weight (now the default)

`allocation.allocate` ranks blocks by salience per weight (block sum ÷ real weights, `rank="per_weight"`,
the default); the paper's order by block sum stays one option away (`QuantConfig(rank="sum")`). The budget
is counted in weights, so per weight is the greedy order that buys the most salience per bit, and the two
orders coincide wherever every block is full (the paper's setting; property-tested). They differ on ragged
blocks: SmolLM2's k/v projections have 192 rows, so each of their blocks is 37.5 % of a 512-row block and,
ranked by sum, looks 2.7× less salient than it is. Every cell measured both ways (the sum-ranked runs are the
table's "ranked by block sum (the paper)" rows; at group 64 they also predate format v2, so there the change
mixes the ranking with v2's cheaper permutations, see the formats column):

{chr(10).join(lines)}

Where only the ranking differs (same format): per weight is better in {better} of {len(same)} cells.
"""


def widths_table(data) -> str:
    """PPL of SFMP 3-level (Fisher, per-weight ranking) per width set, for every cell measured with more
    than one set; the set ``default_bit_choices`` gives the cell in bold."""
    from sfmp_compile.quantize import default_bit_choices
    cells: dict = {}
    for r in data["runs"].values():
        if (r["method"] == "sfmp" and r.get("levels") == 3 and r.get("salience") == "fisher" and r.get("rank") == "per_weight"
                and (not r.get("tag") or r["tag"].startswith("widths"))):
            c = cells.setdefault((r["group_size"], r["quantizer"], r["target_bpw"]), {"bits": r["code_bits_target"]})
            c[tuple(r["bit_choices"])] = r["ppl"]
    sets = [(1, 2, 3), (2, 3, 4), (3, 4, 5)]
    lines = ["| group | quantizer | BPW | code bits | " + " | ".join(map(str, sets)) + " |", "|---|---|---|---|---|---|---|"]
    for (g, q, bpw), c in sorted(cells.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2])):
        if sum(ch in c for ch in sets) < 2:
            continue
        d = default_bit_choices(c["bits"])
        vals = [("-" if ch not in c else (f"**{c[ch]:.2f}**" if ch == d else f"{c[ch]:.2f}")) for ch in sets]
        lines.append(f"| {g} | {q.upper()} | {bpw} | {c['bits']:.2f} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def goal40_section(data) -> str:
    """The three widths (what was tried, what became the default), then BPW 4.0 against uniform 4-bit
    at 4.5 and against llama.cpp."""
    runs = data["runs"]

    g = partial(_field, runs)

    return f"""
### The three widths, and BPW 4.0 against uniform 4-bit at BPW 4.5 and llama.cpp

The 3-level scheme's widths, per cell measured with more than one set (SFMP 3-level, Fisher; in bold the set
`quantize.default_bit_choices` now gives the cell's code bits b: (⌊b⌋, ⌊b⌋ + 1, ⌊b⌋ + 2), the 2-level
scheme's two widths plus one above; the paper's (2, 3, 4) wherever 2 ≤ b < 3):

{widths_table(data)}

Why: the scan's proxy loss Σ S / (2^b − 1)² rates a width below ⌊b⌋ far cheaper than RTN and GPTQ make
it (at 1 and 2 bits most of all), so a set reaching under ⌊b⌋ puts its least salient blocks on a width
that costs more than the budget it frees, while the width above ⌈b⌉ goes to the most salient blocks
(v_proj above all: its Fisher per weight is far above the other types', the allocation study) and pays. Where the rule changed a grid cell's widths
(BPW 3.5 and 4.0 at group 128, 4.0 at group 64) the grid rows were rerun with it (they repeat the "widths
(3, 4, 5)" ablations), the earlier rows are kept as "widths (2, 3, 4)", and layer-wise, whose choices
follow the same rule, was rerun too.

**BPW 4.0 against uniform 4-bit at BPW 4.5.** SFMP 3-level GPTQ at BPW 4.0: {g('g128-sfmp3-fisher-gptq-4.0'):.2f} at
group 128 ({g('g128-sfmp3-fisher-gptq-4.0', 'weight_bits'):.3f} code bits); uniform 4-bit GPTQ {g('g128-uniform-gptq-4'):.2f} at group 128
(BPW {g('g128-uniform-gptq-4', 'bpw'):.3f}) and {g('uniform-gptq-4'):.2f} at group 64 (BPW {g('uniform-gptq-4', 'bpw'):.3f}). With the
paper's widths SFMP read {g('g128-sfmp3-fisher-gptq-4.0-w234'):.2f}. llama.cpp Q3_K_M: 20.66 at 4.63 BPW, 32-wide blocks
on the source grid (the caveat above): SFMP at 0.63 BPW less is {(g('g128-sfmp3-fisher-gptq-4.0') / 20.66 - 1) * 100:+.1f} % from it in PPL.
Other leads from the issue, measured:
- salience weighted by the Hessian's diagonal is the activation salience (W² · E[x²], E[x²] = diag H / 2):
  {g('sfmp3-activation-rtn-3.5'):.2f} against Fisher's {g('sfmp3-fisher-rtn-3.5'):.2f} (group 64, RTN, BPW 3.5) and weight
  salience's {g('sfmp3-weight-rtn-3.5'):.2f}: not the way;
- the clip search already runs inside GPTQ (each group's shrink ratio on the error-updated weights).
"""
