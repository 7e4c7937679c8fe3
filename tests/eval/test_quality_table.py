"""benchmarks/quality.py's bookkeeping, with no model run: the run grid per group, the migration of the
group 64 JSON, shard merging, and the report's cells, goals and section (quality_report.py)."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
import quality_report as qr  # noqa: E402

MACHINE = {"platform": "test", "cpu_count": 2, "torch": "x", "threads": 1, "python": "3", "loadavg_at_start": [1.0, 1, 1]}


def setup(group):
    return {"model": "smollm2", "group_size": group, "block_rows": 512, "calibration": "16x512 tokens",
            "eval_tokens": 8192, "context": 512, "fp32": {"ppl": 18.2}, "moments_s": 60.0, "machine": MACHINE,
            "command": "python benchmarks/quality.py", "wall_s": 1.0}


def rec(method, quantizer, ppl, bpw, group=128, levels=None, target=None, bits=None, tag=None, salience="fisher"):
    r = {"method": method, "quantizer": quantizer, "ppl": ppl, "kl": 0.5, "bpw": bpw, "group_size": group,
         "block_rows": 512, "format_version": 2, "weight_bits": float(bits) if bits else bpw - 0.3,
         "quantized_bytes": 2**20, "fp32_linear_bytes": 2**22, "alloc_s": 1.0, "quant_s": 2.0, "total_s": 3.0,
         "label": f"{method} {quantizer} {target or bits}", "wall_s": 60.0,
         "salience": None if method == "uniform" else salience, "target_bpw": target,
         "levels": 1 if method == "uniform" else levels}
    if tag is not None:
        r["tag"] = tag
    return r


def runs_of(*records):
    return {f"k{i}": r for i, r in enumerate(records)}


class CallBench:
    """Stands in for experiments.Bench: a spec's record says which method call it made."""

    def uniform(self, bits, quantizer="rtn"):
        return {"call": ("uniform", bits, quantizer)}

    def sfmp(self, bpw, salience="fisher", levels=3, quantizer="rtn", **kw):
        return {"call": ("sfmp", bpw, salience, levels, quantizer), "kw": kw}

    def layerwise(self, bpw, salience="fisher", quantizer="rtn"):
        return {"call": ("layerwise", bpw, salience, quantizer)}


def test_group_128_specs_are_the_whole_grid_keyed_by_group_and_call_what_their_key_says():
    widths = [k for k, _ in quality.run_specs(128) if k[-5:-3] == "-w" and k[-3:].isdigit()]
    assert len(widths) == 6  # the 3-level widths ablations (RTN and GPTQ at 2.5, 3.5, 4.0), not grid cells
    specs = [s for s in quality.run_specs(128) if s[0] not in widths]
    keys = [k for k, _ in specs]
    assert len(set(keys)) == len(keys) == 30 and all(k.startswith("g128-") for k in keys)
    calls = {k: fn(CallBench())["call"] for k, fn in specs}
    want = {("uniform", b, q) for b in (2, 3, 4) for q in ("rtn", "gptq")}
    want |= {("sfmp", bpw, "fisher", lv, q) for bpw in qr.BPWS for lv in (3, 2) for q in ("rtn", "gptq")}
    want |= {("layerwise", bpw, "fisher", q) for bpw in qr.BPWS for q in ("rtn", "gptq")}
    assert set(calls.values()) == want  # every cell once, nothing else
    for k, c in calls.items():  # the key names the call (no late-bound lambda variable)
        method = {"uniform": "uniform", "layerwise": "layerwise", "sfmp": f"sfmp{c[3] if c[0] == 'sfmp' else ''}"}[c[0]]
        assert k.startswith(f"g128-{method}-") and k.endswith(f"-{c[1]}") and c[-1] in k
    # value order: uniform RTN first, every RTN cell before any GPTQ cell
    assert [calls[k][0] for k in keys[:3]] == ["uniform"] * 3
    first_gptq = next(i for i, k in enumerate(keys) if calls[k][-1] == "gptq")
    assert all(calls[k][-1] == "gptq" for k in keys[first_gptq:])


def test_group_64_specs_keep_their_legacy_keys():
    keys = [k for k, _ in quality.run_specs(64)]
    assert keys[0] == "uniform-rtn-2" and "sfmp3-fisher-rtn-3.5-norow" in keys and not any(k.startswith("g") for k in keys)


