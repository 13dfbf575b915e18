"""Stopping a run or a sweep (Ctrl-C, SIGTERM) leaves records that say what happened.

Before (a read-only review's reproducers, 2026-12-08):
- a run sent SIGTERM died with its record saying ``running`` (ended None), which gather and report then showed;
- Ctrl-C or SIGTERM to a sweep killed its runs at once (SIGKILL), so their records said ``running`` too;
- a run interrupted mid-chunk recorded the steps it had reached, not those its checkpoint holds: ``interrupted at
  step 35`` with the checkpoint at step 30, and after a resume its segments overlapped ([0, 35], [30, 60]).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dnlib.experiments import aggregate, records, runner
from dnlib.training import trainer as trainer_mod

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
pytestmark = pytest.mark.skipif(not (MIRROR / "ptb" / "ptb.train.txt").is_file(), reason="PTB is not in DNLIB_DATA")
OPTIONS = {"max_tokens": 3000, "vocab": 200, "eval_every": 10}
TINY = dict(device="cpu", progress=False, overrides={"hidden_size": 16, "batch_size": 4}, options=OPTIONS)
FLAGS = ["--max-tokens", "3000", "--vocab", "200", "--hidden-size", "16", "--batch-size", "4", "--device", "cpu",
         "--no-progress"]


def _recipe():
    from dnlib.experiments.ptb import RECIPE
    return RECIPE


def _stop_at(monkeypatch, step: int, how) -> None:
    """Make training call ``how()`` as optimizer step ``step`` starts (Ctrl-C: raise; SIGTERM: send it)."""
    orig = trainer_mod.Trainer.train_step

    def train_step(self, batch):
        if self.step + 1 == step:
            how()
        return orig(self, batch)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", train_step)


def _ctrl_c():
    raise KeyboardInterrupt


def _sigterm():
    """SIGTERM to this process, only where the run's handler is in place (else it would end the test process)."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
        raise AssertionError("the run installed no SIGTERM handler")
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def default_sigterm():
    """SIGTERM at its default action, as in a fresh ``dnlib`` process, whatever an earlier test in this worker
    installed (``ray.init`` installs a handler of its own, which a run keeps); restored after."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGTERM is handled in the main thread only")
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, before)


def test_an_interrupt_mid_chunk_records_the_step_its_checkpoint_holds_and_segments_do_not_overlap(tmp_path,
                                                                                                  monkeypatch):
    d = tmp_path / "r"
    _stop_at(monkeypatch, 15, _ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        runner.run(_recipe(), "ln-star-lstm", resume=d, steps=30, **TINY)
    rec = records.read_record(d)
    assert rec["stopped"] == "interrupted at step 14 (its checkpoint: step 10)" and rec["steps_done"] == 10
    assert [s["steps"] for s in rec["segments"]] == [[0, 10]] and rec["ended"] is not None
    assert aggregate.stopped_reason(rec["stopped"]) == "interrupted"
    monkeypatch.undo()
    done = runner.run(_recipe(), resume=d, progress=False)
    assert done.stopped == "completed"
    assert [s["steps"] for s in done.record["segments"]] == [[0, 10], [10, 30]]
    # before any checkpoint: nothing a resume continues
    e = tmp_path / "e"
    _stop_at(monkeypatch, 5, _ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        runner.run(_recipe(), "ln-star-lstm", resume=e, steps=30, **TINY)
    rec = records.read_record(e)
    assert rec["stopped"] == "interrupted at step 4 (no checkpoint yet: a resume starts over)"
    assert rec["steps_done"] == 0 and rec["segments"] == []


def test_sigterm_ends_a_run_as_ctrl_c_does_one_line_exit_143(tmp_path, monkeypatch, capsys, default_sigterm):
    from dnlib.experiments.ptb import main
    d = tmp_path / "r"
    _stop_at(monkeypatch, 15, _sigterm)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["run", "ln-star-lstm", "--resume", str(d), "--steps", "30", "--eval-every", "10", *FLAGS])
    err = capsys.readouterr().err
    assert code == 143 and err == (f"python -m dnlib ptb run: interrupted at step 14 (its checkpoint: step 10); "
                                   f"record.json says so; --resume {d} continues it\n")
    assert signal.getsignal(signal.SIGTERM) is before          # the process's own action, restored
    rec = records.read_record(d)
    assert rec["stopped"].startswith("interrupted at step 14") and rec["ended"] is not None


def _children_of(folder: Path) -> list:
    """The processes whose command line names ``folder`` (a sweep's runs)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(folder) in cmd and "--resume" in cmd:
                out.append(int(p.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_a_sweep_stops_its_runs_which_record_where_they_stopped(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dnlib", "ptb", "sweep", "ln-star-lstm", "--seeds", "0", "1", "--jobs", "2",
           "--out", str(out), "--steps", "100000", "--eval-every", "20", *FLAGS]
    sweep = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folders = [out / f"ln-star-lstm-s{s}" for s in (0, 1)]
    t0 = time.time()
    while time.time() - t0 < 120:       # both runs training (a record past its first chunk)
        recs = [f / records.RECORD_FILE for f in folders]
        if all(r.is_file() and json.loads(r.read_text()).get("steps_done", 0) >= 20 for r in recs):
            break
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(0.2)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("dnlib ptb sweep: interrupted: the runs in flight were stopped "
                                            "and their records say where; a rerun resumes them and keeps the "
                                            "finished ones"), err
    for f in folders:
        rec = records.read_record(f)
        assert rec["stopped"].startswith("interrupted at step ") and rec["ended"] is not None, rec["stopped"]
    assert _children_of(out) == []
    info = json.loads((out / "sweep.json").read_text())       # before: nothing written after an interrupt
    assert info["interrupted"] == "SIGTERM" and info["failed"] == [], info
    assert (out / "runs.md").read_text().count("| interrupted at step ") == 2
