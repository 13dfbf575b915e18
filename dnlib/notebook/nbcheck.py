"""Checks on executed notebooks, shared by the suite's tests and nbval's run of ``notebooks/``.

Layer: notebook tooling (imports nothing from dnlib). :func:`figure_problems` says what is wrong with the figures of
an executed notebook: a matplotlib ``Figure`` made without pyplot has no IPython formatter for ``image/png`` unless
the inline backend is active, and then shows as the text ``<Figure size 900x340 with 2 Axes>`` (04's perplexity
curves once did this in ``make run``, plain papermill and JupyterLab). ``notebooks/conftest.py`` runs it on the
outputs nbval collects, so ``make test`` executes each notebook once and checks its figures from that execution.
:func:`as_jupyterlab_saves` writes an executed notebook as JupyterLab saves it after "Run All"; the same conftest
checks that the git clean filter (``scripts/nbclean.py``) stores that save as the committed file.
"""
from __future__ import annotations

import copy
import re

__all__ = ["FIGURE_CALL", "FIGURE_TEXT", "LANGUAGE_INFO", "as_jupyterlab_saves", "figure_problems"]

#: A call that makes a figure: pyplot, or a function whose name says it draws.
FIGURE_CALL = re.compile(
    r"\b(?:plt|pyplot)\.\w+\(|\b\w*(?:figure|curves|crops|histogram|image_grid|feature_maps|draw_|plot|imshow)\w*\(")
#: How IPython shows a figure that has no image formatter.
FIGURE_TEXT = re.compile(r"<Figure size [^>]*>|\bFigure\(\d+x\d+\)")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def figure_problems(nb: dict) -> list[str]:
    """What is wrong with the figures of an executed notebook (empty when nothing is).

    - no output shows a figure as text (``<Figure size ...>`` or ``Figure(640x480)``) without an ``image/png``
      beside it;
    - every code cell that calls a plotting function (pyplot, or a name such as ``figure1``, ``draw_fields``,
      ``learning_curves``, ``compare_crops``, ``joint_histograms``, ``image_grid``) has an ``image/png`` output;
    - the notebook has at least one ``image/png`` output.
    """
    problems, pngs = [], 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs") or []
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


#: ``language_info`` as ipykernel 7 sends it and JupyterLab 4.6 saves it (captured from a save on this machine).
LANGUAGE_INFO = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                 "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                 "pygments_lexer": "ipython3", "version": "3.11.7"}


def as_jupyterlab_saves(nb: dict, first_count: int = 1, display_name: str = "Python 3 (ipykernel)") -> str:
    """``nb`` (a notebook dict, with or without outputs) as JupyterLab writes it after "Run All" in a kernel whose
    next count was ``first_count``: every code cell numbered in order (an ``execute_result`` too), the kernel's
    ``language_info`` and ``display_name``, the widget state; jupyter_server writes with ``nbformat.write``
    (indent 1, sorted keys, a trailing newline)."""
    import nbformat

    nb = copy.deepcopy(nb)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for count, cell in enumerate(code, first_count):
        cell["execution_count"] = count
        for out in cell.get("outputs", []):
            if out.get("output_type") == "execute_result":
                out["execution_count"] = count
    nb["metadata"]["language_info"] = copy.deepcopy(LANGUAGE_INFO)
    nb["metadata"]["kernelspec"]["display_name"] = display_name
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                               "version_minor": 0}}
    text = nbformat.writes(nbformat.from_dict(nb), version=nbformat.NO_CONVERT)
    return text if text.endswith("\n") else text + "\n"
