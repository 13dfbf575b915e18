"""Stacked seeds (dnlib.experiments.stacked): K copies of the CIFAR CNN in one model equal K separate runs; the runner's
one
loop trains them (records, checkpoints, per-copy divergence); the CLI verb. Kill -9 and resume: tests/test_resume.py."""
import copy
import dataclasses
import json

import pytest
import torch

from dnlib import clear_penalties, sparse_penalty
from dnlib.experiments import commands as commands_mod
from dnlib.experiments import recipe as recipes
from dnlib.experiments import records, stacked
from dnlib.experiments import runner as runner_mod
from dnlib.experiments.cifar import RECIPE, CifarRecipe, load_data
from dnlib.models import CifarCNN
from dnlib.models.stacked import FoldedNorm, StackedCifarCNN
from dnlib.training.stacked import StackedGraphTrainer, StackedTrainer
from dnlib.training.trainer import CheckpointError, TrainingDiverged, set_seed

pytestmark = pytest.mark.usefixtures("one_thread")
SUBSET = (300, 100)


@pytest.fixture(scope="module")
def data64():
    """A small subset whose mean image is float64, so the recipe's images (uint8 - mean) are float64."""
    data = load_data("cifar10", subset=SUBSET, device="cpu", download=False)
    return dataclasses.replace(data, mean=data.mean.double())


def _separate(cfg, seed, data, steps):
    """The recipe's own run of ``cfg`` with ``seed`` (its build and trainer), in float64: losses and final state."""
    setup = runner_mod.build_setup(RECIPE, cfg, seed, "cpu", {"data": data, "mode": "eager", "eval_every": 0})
    tr = setup.make_trainer(evaluate=None)
    init = {k: v.double().clone() for k, v in tr.model.state_dict().items()}
    tr.model.double()
    losses = []
    for _ in range(steps):
        losses.append(float(tr.train_step(next(tr.batches))))
        tr.step += 1
    return losses, init, tr.model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", [("base", "eager"), ("bn-star", "eager"), ("ln-star", "eager"),
                                       ("dn-star", "eager"), ("dn-star", "graph")])
def test_stacked_steps_equal_separate_runs(data64, name, mode):
    """Table 7's Baseline, BN*, LN*, DN* (L1 terms, weight decay groups, a milestone inside the steps): K = 3
    stacked steps give each copy its separate run's losses and parameters/buffers in float64 to rounding."""
    steps, seeds = 3, [0, 1, 2]
    cfg = RECIPE.config(name, batch_size=20).replace(milestones=(2,), steps=steps)
    refs = [_separate(cfg, s, data64, steps) for s in seeds]
    run = stacked.prepare(RECIPE, cfg, seeds, device="cpu", options={"data": data64, "eval_every": 0, "mode": mode})
    tr = run.trainer
    tr.model.double()
    assert isinstance(tr, StackedGraphTrainer if mode == "graph" else StackedTrainer)
    got = torch.stack([_step(tr) for _ in range(steps)])            # (steps, K): the copies' losses
    for k, (losses, init, state) in enumerate(refs):
        assert got[:, k].tolist() == pytest.approx(losses, rel=1e-12, abs=0)
        mine = tr.copy_state_dict(k)
        assert set(mine) == set(state)
        moved = max((state[n] - init[n]).abs().max().item() for n in state if state[n].is_floating_point())
        assert moved > 1e-6                                        # training moved the weights...
        for n, v in state.items():
            if v.is_floating_point():
                assert (mine[n] - v).abs().max().item() <= 1e-9 * moved, n    # ...and the copies moved alike
            else:
                assert torch.equal(mine[n], v), n
    # the copies differ from each other (own seeds, own batches)
    assert not torch.equal(tr.copy_state_dict(0)["convs.0.weight"], tr.copy_state_dict(1)["convs.0.weight"])


def _step(tr):
    """One optimizer step of a trainer, as its loop takes it; returns the task loss(es)."""
    loss = tr.train_step(next(tr.batches))
    tr.step += 1
    return loss


def test_pack_unpack_roundtrip_and_refusals():
    set_seed(0)
    models = [CifarCNN(10, "dn", norm_kwargs=dict(window=(5, 3, 3), sigma=0.5, alpha=0.01)) for _ in range(3)]
    m = StackedCifarCNN(models)
    for k, model in enumerate(models):
        for n, v in model.state_dict().items():
            assert torch.equal(m.copy_state_dict(k)[n], v), n
    assert m.norms[0].spec.groups == 3 and m.norms[0].alpha == pytest.approx(0.03)
    x = torch.randn(4, 3, 32, 32)
    for model in models:
        model.eval()
    m.eval()
    out = m(torch.cat([x] * 3, 1))                                   # every copy sees the same images
    for k, model in enumerate(models):
        torch.testing.assert_close(out[k], model(x), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="models: the copies differ"):
        StackedCifarCNN([CifarCNN(10, "bn"), CifarCNN(10, "ln")])
    with pytest.raises(ValueError, match="learned sigma"):
        StackedCifarCNN([CifarCNN(10, "dn", norm_kwargs=dict(learn_sigma=True))] * 2)
    with pytest.raises(ValueError, match="seeds: each copy needs its own seed"):
        stacked.prepare(RECIPE, "base", [1, 1], device="cpu")
    with pytest.raises(ValueError, match="seeds: must be a non-empty list"):
        stacked.prepare(RECIPE, "base", [], device="cpu")


