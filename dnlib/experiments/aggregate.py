"""Aggregation over seeds: mean, standard deviation and n per configuration, and curve bands.

The paper's numbers are single runs, and so is every run a sweep makes per (configuration, seed). This module
turns many runs into one line per configuration::

    from dnlib.experiments import aggregate, records, tables
    rows = records.gather(["runs/cifar/sweep"])          # one flat row per run folder
    summary = aggregate.summarize(rows)                   # one dict per (experiment, name)
    tables.table(summary, ["final_acc"], order=["base", "bn", "bn-star", "dn-star"])   # Markdown, mean ± std
    bands = aggregate.curve_bands(["runs/cifar/sweep"], "test_acc")                        # per configuration
    dnlib.analysis.curves.band_curves(bands)

**What is pooled.** Runs are seeds of one experiment when they have the same experiment, configuration name and
everything that defines the experiment (:func:`defining`: every config field, dataset, steps or epochs, subset,
batch size, source, any override, but labels, ``impl``, the card and how often it evaluated:
``pooling.NOT_DEFINING``). Runs of one name that differ in any of these are never pooled: one row each, labelled with
the difference (``bn-star [steps 40]``), and a :class:`PoolingWarning`. Each seed counts once: its newest finished
run; the others are listed as ``duplicates`` (a seed-0 run made by the suite and again in JupyterLab is one run).
Every table says what was run (``run as``: steps of the paper's schedule, subset, batch size).

- :func:`summarize`: for each headline key ``k``: ``k`` (mean over the runs with a finite value), ``k_std``
  (sample standard deviation, ``ddof=1``; None with fewer than two values), ``k_n`` (finite values counted: a
  diverged run records None and is left out of the mean, so ``k_n < n``), ``paper_k``; and ``n``, ``seeds``,
  ``commits``, ``devices``, ``dates``, ``data``, ``stopped`` (counts by reason), ``runs`` (the folders),
  ``run_as``, ``split`` and ``duplicates``.
- :func:`dnlib.experiments.tables.table`: one Markdown line per configuration: ``mean ± std`` when two or more runs have
  a value, the plain
  value for one, ``not run`` for a configuration asked for (``order=``) that no run has; the paper's number beside
  each key; ``n`` and ``run as`` columns; notes under it (splits, runs not counted).
- :func:`curve_bands`: the mean and standard deviation over seeds of a logged metric at each step
  (``curves.csv`` of run folders, or ``(record, rows)`` pairs as :func:`dnlib.experiments.sweep.load_runs` returns
  them); :func:`dnlib.analysis.curves.band_curves` draws them.
- :func:`dnlib.experiments.tables.compare` / ``compare_figure``: one of the paper's tables
  (:func:`dnlib.experiments.registry.paper_tables`, read by ``paper_table``: which runs, the paper's rows and numbers;
  each recipe owns its own,
  :meth:`dnlib.experiments.recipe.Recipe.paper_tables`) beside ours as Markdown or bars;
  ``tables.provenance_table``: where each configuration's numbers come from (commit, card, date, data, source).

This module sits beside :mod:`dnlib.experiments.records`: it imports records, the registry and
:mod:`dnlib.experiments.pooling` (what defines an experiment, split rows' labels, ``run_as``),
never the runner, a recipe or the ``*_configs`` modules (the recipes register their tables in
:mod:`dnlib.experiments.registry`); the tables and figures are :mod:`dnlib.experiments.tables`.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import records
from .pooling import defining, differing, run_as, short, split_labels, values_text
from .registry import paper_schedule

__all__ = ["GATHER_COLUMNS", "NOT_RUN", "NO_VALUE", "stopped_reason", "flatten", "PoolingWarning", "summarize",
           "notes", "curve_bands", "CurveWarning"]


# : The columns of :func:`dnlib.experiments.records.gather` rows that are not headline numbers (``paper_*`` columns are
# the : paper's numbers; every other column is a headline key).
GATHER_COLUMNS = ("run", "experiment", "name", "seed", "stopped", "steps_done", "steps_planned", "seconds",
                  "commit", "device", "started", "date", "data", "converted_from")


NOT_RUN = "not run"


NO_VALUE = "no value"     # a configuration that ran, without this number


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def stopped_reason(stopped: str | None) -> str | None:
    """A record's ``stopped`` without its step: ``"diverged at step 40"`` -> ``"diverged"``, ``"interrupted at step 35
    (its checkpoint: step 30)"`` -> ``"interrupted"``."""
    if stopped is None:
        return None
    return re.sub(r"\s+at step \d+( \(.*\))?$", "", str(stopped)).strip()


