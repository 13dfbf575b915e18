"""The ``bench`` verb and :func:`dnlib.experiments.bench.bench_many` time as the project's speed rule says: the
configurations interleaved round-robin (each round one step of every configuration), a ratio to the first in the
same run, the load average before and after; one configuration alone is an absolute figure and says so. Structure
only, on fake trainers (no data, no timing decides anything)."""
import itertools
import json
from types import SimpleNamespace

import torch

from dnlib.experiments import bench as benches
from dnlib.experiments import cifar


def _fake_builds(monkeypatch) -> list:
    """``build_setup`` of the bench module replaced by fake trainers whose steps append their config's name to the
    returned list (the order of the timed and untimed calls)."""
    calls = []

    class Trainer:
        def __init__(self, name):
            self.name, self.device, self.batches = name, torch.device("cpu"), itertools.count()

        def train_step(self, batch):
            calls.append(self.name)
            return 1.0

    def build_setup(recipe, cfg, seed, device, options):
        return SimpleNamespace(info={"mode": "eager"}, data=None, data_key=None, train=SimpleNamespace(log_every=0),
                               make_trainer=lambda evaluate=None: Trainer(cfg.name))
    monkeypatch.setattr(benches, "build_setup", build_setup)
    return calls


def test_bench_many_times_the_configurations_round_robin_with_ratios_and_load(monkeypatch):
    """Before: each configuration was timed in its own block, one after another (``time_steps``), no load average."""
    calls = _fake_builds(monkeypatch)
    said = []
    rows = benches.bench_many(cifar.RECIPE, ["base", "bn-star", "dn-star"], steps=3, warmup=1, device="cpu",
                              say=said.append)
    assert calls == ["base", "bn-star", "dn-star"] * 4
    assert [r["config"] for r in rows] == ["base", "bn-star", "dn-star"]
    assert all(r["baseline"] == "base" and r["vs_first"] > 0 and r["steps"] == 3 for r in rows)
    assert rows[0]["vs_first"] == 1.0 and all("interleaved" in r["timing"] for r in rows)
    assert all(r["load_before"].startswith("load average") and r["load_after"].startswith("load average")
               for r in rows)
    assert len(said) == 2 and "load average" in said[0] and "before" in said[0] and "after" in said[1]


def test_bench_of_one_configuration_says_its_figure_is_absolute(monkeypatch):
    _fake_builds(monkeypatch)
    row = benches.bench(cifar.RECIPE, "base", steps=2, warmup=0, device="cpu")
    assert row["note"] == benches.ABSOLUTE and "absolute" in row["note"] and "vs_first" not in row
    assert row["load_before"].startswith("load average") and row["images_per_s"] > 0


def test_bench_verb_interleaves_and_prints_the_load_average(monkeypatch, capsys):
    """``cifar bench base bn-star``: one JSON row per configuration, timed together round-robin, the load average
    on stderr before and after (before: one configuration after another, no load average)."""
    calls = _fake_builds(monkeypatch)
    assert cifar.main(["bench", "base", "bn-star", "--steps", "2", "--warmup", "1", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert calls == ["base", "bn-star"] * 3
    assert [r["config"] for r in rows] == ["base", "bn-star"] and rows[1]["baseline"] == "base"
    loads = [line for line in err.splitlines() if "load average" in line]
    assert len(loads) == 2 and "before" in loads[0] and "after" in loads[1]


def test_a_configuration_that_fails_is_its_row_and_the_others_are_timed(monkeypatch):
    calls = _fake_builds(monkeypatch)
    real = benches.build_setup

    def build_setup(recipe, cfg, *a):
        if cfg.name == "bn-star":
            raise RuntimeError("no such kernel")
        return real(recipe, cfg, *a)
    monkeypatch.setattr(benches, "build_setup", build_setup)
    rows = benches.bench_many(cifar.RECIPE, ["base", "bn-star", "dn-star"], steps=2, warmup=0, device="cpu")
    assert calls == ["base", "dn-star"] * 2
    assert rows[1] == {"config": "bn-star", "ok": False, "error": "RuntimeError: no such kernel"}
    assert rows[2]["vs_first"] > 0
