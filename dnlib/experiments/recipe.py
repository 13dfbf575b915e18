"""The contract between the runner and an experiment: a :class:`Recipe` names its configurations, loads its
data, builds a run's :class:`Setup` and reads its numbers; :class:`RunResult` is what a run returns; the checks every
entry point shares (:func:`check_config`, :func:`check_int`, the one time-limit rule :func:`past_time_limit`).

Layer: experiments (imports training and norms; no recipe, no runner)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..training import distributed
from ..training.trainer import TrainConfig, Trainer

__all__ = ["RUN_FILE", "COMPLETED", "RUNNING", "Setup", "SharedData", "share_data", "Command", "Recipe", "RunResult",
           "replace", "check_time_limit", "past_time_limit", "check_int", "trainer_mode", "card", "row_label",
           "check_config"]


RUN_FILE = "run.json"


COMPLETED = "completed"


RUNNING = "running"


# ------------------------------------------------------------------------------------------- the contract
@dataclass
class Setup:
    """Everything one run needs, built by :meth:`Recipe.build` for a configuration and a seed.

    ``trainer`` is the trainer class (:class:`~dnlib.training.trainer.Trainer` or
    :class:`~dnlib.training.graphs.GraphTrainer`) and ``trainer_kwargs`` its extra arguments (``param_groups``,
    ``lr_lambda``, ``capture``...). ``run_info`` is the run identity a resumed checkpoint must match (plain values).
    ``chunk``: steps per chunk (default ``train.eval_every``, or all steps when that is 0). ``info``: facts recorded
    with the config (the data used, the trainer mode...). ``data``: anything the recipe keeps for figures (on
    :attr:`RunResult.setup`). ``copies``: for a trainer of K copies in one model (:mod:`dnlib.experiments.stacked`),
    each copy's own Setup (its seed's build: model, info, data), in the order of the run's seeds; empty for an
    ordinary run. ``data_key``: see its comment."""
    model: nn.Module
    loss_fn: Callable
    batches: Any
    train: TrainConfig
    evaluate: Callable[[nn.Module], dict] | None = None
    run_info: dict = field(default_factory=dict)
    trainer: type = Trainer
    trainer_kwargs: dict = field(default_factory=dict)
    chunk: int | None = None
    info: dict = field(default_factory=dict)
    data: Any = None
    copies: list = field(default_factory=list)
    #: the :meth:`Recipe.data_key` of the data loaded for it (None: given, or not to be shared); set by the runner
    data_key: Any = None

    def make_trainer(self, **kwargs):
        """The trainer of this setup (``kwargs``: its arguments to change, e.g. ``out_dir``, ``evaluate=None``)."""
        kwargs = {"evaluate": self.evaluate, "run_info": self.run_info, **self.trainer_kwargs, **kwargs}
        return self.trainer(self.model, self.loss_fn, self.batches, self.train, **kwargs)


@dataclass(frozen=True)
class SharedData:
    """The data one run loaded, offered to the next ones as the ``data`` option (:func:`share_data`): a run uses them
    only when its own :meth:`Recipe.data_key` equals ``key``, and loads its own otherwise
    (:func:`~dnlib.experiments.runner.build_setup`)."""
    key: Any
    data: Any


def share_data(options: dict | None, setup: Setup) -> None:
    """Offer the data a run loaded (``setup.data``) to the next runs of ``options`` as :class:`SharedData`, when
    they have a :meth:`Recipe.data_key` and no ``data`` was given: one load for the runs that would load the same
    (many runs, benchmarks, checks, stacked copies). Before, the first run's data went to every later run, so with a
    CIFAR ``subset`` (drawn from the seed) seed 1 trained on seed 0's images and its record could not show it."""
    given = options.get("data") if options is not None else None
    if options is not None and setup.data_key is not None and (given is None or isinstance(given, SharedData)):
        options["data"] = SharedData(setup.data_key, setup.data)


@dataclass
class Command:
    """A recipe's own sub-command (``bench``, ``check-graph``...): ``add_arguments(parser)`` then
    ``handler(args, parser) -> exit status``. With ``rows=True`` the handler returns rows (dicts, an iterable:
    check its arguments before the first row, inside :func:`dnlib.cli.user_errors`): each is printed as a JSON line
    as it comes, ``--json FILE`` (added) gets the list, and the exit status is 1 when a row says ``"ok": False``."""
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], Any]
    rows: bool = False


