"""One runner for every experiment: the run loop, its one time-limit rule, resume, divergence, the run record,
``run_many``, ``sweep``/``gather`` and one command-line grammar.

An experiment is a :class:`Recipe` (``dnlib.experiments.cifar.RECIPE``, ...): it names its configurations, resolves one
(``config``), builds what a run needs for a configuration and a seed (``build`` -> :class:`Setup`: model, loss,
resumable batches, evaluation, :class:`~dnlib.training.trainer.TrainConfig`, run identity), and reads the numbers of a run
(``headline``) beside the paper's (``paper``). The runner does everything else, the same way for every recipe::

    from dnlib import experiment
    from dnlib.experiments.cifar import RECIPE
    r = experiment.run(RECIPE, "dn-star", seed=0, steps=300, out="runs/cifar", options={"subset": (2000, 1000)})
    r.record["headline"], r.run_dir, r.history, r.model

    python -m dnlib cifar run dn-star --steps 300 --subset 2000,1000 --time-limit 600     # runs/cifar/dn-star-s0-<UTC>
    python -m dnlib cifar run --resume runs/cifar/dn-star-s0-20261130T070000.000Z       # continue that run
    python -m dnlib cifar sweep base dn-star --seeds 0 1 --jobs 2 --out runs/cifar/sweep  # rerun: skips finished runs
    python -m dnlib cifar sweep all --seeds 0 1 2 --engine ray --address auto --gpus-per-run 0.25 --out runs/t7
    python -m dnlib cifar gather runs/cifar/sweep

**Chunks and the time limit.** A run advances in chunks of ``Setup.chunk`` optimizer steps (default: the
evaluation interval ``train.eval_every``; PTB: one epoch); the trainer evaluates and checkpoints at the end of
every chunk, and the runner rewrites ``record.json`` and ``curves.csv`` there. The ONE time-limit rule: before
starting a chunk, the run stops when the seconds since :func:`run` was called plus the duration of the previous
chunk would exceed ``time_limit``; it is recorded as ``stopped: "time limit at step N"``. The first chunk of a
call always runs (there is no measure yet).

**Run folders.** ``out=BASE`` makes a new folder ``BASE/<config>-s<seed>-<UTC time>`` (:func:`dnlib.experiments.records.new_run_dir`,
never another run's); ``resume=DIR`` runs in ``DIR`` itself: it continues the checkpoint there (the trainer
refuses one written by another run, :class:`~dnlib.training.trainer.CheckpointError`), or starts there when it holds none.
A folder holds ``run.json`` (how the run was called, enough to resume it by its folder alone), ``record.json``
(:mod:`dnlib.experiments.records`; ``stopped`` is ``"running"`` until the run ends), ``curves.csv``, ``checkpoint.pt``,
``history.json``. Every file is written atomically: a killed run leaves complete files or none.

**Sweeps.** :func:`sweep` runs configurations x seeds on an engine (:mod:`dnlib.experiments.engines`): the local one (a
process pool, the default) or Ray (a cluster; no shared filesystem), with the same folders ``out/<label>-s<seed>``.

**Divergence.** A NaN/inf loss raises :class:`~dnlib.training.trainer.TrainingDiverged` from the trainer: the record says
``stopped: "diverged at step N"`` and its headline values are None; the CLI exits 1 with one line.

This module is the experiments layer: it imports train, records, cli, distributed and engines, never a recipe.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib.util
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import cli
from ..io import atomic_write_json, atomic_write_text
from ..training import distributed
from ..training.trainer import CheckpointError, TrainConfig, Trainer, TrainingDiverged, progress_bar, set_seed
from . import engines, records

__all__ = ["Recipe", "Setup", "Command", "RunResult", "Run", "prepare", "run", "run_many", "sweep", "gather",
           "gather_table", "load_runs", "replace", "check_int", "check_time_limit", "past_time_limit", "trainer_mode", "card", "time_steps", "call",
           "call_many", "check_graph", "bench", "steps_command", "row_label",
           "recipe_runs", "check_config", "check_runs", "read_run_file", "main",
           "RUN_FILE", "COMPLETED", "RUNNING"]

RUN_FILE = "run.json"
COMPLETED = "completed"
RUNNING = "running"
_REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------- the contract
@dataclass
class Setup:
    """Everything one run needs, built by :meth:`Recipe.build` for a configuration and a seed.

    ``trainer`` is the trainer class (:class:`~dnlib.training.trainer.Trainer` or :class:`~dnlib.training.trainer.GraphTrainer`) and
    ``trainer_kwargs`` its extra arguments (``param_groups``, ``lr_lambda``, ``capture``...). ``run_info`` is the
    run identity a resumed checkpoint must match (plain values). ``chunk``: steps per chunk (default
    ``train.eval_every``, or all steps when that is 0). ``info``: facts recorded with the config (the data used,
    the trainer mode...). ``data``: anything the recipe keeps for figures (on :attr:`RunResult.setup`).
    ``copies``: for a trainer of K copies in one model (:mod:`dnlib.experiments.stacked`), each copy's own Setup (its seed's
    build: model, info, data), in the order of the run's seeds; empty for an ordinary run."""
    model: nn.Module
    loss_fn: Callable
    batches: Any
    train: TrainConfig
    evaluate: Callable[[nn.Module], dict] | None = None
    run_info: dict = field(default_factory=dict)
    trainer: type = Trainer
    trainer_kwargs: dict = field(default_factory=dict)
    chunk: int | None = None
    info: dict = field(default_factory=dict)
    data: Any = None
    copies: list = field(default_factory=list)

    def make_trainer(self, **kwargs):
        """The trainer of this setup (``kwargs``: its arguments to change, e.g. ``out_dir``, ``evaluate=None``)."""
        kwargs = {"evaluate": self.evaluate, "run_info": self.run_info, **self.trainer_kwargs, **kwargs}
        return self.trainer(self.model, self.loss_fn, self.batches, self.train, **kwargs)


@dataclass
class Command:
    """A recipe's own sub-command (``bench``, ``check-graph``...): ``add_arguments(parser)`` then
    ``handler(args, parser) -> exit status``. With ``rows=True`` the handler returns rows (dicts, an iterable:
    check its arguments before the first row, inside :func:`dnlib.cli.user_errors`): each is printed as a JSON line
    as it comes, ``--json FILE`` (added) gets the list, and the exit status is 1 when a row says ``"ok": False``."""
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], Any]
    rows: bool = False


