"""Numbers the reports show (sr_report, analysis_report, cifar_report, ptb_report): records built in tmp_path,
checked against naive reference computations."""
import json
import statistics
from pathlib import Path

import pytest

from dnlib.experiments import records as R

REPO = Path(__file__).resolve().parents[1]
_PROV = {"git": {"commit": "a" * 40, "dirty": False}, "versions": {"torch": "x"}, "device": {"name": "cpu"},
         "host": "h"}


def _copy_record(src: Path, dst: Path, **changes) -> Path:
    """A committed record written to ``dst`` with ``changes`` (``config``/``headline`` dicts are updated)."""
    rec = json.loads((src / R.RECORD_FILE).read_text())
    for k, v in changes.items():
        rec[k] = {**rec[k], **v} if isinstance(v, dict) and isinstance(rec.get(k), dict) else v
    dst.mkdir(parents=True)
    R.write_record(dst, rec)
    return dst


# ------------------------------------------------------------------------------------------------------- SR
def test_sr_report_does_not_put_runs_of_another_scale_in_the_first_runs_scale_table(tmp_path):
    from dnlib.experiments import sr_report
    src = REPO / "results/records/sr/fast-dn-star-h100"
    x4 = {"set5_psnr": 11.0, "set5_ssim": 0.11, "set14_psnr": 12.0, "set14_ssim": 0.12}
    _copy_record(src, tmp_path / "x3")
    _copy_record(src, tmp_path / "x4", seed=1, config={"scale": 4}, headline=x4)
    with pytest.raises(ValueError, match=r"scale.*3.*4"):
        sr_report.report(tmp_path, sets=("Set5",))
    out = sr_report.report(tmp_path, sets=("Set5",), scale=4)        # one scale at a time: that scale's runs only
    assert out["scale"] == 4 and list(out["runs"]) == ["fast-dn*"]
    assert out["runs"]["fast-dn*"]["seed"] == 1 and out["table"]["Set5"]["fast-dn*"]["psnr"] == 11.0
    # the command: one line naming the scales, exit 2; --scale picks one
    from dnlib.experiments import sr
    with pytest.raises(SystemExit) as e:
        sr.main(["report", str(tmp_path), "--sets", "Set5"])
    assert e.value.code == 2
    sr.main(["report", str(tmp_path), "--sets", "Set5", "--scale", "4"])
    saved = json.loads((tmp_path / "sr_results.json").read_text())
    assert saved["scale"] == 4 and saved["table"]["Set5"]["fast-dn*"]["psnr"] == 11.0


# ------------------------------------------------------------------------------------------------- analysis
_ANALYSIS = REPO / "results/records/analysis"


def _cpu_runs(base: Path, name: str = "batch-bn-b128") -> list:
    """The committed cpu-size runs of ``name`` (seeds 0-2) copied under ``base/cpu``; their test errors."""
    errs = []
    for s in range(3):
        d = _copy_record(_ANALYSIS / f"{name}-s{s}-cpu", base / "cpu" / f"{name}-s{s}")
        errs.append(R.read_record(d)["headline"]["test_err"])
    return errs


def test_analysis_load_does_not_pool_runs_of_another_size(tmp_path):
    from dnlib.experiments import analysis_report as ar
    errs = _cpu_runs(tmp_path)
    assert ar.stats(ar.load(tmp_path), "batch-bn-b128", "test_err")[0] == pytest.approx(statistics.mean(errs))
    # notebook 08's live point at the smoke size, newer, in a folder beside them (runs/analysis/notebook)
    _copy_record(_ANALYSIS / "batch-bn-b128-s0-cpu", tmp_path / "notebook" / "batch-bn-b128-s0",
                 started="2027-01-01T00:00:00+00:00", headline={"test_err": 0.9},
                 config={"size": "smoke", "steps": 4, "subset": [200, 100]})
    with pytest.raises(ValueError, match=r"batch-bn-b128.*size.*cpu.*smoke|batch-bn-b128.*size.*smoke.*cpu"):
        ar.load(tmp_path)
    assert ar.stats(ar.load(tmp_path / "cpu"), "batch-bn-b128", "test_err")[0] == pytest.approx(statistics.mean(errs))


def test_analysis_a_newer_unfinished_run_of_a_seed_does_not_replace_its_completed_run(tmp_path):
    from dnlib.experiments import analysis_report as ar
    errs = _cpu_runs(tmp_path)
    _copy_record(_ANALYSIS / "batch-bn-b128-s0-cpu", tmp_path / "rerun" / "batch-bn-b128-s0",
                 started="2027-01-01T00:00:00+00:00", stopped="time limit", steps_done=5,
                 headline={"test_err": 0.9})
    # seed 3 stopped by the time limit: its error is that of a fifth of the schedule, not a finished value
    _copy_record(_ANALYSIS / "batch-bn-b128-s0-cpu", tmp_path / "cpu" / "batch-bn-b128-s3", seed=3,
                 stopped="time limit", steps_done=5, headline={"test_err": 0.95})
    runs = ar.load(tmp_path)
    mean, std, n = ar.stats(runs, "batch-bn-b128", "test_err")
    assert (mean, std, n) == (pytest.approx(statistics.mean(errs)), pytest.approx(statistics.stdev(errs)), 3)
    assert [r["stopped"] for r in runs.records["batch-bn-b128"]] == ["completed"] * 3 + ["time limit"]


# ------------------------------------------------------------------------------------------- CIFAR and PTB
def _rows_of(md: str, label: str) -> list:
    return [line for line in str(md).splitlines() if f"| {label}" in line]


