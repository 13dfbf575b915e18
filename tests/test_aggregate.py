"""Aggregation over seeds (dnlib.experiments.aggregate): mean/std/n against numpy, tables, curve bands, figures."""
import math

import numpy as np
import pytest

from dnlib.analysis.curves import band_curves
from dnlib.experiments import aggregate as A
from dnlib.experiments import pooling, registry, tables
from dnlib.experiments import records as R

_PROV = {"git": {"commit": "a" * 40, "dirty": False}, "versions": {}, "device": {"name": "cpu"}, "host": "h"}


def _write(base, name, seed, headline, stopped="completed", curves=None, experiment="cifar", paper=None):
    d = base / R.run_name(name, seed)
    d.mkdir(parents=True)
    rec = R.make_record(experiment, {"name": name, "setup": {"data": "toy data"}}, seed, started=1.8e9,
                        ended=1.8e9 + 5, stopped=stopped, headline=headline,
                        paper=paper if paper is not None else {"acc": 0.8}, prov=_PROV)
    R.write_record(d, rec)
    if curves is not None:
        R.write_curves(d, curves)
    return d


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    accs = {"bn": rng.uniform(0.5, 0.9, 4), "dn": rng.uniform(0.5, 0.9, 3)}
    for name, vals in accs.items():
        for s, v in enumerate(vals):
            _write(tmp_path, name, s, {"acc": float(v), "loss": float(1 - v)})
    _write(tmp_path, "ln", 0, {"acc": 0.6, "loss": 0.4})
    _write(tmp_path, "ln", 1, {"acc": None, "loss": None}, stopped="diverged at step 40")   # record.json: null
    return tmp_path, accs