def test_a_stacked_run_under_torchrun_is_refused_before_any_data(monkeypatch):
    """Under torchrun the runner would shard a (K, N) batch of K copies as if it were N examples: refused."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(CifarRecipe, "build", lambda *a, **k: pytest.fail("the copies were built"))
    with pytest.raises(ValueError, match="seeds: a stacked run trains in one process"):
        stacked.prepare(RECIPE, "base", [0, 1], device="cpu", progress=False)


def test_folded_and_grouped_normalizers_equal_separate_models():
    """DN* (L1 terms) in training mode, float64, each copy its own images: the stacked model's outputs and the
    gradients of loss + L1 terms equal the separate models', with the copies in channel groups and folded into the
    batch (the path of impl='triton', whose kernels take no groups)."""
    set_seed(0)
    kw = dict(window=(5, 3, 3), sigma=0.5, eps=0.0, alpha=0.005, border="reference")
    models = [CifarCNN(10, "dn", norm_kwargs=kw, init_std=(0.05, 0.05, 0.05, 0.1, 0.1)).double() for _ in range(3)]
    xs = [torch.randn(4, 3, 32, 32, dtype=torch.float64) * 50 for _ in models]
    ws = [torch.randn(4, 10, dtype=torch.float64) for _ in models]
    for m, x, w in zip(models, xs, ws):
        ((m(x) * w).sum() + sparse_penalty(m)).backward()
    for fold in (False, True):
        st = StackedCifarCNN(models, fold=fold)
        assert isinstance(st.norms[0], FoldedNorm) == fold
        out = st(torch.cat(xs, 1))
        ((out * torch.stack(ws)).sum() + sparse_penalty(st)).backward()
        for k, (m, x) in enumerate(zip(models, xs)):
            torch.testing.assert_close(out[k], m(x), rtol=1e-10, atol=1e-12)
            clear_penalties(m)
            grads = StackedCifarCNN.copy_state_dict(_grads(st), k)
            for n, p in m.named_parameters():
                torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-12, msg=f"{n} (fold={fold})")


@pytest.mark.parametrize("running_stats", ["tf", "torch"])
def test_stacked_bn_keeps_the_copies_running_statistics(running_stats):
    """BN with the authors' moving averages (running_stats='tf': TF's EMA of the biased variance, from 0) or torch's,
    float64, each copy its own images: two training forwards (the running statistics move) and evaluation give the
    stacked model the copies' outputs and buffers (the stack built a 'torch' BN for 'tf' copies: eval off by 0.5)."""
    models = []
    for s in range(2):
        set_seed(s)
        models.append(CifarCNN(10, "bn", norm_kwargs={"running_stats": running_stats}).double())
    st = StackedCifarCNN(models)
    gen = torch.Generator().manual_seed(0)
    for mode in ("train", "train", "eval"):
        for m in models + [st]:
            m.train(mode == "train")
        xs = [torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64) * 50 for _ in models]
        out = st(torch.cat(xs, 1))
        for k, (m, x) in enumerate(zip(models, xs)):
            torch.testing.assert_close(out[k], m(x), rtol=1e-10, atol=1e-12, msg=f"copy {k}, {mode}")
            mine = st.copy_state_dict(k)
            for n, v in m.state_dict().items():
                assert mine[n].dtype == v.dtype, n
                torch.testing.assert_close(mine[n], v, rtol=1e-12, atol=1e-15, msg=f"{n}, {mode}")
    assert [n.running_stats for n in st.norms] == [running_stats] * 3


def test_copies_whose_normalizers_differ_in_a_setting_are_refused_naming_it():
    """Every setting of a DivisiveNorm that shapes its forward or its buffers is one value for the whole stack: copies
    that differ in one are refused by its name, and a subclass (whose own settings a DivisiveNorm stack would drop:
    batch renorm's clips would become plain BN) is refused by its class."""
    cases = {"running_stats": ({"running_stats": "tf"}, {"running_stats": "torch"}),
             "momentum": ({"momentum": 0.1}, {"momentum": 0.01}),
             "impl": ({"impl": "general"}, {"impl": "auto"})}
    for setting, (a, b) in cases.items():
        with pytest.raises(ValueError, match=f"models: the copies' normalizers differ in {setting}"):
            StackedCifarCNN([CifarCNN(10, "bn", norm_kwargs=a), CifarCNN(10, "bn", norm_kwargs=b)])
    with pytest.raises(ValueError, match="BatchRenorm"):
        StackedCifarCNN([CifarCNN(10, "brn"), CifarCNN(10, "brn")])


