"""Tables and figures of the ``analysis`` experiment (notebook 08), drawn from run records (a folder of run folders:
``runs/analysis/cpu``, or the committed ``results/records/analysis``)::

    from dnlib.experiments import analysis_report as ar
    runs = ar.load("results/records/analysis")
    ar.batch_figure(runs); ar.batch_table(runs)          # error and train/eval gap vs batch size
    ar.smooth_figure(runs); ar.lr_figure(runs); ar.depth_figure(runs); ar.inv_figure(runs)

Every figure draws the mean over seeds as a line or bar and +-1 standard deviation as a band or error bar, and says
``n`` (seeds). A diverged run has no numbers (its record says so); the largest stable learning rate of a seed is
the largest of :data:`~dnlib.experiments.analysis_configs.LR_GRID` whose run, and the runs of every smaller rate,
completed with ``stable == 1`` (:func:`largest_stable`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.curves import no_data
from ..analysis.figures import MarkdownTable, markdown_table, new_figure
from . import pooling, records
from .analysis_configs import (
    BATCH_NORMS,
    BATCH_SIZES,
    DEPTH_NORMS,
    INV_VARIANTS,
    LR_GRID,
    LR_NORMS,
    SIGMAS,
    SMOOTH_NORMS,
)

__all__ = ["Runs", "load", "stats", "setup_stats", "largest_stable", "batch_table", "batch_figure", "smooth_table",
           "smooth_figure", "lr_table", "lr_figure", "depth_figure", "inv_table", "inv_figure", "report", "LABELS"]

LABELS = {"none": "none", "bn": "BN", "gn": "GN", "frn": "FRN", "brn": "BRN", "ln": "LN", "dn": "DN", "dn-star": "DN*",
          "bn-ms": "BN mean-only", "bn-vo": "BN var-only", "bn-detached": "BN detached", "ln-ms": "LN mean-only",
          "ln-vo": "LN var-only (RMS)",
          "ln-detached": "LN detached", "dn-ms": "DN mean-only", "dn-detached": "DN detached"}


@dataclass
class Runs:
    """The analysis runs of a folder: ``records[name]`` the records (one per seed, the newest of each) and
    ``curves[name]`` their curve rows, in the same order."""
    records: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    folder: str = ""

    def __len__(self) -> int:
        return sum(len(v) for v in self.records.values())

    def seeds(self) -> list:
        return sorted({r["seed"] for recs in self.records.values() for r in recs})


def _rank(rec: dict) -> tuple:
    """Which run of a seed counts: a completed one before any other, then the newest (as aggregate's rule)."""
    return rec.get("stopped") == "completed", rec.get("started") or ""


def load(path) -> Runs:
    """The ``analysis`` runs at or under ``path`` (a broken record is skipped with a warning): per configuration
    and seed its newest completed run (else its newest). Runs of one configuration that differ in what defines
    the experiment (:func:`dnlib.experiments.pooling.defining`: size, steps, subset...) are a ValueError naming
    them: they are not seeds of one point (give a folder of one size)."""
    found, what = defaultdict(dict), {}
    for d, rec in records.read_records([path]):
        if rec.get("experiment") != "analysis":
            continue
        w = pooling.defining(rec)
        w0, d0 = what.setdefault(rec["name"], (w, d))
        if w != w0:
            differs = sorted(k for k in set(w) | set(w0) if w.get(k) != w0.get(k))
            raise ValueError(f"{path}: runs of {rec['name']} differ in what defines the experiment ("
                             + "; ".join(f"{k}: {w0.get(k)}, {w.get(k)}" for k in differs[:4])
                             + f"; {d0} and {d}): not seeds of one point; give a folder of one size")
        old = found[rec["name"]].get(rec["seed"])
        if old is None or _rank(rec) >= _rank(old[1]):
            found[rec["name"]][rec["seed"]] = (d, rec)
    out = Runs(folder=str(path))
    for name, by_seed in found.items():
        pairs = [by_seed[s] for s in sorted(by_seed)]
        out.records[name] = [rec for _, rec in pairs]
        out.curves[name] = [records.read_curves(d) if (Path(d) / "curves.csv").exists() else [] for d, _ in pairs]
    return out


def stats(runs: Runs, name: str, key: str) -> tuple:
    """``(mean, std, n)`` over seeds of headline ``key`` of configuration ``name`` (finite values of completed runs
    only: a run stopped early has the numbers of a shorter schedule; std None with fewer than two)."""
    vals = [r["headline"].get(key) for r in runs.records.get(name, []) if r.get("stopped") == "completed"]
    vals = np.array([v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)], dtype=float)
    if not len(vals):
        return None, None, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None, int(len(vals))


