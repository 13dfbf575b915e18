"""The notebook git filter that ``make setup`` installs (issue 15 item 7): a notebook saved in JupyterLab (outputs,
counts, timing metadata) is stored exactly in the repository's stripped form; committed notebooks pass unchanged.

Issue 23 item 5: what JupyterLab writes on save that depends on the session (the kept cells' counts after a second
"Run All", the kernel's ``language_info`` and ``display_name``) is normalized too, so the stored form is byte for
byte the committed file and ``git status`` stays clean (tests/test_browser.py saves through JupyterLab itself)."""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dnlib.notebook import suite
from dnlib.notebook.nbcheck import as_jupyterlab_saves

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "nbclean.py"
NOTEBOOKS = suite.discover()


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nbclean_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The filter's function, in this process (``git add`` runs the script itself: test_make_setup_installs_the_filter_
#: and_git_add_strips; the script's stdin/stdout path: test_the_script_filters_stdin_to_stdout).
_clean = _load_script().clean


def _keep_output(cell) -> bool:
    return "keep_output" in cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_pass_the_filter_unchanged(path):
    text = path.read_text(encoding="utf-8")
    assert _clean(text) == text


def test_the_filter_starts_without_the_iri_grammar():
    """git runs the filter once per notebook it cleans or diffs: it must not import rfc3987_syntax (through nbformat
    -> jsonschema), which builds a Lark grammar on import (1.0 s of 1.3 s per notebook before)."""
    res = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), "-t", str(NOTEBOOKS[0])],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "nbformat" in imported and "jsonschema" in imported       # the filter's own path, as before
    # (an import that fails is listed too, with no submodule: the grammar lives in rfc3987_syntax.syntax_helpers)
    assert not {m for m in imported if m.startswith(("rfc3987_syntax.", "lark"))}
    assert res.stdout == NOTEBOOKS[0].read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_script_filters_stdin_to_stdout():
    """``python scripts/nbclean.py`` (what git runs): a notebook with outputs in, its stored form out; text that
    is not a notebook passes through."""
    def run(text):
        return subprocess.run([sys.executable, str(SCRIPT)], input=text.encode(), capture_output=True,
                              check=True).stdout.decode()
    saved = as_jupyterlab_saves(_with_outputs(json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))))
    assert run(saved + '{"cells": [') == saved + '{"cells": ['       # not JSON: unchanged
    assert run(saved) == NOTEBOOKS[0].read_text(encoding="utf-8") != saved


def _with_outputs(nb: dict) -> dict:
    """``nb`` as a kernel leaves it after "Run All" with JupyterLab's timing metadata: each code cell with a stream,
    an image and an ``execute_result``; the kept cells (``keep_output``) with the outputs they have. The real
    outputs of every repository notebook are checked the same way from nbval's one execution of it
    (notebooks/conftest.py, ``<notebook>::stored_form``), so this module executes no notebook."""
    nb = copy.deepcopy(nb)
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYPgPAAEDAQAIicLsAAAAAElFTkSuQmCC"
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["metadata"]["execution"] = {"iopub.execute_input": "2026-12-06T10:00:00.000001Z",
                                         "iopub.status.busy": "2026-12-06T10:00:00.000000Z",
                                         "iopub.status.idle": "2026-12-06T10:00:01.000000Z",
                                         "shell.execute_reply": "2026-12-06T10:00:01.000000Z"}
        if _keep_output(cell):
            continue
        cell["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text=f"cell {i}\n"),
                           nbformat.v4.new_output("display_data", {"image/png": png, "text/plain": "<Figure>"}),
                           nbformat.v4.new_output("execute_result", {"text/plain": repr(i)}, execution_count=i)]
    return json.loads(json.dumps(nb))


