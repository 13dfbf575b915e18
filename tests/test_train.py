"""The generic trainer: exact resume, schedules, atomic checkpoints, clear errors."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from dnlib import make_norm
from dnlib.data.loader import TensorBatches
from dnlib.io import atomic_save, atomic_write_json
from dnlib.training.graphs import GraphTrainer
from dnlib.training.trainer import TrainConfig, Trainer, TrainingDiverged

DATA = Path(os.environ.get("DNLIB_DATA", "data"))
needs_cifar = pytest.mark.skipif(not (DATA / "cifar10-jpeg" / "train").is_dir() and
                                 not (DATA / "cifar-10-batches-py").is_dir(), reason=f"CIFAR-10 not in {DATA}")
needs_sr = pytest.mark.skipif(not (DATA / "sr").is_dir(), reason=f"SR data not in {DATA}")


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


def test_eval_metrics_is_the_public_evaluation_that_fit_logs():
    """``Trainer.eval_metrics()`` (what campaign benches call): ``evaluate(model)`` in eval mode without gradients,
    floats, the model's mode restored and its L1 terms cleared; the same numbers ``fit`` logs; {} without one."""
    model, data = _problem()
    seen = []

    def evaluate(m):
        seen.append((m.training, torch.is_grad_enabled()))
        m(torch.zeros(2, 3, 6, 6))                       # leaves an L1 term at the DN site
        return {"w": torch.tensor(sum(float(p.sum()) for p in m.parameters()))}
    tr = Trainer(model, _loss, data, _cfg(4), evaluate=evaluate)
    tr.fit()
    got = tr.eval_metrics()
    assert seen[-1] == (False, False) and model.training and model[1].pop_penalty() is None
    assert type(got["w"]) is float and got == {k: v for k, v in tr.history[-1].items() if k == "w"}
    model, data = _problem()
    assert Trainer(model, _loss, data, _cfg(4)).eval_metrics() == {}


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
    def boom(obj, f):      # torch.save writes into the file object atomic_save hands it (a path before f9c33ca)
        f.write(b"partial")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        atomic_save(tmp_path / "ck.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, msg", [
    ({"optimizer": "rmsprop"}, "optimizer"), ({"steps": -1}, "steps"), ({"lr": 0}, r"lr: must be a number > 0, got 0"),
    ({"lr": float("nan")}, r"lr: must be a number > 0, got nan"),
    ({"milestones": (5, 2)}, r"milestones: must be integers >= 1 in order \(a repeat applies gamma twice\), got "
                             r"\(5, 2\)"),
    ({"milestones": (0, 2)}, r"milestones: .* got \(0, 2\)"),
    # a negative clip_norm scaled the gradient by a negative factor (gradient ascent); 0 never clipped (as None)
    ({"clip_norm": -5.0}, r"clip_norm: must be None \(no clipping\) or a number > 0, got -5.0"),
    ({"clip_norm": 0}, r"clip_norm: must be None \(no clipping\) or a number > 0, got 0"),
    ({"gamma": -1.0}, r"gamma: must be a number > 0 \(the learning rate's factor at each milestone\), got -1.0"),
    ({"gamma": 0.0}, r"gamma: must be a number > 0 .*, got 0.0"),
    ({"momentum": 1.0}, r"momentum: must be a number in \[0, 1\), got 1.0"), ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1e-4}, r"weight_decay: must be a number >= 0, got -0.0001"),
    ({"log_every": 0}, r"log_every: must be an integer >= 1, got 0"), ({"eval_every": -1}, "eval_every"),
    ({"checkpoint_every": 2.5}, r"checkpoint_every: must be an integer >= 0, got 2.5")])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_a_negative_clip_norm_or_gamma_never_reaches_the_update():
    """Refused where the config is built: ``clip_grad_norm_`` with max_norm -5 multiplied every gradient by a
    negative factor (the loss grew 46 -> 274 over 60 steps of a linear regression), and gamma -1 turned the learning
    rate negative at the milestone; each of the experiments' configs refuses the same values."""
    from dnlib.experiments import cifar_configs, ptb_configs, sr_configs
    for bad in ({"clip_norm": -5.0}, {"milestones": (20,), "gamma": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad.keys() - {"milestones"}))):
            TrainConfig(steps=60, lr=0.05, **bad)
    cases = [(ptb_configs.get_config, "base-lstm", {"clip_norm": -5.0}, r"clip_norm: must be None \(no clipping\)"),
             (ptb_configs.get_config, "base-lstm", {"clip_norm": 0.0}, "clip_norm"),
             (ptb_configs.get_config, "base-lstm", {"lr": -1.0}, r"lr: must be a number > 0, got -1.0"),
             (ptb_configs.get_config, "base-lstm", {"lr_decay": 0.0}, r"lr_decay: must be a number > 0 .*got 0.0"),
             (ptb_configs.get_config, "base-lstm", {"batch_size": 0}, r"batch_size: must be an integer >= 1, got 0"),
             (ptb_configs.get_config, "base-lstm", {"num_steps": 0}, "num_steps"),
             (ptb_configs.get_config, "base-lstm", {"decay_after": -1}, r"decay_after: must be an integer >= 0"),
             (ptb_configs.get_config, "base-l1-lstm", {"alpha": -0.01}, r"alpha: must be a number >= 0"),
             (sr_configs.get_config, "smoke", {"lr": 0.0}, r"lr: must be a number > 0, got 0.0"),
             (sr_configs.get_config, "paper", {"momentum": 1.0}, r"momentum: must be a number in \[0, 1\), got 1.0"),
             (sr_configs.get_config, "fast", {"gamma": -0.1}, r"gamma: must be a number > 0 .*got -0.1"),
             (sr_configs.get_config, "fast", {"batch_size": 0}, r"batch_size: must be an integer >= 1, got 0"),
             (sr_configs.get_config, "fast", {"milestones": (0.9, 0.7)}, r"milestones: .*increasing.*\(0.9, 0.7\)"),
             (cifar_configs.get_config, "bn", {"lr": -1e-3}, r"lr: must be a number > 0, got -0.001"),
             (cifar_configs.get_config, "bn", {"momentum": -0.1}, r"momentum: must be a number in \[0, 1\)"),
             (cifar_configs.get_config, "bn", {"weight_decay": -0.1}, r"weight_decay: must be a number >= 0, got -0.1"),
             (cifar_configs.get_config, "bn", {"gamma": 0.0}, r"gamma: must be a number > 0 .*got 0.0"),
             (cifar_configs.get_config, "bn", {"batch_size": 0}, r"batch_size: must be an integer >= 1, got 0"),
             (cifar_configs.get_config, "bn", {"milestones": (50000, 30000)}, r"milestones: .*\(50000, 30000\)"),
             (cifar_configs.get_config, "base-wd-drop", {"dropout": 1.0}, r"dropout: must be a number in \[0, 1\)")]
    for get, name, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            get(name, **kw)
    # what they accept: the registered configurations, None (no clipping), a repeated (scaled) milestone
    assert all(ptb_configs.get_config(n) for n in ptb_configs.list_configs())
    assert ptb_configs.get_config("base-lstm", clip_norm=None).clip_norm is None
    assert cifar_configs.get_config("bn").scaled(2).milestones == (1, 1)
    assert TrainConfig(milestones=(1, 1), clip_norm=None).milestones == (1, 1)


