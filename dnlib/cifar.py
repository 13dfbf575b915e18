"""The paper's CIFAR experiments (PAPER.md §3.1; Tables 3, 7 and 10): the recipe of :mod:`dnlib.experiment`,
tables and figures.

A run is a named configuration (:mod:`dnlib.configs.cifar`, one per Table 7 row and dataset) trained by
:class:`dnlib.train.Trainer` with the authors' schedule, evaluated every ``eval_every`` steps; the runner
(:mod:`dnlib.experiment`) owns the loop, the time limit, resume and the run record::

    from dnlib.cifar import run
    result = run("dn-star", "cifar10", steps=300, subset=(2000, 1000))     # a smoke run, milestones scaled
    result.headline["final_acc"], result.history, result.model, result.record

From the shell (``python -m dnlib.cifar --help``; the grammar of every experiment)::

    python -m dnlib.cifar run dn-star --dataset cifar10 --out runs/cifar           # runs/cifar/dn-star-s0-<UTC>
    python -m dnlib.cifar run --resume runs/cifar/dn-star-s0-<UTC>                 # continue it
    python -m dnlib.cifar sweep base bn bn-star dn-star --seeds 0 1 --jobs 4 --out runs/cifar/sweep
    python -m dnlib.cifar gather runs/cifar/sweep
    python -m dnlib.cifar report runs/gpu_cifar        # a GPU trip folder: bench.json, graph_check.json, sweep/
    python -m dnlib.cifar bench all --steps 200 ; python -m dnlib.cifar check-graph dn-star ; ... list

**Data.** The whole dataset lives on the device as uint8 ``(N, 32, 32, 3)``; a batch is gathered by index,
cast to float and mean-subtracted there (raw 0-255 minus the mean image, no /255, PAPER.md §3.1) and fed to
the model channels-last. The batch source is a :class:`~dnlib.train.TensorBatches` of *indices*, so batches are
resumable and the gather is part of the (captured) step.

**Speed.** ``mode="auto"`` uses :class:`~dnlib.train.GraphTrainer` on CUDA (the whole step, gather included,
replayed as one CUDA graph; the reason: at batch 100 this CNN is bound by kernel launches) and the plain
:class:`~dnlib.train.Trainer` on CPU. :func:`check_graph` compares a few graph steps with eager ones.
Several runs share one GPU as separate processes launched by :func:`sweep`.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cli, experiment, records
from .configs.cifar import DATASETS, TABLE3_ROWS, TABLE10, CifarConfig, get_config, list_configs
from .experiment import RunResult
from .figures import MarkdownTable, cell, markdown_table, new_figure, run_curves
from .io import atomic_write_json
from .norm import IMPLS
from .train import GraphTrainer, TensorBatches, TrainConfig, Trainer, resolve_device, set_seed

__all__ = ["CifarData", "load_data", "RECIPE", "CifarRecipe", "run", "RunResult", "run_many", "check_graph",
           "benchmark", "sweep", "gather", "summarize", "results_table", "learning_curves", "first_layer_responses",
           "table10", "table10_figure", "estimate_seconds", "report", "headline", "config_table", "MODES", "main"]

MODES = ("auto", "graph", "eager")


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
    from .data import load_cifar
    subset = _subset(subset)
    d = load_cifar(dataset, root, validation=validation, subset=subset, mean_over=mean_over, seed=seed,
                   download=download, progress=False)
    dev = resolve_device(device)
    x_eval, y_eval = (d.x_val, d.y_val) if validation else (d.x_test, d.y_test)
    nhwc = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).to(dev)  # noqa: E731
    return CifarData(d.name, d.description, list(d.classes), nhwc(d.x_train), torch.from_numpy(d.y_train).to(dev),
                     nhwc(x_eval), torch.from_numpy(y_eval).to(dev), "val" if validation else "test",
                     torch.from_numpy(np.ascontiguousarray(d.mean.transpose(1, 2, 0))).to(dev))


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
def _config(config: Union[str, CifarConfig], dataset: str, steps: Optional[int], changes: dict) -> CifarConfig:
    cfg = experiment.replace(get_config(config, dataset) if isinstance(config, str) else config, **changes)
    return cfg.scaled(steps) if steps and steps != cfg.steps else cfg


class CifarRecipe(experiment.Recipe):
    """The CIFAR recipe: Table 7's configurations (:mod:`dnlib.configs.cifar`) on resident data.

    ``build`` options: ``data`` (a loaded :class:`CifarData`, shared between runs), or ``subset``,
    ``validation``, ``root``, ``mean_over`` to load it; ``mode`` (:data:`MODES`), ``eval_every`` (steps per
    evaluation = chunk, 0: only at the end)."""

    name = "cifar"
    module = "dnlib.cifar"
    description = "The paper's CIFAR experiments (Tables 3, 7, 10): run, sweep, gather, report, list, bench."

    def configs(self) -> list:
        return list_configs()

    def groups(self) -> dict:
        return {"all": list_configs(), "table3": list(TABLE3_ROWS)}

    def config(self, config, steps: Optional[int] = None, **overrides) -> CifarConfig:
        dataset = overrides.pop("dataset", None)
        if isinstance(config, CifarConfig):
            if dataset is not None and dataset != config.dataset:
                config = get_config(config.name, dataset).replace(
                    **{k: v for k, v in config.as_dict().items() if k not in ("name", "dataset")})
            dataset = config.dataset
        return _config(config, dataset or "cifar10", steps, overrides)

    def config_dict(self, cfg: CifarConfig) -> dict:
        return cfg.as_dict()

    def build(self, cfg: CifarConfig, seed: int, device: str = "auto", *, data: Optional[CifarData] = None,
              subset=None, validation: bool = False, root=None, mean_over: str = "train", mode: str = "auto",
              eval_every: int = 500, progress: bool = False) -> experiment.Setup:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
        experiment.check_int("eval_every", eval_every, 0)  # 0: only at the end; a negative one spun forever
        subset = _subset(subset)
        if data is None:
            data = load_data(cfg.dataset, subset=subset, validation=validation, device=device or "auto", seed=seed,
                             root=root, mean_over=mean_over)
            set_seed(seed)
        dev = data.device
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv algorithms once
        model = cfg.build_model().to(device=dev, memory_format=torch.channels_last)
        weights, others = model.decay_parameters()
        groups = [{"params": weights, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
        tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, momentum=cfg.momentum, milestones=cfg.milestones,
                           gamma=cfg.gamma, eval_every=eval_every, checkpoint_every=eval_every,
                           log_every=max(1, min(50, eval_every or 50)), seed=seed, device=str(dev), progress=progress)
        batches = TensorBatches(torch.arange(len(data.y_train), device=dev), batch_size=cfg.batch_size, seed=seed)
        cls = GraphTrainer if mode == "graph" or (mode == "auto" and dev.type == "cuda") else Trainer
        info = {"data": data.description, "eval_split": data.eval_split,
                "subset": list(subset) if isinstance(subset, tuple) else subset,
                "train_images": int(len(data.y_train)), "eval_images": int(len(data.y_eval)),
                "eval_every": eval_every, "mode": experiment.trainer_mode(cls is GraphTrainer, dev),
                "card": experiment.card(dev)}
        # what a checkpoint must have been written by to be resumed as this run: the configuration (every field but
        # impl, which changes the kernels, not the math) and the data; the trainer compares seed and optimizer
        run_info = {"config": cfg.name, **{k: v for k, v in cfg.as_dict().items() if k not in ("name", "impl")},
                    **{k: info[k] for k in ("data", "eval_split", "subset", "train_images", "eval_images")}}
        return experiment.Setup(model, CifarLoss(data), batches, tcfg, evaluate=lambda m: evaluate(m, data),
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

    def label(self, name: str, options) -> str:
        return f"{options.get('dataset') or 'cifar10'}-{name}"

    flags = {"--dataset": ("field", dict(choices=DATASETS, help="default cifar10 (or the resumed run's)")),
             "--subset": ("option", dict(type=cli.subset, help="stratified subset: N or N_TRAIN,N_EVAL")),
             "--mode": ("option", dict(choices=MODES, help="default auto")),
             "--impl": ("field", dict(choices=IMPLS, help="DivisiveNorm impl of the normalizers ('compile': "
                                                          "torch.compile, for GPUs)")),
             "--eval-every": ("option", dict(type=cli.nonnegative_int, help="steps per evaluation and checkpoint "
                                                                            "(0: only at the end; default 500)")),
             "--validation": ("option", dict(action="store_true", help="evaluate on the 45K/5K validation fold")),
             "--lr": ("field", dict(type=cli.positive_float)),
             "--batch-size": ("field", dict(type=cli.positive_int, help="default the paper's 100"))}

    def add_arguments(self, q, verb: str) -> None:
        super().add_arguments(q, verb)
        if verb == "report":
            q.add_argument("--dataset", default="cifar10", choices=DATASETS)

    def report(self, path, args=None) -> dict:
        rep = report(path, getattr(args, "dataset", None) or "cifar10")
        atomic_write_json(rep, Path(path) / "summary.json")
        return rep

    def commands(self) -> dict:
        return {"check-graph": experiment.Command("compare graph steps with eager steps",
                                                  lambda q: _check_args(q, "check-graph"), _check_command, rows=True),
                "bench": experiment.Command("training images/s per configuration", lambda q: _check_args(q, "bench"),
                                            _check_command, rows=True)}


RECIPE = CifarRecipe()


# ------------------------------------------------------------------------------------- the library API
def run(config: Union[str, CifarConfig], dataset: Optional[str] = None, *, seed: int = 0,
        steps: Optional[int] = None, subset=None, validation: bool = False, eval_every: int = 500,
        device: str = "auto", mode: str = "auto", out=None, out_dir=None, resume=None,
        time_limit: Optional[float] = None, stop_after: Optional[int] = None,
        data: Optional[CifarData] = None, root=None, mean_over: str = "train", progress: bool = False,
        parameters=None, **changes) -> RunResult:
    """Train one configuration with :func:`dnlib.experiment.run` and return its :class:`~dnlib.experiment.RunResult`.

    Args:
        config: a name from :func:`dnlib.configs.cifar.list_configs` or a :class:`CifarConfig`.
        dataset: ``"cifar10"`` (default) or ``"cifar100"``.
        steps: shorten the schedule to this many steps, milestones scaled proportionally (None or 0: the paper's).
        subset, validation, root, mean_over: see :func:`load_data` (ignored when ``data`` is given).
        eval_every: evaluate (and checkpoint, and check the time limit) every K steps; the authors' code: 500.
        mode: ``"auto"`` (CUDA graph on CUDA, eager on CPU), ``"graph"`` or ``"eager"``.
        out: a base folder: the run gets a new folder in it. ``resume`` (alias ``out_dir``): a run folder to
            continue (a checkpoint of another run there raises :class:`~dnlib.train.CheckpointError`) or start in.
        time_limit: seconds; the runner's rule (:mod:`dnlib.experiment`).
        stop_after: stop at this step (simulates an interruption; the schedule is still ``steps``).
        **changes: fields of the configuration to change, e.g. ``lr=2e-3``.

    A run whose loss (or test metric) becomes NaN/inf raises :class:`~dnlib.train.TrainingDiverged` after
    writing its record with ``stopped: "diverged at step N"`` and no accuracy.
    """
    if out_dir is not None and resume is not None:
        raise ValueError("out_dir, resume: the same thing (the run folder); give one")
    resume = resume if resume is not None else out_dir
    if dataset is not None:
        changes["dataset"] = dataset
    options = {"subset": subset, "validation": validation, "root": root, "mean_over": mean_over, "mode": mode,
               "eval_every": eval_every, "progress": progress}
    if data is not None:
        options["data"] = data
    return experiment.run(RECIPE, config, seed=seed, steps=steps, time_limit=time_limit, out=out,
                          resume=resume, device=device, overrides=changes, options=options, stop_after=stop_after,
                          parameters=parameters)


def run_many(configs: Sequence[str], dataset: str = "cifar10", *, seeds: Sequence[int] = (0,),
             data: Optional[CifarData] = None, subset=None, validation: bool = False, device: str = "auto",
             **kwargs) -> list:
    """:func:`run` for every configuration and seed in this process on one loaded ``data`` (notebooks, CPU)."""
    if data is None:
        data = load_data(dataset, subset=subset, validation=validation, device=device)
    return [run(c, dataset, seed=s, data=data, subset=_subset(subset), **kwargs) for c in configs for s in seeds]


def make_trainer(cfg: CifarConfig, data: CifarData, *, seed: int = 0, mode: str = "auto", log_every=None) -> Trainer:
    """The seeded model of ``cfg`` and its trainer on ``data`` (``mode``: see :data:`MODES`) without evaluation,
    outside the runner (checks and benchmarks)."""
    set_seed(seed)
    s = RECIPE.build(cfg, seed, data=data, mode=mode, eval_every=0)
    s.train.log_every = log_every or s.train.log_every
    return s.make_trainer(evaluate=None)


def sweep(configs: Sequence[str], seeds: Sequence[int] = (0,), *, out_dir, dataset: str = "cifar10", jobs: int = 1,
          time_limit: Optional[float] = None, grace: float = 90.0, status_every: float = 30.0,
          run_args: Sequence[str] = (), python: str = sys.executable, verbose: bool = True) -> list:
    """:func:`dnlib.experiment.sweep` of CIFAR runs on ``dataset``: every (configuration, seed) as its own process
    in ``out_dir/<dataset>-<name>-s<seed>``, ``jobs`` at a time; resumable (a rerun skips finished runs). Returns
    :func:`gather`'s rows. ``run_args``: extra ``run`` flags (e.g. ``["--subset", "2000", "--steps", "300"]``)."""
    return experiment.sweep(RECIPE, configs, seeds, out=out_dir, jobs=jobs, time_limit=time_limit,
                            grace=grace, status_every=status_every, run_args=["--dataset", dataset, *run_args],
                            options={"dataset": dataset}, python=python, verbose=verbose)


def gather(out_dir) -> list:
    """The rows of every run folder under ``out_dir`` (:func:`dnlib.experiment.gather`)."""
    return experiment.gather(out_dir)


# -------------------------------------------------------------------------------------- speed and checks
def check_graph(config: Union[str, CifarConfig], data: CifarData, *, steps: int = 5, seed: int = 0,
                rtol: float = 1e-2, **changes) -> dict:
    """Run ``steps`` steps with :class:`GraphTrainer` and with the eager :class:`Trainer` from the same init on the
    same batches; ``ok`` when every parameter and buffer agrees to ``rtol`` of how far training moved it, and the
    losses agree to ``rtol``. On CPU this checks the graph step's code without a capture. ``changes``: fields
    of the configuration to change (e.g. ``batch_size``; ``impl="compile"`` checks the compiled graph step
    against the uncompiled eager one)."""
    experiment.check_int("steps", steps)
    cfg = _config(config, data.name, None, changes).replace(steps=steps, milestones=())
    out = {}
    for mode in ("eager", "graph"):
        # the reference is always the uncompiled eager step; the graph step runs the config's impl
        tr = make_trainer(cfg if mode == "graph" else cfg.replace(impl="auto"), data, seed=seed, mode=mode,
                          log_every=1)
        init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        losses = [r["train_loss"] for r in tr.run_until(steps) if "train_loss" in r]
        out[mode] = (init, tr.model.state_dict(), losses, experiment.trainer_mode(mode == "graph", data.device))
    init, eager, le, _ = out["eager"]
    _, graph, lg, gmode = out["graph"]
    moved = max((eager[k].double() - init[k].double()).abs().max().item() for k in eager if eager[k].is_floating_point())
    diff = max((eager[k].double() - graph[k].double()).abs().max().item() for k in eager if eager[k].is_floating_point())
    loss_diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(le, lg))
    ok = bool(diff <= rtol * moved and loss_diff <= rtol and all(math.isfinite(v) for v in lg) and moved > 0)
    return {"config": cfg.name, "mode": gmode, "impl": cfg.impl, "steps": steps, "param_diff": diff,
            "param_moved": moved, "loss_rel_diff": loss_diff, "eager_losses": le, "graph_losses": lg, "ok": ok}


