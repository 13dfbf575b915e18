"""Data shared between runs in one process go only to runs whose load would return the same
(:meth:`dnlib.experiments.recipe.Recipe.data_key`, :func:`dnlib.experiments.recipe.share_data`).

Before (a read-only review of the data layer, 2026-12-08):
- ``cifar.run_many(..., seeds=[0, 1], subset=(200, 100))`` trained seed 1 on seed 0's subset (the first run's data
  went to every later run), and its record said only ``subset: [200, 100]``, as a lone seed-1 run's does;
- an analysis run given ``subset`` recorded the size's subset in its config (``[500, 200]``) while it trained on
  the one given.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from dnlib.experiments import analysis, cifar, runner

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
HAVE = (MIRROR / "cifar10-jpeg" / "train").is_dir() or (MIRROR / "cifar-10-batches-py").is_dir()
pytestmark = pytest.mark.skipif(not HAVE, reason="CIFAR-10 is not in DNLIB_DATA")


def test_run_many_with_a_subset_trains_each_seed_on_its_own_subset():
    rs = cifar.run_many(["base"], seeds=[0, 1], subset=(200, 100), steps=1, eval_every=0, device="cpu",
                        progress=False)
    for r, seed in zip(rs, (0, 1)):
        own = cifar.load_data(subset=(200, 100), seed=seed, device="cpu")
        assert torch.equal(r.setup.data.x_train, own.x_train) and torch.equal(r.setup.data.y_eval, own.y_eval), seed
    assert not torch.equal(rs[0].setup.data.x_train, rs[1].setup.data.x_train)
    assert [r.record["config"]["setup"]["subset_seed"] for r in rs] == [0, 1]


def test_data_that_do_not_depend_on_the_seed_are_loaded_once(monkeypatch):
    loads = []
    real = cifar.CifarRecipe.load

    @functools.wraps(real)                    # (its signature: the runner reads the load options from it)
    def load(self, *a, **k):
        loads.append(a)
        return real(self, *a, **k)
    monkeypatch.setattr(cifar.CifarRecipe, "load", load)
    rs = cifar.run_many(["base", "bn"], seeds=[0, 1], steps=1, eval_every=0, device="cpu", progress=False,
                        validation=True)
    assert len(loads) == 1 and all(r.setup.data is rs[0].setup.data for r in rs)
    assert all(r.record["config"]["setup"]["subset_seed"] is None for r in rs)


def test_shared_data_of_another_key_are_not_used():
    """A :class:`SharedData` whose key differs from the run's (another subset, another seed's subset) is passed
    over: the run loads its own."""
    cfg = cifar.RECIPE.config("base")
    other = cifar.load_data(subset=(200, 100), seed=1, device="cpu")
    offered = runner.SharedData(cifar.RECIPE.data_key(cfg, 1, "cpu", subset=(200, 100)), other)
    setup = runner.build_setup(cifar.RECIPE, cfg, 0, "cpu", {"subset": (200, 100), "data": offered, "eval_every": 0})
    assert setup.data is not other and setup.data.subset_seed == 0
    again = runner.build_setup(cifar.RECIPE, cfg, 1, "cpu", {"subset": (200, 100), "data": offered, "eval_every": 0})
    assert again.data is other


def test_an_analysis_run_records_the_subset_it_trained_on(tmp_path):
    res = analysis.run_points(["batch-bn-b8"], [0], out=tmp_path, size="smoke", subset=(300, 100), device="cpu",
                              progress=False, verbose=False)
    (row,) = res
    rec = runner.records.read_record(tmp_path / "batch-bn-b8-s0")
    assert rec["config"]["subset"] == [300, 100]
    assert rec["config"]["setup"]["train_images"] == 300 and rec["config"]["setup"]["eval_images"] == 100
    with pytest.raises(ValueError, match=r"data: loaded as cifar10 subset=\(300, 100\), but batch-bn-b8 trains on "
                                         r"cifar10 subset=\(500, 200\)"):
        small = analysis.RECIPE.load(analysis.RECIPE.config("batch-bn-b8", size="smoke", subset=(300, 100)), 0, "cpu")
        analysis.RECIPE.build(analysis.RECIPE.config("batch-bn-b8", size="smoke"), small, 0, "cpu")
