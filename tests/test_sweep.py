"""Sweeps on both engines (dnlib/experiments/engines.py, issue 14 item 1): the same tiny SR sweep (2 configurations x 2
seeds, 6 steps, CPU) on the local engine and on a local Ray instance started and stopped here gives identical records; a
killed sweep resumed finishes the rest only; a failing run is reported and the others finish; bad engine arguments are
refused before anything starts.

Records are compared on what a run computes (config, seed, steps, stop reason, headline numbers, curves), not on
what depends on the clock or the place (times, host, the run folder named on the command line).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from dnlib.experiments import engines, records, runner, sr
from dnlib.experiments import sweep as sweeps

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
needs_sr = pytest.mark.skipif(not ((MIRROR / "sr" / "T91").is_dir() and (MIRROR / "sr" / "Set5").is_dir()),
                                reason=f"the SR data is not in DNLIB_DATA={MIRROR}")
RECIPE = sr.RECIPE
CONFIGS = ["smoke-bn", "smoke-dn*"]
STEPS, CHUNK = 6, 2
ARGS = ["--sets", "Set5", "--curve-sets", "Set5", "--batch-size", "8", "--eval-every", str(CHUNK), "--device",
        "cpu", "--steps", str(STEPS)]
FILES = {"record.json", "curves.csv", "checkpoint.pt", "history.json", "run.json", "log.txt"}


def _files(folder: Path) -> set:
    """The names in a run folder (TensorBoard's event files, named by host and time, left out when present)."""
    return {p.name for p in folder.iterdir() if not p.name.startswith("events.out.tfevents")}


def _timeless(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time" and "second" not in k and "per_s" not in k}


def _essence(folder: Path) -> dict:
    """What a run computed: its record without times, host, device threads and argv; its curves without time."""
    rec = records.read_record(folder)
    return {"experiment": rec["experiment"], "name": rec["name"], "config": rec["config"], "seed": rec["seed"],
            "steps": (rec["steps_planned"], rec["steps_done"]), "stopped": rec["stopped"],
            "headline": _timeless(rec["headline"]), "paper": rec["paper"],
            "curves": [_timeless(r) for r in records.read_curves(folder)]}


def _sweep(out, engine, configs=CONFIGS, seeds=(0, 1), **kw):
    kw = {"jobs": 2, "cpus_per_run": 1, **kw}     # one thread per run on both engines: the same numbers
    return sweeps.sweep(RECIPE, configs, list(seeds), out=out, engine=engine, run_args=ARGS, verbose=False, **kw)


def test_a_ray_address_where_nothing_answers_is_one_line_and_exit_2(tmp_path, capsys):
    """(Before this module's Ray instance starts: a joined instance is used as it is.) ray.init would retry for
    minutes; the sweep answers at once and starts nothing."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this process")
    import socket
    with socket.socket() as s:          # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as e:
        sr.main(["sweep", "smoke-bn", "--out", str(tmp_path / "out"), "--engine", "ray", "--address",
                 f"127.0.0.1:{port}", *ARGS])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"--address: no Ray cluster answers at 127.0.0.1:{port}" in err[0], err
    assert not (tmp_path / "out").exists() and not ray.is_initialized()


def test_ray_engine_keeps_the_sigterm_action_ray_init_would_replace():
    """(Before this module's Ray instance starts.) ``ray.init`` replaced the driver's SIGTERM action with its own
    ``sys.exit(15)``, so a sweep command on the Ray engine sent SIGTERM exited 15 with a stack dump and wrote no
    ``sweep.json``; the Ray engine now keeps the action in place (the sweep command's, which stops it as Ctrl-C
    does: one line, exit 143)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this process")
    from dnlib.experiments.ray_engine import RayEngine

    def mine(signum, frame):
        raise AssertionError("not called")
    before = signal.signal(signal.SIGTERM, mine)
    try:
        engine = RayEngine(RECIPE.module, jobs=1, cpus_per_run=1)
        try:
            assert signal.getsignal(signal.SIGTERM) is mine
        finally:
            engine.close()
        assert not ray.is_initialized()
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance for this module (2 CPUs), stopped at its end."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, _sweep(out, "local")


def _steps_done(record_file) -> int:
    """A record's steps done, 0 when it is gone (its task's folder removed) or not readable."""
    try:
        return json.loads(Path(record_file).read_text()).get("steps_done", 0)
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
@needs_sr
def test_an_interrupted_ray_sweep_stops_its_runs_and_collects_their_folders(ray_instance, tmp_path):
    """A Ray sweep stopped (Ctrl-C, SIGTERM: :meth:`RayEngine.close`) cancelled its tasks outright, so the runs in
    flight lost everything since their folders last came back (here: all of it). The tasks now stop their runs as
    the local engine does (SIGTERM: the record says where) and return the folders."""
    import glob
    import tempfile
    import time

    from dnlib.experiments.ray_engine import RayEngine
    name = records.run_name("smoke-bn", 0)
    job = engines.Job("smoke-bn", 0, tmp_path / name, ["smoke-bn", "--seeds", "0", *ARGS[:-2], "--steps", "100000"])
    job.folder.mkdir()
    pattern = os.path.join(tempfile.gettempdir(), "dnlib-sweep-*", name, records.RECORD_FILE)
    stale = set(glob.glob(pattern))     # the folders of tasks other tests' sweeps killed (never cleaned up)
    engine = RayEngine(RECIPE.module, jobs=1, cpus_per_run=1)
    engine.start(job)
    t0 = time.time()
    while time.time() - t0 < 120:       # the run trains in the task's own folder (past its first chunk)
        fresh = set(glob.glob(pattern)) - stale
        if any(_steps_done(f) >= 2 * CHUNK for f in fresh):
            break
        assert engine.poll() == []
        time.sleep(0.2)
    engine.close()
    rec = records.read_record(job.folder)
    assert rec["stopped"].startswith("interrupted at step ") and rec["steps_done"] >= 2 * CHUNK, rec["stopped"]
    assert (job.folder / "checkpoint.pt").is_file() and not engine.refs


@pytest.mark.slow
@needs_sr
def test_local_and_ray_engines_give_identical_records(local_sweep, ray_instance, tmp_path):
    out_local, rows_local = local_sweep
    rows_ray = _sweep(tmp_path, "ray")
    assert rows_local.failed == [] and rows_ray.failed == []
    names = [f"{records.run_name(c, s)}" for c in CONFIGS for s in (0, 1)]
    for rows, out in ((rows_local, out_local), (rows_ray, tmp_path)):
        assert sorted(Path(r["run"]).name for r in rows) == sorted(names)
        assert [r["stopped"] for r in rows] == ["completed"] * 4
        for n in names:                                             # the same folder layout
            assert _files(out / n) == FILES, n
    for n in names:
        assert _essence(tmp_path / n) == _essence(out_local / n), n
    assert _essence(out_local / names[0]) != _essence(out_local / names[1])     # the seeds differ
    # the Ray tasks ran in folders of their own (no shared filesystem) and sent the files back
    for n in names:
        argv = records.read_record(tmp_path / n)["argv"]
        assert str(tmp_path) not in " ".join(argv) and argv[argv.index("--resume") + 1].endswith(n)
        local = records.read_record(out_local / n)["argv"]
        assert local[local.index("--resume") + 1] == str(out_local / n)
    info = json.loads((tmp_path / "sweep.json").read_text())
    assert info["engine"] == "ray" and sorted(r["run"] for r in info["ran"]) == sorted(names)
    assert ray_instance.is_initialized()                            # the sweep left the test's instance running


def _partial(folder: Path, seed: int) -> None:
    """A run of smoke-bn killed after its first chunk: checkpoint at step CHUNK, record ``stopped: running``; the
    checkpoint's first history row is marked (time -1) so that a resumed run shows it and a restarted one not.
    One thread, as the sweep's runs (``cpus_per_run=1``): the numbers then match theirs exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner.run(RECIPE, "smoke-bn", seed=seed, steps=STEPS, resume=folder, stop_after=CHUNK, device="cpu",
                       overrides={"batch_size": 8},
                       options={"sets": ("Set5",), "curve_sets": ("Set5",), "eval_every": CHUNK})
    finally:
        torch.set_num_threads(threads)
    records.write_record(folder, {**records.read_record(folder), "stopped": "running"})
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["history"][0]["time"] = -1.0
    torch.save(state, folder / "checkpoint.pt")


@pytest.mark.slow
@needs_sr
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_killed_sweep_resumed_finishes_the_rest_only_and_a_failing_run_stops_no_other(engine, local_sweep,
                                                                                         request, tmp_path, capsys):
    """seed 0 finished (kept untouched), seed 1 killed after its first chunk (resumed from its checkpoint), seed
    2 not started (runs), seed 3 holds a broken checkpoint (its run raises CheckpointError and exits 2: reported
    with its config, seed and log tail; the others finish; the exit status counts it)."""
    if engine == "ray":
        request.getfixturevalue("ray_instance")
    out_local, _ = local_sweep
    done, part, rest, bad = (tmp_path / records.run_name("smoke-bn", s) for s in (0, 1, 2, 3))
    shutil.copytree(out_local / done.name, done)
    _partial(part, 1)
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.iterdir()}
    capsys.readouterr()
    code = sr.main(["sweep", "smoke-bn", "--seeds", "0", "1", "2", "3", "--out", str(tmp_path), "--engine", engine,
                    "--jobs", "2", "--cpus-per-run", "1", *ARGS])
    err = capsys.readouterr().err
    assert code == 1                                                   # one run failed
    assert "FAILED smoke-bn seed 3 (exit 2)" in err and "checkpoint" in err and "1 of 3 runs failed" in err
    assert [records.read_record(d)["stopped"] for d in (done, part, rest)] == ["completed"] * 3
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.iterdir()} == before   # untouched
    info = json.loads((tmp_path / "sweep.json").read_text())
    assert info["skipped"] == [done.name] and sorted(r["run"] for r in info["ran"]) == [part.name, rest.name,
                                                                                        bad.name]
    assert [(f["config"], f["seed"], f["reason"]) for f in info["failed"]] == [("smoke-bn", 3, "exit 2")]
    assert "checkpoint" in info["failed"][0]["log_tail"]
    assert records.read_curves(part)[0]["time"] == -1.0      # resumed from its checkpoint, not restarted
    assert _essence(part) == _essence(out_local / part.name)  # and it ends as the uninterrupted run did
    assert [r["step"] for r in records.read_curves(rest)] == list(range(CHUNK, STEPS + 1, CHUNK))
    assert _files(part) == _files(rest) == FILES


@pytest.mark.parametrize("kw,fragment", [
    ({"engine": "bogus"}, "engine"), ({"engine": "local", "address": "auto"}, "address"),
    ({"engine": "local", "cpus_per_run": 0}, "cpus_per_run"), ({"engine": "local", "gpus_per_run": -1}, "gpus_per_run"),
    ({"engine": "ray", "gpus_per_run": 1.5}, "gpus_per_run"), ({"engine": "local", "jobs": 0}, "jobs"),
    ({"engine": "local", "configs": ["nosuch"]}, "nosuch"), ({"engine": "local", "seeds": (-1,)}, "seeds"),
    pytest.param({"engine": "local", "gpus_per_run": 0.25}, "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="probes a machine without CUDA")),
])
def test_bad_arguments_are_refused_before_anything_starts(kw, fragment, tmp_path):
    with pytest.raises(ValueError, match=fragment):
        _sweep(tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_engine_refuses_what_the_cluster_lacks(ray_instance, tmp_path, capsys):
    """The test's Ray instance has 2 CPUs and no GPU: asking for more is one line and exit 2, nothing written,
    and the instance (not the sweep's) stays up."""
    for flag, value in (("--gpus-per-run", "0.5"), ("--cpus-per-run", "4")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            sr.main(["sweep", "smoke-bn", "--out", str(tmp_path / "out"), "--engine", "ray", flag, value, *ARGS])
        assert e.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and f"error: {flag}: " in err[0] and "Ray cluster has" in err[0], err
    assert not (tmp_path / "out").exists() and ray_instance.is_initialized()


@pytest.mark.parametrize("share,per_gpu", [(0.5, 2), (0.25, 4), (1.0, 1)])
def test_local_engine_packs_runs_on_gpus_by_their_share(share, per_gpu, tmp_path, monkeypatch):
    """``gpus_per_run`` on two GPU ids: each run's process sees one of them (the driver's own ids: 5 and 7, not
    0 and 1) and never more than ``1/share`` runs share one at any time, as each process saw it. The processes are
    a stand-in (tests/sweep_probe.py) that records its environment: the packing is the engine's alone, and needs
    no GPU."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    engine = engines.LocalEngine("sweep_probe", jobs=16, gpus_per_run=share, cpus_per_run=2, devices=["5", "7"])
    jobs = [engines.Job("probe", s, tmp_path / f"probe-s{s}", ["probe"]) for s in range(8)]
    outcomes = engines.execute(engine, jobs, verbose=False, poll_every=0.05)
    assert [o.failure for o in outcomes] == [None] * 8
    seen = [json.loads((j.folder / "probe.json").read_text()) for j in jobs]
    assert {s["cuda"] for s in seen} <= {"5", "7"} and {s["threads"] for s in seen} == {"2"}
    for dev in ("5", "7"):
        spans = [(s["start"], s["end"]) for s in seen if s["cuda"] == dev]
        assert max((sum(a <= t < b for a, b in spans) for t, _ in spans), default=0) <= per_gpu


def test_gpu_share_takes_fractions_and_whole_numbers():
    assert [engines.gpu_share(v) for v in ("0", "0.25", "1", "2")] == [0.0, 0.25, 1.0, 2.0]
    for v in ("-1", "1.5", "nan", "x"):
        with pytest.raises(Exception, match="GPU|number|fraction"):
            engines.gpu_share(v)


def test_sweep_help_lists_the_engine_flags(capsys):
    with pytest.raises(SystemExit) as e:
        sr.main(["sweep", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--engine", "--address", "--cpus-per-run", "--gpus-per-run", "--jobs"):
        assert flag in text, flag


def test_folders_travel_as_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "record.json").write_text("{}")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "x.bin").write_bytes(b"\0\1")
    files = engines.read_folder(tmp_path / "a")
    assert files == {"record.json": b"{}", "sub/x.bin": b"\0\1"}
    engines.write_folder(tmp_path / "b", files)
    assert engines.read_folder(tmp_path / "b") == files
    with pytest.raises(ValueError, match="inside"):
        engines.write_folder(tmp_path / "c", {"../evil": b""})


# ------------------------------------------------------------- every run checked before the first one starts
def _no_run(monkeypatch):
    """Tripwires on the engines: a sweep that gets past its checks fails the test at once (nothing trains)."""
    def tripwire(*a, **k):
        raise AssertionError("the sweep started its engine")
    monkeypatch.setattr(engines, "make_engine", tripwire)
    monkeypatch.setattr(engines, "execute", tripwire)


@pytest.mark.parametrize("engine", ["local", "ray"])
@pytest.mark.parametrize("configs,run_args,message", [
    (["base", "dn"], ["--impl", "fused"], "dn: impl: 'fused' needs a spec with a native kernel"),
    (["base", "bn-star", "resnet20-gdn"], ["--impl", "compile"], "resnet20-gdn: impl: got 'compile'"),
    (["base", "dn-star"], ["--impl", "band"], "dn-star: impl: 'band' needs"),
])
def test_a_sweep_checks_every_configuration_with_its_run_flags_before_any_run(engine, configs, run_args, message,
                                                                              tmp_path, monkeypatch):
    """`sweep base dn --impl fused` trained base, then failed in dn's own process (exit 1 after 18 s). Every
    (configuration, run flags) pair is now checked as `run` checks it, before the engine starts, on both
    engines."""
    if engine == "ray":
        pytest.importorskip("ray")
    from dnlib.experiments import cifar
    _no_run(monkeypatch)
    with pytest.raises(ValueError, match=message):
        sweeps.sweep(cifar.RECIPE, configs, [0, 1], out=tmp_path / "sw", engine=engine, verbose=False,
                         run_args=[*run_args, "--steps", "2", "--subset", "200,100"])
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_sweep_command_with_a_clash_in_its_second_configuration_is_one_line_exit_2(tmp_path):
    """The command line of the report, at smoke size, in a process of its own: exit 2, one line naming the
    configuration and the clash, no folder, nothing trained (it took 18 s and trained `base` first)."""
    import subprocess
    import sys
    out = tmp_path / "sw"
    r = subprocess.run([sys.executable, "-m", "dnlib.experiments.cifar", "sweep", "base", "dn", "--impl", "fused",
                        "--steps", "2", "--subset", "200,100", "--out", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(err) == 1 and "sweep: error: dn: impl: 'fused'" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("name,content,fragment", [
    ("record.json", b"[1, 2]", "not a run record (a JSON list"),
    ("record.json", b"\x00\xff garbage", "not a valid run record (not UTF-8"),
    ("record.json", b'{"experiment": "cifar", "stopped": 3}', "not a run record ('stopped' is int, not str"),
    ("run.json", b'{"experim', "not a run file"),
    ("run.json", b'{"experiment": "cifar", "config": "base", "seed": "zero"}', "not a run file ('seed'"),
])
def test_a_sweep_rerun_refuses_a_broken_run_folder_naming_the_file(name, content, fragment, tmp_path, capsys,
                                                                   monkeypatch):
    """A rerun resumes the folders it finds: a broken or foreign run.json / record.json there gave a traceback
    (a list) or a run that failed in its own process; now one line naming the file, exit 2, nothing started."""
    from dnlib.experiments import cifar
    _no_run(monkeypatch)
    folder = tmp_path / "cifar10-base-s0"
    folder.mkdir()
    (folder / name).write_bytes(content)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cifar.main(["sweep", "base", "--out", str(tmp_path), "--steps", "2", "--subset", "200,100"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert f"sweep: error: {folder / name}: {fragment}" in err[0], err
    assert (folder / name).read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_local_runs_share_the_cores_unless_told(monkeypatch):
    """``jobs`` CPU processes get ``cores // jobs`` threads each by default (each taking every core made them spin
    against each other); ``cpus_per_run``, an ``OMP_NUM_THREADS`` already set, and GPU runs are left to the user."""
    real = engines._cores()
    assert real >= 1 and (not hasattr(os, "sched_getaffinity") or real == len(os.sched_getaffinity(0)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(engines, "_cores", lambda: 8)
    env = lambda **kw: engines.LocalEngine(RECIPE.module, **kw).env      # noqa: E731
    assert env(jobs=2)["OMP_NUM_THREADS"] == env(jobs=2)["MKL_NUM_THREADS"] == "4"
    assert env(jobs=3)["OMP_NUM_THREADS"] == "2" and env(jobs=16)["OMP_NUM_THREADS"] == "1"
    assert env(jobs=2, cpus_per_run=3)["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in env(jobs=1)                              # one run: torch's own default
    assert "OMP_NUM_THREADS" not in env(jobs=2, gpus_per_run=1, devices=[0, 1])
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert env(jobs=2)["OMP_NUM_THREADS"] == "5"


# --------------------------------------------- duplicates, and a rerun with other settings than its finished runs
@pytest.mark.parametrize("configs,seeds,message", [
    (["bn-star", "bn-star"], [0], "configs: bn-star twice"),
    (["bn-star"], [0, 1, 0], "seeds: 0 twice"),
])
def test_a_sweep_refuses_a_duplicate_before_any_run(configs, seeds, message, tmp_path, monkeypatch):
    """`--seeds 0 0 --jobs 2` ran two processes in one folder at once, then died with a KeyError (exit 1)."""
    from dnlib.experiments import cifar
    _no_run(monkeypatch)
    with pytest.raises(ValueError, match=message):
        sweeps.sweep(cifar.RECIPE, configs, seeds, out=tmp_path / "sw", verbose=False, run_args=["--steps", "2"])
    assert not (tmp_path / "sw").exists()


def test_sr_norm_names_the_folders_and_a_collision_is_refused(tmp_path, monkeypatch):
    """`sr sweep smoke-bn smoke-none --norm dn*` trained smoke-dn* twice, in folders smoke-bn-s0 and smoke-none-s0."""
    _no_run(monkeypatch)
    with pytest.raises(ValueError, match=r"smoke-bn, smoke-none: both run as smoke-dn\*"):
        sweeps.sweep(RECIPE, ["smoke-bn", "smoke-none"], [0], out=tmp_path / "sw", verbose=False,
                     run_args=["--norm", "dn*"], options={"norm": "dn*"})
    seen = []
    monkeypatch.setattr(engines, "make_engine", lambda *a, **k: None)
    monkeypatch.setattr(engines, "execute", lambda runner_, todo, **k: seen.extend(todo) or [])
    sweeps.sweep(RECIPE, ["smoke-bn"], [0], out=tmp_path / "sw", verbose=False, run_args=["--norm", "dn*"],
                 options={"norm": "dn*"})
    assert [j.folder.name for j in seen] == [records.run_name("smoke-dn*", 0)] == ["smoke-dn-s0"]


def test_a_rerun_with_other_settings_than_a_finished_run_is_refused_naming_them(tmp_path, monkeypatch):
    """A rerun with `--steps 3 --lr 0.05 --subset 300,100` reported the old 2-step run and exited 0, while
    `run --resume` of that folder refused the mismatch. Now: refused before any work, naming the folder, each
    setting and what to do; the same settings keep the finished run."""
    from dnlib.experiments import cifar
    folder = tmp_path / "sw" / "cifar10-bn-star-s0"
    runner.run(cifar.RECIPE, "bn-star", seed=0, steps=2, resume=folder, device="cpu",
               options={"subset": (200, 100)}, progress=False)
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    _no_run(monkeypatch)
    for run_args, shown in [(["--steps", "3", "--lr", "0.05", "--subset", "300,100"], ["steps", "lr", "subset"]),
                            (["--steps", "2", "--subset", "300,100"], ["subset"]),
                            (["--steps", "2", "--subset", "200,100", "--lr", "0.05"], ["lr"])]:
        with pytest.raises(ValueError) as e:
            sweeps.sweep(cifar.RECIPE, ["bn-star"], [0], out=tmp_path / "sw", verbose=False,
                         run_args=[*run_args, "--device", "cpu"])
        msg = str(e.value)
        assert str(folder) in msg and "another --out" in msg and "delete" in msg, msg
        assert all(f"{k}=" in msg for k in shown) and all(f"{k}=" not in msg for k in {"steps", "lr", "subset"} -
                                                              set(shown)), msg
    seen = []
    monkeypatch.setattr(engines, "make_engine", lambda *a, **k: None)
    monkeypatch.setattr(engines, "execute", lambda runner_, todo, **k: seen.extend(todo) or [])
    sweeps.sweep(cifar.RECIPE, ["bn-star"], [0], out=tmp_path / "sw", verbose=False,
                 run_args=["--steps", "2", "--subset", "200,100", "--device", "cpu"])
    assert seen == [] and {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before
