"""Stacked PTB (dnlib.experiments.stacked_ptb, dnlib.models.stacked_rnn): K seeds and K configurations of one cell
type in one model equal their separate runs in float64 over steps with per-copy clipping, a learning-rate decay, an
epoch's state reset and evaluation; each copy is recorded as its own run; the stack verb."""
import json

import pytest
import torch

from dnlib.experiments import records, stacked_ptb
from dnlib.experiments.commands import main
from dnlib.experiments.ptb import RECIPE, load_data
from dnlib.experiments.recipe import COMPLETED
from dnlib.experiments.runner import build_setup
from dnlib.experiments.runner import run as run_one
from dnlib.models.stacked_rnn import StackedLanguageModel
from dnlib.norms.sparse import sparse_penalty
from dnlib.training.trainer import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")
# 200 training tokens in 4 streams of 5 steps: 9 batches per epoch, so 12 steps cross an epoch (reset, lr decay)
TINY = {"hidden_size": 8, "batch_size": 4, "num_steps": 5, "epochs": 2, "decay_after": 1, "clip_norm": 0.5}
STEPS = 12


@pytest.fixture(scope="module")
def data():
    splits, v = load_data(max_tokens=200, vocab=40)
    return {k: s[:1000] if k != "train" else s for k, s in splits.items()}, v


def _separate(name, seed, data):
    """The recipe's own run (its build, Trainer and LMLoss) in float64: losses, lrs, clip norms, evaluation."""
    cfg = RECIPE.config(name, steps=STEPS, **TINY)
    setup = build_setup(RECIPE, cfg, seed, "cpu", {"data": data, "mode": "eager"})
    tr = setup.make_trainer(evaluate=None)
    tr.model.double()
    norms, losses, lrs = [], [], []
    clip = tr.clip_fn

    def spy(params, max_norm):
        norms.append(float(clip(params, max_norm)))
    tr.clip_fn = spy
    for _ in range(STEPS):
        losses.append(float(tr.train_step(next(tr.batches))))
        lrs.append(tr.opt.param_groups[0]["lr"])
        tr.step += 1
    return {"losses": losses, "lrs": lrs, "norms": norms, "state": tr.model.state_dict(),
            "eval": setup.evaluate(tr.model.eval())}


@pytest.mark.slow
@pytest.mark.parametrize("configs,seeds", [
    (["dn-star-lstm"], [0, 1]),                                                  # K seeds of one configuration
    (["base-lstm", "ln-star-lstm", "dn-star-lstm"], [0, 1]),                     # K configs of the lstm cell
    (["bn-star-lstm", "bn-s-lstm"], [2]),                                        # the BN-LSTM: per-step statistics
    (["ln-lstm"], [0, 3]),                                                       # the LN-LSTM (affine, biases)
    (["base-tanh-rnn", "ln-tanh-rnn", "dn-star-tanh-rnn"], [1]),                 # vanilla RNNs
    (["bn-s-relu-rnn", "bn-star-relu-rnn"], [0, 1]),                             # BN vanilla RNN
])
def test_stacked_copies_equal_separate_runs(data, configs, seeds):
    """(Not the sigma = 0.01 BN rows at this size: BN over 4 streams of 8 units is so ill-conditioned there that a
    1e-15 relative change of the separate run's initial weights moves its 12th loss by 2e-6, measured; stacked, they
    agree to 6e-11.)"""
    names, copy_seeds = stacked_ptb.copies_of(configs, seeds)
    refs = [_separate(n, s, data) for n, s in zip(names, copy_seeds)]
    run = stacked_ptb.prepare(RECIPE, configs, seeds, steps=STEPS, device="cpu", overrides=TINY,
                              options={"data": data, "mode": "eager"}, progress=False)
    tr = run.trainer
    tr.model.double()
    got, lrs = [], []
    for _ in range(STEPS):
        got.append(tr.train_step(next(tr.batches)))
        lrs.append(list(tr._copy_lrs))
        tr.step += 1
    got = torch.stack(got)
    ev = run.setup.evaluate(tr.model)
    clipped = 0
    for k, ref in enumerate(refs):
        assert got[:, k].tolist() == pytest.approx(ref["losses"], rel=1e-12, abs=0), names[k]
        assert [r[k] for r in lrs] == ref["lrs"]
        clipped += sum(n > TINY["clip_norm"] for n in ref["norms"])
        mine = tr.copy_state_dict(k)
        assert set(mine) == set(ref["state"])
        for n, v in ref["state"].items():
            if v.is_floating_point():
                torch.testing.assert_close(mine[n], v, rtol=1e-12, atol=1e-13, msg=f"{names[k]}: {n}")
            else:
                assert torch.equal(mine[n], v), n
        assert set(ev[k]) == set(ref["eval"]) == {"valid_ppl", "test_ppl", "final_test_ppl"}
        for key, v in ref["eval"].items():
            assert ev[k][key] == pytest.approx(v, rel=1e-12), (names[k], key)
    assert clipped > 0                                        # the clipping acted...
    assert len({tuple(x) for x in lrs}) > 1 and lrs[0] != lrs[-1]    # ...and the learning rate decayed


