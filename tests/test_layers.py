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

from dnlib.experiments import commands, engines, ray_engine
from dnlib.experiments import sweep as sweeps

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("dnlib.experiments.cifar", "dnlib.experiments.ptb", "dnlib.experiments.ptb_report",
           "dnlib.experiments.ptb_cells", "dnlib.experiments.ptb_loss", "dnlib.experiments.sr",
           "dnlib.experiments.sr_report", "dnlib.experiments.stacked", "dnlib.experiments.analysis")

#: The floors of dnlib, lowest first: a module may import its own floor and the floors below it, never one above.
#: Each floor is a folder, except floor 0 (the stdlib-only helpers) and the top (the package's command lines).
FLOORS = (
    ("dnlib.io", "dnlib.cli", "dnlib.envconfig"),
    ("dnlib.norms",),                      # spec -> functional -> norm -> presets/sparse/gdn/convert/triton_dn
    ("dnlib.data", "dnlib.models"),
    ("dnlib.training",),                   # the one loop, checkpoints, the stacked and DDP trainers, metrics
    ("dnlib.analysis",),                   # statistics and figures of activations and runs
    ("dnlib.experiments",),                # the runner, its CLI, engines, records, aggregate, the recipes
    ("dnlib.notebook",),                   # the notebook suite, widgets, stall watch, figure checks
    ("dnlib.__main__", "dnlib.bench"),
)


def _floor(module: str) -> int:
    for i, names in enumerate(FLOORS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def _modules() -> list:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "dnlib").rglob("*.py")
                  if p.name != "__init__.py" or p.parent != ROOT / "dnlib")


def test_the_floors_are_folders_and_cover_every_module():
    folders = {p.name for p in (ROOT / "dnlib").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {n.split(".")[1] for f in FLOORS[1:-1] for n in f}
    top = {p.stem for p in (ROOT / "dnlib").glob("*.py")} - {"__init__"}
    assert top == {n.split(".")[1] for f in (FLOORS[0], FLOORS[-1]) for n in f}
    for m in _modules():
        _floor(m.removesuffix(".__init__"))


def test_no_module_imports_a_higher_floor():
    """Every import anywhere in every module (inside functions too), resolved: none points up a floor."""
    arrows = []
    for m in _modules():
        path = ROOT / Path(*m.split(".")).with_suffix(".py")
        here = _floor(m.removesuffix(".__init__"))
        for name in _imports(path):
            if (name == "dnlib" or not name.startswith("dnlib.")) or name.endswith(".__init__"):
                continue
            try:
                there = _floor(name)
            except AssertionError:
                continue                  # an attribute imported from a package (``from dnlib import x``)
            if there > here:
                arrows.append(f"{m} (floor {here}) imports {name} (floor {there})")
    assert not arrows, "\n".join(arrows)


#: Modules still over ~500 lines and the most each may have until it is split (a ratchet: it may only shrink).
OVERSIZED: dict = {}


def test_modules_outside_the_core_are_at_most_about_500_lines():
    core = ("dnlib.norms.spec", "dnlib.norms.functional", "dnlib.norms.norm", "dnlib.norms.presets")
    sizes = {m: len((ROOT / Path(*m.split(".")).with_suffix(".py")).read_text().splitlines()) for m in _modules()}
    long = {m: n for m, n in sizes.items() if m not in core and n > OVERSIZED.get(m, 500)}
    assert not long, long


#: Each layer and what importing it must not pull in.
LAYERS = [
    ("dnlib.experiments.aggregate", (*RECIPES, "dnlib.experiments.runner", "dnlib.training")),
    ("dnlib.experiments.registry", (*RECIPES, "dnlib.experiments.runner", "dnlib.training", "dnlib.analysis")),
    ("dnlib.experiments.sweep", (*RECIPES, "dnlib.experiments.tables", "dnlib.analysis")),   # a table on demand
    ("dnlib.experiments.sr_configs", ("dnlib.training", "dnlib.experiments.runner", "dnlib.experiments.aggregate",
                                      *RECIPES)),
    ("dnlib.data.loader", ("dnlib.training", "dnlib.experiments")),
    ("dnlib.data", ("dnlib.training", "dnlib.experiments")),
    ("dnlib.training", ("dnlib.experiments", "dnlib.analysis")),
    ("dnlib.experiments.runner", ("dnlib.experiments.aggregate", "dnlib.analysis", *RECIPES)),
    ("dnlib.experiments.engines", ("dnlib.experiments.runner", "dnlib.experiments.aggregate", "dnlib.analysis",
                                   "dnlib.training", *RECIPES)),
]
_PULLED: dict = {}


def _pulled_in(module: str) -> set:
    """The dnlib modules that ``import <module>`` loads in a fresh interpreter. One interpreter serves every layer
    of LAYERS (one start instead of one per layer): before each import it forgets every dnlib module, so each
    import starts from no dnlib module loaded, as in a fresh interpreter (third-party modules stay loaded)."""
    if not _PULLED:
        code = ("import importlib, json, sys\n"
                "ours = lambda: sorted(m for m in sys.modules if m == 'dnlib' or m.startswith('dnlib.'))\n"
                "out = {}\n"
                f"for name in {[m for m, _ in LAYERS]!r}:\n"
                "    for m in ours():\n"
                "        del sys.modules[m]\n"
                "    importlib.import_module(name)\n"
                "    out[name] = ours()\n"
                "print(json.dumps(out))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        _PULLED.update(json.loads(res.stdout.strip().splitlines()[-1]))
    return set(_PULLED[module])


@pytest.mark.slow
@pytest.mark.parametrize("module,forbidden", LAYERS)
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
            parts = path.relative_to(ROOT).parent.parts
            pkg = ".".join(parts[:len(parts) - node.level + 1])
            base = f"{pkg}.{node.module}" if node.level and node.module else pkg if node.level else node.module
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("path,forbidden", [
    ("dnlib/experiments/aggregate.py", (*RECIPES, "dnlib.experiments.runner")),   # not even inside a function
    ("dnlib/experiments/registry.py", (*RECIPES, "dnlib.experiments.runner")),
    ("dnlib/experiments/tables.py", (*RECIPES, "dnlib.experiments.runner")),
    ("dnlib/experiments/sr_configs.py", ("dnlib.training",)),
    ("dnlib/data/loader.py", ("dnlib.training",)),
])
def test_a_module_names_no_higher_layer_anywhere(path, forbidden):
    names = _imports(ROOT / path)
    leaks = sorted(m for m in names for f in forbidden if m == f or m.startswith(f + "."))
    assert not leaks, f"{path} imports {leaks}"


def test_the_command_lines_start_without_matplotlib():
    """The experiments' command lines (``dnlib cifar|ptb|sr|analysis ...``, the campaign) import the table helpers of
    ``dnlib.analysis.figures`` but no matplotlib: it loads with the first figure (0.4 s of every run's start-up)."""
    code = ("import sys\n"
            "import dnlib.__main__, dnlib.experiments.campaign\n"
            "for e in ('cifar', 'ptb', 'sr', 'analysis'):\n"
            "    __import__(f'dnlib.experiments.{e}')\n"
            "from dnlib.analysis import figures\n"
            "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if m.startswith('matplotlib'))\n"
            "figures.new_figure()\n"
            "assert 'matplotlib.figure' in sys.modules\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.slow
def test_the_paper_tables_are_the_recipes_and_found_by_name():
    """The registry names no experiment: the tables come from the recipes (entry points ``dnlib.recipes``)."""
    code = ("from dnlib.experiments import registry; t = registry.paper_tables(scale=3); "
            "print(sorted(t), registry.paper_table('table7')['where'], "
            "registry.paper_table('table5', scale=4)['title'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("]")[0] + "]" == str(sorted(["table3", "table4", "table5", "table6", "table7", "table9",
                                                            "table10"]))
    assert "'experiment': 'cifar'" in res.stdout and "Set14 x4" in res.stdout