def test_the_cli_refuses_a_bad_stored_value_in_one_line(tmp_path, capsys):
    """A run folder whose run.json holds a negative clip_norm (no flag sets it): one line naming it, exit 2."""
    from dnlib.experiments import ptb
    fields = ptb.RECIPE.config_dict(ptb.RECIPE.config("base-lstm"))
    fields.update(clip_norm=-5.0, steps=2, hidden_size=8, batch_size=4, num_steps=5)
    options = {"max_tokens": 200, "vocab": 40, "final_test_batch_size": None}
    (tmp_path / "run.json").write_text(json.dumps({"experiment": "ptb", "config": "base-lstm", "fields": fields,
                                                   "seed": 0, "options": options, "device": "cpu"}))
    with pytest.raises(SystemExit) as e:
        ptb.main(["run", "--resume", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert "clip_norm: must be None (no clipping) or a number > 0, got -5.0" in err[0], err


class _Payload:
    """Pickled, it would call ``print`` (it must never run)."""

    def __reduce__(self):
        return print, ("payload ran",)


def test_an_unreadable_checkpoint_is_not_called_crafted(tmp_path, capsys):
    """Garbage, or a truncated copy, is "not a torch checkpoint (unreadable)" (it was told "holds objects that are
    not tensors... a crafted file"); a file that holds such objects (torch.save's archive, or a bare pickle) is
    refused as before, and its payload never runs."""
    import io
    import pickle

    from dnlib.training.checkpoints import CheckpointError, load_checkpoint
    good = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(64)}, "step": 1}, good)
    half = good.getvalue()[:len(good.getvalue()) // 2]
    crafted = io.BytesIO()
    torch.save({"model": _Payload()}, crafted)
    cases = {"garbage": (b"not a checkpoint" * 10, r"is not a torch checkpoint \(unreadable: neither"),
             "zeros": (bytes(100), r"is not a torch checkpoint \(unreadable"),
             "truncated": (half, r"not a torch checkpoint \(unreadable.*truncated"),
             "crafted": (crafted.getvalue(), r"refused: it holds objects that are not tensors or plain Python values"),
             "bare pickle": (pickle.dumps({"model": _Payload()}), r"refused: it is a bare pickle, not the archive "
                                                                  r"that torch.save writes")}
    for name, (content, msg) in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=msg) as e:
            load_checkpoint(path)
        text = str(e.value)
        assert str(path) in text and "delete it" in text and "\n" not in text, (name, text)
        assert ("crafted" in text) == (name in ("crafted", "bare pickle")), (name, text)
    assert "payload ran" not in capsys.readouterr().out