def benchmark(config: Union[str, CifarConfig], data: CifarData, *, steps: int = 200, warmup: int = 20,
              mode: str = "auto", seed: int = 0, **changes) -> dict:
    """Training throughput (images/s) of one configuration: ``steps`` timed steps after ``warmup`` (capture,
    and with ``impl="compile"`` compilation, included in the warm-up). ``changes``: configuration fields."""
    experiment.check_int("steps", steps)
    experiment.check_int("warmup", warmup, 0)
    cfg = _config(config, data.name, None, changes)
    tr = make_trainer(cfg, data, seed=seed, mode=mode)
    dt, loss = experiment.time_steps(lambda: tr.train_step(next(tr.batches)), steps, warmup, data.device)
    return {"config": cfg.name, "mode": experiment.trainer_mode(isinstance(tr, GraphTrainer), data.device),
            "impl": cfg.impl, "device": experiment.card(data.device), "steps": steps, "batch_size": cfg.batch_size,
            "images_per_s": steps * cfg.batch_size / dt, "loss": float(loss)}


def estimate_seconds(images_per_s: dict, dataset: str = "cifar10", configs: Optional[Sequence[str]] = None,
                     speedup: float = 1.0) -> float:
    """Seconds to train ``configs`` (default: all of Table 7) with the paper's schedule at the measured
    single-run throughputs ``{name: images/s}``, divided by ``speedup`` (aggregate gain of concurrent runs)."""
    total = 0.0
    for name in configs or list_configs():
        cfg = get_config(name, dataset)
        total += cfg.steps * cfg.batch_size / images_per_s[name]
    return total / speedup


