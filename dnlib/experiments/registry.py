"""Which experiments exist and the paper's tables they own: each recipe registers itself (:func:`register`), and
those the installed package names in the entry-point group :data:`RECIPES_GROUP` are imported when first needed;
:func:`paper_tables`, :func:`paper_table` and :func:`paper_schedule` read them. No experiment is named here."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["paper_schedule", "RECIPES_GROUP", "register", "paper_tables", "paper_table"]


def paper_schedule(experiment: str | None, name: str | None, what: Mapping[str, Any] = {}) -> int | None:
    """The length of the paper's schedule for configuration ``name`` of ``experiment`` (its recipe's
    :meth:`~dnlib.experiments.recipe.Recipe.paper_schedule`: CIFAR steps, PTB epochs of its ``source``); None where
    dnlib
    does not know it (SR: the authors' code has no limit; an unknown experiment or name)."""
    recipe = _recipes().get(experiment) if experiment else None
    try:
        return None if recipe is None or name is None else recipe.paper_schedule(name, what)
    except (ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------- the paper's tables
# : The entry-point group that names each experiment's recipe (``pyproject.toml``: ``cifar =
# "dnlib.experiments.cifar:RECIPE"``): : a recipe owns its paper tables and schedules
# (:meth:`dnlib.experiments.recipe.Recipe.paper_tables`, : :meth:`~dnlib.experiments.recipe.Recipe.paper_schedule`);
# this module knows none.
RECIPES_GROUP = "dnlib.recipes"


_RECIPES: dict = {}          # {experiment name: recipe}, registered by the recipes


def register(recipe) -> None:
    """Make a recipe's paper tables and schedules known here (each recipe module registers its ``RECIPE`` when
    imported; those the installed package names in :data:`RECIPES_GROUP` are imported when first needed)."""
    _RECIPES[recipe.name] = recipe


def _recipes() -> dict:
    """The registered recipes, after importing those the installed package names (:data:`RECIPES_GROUP`)."""
    from importlib.metadata import distributions
    seen = set()       # every installed copy's metadata (a stale dnlib.egg-info in the working folder may come first)
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == RECIPES_GROUP and ep.name not in seen:
                seen.add(ep.name)
                if ep.name not in _RECIPES:
                    register(ep.load())
    return _RECIPES


def paper_tables(**params) -> dict:
    """``{name: table}`` of every paper table the recipes own (:func:`paper_table`'s layout), in the paper's
    numbering; ``params`` go to every source (e.g. ``scale`` for the SR tables)."""
    out = {}
    for recipe in _recipes().values():
        out.update(recipe.paper_tables(**params))
    return dict(sorted(out.items(), key=lambda kv: (int(re.sub(r"\D", "", kv[0]) or 0), kv[0])))


def paper_table(name, **params) -> dict:
    """How one of the paper's tables is read from run records: ``title``, ``where`` (which runs: experiment and
    data), ``keys`` (``{headline key: column}``), ``order`` (configuration names, the paper's row order),
    ``labels`` (the paper's row names), ``paper`` (``{name: {key: the paper's number}}``) and ``fmt``.

    ``name``: a table's name (``"table7"``), looked up among the tables the recipes own (:func:`paper_tables`;
    ``params`` such as ``scale=3`` are passed to them), or such a table itself (a mapping), returned as given."""
    if isinstance(name, Mapping):
        return dict(name)
    tables = paper_tables(**params)
    if name not in tables:
        raise ValueError(f"name: unknown table {name!r}; known are {list(tables)}")
    return tables[name]