@pytest.fixture(scope="module")
def executed_01():
    """Notebook 01 with outputs and timing metadata (as a dict), as "Run All" leaves it."""
    return _with_outputs(json.loads(NOTEBOOKS[0].read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def saved_01(executed_01):
    """Notebook 01 as JupyterLab saves it after "Run All": every cell numbered, outputs, timing metadata."""
    return as_jupyterlab_saves(executed_01)


def test_a_saved_notebook_is_stored_in_the_stripped_form(saved_01):
    saved = json.loads(saved_01)
    assert sum(bool(c.get("outputs")) for c in saved["cells"] if c["cell_type"] == "code") > 3
    # the committed file, byte for byte: outputs gone, ids, kept outputs and their counts kept
    assert _clean(saved_01) == NOTEBOOKS[0].read_text(encoding="utf-8")
    kept = [c for c in json.loads(_clean(saved_01))["cells"] if c["cell_type"] == "code" and _keep_output(c)]
    assert kept and all(isinstance(c["execution_count"], int) and c["outputs"] for c in kept)


def test_a_second_run_all_in_another_installation_is_stored_as_committed(executed_01):
    """Issue 23 item 5: "Run All" twice (counts from 13 on) in a kernel named "Python 3" with its own Python
    version: the stored form is still the committed file (before: the kept cells' counts and display_name)."""
    saved = as_jupyterlab_saves(executed_01, first_count=13, display_name="Python 3")
    assert _clean(saved) == NOTEBOOKS[0].read_text(encoding="utf-8")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_what_jupyterlab_writes_on_save_is_stored_as_committed(path):
    """Every notebook, saved by JupyterLab after a "Run All" that did not start at 1 (counts, language_info,
    display_name, widget state, JupyterLab's indent and trailing newline), goes back to its committed text."""
    text = path.read_text(encoding="utf-8")
    for first, name in ((1, "Python 3 (ipykernel)"), (40, "Python 3"), (7, "dnlib (.venv)")):
        saved = as_jupyterlab_saves(json.loads(text), first_count=first, display_name=name)
        assert _clean(saved) == text, f"saved with counts from {first}, kernel {name!r}"


def test_kept_cells_are_numbered_by_their_place_among_the_code_cells():
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "x", "language": "python"}})
    kept = {"tags": ["keep_output", "nbval-check-output"]}
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1", execution_count=5),
                nbformat.v4.new_code_cell("2", execution_count=6, metadata=kept,
                                          outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                                          execution_count=6)])]
    stored = json.loads(_clean(nbformat.writes(nb)))
    first, second = stored["cells"][1:]
    assert first["execution_count"] is None and first["outputs"] == []
    assert second["execution_count"] == 2 and second["outputs"][0]["execution_count"] == 2
    assert stored["metadata"]["kernelspec"]["display_name"] == "Python 3 (ipykernel)"


