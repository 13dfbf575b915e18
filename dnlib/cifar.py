"""The paper's CIFAR experiments (PAPER.md §3.1; Tables 3, 7 and 10): data, runs, sweeps, tables and figures.

A run is a named configuration (:mod:`dnlib.configs.cifar`, one per Table 7 row and dataset) trained by
:class:`dnlib.train.Trainer` with the authors' schedule, evaluated every ``eval_every`` steps::

    from dnlib.cifar import run
    result = run("dn-star", "cifar10", steps=300, subset=(2000, 1000))     # a smoke run, milestones scaled
    result.summary["final_acc"], result.history, result.model

From the shell (``python -m dnlib.cifar --help``)::

    python -m dnlib.cifar run dn-star --dataset cifar10 --out runs/cifar/dn-star-s0
    python -m dnlib.cifar sweep base bn bn-star dn-star --seeds 0 1 --jobs 4 --out runs/cifar/sweep
    python -m dnlib.cifar gather runs/cifar/sweep

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
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .figures import MarkdownTable, _new_figure
from .norm import IMPLS
from .configs.cifar import DATASETS, TABLE3_ROWS, TABLE7, TABLE10, CifarConfig, get_config, list_configs
from . import cli
from .io import atomic_write_json, atomic_write_text
from .train import (CheckpointError, GraphTrainer, TensorBatches, Trainer, TrainConfig, TrainingDiverged,
                    resolve_device, set_seed)

__all__ = ["CifarData", "load_data", "run", "RunResult", "run_many", "check_graph", "benchmark", "sweep", "gather",
           "summarize", "results_table", "learning_curves", "first_layer_responses", "table10", "table10_figure",
           "estimate_seconds", "report", "headline", "config_table", "MODES"]

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


# ------------------------------------------------------------------------------------------------ runs
def _config(config: Union[str, CifarConfig], dataset: str, steps: Optional[int], changes: dict) -> CifarConfig:
    cfg = get_config(config, dataset) if isinstance(config, str) else config
    if changes:
        cfg = cfg.replace(**changes)
    return cfg.scaled(steps) if steps and steps != cfg.steps else cfg


def make_trainer(cfg: CifarConfig, data: CifarData, *, seed: int = 0, mode: str = "auto", eval_every: int = 500,
                 out_dir=None, progress: bool = False, run_info: Optional[dict] = None) -> Trainer:
    """The seeded model of ``cfg`` and its trainer on ``data`` (``mode``: see :data:`MODES`; ``run_info``: the run
    identity a resumed checkpoint must match, see :class:`~dnlib.train.Trainer`)."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    device = data.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv algorithms once
    set_seed(seed)
    model = cfg.build_model().to(device=device, memory_format=torch.channels_last)
    weights, others = model.decay_parameters()
    groups = [{"params": weights, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, momentum=cfg.momentum, milestones=cfg.milestones,
                       gamma=cfg.gamma, eval_every=eval_every, checkpoint_every=eval_every,
                       log_every=max(1, min(50, eval_every or 50)), seed=seed, device=str(device), progress=progress)
    batches = TensorBatches(torch.arange(len(data.y_train), device=device), batch_size=cfg.batch_size, seed=seed)
    use_graph = mode == "graph" or (mode == "auto" and device.type == "cuda")
    cls = GraphTrainer if use_graph else Trainer
    return cls(model, CifarLoss(data), batches, tcfg, evaluate=lambda m: evaluate(m, data), out_dir=out_dir,
               param_groups=groups, run_info=run_info)


def _run_info(cfg: CifarConfig, data: CifarData, subset) -> dict:
    """What a checkpoint must have been written by to be resumed as this run: the configuration (name and every
    field but ``impl``, which changes the kernels, not the math) and the data (the seed and the optimizer's
    settings are compared by the trainer). ``stop_after``, ``eval_every``, ``mode`` and the device may differ."""
    fields = {k: v for k, v in cfg.as_dict().items() if k not in ("name", "impl")}
    return {"config": cfg.name, **fields, "data": data.description, "eval_split": data.eval_split,
            "subset": list(subset) if isinstance(subset, (tuple, list)) else subset,
            "train_images": int(len(data.y_train)), "eval_images": int(len(data.y_eval))}


def _mode_name(trainer: Trainer) -> str:
    if isinstance(trainer, GraphTrainer):
        return "cuda-graph" if trainer.capture else "graph-step (eager)"
    return "eager"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@dataclass
class RunResult:
    """One finished (or capped) run: ``summary`` (a flat dict, also ``result.json``), ``history`` (the trainer's
    rows) and the trained ``model`` (None when read back from disk)."""
    summary: dict
    history: list
    model: Optional[nn.Module] = None
    config: Optional[CifarConfig] = None

    def __repr__(self) -> str:
        s = self.summary
        acc = "n/a" if s["final_acc"] is None else f"{s['final_acc']:.4f}"
        return (f"RunResult({s['config']} on {s['dataset']}, seed {s['seed']}: {s['steps']}/{s['planned_steps']} steps, "
                f"{s['eval_split']} acc {acc}, {s['images_per_s']:.0f} img/s {s['mode']}, {s['stopped']})")


def _summary(cfg: CifarConfig, data: CifarData, trainer: Trainer, seed: int, capped: bool, wall: float,
             subset) -> dict:
    key = f"{data.eval_split}_acc"
    evals = [] if trainer.stopped else [r for r in trainer.history if key in r]   # a diverged run reports no number
    return {
        "config": cfg.name, "paper_row": cfg.paper, "dataset": cfg.dataset, "data": data.description,
        "eval_split": data.eval_split, "seed": seed, "subset": subset, "steps": trainer.step,
        "planned_steps": cfg.steps, "milestones": list(cfg.milestones), "capped": capped,
        "stopped": trainer.stopped or ("capped" if capped else "completed"),
        "final_acc": evals[-1][key] if evals else None,
        "best_acc": max(r[key] for r in evals) if evals else None,
        "paper_acc": TABLE7[cfg.name][DATASETS.index(cfg.dataset)] if cfg.name in TABLE7 else None,
        "images_per_s": trainer.step * cfg.batch_size / trainer.elapsed if trainer.elapsed else 0.0,
        "train_seconds": trainer.elapsed, "wall_seconds": wall, "mode": _mode_name(trainer),
        "device": _device_name(trainer.device), "torch": torch.__version__, "fields": cfg.as_dict(),
    }


def run(config: Union[str, CifarConfig], dataset: str = "cifar10", *, seed: int = 0, steps: Optional[int] = None,
        subset=None, validation: bool = False, eval_every: int = 500, device: str = "auto", mode: str = "auto",
        out_dir=None, max_seconds: Optional[float] = None, stop_after: Optional[int] = None,
        data: Optional[CifarData] = None, root=None, mean_over: str = "train", progress: bool = False,
        **changes) -> RunResult:
    """Train one configuration and return its :class:`RunResult`.

    Args:
        config: a name from :func:`dnlib.configs.cifar.list_configs` or a :class:`CifarConfig`.
        dataset: ``"cifar10"`` or ``"cifar100"`` (ignored when ``config`` is a CifarConfig).
        steps: shorten the schedule to this many steps, milestones scaled proportionally (None or 0: the paper's).
        subset, validation, root, mean_over: see :func:`load_data` (ignored when ``data`` is given).
        eval_every: evaluate (and checkpoint) every K steps; the paper's code evaluates every 500.
        mode: ``"auto"`` (CUDA graph on CUDA, eager on CPU), ``"graph"`` or ``"eager"``.
        out_dir: write ``checkpoint.pt``, ``history.json`` and ``result.json`` here, and resume from it (a
            checkpoint of another run there raises :class:`~dnlib.train.CheckpointError`).
        max_seconds: stop after the evaluation that first ends past this wall time (``summary["capped"]``).
        stop_after: stop at this step (simulates an interruption; the schedule is still ``steps``).
        **changes: fields of the configuration to change, e.g. ``lr=2e-3``.

    A run whose loss (or test metric) becomes NaN/inf raises :class:`~dnlib.train.TrainingDiverged` after
    writing ``result.json`` with ``summary["stopped"] = "diverged at step N"`` and no accuracy.
    """
    t0 = time.perf_counter()
    if eval_every is None or eval_every < 0:  # a negative interval never reached the target (spun forever)
        raise ValueError(f"eval_every: must be an integer >= 0 (0: only at the end), got {eval_every!r}")
    if isinstance(config, CifarConfig):
        dataset = config.dataset
    cfg = _config(config, dataset, steps, changes)
    if data is None:
        data = load_data(cfg.dataset, subset=subset, validation=validation, device=device, seed=seed, root=root,
                         mean_over=mean_over)
    trainer = make_trainer(cfg, data, seed=seed, mode=mode, eval_every=eval_every, out_dir=out_dir,
                           progress=progress, run_info=_run_info(cfg, data, subset))
    target = cfg.steps if stop_after is None else min(int(stop_after), cfg.steps)
    if out_dir is not None:
        trainer.try_resume()
    chunk = eval_every or target
    capped = False

    def write():
        trainer.cfg.steps = cfg.steps
        summary = _summary(cfg, data, trainer, seed, capped or trainer.step < cfg.steps, time.perf_counter() - t0,
                           subset)
        if out_dir is not None:
            atomic_write_json({"summary": summary, "history": trainer.history}, Path(out_dir) / "result.json")
        return summary

    try:
        while trainer.step < target:
            trainer.run_until(min(target, (trainer.step // chunk + 1) * chunk))
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds and trainer.step < target:
                capped = True  # stop at the evaluation that ends past the deadline
                break
    except TrainingDiverged:
        write()
        raise
    return RunResult(write(), trainer.history, trainer.model, cfg)


def run_many(configs: Sequence[str], dataset: str = "cifar10", *, seeds: Sequence[int] = (0,),
             data: Optional[CifarData] = None, subset=None, validation: bool = False, device: str = "auto",
             **kwargs) -> list:
    """:func:`run` for every configuration and seed in this process on one loaded ``data`` (notebooks, CPU)."""
    if data is None:
        data = load_data(dataset, subset=subset, validation=validation, device=device)
    return [run(c, dataset, seed=s, data=data, subset=_subset(subset), **kwargs) for c in configs for s in seeds]


def headline(results) -> dict:
    """The numbers a notebook saves (:func:`dnlib.suite.save_results`): per configuration the final accuracy
    (mean over seeds), the paper's, steps and images/s, and the data used."""
    rows = summarize(results)
    return {"data": rows[0]["data"] if rows else None,
            "runs": {r["config"]: {k: r[k] for k in ("acc", "acc_std", "seeds", "paper_acc", "steps", "planned_steps",
                                                     "images_per_s")} for r in rows}}


def config_table(names: Optional[Sequence[str]] = None, dataset: str = "cifar10") -> MarkdownTable:
    """The configurations as a Markdown table: the values of PAPER.md §2.3 and the schedule."""
    lines = ["| name | paper row | norm | sigma (eps = sigma²) | alpha (L1) | affine | DN windows | other | "
             "lr milestones / end |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names or list_configs():
        c = get_config(n, dataset)
        other = ", ".join(f"{k} {v:g}" for k, v in (("weight decay", c.weight_decay), ("dropout", c.dropout)) if v)
        lines.append(f"| {c.name} | {c.paper} | {c.norm} | {'—' if c.sigma is None else f'{c.sigma:g}'} | "
                     f"{c.alpha:g} | {'—' if c.affine is None else c.affine} | "
                     f"{'—' if c.window is None else ', '.join(map(str, c.window))} | {other or '—'} | "
                     f"{', '.join(map(str, c.milestones))} / {c.steps} |")
    return MarkdownTable("\n".join(lines))


# -------------------------------------------------------------------------------------- speed and checks
def check_graph(config: Union[str, CifarConfig], data: CifarData, *, steps: int = 5, seed: int = 0,
                rtol: float = 1e-2, **changes) -> dict:
    """Run ``steps`` steps with :class:`GraphTrainer` and with the eager :class:`Trainer` from the same init on the
    same batches; ``ok`` when every parameter and buffer agrees to ``rtol`` of how far training moved it, and the
    losses agree to ``rtol``. On CPU this checks the graph step's code without a capture. ``changes``: fields
    of the configuration to change (e.g. ``batch_size``; ``impl="compile"`` checks the compiled graph step
    against the uncompiled eager one)."""
    if not steps >= 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    cfg = _config(config, data.name, None, changes)
    out = {}
    for mode in ("eager", "graph"):
        # the reference is always the uncompiled eager step; the graph step runs the config's impl
        tr = make_trainer(cfg if mode == "graph" else cfg.replace(impl="auto"), data, seed=seed, mode=mode,
                          eval_every=0)
        init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        losses = []
        for _ in range(steps):
            tr._set_lr()
            losses.append(float(tr.train_step(next(tr.batches))))
            tr.step += 1
        out[mode] = (init, tr.model.state_dict(), losses, _mode_name(tr))
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
    if not steps >= 1 or not warmup >= 0:
        raise ValueError(f"steps, warmup: must be integers >= 1 and >= 0, got {steps!r}, {warmup!r}")
    cfg = _config(config, data.name, None, changes)
    tr = make_trainer(cfg, data, seed=seed, mode=mode, eval_every=0)
    sync = torch.cuda.synchronize if data.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        tr.train_step(next(tr.batches))
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = tr.train_step(next(tr.batches))
    sync()
    dt = time.perf_counter() - t0
    return {"config": cfg.name, "mode": _mode_name(tr), "impl": cfg.impl, "device": _device_name(data.device),
            "steps": steps, "batch_size": cfg.batch_size, "images_per_s": steps * cfg.batch_size / dt,
            "loss": float(loss)}


def estimate_seconds(images_per_s: dict, dataset: str = "cifar10", configs: Optional[Sequence[str]] = None,
                     speedup: float = 1.0) -> float:
    """Seconds to train ``configs`` (default: all of Table 7) with the paper's schedule at the measured
    single-run throughputs ``{name: images/s}``, divided by ``speedup`` (aggregate gain of concurrent runs)."""
    total = 0.0
    for name in configs or list_configs():
        cfg = get_config(name, dataset)
        total += cfg.steps * cfg.batch_size / images_per_s[name]
    return total / speedup


# ----------------------------------------------------------------------------------------------- sweeps
def _run_dir(out_dir: Path, name: str, dataset: str, seed: int) -> Path:
    return Path(out_dir) / f"{dataset}-{name}-s{seed}"


def _progress_line(d: Path) -> str:
    try:
        hist = json.loads((d / "history.json").read_text())
    except (OSError, ValueError):
        return f"{d.name}: starting"
    accs = [r for r in hist if any(k.endswith("_acc") for k in r)]
    last = accs[-1] if accs else hist[-1] if hist else {}
    acc = next((v for k, v in last.items() if k.endswith("_acc")), float("nan"))
    ips = last["step"] * 100 / last["time"] if last.get("time") else 0.0
    return f"{d.name}: step {last.get('step', 0)} acc {acc:.4f} ~{ips:.0f} img/s"


def sweep(configs: Sequence[str], seeds: Sequence[int] = (0,), *, out_dir, dataset: str = "cifar10", jobs: int = 1,
          max_seconds: Optional[float] = None, grace: float = 90.0, status_every: float = 30.0,
          run_args: Sequence[str] = (), python: str = sys.executable, verbose: bool = True) -> list:
    """Run every (configuration, seed) as its own ``python -m dnlib.cifar run`` process, ``jobs`` at a time
    (several runs share one GPU), then :func:`gather` their results into one table.

    Each run writes ``out_dir/<dataset>-<name>-s<seed>/{log.txt,history.json,result.json}``. ``max_seconds`` is
    passed to each run (it stops and reports itself capped); a run still alive ``grace`` seconds later is
    killed and gathered from its last ``history.json``. ``run_args`` are extra ``run`` options (e.g.
    ``["--subset", "2000", "--steps", "300"]``). A status line per running job is printed every ``status_every`` s.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [(c, s) for c in configs for s in seeds]
    running = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    t_start = last_status = time.perf_counter()
    while todo or running:
        while todo and len(running) < max(1, jobs):
            name, seed = todo.pop(0)
            d = _run_dir(out_dir, name, dataset, seed)
            d.mkdir(parents=True, exist_ok=True)
            cmd = [python, "-m", "dnlib.cifar", "run", name, "--dataset", dataset, "--seed", str(seed), "--out", str(d),
                   *map(str, run_args)]
            if max_seconds is not None:
                cmd += ["--max-seconds", str(max_seconds)]
            log = open(d / "log.txt", "w")
            running[d] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.perf_counter())
            if verbose:
                print(f"[sweep] started {d.name}", flush=True)
        time.sleep(0.5)
        for d, (proc, log, start) in list(running.items()):
            late = max_seconds is not None and time.perf_counter() - start > max_seconds + grace
            if proc.poll() is None and late:
                proc.kill()
                proc.wait()
                if verbose:
                    print(f"[sweep] killed {d.name} after {time.perf_counter() - start:.0f} s", flush=True)
            if proc.poll() is not None:
                log.close()
                del running[d]
                if verbose:
                    print(f"[sweep] finished {d.name} (exit {proc.returncode}): {_progress_line(d)}", flush=True)
        if verbose and running and time.perf_counter() - last_status > status_every:
            last_status = time.perf_counter()
            for d in running:
                print(f"[sweep]   {_progress_line(d)}", flush=True)
    rows = gather(out_dir)
    atomic_write_json(rows, out_dir / "table.json")
    atomic_write_json({"wall_seconds": time.perf_counter() - t_start, "jobs": jobs, "configs": list(configs),
                       "seeds": list(seeds), "dataset": dataset}, out_dir / "sweep.json")
    atomic_write_text(out_dir / "table.md", str(results_table(rows)) + "\n")
    return rows


def gather(out_dir) -> list:
    """The summaries of every run under ``out_dir`` (``result.json``; a killed run from its ``history.json``,
    marked ``status="killed"``; a diverged run ``status="diverged"`` with no accuracy), sorted by Table 7 order and
    seed."""
    rows = []
    for d in sorted(p for p in Path(out_dir).iterdir() if p.is_dir()):
        if (d / "result.json").exists():
            s = json.loads((d / "result.json").read_text())["summary"]
            diverged = str(s.get("stopped", "")).startswith("diverged")
            s["status"] = "diverged" if diverged else "capped" if s.get("capped") else "done"
        elif (d / "history.json").exists():
            dataset, rest = d.name.split("-", 1)
            name, seed = rest.rsplit("-s", 1)
            hist = json.loads((d / "history.json").read_text())
            evals = [r for r in hist if any(k.endswith("_acc") for k in r)]
            acc = [v for k, v in evals[-1].items() if k.endswith("_acc")][0] if evals else None
            last = hist[-1] if hist else {"step": 0, "time": 0}
            stopped = last.get("stopped")      # "diverged at step N" (the trainer's record) or None
            cfg = get_config(name, dataset)
            s = {"config": name, "paper_row": cfg.paper, "dataset": dataset, "seed": int(seed), "steps": last["step"],
                 "planned_steps": cfg.steps, "capped": True, "final_acc": None if stopped else acc,
                 "paper_acc": cfg.paper_accuracy,
                 "images_per_s": last["step"] * cfg.batch_size / last["time"] if last.get("time") else 0.0,
                 "status": "diverged" if stopped else "killed", "stopped": stopped or "killed"}
        else:
            continue
        rows.append(s)
    order = {n: i for i, n in enumerate(list_configs())}
    return sorted(rows, key=lambda r: (r["dataset"], order.get(r["config"], 99), r["seed"]))


# ----------------------------------------------------------------------------------------------- tables
def _rows(results) -> list:
    return [r.summary if isinstance(r, RunResult) else r for r in results]


def summarize(results) -> list:
    """One row per (dataset, configuration): mean and std of the final accuracy over seeds, beside the paper's
    (runs without an accuracy, i.e. diverged ones, are counted in ``diverged`` and left out of the mean)."""
    groups = {}
    for r in _rows(results):
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
    lines = ["| data | model | ours (acc) | paper | steps | img/s |", "|---|---|---|---|---|---|"]
    for r in summarize(results):
        name = f"**{r['paper_row']}**" if r["in_table3"] else r["paper_row"]
        ours = "—" if r["acc"] is None else (
            f"{r['acc']:.4f}" + (f" ± {r['acc_std']:.4f} (n={r['seeds']})" if r["seeds"] > 1 else ""))
        ours += f" ({r['diverged']} diverged)" if r["diverged"] else ""
        paper = "—" if r["paper_acc"] is None else f"{r['paper_acc']:.4f}"
        steps = f"{r['steps']}/{r['planned_steps']}" + (" capped" if r["capped"] else "")
        lines.append(f"| {r['data'] or r['dataset']} | {name} | {ours} | {paper} | {steps} | {r['images_per_s']:.0f} |")
    return MarkdownTable("\n".join(lines))


# ---------------------------------------------------------------------------------------------- figures
def learning_curves(results, metric: Optional[str] = None):
    """Evaluation accuracy against step for every run, on one figure (left), and the training loss (right)."""
    fig = _new_figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for r in results:
        key = metric or f"{r.summary['eval_split']}_acc"
        label = f"{r.summary['paper_row']} (seed {r.summary['seed']})"
        ev = [h for h in r.history if key in h]
        line, = ax_acc.plot([h["step"] for h in ev], [h[key] for h in ev], marker=".", label=label)
        tl = [h for h in r.history if "train_loss" in h]
        ax_loss.plot([h["step"] for h in tl], [h["train_loss"] for h in tl], color=line.get_color(), label=label)
    ax_acc.set(xlabel="step", ylabel=metric or "evaluation accuracy", title="evaluation accuracy")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="training loss (no L1 term)", yscale="log")
    ax_acc.legend(fontsize=7)
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
    lines = ["| model | corr (ours) | corr (paper) | MI (ours) | MI (paper) |", "|---|---|---|---|---|"]
    for r in results:
        st = pairwise_corr_mi(first_layer_responses(r.model, data, n_images), bins=bins, max_samples=max_samples)
        pc, pm = TABLE10.get(r.summary["config"], (None, None))
        fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {r.summary['paper_row']} | {st.corr:.4f} | {fmt(pc)} | {st.mi:.4f} | {fmt(pm)} |")
    return MarkdownTable("\n".join(lines))


def table10_figure(results, data: CifarData, *, n_pairs: int = 3, n_images: int = 500, bins: int = 40,
                   seed: int = 0):
    """Table 10's joint histograms: one row per model, ``n_pairs`` random first-layer filter pairs (the same
    pairs for every model), each titled with its r and MI; the paper's mean corr/MI in the row label."""
    from .figures import joint_histogram
    from .stats import as_samples, pairwise_corr_mi
    fig = _new_figure(figsize=(2.4 * n_pairs, 2.3 * len(results)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(results), n_pairs, squeeze=False))
    for row, r in zip(axes, results):
        z = first_layer_responses(r.model, data, n_images)
        shown = pairwise_corr_mi(z, n_pairs=n_pairs, seed=seed)
        zc = as_samples(z, max_samples=20000, seed=seed)
        paper = TABLE10.get(r.summary["config"])
        for k, (ax, (i, j)) in enumerate(zip(row, shown.pairs.tolist())):
            joint_histogram(zc[i], zc[j], bins=bins, ax=ax, labels=(f"filter {i}", f"filter {j}"),
                            title=f"r={shown.corr_per_pair[k]:.2f} MI={shown.mi_per_pair[k]:.2f}")
        row[0].set_ylabel(f"{r.summary['paper_row']}\n" + (f"paper {paper[0]:.2f} / {paper[1]:.2f}\n" if paper else "")
                          + f"filter {shown.pairs[0, 1].item()}", fontsize=8)
    return fig


def report(out_dir, dataset: str = "cifar10") -> dict:
    """Summarize a GPU trip's folder (``graph_check.json``, ``bench.json``, optional ``bench_compile.json`` (the
    same bench with ``impl="compile"``), ``sweep/``) into one dict: card, single-run images/s per configuration
    and impl, the concurrent runs' accuracies and images/s, the measured gain of running them concurrently, and
    the estimated time of the whole Table 7 at that gain with the faster impl of each configuration."""
    out_dir = Path(out_dir)
    read = lambda p: json.loads(p.read_text()) if p.exists() else None  # noqa: E731
    bench, check = read(out_dir / "bench.json") or [], read(out_dir / "graph_check.json")
    bench_c = read(out_dir / "bench_compile.json") or []
    sweep_dir = out_dir / "sweep"
    rows = gather(sweep_dir) if sweep_dir.is_dir() else []
    meta = read(sweep_dir / "sweep.json") or {}
    single = {b["config"]: b["images_per_s"] for b in bench}
    single_c = {b["config"]: b["images_per_s"] for b in bench_c}
    best = {k: max(v, single_c.get(k, 0.0)) for k, v in single.items()}
    rep = {"device": (bench[0]["device"] if bench else rows[0].get("device") if rows else None),
           "torch": torch.__version__, "graph_check": check, "single_run_images_per_s": single,
           "runs": [{k: r.get(k) for k in ("config", "paper_row", "seed", "steps", "planned_steps", "capped", "status",
                                           "final_acc", "paper_acc", "images_per_s", "mode", "data")}
                    | {"impl": (r.get("fields") or {}).get("impl", "auto")} for r in rows]}
    if single_c:
        rep["single_run_images_per_s_compile"] = single_c
        rep["best_images_per_s"] = best
    if rows and meta.get("wall_seconds"):
        images = sum(r["steps"] * 100 for r in rows)
        rep["concurrent"] = {"jobs": meta.get("jobs"), "wall_seconds": meta["wall_seconds"],
                             "aggregate_images_per_s": images / meta["wall_seconds"]}
        # each run's single-process figure with the impl it ran (configs without a normalizer have no compiled one)
        used = {r["config"]: single_c.get(r["config"]) if run["impl"] == "compile" and r["config"] in single_c
                else single.get(r["config"]) for r, run in zip(rows, rep["runs"])}
        if all(v for v in used.values()):
            sequential = sum(r["steps"] * 100 / used[r["config"]] for r in rows)
            gain = sequential / meta["wall_seconds"]
            rep["concurrent"]["gain_vs_sequential"] = gain
            if all(n in best for n in list_configs()):
                rep["table7_estimate_seconds"] = {
                    "sequential": estimate_seconds(best, dataset),
                    f"concurrent_{meta.get('jobs')}": estimate_seconds(best, dataset, speedup=gain)}
    return rep


# --------------------------------------------------------------------------------------------------- CLI
def _names(names: Sequence[str]) -> list:
    out = []
    for n in names:
        out += list_configs() if n == "all" else (list(TABLE3_ROWS) if n == "table3" else [n])
    for n in out:
        get_config(n)
    return out


def _subset(value):
    """``None``/``[]``/``""`` -> None; ``"N"``, ``N`` -> N; ``"A,B"``, ``[A, B]`` -> (A, B)."""
    if value is None or value == [] or value == "" or value == ():
        return None
    parts = [int(p) for p in (str(value).split(",") if isinstance(value, str) else np.atleast_1d(value))]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _writable_dir(value: str) -> str:
    return cli.out_dir(cli.in_dir(value))


_REPORT_INPUTS = ("bench.json", "bench_compile.json", "graph_check.json", "sweep/")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m dnlib.cifar", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q, many: bool):
        q.add_argument("configs" if many else "config", nargs="+" if many else None,
                       help="configuration name(s); 'all' = Table 7, 'table3' = Table 3 rows")
        q.add_argument("--dataset", default="cifar10", choices=DATASETS)
        q.add_argument("--subset", type=cli.subset, default=None, help="stratified subset: N or N_TRAIN,N_EVAL")
        q.add_argument("--device", type=cli.device, default="auto")
        q.add_argument("--mode", default="auto", choices=MODES)
        q.add_argument("--impl", default="auto", choices=IMPLS,
                       help="DivisiveNorm impl of the normalizers ('compile': torch.compile, for GPUs)")

    run_p = q = sub.add_parser("run", help="train one configuration")
    common(q, False)
    q.add_argument("--seed", type=cli.seed, default=0)
    q.add_argument("--steps", type=cli.positive_int, default=None, help="shorten the schedule (milestones scaled)")
    q.add_argument("--eval-every", type=cli.nonnegative_int, default=500, help="steps (0: only at the end)")
    q.add_argument("--validation", action="store_true", help="evaluate on the 45K/5K validation fold")
    q.add_argument("--out", type=cli.out_dir, default=None)
    q.add_argument("--max-seconds", type=cli.positive_float, default=None)
    q.add_argument("--lr", type=cli.positive_float, default=None)

    q = sub.add_parser("sweep", help="run configurations x seeds as concurrent processes, gather one table")
    q.add_argument("configs", nargs="+")
    q.add_argument("--dataset", default="cifar10", choices=DATASETS)
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=[0])
    q.add_argument("--jobs", type=cli.positive_int, default=1)
    q.add_argument("--out", type=cli.out_dir, required=True)
    q.add_argument("--max-seconds", type=cli.positive_float, default=None)
    q.add_argument("--status-every", type=cli.positive_float, default=30.0)

    q = sub.add_parser("gather", help="gather the results under a sweep folder into one table")
    q.add_argument("out", type=_writable_dir)

    q = sub.add_parser("report", help="summarize a GPU trip folder (bench.json, graph_check.json, sweep/)")
    q.add_argument("out", type=_writable_dir)
    q.add_argument("--dataset", default="cifar10", choices=DATASETS)

    for name, helptext in (("check-graph", "compare graph steps with eager steps"),
                           ("bench", "training images/s per configuration")):
        q = sub.add_parser(name, help=helptext)
        common(q, True)
        q.add_argument("--steps", type=cli.positive_int, default=5 if name == "check-graph" else 200)
        q.add_argument("--json", type=cli.out_file, default=None, help="also write the results here")
        if name == "bench":
            q.add_argument("--warmup", type=cli.nonnegative_int, default=20,
                           help="untimed steps first (the capture among them)")

    args, rest = p.parse_known_args(argv)
    cmd_p = sub.choices[args.cmd]  # errors name the sub-command
    if args.cmd == "sweep":
        with cli.user_errors(cmd_p):
            names = _names(args.configs)
        run_p.parse_args([names[0], *map(str, rest)])  # the options passed on to each run, checked once here
        rows = sweep(names, args.seeds, out_dir=args.out, dataset=args.dataset, jobs=args.jobs,
                     max_seconds=args.max_seconds, status_every=args.status_every, run_args=rest)
        print(results_table(rows))
        return 0 if all(r.get("status") != "killed" for r in rows) and rows else 1
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "run":
        changes = {} if args.lr is None else {"lr": args.lr}
        if args.impl != "auto":
            changes["impl"] = args.impl
        with cli.user_errors(cmd_p):
            _config(args.config, args.dataset, args.steps, changes)
            data = load_data(args.dataset, subset=args.subset, validation=args.validation, device=args.device,
                             seed=args.seed)
        try:
            res = run(args.config, args.dataset, seed=args.seed, steps=args.steps, subset=args.subset, data=data,
                      validation=args.validation, eval_every=args.eval_every, device=args.device, mode=args.mode,
                      out_dir=args.out, max_seconds=args.max_seconds, **changes)
        except CheckpointError as e:      # another run's (or an unreadable) checkpoint in --out: before any work
            print(f"{cmd_p.prog}: error: {cli.one_line(e)}", file=sys.stderr)
            return 2
        except TrainingDiverged as e:     # result.json says "stopped": "diverged at step N"; exit 1, one line
            print(f"{p.prog} run: {e}", file=sys.stderr)
            return 1
        print(json.dumps({k: v for k, v in res.summary.items() if k != "fields"}))
        return 0
    if args.cmd == "gather":
        with cli.user_errors(cmd_p):
            rows = gather(args.out)
        if not rows:
            cmd_p.error(f"{args.out}: no run folders (with result.json or history.json) to gather")
        atomic_write_json(rows, Path(args.out) / "table.json")
        print(results_table(rows))
        return 0
    if args.cmd == "report":
        if not any((Path(args.out) / f).exists() for f in _REPORT_INPUTS):
            cmd_p.error(f"{args.out}: nothing to report (it holds none of {', '.join(_REPORT_INPUTS)})")
        with cli.user_errors(cmd_p):
            rep = report(args.out, args.dataset)
        atomic_write_json(rep, Path(args.out) / "summary.json")
        print(json.dumps(rep, indent=1))
        return 0
    with cli.user_errors(cmd_p):
        names = _names(args.configs)
        for name in names:
            _config(name, args.dataset, None, {"impl": args.impl})
        data = load_data(args.dataset, subset=args.subset, device=args.device)
    out = []
    for name in names:
        if args.cmd == "check-graph":
            r = check_graph(name, data, steps=args.steps, impl=args.impl)
        else:
            r = benchmark(name, data, steps=args.steps, warmup=args.warmup, mode=args.mode, impl=args.impl)
        print(json.dumps(r), flush=True)
        out.append(r)
    if args.json:
        atomic_write_json(out, args.json)
    return 0 if all(r.get("ok", True) for r in out) else 1

if __name__ == "__main__":
    sys.exit(main())
