"""Prose of the "Quality on SmolLM2" section: what the runs say, every number read from the JSON's runs
(so the text cannot drift from them; a run that is missing reads nan)."""
from __future__ import annotations

from quality_report import ABLATION_BPW, reorder_table

def analysis_g64(data) -> str:
    """What the group 64 table says, with its numbers pulled from the runs (so it cannot drift from them)."""
    runs = data["runs"]

    def g(k, f="ppl"):
        r = runs.get(k)
        return float("nan") if r is None else r[f]

    return f"""
### Reading the group 64 table (format v1)

- **Allocation cost.** Beyond the shared salience, SFMP's allocation is one reorder + one global
  quantile/scan: {g('sfmp3-fisher-rtn-3.5', 'alloc_s'):.1f} s at BPW 3.5 (most of it the per-layer argsorts).
  Layer-wise mixed precision must first quantize every layer at every candidate width to measure its
  error, then solve the knapsack: {g('layerwise-fisher-rtn-3.5', 'alloc_s'):.0f} s at BPW 3.5
  (measurement {g('layerwise-fisher-rtn-3.5', 'measure_s'):.0f} s, dynamic programme {g('layerwise-fisher-rtn-3.5', 'dp_s'):.3f} s).
  (SFMP's conversion of a BPW target into a code-bit target re-runs the plan ~20 times in a bisection:
  {g('sfmp3-fisher-rtn-3.5', 'bpw_targeting_s'):.0f} s, a cost of targeting BPW exactly, not of the method;
  a user who asks for code bits pays one plan.)
- **Permutations are expensive on a 135M model.** Row + column permutations are int32 per row and per
  column: 32(N+K)/(NK) bits per weight, 0.092 BPW summed over SmolLM2's shapes (0.016 for a 4096×4096
  layer). At equal BPW full SFMP therefore has fewer code bits than layer-wise (BPW 4.0:
  {g('sfmp3-fisher-rtn-4.0', 'weight_bits'):.3f} vs {g('layerwise-fisher-rtn-4.0', 'weight_bits'):.3f}). Ablations at
  BPW 3.5 / 4.0 (RTN): full SFMP {g('sfmp3-fisher-rtn-3.5'):.2f} / {g('sfmp3-fisher-rtn-4.0'):.2f}; no row reorder
  {g('sfmp3-fisher-rtn-3.5-norow'):.2f} / {g('sfmp3-fisher-rtn-4.0-norow'):.2f}; no reordering at all
  {g('sfmp3-fisher-rtn-3.5-noperm'):.2f} / {g('sfmp3-fisher-rtn-4.0-noperm'):.2f}; layer-wise
  {g('layerwise-fisher-rtn-3.5'):.2f} / {g('layerwise-fisher-rtn-4.0'):.2f}. At BPW 3.0 reordering pays for
  itself ({g('sfmp3-fisher-rtn-3.0'):.2f} with, {g('sfmp3-fisher-rtn-3.0-noperm'):.2f} without). Format v2,
  written after these rows, stores a regrouped order as a few bits per row/column (docs/FORMAT.md): the
  group 128 rows have it; these group 64 rows were not rerun.
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


def analysis_g128(data) -> str:
    """What the group 128 rows say next to group 64: the cells both groups have, side by side."""
    from quality_report import cell_name, cell_run, grid_cells
    runs = data["runs"]
    pairs = []
    for c in grid_cells():
        if c[0] != 128:
            continue
        a, b = cell_run(runs, c), cell_run(runs, (64,) + c[1:])
        if a and b:
            pairs.append(f"{cell_name(c)[5:]}: {a['ppl']:.2f} (BPW {a['bpw']:.3f}) vs {b['ppl']:.2f} (BPW {b['bpw']:.3f})")
    if not pairs:
        return ""
    return ("\n### Group 128 next to group 64\n\nPPL at group 128 vs group 64, same cell: "
            + "; ".join(pairs) + ".\n")