def setup_stats(runs: Runs, name: str, key: str) -> tuple:
    """:func:`stats` of a number measured at initialization (``record["config"]["setup"][key]``: there also for a
    run that diverged later, whose headline is empty)."""
    vals = [(r.get("config") or {}).get("setup", {}).get(key) for r in runs.records.get(name, [])]
    vals = np.array([v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)], dtype=float)
    if not len(vals):
        return None, None, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None, int(len(vals))


def _fmt(mean, std, n, spec=".3f") -> str:
    if mean is None:
        return "—"
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if std is not None else "") + f" (n={n})"


def _band(ax, x, name_of, runs, key, label, **kw):
    pts = [(xv, *stats(runs, name_of(xv), key)) for xv in x]
    pts = [(xv, m, s or 0.0, n) for xv, m, s, n in pts if m is not None]
    if not pts:
        return None
    xs, m, s, ns = (np.array(v, dtype=float) for v in zip(*pts))
    n = int(ns.max())
    line, = ax.plot(xs, m, marker="o", ms=4, label=f"{label} (n={n})", **kw)
    ax.fill_between(xs, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)
    return line


def _log(ax) -> None:
    """A log y axis when every value drawn is positive (a probe can be exactly 0: e.g. a loss that did not move)."""
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines] or [np.zeros(0)])
    if len(ys) and np.nanmin(ys) > 0:
        ax.set_yscale("log")


# ---------------------------------------------------------------------------------------------- batch size
def batch_table(runs: Runs) -> MarkdownTable:
    """Test error and train/eval gap per normalizer and batch size (mean ± std over seeds)."""
    rows = [[f"{LABELS[n]} err", *[_fmt(*stats(runs, f"batch-{n}-b{b}", "test_err")) for b in BATCH_SIZES]]
            for n in BATCH_NORMS]
    rows += [[f"{LABELS[n]} gap", *[_fmt(*stats(runs, f"batch-{n}-b{b}", "gap")) for b in BATCH_SIZES]]
             for n in BATCH_NORMS]
    return markdown_table(["", *[f"batch {b}" for b in BATCH_SIZES]], rows,
                          "Batch-size dependence: test error (running statistics) and gap (error with batch "
                          "statistics minus it)")


def batch_figure(runs: Runs):
    """Wu & He's Figure 1 on this CNN: test error vs batch size (left), and the train/eval gap (right)."""
    fig = new_figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    drawn = False
    for n in BATCH_NORMS:
        drawn |= _band(ax1, BATCH_SIZES, lambda b, n=n: f"batch-{n}-b{b}", runs, "test_err", LABELS[n]) is not None
        _band(ax2, BATCH_SIZES, lambda b, n=n: f"batch-{n}-b{b}", runs, "gap", LABELS[n])
    for ax, what in ((ax1, "test error (running statistics)"), (ax2, "batch-statistics error - test error")):
        ax.set(xscale="log", xlabel="batch size (lr scaled linearly)", ylabel=what)
        ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
        if drawn:
            ax.legend(fontsize=8)
        else:
            no_data(ax)
    ax1.set_title("test error vs batch size")
    ax2.set_title("train/eval gap vs batch size")
    return fig


# ---------------------------------------------------------------------------------------------- smoothness
def _smooth_names() -> list:
    return [f"smooth-{n}" for n in SMOOTH_NORMS] + [f"smooth-dn-sigma{s:g}" for s in SIGMAS]


def smooth_table(runs: Runs) -> MarkdownTable:
    """Santurkar et al.'s probes averaged over the checkpoints of a run, mean ± std over seeds."""
    keys = ("loss_range", "grad_change", "beta", "test_err")
    rows = [[n.removeprefix("smooth-"), *[_fmt(*stats(runs, n, k)) for k in keys],
             f"{len(runs.records.get(n, []))} ({_diverged(runs, n)} diverged)"] for n in _smooth_names()]
    return markdown_table(["run", "loss range", "gradient change (l2)", "effective beta", "test error", "runs"], rows,
                          "Smoothness along the gradient (step sizes 0.5-4 x lr, mean over checkpoints)")


