import copy
from types import SimpleNamespace

import pytest
import torch

from sfmp_compile import plan, quantization_report, quantize
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.eval.report import (bits_by_layer_type, demo_table, format_table, inspect_text,
                                      report_bits_by_type, size_summary)


def test_bits_by_layer_type_weights_layers_by_size():
    got = bits_by_layer_type({"a.0.q": (2.0, 100), "a.1.q": (4.0, 300), "a.0.up": (3.0, 7)})
    assert list(got) == ["q", "up"]  # first-seen order
    assert got == {"q": pytest.approx(3.5), "up": pytest.approx(3.0)}


def test_format_table_aligns_and_marks_missing_values():
    out = format_table([{"m": "fp32", "x": 1.5}, {"m": "sfmp-long", "x": None}], [("m", "method", ""), ("x", "X", ".2f")])
    assert out.splitlines() == ["method        X", "---------  ----", "fp32       1.50", "sfmp-long     -"]


@pytest.fixture(scope="module")
def quantized():
    ref = tiny_llama()
    calib = [torch.randint(0, 256, (1, 16)) for _ in range(2)]
    p = plan(ref, 2.75, calibration=calib, group_size=32, block_rows=32, bit_choices=(2, 3, 4))
    return ref, p, quantize(copy.deepcopy(ref), plan=p)


def test_size_summary_from_a_plan_equals_the_quantized_models_report(quantized):
    ref, p, model = quantized
    rep = quantization_report(model)
    from_model = size_summary(ref, model=model)
    from_plan = size_summary(ref, backend=SimpleNamespace(plan=p, packed_bytes=rep["quantized_bytes"]))
    assert from_model["by_type"] == report_bits_by_type(rep)
    for k in ("weight_bits", "bpw", "bytes", "fp32_bytes", "model_fp32"):
        assert from_plan[k] == pytest.approx(from_model[k], rel=1e-12), k
    # The plan path counts the other parameters; the report also counts buffers (rotary frequencies).
    assert from_model["other"] - from_plan["other"] == sum(b.numel() * b.element_size() for b in ref.buffers())
    assert from_plan["by_type"] == pytest.approx(from_model["by_type"], rel=1e-12)
    assert from_model["bytes"] + from_model["other"] < from_model["model_fp32"]
    table = demo_table([("fp32", {"ppl": 10.0}),
                        ("SFMP BPW 3.5", {"ppl": 12.0, "kl": 0.1, "bpw": from_model["bpw"],
                                          "linear_bytes": from_model["bytes"], "by_type": from_model["by_type"]})])
    lines = table.splitlines()
    assert "SFMP BPW 3.5" in lines[0] and "fp32" in lines[0]
    assert any(ln.startswith("bits q_proj") and ln.split()[-2] == "-" for ln in lines)  # fp32 has no bits by type
    assert any(ln.startswith("perplexity") and ln.split()[-2:] == ["10.00", "12.00"] for ln in lines)


def test_inspect_text_lists_every_layer_and_the_totals(quantized):
    rep = quantization_report(quantized[2])
    out = inspect_text(rep)
    assert all(n in out for n in rep["layers"])
    assert "by layer type: q_proj" in out and f"weight_bits {rep['weight_bits']:.4f}" in out