# ----------------------------------------------------------------------------------------------- tables
def _row(r) -> dict:
    """A run (a :class:`RunResult`, a record dict, or a run folder) as one flat row for the tables."""
    if isinstance(r, RunResult):
        r = r.record
    elif isinstance(r, (str, Path)):
        r = records.read_record(r)
    cfg, head, setup = r["config"], r["headline"] or {}, r["config"].get("setup") or {}
    stopped = r["stopped"]
    status = ("done" if stopped == experiment.COMPLETED else "diverged" if str(stopped).startswith("diverged")
              else "running" if stopped == experiment.RUNNING else "capped")
    return {"config": r["name"], "paper_row": cfg.get("paper"), "dataset": cfg.get("dataset"),
            "data": setup.get("data"), "eval_split": setup.get("eval_split"), "seed": r["seed"],
            "steps": r["steps_done"], "planned_steps": r["steps_planned"], "capped": stopped != experiment.COMPLETED,
            "stopped": stopped, "status": status, "final_acc": head.get("final_acc"), "best_acc": head.get("best_acc"),
            "paper_acc": (r["paper"] or {}).get("final_acc"), "images_per_s": head.get("images_per_s") or 0.0,
            "mode": setup.get("mode"), "impl": cfg.get("impl", "auto"), "batch_size": cfg.get("batch_size", 100),
            "device": (r.get("device") or {}).get("name")}


