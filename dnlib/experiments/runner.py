"""One runner for every experiment: the run loop, its one time-limit rule, resume, divergence, the run record and
``run_many`` (sweeps: :mod:`.sweep`; the command line: :mod:`.commands`).

An experiment is a :class:`Recipe` (``dnlib.experiments.cifar.RECIPE``, ...): it names its configurations, resolves one
(``config``), builds what a run needs for a configuration and a seed (``build`` -> :class:`Setup`: model, loss,
resumable batches, evaluation, :class:`~dnlib.training.trainer.TrainConfig`, run identity), and reads the numbers of a
run (``headline``) beside the paper's (``paper``). The runner does everything else, the same way for every recipe::

    from dnlib.experiments import runner
    from dnlib.experiments.cifar import RECIPE
    r = runner.run(RECIPE, "dn-star", seed=0, steps=300, out="runs/cifar", options={"subset": (2000, 1000)})
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

**Run folders.** ``out=BASE`` makes a new folder ``BASE/<config>-s<seed>-<UTC time>``
(:func:`dnlib.experiments.records.new_run_dir`, never another run's); ``resume=DIR`` runs in ``DIR`` itself: it
continues the checkpoint there (the trainer refuses one written by another run,
:class:`~dnlib.training.trainer.CheckpointError`), or starts there when it holds none. A resume runs with the
options stored in the folder, whether or not the configuration is named; one given with another value is refused
(:mod:`dnlib.experiments.resume`). A folder holds ``run.json`` (how the run was called, enough to resume it by its
folder alone), ``record.json`` (:mod:`dnlib.experiments.records`; ``stopped`` is ``"running"`` until the run ends;
a resumed run's keeps its first call's start and provenance and lists each call that trained in ``segments``; a
call that trains nothing, as one resuming a completed run, leaves it as it was and says so on stdout),
``curves.csv``, ``checkpoint.pt``, ``history.json``. Every file is written atomically: a killed run leaves complete
files or none. A run holds its folder from when it opens it until :meth:`Run.go` ends (:mod:`.claim`): another run
given that folder to resume is refused (:class:`~dnlib.experiments.claim.RunInUse`) before it builds anything.

**Sweeps.** :func:`sweep` runs configurations x seeds on an engine (:mod:`dnlib.experiments.engines`): the local one (a
process pool, the default) or Ray (a cluster; no shared filesystem), with the same folders ``out/<label>-s<seed>``.

**Arithmetic.** A run computes in float32, the paper's arithmetic: the runner turns TF32 off for cuDNN convolutions
(torch's default allows it) and cuBLAS matrix products while it builds and trains, and restores the process's own
switches after (:func:`dnlib.training.precision.float32_arithmetic`); the option ``tf32=True`` (``--tf32``) allows TF32
instead. The record says which (``config.setup.precision``: ``"float32"`` or ``"tf32"``, a field that defines the
experiment) and the switches it ran with (``device.precision``); a resume keeps the run's.

**Divergence.** A NaN/inf loss raises :class:`~dnlib.training.trainer.TrainingDiverged` from the trainer: the record
says ``stopped: "diverged at step N"`` and its headline values are None; the CLI exits 1 with one line.

This module is the run loop (:class:`Run`, :func:`run`, :func:`run_many`); the contract is :mod:`.recipe`, sweeps
:mod:`.sweep`, benchmarks :mod:`.bench`, the command line :mod:`.commands`, what a resume takes from its folder
:mod:`.resume`. It imports training and records, never a recipe.
"""
from __future__ import annotations

import contextlib
import inspect
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..training import distributed, precision
from ..training.progress import progress_bar
from ..training.trainer import TrainingDiverged, set_seed
from . import claim, records
from .recipe import (
    COMPLETED,
    RUN_FILE,
    RUNNING,
    Recipe,
    RunResult,
    Setup,
    SharedData,
    check_config,
    check_int,
    check_time_limit,
    past_time_limit,
    share_data,
)
from .resume import RUNNER_OPTIONS, plain, prior_segments, read_run_file, resolve_from_stored, stored_run