def flatten(row: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """``(meta, headline, paper)`` of one run: a :func:`dnlib.experiments.records.gather` row or a record dict
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
    """``row``'s value of a :func:`flatten` field or of ``config.<field>`` / ``config.setup.<field>`` (None: absent)."""
    if key.startswith("config."):
        v = row.get("config")
        for part in key.split(".")[1:]:
            v = v.get(part) if isinstance(v, Mapping) else None
        return v
    return flatten(row)[0].get(key)


def _with_record(row: Mapping) -> Mapping:
    """A :func:`dnlib.experiments.records.gather` row as its run folder's record when the folder still holds it (the
    record
    has the config, which says what the run was); else the row as it is."""
    if "config" in row or "headline" in row or not row.get("run"):
        return row
    try:
        rec = records.settled(row["run"], records.read_record(row["run"]))
    except (OSError, ValueError):
        return row
    return {**rec, "run": row["run"]} if rec.get("name") == row.get("name") else row


def _load(rows) -> list:
    """Rows as given, or the records under a path / paths (each with its ``run`` folder)."""
    if isinstance(rows, (str, os.PathLike)):
        rows = [rows]
    out = []
    for r in rows:
        if isinstance(r, (str, os.PathLike)):
            out += [{**rec, "run": str(d)} for d, rec in records.read_records([r])]   # broken ones: skipped, named
        elif isinstance(r, Mapping):
            out.append(_with_record(r))
        elif hasattr(r, "record"):                       # a RunResult (duck-typed: the runner is a higher layer)
            out.append({**(r.record or {}), "run": None if r.run_dir is None else str(r.run_dir)})
        else:
            raise TypeError(f"rows: expected gather rows, record dicts, run folders or RunResults, got {type(r)}")
    return out


class PoolingWarning(UserWarning):
    """Runs of one configuration that :func:`summarize` did not pool (they differ in what defines the experiment:
    one row each), or runs of one seed of which one only counts."""


def _when(r: Mapping) -> str:
    return str(r.get("ended") or r.get("started") or r.get("date") or "")


def _describe(meta: Mapping, r: Mapping) -> str:
    return str(meta.get("run") or f"{meta.get('name')} seed {meta.get('seed')} ({_when(r) or 'no date'})")


def _group(recs: Sequence[Mapping], by: Sequence[str]) -> list[dict]:
    """Group loaded runs by the ``by`` fields and what defines their experiment (:func:`defining`), one seed once.

    Returns one dict per group in order of first appearance: ``ident`` (the ``by`` values), ``what`` (the
    defining fields), ``members`` (indices into ``recs`` that count), ``duplicates`` (the runs of a seed already
    counted: each seed's newest finished run counts), ``split`` (a label suffix naming the fields in which this
    group differs from other groups of the same ``ident``, unique among them:
    :func:`dnlib.experiments.pooling.split_labels`; ``""``) and ``differs`` (those fields). Emits a
    :class:`PoolingWarning` for each split and each set of duplicates."""
    variants: dict[tuple, dict[tuple, list]] = {}
    whats: dict[tuple, dict] = {}
    for i, r in enumerate(recs):
        meta = flatten(r)[0]
        what = defining(r)
        key = tuple(sorted(what.items(), key=lambda kv: kv[0]))
        ident = tuple(meta.get(b) for b in by)
        variants.setdefault(ident, {}).setdefault(key, []).append(i)
        whats[key] = what
    out = []
    for ident, groups in variants.items():
        name = " / ".join(str(v) for v in ident if v is not None)
        differs: list = []
        if len(groups) > 1:
            differs = differing([whats[k] for k in groups])
            values = values_text(differs, [whats[k] for k in groups])
            warnings.warn(f"{name}: {len(groups)} sets of runs differ in what defines the experiment ({values}): "
                          f"not pooled, one row each", PoolingWarning, stacklevel=3)
        labels = split_labels(differs, {k: whats[k] for k in groups})
        for key, idx in groups.items():
            best: dict = {}
            for i in idx:
                meta = flatten(recs[i])[0]
                seed = meta.get("seed")
                if seed is None:
                    continue
                rank = (stopped_reason(meta.get("stopped")) == "completed", _when(recs[i]), str(meta.get("run") or ""))
                if seed not in best or rank > best[seed][0]:
                    best[seed] = (rank, i)
            kept = {i for _, i in best.values()}
            members = [i for i in idx if flatten(recs[i])[0].get("seed") is None or i in kept]
            dups = [i for i in idx if i not in members]
            if dups:
                warnings.warn(f"{name}: {len(dups)} more run(s) of seeds already counted, not counted again (the "
                              f"newest finished run of each seed counts): "
                              f"{', '.join(_describe(flatten(recs[i])[0], recs[i]) for i in dups)}",
                              PoolingWarning, stacklevel=3)
            split = labels[key]
            out.append({"ident": ident, "what": whats[key], "members": members, "differs": differs,
                        "duplicates": [_describe(flatten(recs[i])[0], recs[i]) for i in dups], "split": split})
    return out


def summarize(rows, keys: Sequence[str] | None = None, by: Sequence[str] = ("experiment", "name"), *,
              finished: bool = False, where: Mapping[str, Any] | None = None) -> list[dict]:
    """One dict per experiment: the distinct values of ``by`` (experiment and configuration name) and of what
    defines the experiment (:func:`defining`: dataset, steps or epochs, subset, batch size, source, any config
    override), in order of first appearance. Runs that differ only in their seed are pooled; each seed counts once
    (its newest finished run; the others are listed under ``duplicates``); runs of one name that differ in what
    defines them are never pooled: one dict each, with a :class:`PoolingWarning` naming the difference.

    Args:
        rows: :func:`dnlib.experiments.records.gather` rows (read as their folder's record when it is there), record
        dicts,
            run folders (a folder of run folders stands for each of them) or RunResults.
        keys: the headline keys to aggregate (default: every headline key of any run, in order of appearance).
        by: the fields that name a configuration (``meta`` fields of :func:`flatten`: experiment, name, ...).
        finished: count the values of completed runs only: a run stopped early (time limit, interrupted,
            still running) counts in ``n`` and ``stopped`` but gives no value (its numbers are those of a shorter
            schedule). Diverged runs give no value either way.
        where: keep only the runs whose fields have these values (``{"experiment": "cifar",
            "config.dataset": "cifar10"}``: a :func:`flatten` field, or ``config.<field>`` /
            ``config.setup.<field>`` of a record, None when absent; a list: any of).

    Returns:
        dicts with the ``by`` fields, ``n`` (runs counted), and for each key ``k``: ``k`` (mean of the finite
        values, None when there are none), ``k_std`` (sample standard deviation, ``ddof=1``; None with fewer than
        two values), ``k_n`` (finite values: None/NaN/inf, e.g. a diverged run's, are left out and not counted),
        ``paper_k`` (the paper's number, the first one given); plus ``seeds`` (sorted), ``commits``, ``devices``,
        ``dates`` (the day a run started, else ended, else a converted record's ``date``), ``data`` (distinct,
        in order), ``stopped`` (``{reason: count}``, reasons without their step), ``runs`` (the run folders),
        ``sources`` (the files converted records were made from, ``converted_from``), ``what`` (the defining
        fields), ``run_as`` (``pooling.run_as``: steps of the paper's schedule, subset, batch size), ``paper_schedule``,
        ``split`` (the fields and values that set this row apart from others of the same name, ``""`` when none),
        ``differs`` (those fields) and ``duplicates`` (runs not counted: a seed already counted).
    """
    by = tuple(by)
    recs, parts = [], []
    all_keys: list[str] = []
    for r in _load(rows):
        if where and any(_field(r, k) not in (v if isinstance(v, (list, tuple, set)) else [v])
                         for k, v in where.items()):
            continue
        meta, head, paper = flatten(r)
        if finished and stopped_reason(meta.get("stopped")) != "completed":
            head = {k: None for k in head}
        recs.append(r)
        parts.append((meta, head, paper))
    groups = _group(recs, by)
    for g in groups:
        for i in g["members"]:
            for k in parts[i][1]:
                if k not in all_keys:
                    all_keys.append(k)
    keys = all_keys if keys is None else list(keys)
    out = []
    for g in groups:
        members = [parts[i] for i in g["members"]]
        s = dict(zip(by, g["ident"]))
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
        first = members[0][0]
        s["what"] = g["what"]
        s["paper_schedule"] = paper_schedule(first.get("experiment"), first.get("name"), g["what"])
        s["run_as"] = run_as(g["what"], s["paper_schedule"])
        s["split"], s["differs"], s["duplicates"] = g["split"], g["differs"], g["duplicates"]
        out.append(s)
    return out


def notes(summary: Sequence[Mapping]) -> list[str]:
    """What a reader of a table of ``summary`` must know that its cells do not say: rows of one name that differ
    in what defines the experiment (not pooled) and runs not counted (seeds already counted)."""
    out, split_named = [], set()
    for s in summary:
        name = " / ".join(str(s.get(b)) for b in ("experiment", "name") if s.get(b) is not None)
        if s.get("differs") and name not in split_named:
            split_named.add(name)
            out.append(f"{name}: runs differ in {', '.join(short(f) for f in s['differs'])}: not pooled, one "
                       "row each")
        if s.get("duplicates"):
            where = f"{name} [{s['split']}]" if s.get("split") else name
            out.append(f"{where}: "
                       f"{len(s['duplicates'])} run(s) of a seed already counted, not counted (each seed's newest "
                       f"finished run counts): {', '.join(s['duplicates'])}")
    return out


def _runs(runs) -> list:
    """``[(record, curve rows)]`` of run folders, ``(record, rows)`` pairs or RunResults."""
    if isinstance(runs, (str, os.PathLike)) or hasattr(runs, "record"):
        runs = [runs]
    out = []
    for r in runs:
        if isinstance(r, (str, os.PathLike)):
            for d, rec in records.read_records([r]):                  # broken ones: skipped, named
                curves = Path(d) / records.CURVES_FILE
                out.append(({**rec, "run": str(d)}, records.read_curves(d) if curves.is_file() else []))
        elif isinstance(r, tuple) and len(r) == 2:
            out.append((r[0], list(r[1])))
        elif hasattr(r, "record"):
            out.append((r.record or {}, [h for h in r.history if "step" in h]))
        else:
            raise TypeError(f"runs: expected run folders, (record, rows) pairs or RunResults, got {type(r)}")
    return out


class CurveWarning(UserWarning):
    """A run :func:`curve_bands` left out: it logged the metric but not along the ``x`` asked for."""


def _along(rec: Mapping, rows: list, x: str) -> list:
    """``rows``; for ``x="epoch"``, a row without one has ``step / batches_per_epoch`` (dnlib's PTB runs log steps)."""
    per = ((rec.get("config") or {}).get("setup") or {}).get("batches_per_epoch")
    if x != "epoch" or not (_finite(per) and per > 0):
        return rows
    return [r if _finite(r.get(x)) or not _finite(r.get("step")) else {**r, x: r["step"] / per} for r in rows]


def curve_bands(runs, metric: str, x: str = "step", by: str | Sequence[str] = "name") -> dict:
    """The mean and sample standard deviation over runs (seeds) of ``metric`` against ``x``, per configuration.

    Args:
        runs: run folders (a folder of run folders stands for each; their ``curves.csv``), ``(record, rows)``
            pairs (:func:`dnlib.experiments.sweep.load_runs`) or RunResults.
        metric: the logged column (``"test_acc"``, ``"valid_ppl"``, ``"Set5/psnr"``...).
        x: the column along which runs are aligned (default ``"step"``). ``"epoch"``: a run that logs none (dnlib's
            PTB runs log ``step``) has ``step / batches_per_epoch`` of its ``config.setup``. A run that logged
            ``metric`` but no ``x`` is left out (not in ``n``) with a :class:`CurveWarning` naming it and why.
        by: the field that names a configuration (a ``meta`` field of :func:`flatten`: ``name``, ``device``
            (the card's name), ``experiment``...), or several: the key is then ``"<first> (<others>, ...)"``.
            Runs are grouped as :func:`summarize` groups them: runs of one name that differ in what defines the
            experiment are separate bands, keyed ``"<name> [steps 40]"`` (a :class:`PoolingWarning` says so), and
            each seed counts once (its newest finished run).

    Returns:
        ``{name: {"x": array, "mean": array, "std": array, "count": array, "n": int}}``: at each ``x`` value any
        run logged a finite ``metric`` at, the mean over those runs, their standard deviation (``ddof=1``; NaN
        where fewer than two runs have a value: no band) and how many there are (``count``); ``n`` is the
        number of runs of that configuration. Configurations with no value of ``metric`` are left out.
    """
    per: dict[int, tuple] = {}            # by group: groups never share a band, whatever their labels
    loaded = _runs(runs)
    fields = (by,) if isinstance(by, str) else tuple(by)
    for gi, g in enumerate(_group([rec for rec, _ in loaded], fields)):
        first, *rest = g["ident"]
        key = f"{first} ({', '.join(map(str, rest))})" if rest else first
        if g["split"]:
            key = f"{key} [{g['split']}]"
        for i in g["members"]:
            rec, rows = loaded[i][0], _along(*loaded[i], x)
            pts = {}
            for r in rows:
                if _finite(r.get(x)) and _finite(r.get(metric)):
                    pts[float(r[x])] = float(r[metric])      # a repeated x (a resumed run): the last value
            if not pts and any(_finite(r.get(metric)) for r in rows):
                warnings.warn(f"{_describe(flatten(rec)[0], rec)}: logs {metric} but no {x!r}" + (
                    " (nor batches_per_epoch in its config.setup to derive it from the step)" if x == "epoch" else "")
                    + ": left out of the curves", CurveWarning, stacklevel=2)
                continue
            per.setdefault(gi, (key, []))[1].append(pts)
    out = {}
    for gi, (name, series) in per.items():
        if name in out:                   # two groups whose ``by`` values print alike: a band each
            name = f"{name} (group {gi + 1})"
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