def _sequence_trainer(stacked: bool, data, **kwargs):
    """A fresh PTB graph-step trainer on CPU (``kwargs``: its arguments to change): the stacked one of two copies,
    or the single run's."""
    if stacked:
        setup = stacked_ptb.prepare(RECIPE, ["dn-star-lstm"], [0, 1], steps=STEPS, device="cpu", overrides=TINY,
                                    options={"data": data, "mode": "eager"}, progress=False).setup
    else:
        cfg = RECIPE.config("dn-star-lstm", steps=STEPS, **TINY)
        setup = build_setup(RECIPE, cfg, 0, "cpu", {"data": data, "mode": "graph"})
    return setup.make_trainer(evaluate=None, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the capture must fail: a machine without CUDA")
@pytest.mark.parametrize("stacked", [False, True], ids=["SequenceGraphTrainer", "StackedSequenceTrainer"])
def test_a_capture_that_fails_falls_back_to_the_eager_step_with_one_warning(data, stacked):
    """Both PTB graph trainers run ONE capture (``training.graphs.CarriedStateGraph``): where it cannot run (here:
    no CUDA) the trainer warns once, names itself, and trains exactly as with ``capture=False`` (losses, weights,
    carried state, over an epoch's reset). The capture on a GPU itself is not exercised here."""
    eager, failing = _sequence_trainer(stacked, data), _sequence_trainer(stacked, data)
    assert type(eager).__name__ == ("StackedSequenceTrainer" if stacked else "SequenceGraphTrainer")
    assert not eager.capture and not failing.capture
    with pytest.raises(ValueError, match="capture: CUDA graphs need a CUDA device, got cpu"):
        _sequence_trainer(stacked, data, capture=True)
    failing.capture = True                                  # as on CUDA: the first step tries to capture
    with pytest.warns(UserWarning, match=f"{type(eager).__name__}: capture failed") as caught:
        for _ in range(STEPS):
            a, b = eager.train_step(next(eager.batches)), failing.train_step(next(failing.batches))
            assert torch.equal(a, b)
            eager.step += 1
            failing.step += 1
    assert len([w for w in caught if "capture failed" in str(w.message)]) == 1
    assert failing.fell_back and failing.graph is None
    for (n, v), w in zip(eager.model.state_dict().items(), failing.model.state_dict().values()):
        assert torch.equal(v, w), n
    for s, t in zip(eager._flat(eager.state), failing._flat(failing.state)):
        assert torch.equal(s, t)
    assert eager.state_dict()["loss_fn"]["state"] is not None


def test_per_copy_l1_terms_and_grouped_sites():
    """Sites of equal normalizers are one call (segments), different ones split; the stacked L1 penalty is the sum
    of the copies' own (different alphas)."""
    from dnlib.experiments.ptb import build_model
    torch.manual_seed(0)
    cfgs = [RECIPE.config(n, hidden_size=8) for n in ("base-lstm", "base-l1-lstm", "dn-star-lstm", "dn-star-lstm")]
    models = [build_model(c, 30).double() for c in cfgs]
    st = StackedLanguageModel(models)
    assert [(s.start, s.stop) for s in st.layers[0].gate_norm.segments] == [(0, 1), (1, 2), (2, 4)]
    ids = torch.randint(0, 30, (3, 4))
    out, _ = st(ids)
    pen = sparse_penalty(st)
    ref = 0
    for k, m in enumerate(models):
        o, _ = m(ids)
        torch.testing.assert_close(out[k], o, rtol=1e-12, atol=1e-13)
        ref = ref + sparse_penalty(m)
    assert float(pen.detach()) == pytest.approx(float(ref.detach()), rel=1e-12) and float(pen.detach()) > 0
    with pytest.raises(ValueError, match="arch"):
        StackedLanguageModel([build_model(RECIPE.config("bn-lstm", hidden_size=8), 30), models[0]])
    with pytest.raises(ValueError, match="configs: stacked copies must share arch"):
        stacked_ptb.prepare(RECIPE, ["base-lstm", "bn-lstm"], [0], device="cpu", overrides=TINY,
                            options={"max_tokens": 200, "vocab": 40}, progress=False)
    with pytest.raises(ValueError, match="each copy must be its own"):
        stacked_ptb.copies_of(["base-lstm", "base-lstm"], [0])


@pytest.mark.slow
def test_group_writes_one_ordinary_record_per_copy_and_resumes(tmp_path, data, capsys):
    """Each copy: its own folder and record (its configuration's name, paper number and seed), the curves of its
    separate run (float32: to rounding); stopped by a time budget then resumed by the folder alone, the histories
    equal an uninterrupted group's."""
    opts = {"max_tokens": 200, "vocab": 40, "eval_every": 3}        # plain options: the folder alone resumes
    kw = dict(steps=6, device="cpu", overrides=TINY, options=opts, progress=False)
    full = stacked_ptb.run(RECIPE, ["base-lstm", "dn-star-lstm"], [0, 1], out=tmp_path / "a", **kw)
    dirs = records.find_runs([tmp_path / "a"])
    assert sorted(d.name for d in dirs) == ["base-lstm-s0", "base-lstm-s1", "dn-star-lstm-s0", "dn-star-lstm-s1"]
    for res in full:
        rec = records.read_record(res.run_dir)
        assert rec["stopped"] == COMPLETED and rec["steps_done"] == 6
        assert rec["config"]["setup"]["stacked"] == 4 and rec["name"] == res.run_dir.name.rsplit("-s", 1)[0]
        assert rec["paper"]["final_test_ppl"] == RECIPE.paper(RECIPE.config(rec["name"]))["final_test_ppl"]
        sep = run_one(RECIPE, rec["name"], seed=rec["seed"], **kw)
        mine, theirs = records.read_curves(res.run_dir), [r for r in sep.history if "step" in r]
        assert [r["step"] for r in mine] == [r["step"] for r in theirs]
        for a, b in zip(mine, theirs):
            assert a["lr"] == b["lr"]
            for key in ("train_loss", "valid_ppl", "test_ppl"):
                if key in b:
                    assert a[key] == pytest.approx(b[key], rel=1e-4), key
        assert rec["headline"]["final_test_ppl"] == pytest.approx(sep.record["headline"]["final_test_ppl"], rel=1e-4)
    group = tmp_path / "b"
    part = stacked_ptb.run(RECIPE, ["base-lstm", "dn-star-lstm"], [0, 1], resume=group, stop_after=3, budget=True,
                           **kw)
    assert [r.stopped for r in part] == ["time budget at step 3"] * 4
    done = stacked_ptb.run(RECIPE, resume=group, progress=False)
    assert [r.stopped for r in done] == [COMPLETED] * 4
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]   # noqa: E731
    for a, b in zip(full, done):
        assert strip(a.history) == strip(b.history)
    assert len(records.gather([group])) == 4
    # the verb
    args = ["stack", "base-lstm", "ln-star-lstm", "--seeds", "0", "--steps", "2", "--max-tokens", "200",
            "--vocab", "40", "--hidden-size", "8", "--batch-size", "4", "--device", "cpu", "--eval-every", "2",
            "--final-test-batch-size", "none", "--out", str(tmp_path / "v")]
    assert main(RECIPE, args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["name"] for x in lines] == ["base-lstm", "ln-star-lstm"] and \
        all(x["stacked"] == 2 for x in lines)
    with pytest.raises(SystemExit) as e:
        main(RECIPE, ["stack", "base-lstm", "bn-lstm", "--seeds", "0", "--max-tokens", "200",
                                 "--vocab", "40", "--device", "cpu"])
    assert e.value.code == 2 and "arch" in capsys.readouterr().err