def _completed_curves(runs: Runs, name: str) -> list:
    """The curve rows of ``name``'s completed runs (as :func:`stats` keeps them): a diverged or unfinished run's
    curve would join the band or the mean at the steps it reached, under a label counting every run."""
    return [rows for rec, rows in zip(runs.records.get(name, []), runs.curves.get(name, []))
            if rec.get("stopped") == "completed"]


def _curve_band(ax, runs: Runs, name: str, key: str, label: str):
    series = [{r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}
              for rows in _completed_curves(runs, name)]
    series = [s for s in series if s]
    if not series:
        return
    xs = sorted(set().union(*series))
    vals = [[s[x] for s in series if x in s] for x in xs]
    m = np.array([np.mean(v) for v in vals])
    sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
    line, = ax.plot(xs, m, marker="o", ms=3, label=f"{label} (n={len(series)})")
    ax.fill_between(xs, m - sd, m + sd, color=line.get_color(), alpha=0.2, lw=0)


def smooth_figure(runs: Runs):
    """Loss range and gradient change along the gradient at checkpoints, per preset (left two), and the effective
    beta-smoothness of DN against sigma (right)."""
    fig = new_figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for n in SMOOTH_NORMS:
        _curve_band(axes[0], runs, f"smooth-{n}", "loss_range", LABELS[n])
        _curve_band(axes[1], runs, f"smooth-{n}", "grad_change", LABELS[n])
    axes[0].set(xlabel="step", ylabel="loss range along the gradient", title="loss landscape")
    axes[1].set(xlabel="step", ylabel="max ||g(w - eta g) - g(w)||", title="gradient predictiveness")
    ax = axes[2]
    for key, label in (("beta", "effective beta"), ("grad_change", "gradient change")):
        _band(ax, SIGMAS, lambda s: f"smooth-dn-sigma{s:g}", runs, key, label)
    ax.set(xscale="log", xlabel="DN sigma (larger: less division)", title="DN: sigma as the knob")
    for a in axes:
        if a.lines:
            _log(a)
            a.legend(fontsize=7)
        else:
            no_data(a)
    return fig


# ------------------------------------------------------------------------------------ learning rate, depth
#: A short lr run "learns" when its final training loss is below chance's ln(10) minus this (nats).
LEARNS_MARGIN = 0.1


def largest_stable(runs: Runs, norm: str, learns: bool = False) -> list:
    """Per seed, the largest learning rate of the grid whose run completed and was stable, as were the runs of every
    smaller rate of the grid (None: the smallest was not); with ``learns``, the largest of those rates whose final
    training loss also fell below ``ln(10) - LEARNS_MARGIN`` (a network that does not move is "stable" at any
    learning rate). Before, the largest stable rate was taken whatever the rates below it did (a seed unstable at
    0.01 and stable at 0.1 read 0.1), which assumes what the grid did not show: stability falling with the rate."""
    stable, learned = defaultdict(dict), defaultdict(dict)
    for lr in LR_GRID:
        for rec in runs.records.get(f"lr-{norm}-{lr:g}", []):
            head = rec["headline"]
            stable[rec["seed"]][lr] = rec.get("stopped") == "completed" and head.get("stable") == 1.0
            learned[rec["seed"]][lr] = head.get("train_loss") is not None and \
                head["train_loss"] < math.log(10) - LEARNS_MARGIN
    out = []
    for seed in sorted(stable):
        best = None
        for lr in LR_GRID:
            if not stable[seed].get(lr, False):
                break
            if not learns or learned[seed][lr]:
                best = lr
        out.append(best)
    return out


def _diverged(runs: Runs, name: str) -> int:
    return sum(str(r.get("stopped", "")).startswith("diverged") for r in runs.records.get(name, []))


