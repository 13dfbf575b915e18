"""One process trains in a run folder at a time (dnlib/experiments/claim.py).

Before: two runs resuming one folder both trained it to the end, rewriting its checkpoint, curves and record in
turn (reproduced with two `dnlib cifar run --resume DIR` started together: both "completed", two TensorBoard event
files, twice the work)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dnlib.experiments import claim, runner
from dnlib.training.checkpoints import CheckpointError

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
pytestmark = pytest.mark.skipif(not (MIRROR / "ptb" / "ptb.train.txt").is_file(), reason="PTB is not in DNLIB_DATA")
TINY = dict(steps=4, device="cpu", progress=False, overrides={"hidden_size": 16, "batch_size": 4},
            options={"max_tokens": 3000, "vocab": 200, "eval_every": 2})
FLAGS = ["--max-tokens", "3000", "--vocab", "200", "--eval-every", "2", "--hidden-size", "16", "--batch-size", "4",
         "--device", "cpu", "--steps", "4", "--no-progress"]


def _recipe():
    from dnlib.experiments.ptb import RECIPE
    return RECIPE


def _files(d: Path) -> dict:
    return {p.relative_to(d): p.stat().st_mtime_ns for p in d.rglob("*")}


def test_a_folder_a_run_holds_is_refused_to_a_second_run_before_it_builds(tmp_path, monkeypatch):
    d = tmp_path / "r"
    first = runner.prepare(_recipe(), "ln-star-lstm", resume=d, **TINY)
    before = _files(d)
    built = []
    monkeypatch.setattr(runner, "build_setup", lambda *a, **k: built.append(a))
    with pytest.raises(claim.RunInUse, match=rf"^resume: {d} is in use: a run is training in it now"):
        runner.prepare(_recipe(), "ln-star-lstm", resume=d, **TINY)
    assert built == [] and _files(d) == before            # refused before the build; nothing written
    monkeypatch.undo()
    assert first.go().stopped == "completed"
    claim.check_free(d)                                    # go() ended: the folder is free
    again = runner.run(_recipe(), resume=d, progress=False)   # (completed: nothing to train)
    assert again.stopped == "completed" and again.record["steps_done"] == 4


def test_a_run_that_fails_to_start_frees_its_folder(tmp_path):
    """A run refused after its folder was opened (an unreadable checkpoint) holds nothing, even while its
    traceback (which references it, as a notebook's last error does) lives."""
    d = tmp_path / "r"
    runner.run(_recipe(), "ln-star-lstm", resume=d, stop_after=2, **TINY)
    (d / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        runner.prepare(_recipe(), "ln-star-lstm", resume=d, **TINY)
    assert err.value is not None
    claim.check_free(d)


def test_another_process_holding_the_folder_refuses_the_command_in_one_line_and_a_kill_9_frees_it(tmp_path,
                                                                                                  capsys):
    from dnlib.experiments.ptb import main
    d = tmp_path / "r"
    d.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dnlib.experiments import claim\n"
         "claim.hold(sys.argv[1], claim)\nprint('held', flush=True)\ntime.sleep(600)", str(d)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SystemExit) as exit_:
            main(["run", "ln-star-lstm", "--resume", str(d), *FLAGS])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"python -m dnlib ptb run: error: resume: {d} is in use: a run is training in it "
                              f"now (another process, "), err
        assert list(d.iterdir()) == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert main(["run", "ln-star-lstm", "--resume", str(d), *FLAGS]) == 0    # the OS dropped the dead one's lock
    assert '"stopped": "completed"' in capsys.readouterr().out


def test_a_filesystem_that_cannot_lock_warns_and_runs_unguarded(tmp_path, monkeypatch):
    """Some network mounts answer flock with ENOLCK: every run there would have stopped on an OSError; it now runs,
    with a warning that says the folder is not guarded. Any other error is raised."""
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(claim.fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match=rf"^{tmp_path}: this filesystem cannot lock \(No locks available\): "
                                            rf"another run resuming this folder at the same time is not refused$"):
        release = claim.hold(tmp_path, test_a_filesystem_that_cannot_lock_warns_and_runs_unguarded)
    release()

    def denied(fd, op):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    monkeypatch.setattr(claim.fcntl, "flock", denied)
    with pytest.raises(OSError, match="Bad file descriptor"):
        claim.check_free(tmp_path)