def test_the_graph_steps_weight_decay_is_coupled_l2_as_torch_sgd():
    """GraphTrainer's hand-written update (capture=False: the graph's body, eagerly) adds ``wd * p`` to the gradient
    before the momentum, as ``torch.optim.SGD`` (its docstring called it decoupled): over 6 steps with momentum and
    per-group weight decay it equals the Trainer (torch's SGD) to rounding."""
    def train(cls):
        model, data = _mlp_problem()
        groups = [{"params": [model[1].weight, model[3].weight], "weight_decay": 0.1},
                  {"params": [model[1].bias, model[3].bias, model[5].weight, model[5].bias], "weight_decay": 0.0}]
        cfg = TrainConfig(steps=6, lr=0.1, momentum=0.9, weight_decay=0.1, eval_every=0, checkpoint_every=0,
                          log_every=3, device="cpu", progress=False)
        kw = {"capture": False} if cls is GraphTrainer else {}
        tr = cls(model, _loss, data, cfg, param_groups=groups, **kw)
        tr.fit()
        return tr.model[1].weight.detach()
    def train_without_decay():
        model, data = _mlp_problem()
        cfg = TrainConfig(steps=6, lr=0.1, momentum=0.9, eval_every=0, checkpoint_every=0, log_every=3,
                          device="cpu", progress=False)
        tr = Trainer(model, _loss, data, cfg)
        tr.fit()
        return tr.model[1].weight.detach()
    eager, graph = train(Trainer), train(GraphTrainer)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager, train_without_decay()), "the weight decay must act"


# ------------------------------------------------------------------------------------- divergence (issue 11, 3)
def _strict_json(path):
    """Parse ``path`` as standard JSON: a bare NaN/Infinity (which ``json.dump`` writes by default) fails."""
    def reject(token):
        raise AssertionError(f"{path} holds a bare {token}: not valid JSON")
    return json.loads(Path(path).read_text(), parse_constant=reject)