class Recipe:
    """One experiment. Subclass it and set :attr:`name` and :attr:`module`; implement :meth:`configs`,
    :meth:`config`, :meth:`load`, :meth:`build`, :meth:`headline` and :meth:`paper`; optionally
    :meth:`add_arguments` / :meth:`from_args` (the experiment's own flags), :meth:`groups`, :meth:`label`,
    :meth:`report`, :meth:`commands`. A run is :func:`build_setup`: :meth:`check_options`, :meth:`load`, the one
    ``set_seed(seed)``, :meth:`build` (a recipe never seeds)."""

    name: str = "experiment"          #: the experiment's name: ``runs/<name>/``, ``record["experiment"]``
    module: str = ""                  #: the module run by ``python -m`` (sweep's processes), e.g. ``"dnlib.experiments.cifar"``
    description: str = ""
    #: the data :meth:`load` returns serve every configuration and seed: :func:`call_many`, checks and benchmarks
    #: load them once and pass them on as the ``data`` option
    shares_data: bool = False

    def configs(self) -> list:
        """The names of the registered configurations (``list``; a sweep may also take ``all``)."""
        raise NotImplementedError

    def groups(self) -> dict:
        """The group names a sweep may take, ``{group: [configuration names]}`` (default ``all``: every one)."""
        return {"all": self.configs()}

    def expand(self, names: Sequence[str]) -> list:
        """Configuration names with :meth:`groups` expanded; raises ValueError for unknown ones."""
        groups = self.groups()
        out = [c for n in names for c in groups.get(n, [n])]
        for n in out:
            self.config(n)
        return out

    def config(self, config, steps: int | None = None, **overrides):
        """The resolved configuration: ``config`` is a name or a config object; ``overrides`` are fields to change
        (every field of the config must be accepted, so ``config(name, **all_fields)`` rebuilds it exactly);
        ``steps`` shortens the schedule. Raises ValueError naming a bad name or field."""
        raise NotImplementedError

    def from_dict(self, fields: Mapping[str, Any]):
        """The config whose :meth:`config_dict` is ``fields`` (as read back from JSON: lists where the config
        holds tuples), rebuilt exactly (no rescaling). Default: the named config with every field replaced."""
        return replace(self.config(fields["name"]), **fields)

    def config_dict(self, cfg) -> dict:
        """The config's fields as a dict (default ``dataclasses.asdict``)."""
        return dataclasses.asdict(cfg)

    def check_options(self, **options) -> None:
        """Raise ValueError for a bad option of :meth:`build` (its keyword-only ones, given), before :meth:`load`
        does any work. Default: none checked."""

    def load(self, cfg, seed: int, device: str = "auto", **options) -> Any:
        """The data of one run of ``cfg`` (its keyword-only parameters are the load options; the ``data`` option,
        when given, replaces the call). It runs before the seed: it must not draw from the global RNGs for what
        :meth:`build` makes (pass ``seed`` to a generator of its own). Default: None."""
        return None

    def build(self, cfg, data, seed: int, device: str = "auto", **options) -> Setup:
        """The :class:`Setup` of one run on ``data`` (:meth:`load`'s); its keyword-only parameters are the build
        options (a name may be an option of both). The runner seeds every RNG with ``seed`` just before calling
        it, so the model is initialised from the seed; a build does not seed."""
        raise NotImplementedError

    def headline(self, result: RunResult) -> dict:
        """The run's headline numbers (from ``result.history``, ``result.steps``, ``result.train_seconds``)."""
        raise NotImplementedError

    def paper(self, cfg) -> dict:
        """The paper's numbers for the keys of :meth:`headline` that it reports (None where it has none)."""
        return {}

    def paper_schedule(self, name: str, what: Mapping[str, Any]) -> int | None:
        """The length of the paper's schedule for configuration ``name`` (``what``: the run's defining fields,
        :func:`dnlib.experiments.aggregate.defining`), in the unit the config counts (steps, epochs); None: not known."""
        return None

    def paper_tables(self, **params) -> dict:
        """The paper's tables this experiment owns, ``{name: table}`` (:func:`dnlib.experiments.aggregate.paper_table`'s
        layout: title, which runs, keys, row order, labels, the paper's numbers, fmt); ``params``: e.g. ``scale``.
        Register the recipe with :func:`dnlib.experiments.aggregate.register` and name it in the entry-point group
        ``dnlib.recipes`` so that ``aggregate.compare(runs, "tableN")`` finds them. Default: none."""
        return {}

    def label(self, name: str, options: Mapping[str, Any]) -> str:
        """The stem of a sweep's run folder for configuration ``name`` (default the name)."""
        return name

    def check(self, cfg) -> None:
        """Raise ValueError for what :meth:`build` would refuse in ``cfg`` itself, without loading any data (every
        ``run`` and every run of a ``sweep`` is checked before anything starts). Default: the config's model is
        built (on the CPU, without data: the recipes' models are small; not on the meta device, whose random
        init imports torch's compiler, seconds) when it has a ``build_model()`` that needs no argument, so a
        normalizer ``impl`` that cannot compute its layer's spec is refused here; only ValueError counts."""
        build = getattr(cfg, "build_model", None)
        if build is None or any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                for p in inspect.signature(build).parameters.values()):
            return
        try:
            build()
        except ValueError:
            raise
        except Exception:  # noqa: BLE001, S110  not a refusal of the config: the real build says what it is
            pass

    #: the experiment's own ``run`` flags, ``{"--flag": (kind, add_argument keywords)}``: ``kind`` ``"field"`` (a
    #: config field to change) or ``"option"`` (a keyword of :meth:`build`). Their default is None: a flag not
    #: given is not passed on (a resumed run keeps its stored value).
    flags: dict = {}

    def add_arguments(self, parser: argparse.ArgumentParser, verb: str) -> None:
        """Add the experiment's own flags to ``run`` (:attr:`flags`; checked by ``sweep`` too) or to ``report``."""
        for flag, (_, kw) in self.flags.items() if verb == "run" else ():
            parser.add_argument(flag, default=None, **kw)

    def from_args(self, args: argparse.Namespace) -> tuple[dict, dict]:
        """``(overrides, options)`` from the parsed :attr:`flags` that were given: config fields to change, and
        keyword arguments of :meth:`build`."""
        out = {"field": {}, "option": {}}
        for flag, (kind, _) in self.flags.items():
            key = flag[2:].replace("-", "_")
            if getattr(args, key, None) is not None:
                out[kind][key] = getattr(args, key)
        return out["field"], out["option"]

    def report(self, path, args: argparse.Namespace | None = None) -> dict:
        """Summarize the runs under ``path`` (tables, figures); the default is :func:`gather`'s rows."""
        return {"runs": gather([path])}

    def commands(self) -> dict:
        """Extra sub-commands ``{name: Command}`` (``bench``, ...)."""
        return {}


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    """A run: its ``record`` (the dict in ``record.json``), the trainer's ``history``, the trained ``model``,
    the resolved ``config``, its ``run_dir`` (None without one), ``steps`` done, ``train_seconds`` (the
    trainer's timed steps) and the recipe's ``setup`` (its data for figures)."""
    record: dict | None
    history: list
    model: nn.Module | None = None
    config: Any = None
    run_dir: Path | None = None
    steps: int = 0
    train_seconds: float = 0.0
    setup: Setup | None = None

    @property
    def headline(self) -> dict:
        return (self.record or {}).get("headline") or {}

    @property
    def stopped(self) -> str | None:
        return (self.record or {}).get("stopped")

    def __repr__(self) -> str:
        rec = self.record or {}
        return (f"RunResult({rec.get('experiment')} {rec.get('name')} seed {rec.get('seed')}: "
                f"{rec.get('steps_done')}/{rec.get('steps_planned')} steps, {rec.get('stopped')}, "
                f"{rec.get('headline')})")


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


