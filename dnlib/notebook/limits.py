"""A notebook cell's time limit under the suite (layer: notebook): how long one cell of a notebook may run on a
profile before :mod:`dnlib.notebook.suite` fails it (:func:`cell_limit`), derived on the profiles other than smoke
from the notebook's training schedule (:func:`schedule_steps`: its parameters and ``metadata.dnlib.schedule``, which
may name the recipe whose configurations a list parameter runs, as notebook 08's ``live_configs``)::

    from dnlib.notebook import limits
    limits.cell_limit("full", "notebooks/03_cifar.ipynb", {"steps": None})   # (seconds, how it was derived)
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .outcome import run_parameters
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
    * a notebook whose cells train a recipe's configurations named by a list parameter declares them:
      ``schedule = {"recipe": "dnlib.experiments.analysis.RECIPE", "configs": "live_configs",
      "config_parameters": ["size"]}`` (:func:`recipe_steps`: the steps of each configuration, groups expanded, at
      those parameters' values, times the seeds);
    * a notebook without ``steps`` or ``epochs`` parameters and no such schedule trains nothing: 0 steps.

    ``(None, why)`` when ``steps`` is None and the notebook declares no ``schedule``: the runner cannot know it.
    A ValueError naming the notebook when its ``schedule`` is not one of these."""
    values = run_parameters(path, parameters)
    schedule = read_notebook(path).get("metadata", {}).get("dnlib", {}).get("schedule", {})
    if "recipe" in schedule:
        return recipe_steps(path, values, schedule)
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
        return 0, "no training (no steps or epochs parameter, no metadata.dnlib.schedule)"
    return None, "steps = None and no metadata.dnlib.schedule to say what that schedule is"


def recipe_steps(path: str | Path, values: Mapping[str, Any], schedule: Mapping[str, Any]) -> tuple[int, str]:
    """``(training steps, how they were counted)`` of a notebook whose ``metadata.dnlib.schedule`` names the recipe
    (``"recipe"``: a dnlib module's recipe object, ``"dnlib.experiments.analysis.RECIPE"``) whose configurations
    its list parameter ``"configs"`` runs, once per seed of its ``seeds`` list (1 without one): the sum over the
    configurations (the recipe's groups, such as ``"all"``, expanded) of ``recipe.config(name, **those).steps``,
    ``those`` the values of the parameters ``"config_parameters"`` names (None ones left out), times the seeds.
    ``values``: every declared parameter's value. A ValueError naming the notebook for a schedule that is not so."""
    where = f"{Path(path).name}: metadata.dnlib.schedule"
    spec, listed = schedule.get("recipe"), schedule.get("configs")
    module, _, attr = str(spec).rpartition(".")
    if not module.startswith("dnlib") or not attr.isidentifier():
        raise ValueError(f"{where}: recipe {spec!r} must name a dnlib module's recipe, "
                         "e.g. 'dnlib.experiments.analysis.RECIPE'")
    if not isinstance(values.get(listed), (list, tuple)):
        raise ValueError(f"{where}: configs {listed!r} is not a declared list parameter; declared: "
                         f"{', '.join(values) or 'none'}")
    passed = schedule.get("config_parameters", [])
    unknown = [n for n in passed if n not in values] if isinstance(passed, list) else [passed]
    if unknown:
        raise ValueError(f"{where}: config_parameters: {unknown[0]!r} is not a declared parameter (a list of "
                         f"declared parameters is allowed: {', '.join(values) or 'none'})")
    try:
        recipe = getattr(importlib.import_module(module), attr)
        names = recipe.expand(list(values[listed]))
        kwargs = {n: values[n] for n in passed if values[n] is not None}
        per_seed = sum(int(recipe.config(n, **kwargs).steps) for n in names)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: recipe {spec!r} could not count the steps of {listed} = "
                         f"{values[listed]!r}: {exc}") from None
    seeds = values.get("seeds")
    seeds = len(seeds) if isinstance(seeds, (list, tuple)) else 1
    runs = len(names) * seeds
    at = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return per_seed * seeds, (f"{runs} run{'s' if runs != 1 else ''} ({len(names)} {listed} x {seeds} "
                              f"seed{'s' if seeds != 1 else ''}) of {spec}{at}, {per_seed} steps per seed "
                              "(metadata.dnlib.schedule)")


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