class Recipe:
    """One experiment. Subclass it and set :attr:`name` and :attr:`module`; implement :meth:`configs`,
    :meth:`config`, :meth:`load`, :meth:`build`, :meth:`headline` and :meth:`paper`; optionally
    :meth:`add_arguments` / :meth:`from_args` (the experiment's own flags), :meth:`groups`, :meth:`label`,
    :meth:`report`, :meth:`commands`. A run is :func:`build_setup`: :meth:`check_options`, :meth:`load`, the one
    ``set_seed(seed)``, :meth:`build` (a recipe never seeds)."""

    name: str = "experiment"          #: the experiment's name: ``runs/<name>/``, ``record["experiment"]``
    #: the module run by ``python -m`` (sweep's processes), e.g. ``"dnlib.experiments.cifar"``
    module: str = ""
    description: str = ""
    #: what one training step counts, in :func:`dnlib.experiments.bench.bench`'s ``<unit>_per_s`` and the headline's
    #: throughput: ``"images"``, ``"patches"``, ``"tokens"``...; :meth:`items_per_step` says how many
    unit: str = "items"

    def items_per_step(self, cfg) -> int:
        """The :attr:`unit` s one training step of ``cfg`` takes (default its ``batch_size``)."""
        return cfg.batch_size

    def configs(self) -> list:
        """The names of the registered configurations (``list``; a sweep may also take ``all``)."""
        raise NotImplementedError

    def groups(self) -> dict:
        """The group names a sweep may take, ``{group: [configuration names]}`` (default ``all``: every one)."""
        return {"all": self.configs()}

    def expand(self, names: Sequence[str]) -> list:
        """Configuration names with :meth:`groups` expanded; raises ValueError for unknown ones."""
        groups = self.groups()
        out = [c for n in names for c in groups.get(n, [n])]
        for n in out:
            self.config(n)
        return out

    def config(self, config, steps: int | None = None, **overrides):
        """The resolved configuration: ``config`` is a name or a config object; ``overrides`` are fields to change
        (every field of the config must be accepted, so ``config(name, **all_fields)`` rebuilds it exactly);
        ``steps`` shortens the schedule. Raises ValueError naming a bad name or field."""
        raise NotImplementedError

    def from_dict(self, fields: Mapping[str, Any]):
        """The config whose :meth:`config_dict` is ``fields`` (as read back from JSON: lists where the config
        holds tuples), rebuilt exactly (no rescaling). Default: the named config with every field replaced."""
        return replace(self.config(fields["name"]), **fields)

    def config_dict(self, cfg) -> dict:
        """The config's fields as a dict (default ``dataclasses.asdict``)."""
        return dataclasses.asdict(cfg)

    def check_options(self, **options) -> None:
        """Raise ValueError for a bad option of :meth:`build` (its keyword-only ones, given), before :meth:`load`
        does any work. Default: none checked."""

    def load(self, cfg, seed: int, device: str = "auto", **options) -> Any:
        """The data of one run of ``cfg`` (its keyword-only parameters are the load options; the ``data`` option,
        when given, replaces the call). It runs before the seed: it must not draw from the global RNGs for what
        :meth:`build` makes (pass ``seed`` to a generator of its own). Default: None."""
        return None

    def data_key(self, cfg, seed: int, device: str = "auto", **options) -> Any:
        """What the data :meth:`load` returns for these arguments depend on, as a hashable value: runs of equal keys
        may share one load (:func:`~dnlib.experiments.runner.share_data`: many runs in one process, stacked
        copies, checks, benchmarks). It names every input of the load: the configuration's data fields, the load
        options, the device, and the seed where the data depend on it (e.g. a subset drawn from it). None (the
        default): never shared."""
        return None

    def build(self, cfg, data, seed: int, device: str = "auto", **options) -> Setup:
        """The :class:`Setup` of one run on ``data`` (:meth:`load`'s); its keyword-only parameters are the build
        options (a name may be an option of both). The runner seeds every RNG with ``seed`` just before calling
        it, so the model is initialised from the seed; a build does not seed."""
        raise NotImplementedError

    def headline(self, result: RunResult) -> dict:
        """The run's headline numbers (from ``result.history``, ``result.steps``, ``result.train_seconds``)."""
        raise NotImplementedError

    def paper(self, cfg) -> dict:
        """The paper's numbers for the keys of :meth:`headline` that it reports (None where it has none)."""
        return {}

    def paper_schedule(self, name: str, what: Mapping[str, Any]) -> int | None:
        """The length of the paper's schedule for configuration ``name`` (``what``: the run's defining fields,
        :func:`dnlib.experiments.pooling.defining`), in the unit the config counts (steps, epochs); None: not
        known."""
        return None

    def paper_tables(self, **params) -> dict:
        """The paper's tables this experiment owns, ``{name: table}`` (:func:`dnlib.experiments.registry.paper_table`'s
        layout: title, which runs, keys, row order, labels, the paper's numbers, fmt); ``params``: e.g. ``scale``.
        Register the recipe with :func:`dnlib.experiments.registry.register` and name it in the entry-point group
        ``dnlib.recipes`` so that ``tables.compare(runs, "tableN")`` finds them. Default: none."""
        return {}

    def label(self, name: str, options: Mapping[str, Any]) -> str:
        """The stem of a sweep's run folder for configuration ``name`` (default the name)."""
        return name

    def check(self, cfg) -> None:
        """Raise ValueError for what :meth:`build` would refuse in ``cfg`` itself, without loading any data (every
        ``run`` and every run of a ``sweep`` is checked before anything starts). Default: the config's model is
        built (on the CPU, without data: the recipes' models are small; not on the meta device, whose random
        init imports torch's compiler, seconds) when it has a ``build_model()`` that needs no argument, so a
        normalizer ``impl`` that cannot compute its layer's spec is refused here; only ValueError counts."""
        build = getattr(cfg, "build_model", None)
        if build is None or any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                for p in inspect.signature(build).parameters.values()):
            return
        try:
            build()
        except ValueError:
            raise
        except Exception:  # noqa: BLE001, S110  not a refusal of the config: the real build says what it is
            pass

    #: the experiment's own ``run`` flags, ``{"--flag": (kind, add_argument keywords)}``: ``kind`` ``"field"`` (a
    #: config field to change) or ``"option"`` (a keyword of :meth:`build`). Their default is None: a flag not
    #: given is not passed on (a resumed run keeps its stored value).
    flags: dict = {}

    def add_arguments(self, parser: argparse.ArgumentParser, verb: str) -> None:
        """Add the experiment's own flags to ``run`` (:attr:`flags`; checked by ``sweep`` too) or to ``report``."""
        for flag, (_, kw) in self.flags.items() if verb == "run" else ():
            parser.add_argument(flag, default=None, **kw)

    def from_args(self, args: argparse.Namespace) -> tuple[dict, dict]:
        """``(overrides, options)`` from the parsed :attr:`flags` that were given: config fields to change, and
        keyword arguments of :meth:`build`."""
        out = {"field": {}, "option": {}}
        for flag, (kind, _) in self.flags.items():
            key = flag[2:].replace("-", "_")
            if getattr(args, key, None) is not None:
                out[kind][key] = getattr(args, key)
        return out["field"], out["option"]

    def report(self, path, args: argparse.Namespace | None = None) -> dict:
        """Summarize the runs under ``path`` (tables, figures); the default is :func:`gather`'s rows."""
        from .sweep import gather  # the default report reads the runs back (sweep imports this module)
        return {"runs": gather([path])}

    def commands(self) -> dict:
        """Extra sub-commands ``{name: Command}`` (``bench``, ...)."""
        return {}


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    """A run: its ``record`` (the dict in ``record.json``), the trainer's ``history``, the trained ``model``,
    the resolved ``config``, its ``run_dir`` (None without one), ``steps`` done, ``train_seconds`` (the
    trainer's timed steps) and the recipe's ``setup`` (its data for figures)."""
    record: dict | None
    history: list
    model: nn.Module | None = None
    config: Any = None
    run_dir: Path | None = None
    steps: int = 0
    train_seconds: float = 0.0
    setup: Setup | None = None

    @property
    def headline(self) -> dict:
        return (self.record or {}).get("headline") or {}

    @property
    def stopped(self) -> str | None:
        return (self.record or {}).get("stopped")

    def __repr__(self) -> str:
        rec = self.record or {}
        return (f"RunResult({rec.get('experiment')} {rec.get('name')} seed {rec.get('seed')}: "
                f"{rec.get('steps_done')}/{rec.get('steps_planned')} steps, {rec.get('stopped')}, "
                f"{rec.get('headline')})")


