"""The figure checker (issue 15 item 1): :func:`dnlib.notebook.nbcheck.figure_problems` on synthetic notebooks.

The repository's notebooks are checked from nbval's one execution of them (``notebooks/conftest.py`` adds a
``<notebook>::figures`` item after each notebook's cells), so ``make test`` no longer executes the suite a second time
here. These tests show the checker flags what it must: a figure shown as text (a ``Figure`` made without pyplot, run
for real through :func:`dnlib.notebook.suite.execute`), a plotting cell without an image, a notebook without any image.
"""
import json

import nbformat
import pytest

from dnlib.notebook import suite
from dnlib.notebook.nbcheck import figure_problems

# -------------------------------------------------------------------------------- the checker itself
_SYNTHETIC = [
    # what 04 did: a Figure built without pyplot, shown before the inline backend is loaded -> text only
    "import matplotlib.figure\nfig = matplotlib.figure.Figure(figsize=(9, 3.4))\n"
    "fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)\nfig",
    # a pyplot figure renders as image/png under the suite's inline backend
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 2, 3])\nfig",
    "print('no figure here')",
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthetic")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("n: int = 1  # unused")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in _SYNTHETIC]
    nbformat.write(nb, str(tmp / "99_figures.ipynb"))
    record = suite.execute(tmp / "99_figures.ipynb", tmp / "out" / "99_figures.ipynb", {}, progress=False)
    assert record.status == "ok", record.error
    return json.loads((tmp / "out" / "99_figures.ipynb").read_text())


@pytest.mark.slow
def test_checker_flags_a_figure_shown_as_text(synthetic):
    bare, drawn = synthetic["cells"][1], synthetic["cells"][2]
    assert "<Figure size 900x340 with 2 Axes>" in json.dumps(bare["outputs"])   # the reported symptom, reproduced
    assert not any("image/png" in o.get("data", {}) for o in bare["outputs"])
    assert any("image/png" in o.get("data", {}) for o in drawn["outputs"])
    assert figure_problems(synthetic) == [
        "cell 1: a figure shown as the text '<Figure size 900x340 with 2 Axes>', no image/png",
        "cell 1: calls 'add_subplot(' but has no image/png output"]


def test_checker_flags_a_plotting_cell_without_image_and_a_notebook_without_any():
    nb = {"cells": [
        {"cell_type": "code", "source": "figures.figure1()", "outputs": []},
        {"cell_type": "code", "source": "x = 1", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "Figure(640x480)\n"}]},
        {"cell_type": "markdown", "source": "plot_curves( in markdown is not code"},
    ]}
    assert figure_problems(nb) == ["cell 0: calls 'figure1(' but has no image/png output",
                                   "cell 1: a figure shown as the text 'Figure(640x480)', no image/png",
                                   "no image/png output in the notebook"]


@pytest.mark.slow
def test_nbval_run_checks_each_notebooks_figures(tmp_path):
    """notebooks/conftest.py under real nbval: a notebook whose figure shows as text fails its ``::figures`` item,
    a good one passes, and each is executed once (one item per code cell plus a figures and a stored_form item;
    both stored in the clean filter's form, so their stored_form items pass)."""
    import importlib.util
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    spec = importlib.util.spec_from_file_location("nbclean", root / "scripts" / "nbclean.py")
    nbclean = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbclean)
    for name, cells in [("bad", _SYNTHETIC[:1]), ("good", _SYNTHETIC[1:])]:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}                # as the repository's notebooks
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        (tmp_path / f"{name}.ipynb").write_text(nbclean.clean(nbformat.writes(nb)), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "--nbval-lax", "--nbval-current-env",
                           "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 6 passed" in out, out
    assert "bad.ipynb: cell 0: a figure shown as the text '<Figure size 900x340 with 2 Axes>'" in out, out
    assert "PASSED good.ipynb::figures" in out or "good.ipynb::figures PASSED" in out, out
    assert "PASSED good.ipynb::stored_form" in out and "PASSED bad.ipynb::stored_form" in out, out