def lr_table(runs: Runs) -> MarkdownTable:
    rows = []
    for n in LR_NORMS:
        per, learn = largest_stable(runs, n), largest_stable(runs, n, learns=True)
        diverged = sum(_diverged(runs, f"lr-{n}-{lr:g}") for lr in LR_GRID)
        rows.append([LABELS[n], ", ".join("—" if v is None else f"{v:g}" for v in per),
                     ", ".join("—" if v is None else f"{v:g}" for v in learn), len(per), diverged])
    return markdown_table(["normalizer", "largest stable lr per seed", "largest lr that also learns (loss < ln 10 "
                           f"- {LEARNS_MARGIN:g})", "seeds", "runs diverged (NaN)"], rows,
                          f"Largest stable learning rate (grid {', '.join(f'{v:g}' for v in LR_GRID)}; SGD momentum "
                          f"0.9)")


def lr_figure(runs: Runs):
    """Final training loss against the learning rate per preset (diverged runs: a cross at the top)."""
    fig = new_figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for n in LR_NORMS:
        _band(ax1, LR_GRID, lambda lr, n=n: f"lr-{n}-{lr:g}", runs, "train_loss", LABELS[n])
    top = max([3.0] + [float(np.nanmax(line.get_ydata())) for line in ax1.lines]) * 2
    for n in LR_NORMS:
        div = [lr for lr in LR_GRID for r in runs.records.get(f"lr-{n}-{lr:g}", [])
               if str(r.get("stopped", "")).startswith("diverged")]
        if div:
            ax1.plot(div, [top] * len(div), "x", color="0.3")
    ax1.set(xscale="log", xlabel="learning rate", ylabel="training loss after the short run",
            title="stability per learning rate (x: diverged)")
    if ax1.lines:
        ax1.set_yscale("log")
    vals = [[v for v in largest_stable(runs, n) if v is not None] for n in LR_NORMS]
    xs = np.arange(len(LR_NORMS))
    means = [10 ** np.mean(np.log10(v)) if v else np.nan for v in vals]
    ax2.bar(xs, means, color="C0", alpha=0.6)
    for x, v in zip(xs, vals):
        ax2.plot([x] * len(v), v, "k.", ms=6)
    ax2.set_xticks(xs, [LABELS[n] for n in LR_NORMS])
    ax2.set(ylabel="largest stable lr (geo. mean; dots: seeds)", title="largest stable learning rate")
    if any(vals):
        ax2.set_yscale("log")
    for a in (ax1, ax2):
        if not runs.records:
            no_data(a)
    if any(not line.get_label().startswith("_") for line in ax1.lines):
        ax1.legend(fontsize=7)
    return fig


def depth_figure(runs: Runs):
    """Per-layer activation RMS (left) and gradient RMS (right) of the plain CNN, at initialization (dashed) and
    after the short training (solid), mean over seeds."""
    fig = new_figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, n in enumerate(DEPTH_NORMS):
        recs, curves = runs.records.get(f"depth-{n}", []), _completed_curves(runs, f"depth-{n}")
        if not recs:
            continue
        color = f"C{i}"
        for ax, key in ((ax1, "act"), (ax2, "grad")):
            init = [r["config"]["setup"].get(f"init_{key}") for r in recs]
            init = np.array([v for v in init if v])
            if len(init):
                ax.plot(np.arange(1, init.shape[1] + 1), init.mean(0), "--", color=color)
            ends = []
            for rows in curves:
                last = [r for r in rows if f"{key}_0" in r]
                if last:
                    k = 0
                    vals = []
                    while f"{key}_{k}" in last[-1]:
                        vals.append(last[-1][f"{key}_{k}"])
                        k += 1
                    ends.append(vals)
            if ends:
                e = np.array(ends, dtype=float)
                ax.plot(np.arange(1, e.shape[1] + 1), e.mean(0), "-", color=color, label=f"{LABELS[n]} (n={len(e)})")
    ax1.set(xlabel="layer", ylabel="RMS of the normalizer's output", title="activations")
    ax2.set(xlabel="layer", ylabel="RMS of dLoss/d(output)", title="gradients")
    for a in (ax1, ax2):
        if a.lines:
            _log(a)
            a.legend(fontsize=7, title="dashed: init; solid: trained", title_fontsize=7)
        else:
            no_data(a)
    return fig