def test_summarize_mean_std_n_against_numpy(sweep):
    base, accs = sweep
    records_ = [{**R.read_record(d), "run": str(d)} for d in R.find_runs([base])]
    for rows in (R.gather([base]), base, records_):
        summ = {s["name"]: s for s in A.summarize(rows)}
        assert set(summ) == {"bn", "dn", "ln"}
        for name, vals in accs.items():
            s = summ[name]
            assert s["experiment"] == "cifar" and s["n"] == len(vals) and s["acc_n"] == len(vals)
            assert s["acc"] == pytest.approx(np.mean(vals), abs=1e-12)
            assert s["acc_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
            assert s["loss"] == pytest.approx(np.mean(1 - vals), abs=1e-12)
            assert s["paper_acc"] == 0.8 and s["seeds"] == list(range(len(vals)))
            assert s["commits"] == ["a" * 12] and s["devices"] == ["cpu"] and s["stopped"] == {"completed": len(vals)}
        assert sorted(summ["bn"]["runs"]) == [str(base / f"bn-s{s}") for s in range(4)]
        assert summ["bn"]["dates"] == ["2027-01-15"]          # gather rows are read as their folders' records
        assert summ["bn"]["data"] == ["toy data"]


def test_one_run_has_no_spread_and_a_diverged_run_is_excluded_and_counted(sweep):
    base, _ = sweep
    summ = {s["name"]: s for s in A.summarize(R.gather([base]), keys=["acc"])}
    ln = summ["ln"]
    assert ln["n"] == 2 and ln["acc_n"] == 1 and ln["acc"] == 0.6 and ln["acc_std"] is None
    assert ln["stopped"] == {"completed": 1, "diverged": 1}
    assert "loss" not in ln                                    # keys= limits the aggregated keys
    md = tables.table(list(summ.values()), ["acc"], fmt=".3f")
    line = next(x for x in md.splitlines() if x.startswith("| ln "))
    assert "0.600 |" in line and "±" not in line and "2 (1 diverged)" in line
    one = A.summarize([R.read_record(R.find_runs([base])[0])])
    assert one[0]["n"] == 1 and one[0]["acc_std"] is None


def test_nan_and_inf_are_not_counted(tmp_path):
    rows = [{"experiment": "x", "name": "a", "seed": s, "acc": v, "paper_acc": None}
            for s, v in enumerate([0.5, float("nan"), float("inf"), None, 0.7])]
    (s,) = A.summarize(rows)
    assert s["n"] == 5 and s["acc_n"] == 2 and s["acc"] == pytest.approx(0.6)
    assert s["acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert s["paper_acc"] is None


def test_table_cells_paper_beside_and_not_run(sweep):
    base, accs = sweep
    summ = A.summarize(R.gather([base]))
    md = tables.table(summ, {"acc": "test acc."}, title="Table 7", fmt=".4f", labels={"bn": "BN", "dn": "DN"},
                 order=["bn", "dn", "gn"], paper={"gn": {"acc": 0.75}})
    lines = md.splitlines()
    assert lines[0] == "**Table 7**"
    assert lines[2] == "| model | test acc. (ours) | test acc. (paper) | n | run as |"
    bn = f"| BN | {np.mean(accs['bn']):.4f} ± {np.std(accs['bn'], ddof=1):.4f} | 0.8000 | 4 | — |"
    assert bn in lines
    assert "| gn | not run | 0.7500 | 0 | — |" in lines
    assert not any(x.startswith("| ln ") for x in lines)       # order= shows only the named rows


def test_curve_bands_against_a_naive_computation(tmp_path):
    rng = np.random.default_rng(1)
    steps = [10, 20, 30]
    vals = rng.normal(size=(3, 3))
    for s in range(3):
        _write(tmp_path, "bn", s, {"acc": 0.5},
               curves=[{"step": st, "loss": 1.0, "acc": float(vals[s, i])}
                       for i, st in enumerate(steps)] + [{"step": 5, "loss": 2.0}])
    # a run that diverged after step 10: its later points are absent or NaN
    _write(tmp_path, "dn", 0, {"acc": None}, stopped="diverged at step 20",
           curves=[{"step": 10, "acc": 0.3}, {"step": 20, "acc": float("nan")}])
    _write(tmp_path, "dn", 1, {"acc": 0.4}, curves=[{"step": 10, "acc": 0.5}, {"step": 20, "acc": 0.6}])
    bands = A.curve_bands(tmp_path, "acc")
    b = bands["bn"]
    assert b["n"] == 3 and list(b["x"]) == steps and list(b["count"]) == [3, 3, 3]
    for i in range(3):
        assert b["mean"][i] == pytest.approx(sum(vals[:, i]) / 3)
        naive = math.sqrt(sum((v - sum(vals[:, i]) / 3) ** 2 for v in vals[:, i]) / 2)
        assert b["std"][i] == pytest.approx(naive)
    d = bands["dn"]
    assert d["n"] == 2 and list(d["x"]) == [10, 20] and list(d["count"]) == [2, 1]
    assert d["mean"][0] == pytest.approx(0.4) and d["std"][0] == pytest.approx(math.sqrt(0.02))
    assert d["mean"][1] == pytest.approx(0.6) and math.isnan(d["std"][1])
    # the same from (record, rows) pairs, as sweeps.load_runs gives them
    pairs = [(R.read_record(x), R.read_curves(x)) for x in R.find_runs([tmp_path])]
    again = A.curve_bands(pairs, "acc")
    assert np.allclose(again["bn"]["mean"], b["mean"]) and np.allclose(again["bn"]["std"], b["std"])
    assert A.curve_bands(tmp_path, "no_such_metric") == {}


def test_band_curves_draws_a_line_and_a_band_per_configuration(tmp_path):
    bands = {"bn": {"x": np.array([1, 2, 3]), "mean": np.array([1.0, 2, 3]), "std": np.array([0.1, 0.2, 0.3]),
                    "n": 3},
             "ln": {"x": np.array([1, 2]), "mean": np.array([1.0, 1.5]), "std": np.array([np.nan, np.nan]), "n": 1}}
    fig = band_curves(bands, labels={"bn": "BN"}, ylabel="acc")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["BN (n=3)", "ln (n=1)"]
    assert len(ax.collections) == 1                              # n == 1: no band
    verts = ax.collections[0].get_paths()[0].vertices
    assert verts[:, 1].min() == pytest.approx(0.9) and verts[:, 1].max() == pytest.approx(3.3)
    assert ax.get_ylabel() == "acc"
    fig.savefig(tmp_path / "bands.png")


def test_equal_values_have_zero_spread_and_keys_without_paper_numbers_have_no_paper_column():
    rows = [{"experiment": "x", "name": "a", "seed": s, "acc": 0.1 + 0.2, "speed": 10.0 + s, "paper_acc": 0.5}
            for s in range(3)]
    summ = A.summarize(rows)
    assert summ[0]["acc_std"] == 0.0 and summ[0]["speed_std"] == pytest.approx(1.0)
    md = tables.table(summ)
    assert md.splitlines()[0] == "| model | acc (ours) | acc (paper) | speed (ours) | n | run as |"
    assert md.splitlines()[2] == "| a | 0.30 ± 0.00 | 0.50 | 11.00 ± 1.00 | 3 | — |"


def test_finished_counts_early_stopped_runs_without_their_values(tmp_path):
    _write(tmp_path, "bn", 0, {"acc": 0.7})
    _write(tmp_path, "bn", 1, {"acc": 0.3}, stopped="time limit at step 100")
    _write(tmp_path, "bn", 2, {"acc": None}, stopped="diverged at step 7")
    (every,) = A.summarize(tmp_path)
    assert every["acc"] == pytest.approx(0.5) and every["acc_n"] == 2
    (done,) = A.summarize(tmp_path, finished=True)
    assert done["n"] == 3 and done["acc"] == 0.7 and done["acc_n"] == 1 and done["acc_std"] is None
    assert done["stopped"] == {"completed": 1, "time limit": 1, "diverged": 1}
    assert tables.table([done], ["acc"]).splitlines()[2] == "| bn | 0.70 | 0.80 | 3 (1 time limit, 1 diverged) | — |"


def test_curve_bands_by_several_fields(tmp_path):
    for s in range(2):
        _write(tmp_path, "bn", s, {"acc": 0.5}, curves=[{"step": 1, "acc": 0.1 * (s + 1)}])
    bands = A.curve_bands(tmp_path, "acc", by=("name", "device"))
    assert list(bands) == ["bn (cpu)"] and bands["bn (cpu)"]["n"] == 2
    assert bands["bn (cpu)"]["mean"][0] == pytest.approx(0.15)


def test_compare_reads_a_paper_table_from_runs(tmp_path):
    from dnlib.experiments import cifar_configs as C
    for s, acc in enumerate([0.70, 0.74]):
        d = _write(tmp_path, "bn-star", s, {"final_acc": acc}, paper={"final_acc": 0.8179})
        rec = R.read_record(d)
        rec["config"]["dataset"] = "cifar10"
        R.write_record(d, rec)
    d = _write(tmp_path / "c100", "bn", 0, {"final_acc": 0.4})          # another dataset: not in Table 7's column
    rec = R.read_record(d)
    rec["config"]["dataset"] = "cifar100"
    R.write_record(d, rec)
    md = tables.compare(tmp_path, "table7")
    lines = md.splitlines()
    assert lines[0] == "**Table 7: CIFAR-10 test accuracy**" and len(lines) == 4 + len(C.list_configs()) + 2
    assert lines[-1] == "- not shown (this table takes dataset cifar10, eval_split test): bn (dataset cifar100; 1 run)"
    assert f"| BN* | 0.7200 ± {np.std([0.70, 0.74], ddof=1):.4f} | 0.8179 | 2 | — |" in lines
    assert f"| BN | not run | {C.TABLE7['bn'][0]:.4f} | 0 | — |" in lines
    fig = tables.compare_figure(tmp_path, "table10")
    assert len(fig.axes) == 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("not run") == len(C.TABLE10) - 1 and "no value" in texts   # bn-star ran, without Table 10
    with pytest.raises(ValueError, match="unknown table 'table8'"):
        registry.paper_table("table8")


@pytest.mark.slow
def test_committed_records_are_a_fresh_conversion_with_honest_provenance():
    import subprocess
    import sys
    root = R._REPO
    res = subprocess.run([sys.executable, "scripts/convert_results.py", "--check"], cwd=root, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = R.find_runs([root / "results/records" / e for e in ("cifar", "ptb", "sr")])   # the converted ones
    assert {R.read_record(d)["experiment"] for d in runs} == {"cifar", "ptb", "sr"}
    others = {R.read_record(d)["experiment"] for d in R.find_runs([root / "results/records"])} - {"cifar", "ptb", "sr"}
    assert others <= {"analysis"}    # notebook 08's cpu runs: run records of their own (below), not converted
    for d in runs:
        rec = R.read_record(d)
        assert tuple(rec)[:len(R.RECORD_KEYS)] == R.RECORD_KEYS
        assert rec["git"] is None and rec["started"] is None and rec["host"] is None   # not recorded: null
        assert rec["converted_from"] and all((root / f).is_file() for f in rec["converted_from"])
        assert rec["notes"][0].startswith("converted from ")
        assert rec["device"]["name"] and rec["date"] == "2026-11-27"
    md = tables.provenance_table(root / "results/records", where={"experiment": "cifar"})
    assert "CIFAR-10 (JPEG copy)" in md and "results/h100/cifar_summary.json" in md
    # recorded as they ran (scripts/analysis_collect.py)
    for d in R.find_runs([root / "results/records" / "analysis"]):
        rec = R.read_record(d)
        assert (rec["git"] or {}).get("commit") or "git state not recorded" in rec["notes"][-1]   # or says why not
        assert rec["started"] and rec["stopped"] != "running"
        assert sorted(p.name for p in d.iterdir()) == ["curves.csv", "record.json"]   # no checkpoints in git


def test_where_takes_a_list_of_values():
    rows = [{"experiment": e, "name": "x", "seed": 0, "stopped": "completed", "acc": v}
            for e, v in (("cifar", 1.0), ("ptb", 2.0), ("analysis", 3.0))]
    got = A.summarize(rows, where={"experiment": ["cifar", "ptb"]})
    assert [s["experiment"] for s in got] == ["cifar", "ptb"]
    assert [s["experiment"] for s in A.summarize(rows, where={"experiment": "ptb"})] == ["ptb"]


def test_gather_verb_prints_mean_std_n_per_configuration(sweep, capsys):
    from dnlib.experiments import commands
    from dnlib.experiments.cifar import RECIPE
    base, accs = sweep
    assert commands.main(RECIPE, ["gather", str(base), "--out", str(base / "rows.json")]) == 0
    out = capsys.readouterr().out
    per_run, per_config = out.split("**per configuration: mean ± std over runs (n)**")
    assert per_run.count("| cifar |") == 9                     # every run's row, as before
    bn = f"| bn | {np.mean(accs['bn']):.4g} ± {np.std(accs['bn'], ddof=1):.4g} | 0.8 |"
    assert bn in per_config
    assert "| ln | 0.6 | 0.8 |" in per_config and "2 (1 diverged) |" in per_config


# ---------------------------------------------------------------- what is pooled (issue 23 item 1)
def _cifar(base, name, seed, acc, *, steps=40, subset=(2000, 1000), folder=None, stopped="completed", ended=5.0,
           card="cpu", **changes):
    """A CIFAR run folder as `python -m dnlib cifar run NAME --steps STEPS --subset A,B` writes it (the config
    resolved by dnlib.experiments.cifar_configs, its setup facts)."""
    from dnlib.experiments import cifar_configs as C
    cfg = C.get_config(name).replace(**changes)
    cfg = cfg.scaled(steps) if steps != cfg.steps else cfg
    config = {**cfg.as_dict(), "setup": {"data": "CIFAR-10 (JPEG copy)", "eval_split": "test",
                                         "subset": list(subset) if subset else None,
                                         "subset_seed": seed if subset else None, "eval_every": 20,
                                         "mode": "eager", "card": card}}
    d = base / (folder or f"{name}-s{seed}-{steps}")
    d.mkdir(parents=True)
    R.write_record(d, R.make_record("cifar", config, seed, started=1.8e9, ended=1.8e9 + ended, stopped=stopped,
                                    steps_planned=cfg.steps, steps_done=cfg.steps, headline={"final_acc": acc},
                                    paper={"final_acc": C.TABLE7[name][0] if name in C.TABLE7 else None},
                                    prov=_PROV))
    return d


def test_runs_of_one_name_with_other_steps_are_not_pooled_but_split_with_a_warning(tmp_path):
    """gather runs/cifar pooled a 200-step notebook run with 40-step runs (bn-star n = 4): now one row each."""
    for s, acc in enumerate([0.20, 0.22, 0.19]):
        _cifar(tmp_path, "bn-star", s, acc, steps=40)
    _cifar(tmp_path, "bn-star", 0, 0.45, steps=200)
    with pytest.warns(A.PoolingWarning, match=r"bn-star: 2 sets of runs differ .*steps: 200, 40"):
        summ = A.summarize(tmp_path, ["final_acc"])
    assert [s["name"] for s in summ] == ["bn-star", "bn-star"]
    by_steps = {s["what"]["steps"]: s for s in summ}
    assert sorted(by_steps) == [40, 200] and by_steps[40]["n"] == 3 and by_steps[200]["n"] == 1
    assert by_steps[40]["final_acc"] == pytest.approx(0.61 / 3) and by_steps[200]["final_acc"] == 0.45
    assert by_steps[40]["split"].startswith("steps 40") and by_steps[200]["split"].startswith("steps 200")
    assert "steps" in by_steps[40]["differs"] and "milestones" in by_steps[40]["differs"]
    assert by_steps[40]["run_as"] == "40 of the paper's 80,000 steps, subset 2000/1000, batch 100"
    with pytest.warns(A.PoolingWarning):
        md = tables.compare(tmp_path, "table7")
    line40 = next(x for x in md.splitlines() if x.startswith("| BN* [steps 40"))
    assert f"0.2033 ± {np.std([0.20, 0.22, 0.19], ddof=1):.4f} | 0.8179 | 3 |" in line40
    assert line40.endswith("| 40 of the paper's 80,000 steps, subset 2000/1000, batch 100 |")
    assert any(x.startswith("| BN* [steps 200") and "| 0.4500 | 0.8179 | 1 |" in x for x in md.splitlines())
    assert "- cifar / bn-star: runs differ in steps, milestones: not pooled, one row each" in md


@pytest.mark.parametrize("field, a, b", [("batch_size", 100, 50), ("subset", (2000, 1000), None),
                                         ("lr", 0.001, 0.01), ("dataset", "cifar10", "cifar100")])
def test_every_field_that_defines_the_experiment_splits(tmp_path, field, a, b):
    for seed, value in ((0, a), (1, b)):
        kw = {"subset": value} if field == "subset" else {field: value}
        _cifar(tmp_path, "dn-star", seed, 0.3 + seed, **kw)
    with pytest.warns(A.PoolingWarning, match=field):
        summ = A.summarize(tmp_path, ["final_acc"])
    assert len(summ) == 2 and [s["n"] for s in summ] == [1, 1]
    assert all(field in [f.replace("setup.", "") for f in s["differs"]] for s in summ)


def test_runs_that_differ_only_in_seed_card_impl_or_evaluation_are_pooled(tmp_path, recwarn):
    _cifar(tmp_path, "dn-star", 0, 0.30, card="cpu")
    _cifar(tmp_path, "dn-star", 1, 0.32, card="NVIDIA H100 80GB HBM3", impl="fused")
    (s,) = A.summarize(tmp_path, ["final_acc"])
    assert s["n"] == 2 and s["seeds"] == [0, 1] and s["split"] == "" and s["duplicates"] == []
    assert not [w for w in recwarn if issubclass(w.category, A.PoolingWarning)]


def test_one_seed_counts_once_the_newest_finished_run(tmp_path):
    """resnet20-* showed "± 0, n = 2" from ONE seed-0 run counted twice (a suite run and a JupyterLab run)."""
    old = _cifar(tmp_path / "suite", "resnet20-bn", 0, 0.31, folder="resnet20-bn-s0-old", ended=5.0)
    new = _cifar(tmp_path / "notebooks", "resnet20-bn", 0, 0.33, folder="resnet20-bn-s0-new", ended=9.0)
    cut = _cifar(tmp_path / "later", "resnet20-bn", 0, 0.10, folder="resnet20-bn-s0-cut", ended=20.0,
                 stopped="time limit at step 10")
    with pytest.warns(A.PoolingWarning, match="resnet20-bn: 2 more run"):
        (s,) = A.summarize(tmp_path, ["final_acc"])
    assert s["n"] == 1 and s["final_acc"] == 0.33 and s["final_acc_std"] is None and s["runs"] == [str(new)]
    assert sorted(s["duplicates"]) == sorted([str(old), str(cut)])
    md = tables.table([s], {"final_acc": "acc."}, fmt=".2f")
    assert "| resnet20-bn | 0.33 | — | 1 |" in md or "| resnet20-bn | 0.33 | 1 |" in md
    assert "2 run(s) of a seed already counted, not counted" in md and str(old) in md
    with pytest.warns(A.PoolingWarning):
        prov = tables.provenance_table(tmp_path)
    assert "| cifar / resnet20-bn | 1 | 0 | 1 completed | 40 of the paper's 64,000 steps, subset 2000/1000, " \
           "batch 128 |" in prov


def test_gather_verb_splits_and_says_what_was_run(tmp_path, capsys):
    from dnlib.experiments import commands
    from dnlib.experiments.cifar import RECIPE
    for s, acc in enumerate([0.20, 0.22]):
        _cifar(tmp_path, "bn-star", s, acc, steps=40)
    _cifar(tmp_path, "bn-star", 0, 0.45, steps=200)
    assert commands.main(RECIPE, ["gather", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    per_config = out.split("**per configuration: mean ± std over runs (n)**")[1]
    assert err.startswith("python -m dnlib cifar gather: warning: cifar / bn-star: 2 sets of runs differ in what "
                          "defines the experiment (steps: 200, 40;") and err.count("\n") == 1
    assert "| bn-star [steps 40, milestones 15/25] | 0.21 ± 0.01414 | 0.8179 | 2 | 40 of the paper's 80,000 " \
           "steps, subset 2000/1000, batch 100 |" in per_config
    assert "| bn-star [steps 200, milestones 75/125] | 0.45 | 0.8179 | 1 | 200 of the paper's" in per_config
    assert "runs differ in steps, milestones: not pooled" in per_config


def test_gather_averages_completed_runs_only_and_names_the_others_in_n(tmp_path, capsys):
    """gather averaged a time-limited run's mid-schedule accuracy with completed ones (0.69 ± 0.21, n 3, labelled
    with the paper's schedule); compare did not (finished=True). Now gather says what compare says."""
    from dnlib.experiments import commands
    from dnlib.experiments.cifar import RECIPE
    _cifar(tmp_path, "bn-star", 0, 0.82)
    _cifar(tmp_path, "bn-star", 1, 0.80)
    _cifar(tmp_path, "bn-star", 2, 0.45, stopped="time limit at step 10")
    assert commands.main(RECIPE, ["gather", str(tmp_path)]) == 0
    per_config = capsys.readouterr().out.split("**per configuration: mean ± std over runs (n)**")[1]
    line = next(x for x in per_config.splitlines() if x.startswith("| bn-star |"))
    assert line.startswith(f"| bn-star | 0.81 ± {np.std([0.82, 0.80], ddof=1):.4g} | 0.8179 |"), line
    assert "| 3 (1 time limit) |" in line
    text, _ = tables.gather_printout(R.gather([tmp_path]))
    assert line in text


def test_gather_of_the_committed_ptb_records_does_not_average_the_time_limited_h100_runs():
    """results/records/ptb: each configuration has a 13-epoch CPU run and an H100 run of the same 13-epoch schedule
    stopped by the time limit (dn-star-lstm after 3 epochs): gather said epochs 8.00 ± 7.07; the H100 runs count in
    n and give no value."""
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    text, notes = tables.gather_printout(R.gather([repo / "results/records/ptb"]))
    per_config = text.split("**per configuration: mean ± std over runs (n)**")[1]
    rows = [x for x in per_config.splitlines() if x.startswith("| ") and "lstm" in x]
    assert len(rows) == 3 and not notes
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "±" not in row and cells[-2] == "2 (1 time limit)" and cells[5] == "13", row


def test_curve_bands_split_runs_that_differ(tmp_path):
    for steps in (40, 200):
        d = _cifar(tmp_path, "bn", 0, 0.3, steps=steps)
        R.write_curves(d, [{"step": 20, "test_acc": 0.1 * steps / 40}])
    with pytest.warns(A.PoolingWarning):
        bands = A.curve_bands(tmp_path, "test_acc")
    assert sorted(bands) == ["bn [steps 200, milestones 75/125]", "bn [steps 40, milestones 15/25]"]
    assert all(b["n"] == 1 for b in bands.values())


def test_split_labels_are_unique_and_bands_keep_each_group_apart(tmp_path):
    """Three groups of one name, two of which differ only in a field past the first two that differ (steps 200,
    lr 0.001, momentum 0.9 / 0): the label named steps and lr only, so two table rows had one label and
    curve_bands (keyed by label) pooled the 0.80 and 0.30 runs into one band of n 4."""
    variants = {(200, 0.001, 0.9): 0.80, (200, 0.001, 0.0): 0.30, (400, 0.01, 0.9): 0.60}
    for (steps, lr, momentum), acc in variants.items():
        for s in (0, 1):
            d = _cifar(tmp_path, "bn-star", s, acc, steps=steps, lr=lr, momentum=momentum,
                       folder=f"bn-star-s{s}-{steps}-{lr}-{momentum}")
            R.write_curves(d, [{"step": 100, "test_acc": acc}, {"step": 200, "test_acc": acc}])
    with pytest.warns(A.PoolingWarning):
        summ = A.summarize(tmp_path, ["final_acc"])
    assert len(summ) == 3 and len({s["split"] for s in summ}) == 3, [s["split"] for s in summ]
    for s in summ:
        what = s["what"]
        assert f"momentum {what['momentum']}" in s["split"] and s["final_acc"] == pytest.approx(
            variants[(what["steps"], what["lr"], what["momentum"])]) and s["n"] == 2
    md = tables.table(summ, ["final_acc"])
    labels = [x.split("|")[1].strip() for x in md.splitlines() if x.startswith("| bn-star")]
    assert len(labels) == 3 and len(set(labels)) == 3, labels
    with pytest.warns(A.PoolingWarning):
        bands = A.curve_bands(tmp_path, "test_acc")
    assert len(bands) == 3 and sorted(b["n"] for b in bands.values()) == [2, 2, 2]
    assert sorted(float(b["mean"][0]) for b in bands.values()) == pytest.approx(sorted(variants.values()))
    assert all(np.all(b["std"] == 0) for b in bands.values())
    for s in summ:
        assert f"bn-star [{s['split']}]" in bands


def test_run_as_states_a_ptb_run_shortened_to_steps_in_the_paper_s_unit():
    """A PTB run given --steps 300 was "300 of the paper's 13 steps": the paper's schedule is 13 epochs."""
    from dnlib.experiments.ptb import RECIPE as PTB
    config = PTB.config_dict(PTB.config("dn-star-lstm", steps=300))
    setup = {"data": "PTB (Mikolov), 929,589 training tokens, 10,000 words", "batches_per_epoch": 2323}

    def run_as(config, setup):
        what = pooling.defining({"config": {**config, "setup": setup}})
        return pooling.run_as(what, registry.paper_schedule("ptb", "dn-star-lstm", what))

    assert run_as(config, setup) == f"300 steps ({300 / 2323:.3g} epochs; the paper's 13 epochs), batch 20"
    assert run_as(config, {"data": setup["data"]}) == "300 steps (the paper's: 13 epochs), batch 20"
    assert run_as({**config, "steps": 13 * 2323}, setup) == "30,199 steps (13 epochs, the paper's), batch 20"
    assert run_as({**config, "steps": None}, setup) == "13 epochs (the paper's), batch 20"
    assert run_as({**config, "steps": None, "epochs": 2}, setup) == "2 of the paper's 13 epochs, batch 20"


def test_run_as_says_the_images_a_run_recorded_when_it_recorded_no_subset(tmp_path):
    """Records written before cifar.py recorded data.subset say subset None but train_images 2000, eval_images
    500: run_as said "all the data"."""
    import json
    d = _cifar(tmp_path / "old", "bn-star", 0, 0.188, steps=200, subset=None)
    rec = json.loads((d / "record.json").read_text())
    rec["config"]["setup"].update(subset=None, train_images=2000, eval_images=500)
    (d / "record.json").write_text(json.dumps(rec))
    (s,) = A.summarize(tmp_path / "old", ["final_acc"])
    assert s["run_as"] == "200 of the paper's 80,000 steps, 2,000/500 images, batch 100"
    _cifar(tmp_path / "unknown", "bn-star", 0, 0.188, steps=200, subset=None)      # no images recorded
    (s,) = A.summarize(tmp_path / "unknown", ["final_acc"])
    assert s["run_as"] == "200 of the paper's 80,000 steps, all the data, batch 100"
    _cifar(tmp_path / "subset", "bn-star", 0, 0.188, steps=200, subset=(2000, 500))
    (s,) = A.summarize(tmp_path / "subset", ["final_acc"])
    assert s["run_as"] == "200 of the paper's 80,000 steps, subset 2000/500, batch 100"


def test_figures_without_data_say_no_runs(tmp_path):
    """An empty figure was blank axes, and Table 10 from runs that did not measure it showed stub marks."""
    (tmp_path / "empty").mkdir()
    fig = band_curves(A.curve_bands(tmp_path / "empty", "test_acc"), ylabel="CIFAR test accuracy")
    assert [t.get_text() for t in fig.axes[0].texts] == ["no runs"]
    fig = tables.compare_figure(tmp_path / "empty", "table7")
    assert "no runs" in [t.get_text() for t in fig.axes[0].texts]
    _cifar(tmp_path / "sweep", "bn-star", 0, 0.2)
    _cifar(tmp_path / "sweep", "dn-star", 0, 0.25)
    fig = tables.compare_figure(tmp_path / "sweep", "table10")
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.texts]
        assert texts.count("no value") == 2 and "—" not in texts
        assert "no runs with this number (2 configurations ran without it)" in texts
    fig = tables.compare_figure(tmp_path / "sweep", "table7")          # ours has values: written over the bars
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.2" in texts and "0.25" in texts and not any(t.startswith("no runs") for t in texts)


def test_copies_of_a_stacked_group_pool_with_separate_runs_of_their_configuration(tmp_path, recwarn):
    """A stacked copy is its separate run (tests/test_stacked.py, fp64): how it was launched (setup.stacked,
    setup.stacked_seeds) does not make it another experiment, as the card and impl do not."""
    import json
    _cifar(tmp_path, "dn-star", 0, 0.30)
    for seed, acc in ((1, 0.32), (2, 0.34)):
        d = _cifar(tmp_path, "dn-star", seed, acc)
        rec = json.loads((d / "record.json").read_text())
        rec["config"]["setup"].update(stacked=2, stacked_seeds=[1, 2])
        (d / "record.json").write_text(json.dumps(rec))
    (s,) = A.summarize(tmp_path, ["final_acc"])
    assert s["n"] == 3 and s["seeds"] == [0, 1, 2] and s["split"] == ""
    assert not [w for w in recwarn if issubclass(w.category, A.PoolingWarning)]
