"""Tables and figures of pooled runs (:func:`dnlib.experiments.aggregate.summarize`) beside the paper's numbers:
:func:`table`, :func:`compare` / :func:`compare_figure` (one of the paper's tables, rows as the paper orders them),
:func:`provenance_table`, :func:`compare_bars`, and ``gather``'s printout (:func:`gather_printout`)."""
from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..analysis.figures import MarkdownTable, cell, markdown_table
from .aggregate import NO_VALUE, NOT_RUN, PoolingWarning, notes, summarize
from .registry import paper_table


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


__all__ = ["format_mean_std", "table", "gather_table", "gather_printout", "compare", "provenance_table",
           "compare_bars", "compare_figure"]


def format_mean_std(mean: float | None, std: float | None, n: int, fmt: str = ".2f") -> str:
    """``"mean ± std"`` when ``n > 1``, the plain mean when ``n == 1``, ``"—"`` when there is no value."""
    if mean is None or n == 0:
        return "—"
    if n == 1 or std is None:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def _n_cell(s: Mapping, keys: Sequence[str]) -> str:
    n = s["n"]
    missing = n - min((s.get(f"{k}_n", n) for k in keys), default=n)
    if not missing:
        return str(n)
    others = {k: c for k, c in (s.get("stopped") or {}).items() if k != "completed"}
    if sum(others.values()) == missing:     # every run without a value stopped early: say why
        return f"{n} ({', '.join(f'{c} {k}' for k, c in others.items())})"
    return f"{n} ({missing} without a value)"


def _entries(summary: Sequence[Mapping], order: Sequence[str] | None) -> list:
    """``[(name, summary dict or None)]``: every summary dict of each name of ``order`` (a name split into
    several rows gives each; a name no run has gives None), default every dict of ``summary`` in its order."""
    if order is None:
        return [(s.get("name"), s) for s in summary]
    by_name: dict = {}
    for s in summary:
        by_name.setdefault(s.get("name"), []).append(s)
    return [(name, s) for name in order for s in by_name.get(name, [None])]


def _label(name: Any, s: Mapping | None, labels: Mapping) -> str:
    label = str(labels.get(name, name))
    return f"{label} [{s['split']}]" if s and s.get("split") else label


def _with_notes(md: str, summary: Sequence[Mapping], left_out: Sequence[Mapping] = ()) -> MarkdownTable:
    lines = notes(summary)
    if left_out:         # order= named the rows: the runs of other configurations are said, not dropped unseen
        lines.append("not shown (none of this table's rows): " + ", ".join(
            f"{_label(s.get('name'), s, {})} ({s.get('n', 0)} run{'' if s.get('n') == 1 else 's'})"
            for s in left_out))
    return MarkdownTable(md + ("\n\n" + "\n".join(f"- {x}" for x in lines) if lines else ""))


