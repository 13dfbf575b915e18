"""What a run resumed in its folder takes from it (:mod:`dnlib.experiments.runner`): its ``run.json``
(:func:`read_run_file`, checked to be a run of the recipe: :func:`stored_run`), the configuration, seeds and options
stored there (:func:`resolve_from_stored`; the options apply whether or not the configuration is named, and one
given with another value is refused: :func:`resumed_options`), and the calls its record lists
(:func:`prior_segments`).

Layer: experiments (imports records, the recipe contract and the check of the runner's ``tf32`` option; no
recipe, no runner)."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

from .. import cli
from ..training.precision import check_tf32
from . import records
from .recipe import RUN_FILE, Recipe

__all__ = ["plain", "stored_run", "FREE_ON_RESUME", "RUNNER_OPTIONS", "resumed_options", "resolve_from_stored",
           "read_run_file", "prior_segments"]


def plain(value) -> bool:
    """Whether ``value`` is stored in ``run.json`` as it is (None, a string, a number, a bool, or lists of them)."""
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def stored_run(recipe: Recipe, resume) -> dict:
    """The ``run.json`` of the folder to resume ({} if none), checked to be a run of ``recipe``; a record there
    is read too (a broken one: refused, named)."""
    stored = {}
    if resume is not None and (Path(resume) / RUN_FILE).exists():
        stored = read_run_file(resume)      # a broken or foreign run.json / record.json: refused, named
        if stored.get("experiment") != recipe.name:
            raise ValueError(f"resume: {resume} holds a {stored.get('experiment')!r} run, not {recipe.name!r}")
        if stored.get("fields"):
            try:
                recipe.from_dict(stored["fields"])
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{Path(resume) / RUN_FILE}: not a {recipe.name} run file (its fields make no "
                                 f"configuration: {type(e).__name__}: {cli.one_line(e)})") from None
    if resume is not None and (Path(resume) / records.RECORD_FILE).exists():
        records.read_record(resume)
    if not stored and resume is not None and Path(resume).is_dir():
        _refuse_a_folder_of_other_runs(Path(resume))
    return stored


def _refuse_a_folder_of_other_runs(folder: Path) -> None:
    """A folder without ``run.json`` is a new run's (a sweep's engine may have made it, with its log), unless it
    holds a run's results already (a record copied there, a checkpoint) or other runs (a sweep's folder): starting
    there would overwrite the record, or hide the runs inside from ``gather`` (it stops at a folder with a record)."""
    held = [f for f in (records.RECORD_FILE, "checkpoint.pt") if (folder / f).exists()]
    inner = sorted(p.parent.name for f in (records.RECORD_FILE, RUN_FILE) for p in folder.glob(f"*/{f}"))
    if held or inner:
        what = f"{' and '.join(held)} but no {RUN_FILE}" if held else f"other runs ({', '.join(inner[:3])}" + (
            ", ..." if len(inner) > 3 else "") + ")"
        raise ValueError(f"resume: {folder} holds {what}: it is no run folder dnlib can resume (a copied record, a "
                         f"sweep's folder?), and starting a new run there would overwrite or hide them; give a new "
                         f"--out, or resume the run's own folder")


#: Options a resume may change: where the data lie (``data``, ``root``), how many CPU threads to use, and which
#: kernels run the same math (``mode``: graph or eager steps write one checkpoint, tests/test_ptb.py resumes a graph
#: run eagerly). Any other option of a resumed run is its stored one (:func:`resumed_options`).
FREE_ON_RESUME = frozenset({"data", "root", "threads", "mode"})

#: The runner's own options, ``{name: (default, check)}``: the arithmetic (``tf32``:
#: :mod:`dnlib.training.precision`). They never reach the recipe; a resume compares them as a build option (a folder
#: that does not store one ran at its default).
RUNNER_OPTIONS = {"tf32": (False, check_tf32)}


def _build_defaults(recipe: Recipe) -> dict:
    """``{option: default}`` of the keyword-only parameters of ``recipe.build`` that ``recipe.load`` does not take
    (a load option may have come with the data given, ``data=``, rather than at its default)."""
    load = {k for k, p in inspect.signature(recipe.load).parameters.items() if p.kind is p.KEYWORD_ONLY}
    return {k: p.default for k, p in inspect.signature(recipe.build).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and k not in load}


def _still_valid(recipe: Recipe, key: str, value) -> bool:
    """Whether the recipe (or the runner, :data:`RUNNER_OPTIONS`) takes ``key=value`` today (a folder written by an
    older dnlib may hold a value since refused, e.g. PTB's ``final_test_batch_size=0``: then the value given to
    resume it replaces it)."""
    try:
        if key in RUNNER_OPTIONS:
            RUNNER_OPTIONS[key][1](value)
        else:
            recipe.check_options(**{key: value})
    except (ValueError, TypeError):
        return False
    return True


def resumed_options(recipe: Recipe, stored: dict, options: dict, resume) -> dict:
    """The options of a run that resumes the folder ``resume`` (``stored``: its ``run.json``): the stored ones with
    the ``options`` given now. A resume must match the run it resumes: a given option whose value differs from the
    stored one (or, when the folder did not store it, a build option's from its default: the run ran with that) is
    a ValueError naming the option and both values; an equal one is fine. Not compared: :data:`FREE_ON_RESUME`, a
    load option or a value that could not have been stored (not plain: a tensor, a path...) where none is stored (a
    run given ``data=`` stores neither: the checkpoint's identity compares the data), and a stored value the recipe
    now refuses (the given one replaces it). Configuration fields and the seed are not options: the checkpoint's
    identity refuses those (:class:`~dnlib.training.trainer.CheckpointError`)."""
    kept = dict(stored.get("options") or {})
    defaults = {**{k: d for k, (d, _) in RUNNER_OPTIONS.items()}, **_build_defaults(recipe)}
    for key, value in options.items():
        if key in FREE_ON_RESUME:
            continue
        if key in kept:
            was, how = kept[key], ""
        elif key in defaults and plain(value):
            was, how = defaults[key], " (its default)"
        else:
            continue
        if records.jsonable(value) == records.jsonable(was) or (key in kept and not _still_valid(recipe, key, was)):
            continue
        raise ValueError(f"{key}: the run in {resume} was made with {key}={was!r}{how}; given {key}={value!r} (a "
                         f"resume must match the run it resumes: leave {key} out, or start a new run elsewhere)")
    return {**kept, **options}


def resolve_from_stored(recipe: Recipe, stored: dict, config, options: dict, seed: int | None,
                        seeds: Sequence[int] | None, build, resume) -> tuple:
    """The configuration, options, seeds and seed of a run: those given, else the resumed run's ``stored``
    ones (its options apply whether or not the configuration is named: :func:`resumed_options`); returns (config,
    options, seeds (a list, [] for an ordinary run), seed)."""
    if config is None:
        if not stored:
            raise ValueError("config: name a configuration (or resume a run folder that holds run.json)")
        config = stored["config"]
    if stored:
        options = resumed_options(recipe, stored, options, resume)
    if seeds is not None and seed is not None:
        raise ValueError("seed, seeds: give one (seeds: one per copy of a stacked run)")
    seeds = list(seeds if seeds is not None else stored.get("seeds") or [])
    if len(seeds) > 1 and build is None:
        raise ValueError(f"seeds: {seeds} are the copies of a stacked run; run (or resume) it with "
                         f"dnlib.experiments.stacked (the recipe's `stack` command)")
    if seed is None:
        seed = int(seeds[0] if seeds else stored.get("seed", 0))
    return config, options, seeds, seed


_RUN_FILE_TYPES = {"experiment": str, "config": str, "fields": dict, "seed": int, "options": dict, "device": str,
                   "seeds": list}


def read_run_file(folder) -> dict:
    """The ``run.json`` of a run folder (how it was called): a dict with ``experiment`` and ``config`` (strings),
    and ``fields``, ``options`` (objects), ``seed`` (an integer >= 0), ``device`` (a string), ``seeds`` (a list: a
    stacked run's) when present.
    Anything else (not UTF-8 JSON, not an object, a key of another type) is a ValueError naming the file."""
    path = Path(folder) / RUN_FILE
    stored = records.read_json_object(path, "a run file")
    for k, t in _RUN_FILE_TYPES.items():
        v = stored.get(k)
        if (v is None and k in ("experiment", "config")) or (
                v is not None and (not isinstance(v, t) or isinstance(v, bool) or (k == "seed" and v < 0))):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise ValueError(f"{path}: not a run file ({k!r} is {shown}, not a{'n' if t is int else ''} "
                             f"{'integer >= 0' if t is int else t.__name__}); a file that dnlib did not write?")
    return stored


def prior_segments(prior: dict | None) -> list:
    """The segments of a record before this call ([] for none; a record written before segments were kept: one
    segment of its last call, the step it started from unknown)."""
    if prior is None:
        return []
    if prior.get("segments") is not None:
        return list(prior["segments"])
    return [{"started": prior.get("started"), "ended": prior.get("ended"), "seconds": prior.get("seconds"),
             "steps": [None, prior.get("steps_done")], "git": prior.get("git"), "device": prior.get("device"),
             "host": prior.get("host")}]