def test_a_record_left_running_by_a_dead_run_reads_ended_without_a_final_record(tmp_path):
    """Before: a run killed without a last write (SIGKILL, out of memory) stayed ``running`` in gather and the
    reports for ever. A ``running`` record whose folder no process holds (nor the stacked group's above it) now
    reads ``ended without a final record at step N``; a live run's stays ``running``."""
    from dnlib.experiments import aggregate, records

    def running(d: Path):
        d.mkdir(parents=True)
        records.write_record(d, records.make_record("cifar", {"name": "bn"}, 0, name="bn", steps_planned=40,
                                                    steps_done=20, stopped="running", headline={"final_acc": 0.5}))
    plain, group = tmp_path / "sweep" / "bn-s0", tmp_path / "stack" / "bn-s0+1"
    running(plain)
    running(group / "bn-s1")                    # a stacked copy: the group's folder is the one held
    dead = "ended without a final record at step 20"
    assert [r["stopped"] for r in records.gather([tmp_path])] == [dead, dead]
    assert aggregate.stopped_reason(dead) == "ended without a final record"
    assert records.read_record(plain)["stopped"] == "running"      # the file itself is left as it is
    owner = test_a_record_left_running_by_a_dead_run_reads_ended_without_a_final_record     # (any live object)
    release = [claim.hold(plain, owner), claim.hold(group, owner)]
    assert [r["stopped"] for r in records.gather([tmp_path])] == ["running", "running"]
    (s,) = aggregate.summarize([{"run": str(plain), "name": "bn", "stopped": "running"}], ["final_acc"])
    assert s["stopped"] == {"running": 1}
    for r in release:
        r()
    (s,) = aggregate.summarize([{"run": str(plain), "name": "bn", "stopped": "running"}], ["final_acc"])
    assert s["stopped"] == {"ended without a final record": 1}


def test_a_sweep_leaves_a_run_another_process_trains_to_it_and_does_not_count_it_failed(tmp_path, monkeypatch):
    """Before: two sweeps over one --out each reported the run the other was training as FAILED (exit 2, "in use")
    and both exited 1. A run held by another process is left to it, said, listed in sweep.json's ``in_use``, and not
    failed: when the plan sees it held, and when its process is refused because the other started it since."""
    import json

    from dnlib.experiments import sweep as sweeps
    args = ["--max-tokens", "3000", "--vocab", "200", "--hidden-size", "16", "--batch-size", "4", "--device", "cpu",
            "--steps", "4", "--eval-every", "2", "--no-progress"]
    owner = test_a_sweep_leaves_a_run_another_process_trains_to_it_and_does_not_count_it_failed
    out = tmp_path / "planned"
    (out / "ln-star-lstm-s0").mkdir(parents=True)
    release = claim.hold(out / "ln-star-lstm-s0", owner)
    rows = sweeps.sweep(_recipe(), ["ln-star-lstm"], [0, 1], out=out, verbose=False, run_args=args)
    assert rows.failed == [] and [(Path(r["run"]).name, r["stopped"]) for r in rows] == \
        [("ln-star-lstm-s1", "completed")]
    assert json.loads((out / "sweep.json").read_text())["in_use"] == ["ln-star-lstm-s0"]
    release()
    out = tmp_path / "race"                      # free when planned, held by the time its process starts
    (out / "ln-star-lstm-s0").mkdir(parents=True)
    release = claim.hold(out / "ln-star-lstm-s0", owner)
    real = claim.held
    monkeypatch.setattr(claim, "held", lambda d: False if Path(d).name == "ln-star-lstm-s0" else real(d))
    rows = sweeps.sweep(_recipe(), ["ln-star-lstm"], [0], out=out, verbose=False, run_args=args)
    assert rows.failed == [] and json.loads((out / "sweep.json").read_text())["in_use"] == ["ln-star-lstm-s0"]
    release()