def table(summary: Sequence[Mapping], keys: None | Sequence[str] | Mapping[str, str] = None, *,
          title: str = "", fmt: str | Mapping[str, str] = ".2f", labels: Mapping[str, str] | None = None,
          order: Sequence[str] | None = None, paper: Mapping[str, Mapping[str, Any]] | None = None,
          head: str = "model") -> MarkdownTable:
    """A Markdown table of :func:`summarize`'s dicts: one line per configuration, for each key our
    ``mean ± std`` (the plain value when n == 1) and the paper's number beside it (a key the paper gives no
    number for in any row shown has no paper column), then ``n`` (runs; ``"3 (1 diverged)"`` when some runs
    have no value: why they stopped, when every such run stopped early) and ``run as`` (what was run:
    :func:`run_as`, e.g. ``40 of the paper's 80,000 steps, subset 2000/1000, batch 100``). A configuration whose
    runs differ in what defines them has one line each, labelled with the difference (``bn-star [steps 40]``);
    notes under the table name such splits and the runs not counted (:func:`notes`).

    Args:
        summary: :func:`summarize`'s output.
        keys: headline keys (default: every key the summaries aggregate); a dict ``{key: column header}``.
        title: a bold title above the table.
        fmt: a format spec for every number, or ``{key: spec}``.
        labels: ``{configuration name: row label}`` (e.g. ``{"dn-star": "DN*"}``); others show their name.
        order: the configuration names to show, in this order; a name no run has shows ``not run``. Default:
            every configuration of ``summary``, in its order.
        paper: ``{name: {key: paper's number}}`` for the rows (used where the runs give none, e.g. rows not
            run).
        head: the first column's header.
    """
    if keys is None:
        keys = [k for k in (summary[0] if summary else {}) if f"{k}_n" in (summary[0] if summary else {})]
    headers = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
    keys = list(headers)
    labels, paper = dict(labels or {}), dict(paper or {})
    entries = _entries(summary, order)
    fmts = {k: (fmt.get(k, ".2f") if isinstance(fmt, Mapping) else fmt) for k in keys}

    def paper_of(name, s, k):
        if s is not None and s.get(f"paper_{k}") is not None:
            return s[f"paper_{k}"]
        return (paper.get(name) or {}).get(k)

    beside = {k: any(paper_of(name, s, k) is not None for name, s in entries) for k in keys}
    cols = [head]
    for k in keys:
        cols += [f"{headers[k]} (ours)"] + ([f"{headers[k]} (paper)"] if beside[k] else [])
    cols += ["n", "run as"]
    lines = []
    for name, s in entries:
        row = [_label(name, s, labels)]
        for k in keys:
            row.append(NOT_RUN if s is None else
                       format_mean_std(s.get(k), s.get(f"{k}_std"), s.get(f"{k}_n", 0), fmts[k]))
            if beside[k]:
                row.append(_num(paper_of(name, s, k), fmts[k]))
        row += [0 if s is None else _n_cell(s, keys), "—" if s is None else s.get("run_as") or "—"]
        lines.append(row)
    shown = [s for _, s in entries if s is not None]
    return _with_notes(markdown_table(cols, lines, title=title), shown,
                       [s for s in summary if not any(s is x for x in shown)])


def _num(v, spec: str) -> str:
    return "—" if v is None else format(float(v), spec) if _finite(v) else str(v)


# ------------------------------------------------------------------------------------------ gather's printout
_GATHER_DROP = ("run", "commit", "device", "steps_planned", "seconds")


def gather_table(rows: Sequence[Mapping]) -> str:
    """A Markdown table of gather rows (:func:`dnlib.experiments.records.gather`: one per run; every column but the
    folder,
    commit and device; numbers to 4 significant digits)."""
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in _GATHER_DROP]
    return markdown_table(cols, [[cell(r.get(k), ".4g") for k in cols] for r in rows])


