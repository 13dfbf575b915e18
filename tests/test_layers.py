"""The layers hold (issue 24 item 4): each layer is imported alone in a fresh interpreter and what it pulled in
(``sys.modules``) is checked: a lower layer never imports a higher one; ``aggregate`` knows no experiment; the
runner needs no tables or figures; engines share one declared protocol, checked once per sweep."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dnlib import engines, experiment

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("dnlib.cifar", "dnlib.ptb", "dnlib.sr", "dnlib.stacked")


def _pulled_in(module: str) -> set:
    """The dnlib modules that ``import <module>`` loads in a fresh interpreter."""
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m == 'dnlib' or m.startswith('dnlib.'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module,forbidden", [
    ("dnlib.aggregate", ("dnlib.configs", *RECIPES, "dnlib.experiment", "dnlib.train")),
    ("dnlib.configs.sr", ("dnlib.train", "dnlib.experiment", "dnlib.aggregate", *RECIPES)),
    ("dnlib.configs", ("dnlib.train", "dnlib.experiment", "dnlib.aggregate", *RECIPES)),
    ("dnlib.data.loader", ("dnlib.train", "dnlib.experiment", *RECIPES)),
    ("dnlib.data", ("dnlib.train", "dnlib.experiment", *RECIPES)),
    ("dnlib.train", ("dnlib.experiment", "dnlib.aggregate", "dnlib.figures", "dnlib.configs", *RECIPES)),
    ("dnlib.experiment", ("dnlib.aggregate", "dnlib.figures", "dnlib.configs", *RECIPES)),
    ("dnlib.engines", ("dnlib.experiment", "dnlib.aggregate", "dnlib.figures", "dnlib.train", *RECIPES)),
])
def test_a_layer_pulls_in_no_higher_layer(module, forbidden):
    loaded = _pulled_in(module)
    leaks = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
    assert not leaks, f"import {module} pulled in {leaks}"


def _imports(path: Path) -> set:
    """Every module an ``import`` anywhere in ``path`` names (inside functions too), resolved from ``dnlib``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            pkg = ".".join(["dnlib", *path.relative_to(ROOT).parent.parts[1:]][:len(path.relative_to(ROOT).parts)
                                                                                - node.level])
            base = f"{pkg}.{node.module}" if node.level and node.module else pkg if node.level else node.module
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("path,forbidden", [
    ("dnlib/aggregate.py", ("dnlib.configs", *RECIPES, "dnlib.experiment")),   # not even inside a function
    ("dnlib/configs/sr.py", ("dnlib.train",)),
    ("dnlib/data/loader.py", ("dnlib.train",)),
])
def test_a_module_names_no_higher_layer_anywhere(path, forbidden):
    names = _imports(ROOT / path)
    leaks = sorted(m for m in names for f in forbidden if m == f or m.startswith(f + "."))
    assert not leaks, f"{path} imports {leaks}"


def test_the_paper_tables_are_the_recipes_and_found_by_name():
    """aggregate names no experiment: the tables come from the recipes (entry points ``dnlib.recipes``)."""
    code = ("import dnlib.aggregate as A; t = A.paper_tables(scale=3); "
            "print(sorted(t), A.paper_table('table7')['where'], A.paper_table('table5', scale=4)['title'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("]")[0] + "]" == str(sorted(["table3", "table4", "table5", "table6", "table7", "table9",
                                                            "table10"]))
    assert "'experiment': 'cifar'" in res.stdout and "Set14 x4" in res.stdout


def test_the_engines_implement_one_declared_protocol():
    for cls in (engines.LocalEngine, engines.RayEngine):
        assert engines.Engine in cls.__mro__          # declared, not only duck-typed
        for method in ("free", "start", "poll", "in_flight", "close"):
            assert callable(getattr(cls, method)) and getattr(cls, method) is not getattr(engines.Engine, method)


@pytest.mark.parametrize("via", ["api", "cli"])
def test_a_sweep_checks_its_engine_once(via, tmp_path, monkeypatch):
    """engines.check ran 3 times per CLI sweep (main, sweep, make_engine) and twice per sweep(): now once."""
    from dnlib.cifar import RECIPE
    calls, real_check = [], engines.check

    def counted(*a, **k):
        calls.append((a, k))
        return real_check(*a, **k)
    monkeypatch.setattr(engines, "check", counted)
    monkeypatch.setattr(engines, "execute", lambda runner, jobs, **k: [runner.close()] and [])   # nothing trains
    if via == "api":
        experiment.sweep(RECIPE, ["base"], [0], out=tmp_path / "s", verbose=False)
    else:
        experiment.main(RECIPE, ["sweep", "base", "--out", str(tmp_path / "s")])
    assert len(calls) == 1