def summarize(results) -> list:
    """One row per (dataset, configuration): mean and std of the final accuracy over seeds, beside the paper's
    (runs without an accuracy, i.e. diverged ones, are counted in ``diverged`` and left out of the mean)."""
    groups = {}
    for r in map(_row, results):
        groups.setdefault((r["dataset"], r["config"]), []).append(r)
    out = []
    for (ds, name), rs in groups.items():
        acc = np.array([r["final_acc"] for r in rs if r["final_acc"] is not None], dtype=float)
        out.append({"dataset": ds, "config": name, "paper_row": rs[0]["paper_row"], "seeds": len(acc),
                    "diverged": sum(str(r.get("stopped", "")).startswith("diverged") for r in rs),
                    "acc": float(acc.mean()) if len(acc) else None,
                    "acc_std": float(acc.std()) if len(acc) > 1 else 0.0,
                    "paper_acc": rs[0]["paper_acc"], "steps": min(r["steps"] for r in rs),
                    "planned_steps": rs[0]["planned_steps"], "capped": any(r["capped"] for r in rs),
                    "images_per_s": float(np.mean([r["images_per_s"] for r in rs])),
                    "data": rs[0].get("data", ""), "in_table3": name in TABLE3_ROWS})
    return out


def results_table(results) -> MarkdownTable:
    """Markdown table of :func:`summarize` beside the paper's Table 7 (Table 3 rows in bold)."""
    rows = []
    for r in summarize(results):
        ours = "—" if r["acc"] is None else (
            f"{r['acc']:.4f}" + (f" ± {r['acc_std']:.4f} (n={r['seeds']})" if r["seeds"] > 1 else ""))
        rows.append([r["data"] or r["dataset"], f"**{r['paper_row']}**" if r["in_table3"] else r["paper_row"],
                     ours + (f" ({r['diverged']} diverged)" if r["diverged"] else ""), cell(r["paper_acc"], ".4f"),
                     f"{r['steps']}/{r['planned_steps']}" + (" capped" if r["capped"] else ""),
                     cell(r["images_per_s"], ".0f")])
    return markdown_table(["data", "model", "ours (acc)", "paper", "steps", "img/s"], rows)


