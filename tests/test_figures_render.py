"""Figures render as images in the executed notebooks (issue 15 item 1).

A matplotlib ``Figure`` made without pyplot has no IPython formatter for ``image/png`` unless the inline backend is
active, and then shows as the text ``<Figure size 900x340 with 2 Axes>`` (04's perplexity curves did this in
``make run``, plain papermill and JupyterLab). This executes every notebook once with the smoke profile through
``dnlib.suite.run`` and checks the executed copies with :func:`figure_problems`:

- no output shows a figure as text (``<Figure size ...>`` or ``Figure(640x480)``) without an ``image/png`` beside it;
- every code cell that calls a plotting function (pyplot, or a name such as ``figure1``, ``draw_fields``,
  ``learning_curves``, ``compare_crops``, ``joint_histograms``, ``image_grid``) has an ``image/png`` output;
- every notebook has at least one ``image/png`` output.
"""
import json
import re
from pathlib import Path

import nbformat
import pytest

from dnlib import suite

#: A call that makes a figure: pyplot, or a function whose name says it draws.
FIGURE_CALL = re.compile(
    r"\b(?:plt|pyplot)\.\w+\(|\b\w*(?:figure|curves|crops|histogram|image_grid|feature_maps|draw_|plot|imshow)\w*\(")
#: How IPython shows a figure that has no image formatter.
FIGURE_TEXT = re.compile(r"<Figure size [^>]*>|\bFigure\(\d+x\d+\)")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def figure_problems(nb: dict) -> list[str]:
    """What is wrong with the figures of an executed notebook (empty when nothing is)."""
    problems, pngs = [], 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        has_png = any("image/png" in o.get("data", {}) for o in outputs)
        pngs += has_png
        for out in outputs:
            data = out.get("data", {})
            shown = FIGURE_TEXT.search(_text(data.get("text/plain")) + _text(out.get("text")))
            if shown and "image/png" not in data and not (out["output_type"] == "stream" and has_png):
                problems.append(f"cell {i}: a figure shown as the text {shown.group(0)!r}, no image/png")
        call = FIGURE_CALL.search(_text(cell.get("source")))
        if call and not has_png:
            problems.append(f"cell {i}: calls {call.group(0)!r} but has no image/png output")
    if not pngs:
        problems.append("no image/png output in the notebook")
    return problems


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


# ------------------------------------------------------------------------- the repository's notebooks
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Every notebook executed once with the smoke profile: ``{name: RunRecord}``."""
    try:
        records = suite.run(profile="smoke", out_dir=tmp_path_factory.mktemp("smoke"), progress=False)
    except suite.NotebookFailed as exc:
        records = exc.records
    return {Path(r.notebook).stem: r for r in records}


NOTEBOOKS = [p.stem for p in suite.discover()]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_renders_as_an_image(smoke_run, name):
    record = smoke_run[name]
    assert record.status == "ok", record.error
    problems = figure_problems(json.loads(Path(record.output).read_text()))
    assert not problems, f"{name}: " + "; ".join(problems)
