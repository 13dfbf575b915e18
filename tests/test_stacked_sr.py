"""Stacked SR (dnlib.experiments.stacked_sr, dnlib.models.stacked_srcnn): K seeds of SRCNN in one model equal the K
separate runs in float64 (Adam, a milestone, the L1 terms of DN*, BN's running statistics); each copy is recorded as
its own run. Uses the real SR data under $DNLIB_DATA (skipped when absent)."""
import pytest
import torch

from dnlib.experiments import records, stacked_sr
from dnlib.experiments.recipe import COMPLETED
from dnlib.experiments.runner import build_setup
from dnlib.experiments.runner import run as run_one
from dnlib.experiments.sr import RECIPE
from dnlib.models.stacked_srcnn import StackedSRCNN
from dnlib.norms.sparse import sparse_penalty

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"batch_size": 4, "channels": (8, 4)}
STEPS = 3


def _have_sr():
    try:
        from dnlib.data import load_sr
        load_sr("Set5")
        load_sr("T91")
        return True
    except Exception:  # noqa: BLE001
        return False


needs_data = pytest.mark.skipif(not _have_sr(), reason="SR data sets not found under the data root")


class _Double:
    """A batch source whose batches are float64."""

    def __init__(self, src):
        self.src = src

    def __next__(self):
        return tuple(t.double() for t in next(self.src))


def _cfg(row):
    return RECIPE.config(f"smoke-{row}", steps=STEPS, **SMALL)       # milestone at 80%: step 2 of 3


def _separate(row, seed):
    setup = build_setup(RECIPE, _cfg(row), seed, "cpu", {"sets": (), "curve_sets": ()})
    tr = setup.make_trainer(evaluate=None)
    tr.model.double()
    tr.opt = type(tr.opt)(tr.model.parameters(), **{k: v for k, v in tr.opt.defaults.items()})
    tr.base_lrs = [g["lr"] for g in tr.opt.param_groups]
    src = _Double(tr.batches)
    losses = []
    for _ in range(STEPS):
        losses.append(float(tr.train_step(next(src))))
        tr.step += 1
    return losses, tr.model.state_dict()


@needs_data
@pytest.mark.parametrize("row", ["none", "bn", "dn*"])
def test_stacked_copies_equal_separate_runs(row):
    seeds = [0, 1, 2]
    refs = [_separate(row, s) for s in seeds]
    run = stacked_sr.prepare(RECIPE, _cfg(row), seeds, device="cpu", options={"sets": (), "curve_sets": ()},
                             progress=False)
    tr = run.trainer
    tr.model.double()
    tr.opt = type(tr.opt)(tr.model.parameters(), **{k: v for k, v in tr.opt.defaults.items()})
    tr.base_lrs = [g["lr"] for g in tr.opt.param_groups]
    src, got = _Double(tr.batches), []
    for _ in range(STEPS):
        got.append(tr.train_step(next(src)))
        tr.step += 1
    got = torch.stack(got)
    assert tr.opt.param_groups[0]["lr"] < tr.base_lrs[0]                  # the milestone passed
    for k, (losses, state) in enumerate(refs):
        assert got[:, k].tolist() == pytest.approx(losses, rel=1e-12, abs=0)
        mine = tr.copy_state_dict(k)
        assert set(mine) == set(state)
        for n, v in state.items():
            if v.is_floating_point():
                torch.testing.assert_close(mine[n], v, rtol=1e-12, atol=1e-13, msg=n)
            else:
                assert torch.equal(mine[n], v), n
    assert not torch.equal(tr.copy_state_dict(0)["conv1.weight"], tr.copy_state_dict(1)["conv1.weight"])


def test_pack_unpack_and_l1_terms():
    from dnlib.experiments.sr_configs import get_config
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(get_config("smoke").build_model("dn*").double())
    st = StackedSRCNN(models)
    for k, m in enumerate(models):
        for n, v in m.state_dict().items():
            assert torch.equal(st.copy_state_dict(k)[n], v), n
    xs = [torch.rand(2, 1, 21, 21, dtype=torch.float64) for _ in models]
    out, pen = st(torch.cat(xs, 1)), None
    pen = sparse_penalty(st).detach()
    ref = sum(sparse_penalty(m).detach() for m in models if m(xs[models.index(m)]) is not None)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[:, k:k + 1], m(xs[k]), rtol=1e-12, atol=1e-13)
    assert float(pen) == pytest.approx(float(ref), rel=1e-12) and float(pen) > 0
    with pytest.raises(ValueError, match="the copies differ"):
        StackedSRCNN([get_config("smoke").build_model("bn"), get_config("smoke").build_model("none")])


