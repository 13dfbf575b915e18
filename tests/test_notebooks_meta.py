"""Every notebook in notebooks/ is stored clean and follows the suite's conventions (STYLE.md).

Checked per notebook: kernel ``python3``; stripped (no outputs or execution counts except in cells tagged
``keep_output``, which must also be tagged ``nbval-check-output`` and keep an execution count for nbval;
``nbstripout``'s own stripping with counts and ids kept changes nothing); exactly one ``parameters`` cell of typed,
commented literal lines that papermill parses; profiles in ``metadata.dnlib.profiles`` that validate; no
``def``/``class``/loops in code cells; short cells; an opening Markdown cell naming the paper section; the lesson's
``## `` sections in order (:data:`LESSON_SECTIONS`; every notebook from 03 on: :data:`LESSON_FORM`).
"""
import ast
import copy
import json
import re
from pathlib import Path

import pytest

from dnlib.notebook import parameters

NOTEBOOKS = sorted(Path(__file__).resolve().parents[1].joinpath("notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
# The keys the nbstripout command line strips by default besides outputs and counts.
NBSTRIPOUT_EXTRA_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed",
                         "cell.metadata.ExecuteTime", "cell.metadata.execution", "cell.metadata.heading_collapsed",
                         "cell.metadata.hidden",
                         "cell.metadata.scrolled", "cell.metadata.papermill", "metadata.papermill"]
MAX_CELL_LINES = 10
MAX_KEPT_CHARS = 4000
# The ``## `` headings a lesson has, in this order (a case-insensitive prefix of the heading, after an optional
# "N. " number); other headings may come between them. 01 and 02 keep their own; every later notebook is a lesson
# of the experiment form: math -> worked example -> training (the library call) -> results beside the paper.
LESSON_FORM = ["The math", "A worked example", "Training", "Results beside the paper", "Takeaway", "Exercises"]
LESSON_SECTIONS = {"01_unified_view.ipynb": ["The math", "A worked example", "The library call", "What to take away",
                                             "Exercises"],
                   "02_activation_explorer.ipynb": ["The explorer", "What to take away", "Exercises"],
                   # 06 trains nothing: it reads run records (what the tables are, mean ± std, the tables, curves)
                   "06_results.ipynb": ["What the tables are", "Reading mean ± std", "Results beside the paper",
                                        "Learning curves", "Takeaway", "Exercises"]}
FORBIDDEN = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While, ast.ListComp,
             ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _stored_form():
    """scripts/nbclean.py's clean(): what git stores of a notebook (make setup installs it as the clean filter)."""
    import importlib.util
    script = Path(__file__).resolve().parents[1] / "scripts" / "nbclean.py"
    spec = importlib.util.spec_from_file_location("nbclean", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.clean


_CLEAN = _stored_form()


def _load(path):
    """The notebook as git stores it: a copy saved from JupyterLab with outputs (which the clean filter strips on
    git add) is checked in its stored form, so exploring never breaks these tests; the committed files are
    already in that form (test_notebooks_are_stored_in_their_clean_form)."""
    return json.loads(_CLEAN(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_are_stored_in_their_clean_form(path):
    """What is committed is what the clean filter would store (checked on the clean clone CI runs on)."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    rel = path.relative_to(root).as_posix()
    committed = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True, text=True)
    if committed.returncode != 0:
        pytest.skip("not in a git checkout (or the notebook is not committed yet)")
    assert _CLEAN(committed.stdout) == committed.stdout, f"{rel} is committed with outputs or counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_float_that_a_jupyterlab_save_rewrites(path):
    """JupyterLab writes a notebook's JSON through JavaScript, where ``2.0`` is the number ``2``: a float with an
    integral value in the stored JSON (e.g. a parameter rule's ``"max": 2.0``) is rewritten by every save, so a Run
    All + save in JupyterLab leaves ``git status`` dirty (tests/test_browser.py caught notebook 02's). Integral
    values are stored as integers (a rule compares them with floats alike)."""
    found = []

    def floats(x, where):
        if isinstance(x, float) and x.is_integer():
            found.append(f"{where}: {x!r}")
        elif isinstance(x, dict):
            for k, v in x.items():
                floats(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                floats(v, f"{where}[{i}]")
    floats(json.loads(path.read_text(encoding="utf-8")), "notebook")
    assert not found, found


def _src(cell):
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def test_there_are_notebooks():
    assert {"01_unified_view.ipynb", "02_activation_explorer.ipynb"} <= set(IDS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_name_and_kernel(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), "notebooks are named NN_topic.ipynb"
    assert _load(path)["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stripped_except_keep_output_cells(path):
    nb = _load(path)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if "keep_output" in _tags(cell):
            assert "nbval-check-output" in _tags(cell), f"cell {i}: keep_output cells are compared by nbval"
            assert isinstance(cell.get("execution_count"), int), f"cell {i}: a stored reference cell needs a count"
            assert cell["outputs"], f"cell {i}: keep_output cell has no stored output"
            assert all(o["output_type"] == "stream" or set(o.get("data", {})) == {"text/plain"}
                       for o in cell["outputs"]), f"cell {i}: keep text outputs only (no images or HTML)"
            assert len(json.dumps(cell["outputs"])) <= MAX_KEPT_CHARS, f"cell {i}: keep stored outputs small"
        else:
            assert cell.get("outputs") == [], f"cell {i}: outputs stored outside a keep_output cell"
            assert cell.get("execution_count") is None, f"cell {i}: execution count stored"
    assert "widgets" not in nb["metadata"] and "papermill" not in nb["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_nbstripout_would_change_nothing(path):
    import nbformat
    from nbstripout import strip_output

    nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
    stripped = strip_output(copy.deepcopy(nb), keep_output=False, keep_count=True, keep_id=True,
                            extra_keys=NBSTRIPOUT_EXTRA_KEYS)
    assert stripped == nb, "run nbstripout --keep-count --keep-id on this notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_one_typed_parameters_cell(path):
    assert parameters.parameter_cell_problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_profiles_validate(path):
    profiles = parameters.notebook_profiles(path)
    assert "smoke" in profiles, "declare metadata.dnlib.profiles with at least 'smoke'"
    for name in profiles:
        parameters.resolve_parameters(path, name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameter_rules_are_valid(path):
    """metadata.dnlib.parameters names declared parameters with known rule keys, its defaults keep them, and a
    ``device``, ``steps`` or ``threads`` parameter states what it allows (the suite refuses the rest before running)."""
    assert parameters.rule_problems(path) == []
    rules, declared = parameters.parameter_rules(path), parameters.declared_parameters(path)
    for name in ("device", "steps", "threads"):
        if name in declared:
            assert name in rules, f"{path.name}: state {name}'s allowed values in metadata.dnlib.parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_defaults_are_the_smoke_profile(path):
    """What a notebook opened in JupyterLab runs (its parameters cell) is what the suite's smoke profile runs, so the
    text written from a smoke run describes both (issue 23: 05's eval_every 0 against the profile's 15 gave a
    one-point PSNR "curve" in JupyterLab where the text promised four; device "auto" against "cpu")."""
    import ast as _ast

    declared = parameters.declared_parameters(path)
    smoke = parameters.resolve_parameters(path, "smoke")
    differ = {name: (_ast.literal_eval(declared[name]["default"]), value) for name, value in smoke.items()
              if _ast.literal_eval(declared[name]["default"]) != value}
    assert not differ, (f"{path.name}: parameters cell defaults differ from metadata.dnlib.profiles.smoke "
                        f"(name: (default, smoke)): {differ}; make the defaults the smoke run")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_logic_in_notebooks(path):
    nb = _load(path)
    imports_dnlib = False
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = _src(cell)
        lines = [ln for ln in src.splitlines() if ln.strip()]
        assert len(lines) <= MAX_CELL_LINES or "parameters" in _tags(cell), f"cell {i}: keep code cells short"
        code = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
        tree = ast.parse(code)
        bad = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, FORBIDDEN)]
        assert not bad, f"cell {i}: {bad} in a notebook; move the logic into dnlib"
        imports_dnlib |= bool(re.search(r"^\s*(from dnlib\b|import dnlib\b)", src, re.M))
    assert imports_dnlib


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_opens_with_a_lesson_introduction(path):
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "markdown"
    text = _src(first)
    assert text.lstrip().startswith("# ") and "§" in text, "open with a title and name the paper section (PAPER.md §)"


def lesson_headings(nb: dict) -> list:
    """The ``## `` headings of the Markdown cells, in order."""
    return [ln[3:].strip() for cell in nb["cells"] if cell["cell_type"] == "markdown"
            for ln in _src(cell).splitlines() if ln.startswith("## ")]


def missing_sections(headings: list, required: list) -> list:
    """The required sections not found in order (each a case-insensitive prefix of a later heading)."""
    heads = [re.sub(r"^\d+\.\s*", "", h).lower() for h in headings]
    missing, it = [], iter(heads)
    for want in required:
        if not any(h.startswith(want.lower()) for h in it):
            missing.append(want)
            it = iter(heads)   # report every missing one, not just the first
    return missing


def test_lesson_sections_matcher():
    heads = ["1. The math: fields", "2. A worked example by hand", "3. Training: the call", "Takeaway", "Exercises"]
    assert missing_sections(heads, ["The math", "a WORKED example", "Training", "Takeaway", "Exercises"]) == []
    assert missing_sections(heads, ["Training", "The math"]) == ["The math"]          # order matters
    assert missing_sections(heads, LESSON_FORM) == ["Results beside the paper"]
    nb = {"cells": [{"cell_type": "markdown", "source": "# T\n## 1. The math\ntext ## no"},
                    {"cell_type": "code", "source": "## Exercises"}]}
    assert lesson_headings(nb) == ["1. The math"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_lesson_sections(path):
    if path.name in LESSON_SECTIONS:
        required = LESSON_SECTIONS[path.name]
    else:
        assert int(path.name[:2]) >= 3, f"{path.name}: list its sections in LESSON_SECTIONS"
        required = LESSON_FORM
    headings = lesson_headings(_load(path))
    missing = missing_sections(headings, required)
    assert not missing, (f"{path.name}: lesson sections {missing} missing or out of order; need '## ' headings "
                         f"{required} in this order (have {headings})")


def _exercise(nb: dict, number: int) -> str:
    """The text of exercise ``number`` (a Markdown list item after the ``## Exercises`` heading)."""
    text = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    exercises = text.split("## Exercises", 1)[1]
    match = re.search(rf"^{number}\. (.*?)(?=^\d+\. |\Z)", exercises, re.M | re.S)
    assert match, f"no exercise {number}"
    return match.group(1)


def test_01_exercise_3_names_the_call_that_draws_every_sigma():
    """Issue 23: 01's exercise 3 pointed to stats.dn_relu_response, one sigma per call; it names figures.figure2(...,
    spec=...) now, and that call runs as written with the notebook's parameters (one curve per sigma)."""
    import ast as _ast

    import dnlib
    from dnlib.analysis import figures, stats

    path = next(p for p in NOTEBOOKS if p.name == "01_unified_view.ipynb")
    text = _exercise(_load(path), 3)
    calls = [s for s in re.findall(r"`([^`]+)`", text) if s.startswith("figures.figure2(") and "spec=" in s]
    assert calls, f"exercise 3 does not give the figures.figure2(..., spec=...) call: {text!r}"
    params = {name: _ast.literal_eval(p["default"]) for name, p in parameters.declared_parameters(path).items()}
    fig = eval(calls[0], {"dnlib": dnlib, "figures": figures, "stats": stats, **params})  # noqa: S307 - our own text
    # + the dashed line at the fixed input
    assert [len(ax.lines) for ax in fig.axes] == [len(params["sigmas"]) + 1] * 2
