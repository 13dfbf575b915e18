"""What the notebook suite records and reports of a run (dnlib.notebook.suite, dnlib.notebook.outcome) and the cell
limit of a notebook that declares what it trains (dnlib.notebook.limits)."""
import json

import nbformat
import pytest
from notebook_factory import write_notebook

from dnlib.experiments import records
from dnlib.notebook import limits, parameters, suite

PARAMS = ('seed: int = 0  # a seed\nratio: float = 0.5  # a ratio\nnames: list = ["a"]  # names\n'
          'device: "Optional[str]" = None  # a device\n')


def _notebook(path, code_cells, params=PARAMS, profiles=None, schedule=None):
    return write_notebook(path, code_cells, params, profiles or {"smoke": {}, "full": {}}, schedule=schedule)


# ------------------------------------------------------------------------- the record's parameters (review 1)
def test_run_parameters_are_every_declared_parameter_resolved(tmp_path):
    """Before: the record held only the profile's and -p's values (None when neither set any)."""
    from dnlib.notebook import outcome

    nb = _notebook(tmp_path / "10_plain.ipynb", ["pass"])
    assert outcome.run_parameters(nb, {}) == {"seed": 0, "ratio": 0.5, "names": ["a"], "device": None}
    assert outcome.run_parameters(nb, {"ratio": 2.0}) == {"seed": 0, "ratio": 2.0, "names": ["a"], "device": None}
    assert list(outcome.run_parameters(nb, {"device": "cpu"})) == ["seed", "ratio", "names", "device"]


@pytest.mark.slow
def test_the_suite_records_every_parameter_and_which_the_run_set(tmp_path):
    """Before: record.json's parameters were {'ratio': 2.0} for a run with -p ratio 2 and null for a run of the
    defaults, though seed, names... were used."""
    root = tmp_path / "nbs"
    root.mkdir()
    _notebook(root / "10_plain.ipynb", ["print(seed, ratio)"], profiles={"smoke": {}, "full": {"seed": 3}})
    _notebook(root / "11_other.ipynb", ["pass"])
    out = tmp_path / "out"
    suite.run(["10_plain", "11_other"], "full", [("10:ratio", "2")], out, progress=False, root=root)
    plain, other = records.read_record(out / "10_plain"), records.read_record(out / "11_other")
    assert plain["parameters"] == {"seed": 3, "ratio": 2.0, "names": ["a"], "device": None}
    assert plain["config"] == {"notebook": "10_plain.ipynb", "profile": "full", "set": ["seed", "ratio"]}
    assert other["parameters"] == {"seed": 0, "ratio": 0.5, "names": ["a"], "device": None}
    assert other["config"] == {"notebook": "11_other.ipynb", "profile": "full", "set": []}
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["parameters"] == {"seed": 3, "ratio": 2.0}    # the values the run set, as the console shows


