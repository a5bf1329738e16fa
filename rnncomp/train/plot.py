"""Line plots (learning curves, gradient norms, waves) with matplotlib, to PNG or SVG.

Every plot has labelled axes, at most about eight labelled ticks an axis (a log axis over
22 decades labels every few), and its legend outside the data, to the right.  The file
is deterministic (no date or version in its metadata).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "c.png")
    >>> fig = line_plot(p, [([1, 2, 3], [1.0, 0.5, 0.2])], title="loss", xlabel="epoch", ylabel="loss")
    >>> open(p, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n", fig.axes[0].get_xlabel()
    (True, 'epoch')
"""
from __future__ import annotations

import numpy as np

from ..errors import TrainingError

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
MAX_TICKS = 8


def new_figure(size=(720, 450)):
    """A matplotlib Figure drawn by Agg (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style_axes(ax, xlabel: str, ylabel: str, logy: bool, xinteger: bool = False) -> None:
    """Labels, a light grid and a bounded number of readable ticks (a log axis within a
    decade or two labels its minor ticks too: matplotlib's own thresholds)."""
    from matplotlib import ticker

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(MAX_TICKS, integer=xinteger))
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(numticks=MAX_TICKS))
    else:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(MAX_TICKS))
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


def legend_outside(ax) -> None:
    """The legend to the right of the axes, never over the curves."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def save(fig, path) -> None:
    fig.savefig(path, dpi=100, metadata={"Software": None} if str(path).endswith(".png") else {})


def line_plot(path, series, title: str = "", xlabel: str = "", ylabel: str = "", logy=None,
              legend=None, size=(720, 450), xinteger: bool = False):
    """Draw ``series`` — a list of ``(xs, ys)`` or ``(xs, ys, color, width)`` (color an RGB
    tuple of 0…255) — to ``path`` (PNG or SVG); returns the matplotlib Figure.

    ``logy=None`` picks a log y axis when all values are positive and span over a decade
    (points at or below 0 are then left out); ``legend``: one label per series;
    ``xinteger``: ticks on whole numbers of x only (epochs)."""
    if not xlabel or not ylabel:
        raise ValueError(f"line_plot: label both axes (xlabel={xlabel!r}, ylabel={ylabel!r})")
    ys_all = np.concatenate([np.asarray(s[1], float) for s in series]) if series else np.zeros(0)
    ys_all = ys_all[np.isfinite(ys_all)]
    if logy is None:
        logy = bool(ys_all.size and (ys_all > 0).all() and ys_all.max() > 10 * ys_all.min())
    if logy and not (ys_all > 0).any():
        raise ValueError("line_plot: a log y axis needs positive values")
    fig = new_figure(size)
    ax = fig.add_subplot()
    for i, s in enumerate(series):
        xs, ys = np.asarray(s[0], float), np.asarray(s[1], float)
        color = s[2] if len(s) > 2 and s[2] is not None else COLORS[i % len(COLORS)]
        width = s[3] if len(s) > 3 else 2
        keep = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if logy else True)
        label = legend[i] if legend and i < len(legend) else None
        ax.plot(xs[keep], ys[keep], color=tuple(c / 255 for c in color), linewidth=0.75 * width, label=label)
    style_axes(ax, xlabel, ylabel, logy, xinteger)
    if title:
        ax.set_title(title)
    legend_outside(ax)
    save(fig, path)
    return fig


def learning_curve(history, batch_history, val_history):
    """The series and legend of a trainer's learning curve: the loss of every batch (when
    there are more batches than epochs), the mean of every epoch and the validation loss."""
    series, legend = [], []
    bh = [(p, v) for p, v in batch_history if np.isfinite(v)]
    if len(bh) > len(history):
        series.append(([p for p, _ in bh], [v for _, v in bh], (158, 190, 226), 1))
        legend.append("batch")
    if history:
        series.append((np.arange(len(history)) + 0.5, history, (31, 119, 180), 2))
        legend.append("epoch mean")
    if val_history:
        series.append((np.arange(1, len(val_history) + 1), val_history, (214, 39, 40), 2))
        legend.append("validation")
    if not series:
        raise TrainingError("plot: nothing to draw, the loss history is empty (train first)")
    return series, legend