def check_config(recipe: Recipe, cfg, device=None, *, here: bool = True) -> None:
    """Raise ValueError for what a run of the resolved configuration ``cfg`` would refuse, without loading any
    data (:class:`Run` checks it before building; ``run`` and ``sweep`` before anything starts): the recipe's
    :meth:`Recipe.check`, and, with ``here`` (the run executes on this machine), ``impl="triton"`` on a CPU
    without Triton's interpreter (or without Triton) and, under torchrun, a ``batch_size`` below the number of
    processes (a process with an empty share has no loss)."""
    recipe.check(cfg)
    if not here:
        return
    if getattr(cfg, "impl", None) == "triton":
        from ..norms import triton_dn, triton_kernels
        dev = "auto" if device in (None, "auto") else str(device)
        on_cpu = not torch.cuda.is_available() if dev == "auto" else torch.device(dev).type != "cuda"
        if importlib.util.find_spec("triton") is None:
            raise ValueError(f"impl: 'triton' needs the triton package, which is not installed "
                             f"(`{triton_kernels.INSTALL_HINT}`); use --impl auto or general")
        if on_cpu and not triton_dn.interpreted():
            raise ValueError(f"impl: 'triton' runs its kernels on a CUDA device, and this run's device is the CPU "
                             f"(device {dev!r}{', no CUDA here' if dev == 'auto' else ''}); set TRITON_INTERPRET=1 "
                             f"for Triton's CPU interpreter (slow: for checking), or use --impl auto or general")
    world, batch = distributed.world_size(), getattr(cfg, "batch_size", None)
    if world > 1 and isinstance(batch, int) and batch < world:
        raise ValueError(f"batch_size (--batch-size): {batch} is smaller than the {world} torchrun processes "
                         f"(WORLD_SIZE={world}): each trains on its share of a batch, and a process with an empty "
                         f"share has no loss; use a batch size >= {world}")


