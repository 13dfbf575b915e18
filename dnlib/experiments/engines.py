"""Where a sweep's runs execute: the engines' one protocol (:class:`Engine`), the embedded local engine (a pool of
processes on this machine, the default), the checks of an engine's arguments and the loop that drives an engine
(:func:`execute`); the Ray engine (a cluster of machines and GPUs) is :mod:`dnlib.experiments.ray_engine`.
:func:`dnlib.experiments.sweep.sweep` is the one entry point; it builds the :class:`Job` list (configurations x
seeds, finished runs left out) and hands it to :func:`execute`::

    python -m dnlib sr sweep smoke-bn smoke-dn* --seeds 0 1 --jobs 2 --out runs/sr/sweep            # local
    python -m dnlib sr sweep smoke-bn smoke-dn* --seeds 0 1 --engine ray --out runs/sr/sweep         # Ray here
    python -m dnlib sr sweep fast-bn fast-dn* --seeds 0 1 2 --engine ray --address auto --gpus-per-run 0.25 ...

Both engines run the same thing for a job: ``python -m <recipe module> run CONFIG --seeds S ... --resume FOLDER``
(a process of its own; its output goes to ``FOLDER/log.txt``), and both leave the same folder layout,
``out/<label>-s<seed>/`` (``record.json``, ``curves.csv``, ``checkpoint.pt``, ``history.json``, ``run.json``,
``log.txt``).

* :class:`LocalEngine`: ``jobs`` processes at a time on this machine. ``cpus_per_run`` sets each process's
  thread count (``OMP_NUM_THREADS``; default: the machine's cores shared out, ``cores // jobs``, for CPU runs of
  more than one job, so that ``jobs`` processes do not each start a thread per core and spin against each other;
  an ``OMP_NUM_THREADS`` already set is kept, and GPU runs are left as they are); ``gpus_per_run`` packs ``1/g``
  runs on each visible GPU (``CUDA_VISIBLE_DEVICES`` per process; a whole number g gives each run g GPUs).
* :class:`~dnlib.experiments.ray_engine.RayEngine` (:mod:`dnlib.experiments.ray_engine`): one Ray task per run,
  with ``num_cpus=cpus_per_run`` (default 1) and ``num_gpus=gpus_per_run``; no shared filesystem is assumed (a
  run's folder travels as bytes: :func:`read_folder`, :func:`write_folder`). That module is imported only when
  this engine is made (:func:`make_engine`) or named (``engines.RayEngine``), and Ray only when it is made; every
  node needs dnlib (``pip install 'dnlib[ray]'``) and the data (``DNLIB_DATA``) of the recipe.
* Run processes die with the process that started them (Linux: ``PR_SET_PDEATHSIG``): a killed driver or a
  cancelled task leaves no run going on unwatched; its last checkpoint and record stay, and a rerun resumes it.

A job fails when its process exits non-zero, is killed (``time_limit + grace``), its task raises, or it leaves
no record (or one that says neither ``completed`` nor a time limit); a failure is reported with its
configuration, seed and log tail and does not stop the others. Progress: a tqdm bar (runs done/running/failed)
and status lines.

This module is part of the experiments layer: it imports records and io, never experiment or a recipe.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..io import atomic_write
from . import records

__all__ = ["Engine", "ENGINES", "Job", "Outcome", "SweepRows", "LocalEngine", "EngineError", "check", "gpu_share",
           "make_engine", "execute", "read_folder", "write_folder", "log_tail", "thread_env", "die_with_parent"]

ENGINES = ("local", "ray")
LOG_FILE = "log.txt"
_REPO = Path(__file__).resolve().parents[2]     # the repository (dnlib/experiments/<this>)
_OK_STOPS = ("completed", "time limit")   # a record's ``stopped`` that is not a failure (experiment.COMPLETED)


class EngineError(ValueError):
    """An engine cannot be made here (Ray missing, no cluster at the address, too few GPUs): nothing ran."""


@dataclass
class Job:
    """One run of a sweep: its configuration name, seed, folder (``out/<label>-s<seed>``) and the ``run``
    arguments that follow ``python -m <module> run`` (without ``--resume``: the engine adds its folder)."""
    config: str
    seed: int
    folder: Path
    argv: list


@dataclass
class Outcome:
    """How a job ended: the process's exit status (None when it never ended by itself), ``error`` (a killed
    process or a task that raised, in words), the node's name, ``failure`` (None, or why it failed) and ``in_use``
    (refused because another process trains in its folder now: not a failure; :mod:`.claim`)."""
    job: Job
    returncode: int | None
    error: str | None = None
    host: str | None = None
    seconds: float = 0.0
    failure: str | None = None
    in_use: bool = False


class SweepRows(list):
    """:func:`dnlib.experiments.sweep.sweep`'s return: the gathered rows (a list), and ``failed``: one dict per failed
    run of this sweep (``config``, ``seed``, ``run`` folder, ``reason``, ``log_tail``)."""

    def __init__(self, rows=(), failed=()):
        super().__init__(rows)
        self.failed = list(failed)


# ---------------------------------------------------------------------------------------- checking
def _gpu_problem(g) -> str | None:
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        return "a number >= 0"
    if g > 1 and g != int(g):
        return "a fraction <= 1 (packs 1/g runs on a GPU) or a whole number of GPUs"
    return None


def gpu_share(value: str) -> float:
    """``--gpus-per-run``: 0, a fraction in (0, 1] (``0.25`` packs four runs on a GPU) or a whole number."""
    try:
        g = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of GPUs per run") from None
    problem = _gpu_problem(g)
    if problem:
        raise argparse.ArgumentTypeError(f"{value} is not {problem}")
    return g


def check(engine: str = "local", *, address: str | None = None, cpus_per_run=None, gpus_per_run=None,
          jobs: int | None = None) -> None:
    """Raise :class:`EngineError` (a ValueError) naming the parameter unless the engine's arguments are valid here
    (before any work): ``engine`` in :data:`ENGINES`; ``address`` only with Ray; ``cpus_per_run`` a number > 0;
    ``gpus_per_run`` 0, a fraction <= 1 or a whole number; the local engine needs a visible GPU for ``gpus_per_run >
    0``; Ray needs
    to be installed."""
    if engine not in ENGINES:
        raise EngineError(f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and engine != "ray":
        raise EngineError(f"address: a Ray cluster's address, only with engine 'ray' (engine is {engine!r})")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise EngineError(f"address: 'auto' or HOST:PORT of a Ray cluster, got {address!r}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise EngineError(f"jobs: must be an integer >= 1 (or None), got {jobs!r}")
    if cpus_per_run is not None and (isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, (int, float))
                                     or not math.isfinite(cpus_per_run) or cpus_per_run <= 0):
        raise EngineError(f"cpus_per_run: must be a number > 0 (fractions allowed on Ray), got {cpus_per_run!r}")
    if gpus_per_run is not None and _gpu_problem(gpus_per_run):
        raise EngineError(f"gpus_per_run: must be {_gpu_problem(gpus_per_run)}, got {gpus_per_run!r}")
    if engine == "local" and gpus_per_run:
        n = _visible_gpus()
        if n == 0:
            raise EngineError(f"gpus_per_run: {gpus_per_run} GPU per run, but no CUDA device is visible here "
                             "(the local engine; use 0, or --engine ray on a cluster with GPUs)")
        if gpus_per_run > n:
            raise EngineError(f"gpus_per_run: {gpus_per_run} GPUs per run, but {n} are visible here")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise EngineError("engine: 'ray' needs Ray, which is not installed (pip install 'dnlib[ray]')")


def _visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says it: Linux; else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_env(cpus_per_run) -> dict:
    """The environment that gives a run process ``ceil(cpus_per_run)`` threads (nothing when None)."""
    if cpus_per_run is None:
        return {}
    n = str(max(1, math.ceil(cpus_per_run)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


# ------------------------------------------------------------------------------------ run folders, processes
def read_folder(folder) -> dict:
    """``{relative path: bytes}`` of every file under ``folder`` (atomic writes' temporaries left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def write_folder(folder, files: dict) -> None:
    """Write ``files`` (``{relative path: bytes}``) into ``folder``, each atomically, ``record.json`` last (a
    driver killed while writing leaves the previous record beside newer files, which a rerun resumes)."""
    folder = Path(folder)
    for rel in sorted(files, key=lambda r: r == records.RECORD_FILE):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"files: {rel!r} is not a path inside the run folder")
        data = files[rel]
        atomic_write(folder / rel, lambda f, data=data: f.write(data))


