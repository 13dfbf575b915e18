"""The analysis experiment of notebook 08 (issue 27): its configurations, the in-process points driver and the report.
(The runner's contract on it: tests/test_experiment.py's Smoke table.)"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dnlib.experiments import analysis, analysis_report, records
from dnlib.experiments.analysis_configs import ANALYSES, SIZES, VARIANTS, get_config, list_configs

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
needs_cifar = pytest.mark.skipif(not ((MIRROR / "cifar10-jpeg" / "train").is_dir()
                                      or (MIRROR / "cifar-10-batches-py").is_dir()),
                                 reason=f"no CIFAR-10 in DNLIB_DATA={MIRROR}")


def test_every_point_builds_at_every_size_and_names_say_their_analysis():
    names = list_configs()
    assert len(names) == len(set(names)) == 114
    assert {n.split("-")[0] for n in names} == set(ANALYSES)
    for size in SIZES:
        for n in names:
            cfg = get_config(n, size)
            assert cfg.analysis == n.split("-")[0] and cfg.size == size and cfg.evals <= cfg.steps
    m = get_config("depth-dn", "smoke").build_model()
    assert len(m.convs) == SIZES["smoke"]["depth"] and all(n.spec.sum_window for n in m.norms)
    # the batch analysis scales the learning rate with the batch
    assert get_config("batch-bn-b2").lr * 16 == pytest.approx(get_config("batch-bn-b32").lr)
    # variance-only BN: no centring, BN's suppression field
    bn_vo = get_config("inv-bn-vo").build_model().norms[0]
    assert not bn_vo.spec.sum_axes and set(bn_vo.spec.sup_axes) == {"batch", "space"}
    assert set(VARIANTS) >= {"bn-ms", "ln-ms", "dn-ms", "bn-vo", "ln-vo"}


def test_bad_names_and_fields_are_refused_naming_them():
    with pytest.raises(ValueError, match="config: unknown analysis configuration 'batch-xx'"):
        get_config("batch-xx")
    with pytest.raises(ValueError, match="size: must be one of"):
        get_config("batch-bn-b2", "huge")
    with pytest.raises(ValueError, match="norm: must be one of"):
        get_config("batch-bn-b2", norm="bogus")
    with pytest.raises(ValueError, match="steps: must be an integer >= 1"):
        get_config("batch-bn-b2", steps=0)


@pytest.mark.slow
@needs_cifar
def test_points_run_resume_and_report(tmp_path):
    """run_points trains each point once: a rerun keeps the finished folders; the report reads them (tables and
    the five figures); LN's train/eval gap is exactly 0, BN's detached statistics train with the same forward."""
    names = ["batch-bn-b8", "batch-ln-b8", "inv-bn-detached", "lr-bn-3"]
    rows = analysis.run_points(names, [0], out=tmp_path, size="smoke", progress=False, verbose=False)
    assert sorted(r["name"] for r in rows) == sorted(names)
    by = {r["name"]: r for r in rows}
    assert by["batch-ln-b8"]["gap"] == 0.0 and by["batch-bn-b8"]["gap"] is not None
    assert by["inv-bn-detached"]["stopped"] == "completed" and by["inv-bn-detached"]["scale_change"] < 1e-3
    stamp = {d: (d / "record.json").stat().st_mtime_ns for d in records.find_runs([tmp_path])}
    analysis.run_points(names, [0], out=tmp_path, size="smoke", progress=False, verbose=False)
    assert {d: (d / "record.json").stat().st_mtime_ns for d in records.find_runs([tmp_path])} == stamp
    # a rerun with another size: refused, naming the folder and the setting (it kept the old points)
    for kw, key in [({"size": "cpu"}, "size="), ({"size": "full"}, "size=")]:
        with pytest.raises(ValueError, match=key) as e:
            analysis.run_points(names, [0], out=tmp_path, **{"size": "smoke", **kw}, progress=False, verbose=False)
        assert "batch-bn-b8-s0" in str(e.value) and "another --out" in str(e.value)
    assert {d: (d / "record.json").stat().st_mtime_ns for d in records.find_runs([tmp_path])} == stamp
    rep = analysis_report.report(tmp_path, figures=tmp_path / "fig")
    assert rep["runs"] == 4 and len(rep["figures"]) == 5 and all(Path(f).stat().st_size for f in rep["figures"])
    assert "batch 8" in rep["tables"]["batch"]
    rec = records.read_record(tmp_path / "batch-bn-b8-s0")
    assert len(rec["config"]["setup"]["init_act"]) == 3 and rec["config"]["size"] == "smoke"


def test_points_refuse_duplicate_seeds_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        analysis.main(["points", "batch-bn-b2", "--out", str(tmp_path / "p"), "--seeds", "1", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "points: error: seeds: 1 twice" in err[0], err
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
@needs_cifar
def test_the_evaluation_leaves_the_model_as_it_was(tmp_path):
    """The probes at a checkpoint (smoothness, per-layer norms, batch statistics) change no weight or buffer, so a
    run with them is the run without them."""
    recipe = analysis.RECIPE
    from dnlib.experiments.runner import build_setup
    for name in ("smooth-bn", "depth-bn"):
        cfg = recipe.config(name, size="smoke")
        setup = build_setup(recipe, cfg, 0, "cpu", {})
        before = {k: v.clone() for k, v in setup.model.state_dict().items()}
        setup.model.eval()
        with torch.no_grad():
            out = setup.evaluate(setup.model)
        assert all(torch.equal(before[k], v) for k, v in setup.model.state_dict().items())
        assert ("beta" in out) == (name == "smooth-bn") and ("act_0" in out) == (name == "depth-bn")


def test_committed_records_pool_over_seeds():
    """The committed cpu records: 114 points x 3 seeds, and aggregate pools each point's seeds into one row (the
    measurements at initialization in config.setup differ by seed; before, they split every point into 3 rows)."""
    import warnings

    from dnlib.experiments import aggregate
    root = Path(__file__).resolve().parent.parent / "results" / "records" / "analysis"
    if not root.is_dir():
        pytest.skip("no committed analysis records")
    with warnings.catch_warnings():
        warnings.simplefilter("error", aggregate.PoolingWarning)
        rows = aggregate.summarize(root, keys=["test_err"])
    assert len(rows) == len(list_configs()) and {r["n"] for r in rows} == {3}
    runs = analysis_report.load(root)
    assert runs.seeds() == [0, 1, 2] and len(runs) == 3 * len(list_configs())


def test_the_brn_points_clip_at_rmax_3_dmax_5_from_the_first_step_and_are_not_bn():
    """The batch analysis's brn (module doc: "at its final rmax 3, dmax 5 from the start: no warm-up schedule"; the
    committed cpu records ran so). On Ioffe's schedule (the preset's default) it would be BN for the first 5000
    batches, longer than any smoke or cpu point: BN's numbers under BRN's name."""
    from dnlib.norms.batch_variants import BatchRenorm
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 50
    for size in SIZES:
        torch.manual_seed(0)
        brn = get_config("batch-brn-b32", size).build_model().double().train()
        torch.manual_seed(0)
        bn = get_config("batch-bn-b32", size).build_model().double().train()
        norms = [m for m in brn.modules() if isinstance(m, BatchRenorm)]
        assert len(norms) == 3
        y_brn, y_bn = brn(x), bn(x)                     # the first training step
        assert all(m.clips() == (3.0, 5.0) for m in norms), [m.clips() for m in norms]
        y_brn, y_bn = brn(x), bn(x)                     # the second: corrected towards the running statistics
        assert (y_brn - y_bn).abs().max() > 1e-3 * y_bn.abs().max(), size
    assert VARIANTS["brn"].norm_kwargs.get("relax", ()) is None


def test_a_run_is_stable_against_its_loss_before_any_step():
    """Analysis review: "stable" compared the last logged loss with the first logged one, a mean over the first
    steps, already after updates at the rate tested: lr-bn-0.3-s0 went 2.29 (before any step) -> 5.83 -> 16.31 ->
    4.09 and counted as stable. It now compares with the loss before any step (``init_loss``, recorded at build);
    a record without it keeps the old comparison."""
    losses = [5.83, 16.31, 4.09]
    assert analysis.stable_run(losses, 2.29) == 0.0 and analysis.stable_run(losses, None) == 1.0
    assert analysis.stable_run([2.2, 2.1], 2.3) == 1.0 and analysis.stable_run([2.2, float("nan"), 2.0], 2.3) == 0.0
    assert analysis.stable_run([2.35], 2.3) == 1.0                    # within STABLE_TOL: a run that does not move
    assert analysis.stable_run([], 2.3) is None


def test_the_largest_stable_rate_needs_every_smaller_rate_stable():
    """Analysis review: lr-none-s1 was unstable at 0.01 and stable at 0.03 and 0.1, and the table read 0.1."""
    from dnlib.experiments.analysis_configs import LR_GRID

    def rec(seed, stable, loss):
        return {"seed": seed, "stopped": "completed", "headline": {"stable": stable, "train_loss": loss}}
    bad = {0.01}
    runs = analysis_report.Runs(records={f"lr-none-{lr:g}": [rec(0, 0.0 if lr in bad else 1.0, 2.0 if lr >= 0.003
                                                                else 2.3), rec(1, 1.0 if lr <= 0.1 else 0.0, 2.0)]
                                         for lr in LR_GRID})
    assert analysis_report.largest_stable(runs, "none") == [0.003, 0.1]
    # learns: the largest of those rates whose loss also fell below ln 10 - margin (0.0003 and 0.001 did not)
    assert analysis_report.largest_stable(runs, "none", learns=True) == [0.003, 0.1]
    runs.records["lr-none-0.003"][0]["headline"]["train_loss"] = 2.3
    assert analysis_report.largest_stable(runs, "none", learns=True) == [None, 0.1]
    # the notebook's saved numbers: every seed's rate, and the lower median over all seeds (a rate of the grid or
    # None); before, the median of the seeds that had one (here 0.1 of [None, 0.1]), silently
    s = analysis_report.summary(runs)
    assert s["lr_learns_none_seeds"] == [None, 0.1] and s["lr_learns_none"] is None
    assert s["lr_max_none_seeds"] == [0.003, 0.1] and s["lr_max_none"] == 0.003


def test_figures_draw_the_curves_of_completed_runs_only():
    """Analysis review: the smoothness/invariance bands and the depth figure drew every run's curve, a diverged one
    included, under a label counting it (n=2, y 505 where the completed run's is 10), while the tables keep
    completed runs only."""
    runs = analysis_report.Runs()
    runs.records["smooth-bn"] = [{"seed": 0, "stopped": "completed", "headline": {"beta": 10.0}},
                                 {"seed": 1, "stopped": "diverged at step 70", "headline": {}}]
    rows = {"loss_range": 1.0, "grad_change": 1.0, "beta": 10.0}
    runs.curves["smooth-bn"] = [[{"step": s, **rows} for s in (32, 63, 94, 125)],
                                [{"step": s, **{k: 100 * v for k, v in rows.items()}} for s in (32, 63)]]
    fig = analysis_report.smooth_figure(runs)
    lines = [ln for ax in fig.axes for ln in ax.lines if "(n=" in str(ln.get_label())]
    assert lines and all(ln.get_label().endswith("(n=1)") for ln in lines), [ln.get_label() for ln in lines]
    assert all(set(map(float, ln.get_ydata())) == {1.0} or set(map(float, ln.get_ydata())) == {10.0}
               for ln in lines)