def headline(results) -> dict:
    """The numbers a notebook saves (:func:`dnlib.suite.save_results`): per configuration the final accuracy
    (mean over seeds), the paper's, steps and images/s, and the data used."""
    rows = summarize(results)
    return {"data": rows[0]["data"] if rows else None,
            "runs": {r["config"]: {k: r[k] for k in ("acc", "acc_std", "seeds", "paper_acc", "steps", "planned_steps",
                                                     "images_per_s")} for r in rows}}


def config_table(names: Optional[Sequence[str]] = None, dataset: str = "cifar10") -> MarkdownTable:
    """The configurations as a Markdown table: the values of PAPER.md §2.3 and the schedule."""
    rows = []
    for c in (get_config(n, dataset) for n in names or list_configs()):
        other = ", ".join(f"{k} {v:g}" for k, v in (("weight decay", c.weight_decay), ("dropout", c.dropout)) if v)
        rows.append([c.name, c.paper, c.norm, cell(c.sigma, "g"), f"{c.alpha:g}", c.affine,
                     None if c.window is None else ", ".join(map(str, c.window)), other or None,
                     f"{', '.join(map(str, c.milestones))} / {c.steps}"])
    return markdown_table(["name", "paper row", "norm", "sigma (eps = sigma²)", "alpha (L1)", "affine", "DN windows",
                           "other", "lr milestones / end"], rows)