class Run:
    """A prepared run (made by :func:`prepare`): configuration resolved, setup built, trainer made, checkpoint
    resumed; nothing trained yet. :meth:`go` trains it. Errors in preparing are the caller's (bad config, missing
    data, another run's checkpoint: ValueError / FileNotFoundError / CheckpointError).

    The same loop runs K copies of one configuration in one trainer (:mod:`dnlib.experiments.stacked`): ``seeds`` (one per
    copy) and ``build(recipe, cfg, seeds, device, options) -> Setup`` (a Setup whose ``copies`` are the K copies'
    own). The run folder then holds the trainer's files (``run.json`` with the seeds, ``checkpoint.pt``,
    ``history.json``) and one ordinary run folder per copy, ``<config>-s<seed>`` (its record, curves and
    TensorBoard events); :meth:`go` returns the K results."""

    def __init__(self, recipe: Recipe, config=None, *, seed: int | None = None, steps: int | None = None,
                 time_limit: float | None = None, out=None, resume=None, device: str | None = None,
                 overrides: Mapping | None = None, options: Mapping | None = None,
                 stop_after: int | None = None, progress: bool = True, parameters: Mapping | None = None,
                 argv: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                 build: Callable[..., Setup] | None = None):
        self.t0 = time.perf_counter()
        self.started = time.time()
        check_time_limit(time_limit)
        check_int("stop_after", stop_after, 0, none_ok=True)
        if out is not None and resume is not None:
            raise ValueError("out, resume: give one (out: a base folder for a new run; resume: the run's folder)")
        stored = {}
        if resume is not None and (Path(resume) / RUN_FILE).exists():
            stored = read_run_file(resume)      # a broken or foreign run.json / record.json: refused, named
            if stored.get("experiment") != recipe.name:
                raise ValueError(f"resume: {resume} holds a {stored.get('experiment')!r} run, not {recipe.name!r}")
            if stored.get("fields"):
                try:
                    recipe.from_dict(stored["fields"])
                except (ValueError, TypeError, KeyError) as e:
                    raise ValueError(f"{Path(resume) / RUN_FILE}: not a {recipe.name} run file (its fields make no "
                                     f"configuration: {type(e).__name__}: {cli.one_line(e)})") from None
        if resume is not None and (Path(resume) / records.RECORD_FILE).exists():
            records.read_record(resume)
        overrides, options = dict(overrides or {}), dict(options or {})
        if config is None:
            if not stored:
                raise ValueError("config: name a configuration (or resume a run folder that holds run.json)")
            config = stored["config"]
            options = {**stored.get("options", {}), **options}
        if seeds is not None and seed is not None:
            raise ValueError("seed, seeds: give one (seeds: one per copy of a stacked run)")
        seeds = list(seeds if seeds is not None else stored.get("seeds") or [])
        if len(seeds) > 1 and build is None:
            raise ValueError(f"seeds: {seeds} are the copies of a stacked run; run (or resume) it with "
                             f"dnlib.experiments.stacked (the recipe's `stack` command)")
        if seed is None:
            seed = int(seeds[0] if seeds else stored.get("seed", 0))
        if device is None:
            device = stored.get("device", "auto")
        self.recipe, self.seed, self.device, self.time_limit, self.stop_after = recipe, int(seed), device, \
            time_limit, stop_after
        self.parameters, self.argv = parameters, argv
        if stored and config == stored.get("config") and stored.get("fields"):   # rebuild it exactly
            self.cfg = recipe.from_dict({**stored["fields"], **overrides})
            if steps is not None:
                self.cfg = recipe.config(self.cfg, steps=steps)
        else:
            self.cfg = recipe.config(config, steps=steps, **overrides)
        cfg_name = getattr(self.cfg, "name", str(config))
        check_config(recipe, self.cfg, device)       # what the build would refuse: before any data is loaded
        self.seeds = [int(s) for s in seeds] or [self.seed]
        if build is not None and not seeds:
            raise ValueError("seeds: a stacked run needs one seed per copy (none given, and none stored in the "
                             "folder to resume)")
        if build is None:
            self.setup = setup = build_setup(recipe, self.cfg, self.seed, device, options)
        else:                  # K copies in one trainer (dnlib.experiments.stacked.build: build_setup per copy)
            self.setup = setup = build(recipe, self.cfg, self.seeds, device, options)
        self.progress = bool(progress)
        self.planned = int(setup.train.steps)
        self.chunk = int(setup.chunk or setup.train.eval_every or self.planned or 1)
        if self.chunk < 1:
            raise ValueError(f"chunk: must be >= 1 step, got {self.chunk}")
        main = distributed.is_main()
        if resume is not None:
            self.run_dir = Path(resume)
            if main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        elif out is not None:
            seed_name = self.seed if not setup.copies else "+".join(map(str, self.seeds))
            self.run_dir = records.new_run_dir(out, records.run_name(cfg_name, seed_name)) if main else None
        else:
            self.run_dir = None
        self.trainer = distributed.prepare(setup.make_trainer(out_dir=self.run_dir), self.run_dir)
        if not main:
            self.run_dir = None          # one record, written by rank 0
        self.resumed = self.trainer.try_resume() if self.run_dir is not None else False
        # each copy's record: in the run folder; a stacked run's copies: one ordinary run folder each, inside it
        self.copy_dirs = [self.run_dir] * len(self.seeds)
        if setup.copies and self.run_dir is not None:
            self.copy_dirs = [self.run_dir / records.run_name(cfg_name, s) for s in self.seeds]
            for d in self.copy_dirs:
                d.mkdir(exist_ok=True)
        self._tb, self._tb_step = None, [self.trainer.step] * len(self.seeds)
        self._prov = None
        self.options = {k: v for k, v in options.items() if _plain(v)}
        self.config_name = cfg_name
        if self.run_dir is not None:
            atomic_write_json(records.jsonable({
                "experiment": recipe.name, "config": cfg_name, "fields": recipe.config_dict(self.cfg),
                "seed": self.seed, **({"seeds": self.seeds} if setup.copies else {}), "options": self.options,
                "device": str(device)}), self.run_dir / RUN_FILE,
                indent=1)

    # -- the record
    def result(self, stopped: str, k: int = 0) -> RunResult:
        """Copy ``k``'s result (an ordinary run: the run's) as it stands, ``stopped`` unless the copy stopped
        alone (a stacked copy that diverged: the last ``stopped`` row of its history)."""
        tr = self.trainer
        history, setup, model, steps = tr.copy_history(k), self.setup, tr.model, tr.step
        if setup.copies:       # a stacked copy: its own setup, and its run's model holding its weights
            setup = setup.copies[k]
            model = setup.model
            with torch.no_grad():
                model.load_state_dict(tr.copy_state_dict(k))
            own = [r for r in history if "stopped" in r]
            if own:
                stopped, steps = own[-1]["stopped"], own[-1]["step"]
        res = RunResult(None, history, model, self.cfg, self.copy_dirs[k], steps, tr.elapsed, setup)
        headline = dict(self.recipe.headline(res))
        if stopped.startswith("diverged"):
            headline = {key: None for key in headline}     # a diverged run reports no number
        config = {**self.recipe.config_dict(self.cfg), "setup": dict(setup.info)}
        if self._prov is None:   # git state, versions, device: once per run (the code that started it)
            self._prov = records.provenance(tr.device)
        res.record = records.make_record(
            self.recipe.name, config, self.seeds[k], name=self.config_name, parameters=self.parameters,
            started=self.started, ended=None if stopped == RUNNING else time.time(), steps_planned=self.planned,
            steps_done=steps, stopped=stopped, headline=headline, paper=self.recipe.paper(self.cfg),
            device=tr.device, argv=self.argv, prov=self._prov)
        return res

    def write(self, stopped: str) -> list:
        """Every copy's result (one for an ordinary run); with a run folder, each copy's ``curves.csv``,
        TensorBoard events and ``record.json``."""
        out = []
        for k in range(len(self.seeds)):
            res = self.result(stopped, k)
            if res.run_dir is not None:
                rows = [r for r in res.history if "step" in r]
                records.write_curves(res.run_dir, rows)
                self._tensorboard(rows, k)
                records.write_record(res.run_dir, res.record)
            out.append(res)
        return out

    def _tensorboard(self, rows: list, k: int = 0) -> None:
        """TensorBoard event files in copy ``k``'s run folder when ``tensorboard`` is installed (optional): every
        numeric metric of the rows logged since the last write (a resumed run appends only its new steps)."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
                return
            self._tb = [SummaryWriter(log_dir=str(d)) for d in self.copy_dirs]
        if self._tb is False:
            return
        for r in rows:
            if r["step"] > self._tb_step[k]:
                for key, v in r.items():
                    if key != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tb[k].add_scalar(key, v, r["step"])
                self._tb_step[k] = r["step"]
        self._tb[k].flush()

    # -- the loop
    def go(self) -> RunResult:
        """Train in chunks to the end of the schedule (or ``stop_after``, or the time limit); returns the result
        (a stacked run: the K copies' results, in the order of ``seeds``). Raises
        :class:`~dnlib.training.trainer.TrainingDiverged` after writing the record of a diverged run (a stacked run: a copy
        that diverges stops alone, its record says so; the run raises when every copy has)."""
        tr = self.trainer
        target = self.planned if self.stop_after is None else min(self.stop_after, self.planned)
        stopped, last = None, None
        # one bar for the whole run (the trainer's fit calls, one per chunk, draw on it)
        seeds = "+".join(map(str, self.seeds))
        tr.bar = progress_bar(target, initial=tr.step, desc=f"{self.config_name} s{seeds}",
                              enabled=self.progress and distributed.is_main())
        try:
            while tr.step < target:
                spent = time.perf_counter() - self.t0
                if past_time_limit(spent, last, self.time_limit):
                    stopped = f"time limit at step {tr.step}"
                    break
                c0 = time.perf_counter()
                tr.run_until(min(target, (tr.step // self.chunk + 1) * self.chunk))
                last = time.perf_counter() - c0
                if tr.step < target:
                    self.write(RUNNING)
            if stopped is None:
                stopped = COMPLETED if tr.step >= self.planned else f"stop_after at step {tr.step}"
            results = self.write(stopped)
            return results if self.setup.copies else results[0]
        except TrainingDiverged as e:
            self.write(e.status)
            raise
        except KeyboardInterrupt:
            self.write(f"interrupted at step {tr.step}")
            raise
        finally:
            tr.bar.close()
            tr.bar = None
            for writer in self._tb or ():
                writer.close()
            self._tb = None


def prepare(recipe: Recipe, config=None, **kwargs) -> Run:
    """A :class:`Run`, prepared but not trained (the CLI prepares inside its error handling, then calls
    :meth:`Run.go`). Arguments as :func:`run`."""
    return Run(recipe, config, **kwargs)


def run(recipe: Recipe, config=None, *, seed: int | None = None, steps: int | None = None,
        time_limit: float | None = None, out=None, resume=None, device: str | None = None,
        overrides: Mapping | None = None, options: Mapping | None = None, stop_after: int | None = None,
        progress: bool = True, parameters: Mapping | None = None,
        argv: Sequence[str] | None = None) -> RunResult:
    """Train one configuration of ``recipe`` and return its :class:`RunResult`.

    Args:
        config: a configuration name or object (None with ``resume``: the one stored in the run folder).
        seed: the run's seed (default 0, or the stored one when resuming).
        steps: shorten the schedule (the recipe scales it).
        time_limit: seconds; stop at the first chunk boundary where the next chunk would not fit (module doc).
        out: a base folder: the run gets a new folder ``out/<config>-s<seed>-<UTC time>``.
        resume: a run folder: continue it (its checkpoint must be this run's), or start there.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``.
        overrides: configuration fields to change; options: the run's options (:func:`build_setup`).
        stop_after: stop at this step (an interruption; the schedule is unchanged).
        progress: a progress bar over the run's steps (:func:`dnlib.training.trainer.progress_bar`: a widget in JupyterLab,
            a text bar under the notebook runner and on a terminal, periodic lines in a log); False: none.
        parameters: a notebook's parameters, recorded; argv: the command line, recorded.

    Without ``out`` and ``resume`` nothing is written (the record is on the result)."""
    return Run(recipe, config, seed=seed, steps=steps, time_limit=time_limit, out=out, resume=resume, device=device,
               overrides=overrides, options=options, stop_after=stop_after, progress=progress,
               parameters=parameters, argv=argv).go()


def run_many(recipe: Recipe, configs: Sequence, seeds: Sequence[int] = (0,), **kwargs) -> list:
    """:func:`run` for every configuration and seed, in this process (notebooks, CPU); ``kwargs`` as :func:`run`
    (e.g. ``options={"data": data}`` to share loaded data)."""
    return [run(recipe, c, seed=s, **kwargs) for c in configs for s in seeds]


# ------------------------------------------------------------------------------------------ checks
_RUN_FILE_TYPES = {"experiment": str, "config": str, "fields": dict, "seed": int, "options": dict, "device": str,
                   "seeds": list}


def read_run_file(folder) -> dict:
    """The ``run.json`` of a run folder (how it was called): a dict with ``experiment`` and ``config`` (strings),
    and ``fields``, ``options`` (objects), ``seed`` (an integer >= 0), ``device`` (a string), ``seeds`` (a list: a
    stacked run's) when present.
    Anything else (not UTF-8 JSON, not an object, a key of another type) is a ValueError naming the file."""
    path = Path(folder) / RUN_FILE
    stored = records.read_json_object(path, "a run file")
    for k, t in _RUN_FILE_TYPES.items():
        v = stored.get(k)
        if (v is None and k in ("experiment", "config")) or (
                v is not None and (not isinstance(v, t) or isinstance(v, bool) or (k == "seed" and v < 0))):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise ValueError(f"{path}: not a run file ({k!r} is {shown}, not a{'n' if t is int else ''} "
                             f"{'integer >= 0' if t is int else t.__name__}); a file that dnlib did not write?")
    return stored


def check_config(recipe: Recipe, cfg, device=None, *, here: bool = True) -> None:
    """Raise ValueError for what a run of the resolved configuration ``cfg`` would refuse, without loading any
    data (:class:`Run` checks it before building; ``run`` and ``sweep`` before anything starts): the recipe's
    :meth:`Recipe.check`, and, with ``here`` (the run executes on this machine), ``impl="triton"`` on a CPU
    without Triton's interpreter (or without Triton) and, under torchrun, a ``batch_size`` below the number of
    processes (a process with an empty share has no loss)."""
    recipe.check(cfg)
    if not here:
        return
    if getattr(cfg, "impl", None) == "triton":
        from ..norms import triton_dn
        dev = "auto" if device in (None, "auto") else str(device)
        on_cpu = not torch.cuda.is_available() if dev == "auto" else torch.device(dev).type != "cuda"
        if importlib.util.find_spec("triton") is None:
            raise ValueError(f"impl: 'triton' needs the triton package, which is not installed "
                             f"(`{triton_dn.INSTALL_HINT}`); use --impl auto or general")
        if on_cpu and not triton_dn.interpreted():
            raise ValueError(f"impl: 'triton' runs its kernels on a CUDA device, and this run's device is the CPU "
                             f"(device {dev!r}{', no CUDA here' if dev == 'auto' else ''}); set TRITON_INTERPRET=1 "
                             f"for Triton's CPU interpreter (slow: for checking), or use --impl auto or general")
    world, batch = distributed.world_size(), getattr(cfg, "batch_size", None)
    if world > 1 and isinstance(batch, int) and batch < world:
        raise ValueError(f"batch_size (--batch-size): {batch} is smaller than the {world} torchrun processes "
                         f"(WORLD_SIZE={world}): each trains on its share of a batch, and a process with an empty "
                         f"share has no loss; use a batch size >= {world}")


class _Refusing(cli.ArgumentParser):
    """``run``'s parser for checking a sweep's run arguments: an error is a ValueError, not an exit."""

    def error(self, message):  # noqa: D401 - argparse's signature
        message = cli.one_line(message)
        raise ValueError(message[len("argument "):] if message.startswith("argument ") else message)


def check_runs(recipe: Recipe, configs: Sequence[str], seeds: Sequence[int] = (0,), run_args: Sequence[str] = (),
               *, out=None, options: Mapping | None = None, here: bool = True) -> list:
    """What :func:`sweep` checks before any run starts (the CLI's ``sweep`` too): every configuration with the
    ``run_args`` passed on to its runs, as ``run`` itself would check them (the flags, the resolved configuration,
    :func:`check_config`; ``here``: the runs execute on this machine), and, in ``out``, the folders a rerun would
    resume: their ``run.json`` and ``record.json`` must be dnlib's. Raises ValueError naming the configuration
    (or the file); returns the configuration names, groups expanded."""
    configs = recipe.expand(configs)
    q = _Refusing(prog=f"python -m {recipe.module} run", add_help=False)
    _run_flags(q, recipe)
    for c in configs:
        try:
            args = q.parse_args([c, *map(str, run_args)])
            overrides, _ = recipe.from_args(args)
            check_config(recipe, recipe.config(c, steps=args.steps, **overrides), args.device, here=here)
        except ValueError as e:
            raise ValueError(f"{c}: {cli.one_line(e)}") from None
    if out is not None:
        for c in configs:
            for s in seeds:
                d = Path(out) / records.run_name(recipe.label(c, options or {}), s)
                if (d / RUN_FILE).exists():
                    read_run_file(d)
                if (d / records.RECORD_FILE).exists():
                    records.read_record(d)
    return configs


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
    after it is killed (its last record stays, ``stopped: "running"``). ``run_args``: extra ``run`` flags (e.g.
    ``["--subset", "2000", "--steps", "300"]``). A failing run is reported (configuration, seed, log tail) and
    the others go on. Writes ``table.json``, ``table.md`` and ``sweep.json`` in ``out``.

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
    configs = check_runs(recipe, configs, seeds, run_args, out=out, options=options, here=engine == "local")
    out = Path(out)
    todo, skipped = [], []
    for c in configs:
        for s in seeds:
            d = out / records.run_name(recipe.label(c, options or {}), s)
            argv = [c, "--seeds", str(s), *map(str, run_args)]
            if time_limit is not None:
                argv += ["--time-limit", str(time_limit)]
            (skipped if _finished(d) else todo).append(engines.Job(c, s, d, argv))
    if verbose and skipped:
        print(f"[sweep] {len(skipped)} finished runs kept: {', '.join(j.folder.name for j in skipped)}", flush=True)
    runner = engines.make_engine(engine, recipe.module, address=address, jobs=jobs, cpus_per_run=cpus_per_run,
                                 gpus_per_run=gpus_per_run, python=python, checked=True,   # checked above, once
                                 limit=None if time_limit is None else time_limit + grace)
    t_engine = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    outcomes = engines.execute(runner, todo, skipped=len(skipped), verbose=verbose, status_every=status_every,
                               status=_status_line)
    failed = [{"config": o.job.config, "seed": o.job.seed, "run": str(o.job.folder), "reason": o.failure,
               "log_tail": engines.log_tail(o.job.folder)} for o in outcomes if o.failure]
    rows = engines.SweepRows(gather([out]), failed)
    atomic_write_json(rows, out / "table.json")
    atomic_write_json({"wall_seconds": time.perf_counter() - t_start, "engine": engine, "engine_start_seconds":
                       t_engine, "address": address, "jobs": jobs, "cpus_per_run": cpus_per_run,
                       "gpus_per_run": gpus_per_run, "configs": list(configs), "seeds": list(seeds),
                       "experiment": recipe.name, "skipped": [j.folder.name for j in skipped],
                       "ran": [{"run": o.job.folder.name, "host": o.host, "seconds": round(o.seconds, 3),
                                "failure": o.failure} for o in outcomes],
                       "failed": failed}, out / "sweep.json")
    atomic_write_text(out / "table.md", str(gather_table(rows)) + "\n")
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
    """A Markdown table of :func:`gather`'s rows (:func:`dnlib.experiments.aggregate.gather_table`)."""
    from . import aggregate
    return aggregate.gather_table(rows)


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


# ------------------------------------------------------------------------------------- recipes' helpers
def replace(cfg, **fields):
    """``dataclasses.replace(cfg, **fields)``, lists given as tuples (as read back from JSON); a ValueError names
    a field that the config does not have."""
    known = [f.name for f in dataclasses.fields(cfg)]
    bad = sorted(set(fields) - set(known))
    if bad:
        raise ValueError(f"{bad[0]}: not a field of {type(cfg).__name__}; fields are {known}")
    return dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def check_time_limit(time_limit) -> None:
    """Raise ValueError unless ``time_limit`` is a number of seconds > 0 or None."""
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit: must be a number of seconds > 0 (or None), got {time_limit!r}")


def past_time_limit(spent: float, last: float | None, time_limit: float | None) -> bool:
    """The runner's one time-limit rule (module doc): stop before a chunk when the seconds ``spent`` since the run
    was called plus the ``last`` chunk's duration exceed ``time_limit``; the first chunk (``last`` None) always
    runs."""
    return time_limit is not None and last is not None and spent + last > time_limit


def check_int(name: str, value, low: int = 1, none_ok: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an integer >= ``low`` (or None when ``none_ok``)."""
    if (value is None and none_ok) or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return
    raise ValueError(f"{name}: must be an integer >= {low}{' (or None)' if none_ok else ''}, got {value!r}")


def trainer_mode(graph: bool, device) -> str:
    """How a run's steps execute (recorded as ``setup.mode``): ``"cuda-graph"``, ``"graph-step (eager)"`` (the
    graph trainer's step on a CPU, no capture) or ``"eager"``."""
    return ("cuda-graph" if torch.device(device).type == "cuda" else "graph-step (eager)") if graph else "eager"


def card(device) -> str:
    """The name of ``device``'s card (CUDA), else ``"cpu"``."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def time_steps(step: Callable[[], Any], steps: int, warmup: int = 0, device="cpu") -> tuple:
    """``(seconds, last value)``: the wall time of ``steps`` calls of ``step`` after ``warmup`` untimed ones (CUDA
    synchronized before and after when ``device`` is a CUDA device); the benchmarks' one timing loop."""
    check_int("steps", steps)
    check_int("warmup", warmup, 0)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    sync()
    return time.perf_counter() - t0, last


_RUN_ARGS = ("seed", "steps", "time_limit", "out", "resume", "device", "stop_after", "progress", "parameters", "argv")


def _keywords(method) -> list:
    return [k for k, p in inspect.signature(method).parameters.items() if p.kind is p.KEYWORD_ONLY]


def _options(recipe: Recipe) -> list:
    """The options of a run of ``recipe``: ``data`` (instead of :meth:`Recipe.load`), then the keyword-only
    parameters of ``recipe.load`` and of ``recipe.build``."""
    return list(dict.fromkeys(["data", *_keywords(recipe.load), *_keywords(recipe.build)]))


def build_setup(recipe: Recipe, cfg, seed: int, device="auto", options: Mapping | None = None) -> Setup:
    """The :class:`Setup` of one run: the options split by the keyword-only parameters of ``recipe.load`` and
    ``recipe.build`` (a name of both goes to both; any other to ``build``, which refuses it), the build options
    checked (:meth:`Recipe.check_options`), the data loaded (unless the ``data`` option gives them), every RNG
    seeded with ``seed`` (the one ``set_seed`` of a run: dnlib.experiments.stacked calls this once per copy), then built."""
    options = dict(options or {})
    data = options.pop("data", None)
    load_kw, build_kw = _keywords(recipe.load), _keywords(recipe.build)
    build_opts = {k: v for k, v in options.items() if k in build_kw or k not in load_kw}
    recipe.check_options(**build_opts)
    if data is None:
        data = recipe.load(cfg, seed, device, **{k: v for k, v in options.items() if k in load_kw})
    set_seed(seed)
    return recipe.build(cfg, data, seed, device, **build_opts)


def _share_data(recipe: Recipe, options: dict | None, setup: Setup) -> None:
    """Keep the data a run loaded (``setup.data``) in ``options`` for the next run, when the recipe
    :attr:`~Recipe.shares_data` and none was given (one load for many runs, benchmarks or checks)."""
    if options is not None and options.get("data") is None and recipe.shares_data:
        options["data"] = setup.data


def call(recipe: Recipe, config=None, **kwargs) -> RunResult:
    """:func:`run` with flat keyword arguments, as the recipes' ``run`` functions take them: :func:`run`'s own
    (``seed``, ``steps``, ``out``, ``resume``, ``time_limit``...), the options of ``recipe.load``/``build`` (``data``,
    ``subset``...) and configuration fields (every other keyword, e.g. ``lr=2e-3``)."""
    run_kw = {k: kwargs.pop(k) for k in _RUN_ARGS if k in kwargs}
    options = {k: kwargs.pop(k) for k in _options(recipe) if k in kwargs}
    return run(recipe, config, overrides=kwargs, options=options, **run_kw)


def call_many(recipe: Recipe, configs: Sequence, seeds: Sequence[int] = (0,), **kwargs) -> list:
    """:func:`call` for every configuration and seed in this process (notebooks, CPU); the data the first run
    loaded is shared by the others (when the recipe :attr:`~Recipe.shares_data` and none is given)."""
    out = []
    for c in configs:
        for s in seeds:
            out.append(call(recipe, c, seed=s, **kwargs))
            _share_data(recipe, kwargs, out[-1].setup)
    return out


def recipe_runs(recipe: Recipe, path) -> dict:
    """``{run folder: record}`` of the runs of ``recipe`` at or under ``path`` (a report's input; a broken or
    foreign record is skipped with a warning naming it); a ValueError naming ``path`` when there are none."""
    recs = {d: rec for d, rec in records.read_records([path]) if rec["experiment"] == recipe.name}
    if not recs:
        raise ValueError(f"{path}: no run folders of {recipe.name} (with {records.RECORD_FILE}) to report; make them "
                         f"with `python -m {recipe.module} run ... --out {path}` or `sweep`")
    return recs


def row_label(summary: Mapping, label: str) -> str:
    """A table row's label for a :func:`dnlib.experiments.aggregate.summarize` dict, naming its runs that did not complete
    (``"BN* (1 time limit)"``: their numbers are those of a shorter schedule)."""
    return label + "".join(f" ({c} {k})" for k, c in summary["stopped"].items() if k != COMPLETED)


def _trainer(recipe: Recipe, cfg, seed: int, device, options: dict, log_every: int | None = None):
    """``(trainer, setup)`` of ``cfg``, seeded, without evaluation, outside the runner (checks, benchmarks)."""
    setup = build_setup(recipe, cfg, seed, device, options)
    if log_every:
        setup.train.log_every = log_every
    return setup.make_trainer(evaluate=None), setup


def _row(row: dict) -> dict:
    """A row without the facts a recipe does not have (None: no ``impl``, no trainer ``mode``, no error)."""
    return {k: v for k, v in row.items() if v is not None}


def check_graph(recipe: Recipe, config, *, eager: Mapping, graph: Mapping, steps: int = 5, seed: int = 0,
                device="auto", rtol: float = 1e-2, options: dict | None = None, **overrides) -> dict:
    """Train ``steps`` steps of a configuration with the eager step and with the graph step (the build options
    ``eager`` and ``graph``, over ``options``) from the same initialisation on the same batches. ``ok`` when every
    floating parameter and buffer agrees to ``rtol`` of how far training moved it, the losses agree to ``rtol``
    and the capture did not fall back. On a CPU this checks the graph step's code without a capture. A config with
    an ``impl`` is compared with the plain eager step (``impl="auto"``: e.g. a compiled graph step against it).
    ``options`` (a dict) keeps the data loaded here for the next call (:func:`_share_data`)."""
    check_int("steps", steps)
    cfg = recipe.config(config, steps=steps, **overrides)
    options = {} if options is None else options
    out = {}
    for mode, opts in (("eager", eager), ("graph", graph)):
        c = replace(cfg, impl="auto") if mode == "eager" and hasattr(cfg, "impl") else cfg
        tr, setup = _trainer(recipe, c, seed, device, {**options, **opts}, log_every=1)
        _share_data(recipe, options, setup)
        init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        losses = [r["train_loss"] for r in tr.run_until(steps) if "train_loss" in r]
        out[mode] = (init, tr.model.state_dict(), losses, setup.info.get("mode"), getattr(tr, "fell_back", False))
    (init, eager_sd, le, _, _), (_, graph_sd, lg, gmode, fell) = out["eager"], out["graph"]
    floats = [k for k, v in eager_sd.items() if v.is_floating_point()]
    moved = max((eager_sd[k].double() - init[k].double()).abs().max().item() for k in floats)
    diff = max((eager_sd[k].double() - graph_sd[k].double()).abs().max().item() for k in floats)
    loss_diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(le, lg))
    ok = diff <= rtol * moved and loss_diff <= rtol and moved > 0 and all(map(math.isfinite, lg)) and not fell
    return _row({"config": cfg.name, "mode": gmode, "impl": getattr(cfg, "impl", None), "steps": steps,
                 "param_diff": diff, "param_moved": moved, "loss_rel_diff": loss_diff, "eager_losses": le,
                 "graph_losses": lg, "ok": bool(ok), "error": "the CUDA-graph capture failed" if fell else None})


def bench(recipe: Recipe, config, *, steps: int = 200, warmup: int = 20, seed: int = 0, device="auto",
          unit: str = "items", options: dict | None = None, **overrides) -> dict:
    """Training throughput of a configuration outside the runner: ``steps`` timed steps after ``warmup`` untimed
    ones (a graph capture or a compilation among them), no evaluation; ``<unit>_per_s`` counts ``batch_size``
    items per step. ``options``: build options (a dict keeps the data loaded here for the next call)."""
    check_int("steps", steps)
    check_int("warmup", warmup, 0)
    cfg = recipe.config(config, **overrides)
    tr, setup = _trainer(recipe, cfg, seed, device, dict(options or {}))
    _share_data(recipe, options, setup)
    sec, loss = time_steps(lambda: tr.train_step(next(tr.batches)), steps, warmup, tr.device)
    return _row({"config": cfg.name, "mode": setup.info.get("mode"), "impl": getattr(cfg, "impl", None),
                 "device": card(tr.device), "steps": steps, "batch_size": cfg.batch_size, "steps_per_s": steps / sec,
                 f"{unit}_per_s": steps * cfg.batch_size / sec, "loss": float(loss)})


def steps_command(recipe: Recipe, verb: str, *, steps: int, warmup: int = 0, flags: Sequence[str] = (),
                  configs: Sequence[str] = (), defaults: Mapping | None = None, options: Mapping | None = None,
                  **kwargs) -> Command:
    """A recipe's ``bench`` (``verb="bench"``: :func:`bench`, ``kwargs`` its ``unit``) or ``check-graph``
    (:func:`check_graph`, ``kwargs`` its ``eager`` and ``graph`` options) command: configuration names (groups
    expanded; default ``configs``), ``--steps``, ``--warmup`` (bench), ``--device`` and the recipe's run ``flags``
    named (``defaults``: their values when not given; ``options``: fixed build options); one JSON row per
    configuration, data loaded once; a configuration that fails is a row with ``ok: false`` and the error."""
    def add(q):
        q.add_argument("configs", nargs="*" if configs else "+", default=list(configs),
                       help=f"configuration names (groups: {', '.join(recipe.groups())})")
        q.add_argument("--steps", type=cli.positive_int, default=steps, help=f"steps per configuration (default {steps})")
        if verb == "bench":
            q.add_argument("--warmup", type=cli.nonnegative_int, default=warmup,
                           help="untimed steps first (a capture or compilation among them)")
        q.add_argument("--device", type=cli.device, default="auto", help="auto, cpu, cuda[:N] (default auto)")
        for flag in flags:
            q.add_argument(flag, default=None, **recipe.flags[flag][1])
        q.set_defaults(**(defaults or {}))

    def handler(args, q):
        overrides, opts = recipe.from_args(args)
        opts = {**opts, **(options or {})}
        with cli.user_errors(q):
            names = recipe.expand(args.configs)
            for n in names:
                recipe.config(n, **overrides)
        fn = bench if verb == "bench" else check_graph
        extra = {"warmup": args.warmup} if verb == "bench" else {}
        for n in names:
            try:
                yield fn(recipe, n, steps=args.steps, device=args.device, options=opts, **extra, **kwargs, **overrides)
            except Exception as e:  # noqa: BLE001  (e.g. no capture or compiler here: the row says so, exit 1)
                yield {"config": n, "ok": False, "error": f"{type(e).__name__}: {cli.one_line(e)}"}

    what = "training throughput per configuration" if verb == "bench" else "compare graph steps with eager steps"
    return Command(what, add, handler, rows=True)

# ------------------------------------------------------------------------------------------------- CLI
def _run_flags(q: argparse.ArgumentParser, recipe: Recipe) -> None:
    q.add_argument("config", nargs="?", default=None, help="configuration name (see `list`)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=None, metavar="S",
                   help="one run per seed, one after another, each in its own folder (default 0, or the resumed "
                        "run's; --resume: at most one)")
    q.add_argument("--time-limit", type=cli.positive_float, default=None,
                   help="seconds: stop at the first chunk boundary where the next chunk would not fit")
    q.add_argument("--out", type=cli.out_dir, default=None,
                   help=f"base folder: the run gets a new folder in it (default runs/{recipe.name})")
    q.add_argument("--resume", type=cli.out_dir, default=None, metavar="DIR",
                   help="a run folder: continue its checkpoint (or start there)")
    _passed_on_flags(q, recipe)


def _passed_on_flags(q, recipe: Recipe) -> None:
    """The ``run`` flags that ``sweep`` passes on to every run (listed in ``sweep --help``)."""
    q.add_argument("--steps", type=cli.positive_int, default=None, help="shorten the schedule")
    q.add_argument("--device", type=cli.device, default=None, help="auto, cpu, cuda[:N] (default auto)")
    q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (periodic lines when stderr is not a terminal); "
                        "default: on when stderr is a terminal")
    recipe.add_arguments(q, "run")


def _passed_on_help(recipe: Recipe) -> str:
    """``sweep --help``'s list of the run flags it passes on."""
    hp = cli.ArgumentParser(add_help=False, usage=argparse.SUPPRESS)
    _passed_on_flags(hp.add_argument_group("run options, passed on to every run (see run --help)"), recipe)
    return hp.format_help()


def _run_command(recipe: Recipe, args, q, argv) -> int:
    name, seeds = args.config, args.seeds or [None]
    if args.out is not None and args.resume is not None:
        q.error("--out, --resume: give one (--out: a base folder for a new run; --resume: the run's folder)")
    if name is None and args.resume is None:
        q.error("config: the following arguments are required: config (or --resume DIR)")
    if args.resume is not None and len(seeds) > 1:
        q.error(f"--seeds: --resume continues one run; give one seed, not {len(seeds)}")
    if len(set(seeds)) < len(seeds):
        q.error(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    overrides, options = recipe.from_args(args)
    with cli.user_errors(q):    # a bad name or field, an impl or batch this machine cannot run: before any data
        if name is not None:
            check_config(recipe, recipe.config(name, steps=args.steps, **overrides), args.device)
    code = 0
    for seed in seeds:          # one after another, each in its own folder; a diverged run does not stop the rest
        one, go_on = _run_one(recipe, args, q, argv, seed, overrides, options)
        code = max(code, one)
        if not go_on:
            break
    return code


def _run_one(recipe: Recipe, args, q, argv, seed, overrides, options) -> tuple[int, bool]:
    """One run of ``run``: its exit status (0; 1: diverged or a full disk, one line; 2: a foreign or unreadable
    checkpoint, one line) and whether the next seed may start (not after a full disk or a bad checkpoint)."""
    out = args.out if args.resume is not None or args.out is not None else str(Path("runs") / recipe.name)
    try:
        with cli.user_errors(q):
            progress = sys.stderr.isatty() if args.progress is None else args.progress
            prepared = prepare(recipe, args.config, seed=seed, steps=args.steps, time_limit=args.time_limit,
                               out=None if args.resume else out, resume=args.resume, device=args.device,
                               overrides=overrides, options=options, argv=argv, progress=progress)
    except CheckpointError as e:        # another run's (or an unreadable) checkpoint: nothing trained
        print(f"{q.prog}: error: {cli.one_line(e)}", file=sys.stderr)
        return 2, False
    try:
        res = prepared.go()
    except TrainingDiverged as e:      # the record says "diverged at step N"; exit 1, one line
        print(f"{q.prog}: {cli.one_line(e)}", file=sys.stderr)
        return 1, True
    except OSError as e:               # a full disk: "No space left on device: <file>" (dnlib.io), exit 1, one line
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{q.prog}: error: {e.strerror}", file=sys.stderr)
        return 1, False
    if not distributed.is_main():       # under torchrun: rank 0 alone reports
        return 0, True
    rec = res.record
    print(json.dumps({"run": str(res.run_dir) if res.run_dir else None, "name": rec["name"], "seed": rec["seed"],
                      "steps": rec["steps_done"], "planned": rec["steps_planned"], "stopped": rec["stopped"],
                      **rec["headline"], **{f"paper_{k}": v for k, v in rec["paper"].items()}}), flush=True)
    return 0, True


@contextlib.contextmanager
def _warnings_as_lines(prog: str):
    """Each run folder skipped inside (:class:`dnlib.experiments.records.RecordWarning`) as one line ``<prog>: warning:
    <message>`` on stderr; other warnings are shown as usual."""
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", records.RecordWarning)
            yield
    finally:
        for w in caught:
            if issubclass(w.category, records.RecordWarning):
                print(f"{prog}: warning: {cli.one_line(w.message)}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


@dataclass
class _Call:
    """One command line, parsed: what a verb's handler gets (``q``: the verb's own parser, for its errors;
    ``rest``: the flags ``sweep`` passes on to each run)."""
    recipe: Recipe
    args: argparse.Namespace
    q: argparse.ArgumentParser
    argv: list
    rest: list
    run_parser: argparse.ArgumentParser
    commands: dict


def _sweep_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("configs", nargs="*", help="configuration names ('all': every one)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=[0])
    q.add_argument("--engine", choices=engines.ENGINES, default="local",
                   help="local: processes on this machine (default); ray: Ray tasks on a cluster (dnlib[ray])")
    q.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="the Ray cluster to join (--engine ray; default: start a Ray instance here for the sweep)")
    q.add_argument("--jobs", type=cli.positive_int, default=None,
                   help="runs at a time (local: default 1; ray: at most this many in flight, default no cap)")
    q.add_argument("--cpus-per-run", type=cli.positive_float, default=None,
                   help="CPUs (threads) of each run (ray: its num_cpus, default 1; local: default unchanged)")
    q.add_argument("--gpus-per-run", type=engines.gpu_share, default=None,
                   help="GPUs of each run: a fraction packs runs on one GPU (0.25: four), or a whole number")
    q.add_argument("--out", type=cli.out_dir, required=True, help="the sweep's folder (a rerun resumes it)")
    q.add_argument("--time-limit", type=cli.positive_float, default=None, help="seconds per run")
    q.add_argument("--status-every", type=cli.positive_float, default=30.0, help="seconds between status lines")


def _parser(recipe: Recipe, prog: str | None):
    """The experiment's parser: (it, its sub-parsers' action, the ``run`` parser, the recipe's own commands)."""
    p = cli.ArgumentParser(prog=prog or f"python -m {recipe.module}", description=recipe.description)
    sub = p.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="train one configuration")
    _run_flags(run_p, recipe)
    _sweep_flags(sub.add_parser(
        "sweep", help="configurations x seeds as concurrent runs in one resumable folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_passed_on_help(recipe) + "\nExit status: the number of failed runs (0: every run completed or "
                                         "reached its time limit);\n2 also for a bad argument (one line, nothing "
                                         "started)."))
    q = sub.add_parser("gather", help="one table of the run folders at or under PATHs")
    q.add_argument("paths", nargs="+", type=cli.in_dir)
    q.add_argument("--out", type=cli.out_file, default=None, help="also write the rows here (JSON)")
    q = sub.add_parser("report", help="the experiment's tables and figures of the runs under PATH")
    q.add_argument("path", type=cli.in_dir)
    recipe.add_arguments(q, "report")
    sub.add_parser("list", help="the configuration names")
    commands = recipe.commands()
    for cname, command in commands.items():
        q = sub.add_parser(cname, help=command.help)
        command.add_arguments(q)
        if command.rows:
            q.add_argument("--json", type=cli.out_file, default=None, help="also write the rows here (JSON)")
    return p, sub, run_p, commands


def _sweep_verb(c: _Call) -> int:
    names = list(c.args.configs)
    if not names:
        c.q.error("configs: the following arguments are required: configs")
    with cli.user_errors(c.q):
        names = c.recipe.expand(names)
    run_args = c.run_parser.parse_args([names[0], *map(str, c.rest)])   # the flags passed on to each run, checked
    if run_args.out or run_args.resume or run_args.seeds is not None:
        c.q.error("--out/--resume: sweep places each run itself; use --out and --seeds of sweep")
    overrides, options = c.recipe.from_args(run_args)
    a = c.args
    # sweep checks, once and before any run: the engine's arguments (EngineError: named as the flag), each run's
    # options as `run` checks them and the folders a rerun resumes (ValueError: one line)
    with cli.user_errors(c.q):
        try:
            rows = sweep(c.recipe, names, a.seeds, out=a.out, jobs=a.jobs, engine=a.engine, address=a.address,
                         cpus_per_run=a.cpus_per_run, gpus_per_run=a.gpus_per_run, time_limit=a.time_limit,
                         status_every=a.status_every, run_args=c.rest, options={**overrides, **options})
        except engines.EngineError as e:     # a bad engine argument, no Ray cluster there, too few GPUs
            key, _, what = str(e).partition(":")   # named as the flag: "gpus_per_run: ..." -> "--gpus-per-run: ..."
            c.q.error(f"--{key.replace('_', '-')}:{what}")
    print(gather_table(rows))
    return min(len(rows.failed), 125) if rows else 1


def _run_verb(c: _Call) -> int:
    return _run_command(c.recipe, c.args, c.q, c.argv)


def _gather_verb(c: _Call) -> int:
    with cli.user_errors(c.q), _warnings_as_lines(c.q.prog):   # a skipped run folder: one line each
        rows = gather(c.args.paths)
    if not rows:
        c.q.error(f"{' '.join(c.args.paths)}: no run folders (with {records.RECORD_FILE}) to gather")
    if c.args.out:
        atomic_write_json(rows, c.args.out)
    from . import aggregate
    text, notes = aggregate.gather_printout(rows)
    for note in notes:          # runs not pooled, seeds counted once: one line each
        print(f"{c.q.prog}: warning: {note}", file=sys.stderr)
    print(text)
    return 0


def _report_verb(c: _Call) -> int:
    with cli.user_errors(c.q, CheckpointError), _warnings_as_lines(c.q.prog):  # a crafted checkpoint
        rep = c.recipe.report(c.args.path, c.args)
    print(json.dumps(records.jsonable(rep), indent=1))
    return 0


def _list_verb(c: _Call) -> int:
    print("\n".join(c.recipe.configs()))
    return 0


def _command_verb(c: _Call) -> int:
    """A recipe's own command (``bench``, ``check-graph``, ``stack``, ...); one JSON line per row it yields."""
    command = c.commands[c.args.cmd]
    if not command.rows:
        return command.handler(c.args, c.q)
    out = []
    for row in command.handler(c.args, c.q):
        print(json.dumps(row), flush=True)
        out.append(row)
    if c.args.json:
        atomic_write_json(out, c.args.json)
    return 0 if all(r.get("ok", True) for r in out) else 1


_VERBS: dict[str, Callable[[_Call], int]] = {"run": _run_verb, "sweep": _sweep_verb, "gather": _gather_verb,
                                             "report": _report_verb, "list": _list_verb}


def main(recipe: Recipe, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``dnlib <experiment> {run,sweep,gather,report,list,bench,...}`` (or ``python -m <recipe.module> ...``; ``prog``
    names the command in messages, default ``python -m <recipe.module>``): the one grammar of every experiment, one
    handler per verb (``_VERBS``; the recipe's own commands: ``_command_verb``).
    Bad arguments: one line on stderr, exit 2, before any work; a diverged run: one line, exit 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p, sub, run_p, commands = _parser(recipe, prog)
    args, rest = p.parse_known_args(argv)
    if rest and args.cmd != "sweep":        # sweep passes the rest on to its runs (checked there)
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    call = _Call(recipe, args, sub.choices[args.cmd], argv, rest, run_p, commands)
    return _VERBS.get(args.cmd, _command_verb)(call)
