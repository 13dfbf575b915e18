"""The whole paper in one device budget (issue 28): Tables 3/7 (CIFAR-10), 5/6 (super-resolution) and 4/9 (PTB) x
seeds as stacked launches, planned from a short bench, run under a time budget, recorded honestly, resumable::

    python -m dnlib.experiments.campaign --out runs/paper --device cuda --budget 540      # scripts/gpu_paper.sh
    python -m dnlib.experiments.campaign --out /tmp/p --device cpu --tiny                 # the CPU rehearsal
    python -m dnlib.experiments.campaign --out runs/paper --device cuda --check-graph     # graph == eager, stacked

**Launches.** One launch is one stacked model trained by the runner, an ordinary run folder per copy inside it:

* CIFAR-10, Table 7's 13 rows (Table 3 is 7 of them): one launch per configuration, its seeds stacked
  (:mod:`dnlib.experiments.stacked`);
* super-resolution, Tables 5/6 at x3 on the ``fast`` schedule (Adam, 50k steps: the paper's SGD schedule of 1M steps
  and the x4 columns are not planned: ``not_planned`` in ``campaign.json``): one launch per row (``none``, ``bn``,
  ``dn*``, ``dn*-code``), its seeds stacked (:mod:`dnlib.experiments.stacked_sr`), read on Set5, Set14 (Table 5) and
  BSD200 (Table 6; ``scripts/gpu_stage.sh`` stages them);
* PTB, Table 9's 36 configurations (Table 4 is 18 of them): one launch per cell type and cell class (``arch``), all
  its configurations x seeds stacked (:mod:`dnlib.experiments.stacked_ptb`): 7 launches of 3 to 24 copies.

**Graphs.** On CUDA each experiment's heaviest launch (its probe: :mod:`dnlib.experiments.campaign_plan`, which
also plans, benches and predicts) is first trained a few steps with the CUDA-graph step and with the eager step from
the same initialisation (``check_graph``); an experiment whose graph step disagrees trains eagerly (``graph_check``
in ``campaign.json``). A check that cannot fail is recorded and logged "not applicable" with its reason, not ok: SR's
fast schedule (Adam) builds no graph step; on a CPU PTB's stacked trainer runs one body for both (the check runs on
CUDA only in a campaign, where PTB's means something; ``--check-graph`` on a CPU says not applicable for it).

**Plan.** A short bench (a few steps of each experiment's heaviest launch, its probe: CIFAR's DN*, SR's DN*-code,
PTB's lstm-lstm group, each its experiment's step of the most kernel launches, counted in tests/test_campaign.py;
after a warm-up that includes the CUDA-graph capture) gives seconds per step, the build and one evaluation; a launch
is predicted at ``build + steps x seconds per step + chunks x evaluation`` (the probe's figures for every launch of
that experiment, ``predict``: an upper bound as far as a step's time follows its kernel count, as the launch-bound
PTB and SR steps do; CIFAR's steps are about half compute, results/h100/campaign_plan.md).
``--jobs`` launches run at once (processes); on CUDA the bench's peak memory caps them to what fits the card.

**Budget.** The launches run in order (CIFAR, SR, PTB). A launch's time limit is its share of the time left,
``left x predicted / predicted of the launches not yet run`` (what one saves passes to the next), never past the
deadline (``budget`` minus a reserve for the report). The share is also a step cap: the steps that fit in it at the
bench's seconds per step (after the build and one evaluation), so a launch stops inside a chunk rather than
running a whole chunk (a PTB epoch: a minute or more on a card) past its share. A launch stopped by either, or
started with no time left (built, not trained), records every copy ``stopped: time budget at step N``: nothing is
dropped. Rerunning the command resumes each unfinished launch from its checkpoint (with a fresh budget) and skips
finished ones.

**Failures stay local.** An experiment whose data, check or bench fails (its data not staged, a package missing on the
device) is recorded in ``campaign.json`` (``failed``) with the error, each of its launches ``not run: <error>``; a
launch that raises is recorded ``failed: <error>`` (its traceback in the log); the other experiments and launches go
on. ``campaign.json`` is written after the bench and after every launch, so a command killed at its time limit
leaves what was done.

**Stops.** SIGTERM (``timeout``'s, a device's) or SIGINT stops the campaign: the launch in flight is recorded as its
copies' records stand (``interrupted at step N``; ``stopped_by`` in its row and in ``campaign.json``), every later
one ``not run: stopped by SIGTERM before it started``; ``campaign.json``, ``tables.md`` and the bundle are written,
and the command exits 128 + the signal's number.

**Bundle.** ``--bundle DIR`` (scripts/gpu_paper.sh's ``BUNDLE``: the folder a device call brings back, at most 8
files of 16 MiB) is refreshed after the bench and after every launch (:func:`publish`: each file replaced whole), so
a call killed without a signal still brings back ``campaign.json``, ``log.txt`` and the finished launches' records.

**Records.** ``OUT/<experiment>/<launch>/<config>-s<seed>/record.json`` per copy (``gather``/``report``/06 read
them), ``OUT/campaign.json`` (the bench, the plan, each launch's predicted and actual seconds, statuses, what is not
planned, notes on rows that are not the paper's experiment), ``OUT/tables.md`` (every paper table beside ours, mean
± std, n, what stopped where, those notes).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import cli
from ..io import atomic_write, atomic_write_json, atomic_write_text
from ..training.trainer import TrainingDiverged
from . import records, tables
from .campaign_plan import (
    EXPERIMENTS,
    NOT_PLANNED,
    TABLES,
    Launch,
    bench,
    check_graph,
    graph_check_text,
    plan,
    predict,
    prepare_launch,
    probe,
    shared_data,
    steps_within,
    table_notes,
)
from .engines import die_with_parent
from .recipe import COMPLETED, check_int

__all__ = ["run_launch", "campaign", "publish", "main", "BUNDLE_FILES"]

def _statuses(folder: Path) -> list:
    return [rec.get("stopped") for _, rec in records.read_records([folder])] if folder.is_dir() else []


def run_launch(launch: Launch, out, device: str = "auto", time_limit: float | None = None,
               stop_after: int | None = None, data=None, max_steps: int | None = None) -> dict:
    """Train (or resume) one launch in ``out/<experiment>/<name>`` under ``time_limit`` seconds (``stop_after=0``:
    build and record, train nothing; ``max_steps``: at most that many steps past where it resumes, stopping inside a
    chunk if need be); a launch whose copies all completed is skipped. Returns its row of ``campaign.json``:
    statuses, steps done, seconds."""
    folder = Path(out) / launch.experiment / launch.name
    before = _statuses(folder)
    row = {"launch": launch.name, "experiment": launch.experiment, "copies": launch.copies, "planned": launch.planned,
           "predicted_s": round(launch.predicted_s, 1), "time_limit_s": None if time_limit is None else
           round(time_limit, 1)}
    if len(before) == launch.copies and all(s == COMPLETED for s in before):
        return {**row, "seconds": 0.0, "steps": launch.planned, "stopped": [COMPLETED], "skipped": True}
    t0 = time.perf_counter()
    check_int("max_steps", max_steps, 0, none_ok=True)
    run = prepare_launch(launch, device, data, resume=folder, time_limit=time_limit, stop_after=stop_after)
    if max_steps is not None:                     # the budget's step cap, counted from the resumed step
        cap = run.trainer.step + max_steps
        run.stop_after = cap if run.stop_after is None else min(run.stop_after, cap)
    try:
        results = run.go()
        stopped = [r.stopped for r in results]
    except TrainingDiverged as e:              # every copy diverged: each record says so
        stopped = [e.status]
    return {**row, "seconds": round(time.perf_counter() - t0, 2), "steps": run.trainer.step,
            "stopped": sorted(set(stopped)), "skipped": False}


# --------------------------------------------------------------------------------------------- campaign
def _tables(out: Path, experiments: Sequence[str] = EXPERIMENTS) -> str:
    parts, notes = [], table_notes(experiments)
    for exp, names in TABLES.items():
        for name in names:
            try:
                parts.append(str(tables.compare([out / exp], name, finished=True)))
            except Exception as e:   # noqa: BLE001  a table that cannot be made is named, the others are made
                parts.append(f"{name}: not made ({type(e).__name__}: {cli.one_line(e)})")
            if name in notes:
                parts[-1] += f"\n\nNote: {notes[name]}."
    return "\n\n".join(parts) + "\n"


#: what a device call brings back from ``out`` beside ``runs.tgz`` (:func:`publish`)
BUNDLE_FILES = ("campaign.json", "tables.md", "log.txt", "nvidia-smi.txt")
BUNDLE_FILE_LIMIT = 16 * 2**20          # bytes: the most a device call brings back of one file


def _in_runs(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = info.name.rsplit("/", 1)[-1]
    skip = name == "checkpoint.pt" or name.startswith("events.out.tfevents.") or name.endswith(".tmp") or \
        info.name == "./log.txt"
    return None if skip else info


def publish(out, bundle, log=print) -> list:
    """Copy into ``bundle`` what a device call brings back from ``out`` (at most 8 files at its top level, 16 MiB
    each): the :data:`BUNDLE_FILES` there and ``runs.tgz`` (``out`` without checkpoints, TensorBoard events and
    log.txt: every copy's record and curves so far; the records alone when that is over 16 MiB), each written
    atomically (a kill leaves the previous copy whole). Returns the bundle's file names."""
    out, bundle = Path(out), Path(bundle)
    for name in BUNDLE_FILES:
        if (out / name).is_file():
            atomic_write(bundle / name, lambda f, src=out / name: f.write(src.read_bytes()))

    def pack(keep) -> int:
        def write(f):
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                tar.add(out, arcname=".", filter=keep)
        return atomic_write(bundle / "runs.tgz", write).stat().st_size
    if pack(_in_runs) > BUNDLE_FILE_LIMIT:
        log(f"publish: {bundle / 'runs.tgz'} is over 16 MiB, the most a device call brings back: the records alone")
        pack(lambda i: i if i.isdir() or i.name.endswith("/record.json") else None)
    return sorted(q.name for q in bundle.iterdir())


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {cli.one_line(e)}"


def _start(exp: str, launches: list, device: str, tiny: bool, jobs: int, bench_steps: int, cuda: bool, log):
    """An experiment's start in the campaign: its shared data, on CUDA the graph check of its heaviest launch (its
    probe; a check that fails or raises makes its launches eager), the bench; fills its launches' predictions.
    Returns ``(data, graph check or None, bench)``."""
    t0 = time.perf_counter()
    mine = [x for x in launches if x.experiment == exp]
    biggest = probe(mine)                        # the heaviest launch
    data = shared_data(exp, tiny, device) if jobs == 1 else None
    g = None
    if cuda:                                     # graph == eager on the device, else this experiment trains eagerly
        try:
            g = check_graph(biggest, device, data=data)
            log(f"check-graph {exp}: {biggest.name} K={biggest.copies}: {graph_check_text(g)}")
        except Exception as e:  # noqa: BLE001  a capture that raises: the experiment trains eagerly
            g = {"launch": biggest.name, "copies": biggest.copies, "ok": False, "error": _error(e)}
            log(f"check-graph {exp}: {biggest.name}: raised {g['error']}: its launches train eagerly\n"
                f"{traceback.format_exc()}")
        if g["ok"] is False:                     # (None: not applicable, the steps as built)
            for x in mine:
                x.options["mode"] = "eager"
    b = bench(biggest, device, steps=1 if tiny else bench_steps, warmup=1 if tiny else 2,
              data=data if data is not None else shared_data(exp, tiny, device))
    b["load_and_bench_s"] = round(time.perf_counter() - t0, 1)
    log(f"bench {exp}: {biggest.name} K={biggest.copies}: {1e3 * b['s_per_step']:.1f} ms/step, build "
        f"{b['build_s']:.1f} s, evaluation {b['eval_s']:.1f} s per {b['chunk']} steps")
    for x in mine:
        x.predicted_s = predict(x, b)
    return data, g, b


class _Stop:
    """SIGTERM (the hard ``timeout``, a device ending the call) and SIGINT as one ``KeyboardInterrupt`` naming the
    signal, raised in the main thread at the first signal only (the runner then records the launch in flight
    ``interrupted at step N``); later ones, and any once :attr:`armed` is off, are ignored while the campaign writes
    what it did (``timeout -k`` ends that with a KILL)."""

    def __init__(self):
        self.name, self.armed, self.old = None, True, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __call__(self, signum, frame):
        if self.armed:
            self.name, self.armed = signal.Signals(signum).name, False
            raise KeyboardInterrupt(self.name)

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def campaign(out, *, device: str = "auto", budget: float = 540.0, tiny: bool = False, seeds=(0, 1, 2),
             experiments: Sequence[str] = EXPERIMENTS, jobs: int = 1, reserve: float | None = None,
             bench_steps: int = 3, bundle=None, log=print) -> dict:
    """Plan, bench, run every launch under ``budget`` seconds (module doc), then write ``campaign.json`` and
    ``tables.md`` in ``out``; returns the campaign record. ``jobs`` > 1: that many launches at once (processes).
    ``bundle``: a folder outside ``out`` that :func:`publish` refreshes after the bench and every launch. SIGTERM or
    SIGINT stops it: the launch in flight is recorded as it stood, the later ones ``not run``, ``stopped_by`` names
    the signal, and ``campaign.json``, ``tables.md`` and the bundle are written before it returns."""
    t_start = time.perf_counter()
    cli.check_distinct("seeds", seeds)      # a seed or an experiment twice: two launches into one folder
    cli.check_distinct("experiments", experiments)
    out = Path(out)
    if bundle is not None and (Path(bundle).resolve() == out.resolve() or out.resolve() in
                               Path(bundle).resolve().parents):
        raise ValueError(f"bundle: {bundle} is inside out {out}: give the bundle a folder of its own")
    out.mkdir(parents=True, exist_ok=True)
    if not budget > 0:
        raise ValueError(f"budget: must be > 0 seconds, got {budget!r}")
    check_int("jobs", jobs)
    reserve = (min(60.0, 0.1 * budget) if not tiny else 5.0) if reserve is None else float(reserve)
    launches = plan(tiny, seeds, experiments)
    log(f"campaign: {len(launches)} launches, {sum(x.copies for x in launches)} runs, budget {budget:.0f} s")
    record = {"budget_s": budget, "reserve_s": reserve, "tiny": tiny, "device": device, "jobs": jobs,
              "seeds": list(seeds), "graph_check": {}, "bench": {}, "failed": {}, "launches": [],
              "not_planned": list(NOT_PLANNED), "notes": table_notes(experiments), "stopped_by": None}
    for note in dict.fromkeys(record["notes"].values()):
        log(f"note ({', '.join(k for k, v in record['notes'].items() if v == note)}): {note}")

    def save():                                   # after the bench and every launch: a kill leaves what was done
        atomic_write_json(out / "campaign.json", records.jsonable(
            {**record, "graph_check": record["graph_check"] or "not on a CPU (the check runs on CUDA)",
             "train_s": round(time.perf_counter() - t_start, 1)}))
        if bundle is not None:
            publish(out, bundle, log)

    in_flight: list = []
    with _Stop() as stop:
        try:
            _run(launches, record, in_flight, out, device, tiny, jobs, bench_steps, t_start + budget - reserve,
                 save, log)
        except KeyboardInterrupt:
            stop.name = stop.name or "SIGINT"    # (raised without the handler: not the main thread)
        stop.armed = False
        if stop.name:
            _stopped(record, launches, in_flight, out, stop.name, log)
        record["train_s"] = round(time.perf_counter() - t_start, 1)
        record["graph_check"] = record["graph_check"] or "not on a CPU (the check runs on CUDA)"
        atomic_write_json(out / "campaign.json", records.jsonable(record))
        atomic_write_text(out / "tables.md", _tables(out, experiments))
        record["total_s"] = round(time.perf_counter() - t_start, 1)
        save()
    return record


def _run(launches: list, record: dict, in_flight: list, out: Path, device: str, tiny: bool, jobs: int,
         bench_steps: int, deadline: float, save, log) -> None:
    """The campaign's work (module doc): each experiment's start, then the launches under the budget; fills
    ``record`` (and ``in_flight``: the launches running, for a stop by a signal)."""
    benches, datas, graphs, failed, rows = record["bench"], {}, record["graph_check"], record["failed"], \
        record["launches"]
    cuda = (torch.device(device).type == "cuda") if device != "auto" else torch.cuda.is_available()
    for exp in dict.fromkeys(x.experiment for x in launches):
        try:
            datas[exp], g, benches[exp] = _start(exp, launches, device, tiny, jobs, bench_steps, cuda, log)
        except Exception as e:  # noqa: BLE001  an experiment that cannot start is recorded; the others go on
            failed[exp] = _error(e)
            log(f"{exp}: not run: {failed[exp]}\n{traceback.format_exc()}")
            continue
        if g is not None:
            graphs[exp] = g
    rows += [_not_run(x, failed) for x in launches if x.experiment in failed]
    launches = [x for x in launches if x.experiment not in failed]
    per_card = jobs
    peaks = [b["peak_bytes"] for b in benches.values() if b["peak_bytes"]]
    if peaks and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        per_card = max(1, min(jobs, int(0.8 * total // max(peaks))))
    record["jobs"] = per_card
    save()
    pending = list(launches)
    log(f"plan: predicted {sum(x.predicted_s for x in launches):.0f} s of training in {len(launches)} launches, "
        f"{per_card} at a time; {max(deadline - time.perf_counter(), 0):.0f} s left for them")
    while pending:
        batch, pending = pending[:per_card], pending[per_card:]
        left = deadline - time.perf_counter()
        todo = sum(x.predicted_s for x in batch + pending) or 1.0
        specs = []
        for x in batch:
            share = max(left, 0.0) * per_card * x.predicted_s / todo if len(batch) > 1 else \
                max(left, 0.0) * x.predicted_s / todo
            share = min(share, max(left, 0.0))
            fits = share >= 1.0
            specs.append((x, share if fits else None, None if fits else 0,
                          steps_within(share, benches[x.experiment]) if fits else None))
        if per_card == 1 or len(batch) == 1:
            for x, limit, stop, steps in specs:
                in_flight[:] = [x]
                try:
                    rows.append(run_launch(x, out, device, limit, stop, data=datas[x.experiment], max_steps=steps))
                except Exception as e:  # noqa: BLE001  a launch that raises is recorded; the others go on
                    rows.append({"launch": x.name, "experiment": x.experiment, "copies": x.copies,
                                 "planned": x.planned, "predicted_s": round(x.predicted_s, 1),
                                 "stopped": [f"failed: {_error(e)}"], "skipped": False})
                    log(traceback.format_exc())
                in_flight[:] = []
                log(f"{x.experiment} {x.name}: {rows[-1]['stopped']} after {rows[-1].get('seconds', 0):.1f} s "
                    f"(predicted {x.predicted_s:.1f} s, limit {limit if limit is None else round(limit, 1)}, "
                    f"at most {steps} steps)")
                save()
        else:
            in_flight[:] = [x for x, *_ in specs]
            rows += _run_parallel(specs, out, device, log, tiny)
            in_flight[:] = []
            save()


def _not_run(x: Launch, failed: dict, why: str | None = None) -> dict:
    why = why or f"{failed[x.experiment].split(':')[0]} (campaign.json: failed)"
    return {"launch": x.name, "experiment": x.experiment, "copies": x.copies, "planned": x.planned, "seconds": 0.0,
            "stopped": [f"not run: {why}"], "skipped": False}


def _stopped(record: dict, launches: list, in_flight: list, out: Path, name: str, log) -> None:
    """A campaign stopped by the signal ``name``: each launch in flight recorded as its records stand (the runner
    wrote ``interrupted at step N``), every launch not yet recorded ``not run``."""
    record["stopped_by"] = name
    rows, done = record["launches"], {(r["experiment"], r["launch"]) for r in record["launches"]}
    for x in in_flight:
        if (x.experiment, x.name) in done:       # recorded just before the signal
            continue
        statuses = sorted(set(_statuses(out / x.experiment / x.name))) or ["interrupted before it was built"]
        rows.append({"launch": x.name, "experiment": x.experiment, "copies": x.copies, "planned": x.planned,
                     "predicted_s": round(x.predicted_s, 1), "stopped": statuses, "stopped_by": name,
                     "skipped": False})
        done.add((x.experiment, x.name))
    rest = [x for x in launches if (x.experiment, x.name) not in done]
    rows += [_not_run(x, record["failed"], None if x.experiment in record["failed"] else
                      f"stopped by {name} before it started") for x in rest]
    log(f"campaign: stopped by {name}: {', '.join(x.name for x in in_flight) or 'no launch'} in flight, recorded "
        f"as it stood; {len(rest)} launches not run; writing campaign.json, tables.md and the bundle")


def _run_parallel(specs, out: Path, device: str, log, tiny: bool) -> list:
    """Launches at once, one process each (``python -m dnlib.experiments.campaign --launch``)."""
    procs = []
    for x, limit, stop, steps in specs:
        spec = {**dataclasses.asdict(x), "time_limit": limit, "stop_after": stop, "max_steps": steps, "tiny": tiny}
        procs.append((x, subprocess.Popen([sys.executable, "-m", "dnlib.experiments.campaign", "--out", str(out),
                                           "--device", device, "--launch", json.dumps(spec)],
                                          stdout=subprocess.PIPE, text=True,
                                          preexec_fn=die_with_parent())))   # a killed campaign leaves none running
    rows = []
    try:
        texts = [p.communicate()[0] for _, p in procs]
    except KeyboardInterrupt:                    # a stop: each launch's process records its copies, then ends
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            p.communicate()
        raise
    for (x, p), text in zip(procs, texts):
        try:
            rows.append(json.loads(text.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            rows.append({"launch": x.name, "experiment": x.experiment, "stopped": [f"process failed (exit "
                                                                                  f"{p.returncode})"]})
        log(f"{x.experiment} {x.name}: {rows[-1].get('stopped')}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m dnlib.experiments.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=cli.out_dir, required=True, help="the campaign's folder (rerun: resume it)")
    p.add_argument("--device", type=cli.device, default="auto")
    p.add_argument("--budget", type=cli.positive_float, default=540.0, help="seconds in all (default 540 = 9 min)")
    p.add_argument("--tiny", action="store_true", help="the CPU rehearsal's sizes")
    p.add_argument("--seeds", type=cli.seed, nargs="+", default=[0, 1, 2])
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--jobs", type=cli.positive_int, default=1, help="launches at once (processes), at most")
    p.add_argument("--check-graph", action="store_true",
                   help="only check each experiment's heaviest stacked launch (its probe): graph step == eager step "
                        "(a JSON line each; exit 1 when one fails; ok null: not applicable)")
    p.add_argument("--bundle", type=cli.out_dir, default=None,
                   help="a folder outside --out refreshed after the bench and every launch with what a device call "
                        "brings back: campaign.json, tables.md, log.txt, nvidia-smi.txt (those of --out) and runs.tgz")
    p.add_argument("--launch", default=None, help=argparse.SUPPRESS)       # one launch, for _run_parallel
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cpu" if args.device != "auto" else not torch.cuda.is_available():
        torch.set_num_threads(1)          # the small steps of a CPU rehearsal: one thread beats oversubscribed ones
    if args.check_graph:
        bad = 0
        for exp in args.experiments:
            biggest = probe(plan(args.tiny, args.seeds, [exp]))
            row = check_graph(biggest, args.device, data=shared_data(exp, args.tiny, args.device))
            print(json.dumps(records.jsonable({"experiment": exp, **row})), flush=True)
            bad += row["ok"] is False             # None: not applicable here (row["why"])
        return 1 if bad else 0
    if args.launch is not None:
        spec = json.loads(args.launch)
        limit, stop, steps = spec.pop("time_limit"), spec.pop("stop_after"), spec.pop("max_steps")
        tiny = spec.pop("tiny")
        launch = Launch(**spec)
        with _Stop() as stopping:
            try:
                row = run_launch(launch, args.out, args.device, limit, stop, max_steps=steps,
                                 data=shared_data(launch.experiment, tiny, args.device))
            except KeyboardInterrupt:            # its copies' records say where (the campaign reads them)
                return 128 + signal.Signals[stopping.name or "SIGINT"].value
        print(json.dumps(records.jsonable(row)))
        return 0
    with cli.user_errors(p):
        rec = campaign(args.out, device=args.device, budget=args.budget, tiny=args.tiny, seeds=args.seeds,
                       experiments=args.experiments, jobs=args.jobs, bundle=args.bundle, log=_say)
    stopped = sorted({s for r in rec["launches"] for s in r.get("stopped", [])})
    _say(f"campaign: {len(rec['launches'])} launches in {rec['total_s']:.0f} s; stopped: {stopped}"
         + (f"; stopped by {rec['stopped_by']}" if rec["stopped_by"] else ""))
    return 128 + signal.Signals[rec["stopped_by"]].value if rec["stopped_by"] else 0


def _say(line: str) -> None:
    """The command's log line (stdout, flushed); a reader that has gone (the script's tee, stopped) loses it, and the
    campaign goes on to write its files."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