def test_migrate_backfills_the_legacy_group_and_keeps_new_records():
    old = rec("uniform", "rtn", 30.0, 3.504, bits=3)
    for k in ("group_size", "block_rows", "format_version"):
        old.pop(k)
    new = rec("uniform", "rtn", 31.0, 3.25, bits=3, group=128)
    data = {"setup": setup(64), "runs": {"uniform-rtn-3": old, "g128-uniform-rtn-3": new}}
    out = quality.migrate(json.loads(json.dumps(data)))
    assert "setup" not in out and set(out["setups"]) == {"64"}
    r = out["runs"]["uniform-rtn-3"]
    assert (r["group_size"], r["block_rows"], r["format_version"]) == (64, 512, 1)
    assert out["runs"]["g128-uniform-rtn-3"]["group_size"] == 128 and out["runs"]["g128-uniform-rtn-3"]["format_version"] == 2
    assert quality.migrate(json.loads(json.dumps(out))) == out  # idempotent


def test_migrate_refuses_a_record_with_no_group_to_take():
    r = rec("uniform", "rtn", 30.0, 3.5, bits=3)
    r.pop("group_size")
    with pytest.raises(ValueError, match="no group_size"):
        quality.migrate({"runs": {"x": r}, "setups": {}})


def test_find_takes_grid_runs_only():
    runs = runs_of(rec("sfmp", "rtn", 30.0, 3.5, levels=3, target=3.5, tag="no row reorder"),
                   rec("sfmp", "rtn", 31.0, 3.5, levels=3, target=3.5, salience="activation"),
                   rec("sfmp", "rtn", 32.0, 3.5, levels=3, target=3.5, group=64))
    assert qr.find(runs, 128, "sfmp", "rtn", levels=3, bpw=3.5) is None
    runs["grid"] = rec("sfmp", "rtn", 33.0, 3.5, levels=3, target=3.5, tag="")
    assert qr.find(runs, 128, "sfmp", "rtn", levels=3, bpw=3.5)["ppl"] == 33.0
    assert qr.find(runs, 64, "sfmp", "rtn", levels=3, bpw=3.5)["ppl"] == 32.0
    assert qr.find(runs, 128, "sfmp", "rtn", levels=2, bpw=3.5) is None


def test_uniform_line_interpolates_log_ppl_and_reads_the_point_just_above():
    runs = runs_of(rec("uniform", "rtn", 100.0, 2.25, bits=2), rec("uniform", "rtn", 25.0, 3.25, bits=3))
    v, how = qr.uniform_line(runs, 128, "rtn", 2.75)
    assert v == pytest.approx(50.0) and how == "interpolated"  # geometric mean halfway
    assert qr.uniform_line(runs, 128, "rtn", 3.5) is None  # above the last point: not measured
    runs = runs_of(rec("uniform", "rtn", 5000.0, 2.504, bits=2, group=64), rec("uniform", "rtn", 32.0, 3.504, bits=3, group=64))
    v, how = qr.uniform_line(runs, 64, "rtn", 2.5)
    assert v == 5000.0 and "2.504" in how
    assert qr.uniform_line(runs, 64, "gptq", 3.0) is None


def test_goal_rows_say_met_missed_and_not_run():
    runs = runs_of(rec("uniform", "rtn", 100.0, 2.25, bits=2), rec("uniform", "rtn", 25.0, 3.25, bits=3),
                   rec("sfmp", "rtn", 40.0, 3.0, levels=3, target=3.0, tag=""),
                   rec("sfmp", "rtn", 60.0, 3.0, levels=2, target=3.0, tag=""),
                   rec("layerwise", "rtn", 45.0, 2.999, levels=3, target=3.0))
    rows = {(r["group"], r["quantizer"], r["bpw"], r["levels"]): r for r in qr.goal_rows(runs)}
    three, two = rows[(128, "rtn", 3.0, 3)], rows[(128, "rtn", 3.0, 2)]
    assert three["uniform"] == pytest.approx(100 * 0.25 ** 0.75)  # 35.36
    assert (three["vs_layerwise"], three["vs_uniform"]) == ("met", "**missed**")
    assert (two["vs_layerwise"], two["vs_uniform"]) == ("**missed**", "**missed**")
    assert rows[(128, "rtn", 3.5, 3)]["vs_uniform"] == "not run"  # no SFMP run there
    assert rows[(64, "gptq", 3.0, 3)]["vs_layerwise"] == "not run"
    missing = qr.not_run(runs)
    assert "g128 SFMP 3-level @3.0 RTN" not in missing and "g128 uniform 4-bit RTN" in missing
    assert len(missing) == len(qr.grid_cells()) - 5