@pytest.mark.parametrize("experiment,src,label,key,fmt,values", [
    ("cifar", "cifar/bn-star-s0-h100", "**BN***", "final_acc", ".4f", {0.1: [0.70, 0.72], 0.05: [0.80, 0.83]}),
    ("ptb", "ptb/base-lstm-cpu", "base-lstm", "final_test_ppl", ".1f", {1.0: [150.0, 152.0], 0.5: [170.0, 174.0]})])
def test_results_table_says_how_rows_of_one_name_differ(tmp_path, experiment, src, label, key, fmt, values):
    """Runs of one name that differ in lr are kept apart (a warning says so): each row names its lr beside its own
    mean ± std (before: two rows with the same label and run as)."""
    import importlib
    report = importlib.import_module(f"dnlib.experiments.{experiment}_report")
    src = REPO / "results/records" / src
    name = src.name.rsplit("-", 1)[0].removesuffix("-s0")
    for lr, vals in values.items():
        for s, v in enumerate(vals):
            _copy_record(src, tmp_path / f"lr{lr}" / f"{name}-s{s}", seed=s, config={"lr": lr}, headline={key: v})
    with pytest.warns(UserWarning, match="not pooled"):
        md = report.results_table(tmp_path)
    rows = _rows_of(md, label)
    assert len(rows) == 2
    for lr, vals in values.items():
        row = [r for r in rows if f"lr {lr:g}" in r]
        assert len(row) == 1 and f"{statistics.mean(vals):{fmt}} ± {statistics.stdev(vals):{fmt}}" in row[0]


@pytest.mark.parametrize("experiment,src,label,key,fmt", [
    ("cifar", "cifar/bn-star-s0-h100", "**BN***", "final_acc", ".4f"),
    ("ptb", "ptb/base-lstm-cpu", "base-lstm", "final_test_ppl", ".1f")])
def test_results_table_averages_completed_runs_only(tmp_path, experiment, src, label, key, fmt):
    """A run stopped by the time limit (or still running) has the numbers of a shorter schedule: it counts in n and
    is named in the row, not averaged with the completed runs (before: its value was in the mean and std)."""
    import importlib
    report = importlib.import_module(f"dnlib.experiments.{experiment}_report")
    src = REPO / "results/records" / src
    name = src.name.rsplit("-", 1)[0].removesuffix("-s0")
    done = [0.80, 0.82] if experiment == "cifar" else [150.0, 152.0]
    for s, v in enumerate(done):
        _copy_record(src, tmp_path / f"{name}-s{s}", seed=s, stopped="completed", headline={key: v})
    _copy_record(src, tmp_path / f"{name}-s2", seed=2, stopped="time limit at step 10", steps_done=10,
                 headline={key: 0.3 if experiment == "cifar" else 400.0})
    (row,) = _rows_of(report.results_table(tmp_path), label)
    assert f"{statistics.mean(done):{fmt}} ± {statistics.stdev(done):{fmt}}" in row and "(1 time limit)" in row, row
    (s,) = report.summary(tmp_path)["runs"]
    assert s["n"] == 3 and s[key] == pytest.approx(statistics.mean(done)) and s[f"{key}_n"] == 2


def test_compare_says_which_runs_of_its_experiment_it_does_not_show(tmp_path):
    from dnlib.experiments import tables
    src = REPO / "results/records/cifar/bn-star-s0-h100"
    _copy_record(src, tmp_path / "bn-star-s0")
    for s in range(2):          # a configuration of the same experiment and data that is none of Table 7's rows
        _copy_record(src, tmp_path / f"my-bn-s{s}", name="my-bn", seed=s, config={"name": "my-bn", "lr": 0.3})
    md = str(tables.compare(tmp_path, "table7"))
    assert "| BN* | 0.7941 |" in md
    notes = [line for line in md.splitlines() if line.startswith("- ")]
    assert any("my-bn" in line and "2 runs" in line for line in notes), md


def test_sr_results_table_keeps_a_row_per_run_when_labels_repeat():
    """Two seeds of one SR row and a third run: one table row each, each with its own model's PSNR and the paper's
    number of its row (before: ``models_of`` keyed the models by label, so the first seed's model vanished, and the
    labels zipped with the runs paired the third run's row with the second seed's record)."""
    from dnlib.data import data_root
    from dnlib.experiments import sr, sr_report
    if not (data_root() / "sr" / "Set14").is_dir() and not (data_root() / "Set14").is_dir():
        pytest.skip("Set14 is not under the data root")
    cfg = sr.get_config("smoke", channels=(4, 4), batch_size=4)
    runs = [sr.run(norm, cfg, steps=2, eval_sets=(), device="cpu", progress=False, seed=seed)
            for norm, seed in (("none", 0), ("none", 1), ("bn", 0))]
    table = sr_report.results_table(runs, sets=("Set14",), bicubic=False)
    rows = {r["model"]: r for r in table.rows}
    assert list(rows) == ["SRCNN (seed 0)", "SRCNN (seed 1)", "BN"], list(rows)
    for label, run in zip(rows, runs):
        assert rows[label]["psnr"] == round(sr.evaluate_sr(run.model, "Set14", 3)["psnr"], 2), label
    assert rows["SRCNN (seed 0)"]["psnr"] != rows["SRCNN (seed 1)"]["psnr"]
    assert rows["SRCNN (seed 1)"]["paper_psnr"] == rows["SRCNN (seed 0)"]["paper_psnr"] is not None
    assert rows["BN"]["paper_psnr"] != rows["SRCNN (seed 0)"]["paper_psnr"]
    assert list(sr_report.summary(runs, table.rows)["runs"]) == list(rows)
