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


def _ppl_axis(ax, rows: Sequence[dict], fp32_ppl: float | None, title: str, peers: Sequence[dict] = ()) -> None:
    """Draw rows (lines per ``series``) and peers (one marker each, ``label``/``bpw``/``ppl``) on ``ax``."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["series"], []).append(r)
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["bpw"])
        ax.plot([r["bpw"] for r in rs], [r["ppl"] for r in rs], "o-", label=name)
    # Peers are other systems' single formats: points, not lines through unrelated formats.
    for p, marker in zip(peers, "sDv^P*Xh"):
        ax.plot([p["bpw"]], [p["ppl"]], marker, color="0.35", ms=6, ls="none", label=p["label"])
    if fp32_ppl:
        ax.axhline(fp32_ppl, color="k", ls="--", lw=1, label=f"fp32 ({fp32_ppl:.2f})")
    ax.set_xlabel("bits per weight (everything stored)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_ppl_vs_bpw(rows: Sequence[dict], path: str, fp32_ppl: float | None, title: str,
                    peers: Sequence[dict] = ()) -> None:
    """One line per ``row["series"]`` through its (``bpw``, ``ppl``) points, log-scale PPL, the fp32
    PPL as a dashed line if given, each of ``peers`` as a lone marker; written as a PNG to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _ppl_axis(ax, rows, fp32_ppl, title, peers)
    ax.set_ylabel("perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ppl_panels(panels: dict[str, Sequence[dict]], path: str, fp32_ppl: float | None,
                    peers: Sequence[dict] = (), ncols: int = 2, ylim: tuple[float, float] | None = None) -> None:
    """``plot_ppl_vs_bpw`` once per panel (title -> rows), in a grid of ``ncols`` columns sharing the
    PPL axis (clipped to ``ylim`` if given, so a few unusable points do not flatten the rest); the
    same ``peers`` on every panel. Written as one PNG to ``path``."""
    if not panels:
        raise ValueError("plot_ppl_panels needs at least one panel")
    plt = _pyplot()
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), sharex=True, sharey=True, squeeze=False)
    for ax, (title, rows) in zip(axes.flat, panels.items()):
        _ppl_axis(ax, rows, fp32_ppl, title, peers)
        if ylim:
            ax.set_ylim(*ylim)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:-1].flat:  # the shared BPW axis is labelled once, under the last row
        ax.set_xlabel("")
    for ax in axes[:, 0]:
        ax.set_ylabel("perplexity" + (f" (clipped at {ylim[1]:g})" if ylim else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
