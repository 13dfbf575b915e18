"""Configurations x seeds as concurrent runs in one resumable folder (:func:`sweep`, on an engine of
:mod:`.engines`), checked before any run starts (:func:`check_runs`), and read back (:func:`gather`,
:func:`load_runs`)."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import cli
from ..io import atomic_write_json, atomic_write_text
from . import claim, engines, records
from .flags import Refusing, from_args, run_flags
from .recipe import COMPLETED, RUN_FILE, Recipe, RunResult, check_config, check_int, check_time_limit
from .resume import read_run_file, resumed_options
from .runner import Terminated

__all__ = ["check_runs", "check_folder", "sweep", "gather", "gather_table", "load_runs"]


def check_runs(recipe: Recipe, configs: Sequence[str], seeds: Sequence[int] = (0,), run_args: Sequence[str] = (),
               *, out=None, options: Mapping | None = None, here: bool = True) -> list:
    """What :func:`sweep` checks before any run starts (the CLI's ``sweep`` too): each configuration and seed once,
    every configuration with the ``run_args`` passed on to its runs, as ``run`` itself would check them (the flags,
    the resolved configuration, :func:`check_config`; ``here``: the runs execute on this machine), one folder per
    run (two configurations resolved to one name, as SR's ``--norm`` does, are refused), and, in ``out``, the
    folders a rerun would resume or keep: their ``run.json`` and ``record.json`` must be dnlib's, and a run there
    with a record must have been made with the settings this sweep gives it (:func:`check_folder`). Raises
    ValueError naming the configuration (or the file); returns the configuration names, groups expanded."""
    return [c for c, _ in _plan(recipe, configs, seeds, run_args, out=out, options=options, here=here)]


def _plan(recipe: Recipe, configs: Sequence[str], seeds: Sequence[int], run_args: Sequence[str], *, out,
          options: Mapping | None, here: bool) -> list:
    """:func:`check_runs`'s checks; ``[(configuration, {seed: its run folder, None without out})]``."""
    configs = recipe.expand(configs)
    cli.check_distinct("configs", configs)
    cli.check_distinct("seeds", seeds)
    q = Refusing(prog=f"python -m dnlib {recipe.name} run", add_help=False)
    run_flags(q, recipe)
    plan, stems = [], {}
    for c in configs:
        try:
            args = q.parse_args([c, *map(str, run_args)])
            overrides, opts = from_args(recipe, args)
            cfg = recipe.config(c, steps=args.steps, **overrides)
            check_config(recipe, cfg, args.device, here=here)
        except ValueError as e:
            raise ValueError(f"{c}: {cli.one_line(e)}") from None
        name = getattr(cfg, "name", c)             # what runs (SR's --norm renames it) names its folders
        stem = recipe.label(name, options or {})
        if stem in stems:
            raise ValueError(f"{stems[stem]}, {c}: both run as {name} (one folder: "
                             f"{records.run_name(stem, '<seed>')}); give each configuration once")
        stems[stem] = c
        folders = {s: None if out is None else Path(out) / records.run_name(stem, s) for s in seeds}
        for d in folders.values():
            if d is not None:
                check_folder(recipe, d, name, cfg, opts)
        plan.append((c, folders))
    return plan


def check_folder(recipe: Recipe, folder, name: str, cfg, options: Mapping, what: str = "sweep") -> None:
    """Refuse (ValueError naming the folder, each differing setting and what to do) a run folder that a rerun of
    ``what`` (a sweep, analysis points) would keep or resume, when the run there was made with other settings than
    the configuration ``name`` resolved as ``cfg`` with ``options``: its ``run.json`` config name and fields (the
    schedule's steps, the learning rate...), and its options compared as ``run --resume`` compares them
    (:func:`dnlib.experiments.resume.resumed_options`). A folder without ``run.json`` or ``record.json`` (nothing
    trained yet) passes; a broken one is refused, named."""
    folder = Path(folder)
    stored = read_run_file(folder) if (folder / RUN_FILE).exists() else None
    if not (folder / records.RECORD_FILE).exists():
        return
    records.read_record(folder)
    if stored is None:
        return
    diff = [] if stored.get("config") == name else [f"config={stored.get('config')!r} (this {what}: {name!r})"]
    now, was = records.jsonable(recipe.config_dict(cfg)), records.jsonable(stored.get("fields") or {})
    diff += [f"{k}={was.get(k)!r} (this {what}: {now.get(k)!r})" for k in sorted(set(now) | set(was))
             if k != "name" and was and now.get(k) != was.get(k)]
    for k, v in options.items():
        try:
            resumed_options(recipe, stored, {k: v}, folder)
        except ValueError:
            diff.append(f"{k}={(stored.get('options') or {}).get(k)!r} (this {what}: {records.jsonable(v)!r})")
    if diff:
        raise ValueError(f"{folder}: its run was made with other settings than this {what} gives it: "
                         f"{', '.join(diff)}; give the {what} another --out, or delete the folder to run it anew")


# ------------------------------------------------------------------------------------------ sweep/gather
def _finished(d: Path) -> bool:
    try:
        return records.read_record(d).get("stopped") == COMPLETED
    except (FileNotFoundError, ValueError):
        return False


def _status_line(d: Path) -> str:
    try:
        rec = records.read_record(d)
    except (FileNotFoundError, ValueError):
        return f"{d.name}: starting"
    head = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec["headline"].items())
    return f"{d.name}: step {rec['steps_done']}/{rec['steps_planned']} {rec['stopped']} {head}"


def sweep(recipe: Recipe, configs: Sequence[str], seeds: Sequence[int] = (0,), *, out, jobs: int | None = None,
          engine: str = "local", address: str | None = None, cpus_per_run: float | None = None,
          gpus_per_run: float | None = None, time_limit: float | None = None, grace: float = 90.0,
          status_every: float = 30.0, run_args: Sequence[str] = (), options: Mapping | None = None,
          python: str = sys.executable, verbose: bool = True) -> list:
    """Run every (configuration, seed) as its own ``python -m <recipe.module> run NAME --seeds S --resume DIR``
    on an engine (:mod:`dnlib.experiments.engines`), then :func:`gather` them.

    ``engine="local"`` (default): processes on this machine, ``jobs`` at a time (default 1; several runs share one
    GPU). ``engine="ray"``: one Ray task per run on the cluster at ``address`` (``"auto"``, ``"HOST:PORT"``; None:
    a Ray instance started here for the sweep, or the one this process already joined), ``jobs`` runs in flight at
    most (default: as many as the cluster's resources hold); no shared filesystem: each run's files come back to
    ``out``. ``cpus_per_run`` (threads of each run; Ray default 1), ``gpus_per_run`` (fractions pack several runs
    on a GPU, e.g. 0.25 for four).

    Each run's folder is ``out/<label>-s<seed>`` on both engines (``recipe.label``; its ``log.txt`` holds the
    process output). The sweep is resumable: a rerun skips the runs whose record says ``completed`` and resumes
    the others from their checkpoints. ``time_limit`` is passed to each run; a run still alive ``grace`` seconds
    after it is killed (its last record stays, ``stopped: "running"``, which gather reads as ``ended without a final
    record at step N``: :func:`dnlib.experiments.records.settled`). ``run_args``: extra ``run`` flags (e.g.
    ``["--subset", "2000", "--steps", "300"]``). A failing run is reported (configuration, seed, log tail) and
    the others go on. A run another process trains now (a second sweep over the same ``out``; :mod:`.claim`) is left
    to it, said, and not counted failed. Writes ``runs.json`` and ``runs.md`` (one row per run: :func:`gather`) and
    ``sweep.json`` in ``out`` (not ``table.md``: that is what ``report`` writes there).

    Returns the gathered rows (a list) whose ``failed`` attribute lists this sweep's failed runs
    (:class:`dnlib.experiments.engines.SweepRows`). Bad arguments raise ValueError before any run starts: every
    configuration with ``run_args`` is checked as ``run`` checks it (:func:`check_runs`; a clash in the last
    configuration stops the sweep before the first one trains), and so are the ``run.json`` and ``record.json``
    of the folders a rerun resumes."""
    t_start = time.perf_counter()
    engines.check(engine, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, jobs=jobs)
    for s in seeds:
        check_int("seeds", s, 0)
    check_time_limit(time_limit)
    plan = _plan(recipe, configs, seeds, run_args, out=out, options=options, here=engine == "local")
    configs = [c for c, _ in plan]
    out = Path(out)
    todo, skipped, busy = [], [], []
    for c, folders in plan:
        for s, d in folders.items():
            argv = [c, "--seeds", str(s), *map(str, run_args)]
            if time_limit is not None:
                argv += ["--time-limit", str(time_limit)]
            job = engines.Job(c, s, d, argv)
            (skipped if _finished(d) else busy if claim.held(d) else todo).append(job)
    if verbose and skipped:
        print(f"[sweep] {len(skipped)} finished runs kept: {', '.join(j.folder.name for j in skipped)}", flush=True)
    runner = engines.make_engine(engine, recipe.module, address=address, jobs=jobs, cpus_per_run=cpus_per_run,
                                 gpus_per_run=gpus_per_run, python=python, checked=True,   # checked above, once
                                 limit=None if time_limit is None else time_limit + grace)
    t_engine = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    ended: dict = {}
    try:
        outcomes = engines.execute(runner, todo, skipped=len(skipped), verbose=verbose, status_every=status_every,
                                   status=_status_line, into=ended)
    except KeyboardInterrupt as e:          # the runs in flight were stopped and recorded where: say what was done
        stopped = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        _summary(recipe, out, list(ended.values()), skipped, busy, configs, seeds, t_start, t_engine,
                 {"engine": engine, "address": address, "jobs": jobs, "cpus_per_run": cpus_per_run,
                  "gpus_per_run": gpus_per_run, "interrupted": stopped})
        raise
    return _summary(recipe, out, outcomes, skipped, busy, configs, seeds, t_start, t_engine,
                    {"engine": engine, "address": address, "jobs": jobs, "cpus_per_run": cpus_per_run,
                     "gpus_per_run": gpus_per_run})


def _summary(recipe: Recipe, out: Path, outcomes: list, skipped: list, busy: list, configs, seeds, t_start: float,
             t_engine: float, how: dict) -> engines.SweepRows:
    """Write what a sweep did (``runs.json``, ``runs.md``, ``sweep.json``; also after an interrupt, ``how`` saying
    which) and return the gathered rows."""
    busy = busy + [o.job for o in outcomes if o.in_use]   # (started by another process since the plan)
    failed = [{"config": o.job.config, "seed": o.job.seed, "run": str(o.job.folder), "reason": o.failure,
               "log_tail": engines.log_tail(o.job.folder)} for o in outcomes if o.failure]
    rows = engines.SweepRows(gather([out]), failed)
    atomic_write_json(out / "runs.json", rows)
    atomic_write_json(out / "sweep.json", {"wall_seconds": time.perf_counter() - t_start, "engine": how["engine"],
                       "engine_start_seconds": t_engine, "address": how["address"], "jobs": how["jobs"],
                       "cpus_per_run": how["cpus_per_run"], "gpus_per_run": how["gpus_per_run"],
                       **({"interrupted": how["interrupted"]} if "interrupted" in how else {}),
                       "configs": list(configs), "seeds": list(seeds),
                       "experiment": recipe.name, "skipped": [j.folder.name for j in skipped],
                       "in_use": [j.folder.name for j in busy],
                       "ran": [{"run": o.job.folder.name, "host": o.host, "seconds": round(o.seconds, 3),
                                "failure": o.failure} for o in outcomes],
                       "failed": failed})
    atomic_write_text(out / "runs.md", str(gather_table(rows)) + "\n")
    if busy:
        print(f"[sweep] {len(busy)} runs left to another process training them now (not failed; a rerun after it "
              f"ends keeps or resumes them): {', '.join(j.folder.name for j in busy)}", file=sys.stderr, flush=True)
    if failed:
        which = ", ".join(f"{f['config']} seed {f['seed']}" for f in failed)
        print(f"[sweep] {len(failed)} of {len(outcomes)} runs failed: {which} (a rerun retries them)",
              file=sys.stderr, flush=True)
    return rows


def gather(paths) -> list:
    """One flat row per run folder at or under ``paths`` (folders, or :class:`RunResult` objects: their folders)
    (:func:`dnlib.experiments.records.gather`)."""
    if isinstance(paths, (str, os.PathLike, RunResult)):
        paths = [paths]
    return records.gather([p.run_dir if isinstance(p, RunResult) else p for p in paths])


def gather_table(rows: Sequence[Mapping]) -> str:
    """A Markdown table of :func:`gather`'s rows (:func:`dnlib.experiments.tables.gather_table`)."""
    from . import tables  # figures and matplotlib only when a table is printed
    return tables.gather_table(rows)


def load_runs(results) -> list:
    """``[(record, curve rows)]`` of runs: :class:`RunResult` objects (their history) or run folders (a folder
    holding run folders stands for each of them; ``curves.csv``), in order. A folder whose record is broken or
    foreign is skipped with a :class:`dnlib.experiments.records.RecordWarning` naming the file."""
    if isinstance(results, (str, os.PathLike, RunResult)):
        results = [results]
    out = []
    for r in results:
        if isinstance(r, RunResult):
            out.append((r.record, [h for h in r.history if "step" in h]))
        else:
            out += [(rec, records.read_curves(d)) for d, rec in records.read_records([r])]
    return out
