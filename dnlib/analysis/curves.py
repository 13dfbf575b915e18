"""Curves of runs: the metrics runs logged, drawn against their steps (or epochs).

* :func:`run_curves`: one panel per metric, one line per run (its rows of ``curves.csv`` or its history), the
  paper's number dashed beside it; the reports of CIFAR, PTB and SR draw their training curves with it.
* :func:`band_curves`: the mean over seeds of each configuration and a band of +-1 standard deviation
  (:func:`dnlib.experiments.aggregate.curve_bands`), as notebook 06 and ``scripts/results_figures.py`` draw them.
* :func:`no_data`: what a panel with no runs says instead of empty axes.

Layer: analysis. Figures are made with :func:`dnlib.analysis.figures.new_figure` (outside pyplot, matplotlib
imported with the first figure).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .figures import new_figure

__all__ = ["run_curves", "band_curves", "no_data"]


def run_curves(runs: Sequence, panels: Sequence[dict], *, x: str = "step", figsize=(10, 3.4), sharey: bool = False,
               pyplot: bool = False):
    """Curves of runs' logged metrics: one panel per entry of ``panels`` (``key``: the metric; ``marker``; ``paper``:
    a key of the runs' paper numbers to draw dashed; the rest: :meth:`Axes.set` arguments such as ``ylabel``,
    ``title``, ``yscale``), one line per run ``(label, rows)`` or ``(label, rows, paper)`` (``rows``: a run's
    history or ``curves.csv`` rows; ``paper``: ``{key: the paper's number}``) of ``x`` against the metric, over the
    rows that hold it; a run has the same colour in every panel, its paper's number too. ``pyplot``: a pyplot
    figure (shown at the end of a notebook cell even when assigned). Returns ``(fig, axes)``."""
    if pyplot:
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=figsize, layout="constrained")
    else:
        fig = new_figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=sharey, squeeze=False)[0]
    for label, rows, *paper in runs:
        for ax, p in zip(axes, panels):
            pts = [r for r in rows if r.get(p["key"]) is not None]
            line, = ax.plot([r[x] for r in pts], [r[p["key"]] for r in pts], marker=p.get("marker"), ms=4, label=label)
            value = (paper[0] if paper else {}).get(p.get("paper"))
            if value is not None:
                ax.axhline(value, ls="--", lw=1, color=line.get_color(), label=f"{label} paper: {value:g}")
    for ax, p in zip(axes, panels):
        ax.set(xlabel=x, **{k: v for k, v in p.items() if k not in ("key", "marker", "paper")})
    return fig, axes


def no_data(ax, text: str = "no runs") -> None:
    """Say ``text`` in the middle of ``ax`` (a figure with nothing to draw is not left as empty axes)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def band_curves(bands: dict, ax=None, *, labels: dict | None = None, alpha: float = 0.25, marker=None,
                figsize=(5, 3.4), empty: str = "no runs", **axes_set):
    """Curves over seeds: for each configuration of ``bands`` (:func:`dnlib.experiments.aggregate.curve_bands`) its mean
    as a line and a band of +-1 standard deviation around it (where two or more runs have a value), labelled ``<label>
    (n=<runs>)``. ``labels``: ``{name: label}``; ``axes_set``: :meth:`Axes.set` arguments (``xlabel``, ``ylabel``,
    ``title``, ``yscale``...); ``empty``: what the axes say when ``bands`` is empty (no run logged the
    metric). Draws into ``ax`` or a new figure; returns the figure."""
    if ax is None:
        fig = new_figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
    labels = labels or {}
    for name, b in bands.items():
        x, mean, std = np.asarray(b["x"]), np.asarray(b["mean"]), np.asarray(b["std"])
        line, = ax.plot(x, mean, marker=marker, ms=4, label=f"{labels.get(name, name)} (n={b['n']})")
        ok = np.isfinite(std)
        if ok.any():
            ax.fill_between(x, mean - std, mean + std, where=ok, color=line.get_color(), alpha=alpha, lw=0)
    ax.set(**{"xlabel": "step", **axes_set})
    if bands:
        ax.legend(fontsize=8)
    else:
        no_data(ax, empty)
    return ax.figure