def log_tail(folder, lines: int = 8) -> str:
    """The last ``lines`` non-blank lines of ``folder/log.txt`` ('' when there is none)."""
    try:
        text = (Path(folder) / LOG_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def die_with_parent():
    """A ``preexec_fn`` for a run process (Linux): it is killed when the process that started it dies (a killed
    sweep driver, a Ray worker whose task was cancelled) instead of running on unwatched. libc is loaded here, in
    the parent, so that the child only makes one system call between fork and exec (no import, no lock)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, 9)      # PR_SET_PDEATHSIG, SIGKILL


# ------------------------------------------------------------------------------------------- engines
def _gpu_ids() -> list:
    """The ids a child process's ``CUDA_VISIBLE_DEVICES`` may name: this process's own list when it has one (so
    that GPUs 2,3 given to the driver stay 2,3), else ``0..n-1`` of the visible devices."""
    own = os.environ.get("CUDA_VISIBLE_DEVICES")
    if own is not None and own.strip():
        return [d.strip() for d in own.split(",") if d.strip()][:_visible_gpus()]
    return [str(i) for i in range(_visible_gpus())]


@runtime_checkable
class Engine(Protocol):
    """What :func:`execute` drives (the engines' one protocol; :class:`LocalEngine` and
    :class:`~dnlib.experiments.ray_engine.RayEngine` implement it): ``name``; ``free()`` (room for one more run
    now?), ``start(job)``, ``poll()`` (the :class:`Outcome` of every run that ended since the last poll),
    ``in_flight()`` (the jobs running) and ``close()`` (stop what is left: processes killed, tasks cancelled)."""

    name: str

    def free(self) -> bool: ...

    def start(self, job: Job) -> None: ...

    def poll(self) -> list: ...

    def in_flight(self) -> list: ...

    def close(self) -> None: ...


class LocalEngine(Engine):
    """``jobs`` run processes at a time on this machine (module doc). ``devices``: the GPU ids to pack runs on
    (what each run's ``CUDA_VISIBLE_DEVICES`` names; default: the ones this process sees)."""

    name = "local"

    def __init__(self, module: str, *, jobs: int | None = None, cpus_per_run=None, gpus_per_run=None,
                 limit: float | None = None, python: str = sys.executable, devices: Sequence | None = None):
        self.module, self.python, self.limit = module, python, limit
        self.jobs = jobs or 1
        self.gpus = gpus_per_run or 0
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(_REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        if cpus_per_run is None and self.jobs > 1 and not self.gpus and "OMP_NUM_THREADS" not in self.env:
            cpus_per_run = max(1, _cores() // self.jobs)   # the cores shared out (module doc)
        self.env.update(thread_env(cpus_per_run))
        self.ids = [str(d) for d in devices] if devices is not None else (_gpu_ids() if self.gpus else [])
        if self.gpus and (not self.ids or self.gpus > len(self.ids)):
            raise ValueError(f"gpus_per_run: {self.gpus} per run, but {len(self.ids)} GPUs to pack runs on")
        self.used = [0.0] * len(self.ids)   # GPU shares in use, per device
        self.running = {}   # folder -> (job, process, log, start, devices)

    def _devices(self) -> list | None:
        if not self.gpus:
            return []
        if self.gpus <= 1:
            free = [i for i, u in enumerate(self.used) if u + self.gpus <= 1 + 1e-9]
            return free[:1] or None
        free = [i for i, u in enumerate(self.used) if u == 0]
        return free[:int(self.gpus)] if len(free) >= self.gpus else None

    def free(self) -> bool:
        return len(self.running) < self.jobs and self._devices() is not None

    def start(self, job: Job) -> None:
        devices = self._devices()
        job.folder.mkdir(parents=True, exist_ok=True)
        env = self.env
        if self.gpus:
            env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(self.ids[i] for i in devices)}
            for i in devices:
                self.used[i] += min(self.gpus, 1.0)
        cmd = [self.python, "-m", self.module, "run", *map(str, job.argv), "--resume", str(job.folder)]
        log = open(job.folder / LOG_FILE, "ab")  # noqa: SIM115  the process writes it until poll() closes it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent())
        self.running[job.folder] = (job, proc, log, time.perf_counter(), devices)

    def poll(self) -> list:
        done = []
        for key, (job, proc, log, start, devices) in list(self.running.items()):
            error = None
            if proc.poll() is None and self.limit is not None and time.perf_counter() - start > self.limit:
                proc.kill()
                proc.wait()
                error = f"killed after {time.perf_counter() - start:.0f} s (time limit + grace)"
            if proc.poll() is None:
                continue
            log.close()
            for i in devices:
                self.used[i] -= min(self.gpus, 1.0)
            del self.running[key]
            done.append(Outcome(job, None if error else proc.returncode, error, platform.node(),
                                time.perf_counter() - start))
        return done

    def in_flight(self) -> list:
        return [job for job, *_ in self.running.values()]

    def close(self, grace: float = 20.0) -> None:
        """Stop the processes still running (a sweep interrupted): SIGTERM, on which each run writes its record
        (``interrupted at step N``; before, they were killed at once and their records said ``running``), then
        SIGKILL for any still alive ``grace`` seconds later. A rerun resumes them."""
        alive = [proc for _job, proc, *_ in self.running.values() if proc.poll() is None]
        for proc in alive:
            proc.terminate()
        deadline = time.perf_counter() + grace
        for proc in alive:
            try:
                proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for _job, _proc, log, *_ in self.running.values():
            log.close()
        self.running.clear()


def make_engine(engine: str, module: str, *, address: str | None = None, jobs: int | None = None,
                cpus_per_run=None, gpus_per_run=None, limit: float | None = None, python: str = sys.executable,
                checked: bool = False) -> Engine:
    """A :class:`LocalEngine` or :class:`~dnlib.experiments.ray_engine.RayEngine` (an :class:`Engine`; its module and
    Ray are imported here, only for it); its arguments are checked by :func:`check` first unless the caller did
    (``checked``: :func:`dnlib.experiments.sweep.sweep` checks once, before anything)."""
    if not checked:
        check(engine, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, jobs=jobs)
    if engine == "local":
        return LocalEngine(module, jobs=jobs, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, limit=limit,
                           python=python)
    from .ray_engine import RayEngine
    return RayEngine(module, address=address, jobs=jobs, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                     limit=limit)


# ------------------------------------------------------------------------------------------ the loop
def _failure(outcome: Outcome) -> str | None:
    if outcome.error:
        return outcome.error
    if outcome.returncode != 0:
        return f"exit {outcome.returncode}"
    try:
        stopped = str(records.read_record(outcome.job.folder).get("stopped"))
    except (FileNotFoundError, ValueError):
        return "exit 0 but no run record"
    return None if stopped.startswith(_OK_STOPS) else f"stopped: {stopped}"


def _refused_in_use(o: Outcome) -> bool:
    """Whether the run was refused because another process trains in its folder (exit 2, the last line of its log;
    :mod:`.claim`): a second sweep over the same folders, not a failure of this one."""
    return o.returncode == 2 and " is in use: a run is training in it now" in log_tail(o.job.folder, 1)


def execute(engine: Engine, jobs: Sequence[Job], *, skipped: int = 0, verbose: bool = True, status_every: float = 30.0,
            status: Callable[[Path], str] | None = None, poll_every: float = 0.5, into: dict | None = None) -> list:
    """Run ``jobs`` on ``engine`` (as many at a time as it takes) and return their :class:`Outcome` objects, in
    the order of ``jobs``. A failed run is reported on stderr (configuration, seed, reason, log tail) and the
    others go on. ``verbose``: a tqdm bar (runs done/running/failed; ``skipped`` finished runs counted as done)
    and ``[sweep]`` lines; ``status(folder)``: a running run's status line, every ``status_every`` seconds. The
    engine is closed at the end (and on an interrupt: its processes stopped, its tasks cancelled). ``into``: a dict
    that holds the outcomes as they come (keyed by job id), for a caller that reports them after an interrupt."""
    from tqdm.auto import tqdm
    todo, outcomes = list(jobs), ({} if into is None else into)
    bar = tqdm(total=len(todo) + skipped, initial=skipped, desc=f"sweep ({engine.name})", unit="run",
               disable=not verbose, file=sys.stderr)
    counts = {"done": skipped, "failed": 0}

    def show():
        bar.set_postfix_str(f"done {counts['done']}, running {len(engine.in_flight())}, failed {counts['failed']}")

    last = time.perf_counter()
    try:
        show()
        while todo or engine.in_flight():
            while todo and engine.free():
                job = todo.pop(0)
                engine.start(job)
                if verbose:
                    tqdm.write(f"[sweep] started {job.folder.name}", file=sys.stdout)
                show()
            time.sleep(poll_every)
            for o in engine.poll():
                o.failure = _failure(o)
                if o.failure and _refused_in_use(o):
                    o.failure, o.in_use = None, True
                outcomes[id(o.job)] = o
                counts["failed" if o.failure else "done"] += 1
                bar.update(1)
                show()
                if o.in_use:
                    tqdm.write(f"[sweep] left {o.job.folder.name} to the process training it now", file=sys.stderr)
                elif o.failure:
                    tail = log_tail(o.job.folder)
                    tqdm.write(f"[sweep] FAILED {o.job.config} seed {o.job.seed} ({o.failure}) in {o.job.folder}"
                               + ("; log tail:\n" + "\n".join("    " + t for t in tail.splitlines())
                                  if tail else ""), file=sys.stderr)
                elif verbose:
                    line = status(o.job.folder) if status else o.job.folder.name
                    host = f" on {o.host}" if o.host else ""
                    tqdm.write(f"[sweep] finished {o.job.folder.name}{host} (exit {o.returncode}): {line}",
                               file=sys.stdout)
            if verbose and engine.in_flight() and time.perf_counter() - last > status_every:
                last = time.perf_counter()
                for job in engine.in_flight():
                    line = status(job.folder) if status and engine.name == "local" else f"{job.folder.name}: running"
                    tqdm.write(f"[sweep]   {line}", file=sys.stdout)
    finally:
        engine.close()
        bar.close()
    return [outcomes[id(j)] for j in jobs]
