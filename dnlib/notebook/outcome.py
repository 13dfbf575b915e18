"""What one execution of a notebook by :mod:`dnlib.notebook.suite` did (layer: notebook): the value of every
declared parameter it ran with (:func:`run_parameters`, what its run record holds), the code cells it never
executed (:func:`unexecuted_cells`; :func:`stopped_early` says which cell stopped it: papermill takes a
``SystemExit`` of 0 or no value for an early exit and reports success), whether its cells call ``save_results``
(:func:`calls_save_results`) and a failed cell in words (:func:`describe_failure`)::

    from dnlib.notebook import outcome
    outcome.run_parameters("notebooks/03_cifar.ipynb", {"steps": 20})   # every declared parameter, steps = 20
"""
from __future__ import annotations

import ast
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .parameters import cell_source, declared_parameters, read_notebook

__all__ = ["run_parameters", "unexecuted_cells", "stopped_early", "calls_save_results", "describe_failure"]

#: The tag of a cell nbclient does not execute.
SKIP_TAG = "skip-execution"


def run_parameters(path: str | Path, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter ``path`` declares, in its parameters cell's order, with the value a run given
    ``parameters`` (a profile's values and ``-p`` overrides, as resolved) uses: the given one, else the declared
    default (the cell's literal; its text when it is not one)."""
    values = {}
    for name, info in declared_parameters(path).items():
        try:
            values[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError, TypeError):
            values[name] = info["default"]
    values.update(parameters)
    return values


def _first_line(cell: Mapping[str, Any]) -> str:
    lines = cell_source(cell).strip().splitlines()
    return (lines[0] if lines else "")[:80]


def unexecuted_cells(nb: Mapping[str, Any]) -> list[int]:
    """The indices of the code cells of an executed notebook that never ran: no ``execution_count``, though they
    have code and no ``skip-execution`` tag (cells nbclient does not execute)."""
    return [i for i, c in enumerate(nb.get("cells", []))
            if c.get("cell_type") == "code" and c.get("execution_count") is None and cell_source(c).strip()
            and SKIP_TAG not in c.get("metadata", {}).get("tags", [])]


def stopped_early(path: str | Path, output: str | Path) -> str | None:
    """None when every code cell of the executed copy ``output`` ran, else why not in words, naming the cell that
    stopped the run (the last that ran before the first that did not) and the cells that never ran."""
    nb = read_notebook(output)
    missing = unexecuted_cells(nb)
    if not missing:
        return None
    cells = nb.get("cells", [])
    ran = [i for i, c in enumerate(cells[:missing[0]]) if c.get("cell_type") == "code" and c.get("execution_count")]
    cause = "the run stopped before any cell"
    if ran:
        last = cells[ran[-1]]
        errors = [o for o in last.get("outputs", []) if o.get("output_type") == "error"]
        raised = (f" raised {errors[-1].get('ename')}: {errors[-1].get('evalue')!r}, which papermill takes for an "
                  "early exit and reports as success" if errors else " was the last to run")
        cause = f"cell {ran[-1]} (`{_first_line(last)}`){raised}"
    never = f"cell{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
    return f"{Path(path).name}: stopped early: {cause}; {never} never ran; executed copy: {output}"


def calls_save_results(path: str | Path) -> bool:
    """Whether a notebook's code cells call ``save_results(``: the suite then expects its ``results.json`` and fails
    a run that completes without one (its headline would be lost without a word)."""
    return any(c.get("cell_type") == "code" and "save_results(" in cell_source(c)
               for c in read_notebook(path).get("cells", []))


def describe_failure(path: Path, exc: Exception, output: Path, limit: str | None = None) -> str:
    """A failed execution of ``path`` in one line: the cell (index in the executed copy ``output``, and its first
    line when it was stopped at the cell time ``limit``), what it raised, and where the executed copy is."""
    from nbclient.exceptions import CellTimeoutError

    from .stall import CellStalled

    cell = getattr(exc, "cell_index", None)
    count = getattr(exc, "exec_count", None)
    cells = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        cells = json.loads(output.read_text())["cells"]
    if cell is None:  # e.g. a cell timeout: the last cell papermill started in the executed copy
        started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
        cell = started[-1] if started else None
    if isinstance(exc, CellTimeoutError) and not isinstance(exc, CellStalled) and cell is not None \
            and cell < len(cells):
        ran = cells[cell].get("metadata", {}).get("papermill", {}).get("duration")
        ran = f"ran {ran:.0f} s and " if isinstance(ran, (int, float)) else ""
        return (f"{path.name}: cell {cell} (`{_first_line(cells[cell])}`) {ran}was stopped at the cell time limit"
                f"{f' of {limit}' if limit else ''}; executed copy: {output}")
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {cell}" if cell is not None else "a cell"
    if count is not None:
        where += f" (In [{count}])"
    return f"{path.name}: {where} raised {ename}: {evalue}; executed copy with the traceback: {output}"
