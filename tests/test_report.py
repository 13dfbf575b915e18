"""`make report` (scripts/report.py): a suite run's executed notebooks rendered to HTML with an index."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow   # interpreters, kernels or compilation: make check skips it

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "report.py"


def _module():
    spec = importlib.util.spec_from_file_location("report_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_suite(base: Path, stamp: str = "20261130T090000.000Z", finished: bool = True) -> Path:
    """runs/smoke/suite-<time>/01_tiny/01_tiny.ipynb, really executed, its results.json and the suite's
    summary.json (a finished suite run; ``finished=False``: as a running `make run` leaves it, no summary)."""
    suite = base / "smoke" / f"suite-{stamp}"
    (suite / "01_tiny").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 · A tiny lesson\n\ntext with a formula $y = x^2 / \\sigma$"),
        nbformat.v4.new_code_cell('steps: int = 40  # training steps\nsource: str = "paper"  # which side',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("steps = 60", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print('hello from the kernel', 6 * 7)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    nbformat.write(nb, suite / "01_tiny" / "01_tiny.ipynb")
    (suite / "01_tiny" / "results.json").write_text(json.dumps(
        {"runs": [{"name": "bn-star", "final_acc": 0.2031, "seed": 0}], "sparsity": 0.5, "note": "text"}))
    if finished:
        (suite / "summary.json").write_text(json.dumps([{"notebook": "01_tiny.ipynb", "status": "ok",
                                                         "seconds": 1.25}]))
    return suite


_REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc=[\"']?(https?:)?//|<script[^>]*>[^<]*https?://", re.I)


def test_report_renders_every_executed_notebook_and_an_index(tmp_path):
    suite = _fake_suite(tmp_path / "runs")
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(SCRIPT), "--suite", str(suite), "--out", str(out), "--no-results"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (out / "01_tiny.html").read_text()
    assert "hello from the kernel 42" in page and "A tiny lesson" in page      # the executed output, rendered
    index = (out / "index.html").read_text()
    assert 'href="01_tiny.html"' in index and "01 · A tiny lesson" in index and ">ok<" in index and "1.2" in index
    assert sorted(p.name for p in out.iterdir()) == ["01_tiny.html", "01_tiny.results.json", "index.html",
                                                     "mathjax"]


def test_the_report_works_offline_mathjax_bundled_and_no_script_from_the_web(tmp_path):
    """The HTML loaded MathJax from a CDN (offline every formula was raw TeX) and require.js from the web."""
    suite = _fake_suite(tmp_path / "runs")
    out = tmp_path / "report"
    assert _module().main(["--suite", str(suite), "--out", str(out), "--no-results"]) == 0
    page = (out / "01_tiny.html").read_text()
    assert not _REMOTE_SCRIPT.search(page), _REMOTE_SCRIPT.search(page).group(0)
    src = re.search(r'<script[^>]*src="(mathjax/MathJax\.js[^"]*)"', page)
    assert src and (out / src.group(1).split("?")[0]).is_file()          # the bundled file, beside the page
    assert "config=TeX-AMS-MML_HTMLorMML-full" in src.group(1)               # a configuration the bundle has
    assert (out / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    assert (out / "mathjax" / "jax" / "output" / "HTML-CSS").is_dir()
    assert "$y = x^2 / \\sigma$" in page                                     # the TeX MathJax typesets


def test_the_index_lists_parameters_and_headline_numbers(tmp_path):
    suite = _fake_suite(tmp_path / "runs")
    out = tmp_path / "report"
    assert _module().main(["--suite", str(suite), "--out", str(out), "--no-results"]) == 0
    index = (out / "index.html").read_text()
    assert "<code>steps = 60</code>" in index and "<code>source = &quot;paper&quot;</code>" in index
    assert "<code>runs[bn-star].final_acc 0.2031</code>" in index and "<code>sparsity 0.5</code>" in index
    assert "seed" not in index.split("<th>executed</th>")[1]                # settings are not headline numbers


def test_newest_finished_suite_over_profiles_unfinished_skipped_and_named(tmp_path):
    mod = _module()
    for folder in ("smoke/suite-20261130T080000.000Z", "full/suite-20261130T090000.000Z",
                   "smoke/suite-20261130T085959.999Z", "smoke/suite-20261130T093000.000Z"):
        (tmp_path / folder).mkdir(parents=True)
        if not folder.endswith("093000.000Z"):
            (tmp_path / folder / "summary.json").write_text("[]")
    assert mod.newest_suite(tmp_path) == (tmp_path / "full/suite-20261130T090000.000Z",
                                          [tmp_path / "smoke/suite-20261130T093000.000Z"])
    res = subprocess.run([sys.executable, str(SCRIPT), "--runs", str(tmp_path / "empty")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "no suite run" in res.stderr and res.stderr.count("\n") == 1


def test_a_half_written_suite_run_is_skipped_and_a_half_written_notebook_named(tmp_path):
    """make report crashed with a traceback on a half-written suite folder, and took a folder that a running
    make run was still writing."""
    runs = tmp_path / "runs"
    done = _fake_suite(runs, "20261130T090000.000Z")
    running = _fake_suite(runs, "20261130T100000.000Z", finished=False)
    (running / "02_half").mkdir()
    (running / "02_half" / "02_half.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')
    res = subprocess.run([sys.executable, str(SCRIPT), "--runs", str(runs), "--no-results"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"report: skipped {running}: unfinished" in res.stderr and "Traceback" not in res.stderr
    assert (done / "report" / "index.html").is_file() and not (running / "report").exists()
    assert f"Skipped {running}: unfinished" in (done / "report" / "index.html").read_text()
    # asked for by name, the unfinished run is rendered as far as it goes: the half notebook is named, not a crash
    res = subprocess.run([sys.executable, str(SCRIPT), "--suite", str(running), "--no-results"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "02_half: unreadable (" in res.stdout and "01_tiny: executed ->" in res.stdout
    index = (running / "report" / "index.html").read_text()
    assert "has no summary.json" in index and "unreadable" in index


def test_results_dir_puts_your_runs_in_06_and_the_report(tmp_path):
    """make report rendered the suite's 06, which reads the committed results/records: --results DIR (make report
    RESULTS=DIR) executes 06 on DIR."""
    suite = _fake_suite(tmp_path / "runs")
    mine = tmp_path / "sweep"
    shutil.copytree(ROOT / "results" / "records" / "cifar" / "bn-star-s0-h100", mine / "bn-star-s0")
    rec = json.loads((mine / "bn-star-s0" / "record.json").read_text())
    rec["config"]["steps"], rec["steps_planned"], rec["steps_done"] = 40, 40, 40
    rec["headline"] = {"final_acc": 0.2031}
    (mine / "bn-star-s0" / "record.json").write_text(json.dumps(rec))
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(SCRIPT), "--suite", str(suite), "--out", str(out), "--results",
                          str(mine)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (out / "06_results.html").read_text()
    assert "0.2031" in page and "40 of the paper" in page and "80,000 steps" in page
    assert "0.7941" not in page                                      # the committed BN* run is not in DIR
    index = (out / "index.html").read_text()
    assert f"results_dir={mine}" in index and f"06_results reads {mine}" in index
    bad = subprocess.run([sys.executable, str(SCRIPT), "--suite", str(suite), "--results", str(tmp_path / "no")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("report: error: --results:") and bad.stderr.count("\n") == 1


# ------------------------------------------------------------ `<experiment> report DIR`: one behaviour for all three
def test_cifar_report_takes_a_sweep_folder_as_ptb_and_sr_report_do(tmp_path):
    """`cifar report runs/cifar/sweep` was refused ("nothing to report") while sr/ptb report take a sweep folder."""
    sweep = tmp_path / "sweep"
    shutil.copytree(ROOT / "results" / "records" / "cifar", sweep)        # four CIFAR run folders
    res = subprocess.run([sys.executable, "-m", "dnlib.experiments.cifar", "report", str(sweep)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rep = json.loads((sweep / "summary.json").read_text())
    assert sorted(r["config"] for r in rep["runs"]) == ["base", "bn", "bn-star", "dn-star"]
    table = (sweep / "table.md").read_text()
    assert "| **BN*** | 0.7941 | 0.8179 |" in table and rep["device"] == "NVIDIA H100 80GB HBM3"


def test_a_folder_without_runs_is_refused_alike_by_every_report_verb(tmp_path):
    (tmp_path / "empty").mkdir()
    for experiment in ("cifar", "ptb", "sr"):
        res = subprocess.run([sys.executable, "-m", f"dnlib.experiments.{experiment}", "report",
                              str(tmp_path / "empty")], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (experiment, res.stderr)
        assert f"no run folders of {experiment}" in res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_report_results_passes_the_folder_on():
    res = subprocess.run(["make", "-n", "report", "RESULTS=runs/cifar/my sweep"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert 'scripts/report.py --results "runs/cifar/my sweep"' in res.stdout, res.stdout + res.stderr
    res = subprocess.run(["make", "-n", "report"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "scripts/report.py" in res.stdout and "--results" not in res.stdout


@pytest.mark.parametrize("experiment, summary_file", [("ptb", "summary.json"), ("sr", "sr_results.json")])
def test_ptb_and_sr_report_the_committed_records(tmp_path, experiment, summary_file):
    """`ptb report` / `sr report` over a copy of results/records/<experiment> ended in KeyError tracebacks
    ('eval_every', 'train_set'): the converted records lack fields that runs made by the runner have."""
    runs = tmp_path / experiment
    shutil.copytree(ROOT / "results" / "records" / experiment, runs)
    res = subprocess.run([sys.executable, "-m", f"dnlib.experiments.{experiment}", "report", str(runs)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rep = json.loads((runs / summary_file).read_text())
    reported = rep["runs"] if experiment == "sr" else rep
    assert len(reported) == len([d for d in runs.iterdir() if (d / "record.json").is_file()])   # none lost


def test_cifar_report_selects_the_runs_of_its_dataset_and_refuses_one_the_folder_lacks(tmp_path, capsys):
    """`cifar report DIR --dataset cifar100` printed the CIFAR-10 table, exit 0 (the flag only fed the Table 7
    estimate): the report takes the runs of its dataset (config.dataset) and refuses a dataset no run has."""
    from dnlib.experiments import cifar, cifar_report
    sweep = tmp_path / "sweep"
    shutil.copytree(ROOT / "results" / "records" / "cifar", sweep)        # four CIFAR-10 run folders
    with pytest.raises(SystemExit) as e:
        cifar.main(["report", str(sweep), "--dataset", "cifar100"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "cifar100: no run in" in err and "cifar10" in err, err
    assert not (sweep / "summary.json").exists()
    rec = json.loads((sweep / "bn-s0-h100" / "record.json").read_text())
    rec["config"] = {**rec["config"], "dataset": "cifar100",
                     "setup": {**rec["config"]["setup"], "data": "CIFAR-100 (JPEG copy)"}}
    (sweep / "bn-s0-h100" / "record.json").write_text(json.dumps(rec))
    for dataset, configs, data in [("cifar10", ["base", "bn-star", "dn-star"], "CIFAR-10"), ("cifar100", ["bn"],
                                                                                              "CIFAR-100")]:
        rep = cifar_report.report(sweep, dataset)
        assert rep["dataset"] == dataset and sorted(r["config"] for r in rep["runs"]) == configs
        rows = rep["table"].splitlines()[2:]
        assert len(rows) == len(configs) and all(line.startswith(f"| {data} (JPEG copy) |") for line in rows), rows
    # no --dataset: the folder's own when its runs are on one (a CIFAR-100-only folder was refused), else name one
    with pytest.raises(ValueError, match="holds runs on cifar10, cifar100: name the one"):
        cifar_report.report(sweep)
    for name in ("base", "bn-star", "dn-star"):
        shutil.rmtree(sweep / f"{name}-s0-h100")
    assert cifar_report.report(sweep)["dataset"] == "cifar100"