def _grads(st):
    """A stand-in whose state_dict is ``st``'s gradients (so copy_state_dict unpacks them)."""
    g = copy.deepcopy(st)
    with torch.no_grad():
        for (_n, p), q in zip(st.named_parameters(), g.parameters()):
            q.copy_(p.grad)
    return g


@pytest.mark.slow
def test_stacked_run_writes_one_ordinary_record_per_seed(tmp_path):
    """Each copy gets its own run folder and record (the runner's keys, its seed, ``stacked: 2``), on its own
    seed's data subset, with the curves of its separate run (float32: to rounding); the group's folder holds
    them and the one trainer's checkpoint."""
    opts = {"subset": SUBSET, "eval_every": 1}
    results = stacked.run(RECIPE, "dn-star", [3, 5], steps=2, device="cpu", out=tmp_path / "stack",
                          overrides={"batch_size": 20}, options=opts, progress=False)
    assert [r.record["seed"] for r in results] == [3, 5]
    dirs = records.find_runs([tmp_path / "stack"])
    assert [d.name for d in dirs] == ["dn-star-s3", "dn-star-s5"]
    group, = {d.parent for d in dirs}
    assert group.parent == tmp_path / "stack" and group.name.startswith("dn-star-s3+5-")
    assert (group / "checkpoint.pt").is_file() and json.loads((group / "run.json").read_text())["seeds"] == [3, 5]
    for res in results:
        rec = records.read_record(res.run_dir)
        assert tuple(rec) == records.RUN_RECORD_KEYS
        assert rec["stopped"] == recipes.COMPLETED and rec["steps_done"] == 2 and rec["name"] == "dn-star"
        assert rec["config"]["setup"]["stacked"] == 2 and rec["config"]["setup"]["stacked_seeds"] == [3, 5]
        assert rec["config"]["setup"]["subset"] == list(SUBSET)
        sep = runner_mod.run(RECIPE, "dn-star", seed=rec["seed"], steps=2, device="cpu",
                             overrides={"batch_size": 20}, options=opts, progress=False)
        mine, theirs = records.read_curves(res.run_dir), [r for r in sep.history if "step" in r]
        assert [r["step"] for r in mine] == [r["step"] for r in theirs] == [1, 2]
        for a, b in zip(mine, theirs):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
            assert a["lr"] == b["lr"]
        assert set(rec["headline"]) == set(sep.record["headline"])
        assert rec["headline"]["final_acc"] == sep.record["headline"]["final_acc"]
    assert records.gather([tmp_path / "stack"])[0]["experiment"] == "cifar"


class _Recipe(CifarRecipe):
    """The CIFAR recipe with the stack verb registered (what dnlib.experiments.cifar's recipe does in one line)."""

    def commands(self):
        return {**super().commands(), **stacked.commands(self)}


@pytest.mark.slow
def test_stack_verb(tmp_path, capsys):
    args = ["stack", "base", "--seeds", "0", "1", "--steps", "1", "--subset", "300,100", "--device", "cpu",
            "--batch-size", "20", "--eval-every", "1", "--out", str(tmp_path / "s")]
    assert commands_mod.main(_Recipe(), args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["seed"] for x in lines] == [0, 1] and all(x["stacked"] == 2 for x in lines)
    assert len(records.find_runs([tmp_path / "s"])) == 2
    for bad, what in (([*args[:3], "1", "1", *args[5:]], "seeds"), (["stack", "nope", "--seeds", "0"], "config")):
        with pytest.raises(SystemExit) as e:
            commands_mod.main(_Recipe(), bad)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0]



