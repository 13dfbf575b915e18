"""The notebook git filter that ``make setup`` installs (issue 15 item 7): a notebook saved in JupyterLab (outputs,
counts, timing metadata) is stored exactly in the repository's stripped form; committed notebooks pass unchanged."""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dnlib import suite

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "nbclean.py"
NOTEBOOKS = suite.discover()


def _clean(text: str) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT)], input=text.encode(), capture_output=True, check=True)
    return out.stdout.decode()


def _keep_output(cell) -> bool:
    return "keep_output" in cell.get("metadata", {}).get("tags", [])


def _without_kept_counts(nb: dict) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and _keep_output(cell):
            cell["execution_count"] = None
            for out in cell["outputs"]:
                out.pop("execution_count", None)
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_pass_the_filter_unchanged(path):
    text = path.read_text(encoding="utf-8")
    assert _clean(text) == text


@pytest.fixture(scope="module")
def saved_01():
    """Notebook 01 as JupyterLab saves it after "Run All": every cell numbered, outputs, timing metadata."""
    from nbclient import NotebookClient

    nb = nbformat.read(str(NOTEBOOKS[0]), as_version=nbformat.NO_CONVERT)
    NotebookClient(nb, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(NOTEBOOKS[0].parent)}}).execute()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nbformat.writes(nb) + "\n"


def test_a_saved_notebook_is_stored_in_the_stripped_form(saved_01):
    saved = json.loads(saved_01)
    assert sum(bool(c.get("outputs")) for c in saved["cells"] if c["cell_type"] == "code") > 3
    stored = json.loads(_clean(saved_01))
    committed = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    # everything but the kept cells' counts equals the committed file: outputs gone, ids and kept outputs kept
    assert _without_kept_counts(stored) == _without_kept_counts(committed)
    kept = [c for c in stored["cells"] if c["cell_type"] == "code" and _keep_output(c)]
    assert kept and all(isinstance(c["execution_count"], int) and c["outputs"] for c in kept)


def test_text_that_is_not_a_notebook_passes_through():
    assert _clean('{"cells": [') == '{"cells": ['


@pytest.mark.skipif(not (shutil.which("git") and shutil.which("make")), reason="needs git and make")
def test_make_setup_installs_the_filter_and_git_add_strips(tmp_path, saved_01):
    venv = Path(sys.executable).parent.parent
    make = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "git-filter", f"VENV={venv}"]
    plain = tmp_path / "plain"
    plain.mkdir()
    out = subprocess.run(make, cwd=plain, capture_output=True, text=True, check=True)
    assert "not a git checkout" in out.stdout
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(make, cwd=repo, capture_output=True, text=True, check=True)
    clean = subprocess.run(git + ["config", "filter.nbstripout.clean"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout
    assert "nbclean.py" in clean
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    (repo / "nb.ipynb").write_text(saved_01, encoding="utf-8")
    subprocess.run(git + ["add", ".gitattributes", "nb.ipynb"], cwd=repo, check=True)
    staged = subprocess.run(git + ["show", ":nb.ipynb"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert staged == _clean(saved_01) != saved_01
    status = subprocess.run(git + ["status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert "nb.ipynb" not in status.replace("A  nb.ipynb", "")   # the saved outputs do not show as a change
