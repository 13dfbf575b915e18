"""The notebook runner (dnlib.notebook.suite) and the environment configuration (dnlib.envconfig)."""
import json
import os
import re

import nbformat
import pytest
from notebook_factory import write_notebook

from dnlib import envconfig
from dnlib.experiments import records
from dnlib.notebook import limits, parameters, suite


def _notebook(path, code_cells, params, profiles=None, rules=None):
    return write_notebook(path, code_cells, params, profiles, rules=rules)


PARAMS = ('n: int = 2  # a count\nx: float = 0.5  # a value\nname: str = "a"  # a name\n'
          'flag: bool = False  # a flag\nxs: list = [1, 2]  # a list\n')


@pytest.fixture
def nbdir(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    _notebook(root / "01_good.ipynb",
              ["from dnlib.notebook import suite\nsuite.save_results({'n': n, 'x': x, 'name': name, 'xs': xs})"],
              PARAMS, {"smoke": {}, "full": {"n": 5, "xs": [3]}})
    _notebook(root / "02_bad.ipynb", ["y = 1", "raise ValueError('boom')", "z = 3"], "k: int = 1  # k\n",
              {"smoke": {}, "full": {}})
    return root


def test_discover_default_is_sorted_numbered_notebooks(nbdir):
    (nbdir / "scratch.ipynb").write_text("{}")
    assert [p.name for p in suite.discover(root=nbdir)] == ["01_good.ipynb", "02_bad.ipynb"]
    assert suite.discover(["02"], root=nbdir)[0].name == "02_bad.ipynb"
    with pytest.raises(FileNotFoundError):
        suite.discover(["nope"], root=nbdir)


def test_repository_notebooks_declare_a_smoke_profile():
    paths = suite.discover()
    assert [p.name for p in paths][:2] == ["01_unified_view.ipynb", "02_activation_explorer.ipynb"]
    for p in paths:
        assert "smoke" in parameters.notebook_profiles(p), p.name
        parameters.resolve_parameters(p, "smoke")


@pytest.mark.parametrize("value, type_name, expected", [
    ("3", "int", 3), ("-3", "int", -3), ("0.25", "float", 0.25), ("2", "float", 2.0), ("true", "bool", True),
    ("False", "bool", False), ("3", "str", "3"), ("[1, 2]", "list", [1, 2]), ("{'a': 1}", "dict", {"a": 1}),
])
def test_coerce_cli_strings_by_declared_type(value, type_name, expected):
    out = parameters.coerce(value, type_name, from_cli=True)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, type_name, from_cli", [
    ("2.5", "int", True), ("abc", "float", True), ("yes", "bool", True), ("[1", "list", True),
    (True, "int", False), ("3", "int", False), (1.5, "int", False), ([1], "str", False), (1, "None", False),
])
def test_coerce_rejects_wrong_types(value, type_name, from_cli):
    with pytest.raises(TypeError):
        parameters.coerce(value, type_name, from_cli=from_cli)


@pytest.mark.parametrize("value, type_name, from_cli, message", [
    ("2.5", "int", True, "expects int, got '2.5'"), ("abc", "float", True, "expects float, got 'abc'"),
    ("yes", "bool", True, "expects bool (true/false), got 'yes'"),
    ("[1", "list", True, "expects a list literal, got '[1'"),
    ("x", "Path", True, "declared type 'Path' is not supported by the runner"),
    (1, "Path", False, "declared type 'Path' is not supported by the runner"),
    ("(1, 2)", "list", True, "expects list, got tuple (1, 2)"), (True, "int", False, "expects int, got bool True"),
    (1, None, False, "the parameter is untyped in the notebook (write `name: type = value  # help`)"),
])
def test_coerce_says_why_a_value_does_not_fit(value, type_name, from_cli, message):
    """Each refusal's whole message (pinned for issue 24's split of coerce)."""
    with pytest.raises(TypeError) as e:
        parameters.coerce(value, type_name, from_cli=from_cli)
    assert str(e.value) == message


@pytest.mark.parametrize("value, type_name, from_cli, expected", [
    (" a b ", "str", True, " a b "), ("[1, 2]", "tuple", True, (1, 2)), ([1, 2], "tuple", False, (1, 2)),
    (2, "float", False, 2.0), ("none", "Optional[str]", True, None), (" 7 ", "int", True, 7),
])
def test_coerce_keeps_or_converts_as_declared(value, type_name, from_cli, expected):
    """str is taken verbatim from a command line, a list becomes a declared tuple, an int a declared float."""
    out = parameters.coerce(value, type_name, from_cli=from_cli)
    assert out == expected and type(out) is type(expected)


def test_profile_values_come_from_notebook_metadata(nbdir):
    path = nbdir / "01_good.ipynb"
    assert parameters.resolve_parameters(path, "smoke") == {}
    assert parameters.resolve_parameters(path, "full") == {"n": 5, "xs": [3]}
    assert parameters.resolve_parameters(path, "full", [("x", "2")]) == {"n": 5, "xs": [3], "x": 2.0}