@pytest.mark.parametrize("configs,lr", [(["base-lstm", "dn-star-lstm"], 0.1),      # 0.1: base-lstm's own lr
                                        (["dn-star-lstm", "base-lstm"], 1.0),      # 1.0: dn-star-lstm's own lr
                                        (["base-lstm", "dn-star-lstm"], 0.5)])
def test_group_overrides_reach_every_copy_even_at_copy_0s_default(tmp_path, configs, lr):
    """The group's overrides are every copy's, also one equal to copy 0's own default (once dropped for the others:
    copy 0's config was diffed against its named default), in the trainer's learning rates too, and after a resume
    from the folder alone."""
    opts = {"max_tokens": 200, "vocab": 40}
    kw = dict(steps=4, device="cpu", options=opts, progress=False)
    run = stacked_ptb.prepare(RECIPE, configs, [0], out=tmp_path, overrides={**TINY, "lr": lr}, **kw)
    assert [c.lr for c in run.copy_cfgs] == [lr, lr]
    assert [f(0) for f in run.trainer.lr_fns] == [lr, lr]
    run.release()                   # (a prepared run holds its folder until it has run or is released)
    again = stacked_ptb.prepare(RECIPE, resume=run.run_dir, progress=False)
    assert [c.lr for c in again.copy_cfgs] == [lr, lr] and [f(0) for f in again.trainer.lr_fns] == [lr, lr]
    # a field left alone stays each configuration's own
    plain = stacked_ptb.prepare(RECIPE, configs, [0], overrides=TINY, **kw)
    assert [c.lr for c in plain.copy_cfgs] == [RECIPE.config(n).lr for n in configs]