__all__ = ["Run", "prepare", "run", "run_many", "read_run_file", "build_setup", "call",
           "call_many", "recipe_runs"]


class Terminated(KeyboardInterrupt):
    """SIGTERM during :meth:`Run.go` (``kill``, a scheduler's stop, ``timeout``, a sweep ending its runs): the run ends
    as Ctrl-C ends it, its record saying ``interrupted at step N``."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``), so the code that records an
    interrupted run records it; before, a terminated run died with its record saying ``running``. Only in the main
    thread and where SIGTERM has its default action (a handler someone installed, such as the campaign's, is
    kept); the previous action is restored after."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)     # a second TERM while the record is written: the default
        raise Terminated("SIGTERM")
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _unheld() -> None:
    """The release of a run that holds no folder (none opened yet, or a rank other than 0)."""


def _make_config(recipe: Recipe, config, stored: dict, overrides: dict, steps: int | None):
    """The run's configuration: the resumed run's fields rebuilt exactly (``stored``, same config name), else
    ``config`` by name or object; ``overrides`` and ``steps`` applied."""
    if stored and config == stored.get("config") and stored.get("fields"):   # rebuild it exactly
        cfg = recipe.from_dict({**stored["fields"], **overrides})
        return recipe.config(cfg, steps=steps) if steps is not None else cfg
    return recipe.config(config, steps=steps, **overrides)


class Run:
    """A prepared run (made by :func:`prepare`): configuration resolved, setup built, trainer made, checkpoint
    resumed; nothing trained yet. :meth:`go` trains it. Errors in preparing are the caller's (bad config, missing
    data, another run's checkpoint: ValueError / FileNotFoundError / CheckpointError).

    The same loop runs K copies of one configuration in one trainer (:mod:`dnlib.experiments.stacked`): ``seeds`` (one
    per copy) and ``build(recipe, cfg, seeds, device, options) -> Setup`` (a Setup whose ``copies`` are the K copies'
    own). The run folder then holds the trainer's files (``run.json`` with the seeds, ``checkpoint.pt``,
    ``history.json``) and one ordinary run folder per copy, ``<config>-s<seed>`` (its record, curves and
    TensorBoard events); :meth:`go` returns the K results.

    A run holds its folder from when it is made until :meth:`go` ends; ``release()`` gives it up without training
    (a run prepared only to be inspected)."""

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
        check_int("steps", steps, none_ok=True)      # None: the configuration's schedule (0 meant it once)
        if out is not None and resume is not None:
            raise ValueError("out, resume: give one (out: a base folder for a new run; resume: the run's folder)")
        if resume is not None and distributed.is_main():
            claim.check_free(resume)      # a run training there now: refused before anything is built
        stored = stored_run(recipe, resume)
        overrides, options = dict(overrides or {}), dict(options or {})
        config, options, seeds, seed = resolve_from_stored(recipe, stored, config, options, seed, seeds, build,
                                                            resume)
        if device is None:
            device = stored.get("device", "auto")
        options["tf32"] = self.tf32 = precision.check_tf32(options.get("tf32", False))  # the runner's, not the recipe's
        self.recipe, self.seed, self.device, self.time_limit, self.stop_after = recipe, int(seed), device, \
            time_limit, stop_after
        self.parameters, self.argv = parameters, argv
        self.cfg = _make_config(recipe, config, stored, overrides, steps)
        cfg_name = getattr(self.cfg, "name", str(config))
        check_config(recipe, self.cfg, device)       # what the build would refuse: before any data is loaded
        self.seeds = [int(s) for s in seeds] or [self.seed]
        if build is not None and not seeds:
            raise ValueError("seeds: a stacked run needs one seed per copy (none given, and none stored in the "
                             "folder to resume)")
        if build is None:      # under torchrun: join first (it sets this rank's CUDA device, where "cuda" builds)
            distributed.init_from_env()       # (a stacked build refuses torchrun before any data)
        build_opts = {k: v for k, v in options.items() if k not in RUNNER_OPTIONS}
        self.release: Callable[[], None] = _unheld   # the run folder, held from when it is opened (claim.hold)
        try:
            with precision.float32_arithmetic(self.tf32):     # the run's arithmetic (a build computes), restored after
                if build is None:
                    self.setup = setup = build_setup(recipe, self.cfg, self.seed, device, build_opts)
                else:              # K copies in one trainer (dnlib.experiments.stacked.build: build_setup per copy)
                    self.setup = setup = build(recipe, self.cfg, self.seeds, device, build_opts)
                self.progress = bool(progress)
                self.planned = int(setup.train.steps)
                self.chunk = int(setup.chunk or setup.train.eval_every or self.planned or 1)
                if self.chunk < 1:
                    raise ValueError(f"chunk: must be >= 1 step, got {self.chunk}")
                distributed.check_trainer(setup.trainer)     # under torchrun: no graph trainer (before any folder)
                main = distributed.is_main()
                self.run_dir = self._open_run_dir(out, resume, cfg_name, main)
                self.trainer = distributed.prepare(setup.make_trainer(out_dir=self.run_dir), self.run_dir)
                if not main:
                    self.run_dir = None          # one record, written by rank 0
                self.resumed = self.trainer.try_resume() if self.run_dir is not None else False
            for s in (setup, *setup.copies):    # what the run computes in (with the setup: it defines the experiment)
                s.info["precision"] = precision.arithmetic(self.tf32, self.trainer.device)
            self.step0 = self.trainer.step          # where this call starts (a resumed run: its checkpoint's step)
            # each copy's record: in the run folder; a stacked run's copies: one ordinary run folder each, inside it
            self.copy_dirs = [self.run_dir] * len(self.seeds)
            if setup.copies and self.run_dir is not None:
                self.copy_dirs = [self.run_dir / records.run_name(cfg_name, s) for s in self.seeds]
                for d in self.copy_dirs:
                    d.mkdir(exist_ok=True)
            self._tb, self._tb_step = None, [self.trainer.step] * len(self.seeds)
            self._prov = None
            self._prior: dict = {}          # copy k's record before this call (a resumed run's), read when written
            self._kept: set = set()         # the copies whose record this call leaves as it was (nothing trained)
            self._at: int | None = None     # interrupted: the step its checkpoint holds, what a resume continues
            self.options = {k: v for k, v in options.items() if plain(v)}
            self.config_name = cfg_name
            if self.run_dir is not None:
                atomic_write_json(self.run_dir / RUN_FILE, records.jsonable({
                    "experiment": recipe.name, "config": cfg_name, "fields": recipe.config_dict(self.cfg),
                    "seed": self.seed, **({"seeds": self.seeds} if setup.copies else {}), "options": self.options,
                    "device": str(device)}),
                    indent=1)
        except BaseException:         # nothing will train: the folder is free again
            self.release()
            raise

    def _open_run_dir(self, out, resume, cfg_name: str, main: bool) -> Path | None:
        """The run's folder: ``resume`` (made if missing), a new folder under ``out``, or None (no files; on
        ranks other than 0 of a distributed run, None under ``out``), held by this run until :meth:`go` ends or
        ``release()`` (:mod:`.claim`: another run resuming it is refused)."""
        if resume is not None:
            if main:
                Path(resume).mkdir(parents=True, exist_ok=True)
                self.release = claim.hold(resume, self)
            return Path(resume)
        if out is not None and main:
            seed_name = self.seed if not self.setup.copies else "+".join(map(str, self.seeds))
            path = records.new_run_dir(out, records.run_name(cfg_name, seed_name))
            self.release = claim.hold(path, self)
            return path
        return None

    # -- the record
    def result(self, stopped: str, k: int = 0) -> RunResult:
        """Copy ``k``'s result (an ordinary run: the run's) as it stands, ``stopped`` unless the copy stopped
        alone (a stacked copy that diverged: the last ``stopped`` row of its history)."""
        tr = self.trainer
        history, setup, model = tr.copy_history(k), self.setup, tr.model
        steps = tr.step if self._at is None else self._at     # (interrupted: what its checkpoint holds)
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
        if getattr(tr, "fell_back", False):     # a CUDA-graph capture failed: the steps ran eagerly (one warning)
            config["setup"].update(mode=f"{setup.info.get('mode')} (capture failed: eager steps)", fell_back=True)
        if self._prov is None:   # git state, versions, device: once per call (the code that runs it)
            self._prov = records.provenance(tr.device)
        prior, trained = self._prior_record(k), steps > self.step0
        if not trained and prior is not None and (prior.get("steps_done"), prior.get("stopped")) == (steps, stopped):
            self._kept.add(k)              # nothing trained, and its record already says so: left as it was
            res.record = prior
            return res
        self._kept.discard(k)
        ended = None if stopped == RUNNING else time.time()
        segments = prior_segments(prior) + (
            [records.make_segment(self.started, ended, [self.step0, steps], self._prov)] if trained else [])
        first = prior or {}            # a resumed run's start and provenance are its first call's
        prov = {key: first.get(key) for key in ("git", "versions", "device", "host")} if prior else self._prov
        res.record = records.make_record(
            self.recipe.name, config, self.seeds[k], name=self.config_name, parameters=self.parameters,
            started=first.get("started") or self.started, ended=ended, steps_planned=self.planned,
            steps_done=steps, stopped=stopped, headline=headline, paper=self.recipe.paper(self.cfg),
            device=tr.device, argv=self.argv, prov=prov, segments=segments)
        return res

    def _prior_record(self, k: int) -> dict | None:
        """Copy ``k``'s record as this call found it, when the call resumed a checkpoint (None otherwise, or when
        there is none or it is not a run record: the run then starts its record afresh)."""
        if k not in self._prior:
            d = self.copy_dirs[k]
            self._prior[k] = None
            if self.resumed and d is not None and (d / records.RECORD_FILE).is_file():
                with contextlib.suppress(OSError, ValueError):
                    self._prior[k] = records.read_record(d)
        return self._prior[k]

    def write(self, stopped: str) -> list:
        """Every copy's result (one for an ordinary run); with a run folder, each copy's ``curves.csv``,
        TensorBoard events and ``record.json``."""
        out = []
        for k in range(len(self.seeds)):
            res = self.result(stopped, k)
            if k in self._kept:
                rec = res.record
                print(f"{res.run_dir}: already {rec['stopped']} ({rec['steps_done']} of {rec['steps_planned']} "
                      f"steps), nothing to train: its {records.RECORD_FILE} is left as it was", flush=True)
            elif res.run_dir is not None:
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
        :class:`~dnlib.training.trainer.TrainingDiverged` after writing the record of a diverged run (a stacked run: a
        copy that diverges stops alone, its record says so; the run raises when every copy has). It trains in the
        run's arithmetic (:func:`dnlib.training.precision.float32_arithmetic`: float32, or TF32 with the ``tf32``
        option), and leaves the process's own switches as they were."""
        with precision.float32_arithmetic(self.tf32), sigterm_as_interrupt():
            return self._train()

    def _train(self):
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
        except KeyboardInterrupt:           # Ctrl-C, or SIGTERM (go() turns it into this)
            self._at = tr.saved_step if tr.saved_step is not None else self.step0
            where = (f"its checkpoint: step {self._at}" if tr.saved_step is not None
                     else "no checkpoint yet: a resume starts over")
            self.write(f"interrupted at step {tr.step}" + ("" if tr.step == self._at else f" ({where})"))
            raise
        finally:
            tr.bar.close()
            tr.bar = None
            for writer in self._tb or ():
                writer.close()
            self._tb = None
            self.release()


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
        resume: a run folder: continue it (its checkpoint must be this run's, its stored options apply: one given
            with another value is refused), or start there.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``.
        overrides: configuration fields to change; options: the run's options (:func:`build_setup`'s, and the
            runner's ``tf32``: False, the default, computes in float32, the paper's arithmetic; True lets CUDA
            convolutions and matrix products use TF32, a different experiment).
        stop_after: stop at this step (an interruption; the schedule is unchanged).
        progress: a progress bar over the run's steps (:func:`dnlib.training.progress.progress_bar`: a widget in
        JupyterLab,
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
_RUN_ARGS = ("seed", "steps", "time_limit", "out", "resume", "device", "stop_after", "progress", "parameters", "argv")


