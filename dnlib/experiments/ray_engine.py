"""The Ray engine of a sweep (:class:`RayEngine`): one Ray task per run, on the nodes and GPUs of a cluster.

:mod:`dnlib.experiments.engines` holds the protocol it implements (:class:`~dnlib.experiments.engines.Engine`), the
local engine, the checks and the loop that drives either; :func:`~dnlib.experiments.engines.make_engine` makes this
one for ``--engine ray``::

    python -m dnlib sr sweep smoke-bn smoke-dn* --seeds 0 1 --engine ray --out runs/sr/sweep         # Ray here
    python -m dnlib sr sweep fast-bn fast-dn* --seeds 0 1 2 --engine ray --address auto --gpus-per-run 0.25 ...

Each task asks for ``num_cpus=cpus_per_run`` (default 1) and ``num_gpus=gpus_per_run`` (fractions pack several runs
on one GPU); Ray places them on the cluster's nodes. No shared filesystem is assumed: the task
(:func:`run_in_folder`) runs the run in a temporary folder on its node and returns the folder's files as bytes;
the driver writes them atomically into ``out/<label>-s<seed>/``. To resume, the driver ships the unfinished
folder's files to the task (a record's ``argv`` and ``host`` name that temporary folder and the node).
Consequence: a run's files reach ``out`` when its task ends. A sweep interrupted (Ctrl-C, SIGTERM) stops the runs
in flight as the local engine does and collects their folders (:meth:`RayEngine.close`); a driver killed outright
loses the progress of the runs then in flight (a rerun restarts them from the state last collected). A cancelled
task's run process dies with it (``PR_SET_PDEATHSIG``, as the local engine's).

Ray is an optional extra: it is imported only when a :class:`RayEngine` is made, never by importing this module
or :mod:`~dnlib.experiments.engines`. Every node needs dnlib (``pip install 'dnlib[ray]'``) and the data
(``DNLIB_DATA``) of the recipe.

This module is part of the experiments layer: it imports engines and cli, never experiment or a recipe.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .. import cli
from .engines import LOG_FILE, Engine, EngineError, Job, Outcome, die_with_parent, read_folder, thread_env, write_folder

__all__ = ["RayEngine", "run_in_folder", "StopFlag"]


class StopFlag:
    """A Ray actor (num_cpus 0) that a sweep's tasks poll: :meth:`RayEngine.close` raises it when the sweep is
    interrupted, and each task then stops its run as the local engine does (SIGTERM: the run writes its record and
    checkpoint; SIGKILL after ``grace`` seconds) and returns the run's files as usual."""

    def __init__(self):
        self.raised = False

    def raise_(self) -> None:
        self.raised = True

    def is_raised(self) -> bool:
        return self.raised


def _run_process(cmd, folder: Path, env: dict, limit: float | None, stop=None, grace: float = 20.0,
                 poll: float = 1.0):
    """Run ``cmd`` with its output appended to ``folder/log.txt``; kill it after ``limit`` seconds. ``stop``: a
    :class:`StopFlag` actor polled every ``poll`` seconds; once raised, the process gets SIGTERM, and SIGKILL
    ``grace`` seconds later if still alive. Returns ``(exit status or None, error or None)``."""
    deadline = None if limit is None else time.monotonic() + limit
    with open(folder / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=die_with_parent())
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    proc.kill()
                    proc.wait()
                    return None, f"killed after {limit:.0f} s (time limit + grace)"
                wait = left if stop is None else poll if left is None else min(poll, left)
                try:
                    return proc.wait(timeout=wait), None
                except subprocess.TimeoutExpired:
                    pass
                if stop is not None and _raised(stop):
                    proc.terminate()
                    try:
                        return proc.wait(timeout=grace), "stopped: the sweep was interrupted"
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        return None, f"killed: the sweep was interrupted, the run not stopped in {grace:.0f} s"
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def _raised(stop) -> bool:
    """Whether the sweep raised its :class:`StopFlag` (asked of the actor)."""
    import ray
    return ray.get(stop.is_raised.remote())