# ---------------------------------------------------------------------------------------------- invariance
def inv_table(runs: Runs) -> MarkdownTable:
    keys = ("scale_change", "test_err", "train_loss", "gap")
    rows = [[LABELS[v], _fmt(*setup_stats(runs, f"inv-{v}", "scale_change"), spec=".3g"),
             *[_fmt(*stats(runs, f"inv-{v}", k), spec=".3g") for k in keys[1:]],
             f"{len(runs.records.get(f'inv-{v}', []))} ({_diverged(runs, f'inv-{v}')} diverged)"] for v in INV_VARIANTS]
    return markdown_table(["variant", "output change, conv2 x10 (init)", "test error", "final train loss",
                           "train/eval gap", "runs"], rows,
                          "Weight-scale invariance, detached statistics, mean-/variance-only")


def inv_figure(runs: Runs):
    """Left: relative change of the logits when conv2's weights are scaled by 10 (log); right: training loss
    curves of BN, LN and DN with and without detached statistics."""
    fig = new_figure(figsize=(12, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=(1.2, 1))
    xs = np.arange(len(INV_VARIANTS))
    for x, v in zip(xs, INV_VARIANTS):
        m, s, _ = setup_stats(runs, f"inv-{v}", "scale_change")
        if m is not None:
            ax1.bar(x, max(m, 1e-12), color="C3" if "detached" in v else "C0", alpha=0.7)
    ax1.set_xticks(xs, [LABELS[v] for v in INV_VARIANTS], rotation=60, ha="right", fontsize=7)
    ax1.set(ylabel="relative change of the logits", title="conv2 weights x10 at initialization")
    if ax1.patches:
        ax1.set_yscale("log")
    for v in ("bn", "bn-detached", "ln", "ln-detached", "dn", "dn-detached"):
        _curve_band(ax2, runs, f"inv-{v}", "train_loss", LABELS[v])
    ax2.set(xlabel="step", ylabel="training loss", title="statistics in the graph, or detached")
    for a in (ax1, ax2):
        if not (a.lines or a.patches):
            no_data(a)
    if ax2.lines:
        ax2.legend(fontsize=7)
    return fig


def report(path, figures=None) -> dict:
    """The tables (Markdown) of the runs under ``path``; with ``figures`` (a folder) the five figures as
    ``analysis_<name>.png`` there."""
    runs = load(path)
    if not len(runs):
        raise ValueError(f"{path}: no analysis runs (record.json of experiment 'analysis') to report")
    out = {"runs": len(runs), "seeds": runs.seeds(), "tables": {
        "batch": str(batch_table(runs)), "smooth": str(smooth_table(runs)), "lr": str(lr_table(runs)),
        "inv": str(inv_table(runs))}}
    if figures is not None:
        folder = Path(figures)
        folder.mkdir(parents=True, exist_ok=True)
        for name, fn in (("batch", batch_figure), ("smooth", smooth_figure), ("lr", lr_figure),
                         ("depth", depth_figure), ("inv", inv_figure)):
            fig = fn(runs)
            fig.savefig(folder / f"analysis_{name}.png", dpi=110)
            out.setdefault("figures", []).append(str(folder / f"analysis_{name}.png"))
    return out


def summary(runs: Runs, sizes: Sequence[int] = (2, 128)) -> dict:
    """The numbers the notebook saves: error at the smallest and largest batch per normalizer, and per normalizer the
    largest stable learning rate (and the largest that also learns) of every seed (``lr_max_<norm>_seeds``, None: no
    rate of the grid) and their lower median over all the seeds (``lr_max_<norm>``: a rate of the grid, or None
    when a seed with none is the median). Before, the median was taken over the seeds that had a rate, silently,
    and the mean of the middle two gave rates that were never run (``lr_learns_gn`` 0.055 of 0.1 and 0.01)."""
    out = {}
    for n in BATCH_NORMS:
        for b in sizes:
            out[f"batch_{n}_b{b}_err"] = stats(runs, f"batch-{n}-b{b}", "test_err")[0]
    for n in LR_NORMS:
        for key, learns in (("lr_max", False), ("lr_learns", True)):
            per = largest_stable(runs, n, learns=learns)
            out[f"{key}_{n}_seeds"] = per
            ranked = sorted(per, key=lambda v: -math.inf if v is None else v)
            out[f"{key}_{n}"] = ranked[(len(ranked) - 1) // 2] if ranked else None
    return out
