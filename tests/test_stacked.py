"""Stacked seeds (dnlib.stacked): K copies of the CIFAR CNN in one model equal K separate runs; records; the CLI
verb."""
import copy
import dataclasses
import json

import pytest
import torch

from dnlib import clear_penalties, experiment, records, sparse_penalty, stacked
from dnlib.cifar import RECIPE, CifarRecipe, load_data
from dnlib.models import CifarCNN
from dnlib.train import set_seed

pytestmark = pytest.mark.usefixtures("one_thread")
SUBSET = (300, 100)


@pytest.fixture(scope="module")
def data64():
    """A small subset whose mean image is float64, so the recipe's images (uint8 - mean) are float64."""
    data = load_data("cifar10", subset=SUBSET, device="cpu", download=False)
    return dataclasses.replace(data, mean=data.mean.double())


def _separate(cfg, seed, data, steps):
    """The recipe's own run of ``cfg`` with ``seed`` (its build and trainer), in float64: losses and final state."""
    set_seed(seed)                       # as the runner does right before build
    setup = RECIPE.build(cfg, seed, "cpu", data=data, mode="eager", eval_every=0)
    tr = setup.make_trainer(evaluate=None)
    init = {k: v.double().clone() for k, v in tr.model.state_dict().items()}
    tr.model.double()
    losses = []
    for _ in range(steps):
        losses.append(float(tr.train_step(next(tr.batches))))
        tr.step += 1
    return losses, init, tr.model.state_dict()


@pytest.mark.parametrize("name,mode", [("base", "eager"), ("bn-star", "eager"), ("ln-star", "eager"),
                                       ("dn-star", "eager"), ("dn-star", "graph")])
def test_stacked_steps_equal_separate_runs(data64, name, mode):
    """Table 7's Baseline, BN*, LN*, DN* (L1 terms, weight decay groups, a milestone inside the steps): K = 3
    stacked steps give each copy its separate run's losses and parameters/buffers in float64 to rounding."""
    steps, seeds = 3, [0, 1, 2]
    cfg = RECIPE.config(name, batch_size=20).replace(milestones=(2,), steps=steps)
    refs = [_separate(cfg, s, data64, steps) for s in seeds]
    run = stacked.prepare(RECIPE, cfg, seeds, device="cpu", options={"data": data64, "eval_every": 0, "mode": mode})
    run.model.double()
    assert isinstance(run.trainer, experiment.Trainer)
    got = torch.stack([run.step() for _ in range(steps)])            # (steps, K)
    for k, (losses, init, state) in enumerate(refs):
        assert got[:, k].tolist() == pytest.approx(losses, rel=1e-12, abs=0)
        mine = run.model.copy_state_dict(k)
        assert set(mine) == set(state)
        moved = max((state[n] - init[n]).abs().max().item() for n in state if state[n].is_floating_point())
        assert moved > 1e-6                                        # training moved the weights...
        for n, v in state.items():
            if v.is_floating_point():
                assert (mine[n] - v).abs().max().item() <= 1e-9 * moved, n    # ...and the copies moved alike
            else:
                assert torch.equal(mine[n], v), n
    # the copies differ from each other (own seeds, own batches)
    assert not torch.equal(run.model.copy_state_dict(0)["convs.0.weight"], run.model.copy_state_dict(1)["convs.0.weight"])


def test_pack_unpack_roundtrip_and_refusals():
    set_seed(0)
    models = [CifarCNN(10, "dn", norm_kwargs=dict(window=(5, 3, 3), sigma=0.5, alpha=0.01)) for _ in range(3)]
    m = stacked.StackedCifarCNN(models)
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
        stacked.StackedCifarCNN([CifarCNN(10, "bn"), CifarCNN(10, "ln")])
    with pytest.raises(ValueError, match="learned sigma"):
        stacked.StackedCifarCNN([CifarCNN(10, "dn", norm_kwargs=dict(learn_sigma=True))] * 2)
    with pytest.raises(ValueError, match="seeds: each copy needs its own seed"):
        stacked.prepare(RECIPE, "base", [1, 1], device="cpu")
    with pytest.raises(ValueError, match="seeds: must be a non-empty list"):
        stacked.prepare(RECIPE, "base", [], device="cpu")


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
        st = stacked.StackedCifarCNN(models, fold=fold)
        assert isinstance(st.norms[0], stacked.FoldedNorm) == fold
        out = st(torch.cat(xs, 1))
        ((out * torch.stack(ws)).sum() + sparse_penalty(st)).backward()
        for k, (m, x) in enumerate(zip(models, xs)):
            torch.testing.assert_close(out[k], m(x), rtol=1e-10, atol=1e-12)
            clear_penalties(m)
            grads = stacked.StackedCifarCNN.copy_state_dict(_grads(st), k)
            for n, p in m.named_parameters():
                torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-12, msg=f"{n} (fold={fold})")


def _grads(st):
    """A stand-in whose state_dict is ``st``'s gradients (so copy_state_dict unpacks them)."""
    g = copy.deepcopy(st)
    with torch.no_grad():
        for (n, p), q in zip(st.named_parameters(), g.parameters()):
            q.copy_(p.grad)
    return g


def test_stacked_run_writes_one_ordinary_record_per_seed(tmp_path):
    """Each copy gets its own run folder and record (the runner's keys, its seed, ``stacked: 2``), on its own
    seed's data subset, with the curves of its separate run (float32: to rounding)."""
    opts = {"subset": SUBSET, "eval_every": 1}
    results = stacked.run(RECIPE, "dn-star", [3, 5], steps=2, device="cpu", out=tmp_path / "stack",
                          overrides={"batch_size": 20}, options=opts)
    assert [r.record["seed"] for r in results] == [3, 5]
    dirs = records.find_runs([tmp_path / "stack"])
    assert sorted(d.name[:len("dn-star-s3-")] for d in dirs) == ["dn-star-s3-", "dn-star-s5-"]
    for res in results:
        rec = records.read_record(res.run_dir)
        assert tuple(rec) == records.RECORD_KEYS
        assert rec["stopped"] == experiment.COMPLETED and rec["steps_done"] == 2 and rec["name"] == "dn-star"
        assert rec["config"]["setup"]["stacked"] == 2 and rec["config"]["setup"]["stacked_seeds"] == [3, 5]
        assert rec["config"]["setup"]["subset"] == list(SUBSET)
        sep = experiment.run(RECIPE, "dn-star", seed=rec["seed"], steps=2, device="cpu",
                             overrides={"batch_size": 20}, options=opts)
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
    """The CIFAR recipe with the stack verb registered (what dnlib.cifar's recipe does in one line)."""

    def commands(self):
        return {**super().commands(), **stacked.commands(self)}


def test_stack_verb(tmp_path, capsys):
    args = ["stack", "base", "--seeds", "0", "1", "--steps", "1", "--subset", "300,100", "--device", "cpu",
            "--batch-size", "20", "--eval-every", "1", "--out", str(tmp_path / "s")]
    assert experiment.main(_Recipe(), args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["seed"] for x in lines] == [0, 1] and all(x["stacked"] == 2 for x in lines)
    assert len(records.find_runs([tmp_path / "s"])) == 2
    for bad, what in (([*args[:3], "1", "1", *args[5:]], "seeds"), (["stack", "nope", "--seeds", "0"], "config")):
        with pytest.raises(SystemExit) as e:
            experiment.main(_Recipe(), bad)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0]