# ---------------------------------------------------------------------------------------------- figures
def learning_curves(results, metric: Optional[str] = None):
    """Evaluation accuracy against step for every run (RunResults or run folders), on one figure (left), and the
    training loss (right)."""
    runs = experiment.load_runs(results)
    key = metric or (f"{runs[0][0]['config']['setup']['eval_split']}_acc" if runs else "test_acc")
    fig, (ax_acc, _) = run_curves(
        [(f"{rec['config'].get('paper')} (seed {rec['seed']})", rows) for rec, rows in runs],
        [{"key": key, "marker": ".", "ylabel": metric or "evaluation accuracy", "title": "evaluation accuracy"},
         {"key": "train_loss", "ylabel": "cross-entropy", "title": "training loss (no L1 term)"}],
        figsize=(11, 4))
    for line, (rec, _) in zip(ax_acc.get_lines(), runs):   # the paper's final accuracy, dashed, in the run's colour
        paper = (rec.get("paper") or {}).get("final_acc")
        if paper is not None:
            ax_acc.axhline(paper, ls="--", lw=1, color=line.get_color(),
                           label=f"{rec['config'].get('paper')} paper: {paper:.3f}")
    ax_acc.legend(fontsize=9)
    return fig


def first_layer_responses(model: nn.Module, data: CifarData, n_images: int = 500) -> torch.Tensor:
    """First-layer pre-normalization responses (conv1 + bias) of the first ``n_images`` evaluation images,
    ``(n, 32, 32, 32)`` on the CPU: what Table 10 histograms."""
    was = model.training
    model.eval()
    with torch.no_grad():
        idx = torch.arange(min(n_images, len(data.y_eval)), device=data.device)
        z = model.features(data.images(idx, "eval"), 1, pre_norm=True).float().cpu().contiguous()
    model.train(was)
    return z


