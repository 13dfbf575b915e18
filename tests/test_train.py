"""The generic trainer: exact resume, schedules, atomic checkpoints, clear errors."""
import json

import pytest
import torch
from torch import nn

from dnlib import make_norm
from dnlib.train import TensorBatches, TrainConfig, Trainer, atomic_save


def _problem(seed=0):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_norm("dn", 4, sigma=0.5, alpha=0.01), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 36, 2))
    return model, TensorBatches(x, y, batch_size=16, seed=7)


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _cfg(steps):
    return TrainConfig(steps=steps, lr=0.05, milestones=(6,), eval_every=4, checkpoint_every=4, log_every=2,
                       device="cpu", progress=False)


def test_resume_equals_uninterrupted(tmp_path):
    model, data = _problem()
    full = Trainer(model, _loss, data, _cfg(10), out_dir=tmp_path / "a")
    full.fit()
    # interrupted after 4 steps (the checkpoint), then a fresh process resumes
    model2, data2 = _problem()
    Trainer(model2, _loss, data2, _cfg(4), out_dir=tmp_path / "b").fit()
    model3, data3 = _problem(seed=99)  # different init: everything must come from the checkpoint
    resumed = Trainer(model3, _loss, data3, _cfg(10), out_dir=tmp_path / "b")
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist[-1]["step"] == 10


def test_schedule_and_sparse_penalty_is_added():
    model, data = _problem()
    tr = Trainer(model, _loss, data, _cfg(8))
    assert tr.lr_factor(5) == 1.0 and tr.lr_factor(6) == pytest.approx(0.1)
    tr.fit()
    assert [r["lr"] for r in tr.history if r["step"] == 8][0] == pytest.approx(0.005)
    # the DN site accumulated its L1 term during training and the trainer consumed it
    assert model[1].pop_penalty() is None


def test_tensor_batches_cover_each_epoch_once():
    x = torch.arange(10)
    b = TensorBatches(x, batch_size=5, seed=3)
    e0 = torch.cat([next(b)[0], next(b)[0]]).sort().values
    assert torch.equal(e0, x)
    state = b.state_dict()
    nxt = next(b)[0]
    b.load_state_dict(state)
    assert torch.equal(next(b)[0], nxt)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(obj, f):
        open(f, "wb").write(b"partial")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        atomic_save({"a": 1}, tmp_path / "ck.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, msg", [({"optimizer": "rmsprop"}, "optimizer"), ({"steps": -1}, "steps"),
                                     ({"lr": 0}, "lr"), ({"milestones": (5, 2)}, "milestones")])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)