# ------------------------------------------------------------------------- a notebook that stops early (review 3)
@pytest.mark.slow
@pytest.mark.parametrize("stop", ["import sys; sys.exit(0)", "raise SystemExit", "raise SystemExit(0)"])
def test_a_notebook_that_exits_early_fails_naming_the_cell(tmp_path, capsys, stop):
    """Before: papermill takes SystemExit(0) for an early exit, the suite reported "ok" and the cells after it never
    ran (the missing-results check catches it only for notebooks that call save_results)."""
    nb = _notebook(tmp_path / "11_exit.ipynb", ["x = 1", stop, "raise RuntimeError('never reached')", "y = 2"])
    rc = suite.main(["run", "--no-progress", "--out", str(tmp_path / "out"), str(nb)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f"11_exit.ipynb: stopped early: cell 3 (`{stop}`) raised SystemExit" in err, err
    assert "cells 4, 5 never ran" in err, err
    rec = records.read_record(tmp_path / "out" / "11_exit")
    assert rec["stopped"].startswith("failed: 11_exit.ipynb: stopped early"), rec["stopped"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())[0]["status"] == "failed"


def test_unexecuted_cells_leave_out_empty_and_skipped_cells():
    from dnlib.notebook import outcome

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", execution_count=1), nbformat.v4.new_markdown_cell("text"),
                nbformat.v4.new_code_cell("  \n"), nbformat.v4.new_code_cell("b = 2"),
                nbformat.v4.new_code_cell("c = 3", metadata={"tags": ["skip-execution"]})]
    assert outcome.unexecuted_cells(nb) == [3]
    nb.cells[3].execution_count = 2
    assert outcome.unexecuted_cells(nb) == []


# ------------------------------------------------------------------------- a declared schedule (review 2)
def test_a_notebook_declares_the_recipe_points_it_trains(tmp_path):
    """Before: a notebook without a steps or epochs parameter counted as "no training" and got the 1,800 s floor,
    whatever its cells trained (08's full profile trains 114 points x 3 seeds)."""
    from dnlib.experiments.analysis_configs import get_config, list_configs

    params = ('live_configs: list = ["batch-bn-b2"]  # points\nseeds: list = [0]  # seeds\n'
              'size: str = "smoke"  # size\ndevice: str = "cpu"  # device\n')
    schedule = {"recipe": "dnlib.experiments.analysis.RECIPE", "configs": "live_configs",
                "config_parameters": ["size"]}
    nb = _notebook(tmp_path / "48_points.ipynb", ["pass"], params, schedule=schedule)
    steps, how = limits.schedule_steps(nb, {"live_configs": ["all"], "seeds": [0, 1, 2], "size": "full"})
    every = sum(get_config(n, size="full").steps for n in list_configs())
    assert steps == 3 * every, how
    n = len(list_configs())
    assert how == (f"{3 * n} runs ({n} live_configs x 3 seeds) of dnlib.experiments.analysis.RECIPE, size='full', "
                   f"{every} steps per seed (metadata.dnlib.schedule)")
    limit, why = limits.cell_limit("full", nb, {"live_configs": ["batch-bn-b2", "batch-gn-b2"], "size": "smoke"})
    two = sum(get_config(n, size="smoke").steps for n in ("batch-bn-b2", "batch-gn-b2"))
    assert limit == limits.CELL_FLOOR + limits.SECONDS_PER_STEP["cpu"] * two and "no training" not in why
    assert limits.cell_limit("full", nb, {"live_configs": []})[0] == limits.CELL_FLOOR


@pytest.mark.parametrize("schedule, message", [
    ({"recipe": "os.path", "configs": "live_configs"}, "must name a dnlib module's recipe"),
    ({"recipe": "dnlib.experiments.analysis.RECIPE", "configs": "nope"}, "'nope' is not a declared list parameter"),
    ({"recipe": "dnlib.experiments.analysis.RECIPE", "configs": "live_configs", "config_parameters": ["x"]},
     "config_parameters: 'x' is not a declared parameter"),
])
def test_a_bad_declared_schedule_is_an_error_naming_it(tmp_path, schedule, message):
    params = 'live_configs: list = ["batch-bn-b2"]  # points\nsize: str = "smoke"  # size\n'
    nb = _notebook(tmp_path / "49_bad.ipynb", ["pass"], params, schedule=schedule)
    with pytest.raises(ValueError, match="49_bad.ipynb: metadata.dnlib.schedule") as e:
        limits.schedule_steps(nb, {})
    assert message in str(e.value)


def test_a_bad_declared_schedule_stops_the_suite_before_anything_runs(tmp_path, monkeypatch):
    params = 'live_configs: list = ["batch-bn-b2"]  # points\n'
    nb = _notebook(tmp_path / "49_bad.ipynb", ["pass"], params, schedule={"recipe": "os.path", "configs": "x"})
    monkeypatch.setattr(suite, "execute", lambda *a, **k: pytest.fail("executed"))
    with pytest.raises(parameters.ParameterError, match="49_bad.ipynb: metadata.dnlib.schedule: recipe 'os.path'"):
        suite.run([str(nb)], "full", (), tmp_path / "out", progress=False)


def test_notebook_08s_full_profile_limit_counts_the_points_it_trains():
    from dnlib.experiments.analysis_configs import get_config, list_configs

    path = suite.NOTEBOOK_DIR / "08_why_normalizers_work.ipynb"
    full = parameters.resolve_parameters(path, "full")
    limit, how = limits.cell_limit("full", path, full)
    steps = 3 * sum(get_config(n, size="full").steps for n in list_configs())
    assert limit == limits.CELL_FLOOR + limits.SECONDS_PER_STEP["cuda"] * steps, how
    assert f"{steps} steps" in how and "no training" not in how
    smoke = parameters.resolve_parameters(path, "smoke")
    live = smoke["live_configs"]
    assert limits.schedule_steps(path, smoke)[0] == sum(get_config(n, size="smoke").steps for n in live)


# ------------------------------------------------------------------------- no limit at all is said so
def test_the_suite_says_when_no_cell_limit_applies(tmp_path, capsys, monkeypatch):
    params = 'steps: "Optional[int]" = 10  # steps (None: the schedule)\n'
    nb = _notebook(tmp_path / "47_nolimit.ipynb", ["pass"], params, {"smoke": {}, "full": {"steps": None}})
    monkeypatch.setattr(suite, "execute", lambda path, output, params, *a, **k: suite.RunRecord(
        path.name, "ok", 0.0, str(output), None))
    suite.run([str(nb)], "full", (), tmp_path / "out", progress=False)
    err = capsys.readouterr()
    text = err.out + err.err
    assert "47_nolimit.ipynb: no cell time limit: a cell that hangs runs until it is stopped" in text, text
    assert "--cell-timeout SECONDS sets one" in text, text
