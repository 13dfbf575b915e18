"""Several seeds of one CIFAR configuration trained as ONE stacked model: K copies of the paper's CNN per step.

At batch 100 the CIFAR CNN is bound by kernel launches, not by the GPU's arithmetic (PAPER.md §3.1; the H100
figures in ``results/h100``): a step of K copies packed into the same kernels costs about as many launches
as a step of one. This module trains K runs of one configuration, each with its own seed, as one model::

    from dnlib.experiments import stacked
    from dnlib.experiments.cifar import RECIPE
    results = stacked.run(RECIPE, "dn-star", seeds=[0, 1, 2, 3], steps=300, out="runs/cifar/stack",
                          options={"subset": (2000, 1000)})      # one folder, an ordinary run folder per seed in it
    [r.record["headline"]["final_acc"] for r in results]
    stacked.run(RECIPE, resume=results[0].run_dir.parent)     # continue it (after a kill: from its checkpoint)

    python -m dnlib cifar stack dn-star --seeds 0 1 2 3 --steps 300 --subset 2000,1000 --out runs/cifar/stack
    python -m dnlib cifar stack --resume runs/cifar/stack/dn-star-s0+1+2+3-<UTC>

(the ``stack`` verb is :func:`commands`; a recipe offers it by adding ``**stacked.commands(self)`` to its
``commands()``.)

**One loop.** A stacked run is an ordinary :class:`~dnlib.experiments.runner.Run` whose trainer holds K copies: the
runner's chunks, time limit, checkpoints, resume (bit-identical on CPU, ``tests/test_resume.py``), TensorBoard and
records; the :class:`~dnlib.training.trainer.Trainer` loop with its divergence checks, per copy
(:class:`~dnlib.training.stacked.StackedTrainer`). What is stacked here is only what :func:`build` hands the runner. The
run folder ``<out>/<config>-s<seed>+<seed>...-<UTC>`` holds the trainer's ``run.json`` (with the seeds),
``checkpoint.pt`` and ``history.json``, and one ordinary run folder per copy, ``<config>-s<seed>`` (``record.json``,
``curves.csv``, TensorBoard events), which ``gather`` and ``report`` read as any other.

**What each copy is.** Copy k *is* the separate run with seed ``seeds[k]``, computed in other kernels:

* its model is built by the recipe exactly as that run builds it (seeded, then ``recipe.build``), and the K
  models' parameters and buffers are packed into :class:`~dnlib.models.stacked.StackedCifarCNN` (grouped
  convolutions, batched FC layers, per-copy normalizer groups and L1 terms: :mod:`dnlib.models.stacked`);
* its data order is its own batch source (the run's :class:`~dnlib.data.loader.TensorBatches` with its seed), and
  its data too (a stratified subset is drawn from the seed, as in the separate run); a step's input is
  ``(N, K*3, 32, 32)``, channel block k holding copy k's batch (:class:`StackedData`);
* the loss is the K per-copy mean losses, whose SUM the trainer minimizes, so each copy's gradient is its separate
  run's; SGD with momentum and weight decay is elementwise, so the packed optimizer state keeps the copies
  independent (the weight-decay/no-decay parameter groups are the recipe's, mapped by name);
* it is evaluated on its own (per-copy accuracy and loss), checked on its own (a copy whose loss, metric or
  weights turn non-finite stops alone, recorded ``diverged at step N``; the others train on) and recorded as an
  ordinary run record (:mod:`dnlib.experiments.records`, the experiment's keys and headline) with ``config.setup.stacked
  = K`` and the group's seeds noted.

On the CPU in float64, K stacked steps equal K separate runs to rounding (``tests/test_stacked.py``). Not
covered: dropout (the ``base-wd-drop`` row) draws one mask over the stacked tensor, so its masks are not those of
the separate runs (the same distribution, other draws); a learned sigma (a scalar per site) cannot be packed and
is refused; gradient clipping (a global norm would mix the copies) is refused.

**Speed.** ``mode="auto"`` trains with :class:`~dnlib.training.stacked.StackedGraphTrainer` on CUDA (the whole stacked
step one CUDA graph) and with :class:`~dnlib.training.stacked.StackedTrainer` on the CPU, as the recipe.
``images_per_s`` in a copy's headline is that copy's own progress (the group's aggregate divided by K).

This module sits between the runner (:mod:`dnlib.experiments.runner`) and the recipes: it takes a recipe whose
``build`` returns a :class:`~dnlib.models.CifarCNN` and CIFAR data (``dnlib.experiments.cifar.RECIPE``) and imports
none.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import cli
from ..models.stacked import StackedCifarCNN
from ..norms.sparse import clear_penalties
from ..training import distributed
from ..training.checkpoints import CheckpointError
from ..training.stacked import StackedGraphTrainer, StackedTrainer
from ..training.trainer import TrainingDiverged
from .flags import schedule_flags
from .recipe import Command, Recipe, Setup, share_data, trainer_mode
from .runner import Run, build_setup

__all__ = ["StackedData", "CopySources", "StackedBatches", "StackedLoss", "evaluate", "build", "prepare", "run",
           "commands", "MODES", "check_seeds", "group_options", "group_flags", "group_out", "train_group"]

MODES = ("auto", "graph", "eager")


# ------------------------------------------------------------------------------------------------- data
class StackedData:
    """The K copies' data (:class:`dnlib.experiments.cifar.CifarData` s, of equal sizes; the same object K times shares
    its tensors without copying them) as one batch maker: :meth:`images` of ``(K, N)`` indices is the stacked input,
    each copy's block what ``data.images`` gives its own run."""

    def __init__(self, datas: Sequence):
        datas = list(datas)
        self.copies = k = len(datas)
        first = datas[0]
        shared = all(d is first for d in datas)
        if not shared:
            facts = [tuple(tuple(getattr(d, a).shape) for a in ("x_train", "x_eval", "mean")) + (d.eval_split,)
                     for d in datas]
            if any(f != facts[0] for f in facts[1:]):
                raise ValueError(f"datas: the copies' data differ in shapes or evaluation split ({facts[0]} vs "
                                 f"another); stacked copies must be the same configuration")

        def stack(attr):
            t = getattr(first, attr)
            return t.unsqueeze(0).expand(k, *t.shape) if shared else torch.stack([getattr(d, attr) for d in datas])

        self.x_train, self.y_train, self.x_eval, self.y_eval, self.mean = (
            stack(a) for a in ("x_train", "y_train", "x_eval", "y_eval", "mean"))
        self.eval_split, self.copies_data = first.eval_split, datas
        self._rows = torch.arange(k, device=first.x_train.device).view(k, 1)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def images(self, idx: torch.Tensor, split: str = "train") -> torch.Tensor:
        """Float ``(N, K*3, 32, 32)`` channels-last input: block k is ``x_k[idx[k]] - mean_k``."""
        x = self.x_train if split == "train" else self.x_eval
        g = x[self._rows, idx].float() - self.mean.unsqueeze(1)       # (K, N, H, W, 3)
        k, n, h, w, c = g.shape
        return g.permute(1, 2, 3, 0, 4).reshape(n, h, w, k * c).permute(0, 3, 1, 2)

    def labels(self, idx: torch.Tensor, split: str = "train") -> torch.Tensor:
        """``(K, N)`` labels of ``idx`` (``(K, N)``)."""
        return (self.y_train if split == "train" else self.y_eval)[self._rows, idx]