def table10(results, data: CifarData, *, n_images: int = 500, bins: int = 20, max_samples: int = 20000) -> MarkdownTable:
    """Mean pairwise |correlation| and MI (nats) of first-layer pre-normalization responses per trained model
    (:func:`dnlib.stats.pairwise_corr_mi`, all filter pairs), beside the paper's Table 10."""
    from .stats import pairwise_corr_mi
    rows = []
    for r in results:
        st = pairwise_corr_mi(first_layer_responses(r.model, data, n_images), bins=bins, max_samples=max_samples)
        pc, pm = TABLE10.get(r.config.name, (None, None))
        rows.append([r.config.paper] + [cell(v, ".4f") for v in (st.corr, pc, st.mi, pm)])
    return markdown_table(["model", "corr (ours)", "corr (paper)", "MI (ours)", "MI (paper)"], rows)


def table10_figure(results, data: CifarData, *, n_pairs: int = 3, n_images: int = 500, bins: int = 40,
                   seed: int = 0):
    """Table 10's joint histograms: one row per model, ``n_pairs`` random first-layer filter pairs (the same
    pairs for every model), each titled with its r and MI (nats); the row's first title names the model and the
    paper's mean |corr| and MI over all pairs."""
    from .figures import joint_histogram
    from .stats import as_samples, pairwise_corr_mi
    fig = new_figure(figsize=(2.4 * n_pairs, 2.3 * len(results)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(results), n_pairs, squeeze=False))
    for row, r in zip(axes, results):
        z = first_layer_responses(r.model, data, n_images)
        shown = pairwise_corr_mi(z, n_pairs=n_pairs, seed=seed)
        zc = as_samples(z, max_samples=20000, seed=seed)
        paper = TABLE10.get(r.config.name)
        for k, (ax, (i, j)) in enumerate(zip(row, shown.pairs.tolist())):
            joint_histogram(zc[i], zc[j], bins=bins, ax=ax, labels=(f"filter {i}", f"filter {j}"),
                            title=f"r={shown.corr_per_pair[k]:.2f} MI={shown.mi_per_pair[k]:.2f}")
        row[0].set_title("")   # (its pair's numbers go into the row's left title)
        row[0].set_title(f"{r.config.paper}" + (f" (paper, all pairs: |corr| {paper[0]:.2f}, MI {paper[1]:.2f} nats)"
                                                 if paper else "")
                         + f"\nr={shown.corr_per_pair[0]:.2f} MI={shown.mi_per_pair[0]:.2f}", loc="left", fontsize=9)
    return fig


_REPORT_INPUTS = ("bench.json", "bench_compile.json", "graph_check.json", "sweep/")