def test_text_that_is_not_a_notebook_passes_through():
    assert _clean('{"cells": [') == '{"cells": ['


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("git") and shutil.which("make")), reason="needs git and make")
def test_make_setup_installs_the_filter_and_git_add_strips(tmp_path, saved_01):
    venv = Path(sys.executable).parent.parent
    make = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "git-filter", f"VENV={venv}"]
    plain = tmp_path / "plain"
    plain.mkdir()
    out = subprocess.run(make, cwd=plain, capture_output=True, text=True, check=True)
    assert "not a git checkout" in out.stdout
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(make, cwd=repo, capture_output=True, text=True, check=True)
    clean = subprocess.run(git + ["config", "filter.nbstripout.clean"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout
    assert "nbclean.py" in clean
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    (repo / "nb.ipynb").write_text(saved_01, encoding="utf-8")
    subprocess.run(git + ["add", ".gitattributes", "nb.ipynb"], cwd=repo, check=True)
    staged = subprocess.run(git + ["show", ":nb.ipynb"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert staged == _clean(saved_01) != saved_01
    status = subprocess.run(git + ["status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert "nb.ipynb" not in status.replace("A  nb.ipynb", "")   # the saved outputs do not show as a change


def _checkout(tmp_path: Path, name: str = "01_unified_view.ipynb") -> tuple:
    """A git checkout with the filter of ``make git-filter`` and one committed notebook; (repo, path, git)."""
    repo = tmp_path / "repo"
    (repo / "nb").mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

    def run(*args, **kw):
        return subprocess.run(git + list(args), cwd=repo, capture_output=True, text=True, check=True, **kw).stdout

    run("init", "-q")
    filt = f'"{sys.executable}" "{SCRIPT}"'
    run("config", "filter.nbstripout.clean", filt)
    run("config", "filter.nbstripout.smudge", "cat")
    for rel in (".gitattributes", ".gitignore"):  # .gitignore: .ipynb_checkpoints/ that a save makes
        shutil.copy(ROOT / rel, repo / rel)
    path = repo / "nb" / name
    shutil.copy(ROOT / "notebooks" / name, path)
    run("add", ".")
    run("commit", "-q", "-m", "stored")
    return repo, path, run


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
def test_the_save_hook_keeps_git_status_clean_after_a_save_with_outputs(tmp_path, saved_01):
    """git status takes a changed size as a change without running the filter: a notebook saved with outputs shows
    as modified although its stored form is the committed one (before the hook). After post_save (what JupyterLab
    calls on save) it does not; a real change to the lesson still shows, and nothing is staged."""
    repo, path, git = _checkout(tmp_path)
    hook = _load_script()
    path.write_text(saved_01, encoding="utf-8")
    assert git("status", "--porcelain") == " M nb/01_unified_view.ipynb\n"   # git's stat check, filter not run
    assert git("diff") == ""                                                    # the content is unchanged
    hook.post_save(model={"type": "notebook"}, os_path=str(path), contents_manager=None)
    assert git("status", "--porcelain") == ""
    assert git("status", "--porcelain") == ""   # and stays so (status recorded the new size)
    edited = json.loads(saved_01)
    edited["cells"][6]["source"] = "z = torch.tensor([[1.0, 2.0, 3.0, 7.0]])\n"
    path.write_text(as_jupyterlab_saves(edited), encoding="utf-8")
    hook.post_save(os_path=str(path))
    assert git("status", "--porcelain") == " M nb/01_unified_view.ipynb\n"   # a lesson change still shows
    assert git("diff", "--cached") == ""                                       # and is not staged


@pytest.mark.slow
def test_the_save_hook_leaves_other_files_and_places_alone(tmp_path):
    hook = _load_script()
    assert hook.forget_stat(tmp_path / "nowhere.ipynb") is False              # not a git checkout
    hook.post_save(os_path=str(tmp_path / "notes.txt"))                       # not a notebook: nothing
    hook.post_save(os_path=None)
    repo, path, git = _checkout(tmp_path)
    (repo / "nb" / "new.ipynb").write_text("{}", encoding="utf-8")
    assert hook.forget_stat(repo / "nb" / "new.ipynb") is False               # untracked
    git("update-index", "--skip-worktree", "nb/01_unified_view.ipynb")
    assert hook.forget_stat(path) is False                                    # the user's flag is kept
    assert "S nb/01_unified_view.ipynb" in git("ls-files", "-v")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Overriding existing post_save_hook")  # jupyter_server sets a configured hook twice
def test_install_save_hook_writes_one_block_that_jupyter_server_loads(tmp_path):
    """The config block make git-filter writes: idempotent, replaces its older self, keeps the user's lines, and
    a jupyter_server contents manager built from it calls post_save on save (the real save path, no browser)."""
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from traitlets.config.loader import PyFileConfigLoader

    hook = _load_script()
    config = tmp_path / "etc" / "jupyter" / "jupyter_server_config.py"
    config.parent.mkdir(parents=True)
    config.write_text("c.ServerApp.open_browser = False\n")
    assert hook.install_save_hook(tmp_path) == config
    first = config.read_text()
    hook.install_save_hook(tmp_path)
    assert config.read_text() == first and first.count(hook.HOOK_BEGIN) == 1
    assert first.startswith("c.ServerApp.open_browser = False\n")
    loaded = PyFileConfigLoader(config.name, path=str(config.parent)).load_config()
    assert loaded.ServerApp.open_browser is False
    repo, path, git = _checkout(tmp_path)
    manager = AsyncLargeFileManager(root_dir=str(repo), config=loaded)
    assert callable(manager.post_save_hook)
    import asyncio

    model = asyncio.run(manager.get("nb/01_unified_view.ipynb"))
    model["content"].cells[6].outputs = [nbformat.v4.new_output("stream", text="saved from JupyterLab\n" * 50)]
    model["content"].cells[6].execution_count = 3
    asyncio.run(manager.save(model, "nb/01_unified_view.ipynb"))
    assert "saved from JupyterLab" in path.read_text()
    assert git("status", "--porcelain") == ""