class CopySources:
    """K batch sources (one per copy) as one, resumable as each of them (``{"copies": [state, ...]}``); a subclass
    packs the K batches in ``__next__`` (:class:`StackedBatches`; ``stacked_sr.StackedPairs``)."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)

    def __iter__(self):
        return self

    def __next__(self):
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"copies": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("copies") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.sources):
            raise ValueError(f"state: needs 'copies', one state per source ({len(self.sources)})")
        for s, p in zip(self.sources, parts):
            s.load_state_dict(p)


class StackedBatches(CopySources):
    """K CIFAR batch sources as one: ``next()`` is ``((K, N) indices,)``."""

    def __next__(self):
        return (torch.stack([next(s)[0] for s in self.sources]),)


class StackedLoss:
    """``loss_fn(model, (idx,))`` for the trainer: each copy's mean cross-entropy, ``(K,)`` (the trainer minimizes
    their SUM, so copy k's gradient is that of its own run's loss)."""

    def __init__(self, data: StackedData):
        self.data = data

    def per_copy(self, model: nn.Module, idx: torch.Tensor, split: str = "train", reduce: str = "mean"):
        logits = model(self.data.images(idx, split))                          # (K, N, classes)
        loss = F.cross_entropy(logits.flatten(0, 1), self.data.labels(idx, split).flatten(), reduction="none")
        loss = loss.view(idx.shape)
        return logits, (loss.mean(1) if reduce == "mean" else loss.sum(1))

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        (idx,) = batch
        return self.per_copy(model, idx)[1]


def evaluate(model: StackedCifarCNN, data: StackedData, batch_size: int = 1000) -> list:
    """Each copy's accuracy and mean cross-entropy on its evaluation split, as ``dnlib.experiments.cifar.evaluate`` of
    its run
    (keys ``test_acc``/``test_loss`` or ``val_*``): a list of K dicts."""
    k, n = data.y_eval.shape
    correct = torch.zeros(k, device=data.device)
    total = torch.zeros(k, device=data.device, dtype=torch.float64)
    loss_fn = StackedLoss(data)
    was = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n), device=data.device).expand(k, -1)
            logits, loss = loss_fn.per_copy(model, idx, "eval", reduce="sum")
            correct += (logits.argmax(-1) == data.labels(idx, "eval")).sum(1)
            total += loss.double()
    clear_penalties(model)
    model.train(was)
    split = data.eval_split
    return [{f"{split}_acc": float(correct[i]) / n, f"{split}_loss": float(total[i]) / n} for i in range(k)]


# ---------------------------------------------------------------------------------------------- the run
def check_seeds(seeds) -> list:
    """``seeds`` as a list, checked: one distinct integer >= 0 per copy (ValueError naming ``seeds`` otherwise)."""
    seeds = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
    if not isinstance(seeds, list) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds: must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: each copy needs its own seed, got duplicates in {seeds}")
    return seeds


def group_options(options: dict | None) -> tuple[dict, str]:
    """``(options, mode)`` of a stacked build: a copy of the build ``options`` without ``mode`` (checked: one of
    :data:`MODES`, default ``"auto"``); refused under torchrun (a stacked run trains in one process)."""
    options = dict(options or {})
    mode = options.pop("mode", None) or "auto"
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    if distributed.world_size() > 1:
        raise ValueError(f"seeds: a stacked run trains in one process (torchrun's {distributed.world_size()} "
                         f"processes would split its batches of K copies); run it without torchrun")
    return options, mode


def build(recipe: Recipe, cfg, seeds: Sequence[int], device: str = "auto",
          options: dict | None = None) -> Setup:
    """The :class:`~dnlib.experiments.recipe.Setup` of K copies of ``cfg``, one per seed, in one trainer (the ``build``
    of a stacked :class:`~dnlib.experiments.runner.Run`): each copy built as its separate run builds it
    (:func:`~dnlib.experiments.runner.build_setup` with ``options``: load, seed, build), packed into one model, data,
    batch source and loss; ``copies`` holds the K copies' own setups. ``options["mode"]`` is the stacked trainer's
    (``"auto"``: a CUDA graph on CUDA). The data
    is loaded once when it does not depend on the seed (no subset), else per seed (a subset is drawn from it):
    :func:`~dnlib.experiments.recipe.share_data`."""
    seeds = check_seeds(seeds)
    options, mode = group_options(options)
    setups = []
    for seed in seeds:                       # each copy seeded and built as its own run: load, seed, build
        setups.append(build_setup(recipe, cfg, seed, device, {**options, "mode": "eager"}))
        share_data(options, setups[-1])   # the next copy's, when its load would be the same
    models = [s.model for s in setups]
    model = StackedCifarCNN(models).to(memory_format=torch.channels_last)   # as the recipe's models
    data = StackedData([s.data for s in setups])
    s0 = setups[0]
    groups = s0.trainer_kwargs.get("param_groups") or [{"params": list(models[0].parameters())}]
    names = {id(p): n for n, p in models[0].named_parameters()}
    groups = [{**g, "params": [model.get_parameter(names[id(p)]) for p in g["params"]]} for g in groups]
    graph = mode == "graph" or (mode == "auto" and data.device.type == "cuda")
    info = {"mode": trainer_mode(graph, data.device), "stacked": len(seeds), "stacked_seeds": seeds}
    for s in setups:
        s.info.update(info)
    return Setup(
        model, StackedLoss(data), StackedBatches([s.batches for s in setups]),
        dataclasses.replace(s0.train, progress=False, device=str(data.device)),
        evaluate=lambda m: evaluate(m, data), run_info={**s0.run_info, "seeds": seeds},
        trainer=StackedGraphTrainer if graph else StackedTrainer, trainer_kwargs={"param_groups": groups},
        chunk=s0.chunk, info={**s0.info, **info}, data=data, copies=setups)


def prepare(recipe: Recipe, config=None, seeds: Sequence[int] | None = None,
            **kwargs) -> Run:
    """A stacked :class:`~dnlib.experiments.runner.Run`, prepared but not trained (its ``trainer`` a
    :class:`~dnlib.training.stacked.StackedTrainer`, its ``setup.copies`` the copies' setups); arguments as
    :func:`run`."""
    return Run(recipe, config, seeds=None if seeds is None else check_seeds(seeds), build=build, **kwargs)


def run(recipe: Recipe, config=None, seeds: Sequence[int] | None = None, **kwargs) -> list:
    """Train configuration ``config`` of ``recipe`` once per seed, the K runs stacked into one model and trained by
    the runner (module doc); returns their :class:`~dnlib.experiments.recipe.RunResult` s in the order of ``seeds``.

    Args:
        recipe: a recipe whose ``build`` gives a :class:`~dnlib.models.CifarCNN` on CIFAR data
        (``dnlib.experiments.cifar.RECIPE``). config: a configuration name or object (None with ``resume``: the stored
        one). seeds: one distinct seed per copy (None with ``resume``: the stored ones). kwargs: as
        :func:`dnlib.experiments.runner.run`: ``steps``, ``device``, ``out`` (a base folder: the group gets a
            new folder in it), ``resume`` (the group's folder: continue its checkpoint, or start there),
            ``overrides``, ``options`` (the recipe's ``build`` keywords; ``mode``: the stacked trainer's),
            ``time_limit``, ``stop_after`` (the whole group stops), ``progress``, ``parameters``, ``argv``.
    """
    return prepare(recipe, config, seeds, **kwargs).go()


# -------------------------------------------------------------------------------------------------- CLI
def group_flags(recipe: Recipe, q: argparse.ArgumentParser) -> None:
    """The flags of a ``stack`` verb after its configuration(s) and ``--seeds``: the schedule's, ``--time-limit``,
    ``--out``, ``--resume``, ``--device`` and the recipe's ``run`` flags."""
    schedule_flags(q)
    q.add_argument("--time-limit", dest="time_limit", type=cli.positive_float, default=None,
                   help="seconds: stop at the first chunk boundary where the next chunk would not fit")
    q.add_argument("--out", type=cli.out_dir, default=None,
                   help=f"base folder: the group gets a new folder in it (default runs/{recipe.name})")
    q.add_argument("--resume", type=cli.out_dir, default=None, metavar="DIR",
                   help="a stacked group's folder: continue its checkpoint (or start there)")
    q.add_argument("--device", type=cli.device, default=None, help="auto, cpu, cuda[:N] (default auto)")
    recipe.add_arguments(q, "run")


def group_out(recipe: Recipe, args, q) -> str | None:
    """The base folder of a new group (``--out``, default ``runs/<experiment>``), None with ``--resume``; both
    given: ``q.error``."""
    if args.out is not None and args.resume is not None:
        q.error("--out, --resume: give one (--out: a base folder for a new group; --resume: the group's folder)")
    return None if args.resume is not None else args.out or str(Path("runs") / recipe.name)


def train_group(prepared: Run, q) -> int:
    """Train a prepared group; one JSON line per copy (its folder, name, seed, steps, headline and paper numbers);
    the exit status: 1 when a copy diverged (every copy: one line on stderr), else 0."""
    try:
        results = prepared.go()
    except TrainingDiverged as e:          # every copy diverged: each record says so; exit 1, one line
        print(f"{q.prog}: {cli.one_line(e)}", file=sys.stderr)
        return 1
    for res in results:
        rec = res.record
        print(json.dumps({"run": str(res.run_dir) if res.run_dir else None, "name": rec["name"],
                          "seed": rec["seed"], "stacked": len(results), "steps": rec["steps_done"],
                          "planned": rec["steps_planned"], "stopped": rec["stopped"], **rec["headline"],
                          **{f"paper_{k}": v for k, v in rec["paper"].items()}}), flush=True)
    return 1 if any(str(r.stopped).startswith("diverged") for r in results) else 0


def _add_arguments(recipe: Recipe, q: argparse.ArgumentParser) -> None:
    q.add_argument("config", nargs="?", default=None, help="configuration name (see `list`; none with --resume)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=None,
                   help="one distinct seed per copy (required, but with --resume)")
    group_flags(recipe, q)


def _handler(recipe: Recipe, prepare_group):
    def handle(args, q) -> int:
        out = group_out(recipe, args, q)
        if args.resume is None and (args.config is None or args.seeds is None):
            q.error("config, --seeds: both are required (or --resume DIR)")
        overrides, options = recipe.from_args(args)
        with cli.user_errors(q, CheckpointError):
            if args.seeds is not None:
                check_seeds(args.seeds)
            if args.config is not None:
                recipe.config(args.config, steps=args.steps, **overrides)     # a bad name or field: before any data
            prepared = prepare_group(recipe, args.config, args.seeds, steps=args.steps, stop_after=args.stop_after,
                                     device=args.device, out=out, resume=args.resume, overrides=overrides,
                                     options=options, time_limit=args.time_limit, progress=sys.stderr.isatty(),
                                     argv=sys.argv[1:])
        return train_group(prepared, q)
    return handle


def commands(recipe: Recipe, prepare_group=None) -> dict:
    """``{"stack": Command}``: the ``stack`` verb of ``recipe``'s CLI (register it in ``Recipe.commands``)::

        python -m dnlib cifar stack dn-star --seeds 0 1 2 3 [--steps N] [--out DIR] [the run verb's recipe flags]
        python -m dnlib cifar stack --resume DIR        # continue a group (its checkpoint), or start there

    One folder per group, an ordinary run folder per seed in it; one JSON line per copy; exit 1 when a copy
    diverged, 2 on bad arguments (or another run's checkpoint). ``prepare_group(recipe, config, seeds, **kw)``
    prepares the group's :class:`~dnlib.experiments.runner.Run` (default :func:`prepare`, CIFAR's stacked CNN; SR
    passes :func:`dnlib.experiments.stacked_sr.prepare`)."""
    return {"stack": Command("train several seeds of one configuration as one stacked model",
                             lambda q: _add_arguments(recipe, q), _handler(recipe, prepare_group or prepare))}
