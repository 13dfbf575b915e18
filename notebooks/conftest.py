"""nbval's one execution of each notebook also checks its figures (``make test`` runs each notebook once).

nbval (``pytest --nbval-lax notebooks``) executes every code cell of a notebook as one test item and keeps what the
kernel sent back on the item (``test_outputs``). After a notebook's last cell this adds one more item,
``<notebook>::figures``, that rebuilds the executed notebook from those outputs and fails with
:func:`dnlib.notebook.nbcheck.figure_problems` (a figure shown as text, a plotting cell without an image, no image at all).
Before, ``tests/test_figures_render.py`` executed the whole suite a second time for this.
"""
from __future__ import annotations

import os

import pytest

from dnlib.notebook.nbcheck import figure_problems

# The kernels nbval starts inherit this process's environment (--nbval-current-env). ``make test`` exports
# MPLBACKEND=agg for the unit tests; a notebook kernel gets the inline backend, as under ``make run`` (dnlib.notebook.suite)
# and JupyterLab, so its figures are images and the figures check below sees what a reader sees.
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"


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


def pytest_collection_modifyitems(session, config, items):
    """Put a :class:`FigureCheck` after the last cell of each notebook nbval collected."""
    out, cells = [], []
    for i, item in enumerate(items):
        out.append(item)
        if type(item).__name__ != "IPyNbCell":
            continue
        cells.append(item)
        following = items[i + 1] if i + 1 < len(items) else None
        if following is None or following.parent is not item.parent:
            out.append(FigureCheck.from_parent(item.parent, name="figures", cells=cells))
            cells = []
    items[:] = out