def report(out_dir, dataset: str = "cifar10") -> dict:
    """Summarize a GPU trip's folder (``graph_check.json``, ``bench.json``, optional ``bench_compile.json`` (the
    same bench with ``impl="compile"``), ``sweep/``) into one dict: card, single-run images/s per configuration
    and impl, the concurrent runs' accuracies and images/s, the measured gain of running them concurrently, and
    the estimated time of the whole Table 7 at that gain with the faster impl of each configuration."""
    out_dir = Path(out_dir)
    if not any((out_dir / f).exists() for f in _REPORT_INPUTS):
        raise ValueError(f"{out_dir}: nothing to report (it holds none of {', '.join(_REPORT_INPUTS)})")
    read = lambda p: json.loads(p.read_text()) if p.exists() else None  # noqa: E731
    bench, check = read(out_dir / "bench.json") or [], read(out_dir / "graph_check.json")
    bench_c = read(out_dir / "bench_compile.json") or []
    sweep_dir = out_dir / "sweep"
    rows = [_row(d) for d in records.find_runs([sweep_dir])] if sweep_dir.is_dir() else []
    meta = read(sweep_dir / "sweep.json") or {}
    single = {b["config"]: b["images_per_s"] for b in bench}
    single_c = {b["config"]: b["images_per_s"] for b in bench_c}
    best = {k: max(v, single_c.get(k, 0.0)) for k, v in single.items()}
    rep = {"device": (bench[0]["device"] if bench else rows[0].get("device") if rows else None),
           "torch": torch.__version__, "graph_check": check, "single_run_images_per_s": single,
           "runs": [{k: r.get(k) for k in ("config", "paper_row", "seed", "steps", "planned_steps", "capped", "status",
                                           "stopped", "final_acc", "paper_acc", "images_per_s", "mode", "data",
                                           "impl")} for r in rows]}
    if single_c:
        rep["single_run_images_per_s_compile"] = single_c
        rep["best_images_per_s"] = best
    if rows and meta.get("wall_seconds") and not meta.get("skipped"):   # a resumed sweep's wall time is partial
        images = sum(r["steps"] * r["batch_size"] for r in rows)
        rep["concurrent"] = {"jobs": meta.get("jobs"), "wall_seconds": meta["wall_seconds"],
                             "aggregate_images_per_s": images / meta["wall_seconds"]}
        # each run's single-process figure with the impl it ran (configs without a normalizer have no compiled one)
        used = {r["config"]: single_c.get(r["config"]) if r["impl"] == "compile" and r["config"] in single_c
                else single.get(r["config"]) for r in rows}
        if all(v for v in used.values()):
            sequential = sum(r["steps"] * r["batch_size"] / used[r["config"]] for r in rows)
            gain = sequential / meta["wall_seconds"]
            rep["concurrent"]["gain_vs_sequential"] = gain
            if all(n in best for n in list_configs()):
                rep["table7_estimate_seconds"] = {
                    "sequential": estimate_seconds(best, dataset),
                    f"concurrent_{meta.get('jobs')}": estimate_seconds(best, dataset, speedup=gain)}
    return rep


# --------------------------------------------------------------------------------------------------- CLI
def _subset(value):
    """``None``/``[]``/``""`` -> None; ``"N"``, ``N`` -> N; ``"A,B"``, ``[A, B]`` -> (A, B)."""
    if value is None or value == [] or value == "" or value == ():
        return None
    parts = [int(p) for p in (str(value).split(",") if isinstance(value, str) else np.atleast_1d(value))]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _check_args(q, name: str) -> None:
    q.add_argument("configs", nargs="+", help="configuration name(s); 'all' = Table 7, 'table3' = Table 3 rows")
    q.add_argument("--dataset", default="cifar10", choices=DATASETS)
    q.add_argument("--subset", type=cli.subset, default=None, help="stratified subset: N or N_TRAIN,N_EVAL")
    q.add_argument("--device", type=cli.device, default="auto")
    q.add_argument("--mode", default="auto", choices=MODES)
    q.add_argument("--impl", default="auto", choices=IMPLS,
                   help="DivisiveNorm impl of the normalizers ('compile': torch.compile, for GPUs)")
    q.add_argument("--steps", type=cli.positive_int, default=5 if name == "check-graph" else 200)
    if name == "bench":
        q.add_argument("--warmup", type=cli.nonnegative_int, default=20, help="untimed steps first (the capture among them)")


def _check_command(args, q):
    with cli.user_errors(q):
        names = RECIPE.expand(args.configs)
        for name in names:
            _config(name, args.dataset, None, {"impl": args.impl})
        data = load_data(args.dataset, subset=args.subset, device=args.device)
    if args.cmd == "check-graph":
        return (check_graph(name, data, steps=args.steps, impl=args.impl) for name in names)
    return (benchmark(name, data, steps=args.steps, warmup=args.warmup, mode=args.mode, impl=args.impl)
            for name in names)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dnlib.cifar ...``: :func:`dnlib.experiment.main` of :data:`RECIPE`."""
    return experiment.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
