"""`make report` (scripts/report.py): a suite run's executed notebooks rendered to HTML with an index."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "report.py"


def _module():
    spec = importlib.util.spec_from_file_location("report_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_suite(base: Path) -> Path:
    """runs/smoke/suite-<time>/01_tiny/01_tiny.ipynb, really executed, and the suite's summary.json."""
    suite = base / "smoke" / "suite-20261130T090000.000Z"
    (suite / "01_tiny").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 · A tiny lesson\n\ntext"),
                                         nbformat.v4.new_code_cell("print('hello from the kernel', 6 * 7)")],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    nbformat.write(nb, suite / "01_tiny" / "01_tiny.ipynb")
    (suite / "summary.json").write_text(json.dumps([{"notebook": "01_tiny.ipynb", "status": "ok", "seconds": 1.25}]))
    return suite


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
    assert sorted(p.name for p in out.iterdir()) == ["01_tiny.html", "index.html"]


def test_newest_suite_over_profiles_and_no_suite_is_an_error(tmp_path):
    mod = _module()
    for folder in ("smoke/suite-20261130T080000.000Z", "full/suite-20261130T090000.000Z",
                   "smoke/suite-20261130T085959.999Z"):
        (tmp_path / folder).mkdir(parents=True)
    assert mod.newest_suite(tmp_path) == tmp_path / "full/suite-20261130T090000.000Z"
    res = subprocess.run([sys.executable, str(SCRIPT), "--runs", str(tmp_path / "empty")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "no suite run" in res.stderr and res.stderr.count("\n") == 1


# ------------------------------------------------------------ `<experiment> report DIR`: one behaviour for all three
def test_cifar_report_takes_a_sweep_folder_as_ptb_and_sr_report_do(tmp_path):
    """`cifar report runs/cifar/sweep` was refused ("nothing to report") while sr/ptb report take a sweep folder."""
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(ROOT / "results" / "records" / "cifar", sweep)        # four CIFAR run folders
    res = subprocess.run([sys.executable, "-m", "dnlib.cifar", "report", str(sweep)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rep = json.loads((sweep / "summary.json").read_text())
    assert sorted(r["config"] for r in rep["runs"]) == ["base", "bn", "bn-star", "dn-star"]
    table = (sweep / "table.md").read_text()
    assert "| **BN*** | 0.7941 | 0.8179 |" in table and rep["device"] == "NVIDIA H100 80GB HBM3"


def test_a_folder_without_runs_is_refused_alike_by_every_report_verb(tmp_path):
    (tmp_path / "empty").mkdir()
    for experiment in ("cifar", "ptb", "sr"):
        res = subprocess.run([sys.executable, "-m", f"dnlib.{experiment}", "report", str(tmp_path / "empty")],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (experiment, res.stderr)
        assert f"no run folders of {experiment}" in res.stderr, res.stderr