# ------------------------------------------------------------------------------------------ the one loop
SMOKE = dict(steps=6, device="cpu", overrides={"batch_size": 20}, options={"subset": SUBSET, "eval_every": 2},
             progress=False)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def _final(group):
    return torch.load(group / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_stacked_run_resumes_by_its_folder_as_the_uninterrupted_one(tmp_path):
    """The runner's loop for a stacked group: stopped by a time limit (after the first chunk) and by stop_after,
    then resumed by its folder alone (config and seeds from run.json): each copy's history, record and the packed
    weights, optimizer and batch positions equal one uninterrupted stacked run's, bit for bit."""
    full = stacked.run(RECIPE, "dn-star", [3, 5], out=tmp_path / "a", **SMOKE)
    group = tmp_path / "b"
    part = stacked.run(RECIPE, "dn-star", [3, 5], resume=group, time_limit=1e-6, **SMOKE)
    assert [r.stopped for r in part] == ["time limit at step 2"] * 2
    assert [records.read_record(r.run_dir)["steps_done"] for r in part] == [2, 2]
    part = stacked.run(RECIPE, resume=group, stop_after=4, progress=False)
    assert [r.stopped for r in part] == ["stop_after at step 4"] * 2 and [r.record["seed"] for r in part] == [3, 5]
    resumed = stacked.run(RECIPE, resume=group, progress=False)
    assert [r.stopped for r in resumed] == [recipes.COMPLETED] * 2
    for a, b in zip(full, resumed):
        assert _strip(a.history) == _strip(b.history) and [r["step"] for r in a.history] == [2, 4, 6]
        assert _strip(records.read_curves(a.run_dir)) == _strip(records.read_curves(b.run_dir))
        assert a.record["headline"]["final_acc"] == b.record["headline"]["final_acc"]
        for name, t in a.model.state_dict().items():
            assert torch.equal(t, b.model.state_dict()[name]), name
    ca, cb = _final(full[0].run_dir.parent), _final(group)
    assert ca["step"] == cb["step"] == 6 and ca["batches"] == cb["batches"]
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert str(ca["optimizer"]["state"]) == str(cb["optimizer"]["state"])


@pytest.mark.slow
def test_a_stacked_group_resumes_only_as_itself(tmp_path):
    """Its folder is a stacked group's: an ordinary run refuses it (naming the seeds), and the group's checkpoint
    refuses other seeds (the trainer's identity check)."""
    stacked.run(RECIPE, "base", [0, 1], resume=tmp_path, stop_after=2, **SMOKE)
    with pytest.raises(ValueError, match=r"seeds: \[0, 1\] are the copies of a stacked run"):
        runner_mod.run(RECIPE, resume=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"seeds: stored \(0, 1\), requested \(0, 2\)"):
        stacked.run(RECIPE, "base", [0, 2], resume=tmp_path, **SMOKE)
    with pytest.raises(ValueError, match="seeds: a stacked run needs one seed per copy"):
        stacked.run(RECIPE, "base", resume=tmp_path / "empty", **SMOKE)


def _poison(run, copies):
    """Make the given copies' training loss NaN from the first step (their FC bias), the others untouched."""
    with torch.no_grad():
        for k in copies:
            run.trainer.model.fc2.bias[k] = float("nan")


@pytest.mark.slow
def test_a_copy_that_diverges_stops_alone(tmp_path):
    """The trainer's divergence check, per copy: the poisoned copy's record says ``diverged at step 1`` (the first
    step whose loss was NaN) with no numbers, the other copy trains to the end with exactly the history of a
    stacked run without the poisoned copy's NaN; when every copy diverges the run raises TrainingDiverged after
    writing each record."""
    clean = stacked.run(RECIPE, "base", [0, 1], **SMOKE)
    run = stacked.prepare(RECIPE, "base", [0, 1], out=tmp_path / "one", **SMOKE)
    _poison(run, [1])
    ok, bad = run.go()
    assert ok.stopped == recipes.COMPLETED and ok.record["headline"]["final_acc"] is not None
    assert _strip(ok.history) == _strip(clean[0].history)
    assert bad.stopped == "diverged at step 1" and bad.record["steps_done"] == 2
    assert all(v is None for v in bad.record["headline"].values())
    assert records.read_record(bad.run_dir)["stopped"] == "diverged at step 1"
    assert bad.history[-1]["reason"] == "the training loss is nan" and len(bad.history) == 1
    run = stacked.prepare(RECIPE, "base", [0, 1], out=tmp_path / "all", **SMOKE)
    _poison(run, [0, 1])
    with pytest.raises(TrainingDiverged, match="diverged at step 1"):
        run.go()
    assert [records.read_record(d)["stopped"] for d in run.copy_dirs] == ["diverged at step 1"] * 2


@pytest.mark.slow
def test_stack_verb_resumes_a_group(tmp_path, capsys):
    """`stack --resume DIR` continues a group from its checkpoint (config, fields, seeds and options stored)."""
    stacked.run(RECIPE, "base", [0, 1], resume=tmp_path, stop_after=2, **SMOKE)
    assert commands_mod.main(_Recipe(), ["stack", "--resume", str(tmp_path)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["seed"], x["steps"], x["stopped"]) for x in lines] == [(0, 6, "completed"), (1, 6, "completed")]
    with pytest.raises(SystemExit) as e:
        commands_mod.main(_Recipe(), ["stack", "base", "--steps", "2"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