def test_the_engines_implement_one_declared_protocol():
    for cls in (engines.LocalEngine, ray_engine.RayEngine):
        assert engines.Engine in cls.__mro__          # declared, not only duck-typed
        for method in ("free", "start", "poll", "in_flight", "close"):
            assert callable(getattr(cls, method)) and getattr(cls, method) is not getattr(engines.Engine, method)


@pytest.mark.parametrize("via", ["api", "cli"])
def test_a_sweep_checks_its_engine_once(via, tmp_path, monkeypatch):
    """engines.check ran 3 times per CLI sweep (main, sweep, make_engine) and twice per sweep(): now once."""
    from dnlib.experiments.cifar import RECIPE
    calls, real_check = [], engines.check

    def counted(*a, **k):
        calls.append((a, k))
        return real_check(*a, **k)
    monkeypatch.setattr(engines, "check", counted)
    monkeypatch.setattr(engines, "execute", lambda runner, jobs, **k: [])   # nothing trains
    if via == "api":
        sweeps.sweep(RECIPE, ["base"], [0], out=tmp_path / "s", verbose=False)
    else:
        commands.main(RECIPE, ["sweep", "base", "--out", str(tmp_path / "s")])
    assert len(calls) == 1


def test_the_repository_paths_survive_the_move_into_folders():
    """Modules that find the repository from their own file (one folder deeper since the layout): each names it."""
    from dnlib.experiments import engines as E
    from dnlib.experiments import records as R
    from dnlib.notebook import suite as S
    assert E._REPO == R._REPO == S.REPO_ROOT == ROOT
    assert S.NOTEBOOK_DIR == ROOT / "notebooks"
