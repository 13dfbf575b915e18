"""Long work shows progress (issue 23 item 2): every training call a notebook makes draws a bar by default, in the
form that suits where it runs (dnlib.training.progress.progress_bar), and the runner's one bar spans the whole run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dnlib.data.loader import TensorBatches
from dnlib.experiments import cifar, ptb, sr
from dnlib.training import progress
from dnlib.training.trainer import TrainConfig, Trainer

DATA = Path(os.environ.get("DNLIB_DATA", "data"))
HAS_CIFAR = (DATA / "cifar10-jpeg" / "train").is_dir() or (DATA / "cifar-10-batches-py").is_dir()


def _cifar():
    return cifar.run_many(["bn"], subset=(200, 100), steps=4, eval_every=2, batch_size=20, device="cpu")


def _ptb():
    return ptb.run_many(["ln-star-lstm"], epochs=1, steps=4, eval_every=2, max_tokens=3000, vocab=200, hidden_size=16,
                        batch_size=4, final_test_batch_size=None, device="cpu")


def _sr():
    return sr.run_many(["none"], "smoke", steps=4, eval_every=2, eval_sets=(), device="cpu")


CALLS = [pytest.param(_cifar, "bn", marks=pytest.mark.skipif(not HAS_CIFAR, reason="no CIFAR-10"), id="cifar"),
         pytest.param(_ptb, "ln-star-lstm", marks=pytest.mark.skipif(not (DATA / "ptb").is_dir(), reason="no PTB"),
                      id="ptb"),
         pytest.param(_sr, "smoke-none", marks=pytest.mark.skipif(not (DATA / "sr" / "T91").is_dir(),
                                                                   reason="no SR data"), id="sr")]


@pytest.mark.slow
@pytest.mark.parametrize("call, name", CALLS)
def test_notebook_training_calls_show_one_bar_per_run_by_default(call, name, capfd, monkeypatch):
    """03's run_many, 04's run_many and 05's run_many: a bar over the run's steps on stderr (here, not a terminal:
    lines, the first and the last), one bar for the run (not one per evaluation chunk)."""
    monkeypatch.delenv("DNLIB_PROGRESS", raising=False)
    (res,) = call()
    assert res.steps == 4
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{name} s0:")]
    assert lines and "4/4" in lines[-1], err[-2000:]
    assert "\r" not in err                                  # a log gets lines, not redraws
    assert sum("0/4" in ln for ln in lines) == 1, lines    # one bar: chunks of 2 steps do not start new ones


def _fit(steps=20, **cfg):
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    return Trainer(nn.Linear(4, 2), loss, TensorBatches(x, y, batch_size=8),
                   TrainConfig(steps=steps, lr=0.1, device="cpu", eval_every=0, checkpoint_every=0, log_every=5,
                               **cfg)).fit()


def test_progress_false_draws_nothing(capfd, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    _fit(progress=False)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("mode, redraws", [("lines", False), ("text", True)])
def test_modes_outside_a_terminal(mode, redraws, capfd, monkeypatch):
    """``lines``: one line per redraw (a log); ``text`` (the notebook runner's): carriage-return redraws that the
    runner merges into the last one. Either way few redraws (the interval), and the last says 20/20."""
    monkeypatch.setenv(progress.PROGRESS_ENV, mode)
    _fit()
    err = capfd.readouterr().err
    assert ("\r" in err) == redraws and "20/20" in err.replace("\r", "\n").strip().splitlines()[-1]
    assert len(err.replace("\r", "\n").strip().splitlines()) <= 3, err   # start, (a redraw,) end: not one per step


def test_auto_mode_follows_where_it_runs(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115  closed with the process
    progress_mode = progress.progress_mode
    assert progress_mode() == "lines"                       # a log or a pipe
    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    assert progress_mode() == "widget"                      # JupyterLab (ipywidgets is a dependency)
    assert progress_mode("text") == "text"


def test_a_bad_mode_is_named(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "loud")
    with pytest.raises(ValueError, match="DNLIB_PROGRESS: got 'loud'; allowed values are"):
        progress.progress_bar(3)
