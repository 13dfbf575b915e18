"""Aggregation over seeds: mean, standard deviation and n per configuration, tables beside the paper, curve bands.

The paper's numbers are single runs, and so is every run a sweep makes per (configuration, seed). This module
turns many runs into one line per configuration::

    from dnlib import aggregate, records
    rows = records.gather(["runs/cifar/sweep"])          # one flat row per run folder
    summary = aggregate.summarize(rows)                   # one dict per (experiment, name)
    aggregate.table(summary, ["final_acc"], order=["base", "bn", "bn-star", "dn-star"])   # Markdown, mean ± std
    bands = aggregate.curve_bands(["runs/cifar/sweep"], "test_acc")                        # per configuration
    dnlib.figures.band_curves(bands)

- :func:`summarize`: for each headline key ``k``: ``k`` (mean over the runs with a finite value), ``k_std``
  (sample standard deviation, ``ddof=1``; None with fewer than two values), ``k_n`` (finite values counted: a
  diverged run records None and is left out of the mean, so ``k_n < n``), ``paper_k``; and ``n``, ``seeds``,
  ``commits``, ``devices``, ``dates``, ``data``, ``stopped`` (counts by reason) and ``runs`` (the folders).
- :func:`table`: one Markdown line per configuration: ``mean ± std`` when two or more runs have a value, the plain
  value for one, ``not run`` for a configuration asked for (``order=``) that no run has; the paper's number beside
  each key; an ``n`` column.
- :func:`curve_bands`: the mean and standard deviation over seeds of a logged metric at each step
  (``curves.csv`` of run folders, or ``(record, rows)`` pairs as :func:`dnlib.experiment.load_runs` returns
  them); :func:`dnlib.figures.band_curves` draws them.
- :func:`compare` / :func:`compare_figure`: one of the paper's tables (:data:`PAPER_TABLES`, read by
  :func:`paper_table`: which runs, the paper's rows and numbers) beside ours as Markdown or bars;
  :func:`provenance_table`: where each configuration's numbers come from (commit, card, date, data, source).

This module sits beside :mod:`dnlib.records`: it imports records and figures (and, inside :func:`paper_table`
only, the paper's numbers from :mod:`dnlib.configs`), never the runner or a recipe.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from . import records
from .figures import MarkdownTable, markdown_table

__all__ = ["GATHER_COLUMNS", "PAPER_TABLES", "flatten", "summarize", "table", "curve_bands", "format_mean_std",
           "stopped_reason", "paper_table", "compare", "provenance_table", "compare_bars", "compare_figure"]

#: The columns of :func:`dnlib.records.gather` rows that are not headline numbers (``paper_*`` columns are the
#: paper's numbers; every other column is a headline key).
GATHER_COLUMNS = ("run", "experiment", "name", "seed", "stopped", "steps_done", "steps_planned", "seconds",
                  "commit", "device", "started", "date", "data", "converted_from")
NOT_RUN = "not run"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def stopped_reason(stopped: Optional[str]) -> Optional[str]:
    """A record's ``stopped`` without its step: ``"diverged at step 40"`` -> ``"diverged"``."""
    if stopped is None:
        return None
    return re.sub(r"\s+at step \d+$", "", str(stopped)).strip()


