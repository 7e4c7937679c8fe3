"""The ``sfmp`` CLI end to end on the tiny random Llama (character tokenizer, wiki text)."""
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from sfmp_compile import load_quantized, quantize, save_quantized
from sfmp_compile.cli import main
from sfmp_compile.eval.metrics import perplexity
from sfmp_compile.eval.models import tiny_llama, tiny_tokenizer

PROSE = ("The river rises in the northern hills and flows south through farmland before it reaches the sea. "
         "In the nineteenth century a canal was cut beside it, and mills were built along its banks. "
         "Most of the mills closed after the war, but several were turned into homes and a small museum. ")
DATA = ["--calib-sequences", "2", "--seq-len", "32", "--eval-tokens", "256", "--context", "64"]


@pytest.fixture(scope="module", autouse=True)
def _text(tmp_path_factory):
    """A small prose file: the character tokenizer would otherwise tokenize megabytes of wiki text."""
    path = tmp_path_factory.mktemp("text") / "prose.txt"
    path.write_text(PROSE * 12)
    DATA.extend(["--text", str(path)])
    yield
    del DATA[-2:]


def _one_error_line(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "tiny-q"
    rc = main(["quantize", "tiny", "--bits", "2.75", "--levels", "3", "--group-size", "32", "--block-rows", "32",
               *DATA, "--out", str(out)])
    assert rc == 0
    return out


def test_quantize_writes_a_loadable_checkpoint(ckpt):
    from sfmp_compile import quantization_report
    m = load_quantized(str(ckpt))
    rep = quantization_report(m)
    assert rep["weight_bits"] <= 2.75 + 1e-9 and rep["weight_bits"] > 2.6
    assert (ckpt / "tokenizer.json").exists()
    assert json.loads((ckpt / "sfmp.json").read_text())["quant_config"]["bit_choices"] == [2, 3, 4]
    # --levels 3 at 2.75 bits: the paper's three widths, each holding a real share of the weights
    # (at 2.5 the α1 scan finds a plain 2/3 split best on this random model).
    share = {}
    for layer in rep["layers"].values():
        n = layer["shape"][0] * layer["shape"][1]
        for b, frac in layer["bits_histogram"].items():
            share[b] = share.get(b, 0) + frac * n
    assert set(share) == {2, 3, 4}, share
    assert min(share.values()) / rep["n_quantized_weights"] > 0.01, share


def test_eval_checkpoint_reports_its_perplexity(ckpt, tmp_path, capsys):
    js = tmp_path / "e.json"
    assert main(["eval", str(ckpt), *DATA, "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert rows[0]["series"] == "checkpoint"
    # The same number as loading the checkpoint by hand.
    from sfmp_compile.eval.text import eval_tokens, load_text
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    text = load_text(DATA[-1])
    ppl = perplexity(load_quantized(str(ckpt)), eval_tokens(tok, 256, text=text[len(text) // 2:]), 64)
    assert rows[0]["ppl"] == pytest.approx(ppl, rel=1e-6)
    assert math.isfinite(rows[0]["ppl"]) and rows[0]["ppl"] > 1
    assert "checkpoint" in capsys.readouterr().out


def test_saved_checkpoint_reloads_to_the_same_perplexity(tmp_path):
    model, tok = tiny_llama(), tiny_tokenizer()
    calib = [torch.randint(0, 98, (1, 32)) for _ in range(2)]
    quantize(model, 2.75, calibration=calib, group_size=32, block_rows=32)
    ids = torch.randint(0, 98, (1, 200))
    before = perplexity(model, ids, 64)
    save_quantized(model, str(tmp_path / "ck"), tokenizer=tok)
    after = perplexity(load_quantized(str(tmp_path / "ck")), ids, 64)
    assert after == pytest.approx(before, rel=1e-6)


def test_eval_compare_table_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    rc = main(["eval", "tiny", "--bits", "2.5", "--compare", "uniform,layerwise", "--group-size", "32",
               "--block-rows", "32", *DATA, "--json", str(js), "--plot", str(png), "--quiet"])
    assert rc == 0
    rows = json.loads(js.read_text())["rows"]
    series = [r["series"] for r in rows]
    assert series[0] == "fp32" and "uniform" in series and any(s.startswith("layer-wise") for s in series)
    sfmp = next(r for r in rows if r["series"].startswith("SFMP"))
    lw = next(r for r in rows if r["series"].startswith("layer-wise"))
    assert lw["bpw"] <= sfmp["bpw"] + 1e-12  # same budget
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows), [r["ppl"] for r in rows]
    assert {r["weight_bits"] for r in rows if r["series"] == "uniform"} == {2.0, 3.0}
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "PPL" in out and "layer-wise" in out


def test_inspect_prints_layers_and_writes_heatmap(ckpt, tmp_path, capsys):
    png = tmp_path / "maps.png"
    assert main(["inspect", str(ckpt), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in out and "BPW" in out and "by layer type" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, needle", [
    (["quantize", "/no/such/model", "--bits", "3", "--out", "{tmp}/o"], "model not found"),
    (["quantize", "tiny", "--bits", "9", "--out", "{tmp}/o"], "out of range"),
    (["quantize", "tiny", "--bits", "0.5", "--out", "{tmp}/o"], "out of range"),
    (["quantize", "tiny", "--bits", "3", "--text", "{tmp}/missing.txt", "--out", "{tmp}/o"], "text file not found"),
    (["quantize", "tiny", "--bits", "3", "--out", "{tmp}"], "already exists"),
    (["quantize", "tiny", "--bits", "3", "--levels", "2", "--bit-choices", "2,3,4", "--out", "{tmp}/o"], "contradict"),
    (["quantize", "tiny", "--bits", "3", "--bit-choices", "4,3,2", "--out", "{tmp}/o"], "increasing"),
    (["quantize", "tiny", "--bits", "3", "--group-size", "48", "--out", "{tmp}/o"], "multiple of 32"),
    (["eval", "tiny", "--compare", "exhaustive"], "--compare"),
    (["inspect", "{tmp}/nothing"], "not a directory"),
    (["quantize", "tiny", "--out", "{tmp}/o"], "--bits"),  # argparse's own error, still one line
    (["quantize", "tiny", "--bits", "3", "--seq-len", "0", "--out", "{tmp}/o"], "--seq-len: must be a positive"),
    (["quantize", "tiny", "--bits", "3", "--seq-len", "-5", "--out", "{tmp}/o"], "--seq-len: must be a positive"),
    (["quantize", "tiny", "--bits", "3", "--calib-sequences", "0", "--out", "{tmp}/o"], "--calib-sequences"),
    (["quantize", "tiny", "--bits", "3", "--group-size", "-32", "--out", "{tmp}/o"], "--group-size: must be"),
    (["quantize", "tiny", "--bits", "3", "--block-rows", "0", "--out", "{tmp}/o"], "--block-rows: must be"),
    (["eval", "tiny", "--eval-tokens", "0"], "--eval-tokens: must be a positive"),
    (["eval", "tiny", "--context", "-1"], "--context: must be a positive"),
    (["eval", "tiny", "--seq-len", "x"], "--seq-len: must be a positive integer, got 'x'"),
    (["eval", "tiny", "--json", "{tmp}"], "is a directory"),
    (["demo", "--new-tokens", "0"], "--new-tokens: must be a positive"),
    (["demo", "--threads", "-2"], "--threads: must be a positive"),
    (["eval", "{tmp}/no-such-checkpoint"], "model not found"),
    (["quantize", "tiny", "--bits", "3", "--bpw", "3.5", "--out", "{tmp}/o"], "not allowed with"),
    (["quantize", "tiny", "--bpw", "3,4", "--out", "{tmp}/o"], "one budget"),
    (["quantize", "tiny", "--bpw", "-1", "--out", "{tmp}/o"], "positive number"),
    (["quantize", "tiny", "--size-mb", "x", "--out", "{tmp}/o"], "--size-mb must be comma-separated numbers"),
    (["quantize", "tiny", "--bpw", "1.2", *DATA, "--group-size", "32", "--out", "{tmp}/o"], "below the least"),
    (["quantize", "tiny", "--size-mb", "0.01", *DATA, "--out", "{tmp}/o"], "smaller than what stays float"),
    (["generate", "/no/such/model", "--prompt", "a"], "model not found"),
    (["generate", "tiny", "--prompt", "a", "--max-new-tokens", "0"], "--max-new-tokens: must be a positive"),
    (["generate", "tiny"], "--prompt"),
])
def test_user_errors_are_one_line_exit_2(argv, needle, tmp_path, capsys):
    (tmp_path / "keep").write_text("x")  # tmp_path exists and is not empty
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    _one_error_line(capsys, rc, needle)


def test_unreadable_text_file(tmp_path, capsys):
    bad = tmp_path / "empty.txt"
    bad.write_text("   \n")
    rc = main(["quantize", "tiny", "--bits", "3", "--text", str(bad), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, rc, "empty")


def test_console_script_exit_status(tmp_path):
    """The installed entry point: a real process, exit status 2, one line on stderr."""
    r = subprocess.run([sys.executable, "-m", "sfmp_compile.cli", "quantize", "tiny", "--bits", "12", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "out of range" in r.stderr


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_that_is_a_file_is_refused_and_kept(overwrite, tmp_path, capsys):
    out = tmp_path / "precious.txt"
    out.write_text("keep me")
    rc = main(["quantize", "tiny", "--bits", "3", *DATA, "--out", str(out)] + (["--overwrite"] if overwrite else []))
    _one_error_line(capsys, rc, "is not a directory", "refusing")
    assert out.is_file() and out.read_text() == "keep me"


def _damaged(ckpt, tmp_path, how):
    bad = tmp_path / "bad-ck"
    shutil.copytree(ckpt, bad)
    if how == "json":
        (bad / "sfmp.json").write_text('{"format": "sfmp", "format_version": 1, "layers": {')
    elif how == "weights":
        (bad / "model.safetensors").unlink()
    return bad


@pytest.mark.parametrize("how, needle", [("json", "not valid JSON"), ("weights", "model.safetensors is missing")])
@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_corrupt_checkpoint_is_one_line(ckpt, tmp_path, capsys, command, how, needle):
    bad = _damaged(ckpt, tmp_path, how)
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    argv = [command, str(bad)] + (DATA if command == "eval" else [])
    _one_error_line(capsys, main(argv), needle)
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before  # nothing written beside it


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    """Only user errors become one line: an internal failure propagates (Python prints its traceback)."""
    import sfmp_compile.cli as cli

    def broken(args):
        raise TypeError("internal bug")
    monkeypatch.setattr(cli, "cmd_inspect", broken)
    with pytest.raises(TypeError, match="internal bug"):
        main(["inspect", str(tmp_path)])


def _report_slack(rep, block_weights, rows_cols):
    """BPW one block's width step (plus the permutations it can bring into being) is worth."""
    return (block_weights + 32 * rows_cols) / rep["n_quantized_weights"]


def test_quantize_to_a_bpw_budget_prints_target_and_achieved(tmp_path, capsys):
    from sfmp_compile import quantization_report
    out = tmp_path / "b"
    assert main(["quantize", "tiny", "--bpw", "4.2", "--group-size", "32", "--block-rows", "32", *DATA,
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "target   BPW 4.2" in text and "achieved" in text
    rep = quantization_report(load_quantized(str(out)))
    assert rep["bpw"] <= 4.2 + 1e-12
    assert 4.2 - rep["bpw"] <= _report_slack(rep, 32 * 32, 128 + 64), rep["bpw"]
    assert f"BPW {rep['bpw']:.3f}" in text


def test_size_budget_checkpoint_then_generate_the_same_tokens(tmp_path, capsys):
    from sfmp_compile.budget import MIB, stored_bytes
    from transformers import AutoTokenizer
    out = tmp_path / "s"
    target = 0.16
    assert main(["quantize", "tiny", "--size-mb", str(target), "--group-size", "32", "--block-rows", "32", *DATA,
                 "--out", str(out), "--quiet"]) == 0
    model = load_quantized(str(out))
    size = stored_bytes(model)
    assert size <= target * MIB
    from sfmp_compile import quantization_report
    rep = quantization_report(model)
    assert target * MIB - size <= _report_slack(rep, 32 * 32, 128 + 64) * rep["n_quantized_weights"] / 8 + 1
    capsys.readouterr()
    # sfmp generate from the checkpoint: the tokens model.generate gives on load_quantized's model.
    assert main(["generate", str(out), "--prompt", "The river", "--max-new-tokens", "6"]) == 0
    cap = capsys.readouterr()
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("The river", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    expect = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert cap.out.startswith("The river" + expect), (cap.out, expect)
    assert "tokens/s" in cap.err and "eager" in cap.err


def test_generate_on_the_tiny_model_streams_and_times(capsys):
    assert main(["generate", "tiny", "--prompt", "ab", "--max-new-tokens", "4"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("ab") and len(cap.out.strip()) > 2
    assert "tokens in" in cap.err and "tokens/s" in cap.err


def test_generate_hub_id_offline_is_one_line(monkeypatch, capsys):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _one_error_line(capsys, main(["generate", "someorg/no-such-model", "--prompt", "a"]), "HF_HUB_OFFLINE")


def test_eval_at_a_bpw_budget_reports_target_and_achieved(tmp_path, capsys):
    js = tmp_path / "e.json"
    assert main(["eval", "tiny", "--bpw", "4.2", "--group-size", "32", "--block-rows", "32", *DATA, "--json", str(js),
                 "--quiet"]) == 0
    rows = json.loads(js.read_text())["rows"]
    sfmp = next(r for r in rows if r["series"].startswith("SFMP"))
    assert sfmp["target"] == "BPW 4.2" and sfmp["bpw"] <= 4.2 + 1e-12 and sfmp["bpw"] > 4.0
    out = capsys.readouterr().out
    assert "target" in out and "BPW 4.2" in out


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_prints_no_progress_bars(ckpt, monkeypatch, capsys, quiet):
    monkeypatch.setenv("SFMP_PROGRESS", "1")  # bars on although stderr is not a terminal here
    assert main(["eval", str(ckpt), *DATA] + (["--quiet"] if quiet else [])) == 0
    err = capsys.readouterr().err
    assert ("scoring" in err) is not quiet, err


def test_quantize_tp_shards_reaches_the_plan(tmp_path):
    """--tp-shards 2 is the plan's tp_shards (recorded in sfmp.json from the plan's own config; what
    it restricts is tests/test_tp.py's), and a head count that cannot be shared is one error line."""
    out = tmp_path / "tp"
    assert main(["quantize", "tiny", "--bits", "3", "--tp-shards", "2", "--group-size", "32", "--block-rows", "16",
                 *DATA, "--out", str(out)]) == 0
    assert json.loads((out / "sfmp.json").read_text())["quant_config"]["tp_shards"] == 2
    assert main(["quantize", "tiny", "--bits", "3", "--tp-shards", "3", *DATA, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