def _mlp_problem():
    """A plain MLP: at lr 1e6 its weights multiply up to inf within a few steps and the loss becomes NaN (a
    normalized net's loss only grows with lr, it stays finite)."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    return model, TensorBatches(x, y, batch_size=16, seed=7)


@pytest.mark.parametrize("cls", [Trainer, GraphTrainer])
def test_a_diverging_run_stops_with_a_record_and_valid_json(tmp_path, cls):
    model, data = _mlp_problem()
    cfg = TrainConfig(steps=40, lr=1e6, eval_every=10, checkpoint_every=10, log_every=5, device="cpu", progress=False)
    tr = cls(model, _loss, data, cfg, out_dir=tmp_path, evaluate=lambda m: {"acc": 0.5})
    with pytest.raises(TrainingDiverged) as e:
        tr.fit()
    n = e.value.step
    assert 1 <= n <= tr.step < 40, (n, tr.step)            # stopped at the first log point that saw it
    assert f"diverged at step {n}" in str(e.value) and "\n" not in str(e.value)
    assert tr.stopped == f"diverged at step {n}"
    hist = _strict_json(tmp_path / "history.json")
    assert hist[-1]["stopped"] == f"diverged at step {n}"
    assert all(math.isfinite(r["train_loss"]) for r in hist if "train_loss" in r)
    # the step that diverged is the first whose loss was not finite: the steps before it trained on finite losses
    assert all(r["step"] < n for r in hist if "train_loss" in r)
    if (tmp_path / "checkpoint.pt").exists():             # the last checkpoint holds finite weights, never NaN ones
        state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
        assert state["step"] < n \
            and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_divergence_names_the_learning_rate_of_the_step_that_diverged():
    """The loss turns NaN at step 5, before the milestone at 6; it is seen at the log point of step 10, when the
    optimizer's rate is already lr * gamma: the message names 0.05, the rate that step 5 used (it named 0.005)."""
    model, data = _problem()
    calls = []

    def loss(m, batch):
        calls.append(1)
        out = _loss(m, batch)
        return out * float("nan") if len(calls) == 5 else out
    cfg = TrainConfig(steps=10, lr=0.05, milestones=(6,), eval_every=0, checkpoint_every=0, log_every=10,
                      device="cpu", progress=False)
    tr = Trainer(model, loss, data, cfg)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 5: .*\(learning rate 0.05\)"):
        tr.fit()
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(0.005) and tr.lr_at(5) == 0.05 and tr.lr_at(6) == 0.05
    assert tr.lr_at(7) == pytest.approx(0.005)


def test_a_nan_metric_is_divergence_too(tmp_path):
    model, data = _problem()
    tr = Trainer(model, _loss, data, _cfg(8), out_dir=tmp_path, evaluate=lambda m: {"acc": float("nan")})
    with pytest.raises(TrainingDiverged, match="acc"):
        tr.fit()
    assert tr.step == 4 and _strict_json(tmp_path / "history.json")[-1]["stopped"] == "diverged at step 4"


def test_results_json_never_holds_a_bare_nan(tmp_path):
    with pytest.raises(ValueError, match="r.json"):
        atomic_write_json(tmp_path / "r.json", {"acc": float("nan")})
    assert not (tmp_path / "r.json").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
@needs_cifar
def test_cifar_cli_diverged_run_exits_1_with_one_line_and_a_valid_record(tmp_path, capsys):
    from dnlib.experiments.cifar import main
    out = tmp_path / "run"
    code = main(["run", "bn", "--subset", "800,200", "--steps", "20", "--eval-every", "5", "--lr", "1e6",
                 "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "diverged at step" in err and "learning rate 1e+06" in err, err
    (out,) = out.iterdir()                 # --out BASE: the run's own folder in it (dnlib.experiments.runner)
    res = _strict_json(out / "record.json")
    assert res["stopped"].startswith("diverged at step") and res["headline"]["final_acc"] is None
    assert res["stopped"] in err
    _strict_json(out / "history.json")


@pytest.mark.slow
@needs_sr
def test_sr_diverged_run_raises(tmp_path):
    from dnlib.experiments import sr
    from dnlib.experiments.sr_configs import get_config
    cfg = get_config("smoke").replace(lr=1e8)
    with pytest.raises(TrainingDiverged) as e:
        sr.run("none", cfg, steps=60, eval_every=20, device="cpu", resume=tmp_path, progress=False)
    assert _strict_json(tmp_path / "history.json")[-1]["stopped"] == f"diverged at step {e.value.step}"