def run_in_folder(module: str, argv: Sequence[str], name: str, files: dict, *, limit: float | None = None,
                  env: dict | None = None, stop=None) -> dict:
    """What a Ray task does: run ``python -m module run *argv --resume TMP/name`` in a temporary folder of this
    node holding ``files`` (a resumed run's), and return ``{"returncode", "error", "host", "seconds", "files"}``
    with the folder's files as bytes. The temporary folder is removed. ``stop``: the sweep's :class:`StopFlag`
    (once raised, the run is stopped and its files returned)."""
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="dnlib-sweep-"))
    try:
        folder = tmp / name
        folder.mkdir()
        write_folder(folder, files)
        import dnlib  # the dnlib this worker runs: the process runs the same one
        root = str(Path(dnlib.__file__).resolve().parent.parent)
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", module, "run", *map(str, argv), "--resume", str(folder)]
        rc, error = _run_process(cmd, folder, full_env, limit, stop)
        return {"returncode": rc, "error": error, "host": platform.node(), "seconds": time.perf_counter() - t0,
                "files": read_folder(folder)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RayEngine(Engine):
    """One Ray task per run (module doc). ``address``: ``"auto"`` or ``HOST:PORT`` of a running cluster; None
    starts a local in-process instance (this machine's CPUs and GPUs), stopped by :meth:`close`. When Ray is
    already initialized in this process, that connection is used and left open. ``jobs``: at most this many runs
    in flight (default: no cap, Ray schedules by the resources asked)."""

    name = "ray"

    def __init__(self, module: str, *, address: str | None = None, jobs: int | None = None,
                 cpus_per_run=None, gpus_per_run=None, limit: float | None = None):
        import ray
        self.ray, self.module, self.limit, self.jobs = ray, module, limit, jobs
        self.cpus = 1 if cpus_per_run is None else cpus_per_run
        self.gpus = gpus_per_run or 0
        self.refs = {}   # ObjectRef -> (job, start)
        self.owned = not ray.is_initialized()
        if self.owned:
            _reachable(address)
            try:
                with _keeping_sigterm():
                    if address is None:
                        ray.init(include_dashboard=False, log_to_driver=False)
                    else:
                        ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                hint = ("" if address in (None, "auto") else "; a cluster with token authentication needs "
                        "RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN (ray get-auth-token on its head) here too")
                raise EngineError(f"address: could not join a Ray cluster at {address!r} ({cli.one_line(e)})"
                                  f"{hint}") from None
        have = ray.cluster_resources()
        for what, need, key in (("cpus_per_run", self.cpus, "CPU"), ("gpus_per_run", self.gpus, "GPU")):
            if need and have.get(key, 0) < need:
                self.close()
                raise EngineError(f"{what}: {need} {key}s per run, but the Ray cluster has {have.get(key, 0):g}")
        self.task = ray.remote(run_in_folder).options(num_cpus=self.cpus, num_gpus=self.gpus)
        self.env = thread_env(self.cpus)
        self.stop = ray.remote(num_cpus=0)(StopFlag).remote()

    def free(self) -> bool:
        return self.jobs is None or len(self.refs) < self.jobs

    def start(self, job: Job) -> None:
        ref = self.task.remote(self.module, list(map(str, job.argv)), job.folder.name, read_folder(job.folder),
                               limit=self.limit, env=self.env, stop=self.stop)
        self.refs[ref] = (job, time.perf_counter())

    def poll(self) -> list:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        done = []
        for ref in ready:
            job, start = self.refs.pop(ref)
            try:
                res = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001  a task that raised (a lost node...): this run's failure
                done.append(Outcome(job, None, f"Ray task failed: {cli.one_line(e)[:500]}", None,
                                    time.perf_counter() - start))
                continue
            write_folder(job.folder, res["files"])
            done.append(Outcome(job, res["returncode"], res["error"], res["host"], time.perf_counter() - start))
        return done

    def in_flight(self) -> list:
        return [job for job, _ in self.refs.values()]

    def close(self, grace: float = 20.0) -> None:
        """Stop the tasks still in flight (a sweep interrupted) as the local engine stops its processes: the
        :class:`StopFlag` raised, each task's run gets SIGTERM and writes its record (``interrupted at step N``)
        and checkpoint, and the task returns the folder, written here; a task not back within ``grace`` seconds
        (and a few more for the transfer) is cancelled, its run's progress since the folder last came back lost.
        Then stop (or leave) the Ray instance this engine started (joined)."""
        if self.refs:
            with contextlib.suppress(Exception):
                self.stop.raise_.remote()
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=grace + 10)
            for ref in ready:
                job, _ = self.refs.pop(ref)
                with contextlib.suppress(Exception):    # a task that raised: nothing to write
                    write_folder(job.folder, self.ray.get(ref)["files"])
        for ref in self.refs:
            with contextlib.suppress(Exception):    # already finished or gone
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


@contextlib.contextmanager
def _keeping_sigterm():
    """Keep this process's SIGTERM action across ``ray.init``, which replaces it (in the main thread) with one that
    calls ``sys.exit(15)``. Under that handler a sweep sent SIGTERM exited 15 with Ray's stack dump and no summary;
    with the action kept (the sweep command's :func:`~dnlib.experiments.runner.sigterm_as_interrupt`, or the default)
    it stops as on Ctrl-C: the tasks cancelled, ``sweep.json`` saying ``interrupted``, one line, exit 143."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """Raise :class:`EngineError` when ``address`` is ``HOST:PORT`` and nothing answers there (ray.init would
    retry for minutes)."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"address: 'auto' or HOST:PORT of a Ray cluster's head, got {address!r}")
    import socket
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EngineError(f"address: no Ray cluster answers at {address} ({cli.one_line(e)}); start one with "
                          f"`ray start --head --port {port}` there") from None