def _keywords(method) -> list:
    return [k for k, p in inspect.signature(method).parameters.items() if p.kind is p.KEYWORD_ONLY]


def _options(recipe: Recipe) -> list:
    """The options of a run of ``recipe``: ``data`` (instead of :meth:`Recipe.load`), the runner's own (``tf32``:
    :data:`~dnlib.experiments.resume.RUNNER_OPTIONS`), then the keyword-only parameters of ``recipe.load`` and of
    ``recipe.build``."""
    return list(dict.fromkeys(["data", *RUNNER_OPTIONS, *_keywords(recipe.load), *_keywords(recipe.build)]))


def build_setup(recipe: Recipe, cfg, seed: int, device="auto", options: Mapping | None = None) -> Setup:
    """The :class:`Setup` of one run: the options split by the keyword-only parameters of ``recipe.load`` and
    ``recipe.build`` (a name of both goes to both; any other to ``build``, which refuses it), the build options
    checked (:meth:`Recipe.check_options`), the data loaded (unless the ``data`` option gives them, or offers
    :class:`SharedData` of an equal :meth:`Recipe.data_key`), every RNG seeded with ``seed`` (the one ``set_seed``
    of a run: dnlib.experiments.stacked calls this once per copy), then built."""
    options = dict(options or {})
    data = options.pop("data", None)
    load_kw, build_kw = _keywords(recipe.load), _keywords(recipe.build)
    build_opts = {k: v for k, v in options.items() if k in build_kw or k not in load_kw}
    load_opts = {k: v for k, v in options.items() if k in load_kw}
    recipe.check_options(**build_opts)
    key = None
    if data is None or isinstance(data, SharedData):
        key = recipe.data_key(cfg, seed, device, **load_opts)
        if isinstance(data, SharedData):
            data = data.data if key is not None and data.key == key else None
    if data is None:
        data = recipe.load(cfg, seed, device, **load_opts)
    set_seed(seed)
    setup = recipe.build(cfg, data, seed, device, **build_opts)
    setup.data_key = key
    return setup


