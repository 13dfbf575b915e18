"""Several seeds of one super-resolution configuration trained as ONE stacked SRCNN
(:class:`~dnlib.models.stacked_srcnn.StackedSRCNN`), as :mod:`dnlib.experiments.stacked` does for CIFAR::

    from dnlib.experiments import stacked_sr
    from dnlib.experiments.sr import RECIPE
    results = stacked_sr.run(RECIPE, "fast-dn*", seeds=[0, 1, 2], out="runs/sr/stack")   # a run folder per seed

**What each copy is.** Copy k is the separate run with seed ``seeds[k]``: its model built by the recipe as that run
builds it (seeded, ``recipe.build``), its own patch stream (:class:`~dnlib.data.SRCNNPatches` drawn from its seed),
its own loss (MSE / 2; the trainer minimizes the SUM of the K losses and the L1 terms), the recipe's optimizer on
the packed parameters (SGD with momentum and Adam are elementwise: the packed state keeps the copies apart), its own
evaluation (its weights loaded into its own SRCNN and scored by the recipe's evaluator: exactly the separate run's
numbers) and its own record (``config.setup.stacked = K``). ``tests/test_stacked_sr.py`` holds each copy to its
separate run in float64.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ..models.stacked_srcnn import StackedSRCNN
from ..training.stacked import StackedGraphTrainer, StackedTrainer
from .recipe import Recipe, Setup, trainer_mode
from .runner import Run, build_setup
from .stacked import CopySources, check_seeds, group_options

__all__ = ["StackedPairs", "StackedMSE", "build", "prepare", "run"]


class StackedPairs(CopySources):
    """K ``(x, y)`` batch sources (one per copy) as one: ``next()`` is ``(x (N, K, h, w), y (N, K, h', w'))``,
    copy k in channel k; resumable as each of them."""

    def __next__(self):
        xs, ys = zip(*(next(s) for s in self.sources))
        return torch.cat(xs, 1), torch.cat(ys, 1)


class StackedMSE:
    """``loss_fn(model, (x, y))``: each copy's ``mse / 2`` (:func:`dnlib.experiments.sr.srcnn_loss`), ``(K,)``."""

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return (model(x) - y).square().mean(dim=(0, 2, 3)) / 2


def build(recipe: Recipe, cfg, seeds: Sequence[int], device: str = "auto",
          options: dict | None = None) -> Setup:
    """The :class:`~dnlib.experiments.recipe.Setup` of K copies of ``cfg``, one per seed (the ``build`` of a stacked
    :class:`~dnlib.experiments.runner.Run`); ``options["mode"]``: ``graph`` (one CUDA graph per step, SGD only),
    ``eager`` or ``auto`` (eager: Adam, the fast schedule's optimizer, is not captured)."""
    seeds = check_seeds(seeds)
    options, mode = group_options(options)
    setups = []
    for seed in seeds:
        setups.append(build_setup(recipe, cfg, seed, device, options))   # (the pairs are cached)
    s0 = setups[0]
    dev = torch.device(s0.train.device)
    model = StackedSRCNN([s.model for s in setups]).to(dev)

    def evaluate(m):
        out = []
        for k, s in enumerate(setups):
            with torch.no_grad():
                s.model.load_state_dict(m.copy_state_dict(k))
            out.append(s.evaluate(s.model))
        return out

    graph = mode == "graph" and cfg.optimizer == "sgd"
    info = {"mode": trainer_mode(graph, dev), "stacked": len(seeds), "stacked_seeds": seeds}
    for s in setups:
        s.info.update(info)
    return Setup(model, StackedMSE(), StackedPairs([s.batches for s in setups]),
                            dataclasses.replace(s0.train, progress=False),
                            evaluate=evaluate if s0.evaluate is not None else None,
                            run_info={**s0.run_info, "seeds": seeds},
                            trainer=StackedGraphTrainer if graph else StackedTrainer, chunk=s0.chunk,
                            info={**s0.info, **info}, data=s0.data, copies=setups)


def prepare(recipe: Recipe, config=None, seeds: Sequence[int] | None = None, **kwargs) -> Run:
    """A stacked SR :class:`~dnlib.experiments.runner.Run`, prepared; arguments as :func:`run`."""
    return Run(recipe, config, seeds=None if seeds is None else check_seeds(seeds), build=build, **kwargs)


def run(recipe: Recipe, config=None, seeds: Sequence[int] | None = None, **kwargs) -> list:
    """Train ``config`` once per seed, the K runs stacked into one SRCNN; returns their results in the order of
    ``seeds``. ``kwargs``: :func:`dnlib.experiments.runner.run`'s."""
    return prepare(recipe, config, seeds, **kwargs).go()
