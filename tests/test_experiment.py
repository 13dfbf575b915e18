"""The shared runner (dnlib/experiments/runner.py, issue 13), on every recipe at smoke size.

Add a recipe by appending a :class:`Smoke` to ``RECIPES``: every test below then runs on it. A smoke entry names
a configuration and the tiny options/flags that make a run of ``steps`` steps in chunks of ``chunk`` steps take
seconds on a CPU (at least three chunks), and a field change that makes a second, different run.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from dnlib.experiments import commands, records
from dnlib.experiments import resume as resume_mod
from dnlib.experiments import runner as runner_mod
from dnlib.experiments import sweep as sweeps
from dnlib.training.trainer import TrainingDiverged

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Smoke:
    """One recipe at smoke size."""
    module: str                      # "dnlib.experiments.cifar": has RECIPE and main(argv)
    config: str                      # a configuration name
    options: dict                    # build options of a tiny run (Python API)
    cli: list                        # the same as run flags (CLI), without --steps/--out/--resume
    steps: int                       # steps of the smoke run (>= 3 chunks)
    chunk: int                       # steps per chunk
    change: dict                     # a field change that makes another run
    diverge: dict = field(default_factory=dict)   # overrides that diverge within the smoke run ({}: skip)
    available: bool = True           # its data is here

    @property
    def recipe(self):
        return importlib.import_module(self.module).RECIPE

    @property
    def main(self):
        return importlib.import_module(self.module).main


def _has_cifar() -> bool:
    return (MIRROR / "cifar10-jpeg" / "train").is_dir() or (MIRROR / "cifar-10-batches-py").is_dir()


RECIPES = [
    pytest.param(Smoke("dnlib.experiments.cifar", "bn", {"subset": (200, 100), "eval_every": 2},
                       ["--subset", "200,100", "--eval-every", "2", "--batch-size", "20", "--device", "cpu"],
                       steps=6, chunk=2, change={"lr": 2e-3}, diverge={"lr": 1e6}, available=_has_cifar()),
                 id="cifar"),
    pytest.param(Smoke("dnlib.experiments.sr", "smoke-bn",
                       {"sets": ("Set5",), "curve_sets": ("Set5",), "eval_every": 2},
                       ["--sets", "Set5", "--curve-sets", "Set5", "--batch-size", "8", "--eval-every", "2",
                        "--device", "cpu"],
                       steps=6, chunk=2, change={"lr": 1e-3}, diverge={"lr": 1e8, "optimizer": "sgd"},
                       available=(MIRROR / "sr" / "T91").is_dir() and (MIRROR / "sr" / "Set5").is_dir()),
                 id="sr"),
    pytest.param(Smoke("dnlib.experiments.ptb", "ln-star-lstm", {"max_tokens": 3000, "vocab": 200, "eval_every": 2},
                       ["--max-tokens", "3000", "--vocab", "200", "--eval-every", "2", "--hidden-size", "16",
                        "--batch-size", "4", "--device", "cpu"],
                       steps=6, chunk=2, change={"lr": 0.5}, diverge={"lr": 1e6, "clip_norm": None},
                       available=(MIRROR / "ptb" / "ptb.train.txt").is_file()),
                 id="ptb"),
    pytest.param(Smoke("dnlib.experiments.analysis", "batch-bn-b8", {"eval_every": 2},
                       ["--size", "smoke", "--eval-every", "2", "--device", "cpu"],
                       steps=6, chunk=2, change={"lr": 0.02}, diverge={"lr": 1e6}, available=_has_cifar()),
                 id="analysis"),
]
_OVERRIDES = {"dnlib.experiments.cifar": {"batch_size": 20}, "dnlib.experiments.sr": {"batch_size": 8},
              "dnlib.experiments.ptb": {"hidden_size": 16, "batch_size": 4},
              "dnlib.experiments.analysis": {"size": "smoke"}}   # smoke-size fields


def _need(s: Smoke):
    if not s.available:
        pytest.skip(f"{s.module}: its data is not in DNLIB_DATA={MIRROR}")


def _run(s: Smoke, **kw):
    overrides = {**_OVERRIDES.get(s.module, {}), **kw.pop("overrides", {})}
    return runner_mod.run(s.recipe, kw.pop("config", s.config), steps=s.steps, device="cpu", overrides=overrides,
                          options=kw.pop("options", s.options), **kw)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def _timeless(headline: dict) -> dict:
    """The headline without what depends on the clock (seconds, throughput)."""
    return {k: v for k, v in headline.items() if "second" not in k and "per_s" not in k}


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


# ------------------------------------------------------------------------------------------------ resume
def _count_steps(monkeypatch) -> list:
    """Count the optimizer steps trained in this process (every trainer class's train_step)."""
    from dnlib.training import graphs
    from dnlib.training import trainer as train
    count = [0]
    for cls in {train.Trainer, graphs.GraphTrainer, *train.Trainer.__subclasses__()}:
        if "train_step" in vars(cls):
            def counted(self, batch, _orig=cls.__dict__["train_step"]):
                count[0] += 1
                return _orig(self, batch)
            monkeypatch.setattr(cls, "train_step", counted)
    return count


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_resumed_run_equals_the_uninterrupted_one(s, tmp_path, monkeypatch):
    """Interrupted by a time limit (after the first chunk) and by stop_after, then resumed by folder: the same
    history (every logged number) and bit-identical weights as one uninterrupted run, and each call trains only
    the steps that were left."""
    _need(s)
    trained = _count_steps(monkeypatch)
    full = _run(s, out=tmp_path / "a")
    assert full.stopped == "completed" and full.record["steps_done"] == s.steps
    part_dir = tmp_path / "b"
    part = _run(s, resume=part_dir, time_limit=1e-6)       # the first chunk always runs; the next does not fit
    assert part.stopped == f"time limit at step {s.chunk}" and part.record["steps_done"] == s.chunk
    assert records.read_record(part_dir)["stopped"] == f"time limit at step {s.chunk}"
    assert records.read_curves(part_dir)[-1]["step"] == s.chunk
    before = trained[0]
    part = runner_mod.run(s.recipe, resume=part_dir, stop_after=2 * s.chunk)   # config from run.json
    assert part.stopped == f"stop_after at step {2 * s.chunk}" and trained[0] - before == s.chunk
    before = trained[0]
    resumed = runner_mod.run(s.recipe, resume=part_dir)
    assert trained[0] - before == s.steps - 2 * s.chunk
    assert resumed.stopped == "completed" and resumed.record["steps_done"] == s.steps
    assert _strip(resumed.history) == _strip(full.history)
    a, b = _weights(full.run_dir), _weights(part_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _timeless(resumed.record["headline"]) == _timeless(full.record["headline"])
    rows = records.read_curves(part_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in records.read_curves(full.run_dir)]


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_resume_naming_the_config_keeps_the_stored_options_and_refuses_others(s, tmp_path):
    """Resuming a folder with its configuration named (``run NAME --resume DIR``, as sweeps do) used only the options
    given then: the stored ``eval_every`` was replaced by the default and run.json rewritten without it. The stored
    options apply whether or not the configuration is named; an equal one may be given, a different one is refused
    by name before anything is written."""
    _need(s)
    _run(s, resume=tmp_path, stop_after=s.chunk, progress=False)
    stored = json.loads((tmp_path / "run.json").read_text())
    assert stored["options"]["eval_every"] == s.chunk
    with pytest.raises(ValueError, match=rf"^eval_every: .*eval_every={s.chunk}\b.*given eval_every=3\b"):
        _run(s, resume=tmp_path, options={**s.options, "eval_every": 3}, progress=False)
    assert json.loads((tmp_path / "run.json").read_text()) == stored          # nothing written
    part = _run(s, resume=tmp_path, stop_after=2 * s.chunk, progress=False)    # the same options: fine
    assert part.record["steps_done"] == 2 * s.chunk
    rest = {k: v for k, v in s.options.items() if k != "eval_every"}
    done = _run(s, resume=tmp_path, options=rest, progress=False)              # eval_every left out: the stored one
    assert done.stopped == "completed"
    assert json.loads((tmp_path / "run.json").read_text())["options"] == stored["options"]
    assert [r["step"] for r in records.read_curves(tmp_path)] == list(range(s.chunk, s.steps + 1, s.chunk))


def test_resume_refuses_a_folder_of_a_copied_record_or_of_other_runs(tmp_path, capsys):
    """``run --resume DIR`` with no run.json in DIR started a new run there: a copied record (results/records) was
    overwritten by a 2-step run, and a sweep's folder became a run folder that hid its runs from gather. Refused
    before any data is loaded, one line, exit 2, the folder unchanged; an empty folder (or one holding only a log,
    as a sweep's engine makes it) is still a new run's."""
    from dnlib.experiments import cifar
    src = Path(__file__).resolve().parent.parent / "results" / "records" / "cifar" / "bn-star-s0-h100"
    copied = tmp_path / "copied"
    shutil.copytree(src, copied)
    sweep = tmp_path / "sweep"
    shutil.copytree(src, sweep / "bn-star-s0")
    for folder, said in ((copied, "record.json but no run.json"), (sweep, "other runs (bn-star-s0)")):
        before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        with pytest.raises(SystemExit) as e:
            cifar.main(["run", "bn-star", "--resume", str(folder), "--steps", "2", "--subset", "200,100"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and said in err, err
        assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    recipe = importlib.import_module("dnlib.experiments.cifar").RECIPE
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "log.txt").write_text("started\n")
    assert resume_mod.stored_run(recipe, tmp_path / "new") == {}


def test_resume_refuses_an_option_other_than_the_stored_or_default_one(tmp_path):
    """The options check of a resume, before any data is loaded: a stored option given with another value is refused
    naming both; one the folder did not store ran at its default, so another value is refused too; an equal one, and
    the options that say where the data lie or how many threads to use (``FREE_ON_RESUME``), are not; a named resume
    that gives a different one stops before any data is loaded."""
    recipe = importlib.import_module("dnlib.experiments.ptb").RECIPE
    (tmp_path / "run.json").write_text(json.dumps({"experiment": "ptb", "config": "ln-star-lstm",
                                                   "options": {"eval_every": 2, "max_tokens": 3000}}))

    def resume(**options):
        return resume_mod.resumed_options(recipe, resume_mod.read_run_file(tmp_path), options, tmp_path)

    with pytest.raises(ValueError, match=r"^eval_every: the run in .* was made with eval_every=2; given "
                                         r"eval_every=4 \(a resume must match the run it resumes"):
        resume(eval_every=4)
    with pytest.raises(ValueError, match=r"^final_test_batch_size: .*made with final_test_batch_size=1 \(its "
                                         r"default\); given final_test_batch_size=None"):
        resume(final_test_batch_size=None)
    assert resume(eval_every=2, threads=3, root="/elsewhere") == {"eval_every": 2, "max_tokens": 3000, "threads": 3,
                                                                  "root": "/elsewhere"}
    assert resume() == {"eval_every": 2, "max_tokens": 3000}
    with pytest.raises(ValueError, match=r"^max_tokens: .*max_tokens=3000; given max_tokens=100 "):
        runner_mod.prepare(recipe, "ln-star-lstm", resume=tmp_path, options={"max_tokens": 100})


@pytest.mark.slow
def test_cifar_mean_over_is_recorded_and_is_part_of_the_run_identity(tmp_path):
    """CIFAR's mean image over train or train+test (PAPER.md §5.4) changes the inputs, but the record and the
    checkpoint's identity did not say which: two runs differing only in it had the same config (a report pooled
    them) and a run resumed under the other mean. The record says it (a report splits such runs, labelled), a
    resume with the other mean is refused (data given or loaded with it), and so is data given beside a
    ``mean_over`` it was not loaded with."""
    import warnings

    from dnlib.experiments import aggregate
    from dnlib.experiments.cifar import load_data
    from dnlib.training.trainer import CheckpointError
    s = RECIPES[0].values[0]
    _need(s)
    data = {mo: load_data("cifar10", subset=(200, 100), device="cpu", mean_over=mo) for mo in ("train", "train+test")}
    opts = {mo: {"data": d, "eval_every": 2} for mo, d in data.items()}
    for mo in data:
        _run(s, resume=tmp_path / mo, options=opts[mo], stop_after=2, progress=False)
    recs = {mo: records.read_record(tmp_path / mo) for mo in data}
    assert [recs[mo]["config"]["setup"]["mean_over"] for mo in data] == ["train", "train+test"]
    setup = {k: v for k, v in recs["train"]["config"]["setup"].items() if k != "mean_over"}
    older = {**recs["train"], "seed": 1, "config": {**recs["train"]["config"], "setup": setup}}   # before it was kept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = aggregate.summarize([recs["train"], recs["train+test"], older])
    assert {r["split"]: r["n"] for r in rows} == {"mean_over train": 2, "mean_over train+test": 1}
    assert any("mean_over: train, train+test" in str(w.message) for w in caught)
    with pytest.raises(CheckpointError, match=r"mean_over: stored .*requested 'train\+test'"):
        _run(s, resume=tmp_path / "train", options=opts["train+test"], progress=False)
    with pytest.raises(CheckpointError, match=r"mean_over: stored .*requested 'train\+test'"):   # loaded so
        _run(s, resume=tmp_path / "train", options={**s.options, "mean_over": "train+test"}, progress=False)
    with pytest.raises(ValueError, match=r"mean_over='train\+test'.*loaded with mean_over='train'"):
        _run(s, out=tmp_path / "new", options={**opts["train"], "mean_over": "train+test"}, progress=False)
    assert records.read_record(tmp_path / "train") == recs["train"]


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_time_limit_stops_at_a_chunk_boundary_on_the_cli(s, tmp_path, capsys):
    _need(s)
    code = s.main(["run", s.config, *s.cli, "--steps", str(s.steps), "--out", str(tmp_path), "--time-limit", "1e-6"])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    rec = records.read_record(run_dir)
    assert rec["stopped"] == f"time limit at step {s.chunk}" and rec["steps_done"] == s.chunk
    assert json.loads(capsys.readouterr().out)["stopped"] == rec["stopped"]
    assert s.main(["run", "--resume", str(run_dir)]) == 0          # the folder alone resumes it
    assert records.read_record(run_dir)["stopped"] == "completed"


# ------------------------------------------------------------------------------------------------ records
@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_record_has_the_same_keys_for_every_recipe(s, tmp_path):
    _need(s)
    r = _run(s, out=tmp_path, stop_after=s.chunk)
    rec = records.read_record(r.run_dir)
    assert tuple(rec) == records.RUN_RECORD_KEYS
    assert rec["experiment"] == s.recipe.name and rec["name"] == s.config and rec["seed"] == 0
    assert rec["steps_planned"] == s.steps and rec["steps_done"] == s.chunk
    assert rec["headline"] and set(rec["paper"]) <= set(rec["headline"])
    assert rec["config"]["setup"] == records.jsonable(r.setup.info)
    assert sorted(p.name for p in r.run_dir.iterdir() if not p.name.startswith("events.out.tfevents")) == sorted(
        ["checkpoint.pt", "curves.csv", "history.json", "record.json", "run.json"])   # (TensorBoard's, if installed)
    rows = records.read_curves(r.run_dir)
    assert rows and all("step" in row for row in rows) and rows[-1]["step"] == s.chunk


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_a_resumed_run_records_every_call_and_a_finished_one_is_left_alone(s, tmp_path, capsys):
    """A resumed run's record said only the last call (its start, its ~seconds, its commit, device and host), and
    resuming a completed run, which trains nothing, rewrote it (new start, ~0 s). The record keeps the first call's
    start and provenance and lists one segment per call that trained (start, end, seconds, steps from-to, git,
    device, host); ``seconds`` is their sum; a completed run's record is left as it was, and the run says so."""
    _need(s)
    _run(s, resume=tmp_path, stop_after=s.chunk, progress=False)
    first = records.read_record(tmp_path)
    time.sleep(1.1)                                     # (ISO times to the second)
    _run(s, resume=tmp_path, progress=False)
    rec = records.read_record(tmp_path)
    assert {k: rec[k] for k in ("started", "git", "versions", "device", "host")} == {
        k: first[k] for k in ("started", "git", "versions", "device", "host")}
    assert tuple(rec) == records.RUN_RECORD_KEYS and rec["stopped"] == "completed"
    segs = rec["segments"]
    assert [seg["steps"] for seg in segs] == [[0, s.chunk], [s.chunk, s.steps]]
    assert segs[0] == first["segments"][0] and tuple(segs[1]) == records.SEGMENT_KEYS
    assert segs[0]["started"] == rec["started"] and segs[1]["started"] > segs[0]["ended"]
    assert segs[1]["ended"] == rec["ended"] and segs[1]["host"] == rec["host"]
    assert segs[1]["git"] == rec["git"] and segs[1]["device"] == rec["device"]
    assert rec["seconds"] == pytest.approx(sum(seg["seconds"] for seg in segs), abs=2e-3) and segs[1]["seconds"] > 0
    body = (tmp_path / "record.json").read_bytes()
    capsys.readouterr()
    time.sleep(1.1)
    again = _run(s, resume=tmp_path, progress=False)    # completed: nothing to train
    assert (tmp_path / "record.json").read_bytes() == body and again.record == rec
    assert "already completed" in capsys.readouterr().out
    assert records.gather([tmp_path])[0]["seconds"] == rec["seconds"]


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_two_runs_with_different_parameters_leave_two_records(s, tmp_path):
    _need(s)
    a = _run(s, out=tmp_path, stop_after=s.chunk)
    b = _run(s, out=tmp_path, stop_after=s.chunk, overrides=s.change)
    c = _run(s, out=tmp_path, stop_after=s.chunk)                  # the same parameters again: a third folder
    assert len({a.run_dir, b.run_dir, c.run_dir}) == 3 and len(list(tmp_path.iterdir())) == 3
    recs = [records.read_record(r.run_dir) for r in (a, b, c)]
    (key, value), = s.change.items()
    assert recs[1]["config"][key] == value != recs[0]["config"][key] == recs[2]["config"][key]
    rows = sweeps.gather(tmp_path)
    assert sorted(r["run"] for r in rows) == sorted(str(r.run_dir) for r in (a, b, c))
    table = sweeps.gather_table(rows)
    assert table.count("\n") == 4 and s.config in table


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_diverged_run_records_it_and_reports_no_number(s, tmp_path):
    _need(s)
    if not s.diverge:
        pytest.skip("no diverging overrides for this recipe")
    with pytest.raises(TrainingDiverged) as e:
        _run(s, resume=tmp_path, overrides=s.diverge)
    rec = records.read_record(tmp_path)
    assert rec["stopped"] == e.value.status and rec["stopped"].startswith("diverged at step")
    assert rec["headline"] and all(v is None for v in rec["headline"].values())


@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_killed_run_leaves_no_half_written_record(s, tmp_path):
    """kill -9 a CLI run while it writes records chunk after chunk: record.json is absent or complete (and the
    folder resumes to completion)."""
    _need(s)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    steps = 200 * s.chunk
    proc = subprocess.Popen([sys.executable, "-m", s.module, "run", s.config, *s.cli, "--steps", str(steps),
                             "--resume", str(tmp_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240

        def steps_done():   # every read must parse: the record is only ever replaced whole
            if not (tmp_path / "record.json").exists():
                return 0
            return records.read_record(tmp_path)["steps_done"] or 0

        while steps_done() == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)   # (on a loaded machine the first chunk can take seconds)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.3)                                 # a few more chunks: somewhere inside a write, or between
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    rec = records.read_record(tmp_path)                 # parses: complete
    assert tuple(rec) == records.RUN_RECORD_KEYS and rec["stopped"] == "running"
    assert 0 < rec["steps_done"] < steps
    assert records.read_curves(tmp_path)[-1]["step"] <= rec["steps_done"] + s.chunk


# ------------------------------------------------------------------------------------------------ seeding
@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_a_run_is_seeded_once_and_is_deterministic(s, monkeypatch):
    """The runner loads the data, seeds every RNG once (torch.manual_seed, which set_seed calls, counted: any
    seeding anywhere counts) and builds (Recipe.load -> set_seed -> Recipe.build): two runs with one seed give
    identical histories and bit-identical weights; another seed other weights."""
    _need(s)
    seeds = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda seed: (seeds.append(int(seed)), real(seed))[1])
    runs = [_run(s, seed=seed, progress=False) for seed in (3, 3, 4)]
    assert seeds == [3, 3, 4]                          # one per run (before: the build seeded again after loading)
    a, b, c = (r.model.state_dict() for r in runs)
    if s.module == "dnlib.experiments.sr":
        # SR on a CPU is not bit-reproducible within one process (the first run's step-2 loss can differ in the
        # 8th digit; test_resumed_run_equals_the_uninterrupted_one[sr] fails the same way at f61dbe9, before
        # this test): the same numbers up to float rounding
        assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-6) for k in a)
    else:
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert _strip(runs[0].history) == _strip(runs[1].history)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_set_seed_is_called_in_one_place():
    """A source scan of dnlib: set_seed is called only by runner_mod.build_setup (load -> seed -> build), which
    the runner, the checks/benchmarks (_trainer) and dnlib.experiments.stacked (once per copy) call; no recipe seeds."""
    import ast
    calls = []
    for path in sorted((REPO / "dnlib").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) \
                            == "set_seed":
                        calls.append((path.relative_to(REPO).as_posix(), fn.name))
    calls = sorted(set(calls))
    assert calls == [("dnlib/experiments/runner.py", "build_setup")], calls


# ------------------------------------------------------------------------------------------------ sweep
@pytest.mark.slow
@pytest.mark.parametrize("s", RECIPES)
def test_sweep_resumes_unfinished_runs_and_skips_finished_ones(s, tmp_path, one_thread):
    """(One thread in every run, the in-process one too: a local sweep gives each run ``cores // jobs`` threads, and
    the two sweeps below differ in ``jobs``; on 2 cores outside ``make`` the resumed run's losses then differed from
    the uninterrupted one's in the last digits.)"""
    _need(s)
    recipe = s.recipe
    cli = [*s.cli, "--steps", str(s.steps)]
    rows = sweeps.sweep(recipe, [s.config], [0, 1], out=tmp_path, jobs=2, run_args=cli, verbose=False,
                        cpus_per_run=1)
    assert [r["stopped"] for r in rows] == ["completed", "completed"]
    done, other = (Path(r["run"]) for r in rows)
    uninterrupted = json.loads((other / "history.json").read_text())
    # make the second run unfinished: its record back to "running" at the first chunk, checkpoint of that chunk
    part = runner_mod.run(recipe, s.config, seed=1, steps=s.steps, resume=tmp_path / "scratch", stop_after=s.chunk,
                          device="cpu", overrides=_OVERRIDES.get(s.module, {}), options=s.options)
    for name in ("checkpoint.pt", "history.json", "curves.csv", "run.json"):
        (other / name).write_bytes((part.run_dir / name).read_bytes())
    records.write_record(other, {**records.read_record(part.run_dir), "stopped": "running"})
    shutil.rmtree(part.run_dir)
    mtime = (done / "record.json").stat().st_mtime_ns
    again = sweeps.sweep(recipe, [s.config], [0, 1], out=tmp_path, jobs=1, run_args=cli, verbose=False,
                         cpus_per_run=1)
    assert [r["stopped"] for r in again] == ["completed", "completed"]
    assert (done / "record.json").stat().st_mtime_ns == mtime                     # skipped
    assert json.loads((tmp_path / "sweep.json").read_text())["skipped"] == [done.name]
    assert _strip(json.loads((other / "history.json").read_text())) == _strip(uninterrupted)  # resumed
    first = records.read_curves(other)
    assert [r["step"] for r in first] == list(range(s.chunk, s.steps + 1, s.chunk))


# ------------------------------------------------------------------------------------------------ CLI
VERBS = ["run", "sweep", "gather", "report", "list", "bench"]


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("s", RECIPES)
def test_every_verb_answers_help(s, verb, capsys):
    with pytest.raises(SystemExit) as e:
        s.main([verb, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


BAD = {"run": ["run", "X", "--time-limit", "-1"],
       "sweep": ["sweep", "X", "--out", "{T}/s", "--jobs", "0"], "gather": ["gather", "{T}/missing"],
       "report": ["report", "{T}/missing"], "list": ["list", "--bogus"], "bench": ["bench", "--bogus-flag"]}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("s", RECIPES)
def test_every_verb_rejects_a_bad_argument_with_one_line_and_exit_2(s, verb, tmp_path, capsys, monkeypatch):
    def tripwire(*a, **k):
        raise AssertionError("work started")
    monkeypatch.setattr(runner_mod.Run, "go", tripwire)
    monkeypatch.setattr(commands, "sweep", tripwire)      # the sweep verb's call
    argv = [a.replace("{T}", str(tmp_path)).replace("X", s.config) for a in BAD[verb]]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        s.main(argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "error:" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("s", RECIPES)
def test_list_names_the_configurations(s, capsys):
    assert s.main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(s.recipe.configs())


@pytest.mark.parametrize("s", RECIPES)
def test_tensorboard_events_when_installed(s, tmp_path):
    """With ``tensorboard`` installed (optional), the run folder also holds event files with every logged
    metric at every logged step, once (a resumed run appends only its new steps)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _need(s)
    _run(s, resume=tmp_path, stop_after=s.chunk)
    _run(s, resume=tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    curves = records.read_curves(tmp_path)
    for key in [k for k in curves[0] if k != "step"]:
        assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars(key)] == [
            (r["step"], pytest.approx(r[key], rel=1e-6)) for r in curves if key in r]


@pytest.mark.parametrize("call, match", [
    (lambda R, d: runner_mod.prepare(R, "ln-star-lstm", out=d, resume=d),
     r"^out, resume: give one \(out: a base folder for a new run; resume: the run's folder\)$"),
    (lambda R, d: runner_mod.prepare(R, resume=d / "cifar"), r"^resume: .*cifar holds a 'cifar' run, not 'ptb'$"),
    (lambda R, d: runner_mod.prepare(R, resume=d / "foreign"),
     r"run.json: not a ptb run file \(its fields make no configuration: KeyError: 'name'\)$"),
    (lambda R, d: runner_mod.prepare(R),
     r"^config: name a configuration \(or resume a run folder that holds run.json\)$"),
    (lambda R, d: runner_mod.prepare(R, resume=d / "empty"), r"^config: name a configuration"),
    (lambda R, d: runner_mod.prepare(R, "ln-star-lstm", seed=0, seeds=[0, 1]),
     r"^seed, seeds: give one \(seeds: one per copy of a stacked run\)$"),
])
def test_run_refuses_conflicting_arguments_before_building(call, match, tmp_path):
    """Run.__init__'s refusals that come before any data is loaded (pinned for issue 24's split)."""
    recipe = importlib.import_module("dnlib.experiments.ptb").RECIPE
    for name, stored in (("cifar", {"experiment": "cifar", "config": "bn"}),
                         ("foreign", {"experiment": "ptb", "config": "ln-star-lstm", "fields": {"no_such": 1}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=match):
        call(recipe, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "foreign"]      # nothing written
