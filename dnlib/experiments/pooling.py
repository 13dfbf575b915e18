"""What makes runs seeds of one experiment, and what a run was, in words (experiments layer; it imports nothing of
dnlib: :mod:`dnlib.experiments.aggregate` pools runs with it and re-exports its public names):

- :func:`defining`: the fields that define a run's experiment: its config but :data:`NOT_DEFINING` fields,
  :data:`LATER_DEFAULTS` left out at their value. Runs of one name that agree in them are seeds of one experiment.
- :func:`differing`, :func:`split_labels`, :func:`values_text`: for groups of one name that differ in them, the
  fields that differ, a label unique to each group (``"steps 200, lr 0.001, momentum 0"``) and their values.
- :func:`run_as`: what was run (steps of the paper's schedule, subset or images, batch size).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["NOT_DEFINING", "LATER_DEFAULTS", "PRECISION_BEFORE", "SHOWN_FIRST", "defining", "run_as", "short",
           "differing", "split_labels", "values_text"]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


#: Fields of a run's config that do not change what it computes: labels, the kernels' implementation (``impl``:
#: the same math), how often it was evaluated, which sets were scored, the card and the trainer's mode (the card
#: is a column of its own), and whether the run was one copy of a stacked group (``setup.stacked``,
#: ``setup.stacked_seeds``: each copy is its separate run, tests/test_stacked.py). Runs that differ only in these
#: and in their seed are seeds of one experiment; any other difference (dataset, steps or epochs, subset, batch
#: size, source, learning rate, any override) makes them different experiments, which
#: :func:`dnlib.experiments.aggregate.summarize` never pools.
NOT_DEFINING = frozenset({"name", "paper", "row", "cell", "description", "notes", "impl", "eval_every",
                          "setup.mode", "setup.card", "setup.eval_every", "setup.label", "setup.root", "setup.sets",
                          "setup.curve_sets", "setup.missing_sets", "setup.threads",
                          "setup.stacked", "setup.stacked_seeds", "setup.subset_seed",   # (a seed, as the seed)
                          "setup.init_act", "setup.init_grad", "setup.init_loss",
                          "setup.scale_change"})   # (analysis: measured at init)


#: Fields recorded since a later version, with the value every run recorded before then had (CIFAR's mean image,
#: ``setup.mean_over``: over the training images; the arithmetic, ``setup.precision``: float32, but see
#: :data:`PRECISION_BEFORE`): a run at that value is defined as one that does not record it, so old and new records
#: of one experiment pool, and a split label shows the value.
LATER_DEFAULTS = {"setup.mean_over": "train", "setup.precision": "float32"}

#: ``{experiment: arithmetic}`` of a run on CUDA recorded before ``setup.precision`` was, for the experiments whose
#: models convolve (cuDNN): dnlib left torch's TF32 switches at their defaults then, cuDNN convolutions in TF32 and
#: matrix products in float32, so such a run does not pool with a float32 one (:mod:`dnlib.training.precision`).
#: PTB's cells are matrix products (float32 then too), and off CUDA there is no TF32: such an old record is float32.
PRECISION_BEFORE = {"cifar": "tf32-conv", "sr": "tf32-conv", "analysis": "tf32-conv"}


#: The fields named first in a split row's label (``"bn-star [steps 40]"``), in this order.
SHOWN_FIRST = ("steps", "epochs", "setup.subset", "batch_size", "dataset", "setup.data", "source", "steps_planned")


def _hashable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v


def defining(row: Mapping[str, Any]) -> dict:
    """What defines the experiment of one run besides its experiment and configuration name: every field of its
    config (``setup.<field>`` for the build's facts: data, subset, images...) but :data:`NOT_DEFINING` ones, lists
    as tuples, and :data:`LATER_DEFAULTS` left out at their value; a record without ``setup.precision`` made on
    CUDA has its experiment's :data:`PRECISION_BEFORE`. A row without a config (a hand-made or
    :func:`dnlib.experiments.records.gather` row whose folder is gone) is defined by its ``steps_planned`` when it
    has one."""
    cfg = row.get("config")
    out: dict = {}
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            if k == "setup" and isinstance(v, Mapping):
                out.update({f"setup.{k2}": _hashable(v2) for k2, v2 in v.items()})
            else:
                out[str(k)] = _hashable(v)
        device = row.get("device")
        on_cuda = isinstance(device, Mapping) and device.get("type") == "cuda"
        if on_cuda and "setup.precision" not in out and row.get("experiment") in PRECISION_BEFORE:
            out["setup.precision"] = PRECISION_BEFORE[row["experiment"]]
    elif row.get("steps_planned") is not None:
        out["steps_planned"] = row["steps_planned"]
    return {k: v for k, v in out.items()
            if k not in NOT_DEFINING and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def run_as(what: Mapping[str, Any], paper: int | None = None) -> str:
    """What was run, in words, from :func:`defining`'s fields: the schedule's length (of the paper's ``paper``),
    the subset, the batch size: ``"40 of the paper's 80,000 steps, subset 2000/1000, batch 100"``.

    ``paper`` counts in the unit the config counts (:meth:`dnlib.experiments.recipe.Recipe.paper_schedule`): epochs
    when it has ``epochs`` (PTB), else steps. A run of such a config given ``steps`` says its steps in epochs where
    its setup records ``batches_per_epoch`` (``"300 steps (0.129 epochs; the paper's 13 epochs)"``). A run that
    records no subset but its ``train_images`` / ``eval_images`` says those (``"2,000/500 images"``); ``"all the
    data"`` where it records neither (subset None)."""
    parts = []
    paper_unit = "epochs" if _finite(what.get("epochs")) else "steps"
    for unit in ("steps", "epochs"):
        n = what.get(unit)
        if _finite(n):
            n = int(n)
            if not paper:
                parts.append(f"{n:,} {unit}")
            elif unit == paper_unit:
                parts.append(f"{n:,} {unit} (the paper's)" if paper == n else f"{n:,} of the paper's {paper:,} {unit}")
            elif _finite(per := what.get("setup.batches_per_epoch")) and per > 0:    # steps of an epochs schedule
                e = format(n / per, ".3g")
                parts.append(f"{n:,} {unit} ({e} {paper_unit}, the paper's)" if n == paper * per else
                             f"{n:,} {unit} ({e} {paper_unit}; the paper's {paper:,} {paper_unit})")
            else:
                parts.append(f"{n:,} {unit} (the paper's: {paper:,} {paper_unit})")
            break
    else:
        if _finite(what.get("steps_planned")):
            parts.append(f"{int(what['steps_planned']):,} steps")
    if what.get("kind") or what.get("schedule"):                 # SR: fast / reference / smoke
        parts.append(f"{what.get('schedule') or what.get('kind')} schedule")
    subset = what.get("setup.subset", "absent")
    images = what.get("setup.train_images"), what.get("setup.eval_images")
    if isinstance(subset, tuple) and subset:
        parts.append("subset " + "/".join(map(str, subset)))
    elif _finite(subset):
        parts.append(f"subset {subset}")
    elif subset in (None, "absent") and all(_finite(x) for x in images):
        parts.append(f"{int(images[0]):,}/{int(images[1]):,} images")
    elif subset is None:
        parts.append("all the data")
    elif "subset" in str(what.get("setup.data") or "") and _finite(what.get("setup.train_tokens")):
        parts.append(f"subset of {int(what['setup.train_tokens']):,} training tokens")
    if _finite(what.get("batch_size")):
        parts.append(f"batch {int(what['batch_size'])}")
    return ", ".join(parts) or "—"


def short(field: str) -> str:
    """A field as a label names it: ``setup.subset`` -> ``subset``."""
    return field[len("setup."):] if field.startswith("setup.") else field


def _value(v: Any) -> str:
    if isinstance(v, tuple):
        return "/".join(_value(x) for x in v)
    return format(v, ",") if _finite(v) and isinstance(v, int) else str(v)


def _of(what: Mapping, field: str) -> Any:
    """A :func:`defining` field's value (a :data:`LATER_DEFAULTS` one left out: its value; else None when absent)."""
    return what.get(field, LATER_DEFAULTS.get(field))


def differing(whats: Sequence[Mapping]) -> list:
    """The fields whose values differ among ``whats`` (:func:`defining` dicts of groups of one name), in the order
    a label names them: :data:`SHOWN_FIRST` first, then by name."""
    fields = sorted({f for w in whats for f in w}, key=lambda f: (
        SHOWN_FIRST.index(f) if f in SHOWN_FIRST else len(SHOWN_FIRST), f))
    return [f for f in fields if len({_of(w, f) for w in whats}) > 1]


def values_text(differs: Sequence[str], whats: Sequence[Mapping], most: int = 4) -> str:
    """``"steps: 200, 40; lr: 0.001, 0.01"``: each group's value of the first ``most`` fields that differ."""
    return "; ".join(f"{short(f)}: {', '.join(_value(_of(w, f)) for w in whats)}"
                     for f in differs[:most]) + ("; ..." if len(differs) > most else "")


def split_labels(differs: Sequence[str], whats: Mapping[Any, Mapping]) -> dict:
    """``{key: label}`` of the groups of one name (``whats``: ``{key: its defining fields}``;
    ``differs``: :func:`differing`'s fields): their values of the first two fields that differ,
    then, while two groups' labels are the same, of the next differing field that tells them apart (every group
    names the same fields: ``"steps 200, lr 0.001, momentum 0"``); groups that no field's value tells apart (values
    that print alike) are numbered."""
    shown = list(differs[:2])

    def label(k, fields):
        return ", ".join(f"{short(f)} {_value(_of(whats[k], f))}" for f in fields)

    while True:
        same: dict = {}
        for k in whats:
            same.setdefault(label(k, shown), []).append(k)
        clashes = [ks for ks in same.values() if len(ks) > 1]
        more = next((f for f in differs if f not in shown and any(
            len({label(k, [f]) for k in ks}) > 1 for ks in clashes)), None)
        if not clashes or more is None:
            break
        shown.append(more)
    out = {k: label(k, shown) for k in whats}
    for ks in clashes:
        for j, k in enumerate(ks, 1):
            out[k] = f"{out[k]}, set {j}" if out[k] else f"set {j}"
    return out