def test_stacked_bn_keeps_the_authors_running_statistics():
    """SRCNN's BN with running_stats='tf' (the authors' EMA), float64: the stack keeps it (it built torch's), so
    training forwards and evaluation give the copies' outputs and running statistics."""
    from dnlib.models.srcnn import SRCNN
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(SRCNN("bn", channels=(8, 4), norm_kwargs={"running_stats": "tf"}).double())
    st = StackedSRCNN(models)
    gen = torch.Generator().manual_seed(0)
    for mode in ("train", "train", "eval"):
        for m in models + [st]:
            m.train(mode == "train")
        xs = [torch.rand(2, 1, 21, 21, generator=gen, dtype=torch.float64) for _ in models]
        out = st(torch.cat(xs, 1))
        for k, m in enumerate(models):
            torch.testing.assert_close(out[:, k:k + 1], m(xs[k]), rtol=1e-10, atol=1e-12, msg=f"copy {k}, {mode}")
            for n, v in m.state_dict().items():
                torch.testing.assert_close(st.copy_state_dict(k)[n], v, rtol=1e-12, atol=1e-15, msg=f"{n}, {mode}")
    assert st.norm1.running_stats == st.norm2.running_stats == "tf"


@pytest.mark.slow
@needs_data
def test_stacked_run_writes_one_record_per_seed(tmp_path):
    results = stacked_sr.run(RECIPE, "smoke-dn*", [0, 1], steps=4, device="cpu", out=tmp_path,
                             overrides=SMALL, options={"sets": ("Set5",), "eval_every": 2}, progress=False)
    dirs = records.find_runs([tmp_path])
    assert sorted(d.name for d in dirs) == ["smoke-dn-s0", "smoke-dn-s1"]   # (run_name drops the star)
    for res in results:
        rec = records.read_record(res.run_dir)
        assert rec["stopped"] == COMPLETED and rec["config"]["setup"]["stacked"] == 2
        sep = run_one(RECIPE, "smoke-dn*", seed=rec["seed"], steps=4, device="cpu",
                             overrides=SMALL, options={"sets": ("Set5",), "eval_every": 2}, progress=False)
        assert rec["headline"]["set5_psnr"] == pytest.approx(sep.record["headline"]["set5_psnr"], abs=1e-3)
    assert len(records.gather([tmp_path])) == 2


@pytest.mark.slow
@needs_data
def test_stack_verb_trains_one_record_per_seed_and_refuses_bad_seeds(tmp_path, capsys):
    """``dnlib sr stack`` (issue 28: before, SR had the stacked API but no verb; CIFAR and PTB had both): one JSON
    line and one ordinary run folder per seed, each copy's PSNR its separate run's; a repeated seed and an unknown
    configuration are one line on stderr, exit 2, nothing trained."""
    import json

    from dnlib.experiments import commands
    args = ["stack", "smoke-dn*", "--seeds", "0", "1", "--steps", "2", "--batch-size", "4", "--sets", "Set5",
            "--curve-sets", "--eval-every", "1", "--device", "cpu", "--out", str(tmp_path / "s")]
    assert commands.main(RECIPE, args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["seed"] for x in lines] == [0, 1] and all(x["stacked"] == 2 and x["steps"] == 2 for x in lines)
    assert len(records.find_runs([tmp_path / "s"])) == 2
    sep = run_one(RECIPE, "smoke-dn*", seed=1, steps=2, device="cpu", overrides={"batch_size": 4},
                  options={"sets": ("Set5",), "curve_sets": (), "eval_every": 1}, progress=False)
    assert lines[1]["set5_psnr"] == pytest.approx(sep.record["headline"]["set5_psnr"], abs=1e-3)
    for bad, what in ((["stack", "smoke-dn*", "--seeds", "1", "1", "--steps", "2"], "seeds"),
                      (["stack", "nope", "--seeds", "0"], "config")):
        with pytest.raises(SystemExit) as e:
            commands.main(RECIPE, bad)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0]