def test_other_goals_compare_bpw_4_with_uniform_4bit_at_4_5_and_llama_cpp():
    runs = runs_of(rec("uniform", "gptq", 21.3, 4.504, bits=4, group=64),
                   rec("uniform", "gptq", 22.0, 4.25, bits=4),  # BPW 4.25: not the goal's reference
                   rec("sfmp", "gptq", 21.0, 4.0, levels=3, target=4.0, tag=""),
                   rec("sfmp", "rtn", 30.0, 2.5, levels=3, target=2.5, tag=""))
    lines = "\n".join(qr.other_goals(runs, 18.2))
    assert "g128 SFMP 3-level GPTQ @4.0: PPL 21.00; ≤ best uniform 4-bit at BPW ≥ 4.5 (g64 GPTQ, BPW 4.504, 21.30): met" in lines
    assert "Q3_K_M (20.66 at 4.63): **missed**" in lines
    assert "g128 SFMP 3-level RTN @2.5 ≤ 2 × fp32 (36.40): PPL 30.00: met" in lines
    assert "g128 SFMP 2-level RTN @4.0: not run" in lines


def _data():
    return {"setups": {"128": setup(128), "64": setup(64)}, "saliences_s": {"fisher": 300.0},
            "runs": {"g128-uniform-rtn-3": rec("uniform", "rtn", 25.0, 3.25, bits=3),
                     "uniform-rtn-3": rec("uniform", "rtn", 32.0, 3.504, bits=3, group=64)}}


def test_report_rewrites_only_its_section_and_draws_the_png(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# Results\n\nbefore\n\n{qr.BEGIN}\nold table\n{qr.END}\n\nafter\n")
    png = tmp_path / "quality.png"
    qr.report(_data(), md, png, "\n### More\n")
    text = md.read_text()
    assert text.startswith("# Results\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old table" not in text
    assert "| 128 | uniform rtn 3 |" in text and "| - | llama.cpp Q3_K_M | llama.cpp | - | 4.63 (linears)" in text
    assert "g128 uniform 2-bit RTN" in text and "### More" in text and "Q4_1" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_merge_joins_shards_of_both_groups(tmp_path):
    d = _data()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"setups": {"128": d["setups"]["128"]}, "runs": {"g128-uniform-rtn-3": d["runs"]["g128-uniform-rtn-3"]}}))
    legacy = d["runs"]["uniform-rtn-3"]
    for k in ("group_size", "block_rows", "format_version"):
        legacy.pop(k)
    b.write_text(json.dumps({"setup": d["setups"]["64"], "runs": {"uniform-rtn-3": legacy}}))
    out = tmp_path / "q.json"
    assert quality.main(["--merge", str(a), str(b), "--out", str(out), "--results", str(tmp_path / "R.md")]) == 0
    merged = json.loads(out.read_text())
    assert set(merged["setups"]) == {"128", "64"} and set(merged["runs"]) == {"g128-uniform-rtn-3", "uniform-rtn-3"}
    assert merged["runs"]["uniform-rtn-3"]["format_version"] == 1
    assert (tmp_path / "q.png").exists() and qr.BEGIN in (tmp_path / "R.md").read_text()


def test_alloc_study_ranks_a_small_block_by_its_sum_low_and_by_its_salience_per_weight_high():
    import torch
    from quality_analysis import alloc_study
    fisher = {"model.layers.0.mlp.up_proj": torch.ones(32, 64),         # full 32 x 32 blocks, salience 1
              "model.layers.0.self_attn.v_proj": torch.full((8, 64), 2.0)}  # 8-row blocks, salience 2 per weight
    st = alloc_study(fisher, bits=2.5, group_size=32, block_rows=32)
    two = st["levels"]["2"]
    assert two["sum"] == {"up_proj": 2.5, "v_proj": 2.0}  # one up block (sum 1024) outranks v's (512)
    assert two["per_weight"] == {"up_proj": 2.0, "v_proj": 3.0}
    assert st["mean_fisher"] == {"up_proj": 1.0, "v_proj": 2.0}


def test_missed_lines_name_each_missed_cell_with_its_kv_bits():
    from quality_analysis import missed_lines
    bt = lambda k, v: {"k_proj": k, "v_proj": v}  # noqa: E731
    runs = runs_of(rec("uniform", "rtn", 100.0, 2.25, bits=2), rec("uniform", "rtn", 25.0, 3.25, bits=3),
                   dict(rec("sfmp", "rtn", 40.0, 3.0, levels=3, target=3.0, tag=""), bits_by_type=bt(2.9, 3.0)),
                   dict(rec("sfmp", "rtn", 30.0, 3.0, levels=2, target=3.0, tag=""), bits_by_type=bt(2.9, 3.0)),
                   dict(rec("layerwise", "rtn", 35.0, 3.0, levels=3, target=3.0), bits_by_type=bt(3.6, 4.0)))
    lines = missed_lines({"runs": runs})
    assert len(lines) == 1 and lines[0].startswith("- g128 RTN @3.0, SFMP 3-level 40.00 misses layer-wise and uniform line")
    assert "k_proj / v_proj 2.90 / 3.00 vs 3.60 / 4.00" in lines[0]
