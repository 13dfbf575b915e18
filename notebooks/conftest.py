"""nbval's one execution of each notebook also checks its figures (``make test`` runs each notebook once).

nbval (``pytest --nbval-lax notebooks``) executes every code cell of a notebook as one test item and keeps what the
kernel sent back on the item (``test_outputs``). After a notebook's last cell this adds one more item,
``<notebook>::figures``, that rebuilds the executed notebook from those outputs and fails with
:func:`dnlib.notebook.nbcheck.figure_problems` (a figure shown as text, a plotting cell without an image, no image at
all). Before, ``tests/test_figures_render.py`` executed the whole suite a second time for this. A second item,
``<notebook>::stored_form``, writes that execution as JupyterLab saves it after "Run All" (outputs, counts, timing
metadata, ``language_info``, widget state) and checks that the git clean filter (``scripts/nbclean.py``) stores it as
the committed file, byte for byte (before, ``tests/test_nbclean.py`` executed 01 once more for this, on 01 alone).
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import json
from pathlib import Path

import pytest

from dnlib.notebook.nbcheck import as_jupyterlab_saves, figure_problems
from dnlib.notebook.suite import INLINE_BACKEND, kernel_environment

#: What a notebook's kernel gets in place of this process's environment (nbval's --nbval-current-env starts it with
#: that). ``make test`` exports MPLBACKEND=agg for the unit tests; a kernel gets the inline backend, as under ``make
#: run`` (dnlib.notebook.suite) and JupyterLab, so its figures are images and the figures check below sees what a
#: reader sees. tests/conftest.py's DNLIB_COMPILE=0 is for the unit tests (set per test), not the notebooks.
KERNEL_ENV = {"MPLBACKEND": INLINE_BACKEND}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """While a notebook item sets up (nbval starts the notebook's kernel as its first cell sets up), the environment
    holds :data:`KERNEL_ENV`; then it is put back, for the tests that share this process (``make test`` runs
    tests/ and the notebooks in one pytest run)."""
    with kernel_environment(KERNEL_ENV):
        yield


class FigureCheck(pytest.Item):
    """The figures of one notebook, as nbval's execution of its cells left them."""

    def __init__(self, *, cells, **kwargs):
        super().__init__(**kwargs)
        self.cells = cells

    def runtest(self):
        nb = {"cells": []}
        for item in self.cells:
            if item.test_outputs is None:
                pytest.skip(f"cell {item.cell_num} did not run (its own item reports why)")
            nb["cells"].append({"cell_type": "code", "source": item.cell.source, "outputs": item.test_outputs})
        problems = figure_problems(nb)
        assert not problems, f"{self.parent.name}: " + "; ".join(problems)

    def reportinfo(self):
        return self.path, None, f"{self.parent.name}::figures"


def _clean_filter():
    """``clean`` of scripts/nbclean.py (beside the ``dnlib`` that runs), the filter ``git add`` runs on a notebook."""
    import dnlib

    spec = importlib.util.spec_from_file_location("nbclean", Path(dnlib.__file__).parents[1] / "scripts" / "nbclean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.clean


#: What JupyterLab records per cell when it records timing (``recordTiming``), as nbclient's ``record_timing``.
TIMING = {"iopub.execute_input": "2026-12-06T10:00:00.000001Z", "iopub.status.busy": "2026-12-06T10:00:00.000000Z",
          "iopub.status.idle": "2026-12-06T10:00:01.000000Z", "shell.execute_reply": "2026-12-06T10:00:01.000000Z"}


class StoredFormCheck(FigureCheck):
    """The notebook as nbval's execution left it, saved as JupyterLab saves it, goes through the clean filter back
    to the committed file (``git status`` stays clean after Run All and save)."""

    def runtest(self):
        committed = self.path.read_text(encoding="utf-8")
        nb = json.loads(committed)
        ran = {}
        for item in self.cells:
            if item.test_outputs is None:
                pytest.skip(f"cell {item.cell_num} did not run (its own item reports why)")
            ran[item.cell.get("id")] = item.test_outputs
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and cell.get("id") in ran:
                cell["outputs"] = json.loads(json.dumps(ran[cell["id"]]))
                cell["metadata"]["execution"] = copy.deepcopy(TIMING)
        assert sum(bool(c.get("outputs")) for c in nb["cells"]) >= 1, f"{self.parent.name}: no outputs"
        stored = _clean_filter()(as_jupyterlab_saves(nb))
        if stored != committed:
            diff = difflib.unified_diff(committed.splitlines(), stored.splitlines(), "committed", "stored", lineterm="")
            pytest.fail(f"{self.parent.name}: Run All + save in JupyterLab stores another file (git status would "
                        f"show it modified):\n" + "\n".join(list(diff)[:40]), pytrace=False)

    def reportinfo(self):
        return self.path, None, f"{self.parent.name}::stored_form"


def pytest_collection_modifyitems(session, config, items):
    """Put a :class:`FigureCheck` and a :class:`StoredFormCheck` after the last cell of each notebook nbval
    collected."""
    out, cells = [], []
    for i, item in enumerate(items):
        out.append(item)
        if type(item).__name__ != "IPyNbCell":
            continue
        cells.append(item)
        following = items[i + 1] if i + 1 < len(items) else None
        if following is None or following.parent is not item.parent:
            out.append(FigureCheck.from_parent(item.parent, name="figures", cells=cells))
            out.append(StoredFormCheck.from_parent(item.parent, name="stored_form", cells=cells))
            cells = []
    items[:] = out