# ------------------------------------------------------------------------------------- recipes' helpers
def replace(cfg, **fields):
    """``dataclasses.replace(cfg, **fields)``, lists given as tuples (as read back from JSON); a ValueError names
    a field that the config does not have."""
    known = [f.name for f in dataclasses.fields(cfg)]
    bad = sorted(set(fields) - set(known))
    if bad:
        raise ValueError(f"{bad[0]}: not a field of {type(cfg).__name__}; fields are {known}")
    return dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def check_time_limit(time_limit) -> None:
    """Raise ValueError unless ``time_limit`` is a number of seconds > 0 or None."""
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit: must be a number of seconds > 0 (or None), got {time_limit!r}")


def past_time_limit(spent: float, last: float | None, time_limit: float | None) -> bool:
    """The runner's one time-limit rule (module doc): stop before a chunk when the seconds ``spent`` since the run
    was called plus the ``last`` chunk's duration exceed ``time_limit``; the first chunk (``last`` None) always
    runs."""
    return time_limit is not None and last is not None and spent + last > time_limit


def check_int(name: str, value, low: int = 1, none_ok: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an integer >= ``low`` (or None when ``none_ok``)."""
    if (value is None and none_ok) or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return
    raise ValueError(f"{name}: must be an integer >= {low}{' (or None)' if none_ok else ''}, got {value!r}")


def trainer_mode(graph: bool, device) -> str:
    """How a run's steps execute (recorded as ``setup.mode``): ``"cuda-graph"``, ``"graph-step (eager)"`` (the
    graph trainer's step on a CPU, no capture) or ``"eager"``."""
    return ("cuda-graph" if torch.device(device).type == "cuda" else "graph-step (eager)") if graph else "eager"


def card(device) -> str:
    """The name of ``device``'s card (CUDA), else ``"cpu"``."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def row_label(summary: Mapping, label: str) -> str:
    """A table row's label for a :func:`dnlib.experiments.aggregate.summarize` dict, naming its runs that did not
    complete
    (``"BN* (1 time limit)"``: their numbers are those of a shorter schedule)."""
    return label + "".join(f" ({c} {k})" for k, c in summary["stopped"].items() if k != COMPLETED)
