"""A notebook cell's time limit under the suite (layer: notebook): how long one cell of a notebook may run on a
profile before :mod:`dnlib.notebook.suite` fails it (:func:`cell_limit`), derived on the profiles other than smoke
from the notebook's training schedule (:func:`schedule_steps`: its parameters and ``metadata.dnlib.schedule``)::

    from dnlib.notebook import limits
    limits.cell_limit("full", "notebooks/03_cifar.ipynb", {"steps": None})   # (seconds, how it was derived)
"""
from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .parameters import declared_parameters, read_notebook

#: The smoke profile's cell time limit (its cells take seconds; the training cells a few minutes on a CPU).
SMOKE_CELL_LIMIT = 600.0
#: The other profiles' cell time limit: CELL_FLOOR seconds plus, per training step of the notebook's schedule,
#: SECONDS_PER_STEP of the device kind its ``device`` parameter names ("auto": CUDA when there is one; "cpu" without
#: the parameter): generous bounds, tens of times what a step takes, so the limit only ends a cell that hangs.
CELL_FLOOR = 1800.0
SECONDS_PER_STEP = {"cuda": 0.1, "cpu": 5.0}
_RUN_LISTS = ("configs", "models")


def schedule_steps(path: str | Path, parameters: Mapping[str, Any]) -> tuple[int | None, str]:
    """``(training steps, how they were counted)`` of one execution of a notebook with ``parameters`` (the
    declared defaults fill in the rest), from its parameters and ``metadata.dnlib.schedule``:

    * runs: the length of its ``configs`` or ``models`` list parameter (1 without one), times that of ``seeds``
      when it is a list;
    * steps per run: the ``steps`` parameter when given (not None); else its ``epochs`` parameter times
      ``schedule["steps_per_epoch"]`` (at the notebook's full size); else ``schedule["steps"]`` (the schedule that
      ``steps = None`` means, its longest);
    * a notebook without ``steps`` or ``epochs`` parameters trains nothing: 0 steps.

    ``(None, why)`` when ``steps`` is None and the notebook declares no ``schedule``: the runner cannot know it."""
    values = {}
    for name, info in declared_parameters(path).items():
        try:
            values[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError, TypeError):
            values[name] = None
    values.update(parameters)
    schedule = read_notebook(path).get("metadata", {}).get("dnlib", {}).get("schedule", {})
    listed = next((n for n in _RUN_LISTS if isinstance(values.get(n), (list, tuple))), None)
    runs = len(values[listed]) if listed else 1
    seeds = values.get("seeds")
    runs *= len(seeds) if isinstance(seeds, (list, tuple)) else 1
    runs_text = f"{runs} run{'s' if runs != 1 else ''}" + (f" ({listed})" if listed else "")
    steps, epochs = values.get("steps"), values.get("epochs")
    if isinstance(steps, int) and steps > 0:
        return runs * steps, f"{runs_text} x {steps} steps"
    if isinstance(epochs, int) and "steps_per_epoch" in schedule:
        per = int(schedule["steps_per_epoch"])
        return runs * epochs * per, f"{runs_text} x {epochs} epochs x {per} steps (metadata.dnlib.schedule)"
    if "steps" in schedule:
        return runs * int(schedule["steps"]), f"{runs_text} x {int(schedule['steps'])} steps (metadata.dnlib.schedule)"
    if "steps" not in values and "epochs" not in values:
        return 0, "no training"
    return None, "steps = None and no metadata.dnlib.schedule to say what that schedule is"


def cell_limit(profile: str, path: str | Path | None = None,
               parameters: Mapping[str, Any] | None = None) -> tuple[float | None, str]:
    """``(seconds, how)``: the time a single cell of ``path`` may run on ``profile`` before it fails.

    Smoke: :data:`SMOKE_CELL_LIMIT`. Others: :data:`CELL_FLOOR` + :data:`SECONDS_PER_STEP` (of the device the
    ``device`` parameter names; ``auto``: CUDA when there is one) x :func:`schedule_steps`; every cell of the notebook
    gets it (the training cell
    needs it; the others end far sooner). None (no limit) when the schedule is unknown. ``how`` says which."""
    if profile == "smoke":
        return SMOKE_CELL_LIMIT, "the smoke profile's limit"
    if path is None:
        return CELL_FLOOR, f"the {profile} profile's floor"
    parameters = dict(parameters or {})
    steps, counted = schedule_steps(path, parameters)
    if steps is None:
        return None, counted
    if steps == 0:
        return CELL_FLOOR, f"the {profile} profile's floor: {counted}"
    device = str(parameters.get("device", declared_parameters(path).get("device", {}).get("default", "")))
    if "auto" in device:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if "cuda" in device else "cpu"
    rate = SECONDS_PER_STEP[kind]
    return CELL_FLOOR + rate * steps, f"{CELL_FLOOR:.0f} s + {rate:g} s x {steps} steps on {kind}: {counted}"


def default_cell_timeout(profile: str, path: str | Path | None = None,
                         parameters: Mapping[str, Any] | None = None) -> float | None:
    """Seconds a single cell may run before it counts as failed (:func:`cell_limit`; None: no limit)."""
    return cell_limit(profile, path, parameters)[0]
