"""Figures: the bit-map heatmap colours only the widths a model holds."""
import pytest
import torch

from sfmp_compile import quantize
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.eval.plots import bitmap_figure
from sfmp_compile.linear import SFMPLinear


@pytest.mark.parametrize("bits, choices", [(2.5, None), (3.0, (2, 3, 4))])
def test_heatmap_legend_is_the_widths_present(tmp_path, bits, choices):
    model = quantize(tiny_llama(), bits, salience="weight", bit_choices=choices, group_size=32, block_rows=16,
                     clip_search=False)
    present = sorted({int(b) for m in model.modules() if isinstance(m, SFMPLinear) for b in m.bits.unique().tolist()})
    png = tmp_path / "maps.png"
    assert bitmap_figure(model, str(png)) == present
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_heatmap_of_a_float_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no SFMPLinear"):
        bitmap_figure(tiny_llama(), str(tmp_path / "x.png"))


def test_ppl_panels_draw_peers_on_every_panel_and_refuse_none(tmp_path):
    from sfmp_compile.eval.plots import plot_ppl_panels
    rows = [{"series": "uniform", "bpw": b, "ppl": p} for b, p in ((2.25, 90.0), (3.25, 25.0))]
    png = tmp_path / "q.png"
    plot_ppl_panels({"a": rows, "b": rows[:1], "c": []}, str(png), 18.2, [{"label": "llama.cpp Q4_0", "bpw": 4.5, "ppl": 22.6}],
                    ylim=(15, 300))
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="at least one panel"):
        plot_ppl_panels({}, str(png), None)
