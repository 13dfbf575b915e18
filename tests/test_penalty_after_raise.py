"""A training step's L1 penalty is that step's forward's alone: the terms that the sites of a forward which RAISED
recorded before the raise stay pending while its traceback is alive (``sys.last_traceback`` in IPython, the
exception object here), and must not be added to the next step's penalty (it doubled the step's L1 term and
backpropagated through the dead forward's graph)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dnlib import make_norm
from dnlib.experiments import stacked_ptb
from dnlib.experiments.ptb import RECIPE, load_data
from dnlib.norms import sparse
from dnlib.training import graphs, stacked_sequence, trainer
from dnlib.training.graphs import GraphTrainer, SequenceGraphTrainer
from dnlib.training.trainer import TrainConfig, Trainer

ALPHA = 0.05


class _Flaky(nn.Module):
    """Linear + a sparse site, then raises when ``fail`` is set (after its site recorded its term)."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.fail = nn.Linear(6, 6), make_norm("ln", 6, alpha=ALPHA), False

    def forward(self, x):
        h = self.norm(self.fc(x))
        if self.fail:
            raise RuntimeError("forward failed midway")
        return h


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), make_norm("ln", 6, alpha=ALPHA), nn.Tanh(), _Flaky(), nn.Linear(6, 1))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)


def _loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _step_fn(model, x, y, state):   # SequenceGraphTrainer's contract: (loss, new_state)
    return nn.functional.mse_loss(model(x), y), state


def _trainer(kind, model):
    cfg = TrainConfig(steps=1, lr=0.5, momentum=0.0, device="cpu", progress=False)
    if kind == "trainer":
        return Trainer(model, _loss, iter(()), cfg)
    if kind == "graph":
        return GraphTrainer(model, _loss, iter(()), cfg, capture=False)
    return SequenceGraphTrainer(model, _step_fn, iter(()), cfg, init_state=lambda n, device: [], capture=False)


def _step(kind, tr):
    x, y = _batch()
    return tr.train_step((x, y, False) if kind == "sequence" else (x, y))


@pytest.fixture
def penalties(monkeypatch):
    """The penalty each training step added to its loss (every trainer's sparse_penalty, recorded)."""
    seen = []

    def spy(model):
        p = sparse.sparse_penalty(model)
        seen.append(float(p.detach()))
        return p

    monkeypatch.setattr(trainer, "sparse_penalty", spy)
    monkeypatch.setattr(graphs, "sparse_penalty", spy)
    monkeypatch.setattr(stacked_sequence, "sparse_penalty", spy)
    return seen


@pytest.mark.parametrize("kind", ["trainer", "graph", "sequence"])
def test_a_step_after_a_raised_forward_has_only_its_own_penalty(kind, penalties):
    fresh = _model()
    _step(kind, _trainer(kind, fresh))
    (want,) = penalties
    assert want > 0

    model = _model()
    tr = _trainer(kind, model)
    model[3].fail = True
    with pytest.raises(RuntimeError, match="forward failed midway") as failed:
        _step(kind, tr)
    assert failed.value.__traceback__ is not None   # the traceback (and the dead forward's outputs) stays alive
    model[3].fail = False
    _step(kind, tr)
    assert penalties[1:] == [pytest.approx(want, rel=1e-6)]   # not the step's and the failed forward's
    for name, p in fresh.state_dict().items():          # the step's update: the same as the fresh model's
        torch.testing.assert_close(model.state_dict()[name], p, msg=name)
    del failed


class _RaisingStep:
    """A stacked PTB loss whose ``step`` raises after the forward (every site has recorded its term) when ``fail``."""

    def __init__(self, loss_fn):
        self.loss_fn, self.fail = loss_fn, False

    def step(self, model, x, y, state):
        out = self.loss_fn.step(model, x, y, state)
        if self.fail:
            raise RuntimeError("forward failed midway")
        return out


def _stacked_trainer():
    """A stacked PTB trainer (two dn*-LSTM copies, tiny) on CPU, eager."""
    splits, v = load_data(max_tokens=200, vocab=40)
    tiny = {"hidden_size": 8, "batch_size": 4, "num_steps": 5, "epochs": 1, "clip_norm": 0.5}
    setup = stacked_ptb.prepare(RECIPE, ["dn-star-lstm"], [0, 1], steps=2, device="cpu", overrides=tiny,
                                options={"data": (splits, v), "mode": "eager"}, progress=False).setup
    tr = setup.make_trainer(evaluate=None)
    tr.loss_fn = _RaisingStep(tr.loss_fn)
    return tr


@pytest.mark.usefixtures("one_thread")
def test_a_stacked_ptb_step_after_a_raised_forward_has_only_its_own_penalty(penalties):
    fresh = _stacked_trainer()
    batch = next(fresh.batches)
    fresh.train_step(batch)
    (want,) = penalties
    assert want > 0

    tr = _stacked_trainer()
    tr.loss_fn.fail = True
    with pytest.raises(RuntimeError, match="forward failed midway") as failed:
        tr.train_step(batch)
    tr.loss_fn.fail = False
    tr.train_step(batch)
    assert penalties[1:] == [pytest.approx(want, rel=1e-6)]
    for name, p in fresh.model.state_dict().items():
        torch.testing.assert_close(tr.model.state_dict()[name], p, msg=name)
    del failed
