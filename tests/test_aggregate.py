"""Aggregation over seeds (dnlib.aggregate): mean/std/n against numpy, tables, curve bands, figures."""
import math

import numpy as np
import pytest

from dnlib import aggregate as A
from dnlib import records as R
from dnlib.figures import band_curves

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
        full = not isinstance(rows, list) or rows is records_   # records carry the date and data; gather rows not
        assert summ["bn"]["dates"] == (["2027-01-15"] if full else [])
        assert summ["bn"]["data"] == (["toy data"] if full else [])


def test_one_run_has_no_spread_and_a_diverged_run_is_excluded_and_counted(sweep):
    base, _ = sweep
    summ = {s["name"]: s for s in A.summarize(R.gather([base]), keys=["acc"])}
    ln = summ["ln"]
    assert ln["n"] == 2 and ln["acc_n"] == 1 and ln["acc"] == 0.6 and ln["acc_std"] is None
    assert ln["stopped"] == {"completed": 1, "diverged": 1}
    assert "loss" not in ln                                    # keys= limits the aggregated keys
    md = A.table(list(summ.values()), ["acc"], fmt=".3f")
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
    md = A.table(summ, {"acc": "test acc."}, title="Table 7", fmt=".4f", labels={"bn": "BN", "dn": "DN"},
                 order=["bn", "dn", "gn"], paper={"gn": {"acc": 0.75}})
    lines = md.splitlines()
    assert lines[0] == "**Table 7**"
    assert lines[2] == "| model | test acc. (ours) | test acc. (paper) | n |"
    bn = f"| BN | {np.mean(accs['bn']):.4f} ± {np.std(accs['bn'], ddof=1):.4f} | 0.8000 | 4 |"
    assert bn in lines
    assert "| gn | not run | 0.7500 | 0 |" in lines
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
    # the same from (record, rows) pairs, as experiment.load_runs gives them
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
    md = A.table(summ)
    assert md.splitlines()[0] == "| model | acc (ours) | acc (paper) | speed (ours) | n |"
    assert md.splitlines()[2] == "| a | 0.30 ± 0.00 | 0.50 | 11.00 ± 1.00 | 3 |"


def test_finished_counts_early_stopped_runs_without_their_values(tmp_path):
    _write(tmp_path, "bn", 0, {"acc": 0.7})
    _write(tmp_path, "bn", 1, {"acc": 0.3}, stopped="time limit at step 100")
    _write(tmp_path, "bn", 2, {"acc": None}, stopped="diverged at step 7")
    (every,) = A.summarize(tmp_path)
    assert every["acc"] == pytest.approx(0.5) and every["acc_n"] == 2
    (done,) = A.summarize(tmp_path, finished=True)
    assert done["n"] == 3 and done["acc"] == 0.7 and done["acc_n"] == 1 and done["acc_std"] is None
    assert done["stopped"] == {"completed": 1, "time limit": 1, "diverged": 1}
    assert A.table([done], ["acc"]).splitlines()[2] == "| bn | 0.70 | 0.80 | 3 (1 time limit, 1 diverged) |"


def test_curve_bands_by_several_fields(tmp_path):
    for s in range(2):
        _write(tmp_path, "bn", s, {"acc": 0.5}, curves=[{"step": 1, "acc": 0.1 * (s + 1)}])
    bands = A.curve_bands(tmp_path, "acc", by=("name", "device"))
    assert list(bands) == ["bn (cpu)"] and bands["bn (cpu)"]["n"] == 2
    assert bands["bn (cpu)"]["mean"][0] == pytest.approx(0.15)


def test_compare_reads_a_paper_table_from_runs(tmp_path):
    from dnlib.configs import cifar as C
    for s, acc in enumerate([0.70, 0.74]):
        d = _write(tmp_path, "bn-star", s, {"final_acc": acc}, paper={"final_acc": 0.8179})
        rec = R.read_record(d)
        rec["config"]["dataset"] = "cifar10"
        R.write_record(d, rec)
    d = _write(tmp_path / "c100", "bn", 0, {"final_acc": 0.4})          # another dataset: not in Table 7's column
    rec = R.read_record(d)
    rec["config"]["dataset"] = "cifar100"
    R.write_record(d, rec)
    md = A.compare(tmp_path, "table7")
    lines = md.splitlines()
    assert lines[0] == "**Table 7: CIFAR-10 test accuracy**" and len(lines) == 4 + len(C.list_configs())
    assert f"| BN* | 0.7200 ± {np.std([0.70, 0.74], ddof=1):.4f} | 0.8179 | 2 |" in lines
    assert f"| BN | not run | {C.TABLE7['bn'][0]:.4f} | 0 |" in lines
    fig = A.compare_figure(tmp_path, "table10")
    assert len(fig.axes) == 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("not run") == len(C.TABLE10) - 1 and "—" in texts   # bn-star ran, without a Table 10 value
    with pytest.raises(ValueError, match="unknown table 'table8'"):
        A.paper_table("table8")


def test_committed_records_are_a_fresh_conversion_with_honest_provenance():
    import subprocess
    import sys
    root = R._REPO
    res = subprocess.run([sys.executable, "scripts/convert_results.py", "--check"], cwd=root, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = R.find_runs([root / "results/records"])
    assert {R.read_record(d)["experiment"] for d in runs} == {"cifar", "ptb", "sr"}
    for d in runs:
        rec = R.read_record(d)
        assert tuple(rec)[:len(R.RECORD_KEYS)] == R.RECORD_KEYS
        assert rec["git"] is None and rec["started"] is None and rec["host"] is None   # not recorded: null
        assert rec["converted_from"] and all((root / f).is_file() for f in rec["converted_from"])
        assert rec["notes"][0].startswith("converted from ")
        assert rec["device"]["name"] and rec["date"] == "2026-11-27"
    md = A.provenance_table(root / "results/records", where={"experiment": "cifar"})
    assert "CIFAR-10 (JPEG copy)" in md and "results/h100/cifar_summary.json" in md


def test_gather_verb_prints_mean_std_n_per_configuration(sweep, capsys):
    from dnlib import experiment
    from dnlib.cifar import RECIPE
    base, accs = sweep
    assert experiment.main(RECIPE, ["gather", str(base), "--out", str(base / "rows.json")]) == 0
    out = capsys.readouterr().out
    per_run, per_config = out.split("**per configuration: mean ± std over runs (n)**")
    assert per_run.count("| cifar |") == 9                     # every run's row, as before
    bn = f"| bn | {np.mean(accs['bn']):.4g} ± {np.std(accs['bn'], ddof=1):.4g} | 0.8 |"
    assert bn in per_config
    assert "| ln | 0.6 | 0.8 |" in per_config and "2 (1 diverged) |" in per_config
