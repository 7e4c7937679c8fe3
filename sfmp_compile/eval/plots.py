"""Figures: perplexity against bits per weight, and the block bit maps of a quantized model.

matplotlib runs headless (Agg) and is imported only when a figure is drawn.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..linear import SFMPLinear
from .report import layer_type


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    return plt


def plot_ppl_vs_bpw(rows: Sequence[dict], path: str, fp32_ppl: float | None, title: str) -> None:
    """One line per ``row["series"]`` through its (``bpw``, ``ppl``) points, log-scale PPL, the fp32
    PPL as a dashed line if given; written as a PNG to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["series"], []).append(r)
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["bpw"])
        ax.plot([r["bpw"] for r in rs], [r["ppl"] for r in rs], "o-", label=name)
    if fp32_ppl:
        ax.axhline(fp32_ppl, color="k", ls="--", lw=1, label=f"fp32 ({fp32_ppl:.2f})")
    ax.set_xlabel("bits per weight (everything stored)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bitmap_figure(model: nn.Module, path: str) -> list[int]:
    """One subplot per layer type: every SFMPLinear's block bit map (uint8 [R, G]) stacked top to
    bottom in layer order, one discrete colour per width present in the model (so 2/3/4-bit blocks
    stand apart; widths absent get no colour), with a legend; written as a PNG to ``path``.
    Returns the widths drawn, ascending."""
    plt = _pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator
    per_type: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules():
        if isinstance(m, SFMPLinear):
            per_type.setdefault(layer_type(name), []).append(m.bits.to(torch.int64).cpu())
    if not per_type:
        raise ValueError("the model has no SFMPLinear layers: nothing to draw")
    types = list(per_type)
    widths = sorted({int(b) for maps in per_type.values() for x in maps for b in x.unique().tolist()})
    # Each present width gets its own index 0..W-1 and a colour spread over the whole colormap.
    index = {b: i for i, b in enumerate(widths)}
    base = plt.get_cmap("viridis")
    colours = [base(i / max(len(widths) - 1, 1)) for i in range(len(widths))]
    cmap = ListedColormap(colours)
    norm = BoundaryNorm([i - 0.5 for i in range(len(widths) + 1)], cmap.N)
    lut = torch.full((9,), float("nan"))
    for b, i in index.items():
        lut[b] = float(i)
    fig, axes = plt.subplots(1, len(types), figsize=(2.2 * len(types) + 1.5, 6), squeeze=False)
    for ax, t in zip(axes[0], types):
        maps = per_type[t]
        G = max(x.shape[1] for x in maps)
        rows = [torch.nn.functional.pad(x, (0, G - x.shape[1]), value=0) for x in maps]
        img = lut[torch.cat(rows)]  # padding of narrower layers (width 0) stays NaN: left blank
        ax.imshow(img.numpy(), aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
        ax.set_title(f"{t}\n{len(maps)} layers", fontsize=9)
        ax.set_xlabel("group (reordered)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # groups are whole
        ax.set_yticks([])
    axes[0][0].set_ylabel("layers top→bottom (row-blocks stacked)")
    fig.legend(handles=[Patch(color=colours[index[b]], label=f"{b}-bit") for b in widths], loc="upper right",
               title="block width", ncol=1, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return widths