def gather_printout(rows: Sequence[Mapping]) -> tuple[str, list]:
    """What ``gather`` prints: ``(text, notes)``: the runs' table (:func:`gather_table`), then mean ± std and n per
    configuration over its seeds (:func:`summarize`, :func:`table`; the values of completed runs only, as
    :func:`compare`: a run stopped early counts in n, which names why, ``3 (1 time limit)``); ``notes``: the
    :class:`PoolingWarning` messages (runs not pooled, seeds counted once), for the caller to show (the CLI: one
    line each on stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PoolingWarning)
        summary = summarize(rows, finished=True)
    notes = [str(w.message) for w in caught if issubclass(w.category, PoolingWarning)]
    for w in caught:
        if not issubclass(w.category, PoolingWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    text = (f"{gather_table(rows)}\n\n"
            f"{table(summary, title='per configuration: mean ± std over runs (n)', fmt='.4g')}")
    return text, notes


def compare(runs, name, *, finished: bool = True, scale: int = 3) -> MarkdownTable:
    """One of the paper's tables (a name or a table: :func:`paper_table`; ``scale``: the SR tables') beside ours from
    the runs (run folders, records or gather rows): mean ± std over the runs of each configuration (completed runs only
    when ``finished``), the paper's number, n, and ``not run`` where no run has that configuration (:func:`paper_table`,
    :func:`summarize`, :func:`table`). Runs of the table's experiment that its ``where`` leaves out by a config
    field (another data set, the validation fold, another source or scale) are named under it, not dropped unseen."""
    spec = paper_table(name, scale=scale)
    summary = summarize(runs, list(spec["keys"]), finished=finished, where=spec["where"])
    md = table(summary, spec["keys"], title=spec["title"], fmt=spec["fmt"], labels=spec["labels"],
               order=spec["order"], paper=spec["paper"])
    left = _left_out(runs, spec["where"])
    return MarkdownTable(md + ("\n" if md.splitlines()[-1].startswith("- ") else "\n\n") + f"- {left}") if left else md


def _left_out(runs, where: Mapping[str, Any]) -> str:
    """``"not shown (this table takes dataset cifar10, ...): bn-star (eval_split val; 2 runs)"``: the runs that
    ``where``'s other fields take and its ``config.`` fields leave out (each row of :func:`summarize` is of one value
    of each: they define the experiment); ``""`` when none."""
    fields = {k[len("config."):]: (v if isinstance(v, (list, tuple, set)) else [v])
              for k, v in where.items() if k.startswith("config.")}
    if not fields:
        return ""
    with warnings.catch_warnings():        # rows split by the fields left out: their warnings are not this table's
        warnings.simplefilter("ignore", PoolingWarning)
        every = summarize(runs, keys=[], where={k: v for k, v in where.items() if k[len("config."):] not in fields})
    short = {f: f.removeprefix("setup.") for f in fields}
    off = []
    for s in every:
        bad = ", ".join(f"{short[f]} {s['what'].get(f)}" for f in fields if s["what"].get(f) not in fields[f])
        if bad:
            off.append(f"{s['name']} ({bad}; {s['n']} run{'' if s['n'] == 1 else 's'})")
    takes = ", ".join(f"{short[f]} {'/'.join(str(v) for v in vals if v is not None)}" for f, vals in fields.items())
    return f"not shown (this table takes {takes}): {', '.join(off)}" if off else ""


def provenance_table(runs, where: Mapping[str, Any] | None = None, title: str = "") -> MarkdownTable:
    """Where each configuration's numbers come from and what was run: runs, seeds, why they stopped, what was run
    (:func:`run_as`: steps of the paper's schedule, subset, batch size), commit, card, date, data and the files
    converted records were made from (``—``: not recorded); notes name rows split by a difference and runs not
    counted (:func:`notes`)."""
    lines, summary = [], summarize(runs, keys=[], where=where)
    for s in summary:
        lines.append([_label(f"{s['experiment']} / {s['name']}", s, {}), s["n"],
                      ", ".join(map(str, s["seeds"])) or None,
                      ", ".join(f"{c} {k}" for k, c in s["stopped"].items()), s["run_as"],
                      ", ".join(s["commits"]) or None, ", ".join(s["devices"]) or None, ", ".join(s["dates"]) or None,
                      ", ".join(s["data"]) or None, ", ".join(s["sources"]) or None])
    return _with_notes(markdown_table(["configuration", "n", "seeds", "stopped", "run as", "commit", "card", "date",
                                       "data", "converted from"], lines, title=title), summary)


def compare_bars(summary: Sequence[Mapping], key: str, *, order: Sequence[str] | None = None,
                 labels: Mapping[str, str] | None = None, paper: Mapping[str, Mapping] | None = None,
                 ax=None, title: str = "", ylabel: str | None = None, ylim=None):
    """Bars of ours (mean, with a ±std error bar where n > 1, the value written over it) beside the paper's number
    for each configuration of ``order`` (default: the summary's); a configuration no run has shows the paper's bar
    and ``not run``, one whose runs lack this number ``no value``; a panel with no value of ours at all says
    ``no runs`` across it. Returns the figure."""
    from ..analysis.figures import new_figure

    if ax is None:
        fig = new_figure(figsize=(max(4.0, 0.9 * len(order or summary) + 1.5), 3.2), layout="constrained")
        ax = fig.add_subplot()
    entries = _entries(summary, order)
    names = [n for n, _ in entries]
    labels, paper = dict(labels or {}), dict(paper or {})
    x = np.arange(len(names))
    ours = [(s or {}).get(key) for _, s in entries]
    err = [(s or {}).get(f"{key}_std") for _, s in entries]
    ref = [(s or {}).get(f"paper_{key}") or (paper.get(n) or {}).get(key) for n, s in entries]
    nan = float("nan")
    ours_ = np.array([nan if v is None else v for v in ours], dtype=float)
    ref_ = np.array([nan if v is None else v for v in ref], dtype=float)
    err_ = np.array([nan if e is None else e for e in err], dtype=float)        # no error bar where n < 2
    ax.bar(x - 0.2, ours_, 0.4, label="ours (± std where n > 1)", yerr=err_, capsize=3, color="#4292c6")
    ax.bar(x + 0.2, ref_, 0.4, label="paper", color="#bdbdbd")
    vals = np.concatenate([ours_ - np.nan_to_num(err_), ref_])
    vals = vals[np.isfinite(vals)]
    if ylim is None and len(vals) and vals.min() > 0:        # start near the smallest bar: differences show
        lo, hi = vals.min(), np.nanmax(np.concatenate([ours_ + np.nan_to_num(err_), ref_]))
        ylim = (max(0.0, lo - 0.3 * (hi - lo) - 0.02 * hi), hi + 0.25 * (hi - lo) + 0.02 * hi)  # legend room
    if ylim is not None:
        ax.set_ylim(*ylim)
    bottom = ax.get_ylim()[0]
    for k, v in enumerate(ours):
        if v is None:     # not run, or run without this number (e.g. Table 10 is not measured by a sweep)
            ax.text(x[k] - 0.2, bottom, NOT_RUN if entries[k][1] is None else NO_VALUE, rotation=90, ha="center",
                    va="bottom", fontsize=7, color="0.4")
        else:             # the number over the bar: a short one is read, not guessed
            ax.text(x[k] - 0.2, v + (0 if np.isnan(err_[k]) else err_[k]), format(v, ".3g"), ha="center",
                    va="bottom", fontsize=6, color="#08519c")
    ax.set_xticks(x, [_label(n, s, labels) for n, s in entries], rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel or key)
    ax.legend(fontsize=8, loc="upper center", ncol=2, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    if not np.isfinite(ours_).any():    # nothing of ours to show: say so, not a panel of paper bars and stubs
        ran = sum(s is not None for _, s in entries)
        ax.text(0.5, 0.55, "no runs" if not ran else f"no runs with this number ({ran} configurations ran "
                "without it)", transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.3",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    return ax.figure


def compare_figure(runs, name, *, finished: bool = True, scale: int = 3):
    """:func:`compare`'s table as bars: one panel per key of the table (ours with ±std where n > 1 beside the
    paper's; ``not run`` marked), and under them, as under the table, the runs the table leaves out (``not shown
    (this table takes ...)``). Returns the figure."""
    from ..analysis.figures import new_figure

    spec = paper_table(name, scale=scale)
    summary = summarize(runs, list(spec["keys"]), finished=finished, where=spec["where"])
    keys = list(spec["keys"])
    fig = new_figure(figsize=(min(14.0, 0.55 * len(spec["order"]) + 2.0) * len(keys), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, k in zip(axes, keys):
        compare_bars(summary, k, order=spec["order"], labels=spec["labels"], paper=spec["paper"], ax=ax,
                     title=spec["title"] if len(keys) == 1 else f"{spec['title'].split(':')[0]}: {spec['keys'][k]}",
                     ylabel=spec["keys"][k])
    left = _left_out(runs, spec["where"])
    if left:          # the runs the bars leave out are said under them, as under compare's table
        fig.supxlabel(textwrap.fill(left, width=int(fig.get_figwidth() * 14)), fontsize=8, ha="left", x=0.01)
    return fig