def test_unknown_parameter_is_an_error_and_nothing_runs(nbdir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(parameters.ParameterError) as err:
        suite.run([nbdir / "01_good.ipynb"], overrides=[("sigmaa", "1")], out_dir=out)
    assert "01_good.ipynb" in str(err.value) and "'sigmaa'" in str(err.value)
    assert not out.exists()


def test_wrong_type_is_an_error_naming_notebook_and_parameter(nbdir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(parameters.ParameterError) as err:
        suite.run(None, overrides=[("01:n", "2.5")], out_dir=out, root=nbdir)
    msg = str(err.value)
    assert "01_good.ipynb" in msg and "'n'" in msg and "int" in msg and "02_bad" not in msg
    assert not out.exists()


def test_bad_profile_value_in_metadata_is_an_error(tmp_path):
    path = _notebook(tmp_path / "03_x.ipynb", [], PARAMS, {"smoke": {"n": "five"}})
    with pytest.raises(parameters.ParameterError, match="03_x.ipynb.*'n'"):
        parameters.resolve_parameters(path, "smoke")


def test_unparsable_or_untyped_parameter_lines_are_reported(tmp_path):
    path = _notebook(tmp_path / "04_x.ipynb", [], 'a: int = 1  # ok\nb = 2\nc: str = ""  # empty = bad for papermill\n')
    problems = parameters.parameter_cell_problems(path)
    assert any("line 2" in p for p in problems) and any("'c'" in p for p in problems)
    with pytest.raises(parameters.ParameterError, match="04_x.ipynb"):
        suite.run([path], out_dir=tmp_path / "out")


def test_two_parameters_cells_are_rejected(tmp_path):
    path = _notebook(tmp_path / "05_x.ipynb", [], "a: int = 1  # a\n")
    nb = nbformat.read(str(path), as_version=4)
    extra = nbformat.v4.new_code_cell("b: int = 2  # b")
    extra.metadata["tags"] = ["parameters"]
    nb.cells.append(extra)
    nbformat.write(nb, str(path))
    assert parameters.parameter_cell_problems(path) == ["expected exactly one cell tagged 'parameters', found 2"]


def test_cli_parameter_error_exits_2(nbdir, tmp_path, capsys):
    rc = suite.main(["run", "--out", str(tmp_path / "out"), "-p", "bogus", "1", str(nbdir / "01_good.ipynb")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "01_good.ipynb" in err and "bogus" in err and "nothing was executed" in err


@pytest.mark.parametrize("value", ["-1", "-inf", "-1e-3", "-.5", "-nan", "-a"])
def test_cli_parameter_value_may_start_with_a_minus(value, nbdir, tmp_path, monkeypatch):
    """argparse read the VALUE of `-p x -inf` (or -1e-3, -nan) as an option: `-p/--parameter: expected 2
    arguments`, exit 2; each VALUE after `-p NAME` is taken as it is."""
    seen = []
    monkeypatch.setattr(suite, "run", lambda notebooks, profile, overrides, *a, **k: seen.append(
        (list(notebooks), list(overrides))) or [])
    monkeypatch.setattr(suite, "format_summary", lambda records: "")
    nb = str(nbdir / "01_good.ipynb")
    assert suite.main(["run", "-p", "x", value, "--no-progress", "--parameter", "n", "-2", nb]) == 0
    assert seen == [([nb], [("x", value), ("n", "-2")])]


def test_cli_parameter_short_of_a_value_is_one_line_exit_2(nbdir, capsys):
    with pytest.raises(SystemExit) as e:
        suite.main(["run", str(nbdir / "01_good.ipynb"), "-p", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "-p/--parameter: expected 2 arguments" in err, err


@pytest.mark.slow
def test_run_executes_writes_results_and_reports_failing_cell(nbdir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DNLIB_PROGRESS", raising=False)
    before = dict(os.environ)
    out = tmp_path / "out"
    rc = suite.main(["run", "--no-progress", "--profile", "full", "--out", str(out), "-p", "01:x", "1.5",
                     "-p", "01:name", "b", str(nbdir / "01_good.ipynb"), str(nbdir / "02_bad.ipynb")])
    captured = capsys.readouterr()
    assert rc == 1
    assert json.loads((out / "01_good" / "results.json").read_text()) == {"n": 5, "x": 1.5, "name": "b", "xs": [3]}
    assert (out / "01_good" / "01_good.ipynb").exists() and (out / "02_bad" / "02_bad.ipynb").exists()
    good, bad = records.read_record(out / "01_good"), records.read_record(out / "02_bad")
    assert tuple(good) == records.RECORD_KEYS and good["stopped"] == "completed"
    assert good["parameters"] == {"n": 5, "x": 1.5, "name": "b", "flag": False, "xs": [3]}   # every declared one
    assert good["headline"]["x"] == 1.5
    assert good["config"] == {"notebook": "01_good.ipynb", "profile": "full", "set": ["n", "xs", "x", "name"]}
    assert bad["stopped"].startswith("failed: 02_bad.ipynb: cell 3")
    assert "02_bad.ipynb: cell 3 (In [3]) raised ValueError: boom" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["ok", "failed"] and all(r["seconds"] > 0 for r in summary)
    assert "01_good.ipynb" in captured.out and "total" in captured.out
    assert os.environ.get(suite.RESULTS_ENV) is None  # the runner restores the environment
    assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())   # all of it (DNLIB_PROGRESS too)


def test_save_results_default_path_and_jsonable(monkeypatch, tmp_path):
    import torch

    monkeypatch.delenv(suite.RESULTS_ENV, raising=False)
    monkeypatch.setattr(suite, "RUNS_DIR", tmp_path)
    path = suite.save_results({"t": torch.tensor([1.0, 2.0]), "nan": float("nan"), "nested": {"k": (1, 2)}}, name="nb",
                              parameters={"steps": 3})
    assert path.parent.parent == tmp_path / "notebooks" and path.parent.name.startswith("nb-")
    assert suite.load_results(path) == {"t": [1.0, 2.0], "nan": None, "nested": {"k": [1, 2]}}
    rec = records.read_record(path.parent)
    assert rec["parameters"] == {"steps": 3} and rec["headline"]["t"] == [1.0, 2.0] and rec["name"] == "nb"
    again = suite.save_results({"a": 2}, name="nb", parameters={"steps": 4})   # a second run: a second folder
    assert again.parent != path.parent and suite.load_results(path) != suite.load_results(again)
    monkeypatch.setenv(suite.RESULTS_ENV, str(tmp_path / "x.json"))
    assert suite.save_results({"a": 1}) == tmp_path / "x.json"


def test_envconfig_writes_both_files_and_is_idempotent(tmp_path):
    kernel_cfg = tmp_path / envconfig.KERNEL_CONFIG
    kernel_cfg.parent.mkdir(parents=True)
    kernel_cfg.write_text("c.Other.setting = 1")  # existing content is kept
    overrides = tmp_path / envconfig.LAB_OVERRIDES
    overrides.parent.mkdir(parents=True)
    overrides.write_text(json.dumps({"other-extension": {"x": 1}}))
    assert set(envconfig.configure(tmp_path)) == {kernel_cfg, overrides}
    assert envconfig.configure(tmp_path) == []
    text = kernel_cfg.read_text()
    assert text.startswith("c.Other.setting = 1\n") and text.count('c.IPKernelApp.log_level = "ERROR"') == 1
    settings = json.loads(overrides.read_text())
    assert settings["other-extension"] == {"x": 1}
    assert settings["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}


@pytest.mark.slow
def test_a_hanging_cell_fails_by_timeout_naming_notebook_and_cell(tmp_path, capsys):
    nb = _notebook(tmp_path / "03_hang.ipynb", ["import time", "time.sleep(60)"], "k: int = 1  # k\n")
    assert limits.default_cell_timeout("smoke") == 600
    rc = suite.main(["run", "--no-progress", "--cell-timeout", "3", "--out", str(tmp_path / "out"), str(nb)])
    assert rc == 1
    err = capsys.readouterr().err
    assert re.search(r"03_hang.ipynb: cell 3 \(`time.sleep\(60\)`\) ran [34] s and was stopped at the cell time "
                     r"limit of 3 s \(--cell-timeout\)", err), err


# ------------------------------------------------------------------- the full profile's cell limit (issue 22)
SCHEDULE_PARAMS = ('steps: "Optional[int]" = 10  # steps per run (None: the schedule)\n'
                   'configs: list = ["a", "b"]  # runs\ndevice: str = "cpu"  # device\n')


def test_the_full_profile_limit_is_derived_from_the_schedule(tmp_path, monkeypatch):
    nb = _notebook(tmp_path / "40_train.ipynb", ["pass"], SCHEDULE_PARAMS, {"smoke": {}, "full": {"steps": None}})
    assert limits.cell_limit("smoke", nb, {}) == (600, "the smoke profile's limit")
    limit, how = limits.cell_limit("full", nb, {"steps": 100})
    assert limit == limits.CELL_FLOOR + 2 * 100 * limits.SECONDS_PER_STEP["cpu"]
    assert "2 runs (configs) x 100 steps" in how
    assert limits.cell_limit("full", nb, {"steps": 100, "device": "cuda"})[0] == \
        limits.CELL_FLOOR + 2 * 100 * limits.SECONDS_PER_STEP["cuda"]
    limit, how = limits.cell_limit("full", nb, {"steps": None})     # the schedule that None means is not declared
    assert limit is None and "metadata.dnlib.schedule" in how
    meta = json.loads(nb.read_text())
    meta["metadata"]["dnlib"]["schedule"] = {"steps": 5000}
    nb.write_text(json.dumps(meta))
    assert limits.cell_limit("full", nb, {"steps": None})[0] \
        == limits.CELL_FLOOR + 2 * 5000 * limits.SECONDS_PER_STEP["cpu"]
    plain = _notebook(tmp_path / "41_plain.ipynb", ["pass"], "k: int = 1  # k\n")
    assert limits.cell_limit("full", plain, {}) == (
        limits.CELL_FLOOR, "the full profile's floor: no training (no steps or epochs parameter, no "
                           "metadata.dnlib.schedule)")


@pytest.mark.parametrize("stem, runs", [("03_cifar", 13), ("04_language_model", 6), ("05_super_resolution", 4),
                                        ("07_modern_networks", 5)])
def test_the_training_notebooks_have_a_full_profile_limit(stem, runs):
    path = suite.NOTEBOOK_DIR / f"{stem}.ipynb"
    limit, how = limits.cell_limit("full", path, parameters.resolve_parameters(path, "full"))
    assert limit is not None and limit > limits.CELL_FLOOR, how
    assert how.startswith(f"{limits.CELL_FLOOR:.0f} s + 0.1 s x") or "on cpu" in how
    assert f"{runs} runs" in how, how


@pytest.mark.slow
def test_a_cell_past_the_full_profile_limit_fails_naming_the_cell_and_its_time(tmp_path, monkeypatch, capsys):
    """Before: the full profile had no cell limit, so a busy kernel that never finishes ran forever."""
    monkeypatch.setattr(limits, "CELL_FLOOR", 2.0)
    monkeypatch.setattr(limits, "SECONDS_PER_STEP", {"cuda": 0.001, "cpu": 0.005})
    nb = _notebook(tmp_path / "42_busy.ipynb", ["import time\ntime.sleep(25)  # a training that never ends"],
                   SCHEDULE_PARAMS, {"smoke": {}, "full": {"steps": 100}})
    rc = suite.main(["run", "--no-progress", "--profile", "full", "--out", str(tmp_path / "out"), str(nb)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert re.search(r"42_busy.ipynb: cell 3 \(`import time`\) ran [34] s and was stopped at the cell time limit of "
                     r"3 s \(2 s \+ 0.005 s x 200 steps on cpu: 2 runs \(configs\) x 100 steps\)", err), err


@pytest.mark.slow
def test_training_under_the_suite_shows_a_text_bar_and_stores_only_its_last_state(tmp_path, capfd):
    """The kernel's bar is text (not a widget frozen at 0% in the executed copy), echoed to the console as lines,
    and the executed copy keeps one line: its last state."""
    train = ("import torch\nfrom torch import nn\nfrom dnlib.data.loader import TensorBatches\n"
             "from dnlib.training.trainer import TrainConfig, Trainer\n"
             "x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))\n"
             "loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])\n"
             "cfg = TrainConfig(steps=40, lr=0.1, device='cpu', eval_every=0, checkpoint_every=0, log_every=5)\n"
             "Trainer(nn.Linear(4, 2), loss, TensorBatches(x, y, batch_size=8), cfg).fit()\nNone")
    nb = _notebook(tmp_path / "43_bar.ipynb", [train], "k: int = 1  # k\n")
    records = suite.run([nb], out_dir=tmp_path / "out")
    assert records[0].status == "ok", records[0].error
    err = capfd.readouterr().err
    assert re.search(r"\[43_bar\] train: 100%\|.*\| 40/40", err), err[-3000:]
    outputs = json.loads((tmp_path / "out" / "43_bar" / "43_bar.ipynb").read_text())["cells"][-1]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream"], outputs
    text = "".join(outputs[0]["text"])
    assert "\r" not in text and text.count("\n") == 1 and "40/40" in text, text


# ------------------------------------------------------------------------------------ stall detection (issue 11)
# A real kernel is made to lose a message, as in the widget-cell hangs: each case leaves the kernel idle with the
# client waiting for an execute_reply that never comes. The runner must fail fast (stall_timeout, not the cell
# timeout) and name the notebook and the cell; a cell that keeps the kernel busy must not be called stalled.
DROP_OWN_REPLY = """\
k = get_ipython().kernel
_send = k.session.send
def _drop_reply(stream, msg_or_type, content=None, parent=None, *args, **kwargs):
    if msg_or_type == "execute_reply":  # lose this cell's reply; the kernel still reports idle
        k.session.send = _send
        return {"content": content, "header": {}, "parent_header": parent, "metadata": {}}
    return _send(stream, msg_or_type, content, parent, *args, **kwargs)
k.session.send = _drop_reply"""

SWALLOW_NEXT_REQUEST = """\
k = get_ipython().kernel
_dispatch = k.dispatch_shell
async def _swallow(*args, **kwargs):  # the next shell message is never handled: no busy, no reply
    k.dispatch_shell = _dispatch
k.dispatch_shell = _swallow"""


@pytest.mark.slow
@pytest.mark.parametrize("cells, stalled_cell, says", [
    ([DROP_OWN_REPLY, "y = 2"], 2, "never sent its execute_reply"),
    ([SWALLOW_NEXT_REQUEST, "y = 2"], 3, "never started the execute_request"),
])
def test_an_idle_kernel_that_never_replies_fails_fast_naming_notebook_and_cell(tmp_path, cells, stalled_cell, says):
    nb = _notebook(tmp_path / "07_stall.ipynb", cells, "k: int = 1  # k\n")
    # a 10-minute cell timeout: only the stall watch can end this run early
    record = suite.execute(nb, tmp_path / "out" / nb.name, {}, "smoke", progress=False, cell_timeout=600,
                           stall_timeout=3)
    assert record.status == "failed"
    assert f"07_stall.ipynb: cell {stalled_cell}" in record.error
    assert "raised CellStalled" in record.error and says in record.error


@pytest.mark.slow
def test_a_busy_kernel_is_never_called_stalled(tmp_path):
    # computing (CPU busy) and sleeping (CPU idle, but the kernel reported busy) both outlast the stall timeout
    cells = ["import time\nt = time.time()\nwhile time.time() - t < 6:\n    pass", "time.sleep(6)", "z = 3"]
    nb = _notebook(tmp_path / "08_busy.ipynb", cells, "k: int = 1  # k\n")
    record = suite.execute(nb, tmp_path / "out" / nb.name, {}, "smoke", progress=False, cell_timeout=600,
                           stall_timeout=2)
    assert record.status == "ok", record.error


# The root cause of the widget-cell hangs: an ipywidgets Output widget captures a figure, nbclient's
# Output-widget mimic sends the captured output back on the shell socket (comm_msg) while it awaits the
# execute_reply on that socket, and the reply's wakeup is lost (it sits in the client's socket). Before the
# fix (dnlib.notebook.stall.slice_polls) this notebook stalled in 14 of 14 runs, within its first 17 widget cells.
WIDGET_SETUP = ("import ipywidgets as W\nimport matplotlib.pyplot as plt\nimport numpy as np\n"
                "rng = np.random.default_rng(0)")
WIDGET_CELL = """\
def f(a, b):
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    ax.imshow(rng.random((200, 300)))  # a PNG of ~100 KB, like the explorers' figures
    plt.show()
    plt.close(fig)
    return a + b
W.interactive(f, a=W.FloatSlider(value=0.4, min=0, max=1), b=W.Dropdown(options=[1, 2, 3]))"""


@pytest.mark.slow
def test_widget_cells_capturing_large_figures_do_not_stall(tmp_path):
    nb = _notebook(tmp_path / "09_widgets.ipynb", [WIDGET_SETUP] + [WIDGET_CELL] * 24, "k: int = 1  # k\n")
    record = suite.execute(nb, tmp_path / "out" / nb.name, {}, "smoke", progress=False, cell_timeout=600,
                           stall_timeout=10)
    assert record.status == "ok", record.error
    cells = json.loads((tmp_path / "out" / nb.name).read_text())["cells"]
    assert sum(1 for c in cells if c.get("outputs")) >= 24  # every widget cell ran and kept its output


def test_save_results_outside_the_suite_records_the_notebooks_parameters(nbdir, tmp_path, monkeypatch):
    """JupyterLab / plain papermill: the declared parameters' current values come from the kernel's namespace."""
    import IPython

    class Shell:
        user_ns = {"n": 7, "x": 0.25, "name": "z", "flag": True, "xs": [9], "other": 1}

    monkeypatch.delenv(suite.RESULTS_ENV, raising=False)
    monkeypatch.setattr(suite, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(suite, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    path = suite.save_results({"acc": 0.5}, name="01_good")
    rec = records.read_record(path.parent)
    assert rec["parameters"] == {"n": 7, "x": 0.25, "name": "z", "flag": True, "xs": [9]}
    assert rec["experiment"] == "01_good" and rec["headline"] == {"acc": 0.5}
    assert rec["config"]["set"] == ["n", "x", "name", "flag", "xs"]   # every value differs from its default


def test_save_results_outside_the_suite_names_the_parameters_that_differ_from_the_defaults(nbdir, tmp_path,
                                                                                           monkeypatch):
    """Before: a record written outside the suite had no ``config.set``, so a notebook run from JupyterLab with
    ``n = 7`` could not be told from one at the defaults without re-reading the notebook. Now ``config.set`` names
    the values that differ from the declared defaults (a tuple equal to a list default is not a change); None where
    the notebook is unknown."""
    monkeypatch.delenv(suite.RESULTS_ENV, raising=False)
    monkeypatch.setattr(suite, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(suite, "NOTEBOOK_DIR", nbdir)
    given = {"n": 7, "x": 0.5, "name": "a", "flag": False, "xs": (1, 2)}
    rec = records.read_record(suite.save_results({"acc": 0.5}, name="01_good", parameters=given).parent)
    assert rec["config"]["set"] == ["n"]
    rec = records.read_record(suite.save_results({"acc": 0.5}, name="01_good", parameters={"xs": [2, 1]}).parent)
    assert rec["config"]["set"] == ["xs"]
    assert parameters.changed_parameters(nbdir / "01_good.ipynb", {"n": 2, "extra": 1}) == ["extra"]
    rec = records.read_record(suite.save_results({"acc": 0.5}, name="unknown", parameters={"n": 1}).parent)
    assert rec["config"]["set"] is None
    assert suite.notebook_parameters("no_such_notebook") == {}


# -------------------------------------------------- parameters.check_parameters: the in-notebook type check
def _checked_namespace(**changes):
    ns = {"n": 2, "x": 0.5, "name": "a", "flag": False, "xs": [1, 2]}
    ns.update(changes)
    return ns


def test_check_parameters_passes_correct_values_and_converts_int_to_float(nbdir):
    ns = _checked_namespace(x=3)
    values = parameters.check_parameters(nbdir / "01_good.ipynb", ns)
    assert values == {"n": 2, "x": 3.0, "name": "a", "flag": False, "xs": [1, 2]}
    assert type(ns["x"]) is float  # written back, as the runner would have injected it


@pytest.mark.parametrize("changes, says", [
    ({"xs": "[1, 2]"}, ["'xs'", "'[1, 2]'", "list", "-y \"xs: [1, 2]\""]),   # papermill -p xs "[1, 2]"
    ({"n": 2.0}, ["'n'", "2.0", "int", "float"]),
    ({"name": 3}, ["'name'", "3", "str", "-r name"]),
    ({"flag": "False"}, ["'flag'", "'False'", "bool"]),
])
def test_check_parameters_refuses_a_wrong_type_naming_parameter_value_and_type(nbdir, changes, says):
    with pytest.raises(parameters.ParameterError) as err:
        parameters.check_parameters(nbdir / "01_good.ipynb", _checked_namespace(**changes))
    msg = str(err.value)
    assert msg.startswith("01_good.ipynb: parameter")
    for word in says:
        assert word in msg, (word, msg)


def test_check_parameters_refuses_a_missing_parameter_and_a_missing_notebook(nbdir):
    ns = _checked_namespace()
    del ns["xs"]
    with pytest.raises(parameters.ParameterError, match="'xs' is not defined"):
        parameters.check_parameters(nbdir / "01_good.ipynb", ns)
    with pytest.raises(FileNotFoundError, match="no notebook 'nope'"):
        parameters.check_parameters("nope", ns)


@pytest.mark.slow
def test_check_parameters_stops_a_plain_papermill_run_given_a_list_as_a_string(tmp_path):
    import papermill

    nb = _notebook(tmp_path / "01_checked.ipynb", [
        "from dnlib.notebook import parameters\n"
        f"parameters.check_parameters({str(tmp_path / '01_checked.ipynb')!r}, globals())",
        "ran = True"], PARAMS)
    papermill.execute_notebook(str(nb), str(tmp_path / "ok.ipynb"), parameters={"xs": [3]}, kernel_name="python3",
                               progress_bar=False)
    with pytest.raises(papermill.PapermillExecutionError) as err:   # what `papermill -p xs "[3]"` injects
        papermill.execute_notebook(str(nb), str(tmp_path / "bad.ipynb"), parameters={"xs": "[3]"},
                                   kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ParameterError" and "'xs' = '[3]' (str)" in err.value.evalue
    assert "ran = True" in json.dumps(nbformat.read(str(tmp_path / "bad.ipynb"), 4).cells[-1].source)
    assert not nbformat.read(str(tmp_path / "bad.ipynb"), 4).cells[-1].get("execution_count")


def test_every_notebook_checks_its_parameters_right_after_the_parameters_cell():
    for path in suite.discover():
        cells = [c for c in parameters.read_notebook(path)["cells"] if c["cell_type"] == "code"]
        i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        source = "".join(cells[i + 1]["source"])
        assert f'dnlib.notebook.parameters.check_parameters("{path.stem}", globals())' in source, path.name


# ---- silent defects of the runner: a parameter that reaches the kernel as another type than validated, a run
# ---- that overwrites another's folder (each test runs tiny notebooks for real)
@pytest.mark.slow
def test_values_reach_the_kernel_with_the_type_the_runner_validated(tmp_path):
    """Before: papermill's translator writes a tuple (declared, or inside a list) as a string, and a dict's keys
    as strings, so `-p shape "(3, 4)"` (validated as a tuple, recorded as one) ran with shape = "(3, 4)"; a
    profile's [5, 6] for a declared tuple too."""
    params = ('shape: tuple = (1, 2)  # a shape\nsize: tuple = (1, 1)  # another\n'
              'table: dict = {"a": 1}  # a table\npairs: list = [[0, 0]]  # pairs\n')
    checks = ["assert shape == (3, 4) and type(shape) is tuple, repr(shape)",
              "assert size == (5, 6) and type(size) is tuple, repr(size)",
              "assert table == {1: 'x', 2: None}, repr(table)",
              "assert pairs == [(1, 2), (3,)] and type(pairs[1]) is tuple, repr(pairs)"]
    nb = _notebook(tmp_path / "50_types.ipynb", checks, params, {"smoke": {}, "full": {"size": [5, 6]}})
    overrides = [("shape", "(3, 4)"), ("table", "{1: 'x', 2: None}"), ("pairs", "[(1, 2), (3,)]")]
    done = suite.run([nb], "full", overrides, out_dir=tmp_path / "out", progress=False)
    assert done[0].status == "ok", done[0].error


def test_a_notebook_selected_twice_is_refused_before_anything_runs(tmp_path, capsys):
    """Before: both runs went to <out>/<stem>/, the second overwrote the first's executed copy, results and record
    (and a notebook of the same name in another folder did the same)."""
    nb = _notebook(tmp_path / "51_twice.ipynb", ["k"], "k: int = 1  # k\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    same_name = _notebook(other / "51_twice.ipynb", ["k"], "k: int = 1  # k\n")
    out = tmp_path / "out"
    for selection in ([nb, nb], [nb, same_name]):
        with pytest.raises(parameters.ParameterError, match="51_twice.*twice"):
            suite.run(selection, out_dir=out, progress=False, overrides=[("k", "2")])
        assert not out.exists()
    rc = suite.main(["run", "--no-progress", "--out", str(out), str(nb), str(nb)])
    assert rc == 2 and not out.exists()
    assert "51_twice" in capsys.readouterr().err


def test_a_given_out_folder_that_holds_a_run_is_refused_before_anything_runs(tmp_path, capsys):
    """Before: a second run with the same --out replaced <out>/<stem>/ (its executed copy, results and record) and
    summary.json, against "every run writes its own record that nothing overwrites"."""
    nb = _notebook(tmp_path / "52_again.ipynb", ["k"], "k: int = 1  # k\n")
    out = tmp_path / "out"
    suite.run([nb], out_dir=out, progress=False)
    first = (out / "52_again" / "record.json").read_bytes()
    with pytest.raises(parameters.ParameterError, match="52_again.*already holds a run"):
        suite.run([nb], out_dir=out, progress=False)
    assert suite.main(["run", "--no-progress", "--out", str(out), str(nb)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "52_again" / "record.json").read_bytes() == first


def test_a_notebook_without_the_profile_asked_is_refused_before_anything_runs(tmp_path, capsys):
    """Before: a profile was accepted when any selected notebook (or the built-in list) had it, and a notebook
    without it ran its defaults (the smoke size) under a record saying it ran that profile: `--profile full` on a
    smoke-only notebook gave n=2 labelled full, exit 0. Smoke needs no declaration: the defaults are the smoke run."""
    code = ["from dnlib.notebook import suite\nsuite.save_results({'n': n})"]
    has = _notebook(tmp_path / "53_full.ipynb", code, "n: int = 2  # n\n", {"smoke": {}, "full": {"n": 500}})
    lacks = _notebook(tmp_path / "54_smoke.ipynb", code, "n: int = 2  # n\n", {"smoke": {}, "big": {"n": 9}})
    out = tmp_path / "out"
    with pytest.raises(parameters.ParameterError) as err:
        suite.run([has, lacks], "full", out_dir=out, progress=False)
    assert str(err.value) == "54_smoke.ipynb: no profile 'full' in metadata.dnlib.profiles; it has: big, smoke"
    with pytest.raises(parameters.ParameterError, match="53_full.ipynb: no profile 'big'.*it has: full, smoke"):
        parameters.resolve_parameters(has, "big")
    assert suite.main(["run", "--no-progress", "--profile", "full", "--out", str(out), str(has), str(lacks)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "54_smoke.ipynb: no profile 'full'" in err and "53_full" not in err, err
    assert not out.exists()
    implicit = _notebook(tmp_path / "55_implicit.ipynb", code, "n: int = 2  # n\n", {"full": {"n": 500}})
    assert parameters.resolve_parameters(implicit, "smoke") == {}    # smoke: the declared defaults


@pytest.mark.slow
def test_a_relative_out_keeps_the_results_and_the_headline(tmp_path, monkeypatch):
    """Before: the kernel runs in the notebook's folder and was handed the results path relative to the suite's
    working folder, so results.json went to <notebooks>/<out>/<stem>/, the record's headline was {} and
    summary.json's results None, exit 0 "ok"."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = _notebook(nbs / "60_rel.ipynb", ["from dnlib.notebook import suite\nsuite.save_results({'n': n})"],
                   "n: int = 2  # n\n")
    monkeypatch.chdir(tmp_path)
    done = suite.run([nb], out_dir="relout", progress=False)
    assert done[0].status == "ok", done[0].error
    assert done[0].results == str(tmp_path / "relout" / "60_rel" / "results.json")
    assert records.read_record(tmp_path / "relout" / "60_rel")["headline"] == {"n": 2}
    assert json.loads((tmp_path / "relout" / "summary.json").read_text())[0]["results"] == done[0].results
    assert not (nbs / "relout").exists()


@pytest.mark.slow
def test_a_notebook_that_calls_save_results_but_writes_none_fails(tmp_path):
    """Before: a notebook whose cells call save_results but whose results never reached the suite (e.g. written
    elsewhere) was reported "ok" with no headline. The suite expects results.json of a notebook that calls it."""
    code = ["from dnlib.notebook import suite\nif n > 5:\n    suite.save_results({'n': n})"]
    nb = _notebook(tmp_path / "61_none.ipynb", code, "n: int = 2  # n\n")
    plain = _notebook(tmp_path / "62_plain.ipynb", ["n + 1"], "n: int = 2  # n\n")   # expects no results: ok
    out = tmp_path / "out"
    with pytest.raises(suite.NotebookFailed) as err:
        suite.run([nb, plain], out_dir=out, progress=False)
    assert [r.status for r in err.value.records] == ["failed", "ok"]
    assert str(err.value) == (f"61_none.ipynb: completed but wrote no results (its cells call save_results; expected "
                              f"{out / '61_none' / 'results.json'})")
    assert records.read_record(out / "61_none")["stopped"].startswith("failed: 61_none.ipynb: completed but")


# ---- allowed values (metadata.dnlib.parameters), checked for every selected notebook before any runs
DEVICE = {"choices": ["auto", "cpu", "cuda"], "pattern": r"cuda:\d+"}
RULED = ('steps: "Optional[int]" = 2  # steps\ndevice: str = "cpu"  # device\ncfg: str = "a"  # a config\n'
         'x: float = 0.5  # a value\nxs: list = [1, 2]  # counts\nnames: list = ["a"]  # configs\n')
RULES = {"steps": {"min": 1}, "device": DEVICE, "cfg": {"choices": ["a", "b"]}, "xs": {"min": 0, "max": 9},
         "names": {"choices_from": "dnlib.experiments.cifar_configs.list_configs()", "choices": ["a"]}}


@pytest.mark.parametrize("override, says", [
    (("71:steps", "-5"), "parameter 'steps' (from -p) = -5 is not allowed: allowed >= 1 (or None)"),
    (("71:device", "tpu"), "parameter 'device' (from -p) = 'tpu' is not allowed: allowed one of 'auto', 'cpu', 'cuda' "
                        "or matching 'cuda:\\\\d+'"),
    (("71:cfg", "c"), "parameter 'cfg' (from -p) = 'c' is not allowed: allowed one of 'a', 'b'"),
    (("71:x", "nan"), "parameter 'x' (from -p) = nan is not allowed: NaN and infinite values are refused"),
    (("71:x", "inf"), "parameter 'x' (from -p) = inf is not allowed: NaN and infinite values are refused"),
    (("71:xs", "[1, 10]"), "parameter 'xs' (from -p) = [1, 10] item 10 is not allowed: allowed >= 0 and <= 9 for each"),
    (("71:names", "['a', 'nope']"), "parameter 'names' (from -p) = ['a', 'nope'] item 'nope' is not allowed: allowed "
                                 "one of 'a', 'base', 'base-wd-drop'"),
])
def test_a_value_the_notebook_does_not_allow_is_refused_before_anything_runs(tmp_path, capsys, override, says):
    """Before: -p values were checked for type only, so `run 01 03 -p 03:steps -5` ran 01 in full, then 03 failed
    in a cell (exit 1, not 2), and `-p fixed_input nan` finished "ok" with a table of NaNs."""
    first = _notebook(tmp_path / "70_first.ipynb", ["from dnlib.notebook import suite\nsuite.save_results({'n': n})"],
                      "n: int = 2  # n\n")
    ruled = _notebook(tmp_path / "71_ruled.ipynb", ["steps"], RULED, rules=RULES)
    out = tmp_path / "out"
    with pytest.raises(parameters.ParameterError) as err:
        suite.run([first, ruled], overrides=[override], out_dir=out, progress=False)
    assert str(err.value).startswith(f"71_ruled.ipynb: {says}"), str(err.value)
    assert not out.exists()
    assert suite.main(["run", "--no-progress", "--out", str(out), "-p", *override, str(first), str(ruled)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "71_ruled.ipynb" in err and "nothing was executed" in err, err
    assert not out.exists()


@pytest.mark.parametrize("value, rule, nullable", [
    ("cuda:1", DEVICE, False), ("auto", DEVICE, False), (None, {"min": 1}, True),
    (float("nan"), {"allow_nonfinite": True}, False),
    ([0, 9], {"min": 0, "max": 9}, False), (["all", "bn"], {"choices": ["all"], "choices_from":
                                                            "dnlib.norms.presets.list_norms()"}, False),
    ("cpu", {"choices_from": "dnlib.experiments.analysis_configs.SIZES"}, False),
])
def test_check_value_keeps_what_a_rule_allows(value, rule, nullable):
    parameters.check_value(value, rule, nullable=nullable)


def test_a_notebooks_rules_are_checked_themselves(tmp_path):
    """A rule for no parameter, an unknown rule key, a choices_from that is no dnlib name, a default that breaks
    its own rule: each named before anything runs."""
    path = _notebook(tmp_path / "72_bad_rules.ipynb", [], RULED,
                     rules={"stpes": {"min": 1}, "device": {"choises": ["cpu"]}, "cfg": {"choices_from": "os.sep"},
                            "x": {"min": 1}})
    problems = sorted(parameters.rule_problems(path))   # (nbformat writes the metadata's keys sorted)
    assert problems == [
        "metadata.dnlib.parameters.cfg: the parameters cell's default 'a' choices_from 'os.sep' must name a dnlib "
        "module's function or collection",
        "metadata.dnlib.parameters.device: unknown rule key(s) ['choises']; known: " + ", ".join(parameters.RULE_KEYS),
        "metadata.dnlib.parameters.stpes: no such parameter; declared: steps, device, cfg, x, xs, names",
        "metadata.dnlib.parameters.x: the parameters cell's default 0.5 is not allowed: allowed >= 1"]
    with pytest.raises(parameters.ParameterError, match="72_bad_rules.ipynb: metadata.dnlib.parameters.cfg"):
        parameters.resolve_parameters(path)


def test_check_parameters_refuses_a_value_the_notebook_does_not_allow(tmp_path):
    """The kernel's own check (JupyterLab, plain papermill) applies the same rules."""
    path = _notebook(tmp_path / "73_kernel.ipynb", [], RULED, rules=RULES)
    namespace = {"steps": 0, "device": "cuda:0", "cfg": "a", "x": float("inf"), "xs": [1], "names": ["a"]}
    with pytest.raises(parameters.ParameterError) as err:
        parameters.check_parameters(path, namespace)
    assert str(err.value) == (
        "73_kernel.ipynb: parameter 'steps' = 0 is not allowed: allowed >= 1 (or None)\n73_kernel.ipynb: parameter "
        "'x' = inf is not allowed: NaN and infinite values are refused (the notebook's metadata.dnlib.parameters may "
        "set allow_nonfinite)")


@pytest.mark.parametrize("stem, name, value, allowed", [
    ("03_cifar", "steps", "-5", "allowed >= 1 (or None)"), ("03_cifar", "device", "tpu", "'cuda:\\\\d+'"),
    ("03_cifar", "configs", "['bn-star', 'nope']", "item 'nope' is not allowed: allowed one of 'base'"),
    ("04_language_model", "threads", "0", "allowed >= 1 (or None)"), ("05_super_resolution", "config", "huge",
                                                                      "one of 'paper', 'fast', 'smoke'"),
    ("07_modern_networks", "configs", "['resnet20-xx']", "'resnet20-bn'"),
    ("08_why_normalizers_work", "live_configs", "['nope']", "one of 'all', 'batch-bn-b2'"),
    ("01_unified_view", "fixed_input", "nan", "NaN and infinite values are refused"),
])
def test_the_repository_notebooks_refuse_values_they_do_not_allow(stem, name, value, allowed):
    path = parameters.NOTEBOOK_DIR / f"{stem}.ipynb"
    with pytest.raises(parameters.ParameterError) as err:
        parameters.resolve_parameters(path, "smoke", [(name, value)])
    assert str(err.value).startswith(f"{stem}.ipynb: parameter {name!r} (from -p) = ") and allowed in str(err.value)
    device = [("device", "cuda:1")] if "device" in parameters.parameter_rules(path) else []
    assert isinstance(parameters.resolve_parameters(path, "full", device), dict)   # and the full profile is allowed
