"""The paper's CIFAR experiments (PAPER.md §3.1; Tables 3, 7 and 10): the recipe of :mod:`dnlib.experiments.runner`;
its tables, figures and reports are :mod:`dnlib.experiments.cifar_report`.

A run is a named configuration (:mod:`dnlib.experiments.cifar_configs`, one per Table 7 row and dataset) trained by
:class:`dnlib.training.trainer.Trainer` with the authors' schedule, evaluated every ``eval_every`` steps; the runner
(:mod:`dnlib.experiments.runner`) owns the loop, the time limit, resume and the run record::

    from dnlib.experiments.cifar import run
    result = run("dn-star", "cifar10", steps=300, subset=(2000, 1000))     # a smoke run, milestones scaled
    result.headline["final_acc"], result.history, result.model, result.record

From the shell (``python -m dnlib cifar --help``; the grammar of every experiment)::

    python -m dnlib cifar run dn-star --dataset cifar10 --out runs/cifar           # runs/cifar/dn-star-s0-<UTC>
    python -m dnlib cifar run --resume runs/cifar/dn-star-s0-<UTC>                 # continue it
    python -m dnlib cifar sweep base bn bn-star dn-star --seeds 0 1 --jobs 4 --out runs/cifar/sweep
    python -m dnlib cifar gather runs/cifar/sweep
    python -m dnlib cifar report runs/cifar/sweep      # its runs: summary.json, table.md (as ptb/sr report)
    python -m dnlib cifar report runs/gpu_cifar        # a GPU trip folder: bench.json, graph_check.json, sweep/
    python -m dnlib cifar bench all --steps 200 ; python -m dnlib cifar check-graph dn-star ; ... list

**Data.** The whole dataset lives on the device as uint8 ``(N, 32, 32, 3)``; a batch is gathered by index,
cast to float and mean-subtracted there (raw 0-255 minus the mean image, no /255, PAPER.md §3.1) and fed to
the model channels-last. The batch source is a :class:`~dnlib.data.loader.TensorBatches` of *indices*, so
batches are resumable and the gather is part of the (captured) step.

**Speed.** ``mode="auto"`` uses :class:`~dnlib.training.graphs.GraphTrainer` on CUDA (the whole step, gather included,
replayed as one CUDA graph; the reason: at batch 100 this CNN is bound by kernel launches) and the plain
:class:`~dnlib.training.trainer.Trainer` on CPU. :func:`check_graph` compares a few graph steps with eager ones.
Several runs share one GPU as separate processes launched by :func:`sweep`.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import cli
from ..analysis.figures import MarkdownTable, cell, markdown_table
from ..data.loader import TensorBatches
from ..io import atomic_write_json, atomic_write_text
from ..norms.norm import IMPLS
from ..training.graphs import GraphTrainer
from ..training.trainer import TrainConfig, Trainer, resolve_device
from . import bench as benches
from . import commands, registry, stacked
from . import sweep as sweeps
from .cifar_configs import DATASETS, TABLE3_ROWS, TABLE7, TABLE10, CifarConfig, get_config, list_configs
from .recipe import Recipe, RunResult, Setup, card, check_int, replace, trainer_mode
from .runner import call, call_many

__all__ = ["CifarData", "load_data", "RECIPE", "CifarRecipe", "run", "RunResult", "run_many", "check_graph",
           "bench", "sweep", "gather", "estimate_seconds", "config_table", "MODES", "main"]

MODES = ("auto", "graph", "eager")
EVAL_EVERY = 500   #: steps per evaluation and checkpoint when ``eval_every`` is None (the authors' code)
_GRAPH = {"eager": {"mode": "eager"}, "graph": {"mode": "graph"}}   # check-graph's build options


# ------------------------------------------------------------------------------------------------ data
@dataclass
class CifarData:
    """A CIFAR dataset resident on ``device``: uint8 NHWC images, labels, and the float mean image (HWC)."""
    name: str
    description: str                  # e.g. "CIFAR-10 (JPEG copy)": say it next to every result
    classes: list
    x_train: torch.Tensor             # uint8 (N, 32, 32, 3)
    y_train: torch.Tensor             # int64 (N,)
    x_eval: torch.Tensor              # the evaluation split: test, or the 5K validation fold
    y_eval: torch.Tensor
    eval_split: str                   # "test" or "val"
    mean: torch.Tensor                # float32 (32, 32, 3)
    subset: int | tuple | None = None  # the stratified subset it was loaded with (a run on it records this)
    mean_over: str = "train"          # the images the mean was taken over: "train" or "train+test" (recorded too)
    subset_seed: int | None = None    # the seed the subset was drawn with (None: no subset; recorded)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def images(self, idx: torch.Tensor, split: str = "train") -> torch.Tensor:
        """Float ``(B, 3, 32, 32)`` channels-last batch ``x[idx] - mean`` of ``split`` ("train" or "eval")."""
        x = self.x_train if split == "train" else self.x_eval
        return (x[idx].float() - self.mean).permute(0, 3, 1, 2)


def load_data(dataset: str = "cifar10", *, subset=None, validation: bool = False, device="auto", seed: int = 0,
              root=None, mean_over: str = "train", download: bool = True) -> CifarData:
    """Load CIFAR with :func:`dnlib.data.load_cifar` and put it on ``device``.

    ``subset``: an int or ``(n_train, n_eval)`` class-stratified subset (smoke runs). ``validation``: train on
    45K and evaluate on the authors' 5K validation fold instead of the test set. ``mean_over``: the mean image
    is taken over ``"train"`` (default: no test leakage; the paper only says "the dataset image mean") or over
    ``"train+test"`` as the authors' code does (PAPER.md §5.4 item 19).
    ``download``: fetch the official archive when no copy is found under the data root.
    """
    from ..data import load_cifar
    subset = _subset(subset)
    d = load_cifar(dataset, root, validation=validation, subset=subset, mean_over=mean_over, seed=seed,
                   download=download, progress=False)
    dev = resolve_device(device)
    x_eval, y_eval = (d.x_val, d.y_val) if validation else (d.x_test, d.y_test)
    nhwc = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).to(dev)  # noqa: E731
    return CifarData(d.name, d.description, list(d.classes), nhwc(d.x_train), torch.from_numpy(d.y_train).to(dev),
                     nhwc(x_eval), torch.from_numpy(y_eval).to(dev), "val" if validation else "test",
                     torch.from_numpy(np.ascontiguousarray(d.mean.transpose(1, 2, 0))).to(dev), subset,
                     d.mean_over, None if subset is None else seed)


class CifarLoss:
    """``loss_fn(model, (idx,))`` for the trainer: cross-entropy on the training images ``idx``."""

    def __init__(self, data: CifarData):
        self.data = data

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        (idx,) = batch
        return F.cross_entropy(model(self.data.images(idx)), self.data.y_train[idx])


def evaluate(model: nn.Module, data: CifarData, batch_size: int = 1000) -> dict:
    """Accuracy and mean cross-entropy on the evaluation split (keys ``test_acc``/``test_loss`` or ``val_*``)."""
    n = len(data.y_eval)
    correct = torch.zeros((), device=data.device)
    loss = torch.zeros((), device=data.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n), device=data.device)
            logits = model(data.images(idx, "eval"))
            y = data.y_eval[idx]
            correct += (logits.argmax(1) == y).sum()
            loss += F.cross_entropy(logits, y, reduction="sum")
    return {f"{data.eval_split}_acc": correct.item() / n, f"{data.eval_split}_loss": loss.item() / n}


# ---------------------------------------------------------------------------------------------- recipe
class CifarRecipe(Recipe):
    """The CIFAR recipe: Table 7's configurations (:mod:`dnlib.experiments.cifar_configs`) on resident data.

    Options: ``data`` (a loaded :class:`CifarData`, shared between runs), or the ``load`` options ``subset``,
    ``validation``, ``root``, ``mean_over`` to load it; the ``build`` options ``mode`` (:data:`MODES`),
    ``eval_every`` (steps per evaluation and checkpoint = chunk; None: the authors' 500; 0: only at the end),
    ``subset`` and ``mean_over`` (recorded, and part of the run's identity: checked against the data's)."""

    name = "cifar"
    module = "dnlib.experiments.cifar"
    description = "The paper's CIFAR experiments (Tables 3, 7, 10): run, sweep, gather, report, list, bench."
    unit = "images"

    def configs(self) -> list:
        return list_configs("all")   # Table 7's rows, then the ResNet-20 rows

    def groups(self) -> dict:
        return {"all": list_configs(), "table3": list(TABLE3_ROWS), "resnet20": list_configs("resnet20")}

    def config(self, config, steps: int | None = None, **overrides) -> CifarConfig:
        dataset = overrides.pop("dataset", None)
        if isinstance(config, CifarConfig):
            if dataset is not None and dataset != config.dataset:
                config = get_config(config.name, dataset).replace(
                    **{k: v for k, v in config.as_dict().items() if k not in ("name", "dataset")})
            dataset = config.dataset
        cfg = replace(get_config(config, dataset or "cifar10") if isinstance(config, str) else config,
                                 **overrides)
        return cfg.scaled(steps) if steps and steps != cfg.steps else cfg

    def config_dict(self, cfg: CifarConfig) -> dict:
        return cfg.as_dict()

    def check_options(self, *, mode: str = "auto", eval_every: int | None = None, **_) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
        check_int("eval_every", eval_every, 0, none_ok=True)  # 0: only at the end; a negative one spun forever

    def data_key(self, cfg: CifarConfig, seed: int, device: str = "auto", *, subset=None, validation: bool = False,
                 root=None, mean_over: str = "train"):
        subset = _subset(subset)
        return (cfg.dataset, subset, validation, None if root is None else str(root), mean_over, device or "auto",
                seed if subset is not None else None)      # a subset is drawn from the seed: its own per seed

    def load(self, cfg: CifarConfig, seed: int, device: str = "auto", *, subset=None, validation: bool = False,
             root=None, mean_over: str = "train") -> CifarData:
        return load_data(cfg.dataset, subset=_subset(subset), validation=validation, device=device or "auto",
                         seed=seed, root=root, mean_over=mean_over)

    def build(self, cfg: CifarConfig, data: CifarData, seed: int, device: str = "auto", *, subset=None,
              mean_over: str | None = None, mode: str = "auto", eval_every: int | None = None) -> Setup:
        self.check_options(mode=mode, eval_every=eval_every)
        eval_every = EVAL_EVERY if eval_every is None else eval_every
        subset = _checked_subset(_subset(subset), data)      # recorded (load drew it)
        _checked_mean_over(mean_over, data)
        dev = data.device
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv algorithms once
        model = cfg.build_model().to(device=dev, memory_format=torch.channels_last)
        weights, others = model.decay_parameters()
        groups = [{"params": weights, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
        tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, momentum=cfg.momentum, milestones=cfg.milestones,
                           gamma=cfg.gamma, eval_every=eval_every, checkpoint_every=eval_every,
                           log_every=max(1, min(50, eval_every or 50)), seed=seed, device=str(dev), progress=False)
        if cfg.batch_size > len(data.y_train):     # (TensorBatches would name batch_size alone)
            raise ValueError(f"batch_size: {cfg.batch_size} is more than the {len(data.y_train)} training images"
                             + (f" of subset {subset}: give a larger --subset or a smaller --batch-size"
                                if subset is not None else ""))
        batches = TensorBatches(torch.arange(len(data.y_train), device=dev), batch_size=cfg.batch_size, seed=seed)
        cls = GraphTrainer if mode == "graph" or (mode == "auto" and dev.type == "cuda") else Trainer
        info = {"data": data.description, "eval_split": data.eval_split,
                "subset": list(subset) if isinstance(subset, tuple) else subset, "subset_seed": data.subset_seed,
                "mean_over": data.mean_over,
                "train_images": int(len(data.y_train)), "eval_images": int(len(data.y_eval)),
                "eval_every": eval_every, "mode": trainer_mode(cls is GraphTrainer, dev),
                "card": card(dev)}
        # what a checkpoint must have been written by to be resumed as this run: the configuration (every field but
        # impl, which changes the kernels, not the math) and the data, its mean image included (left out at the
        # default "train", as checkpoints written before it was added were); the trainer compares seed and optimizer
        run_info = {"config": cfg.name, **{k: v for k, v in cfg.as_dict().items() if k not in ("name", "impl")},
                    **{k: info[k] for k in ("data", "eval_split", "subset", "train_images", "eval_images")},
                    **({"mean_over": data.mean_over} if data.mean_over != "train" else {})}
        return Setup(model, CifarLoss(data), batches, tcfg, evaluate=lambda m: evaluate(m, data),
                                run_info=run_info, trainer=cls,
                                trainer_kwargs={"param_groups": groups}, chunk=eval_every or None, info=info,
                                data=data)

    def headline(self, result: RunResult) -> dict:
        key = f"{result.setup.data.eval_split}_acc"
        evals = [r for r in result.history if key in r]
        batch = result.config.batch_size
        return {"final_acc": evals[-1][key] if evals else None,
                "best_acc": max(r[key] for r in evals) if evals else None,
                "images_per_s": result.steps * batch / result.train_seconds if result.train_seconds else 0.0,
                "train_seconds": result.train_seconds}

    def paper(self, cfg: CifarConfig) -> dict:
        return {"final_acc": cfg.paper_accuracy}

    def paper_schedule(self, name: str, what) -> int:
        return get_config(name, what.get("dataset") or "cifar10").steps

    def paper_tables(self, **_) -> dict:
        """Tables 3, 7 and 10 (CIFAR-10; :func:`dnlib.experiments.registry.paper_table`'s layout)."""
        # CIFAR-10's test set (PAPER.md §2.3), not a --validation run (setup.eval_split "val": 45K/5K); records without
        # the fields are what they were: the converted H100 runs record no eval_split and were evaluated on the test
        # set, and a record without config.dataset (older) is CIFAR-10's, as cifar_report counts it
        where = {"experiment": "cifar", "config.dataset": ["cifar10", None], "config.setup.eval_split": ["test", None]}
        out = {}
        for name, rows in (("table3", list(TABLE3_ROWS)), ("table7", list_configs())):
            out[name] = {"title": f"Table {name[5:]}: CIFAR-10 test accuracy", "where": where,
                         "keys": {"final_acc": "CIFAR-10 acc."}, "order": rows,
                         "labels": {n: get_config(n).paper for n in rows},
                         "paper": {n: {"final_acc": TABLE7[n][0]} for n in rows}, "fmt": ".4f"}
        rows = list(TABLE10)
        out["table10"] = {"title": "Table 10: first-layer filter pairs, mean |correlation| and MI (nats)",
                          "where": where, "keys": {"table10_corr": "corr.", "table10_mi": "MI"}, "order": rows,
                          "labels": {n: get_config(n).paper for n in rows},
                          "paper": {n: {"table10_corr": TABLE10[n][0], "table10_mi": TABLE10[n][1]} for n in rows},
                          "fmt": ".4f"}
        return out

    def label(self, name: str, options) -> str:
        return f"{options.get('dataset') or 'cifar10'}-{name}"

    flags = {"--dataset": ("field", dict(choices=DATASETS, help="default cifar10 (or the resumed run's)")),
             "--subset": ("option", dict(type=cli.subset, help="stratified subset: N or N_TRAIN,N_EVAL")),
             "--mode": ("option", dict(choices=MODES, help="default auto")),
             "--impl": ("field", dict(choices=IMPLS, help="DivisiveNorm impl of the normalizers ('compile': "
                                                          "torch.compile, for GPUs)")),
             "--eval-every": ("option", dict(type=cli.nonnegative_int,
                                             help="steps per evaluation and checkpoint (0: only at the end; default "
                                                  "500, the authors')")),
             "--validation": ("option", dict(action="store_true", help="evaluate on the 45K/5K validation fold")),
             "--lr": ("field", dict(type=cli.positive_float)),
             "--batch-size": ("field", dict(type=cli.positive_int, help="default the paper's 100"))}

    def add_arguments(self, q, verb: str) -> None:
        super().add_arguments(q, verb)
        if verb == "report":
            q.add_argument("--dataset", choices=DATASETS,
                           help="the runs' dataset to report (default: the folder's, when its runs are on one)")

    def report(self, path, args=None) -> dict:
        from .cifar_report import report
        rep = report(path, getattr(args, "dataset", None))
        atomic_write_json(Path(path) / "summary.json", rep)
        if rep.get("table"):
            atomic_write_text(Path(path) / "table.md", rep["table"] + "\n")
        return rep

    def commands(self) -> dict:
        flags = ("--dataset", "--subset", "--mode", "--impl", "--batch-size")
        return {"check-graph": benches.steps_command(self, "check-graph", steps=5, flags=flags, **_GRAPH),
                "bench": benches.steps_command(self, "bench", steps=200, warmup=20, flags=flags),
                **stacked.commands(self)}   # `stack`: several seeds of one configuration as one model


RECIPE = CifarRecipe()
registry.register(RECIPE)


# ------------------------------------------------------------------------------------- the library API
def run(config: str | CifarConfig, dataset: str | None = None, **kwargs) -> RunResult:
    """Train one configuration with :func:`dnlib.experiments.runner.run` and return its
    :class:`~dnlib.experiments.recipe.RunResult`.

    ``config``: a name of :func:`dnlib.experiments.cifar_configs.list_configs` or a :class:`CifarConfig`; ``dataset``:
    ``"cifar10"`` (default) or ``"cifar100"``. Keywords (:func:`dnlib.experiments.runner.call`): the runner's (``seed``;
    ``steps``: the schedule shortened, milestones scaled; ``out``: a base folder for a new run folder; ``resume``:
    a run folder to continue or start in; ``time_limit``; ``stop_after``; ``device``), the
    options of :class:`CifarRecipe` (``data`` or ``subset``, ``validation``, ``root``, ``mean_over``:
    :func:`load_data`; ``mode``: :data:`MODES`; ``eval_every``: steps per evaluation and checkpoint, the authors'
    500) and configuration fields (``lr=2e-3``...). A NaN/inf loss raises
    :class:`~dnlib.training.trainer.TrainingDiverged`
    after the record says ``stopped: "diverged at step N"``."""
    return call(RECIPE, config, **kwargs, **({"dataset": dataset} if dataset else {}))


def run_many(configs: Sequence[str], dataset: str = "cifar10", *, seeds: Sequence[int] = (0,), **kwargs) -> list:
    """:func:`run` for every configuration and seed in this process (notebooks, CPU). A run's data serve the next
    runs that would load the same (:func:`~dnlib.experiments.runner.share_data`): with a ``subset``, drawn from the
    seed, each seed loads its own; ``data=`` gives every run the same data (their records say the ``subset_seed``)."""
    return call_many(RECIPE, configs, seeds, dataset=dataset, **kwargs)


def sweep(configs: Sequence[str], seeds: Sequence[int] = (0,), *, out, dataset: str = "cifar10",
          run_args: Sequence[str] = (), **kwargs) -> list:
    """:func:`dnlib.experiments.sweep.sweep` of runs on ``dataset``, each in ``out/<dataset>-<name>-s<seed>``;
    ``run_args``: extra ``run`` flags; ``kwargs``: the sweep's (``jobs``, ``time_limit``...)."""
    return sweeps.sweep(RECIPE, configs, seeds, out=out, run_args=["--dataset", dataset, *run_args],
                            options={"dataset": dataset}, **kwargs)


gather = sweeps.gather


def check_graph(config: str | CifarConfig, data: CifarData, *, steps: int = 5, seed: int = 0,
                rtol: float = 1e-2, **changes) -> dict:
    """:func:`dnlib.experiments.bench.check_graph` on loaded ``data``: ``steps`` steps of :class:`GraphTrainer` (the
    config's ``impl``) against the plain eager :class:`Trainer` from the same init; ``changes``: config fields."""
    return benches.check_graph(RECIPE, config, **_GRAPH, steps=steps, seed=seed, rtol=rtol,
                                  options={"data": data}, dataset=getattr(data, "name", None), **changes)


def bench(config: str | CifarConfig, data: CifarData | None = None, *, steps: int = 200, warmup: int = 20,
          seed: int = 0, device="auto", mode: str = "auto", **kwargs) -> dict:
    """Training images/s of one configuration (:func:`dnlib.experiments.bench.bench`, as every recipe's ``bench``:
    ``steps`` timed steps after ``warmup``, the capture or compilation among them; no evaluation) on loaded
    ``data`` (or loaded here: ``subset``...); ``kwargs``: load options and config fields."""
    options = {"data": data, "mode": mode, **{k: kwargs.pop(k) for k in ("subset", "validation", "root", "mean_over")
                                             if k in kwargs}}
    if data is not None:
        kwargs.setdefault("dataset", data.name)
    return benches.bench(RECIPE, config, steps=steps, warmup=warmup, seed=seed, device=device, options=options,
                         **kwargs)


def estimate_seconds(images_per_s: dict, dataset: str = "cifar10", configs: Sequence[str] | None = None,
                     speedup: float = 1.0) -> float:
    """Seconds to train ``configs`` (default: all of Table 7) with the paper's schedule at the measured
    single-run throughputs ``{name: images/s}``, divided by ``speedup`` (aggregate gain of concurrent runs)."""
    total = 0.0
    for name in configs or list_configs():
        cfg = get_config(name, dataset)
        total += cfg.steps * cfg.batch_size / images_per_s[name]
    return total / speedup


# ----------------------------------------------------------------------------------------------- tables
def config_table(names: Sequence[str] | None = None, dataset: str = "cifar10") -> MarkdownTable:
    """The configurations as a Markdown table: the values of PAPER.md §2.3 and the schedule."""
    rows = []
    for c in (get_config(n, dataset) for n in names or list_configs()):
        other = ", ".join(f"{k} {v:g}" for k, v in (("weight decay", c.weight_decay), ("dropout", c.dropout)) if v)
        rows.append([c.name, c.paper, c.norm, cell(c.sigma, "g"), f"{c.alpha:g}", c.affine,
                     None if c.window is None else ", ".join(map(str, c.window)), other or None,
                     f"{', '.join(map(str, c.milestones))} / {c.steps}"])
    return markdown_table(["name", "paper row", "norm", "sigma (eps = sigma²)", "alpha (L1)", "affine", "DN windows",
                           "other", "lr milestones / end"], rows)


def _checked_subset(subset, data: CifarData):
    """The subset a run on ``data`` trains on: ``data``'s own (given ``data=``, the ``subset`` option is left
    ``None``); a ``subset`` option that differs from it raises ValueError naming both, before any training."""
    own = data.subset
    if subset is None:
        return own
    if own != subset:
        raise ValueError(f"subset={subset!r}: the data given was loaded with subset={own!r}; "
                         "pass one of them (or data loaded with that subset)")
    return subset


def _checked_mean_over(mean_over: str | None, data: CifarData) -> None:
    """A ``mean_over`` option beside ``data`` must be the one the data were loaded with (ValueError naming both;
    None: the data's)."""
    if mean_over is not None and mean_over != data.mean_over:
        raise ValueError(f"mean_over={mean_over!r}: the data given were loaded with mean_over={data.mean_over!r}; "
                         "pass one of them (or data loaded with that mean)")


# --------------------------------------------------------------------------------------------------- CLI
def _subset(value):
    """``None``/``[]``/``""`` -> None; ``"N"``, ``N`` -> N; ``"A,B"``, ``[A, B]`` -> (A, B)."""
    if value is None or value == [] or value == "" or value == ():
        return None
    parts = [int(p) for p in (str(value).split(",") if isinstance(value, str) else np.atleast_1d(value))]
    return parts[0] if len(parts) == 1 else tuple(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dnlib cifar ...``: :func:`dnlib.experiments.commands.main` of :data:`RECIPE`."""
    return commands.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