def test_a_copys_clip_norm_must_be_none_or_positive(data):
    """A negative clipping norm once read as "no clipping" in the stacked trainer (it clipped where c > 0); each
    copy's norm is None (no clipping) or > 0, as the configs' clip_norm."""
    for bad in (-5.0, 0.0):
        with pytest.raises(ValueError, match=rf"clip_norms: each copy's must be None \(no clipping\) or a number > 0, "
                                             rf"got \[{bad}, 0.5\]"):
            _sequence_trainer(True, data, clip_norms=[bad, 0.5])
    tr = _sequence_trainer(True, data, clip_norms=[None, 0.5])
    assert tr.clip_norms == [None, 0.5]


def test_a_stacked_divergence_names_the_copys_own_learning_rate(data):
    """The stacked PTB trainer steps each copy with its own rate and never sets the optimizer's, which holds copy 0's
    initial one: the divergence of copy 1 (base-lstm, lr 0.1) names 0.1, not dn-star-lstm's 1.0."""
    run = stacked_ptb.prepare(RECIPE, ["dn-star-lstm", "base-lstm"], [0], steps=STEPS, device="cpu", overrides=TINY,
                              options={"data": data, "mode": "eager"}, progress=False)
    tr = run.setup.make_trainer(evaluate=None)
    with torch.no_grad():
        tr.model.embedding.fill_(float("nan"))               # every copy's loss is NaN from step 1
    with pytest.raises(TrainingDiverged, match=r"diverged at step 1: .*\(learning rate 0.1\)"):
        tr.fit(resume=False)
    assert [r["lr"] for r in tr.history if "stopped" in r] == [1.0, 0.1]
    assert [tr.lr_at(1, k) for k in (0, 1)] == [1.0, 0.1] and tr.opt.param_groups[0]["lr"] == 1.0