def flatten(row: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """``(meta, headline, paper)`` of one run: a :func:`dnlib.records.gather` row or a record dict
    (``record.json``, optionally with a ``run`` key naming its folder)."""
    if isinstance(row.get("headline"), Mapping) or isinstance(row.get("paper"), Mapping):  # a record dict
        git = row.get("git") or {}
        setup = (row.get("config") or {}).get("setup") or {}
        commit = git.get("commit")
        meta = {"run": row.get("run"), "experiment": row.get("experiment"), "name": row.get("name"),
                "seed": row.get("seed"), "stopped": row.get("stopped"),
                "commit": None if not commit else commit[:12] + ("+dirty" if git.get("dirty") else ""),
                "device": (row.get("device") or {}).get("name"),
                "date": (row.get("started") or row.get("ended") or row.get("date") or "")[:10] or None,
                "data": setup.get("data"), "converted_from": row.get("converted_from")}
        return meta, dict(row.get("headline") or {}), dict(row.get("paper") or {})
    meta = {k: row.get(k) for k in GATHER_COLUMNS}
    if not meta.get("commit"):
        meta["commit"] = None
    head = {k: v for k, v in row.items() if k not in GATHER_COLUMNS and not k.startswith("paper_")}
    paper = {k[len("paper_"):]: v for k, v in row.items() if k.startswith("paper_")}
    return meta, head, paper


def _field(row: Mapping, key: str) -> Any:
    """``row``'s value of a :func:`flatten` field or of ``config.<field>`` (None when absent)."""
    if key.startswith("config."):
        return (row.get("config") or {}).get(key[len("config."):])
    return flatten(row)[0].get(key)


def _load(rows) -> list:
    """Rows as given, or the records under a path / paths (each with its ``run`` folder)."""
    if isinstance(rows, (str, os.PathLike)):
        rows = [rows]
    out = []
    for r in rows:
        if isinstance(r, (str, os.PathLike)):
            out += [{**records.read_record(d), "run": str(d)} for d in records.find_runs([r])]
        elif isinstance(r, Mapping):
            out.append(r)
        elif hasattr(r, "record"):                       # a RunResult (duck-typed: the runner is a higher layer)
            out.append({**(r.record or {}), "run": None if r.run_dir is None else str(r.run_dir)})
        else:
            raise TypeError(f"rows: expected gather rows, record dicts, run folders or RunResults, got {type(r)}")
    return out


def summarize(rows, keys: Optional[Sequence[str]] = None, by: Sequence[str] = ("experiment", "name"), *,
              finished: bool = False, where: Optional[Mapping[str, Any]] = None) -> list[dict]:
    """One dict per configuration (the distinct values of ``by``), in order of first appearance.

    Args:
        rows: :func:`dnlib.records.gather` rows, record dicts, run folders (a folder of run folders stands for
            each of them) or RunResults.
        keys: the headline keys to aggregate (default: every headline key of any run, in order of appearance).
        by: the fields that name a configuration (``meta`` fields of :func:`flatten`: experiment, name, ...).
        finished: count the values of completed runs only: a run stopped early (time limit, interrupted,
            still running) counts in ``n`` and ``stopped`` but gives no value (its numbers are those of a shorter
            schedule). Diverged runs give no value either way.
        where: keep only the runs whose fields have these values (``{"experiment": "cifar",
            "config.dataset": "cifar10"}``: a :func:`flatten` field, or ``config.<field>`` of a record).

    Returns:
        dicts with the ``by`` fields, ``n`` (runs), and for each key ``k``: ``k`` (mean of the finite values, None
        when there are none), ``k_std`` (sample standard deviation, ``ddof=1``; None with fewer than two
        values), ``k_n`` (finite values: None/NaN/inf, e.g. a diverged run's, are left out and not counted),
        ``paper_k`` (the paper's number, the first one given); plus ``seeds`` (sorted), ``commits``, ``devices``,
        ``dates`` (the day a run started, else ended, else a converted record's ``date``), ``data`` (distinct,
        in order), ``stopped`` (``{reason: count}``, reasons without their step), ``runs`` (the run folders)
        and ``sources`` (the files converted records were made from, ``converted_from``).
    """
    by = tuple(by)
    groups: dict[tuple, list] = {}
    all_keys: list[str] = []
    for r in _load(rows):
        if where and any(_field(r, k) != v for k, v in where.items()):
            continue
        meta, head, paper = flatten(r)
        if finished and stopped_reason(meta.get("stopped")) != "completed":
            head = {k: None for k in head}
        for k in head:
            if k not in all_keys:
                all_keys.append(k)
        groups.setdefault(tuple(meta.get(b) for b in by), []).append((meta, head, paper))
    keys = all_keys if keys is None else list(keys)
    out = []
    for ident, members in groups.items():
        s = dict(zip(by, ident))
        s["n"] = len(members)
        for k in keys:
            vals = np.array([float(h[k]) for _, h, _ in members if _finite(h.get(k))], dtype=np.float64)
            s[k] = float(vals.mean()) if len(vals) else None
            # equal values have no spread (numpy's two-pass std would give ~1e-17 from the mean's rounding)
            s[f"{k}_std"] = (None if len(vals) < 2 else 0.0 if vals.min() == vals.max()
                             else float(vals.std(ddof=1)))
            s[f"{k}_n"] = int(len(vals))
            s[f"paper_{k}"] = next((p[k] for _, _, p in members if p.get(k) is not None), None)
        s["seeds"] = sorted({m["seed"] for m, _, _ in members if m.get("seed") is not None})
        for field, name in (("commit", "commits"), ("device", "devices"), ("date", "dates"), ("data", "data")):
            s[name] = list(dict.fromkeys(m[field] for m, _, _ in members if m.get(field) is not None))
        s["stopped"] = dict(Counter(stopped_reason(m.get("stopped")) for m, _, _ in members))
        s["runs"] = [m["run"] for m, _, _ in members if m.get("run") is not None]
        s["sources"] = list(dict.fromkeys(f for m, _, _ in members for f in m.get("converted_from") or []))
        out.append(s)
    return out


def format_mean_std(mean: Optional[float], std: Optional[float], n: int, fmt: str = ".2f") -> str:
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


def table(summary: Sequence[Mapping], keys: Union[None, Sequence[str], Mapping[str, str]] = None, *,
          title: str = "", fmt: Union[str, Mapping[str, str]] = ".2f", labels: Optional[Mapping[str, str]] = None,
          order: Optional[Sequence[str]] = None, paper: Optional[Mapping[str, Mapping[str, Any]]] = None,
          head: str = "model") -> MarkdownTable:
    """A Markdown table of :func:`summarize`'s dicts: one line per configuration, for each key our
    ``mean ± std`` (the plain value when n == 1) and the paper's number beside it (a key the paper gives no
    number for in any row shown has no paper column), then ``n`` (runs; ``"3 (1 diverged)"`` when some runs
    have no value: why they stopped, when every such run stopped early).

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
    by_name = {s.get("name"): s for s in summary}
    names = list(by_name) if order is None else list(order)
    fmts = {k: (fmt.get(k, ".2f") if isinstance(fmt, Mapping) else fmt) for k in keys}
    def paper_of(name, k):
        s = by_name.get(name) or {}
        return s.get(f"paper_{k}") if s.get(f"paper_{k}") is not None else (paper.get(name) or {}).get(k)

    beside = {k: any(paper_of(name, k) is not None for name in names) for k in keys}
    cols = [head]
    for k in keys:
        cols += [f"{headers[k]} (ours)"] + ([f"{headers[k]} (paper)"] if beside[k] else [])
    cols.append("n")
    lines = []
    for name in names:
        s = by_name.get(name)
        row = [labels.get(name, name)]
        for k in keys:
            row.append(NOT_RUN if s is None else
                       format_mean_std(s.get(k), s.get(f"{k}_std"), s.get(f"{k}_n", 0), fmts[k]))
            if beside[k]:
                row.append(_num(paper_of(name, k), fmts[k]))
        row.append(0 if s is None else _n_cell(s, keys))
        lines.append(row)
    return markdown_table(cols, lines, title=title)


def _num(v, spec: str) -> str:
    return "—" if v is None else format(float(v), spec) if _finite(v) else str(v)


def _runs(runs) -> list:
    """``[(record, curve rows)]`` of run folders, ``(record, rows)`` pairs or RunResults."""
    if isinstance(runs, (str, os.PathLike)) or hasattr(runs, "record"):
        runs = [runs]
    out = []
    for r in runs:
        if isinstance(r, (str, os.PathLike)):
            for d in records.find_runs([r]):
                curves = Path(d) / records.CURVES_FILE
                out.append((records.read_record(d), records.read_curves(d) if curves.is_file() else []))
        elif isinstance(r, tuple) and len(r) == 2:
            out.append((r[0], list(r[1])))
        elif hasattr(r, "record"):
            out.append((r.record or {}, [h for h in r.history if "step" in h]))
        else:
            raise TypeError(f"runs: expected run folders, (record, rows) pairs or RunResults, got {type(r)}")
    return out


def curve_bands(runs, metric: str, x: str = "step", by: Union[str, Sequence[str]] = "name") -> dict:
    """The mean and sample standard deviation over runs (seeds) of ``metric`` against ``x``, per configuration.

    Args:
        runs: run folders (a folder of run folders stands for each; their ``curves.csv``), ``(record, rows)``
            pairs (:func:`dnlib.experiment.load_runs`) or RunResults.
        metric: the logged column (``"test_acc"``, ``"valid_ppl"``, ``"set5/psnr"``...).
        x: the column along which runs are aligned (default ``"step"``).
        by: the field that names a configuration (a ``meta`` field of :func:`flatten`: ``name``, ``device``
            (the card's name), ``experiment``...), or several: the key is then ``"<first> (<others>, ...)"``.

    Returns:
        ``{name: {"x": array, "mean": array, "std": array, "count": array, "n": int}}``: at each ``x`` value any
        run logged a finite ``metric`` at, the mean over those runs, their standard deviation (``ddof=1``; NaN
        where fewer than two runs have a value: no band) and how many there are (``count``); ``n`` is the
        number of runs of that configuration. Configurations with no value of ``metric`` are left out.
    """
    per: dict[Any, list] = {}
    for rec, rows in _runs(runs):
        pts = {}
        for r in rows:
            if _finite(r.get(x)) and _finite(r.get(metric)):
                pts[float(r[x])] = float(r[metric])      # a repeated x (a resumed run): the last value
        meta = flatten(rec)[0]
        if isinstance(by, str):
            key = meta.get(by)
        else:
            first, *rest = [meta.get(b) for b in by]
            key = f"{first} ({', '.join(map(str, rest))})" if rest else first
        per.setdefault(key, []).append(pts)
    out = {}
    for name, series in per.items():
        xs = sorted(set().union(*series))
        if not xs:
            continue
        mean, std, count = [], [], []
        for xv in xs:
            vals = np.array([s[xv] for s in series if xv in s])
            mean.append(vals.mean())
            std.append(vals.std(ddof=1) if len(vals) > 1 else np.nan)
            count.append(len(vals))
        out[name] = {"x": np.array(xs), "mean": np.array(mean), "std": np.array(std), "count": np.array(count),
                     "n": len(series)}
    return out


# ------------------------------------------------------------------------------------- the paper's tables
#: The paper's tables that :func:`paper_table` knows (PAPER.md §4; Table 8 is a caption with no numbers).
PAPER_TABLES = ("table3", "table7", "table4", "table9", "table5", "table6", "table10")


def paper_table(name: str, scale: int = 3) -> dict:
    """How one of the paper's tables is read from run records: ``title``, ``where`` (which runs: experiment and
    data), ``keys`` (``{headline key: column}``), ``order`` (configuration names, the paper's row order),
    ``labels`` (the paper's row names), ``paper`` (``{name: {key: the paper's number}}``) and ``fmt``.

    The paper's numbers come from :mod:`dnlib.configs` (its tables as data). Tables 4 and 9 are laid out one
    line per (row, cell) configuration (``dn-star-lstm``...), cell by cell; Tables 5 and 6 are the x``scale``
    columns (our SR runs are named ``<schedule>-<row>``: the paper's schedule ``paper-*`` and the short Adam
    schedule ``fast-*``, which is not the paper's; ``bicubic`` and ``A+`` are not networks trained here)."""
    from .configs import cifar as C
    from .configs import ptb as P
    from .configs import sr as S

    if name not in PAPER_TABLES:
        raise ValueError(f"name: unknown table {name!r}; known are {list(PAPER_TABLES)}")
    if name in ("table3", "table7", "table10"):
        rows = C.TABLE3_ROWS if name == "table3" else C.list_configs() if name == "table7" else list(C.TABLE10)
        labels = {n: C.get_config(n).paper for n in rows}
        where = {"experiment": "cifar", "config.dataset": "cifar10"}
        if name == "table10":
            return {"title": "Table 10: first-layer filter pairs, mean |correlation| and MI (nats)", "where": where,
                    "keys": {"table10_corr": "corr.", "table10_mi": "MI"}, "order": rows, "labels": labels,
                    "paper": {n: {"table10_corr": C.TABLE10[n][0], "table10_mi": C.TABLE10[n][1]} for n in rows},
                    "fmt": ".4f"}
        return {"title": f"Table {name[5:]}: CIFAR-10 test accuracy", "where": where,
                "keys": {"final_acc": "CIFAR-10 acc."}, "order": list(rows), "labels": labels,
                "paper": {n: {"final_acc": C.TABLE7[n][0]} for n in rows}, "fmt": ".4f"}
    if name in ("table4", "table9"):
        table = P.TABLE4 if name == "table4" else P.TABLE9
        cells = {"lstm": "LSTM", "tanh-rnn": "tanh RNN", "relu-rnn": "ReLU RNN"}
        order = [f"{P.ROW_NAMES[row]}-{c}" for c in P.CELL_TYPES for row in table]
        return {"title": f"Table {name[5:]}: PTB test perplexity", "where": {"experiment": "ptb",
                                                                              "config.source": "paper"},
                "keys": {"final_test_ppl": "test ppl"}, "order": order,
                "labels": {f"{P.ROW_NAMES[row]}-{c}": f"{row} {cells[c]}" for c in P.CELL_TYPES for row in table},
                "paper": {f"{P.ROW_NAMES[row]}-{c}": {"final_test_ppl": table[row][k]}
                          for k, c in enumerate(P.CELL_TYPES) for row in table}, "fmt": ".2f"}
    sset = "Set14" if name == "table5" else "BSD200"
    key = sset.lower()
    paper = S.paper_numbers(sset, scale)
    rows = [("bicubic", "Bicubic"), ("a+", "A+")] + [(f"{sched}-{m}", f"{S.ROW_NAMES[m]}" + (
        "" if sched == "paper" else " (fast schedule)")) for sched in ("paper", "fast") for m in S.SR_MODELS]
    rows.append(("fast-dn*-code", "DN* (authors' code, fast schedule)"))
    return {"title": f"Table {name[5:]}: {sset} x{scale}, PSNR (dB) / SSIM", "where": {"experiment": "sr",
                                                                                     "config.scale": scale},
            "keys": {f"{key}_psnr": "PSNR", f"{key}_ssim": "SSIM"}, "order": [n for n, _ in rows],
            "labels": dict(rows),
            "paper": {n: dict(zip((f"{key}_psnr", f"{key}_ssim"), paper[label.split(" (")[0]]))
                      for n, label in rows if "code" not in n and label.split(" (")[0] in paper},
            "fmt": {f"{key}_psnr": ".2f", f"{key}_ssim": ".4f"}}


def compare(runs, name: str, *, finished: bool = True, scale: int = 3) -> MarkdownTable:
    """One of the paper's tables (:data:`PAPER_TABLES`) beside ours from the runs (run folders, records or
    gather rows): mean ± std over the runs of each configuration (completed runs only when ``finished``), the
    paper's number, n, and ``not run`` where no run has that configuration (:func:`paper_table`,
    :func:`summarize`, :func:`table`)."""
    spec = paper_table(name, scale)
    summary = summarize(runs, list(spec["keys"]), finished=finished, where=spec["where"])
    return table(summary, spec["keys"], title=spec["title"], fmt=spec["fmt"], labels=spec["labels"],
                 order=spec["order"], paper=spec["paper"])


def provenance_table(runs, where: Optional[Mapping[str, Any]] = None, title: str = "") -> MarkdownTable:
    """Where each configuration's numbers come from: runs, seeds, why they stopped, commit, card, date, data and
    the files converted records were made from (``—``: not recorded)."""
    lines = []
    for s in summarize(runs, keys=[], where=where):
        lines.append([f"{s['experiment']} / {s['name']}", s["n"], ", ".join(map(str, s["seeds"])) or None,
                      ", ".join(f"{c} {k}" for k, c in s["stopped"].items()), ", ".join(s["commits"]) or None,
                      ", ".join(s["devices"]) or None, ", ".join(s["dates"]) or None, ", ".join(s["data"]) or None,
                      ", ".join(s["sources"]) or None])
    return markdown_table(["configuration", "n", "seeds", "stopped", "commit", "card", "date", "data",
                           "converted from"], lines, title=title)


def compare_bars(summary: Sequence[Mapping], key: str, *, order: Optional[Sequence[str]] = None,
                 labels: Optional[Mapping[str, str]] = None, paper: Optional[Mapping[str, Mapping]] = None,
                 ax=None, title: str = "", ylabel: Optional[str] = None, ylim=None):
    """Bars of ours (mean, with a ±std error bar where n > 1) beside the paper's number for each configuration
    of ``order`` (default: the summary's); a configuration no run has shows the paper's bar only. Returns the
    figure."""
    from .figures import new_figure

    if ax is None:
        fig = new_figure(figsize=(max(4.0, 0.9 * len(order or summary) + 1.5), 3.2), layout="constrained")
        ax = fig.add_subplot()
    by_name = {s.get("name"): s for s in summary}
    names = list(by_name) if order is None else list(order)
    labels, paper = dict(labels or {}), dict(paper or {})
    x = np.arange(len(names))
    ours = [by_name.get(n, {}).get(key) for n in names]
    err = [by_name.get(n, {}).get(f"{key}_std") for n in names]
    ref = [by_name.get(n, {}).get(f"paper_{key}") or (paper.get(n) or {}).get(key) for n in names]
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
        if v is None:
            ax.text(x[k] - 0.2, bottom, NOT_RUN if names[k] not in by_name else "—", rotation=90, ha="center",
                    va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x, [labels.get(n, n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel or key)
    ax.legend(fontsize=8, loc="upper center", ncol=2, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def compare_figure(runs, name: str, *, finished: bool = True, scale: int = 3):
    """:func:`compare`'s table as bars: one panel per key of the table (ours with ±std where n > 1 beside the
    paper's; ``not run`` marked). Returns the figure."""
    from .figures import new_figure

    spec = paper_table(name, scale)
    summary = summarize(runs, list(spec["keys"]), finished=finished, where=spec["where"])
    keys = list(spec["keys"])
    fig = new_figure(figsize=(min(14.0, 0.55 * len(spec["order"]) + 2.0) * len(keys), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, k in zip(axes, keys):
        compare_bars(summary, k, order=spec["order"], labels=spec["labels"], paper=spec["paper"], ax=ax,
                     title=spec["title"] if len(keys) == 1 else f"{spec['title'].split(':')[0]}: {spec['keys'][k]}",
                     ylabel=spec["keys"][k])
    return fig