def call(recipe: Recipe, config=None, **kwargs) -> RunResult:
    """:func:`run` with flat keyword arguments, as the recipes' ``run`` functions take them: :func:`run`'s own
    (``seed``, ``steps``, ``out``, ``resume``, ``time_limit``...), the options of ``recipe.load``/``build`` (``data``,
    ``subset``...) and configuration fields (every other keyword, e.g. ``lr=2e-3``)."""
    run_kw = {k: kwargs.pop(k) for k in _RUN_ARGS if k in kwargs}
    options = {k: kwargs.pop(k) for k in _options(recipe) if k in kwargs}
    return run(recipe, config, overrides=kwargs, options=options, **run_kw)


def call_many(recipe: Recipe, configs: Sequence, seeds: Sequence[int] = (0,), **kwargs) -> list:
    """:func:`call` for every configuration and seed in this process (notebooks, CPU); a run's data are shared with
    the next runs that would load the same (:func:`~dnlib.experiments.recipe.share_data`), unless ``data`` is given."""
    out = []
    for c in configs:
        for s in seeds:
            out.append(call(recipe, c, seed=s, **kwargs))
            share_data(kwargs, out[-1].setup)
    return out


def recipe_runs(recipe: Recipe, path) -> dict:
    """``{run folder: record}`` of the runs of ``recipe`` at or under ``path`` (a report's input; a broken or
    foreign record is skipped with a warning naming it); a ValueError naming ``path`` when there are none."""
    recs = {d: rec for d, rec in records.read_records([path]) if rec["experiment"] == recipe.name}
    if not recs:
        raise ValueError(f"{path}: no run folders of {recipe.name} (with {records.RECORD_FILE}) to report; make them "
                         f"with `python -m dnlib {recipe.name} run ... --out {path}` or `sweep`")
    return recs
