"""Strip a notebook the way the repository stores it (the git clean filter that ``make setup`` installs).

    # a filter: stdin to stdout (git's filter.nbstripout.clean)
    python scripts/nbclean.py < saved.ipynb > stored.ipynb
    python scripts/nbclean.py -t NOTEBOOK                      # the stripped text on stdout (git's diff.ipynb.textconv)
    python scripts/nbclean.py NOTEBOOK [NOTEBOOK ...]          # strip files in place
    python scripts/nbclean.py --install-save-hook [PREFIX]     # JupyterLab's save hook (make git-filter runs it)

Stored notebooks have no outputs and no execution counts, except cells tagged ``keep_output`` (nbval's reference
cells), which keep their outputs and the count a fresh "Run All" gives them (their place among the code cells, 1 for
the first); cell ids are kept (tests/test_notebooks_meta.py). ``nbstripout`` keeps every count or none
(``--keep-count``), so this calls its ``strip_output`` keeping counts and ids, then drops or renumbers the counts.

What JupyterLab writes on save that depends on the session, not the lesson, is normalized too, so that opening,
running and saving a notebook leaves ``git status`` clean (tests/test_nbclean.py, tests/test_browser.py): the kept
cells' counts (a second "Run All" numbers them from where the kernel was), ``language_info`` (the kernel's Python
version; only its name is kept) and the ``python3`` kernel's ``display_name`` (each installation names it its own way;
stored as :data:`PYTHON3_DISPLAY_NAME`, what ``ipykernel install`` names it). Text that is not a notebook passes
through unchanged, so ``git add`` of a half-written file still works.

The filter alone is not enough: ``git status`` takes a file whose size differs from the one its index entry records as
modified without running the filter (git's stat check), and a notebook saved with outputs is larger. So ``make setup``
also installs a JupyterLab save hook (:func:`post_save`, written into the environment's
``etc/jupyter/jupyter_server_config.py`` by :func:`install_save_hook`): after JupyterLab saves a tracked notebook,
the hook clears the size and time its index entry records (:func:`forget_stat`; the staged content is untouched), so
the next ``git status`` compares the notebook's stored form with the index instead, and says "modified" only when the
lesson itself changed.
"""
import copy
import subprocess
import sys
from pathlib import Path

# nbformat imports jsonschema, whose format checkers import rfc3987_syntax when it is installed (jupyter-events
# installs it): it builds a Lark grammar on import, 1.0 s of this filter's 1.3 s per notebook (`python -X importtime`),
# paid by git for every notebook it cleans or diffs. The notebook schema checks no IRI, so the filter goes without
# (run as a command only: JupyterLab's save hook loads this file into the server, whose modules are its own).
if __name__ == "__main__":
    sys.modules.setdefault("rfc3987_syntax", None)
import nbformat  # noqa: E402
from nbstripout import strip_output  # noqa: E402

#: nbstripout's default extra keys plus papermill's metadata (the list tests/test_notebooks_meta.py checks).
EXTRA_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed", "cell.metadata.ExecuteTime",
              "cell.metadata.execution", "cell.metadata.heading_collapsed", "cell.metadata.hidden",
              "cell.metadata.scrolled", "cell.metadata.papermill", "metadata.papermill"]
#: The stored ``display_name`` of the ``python3`` kernel (``python -m ipykernel install``'s, which ``make setup`` runs).
PYTHON3_DISPLAY_NAME = "Python 3 (ipykernel)"


def clean(text: str) -> str:
    """The stored form of a notebook's JSON text (``text`` unchanged when it is not a notebook)."""
    try:
        nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    except Exception:  # not JSON / not a notebook: leave it to the tests to complain
        return text
    nb = strip_output(copy.deepcopy(nb), keep_output=False, keep_count=True, keep_id=True, extra_keys=EXTRA_KEYS)
    if "language_info" in nb.metadata:  # the kernel's version details change with every machine; keep the name
        nb.metadata.language_info = {"name": nb.metadata.language_info.get("name", "python")}
    kernelspec = nb.metadata.get("kernelspec")
    if kernelspec is not None and kernelspec.get("name") == "python3":
        kernelspec.display_name = PYTHON3_DISPLAY_NAME
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for count, cell in enumerate(code, 1):
        kept = "keep_output" in cell.metadata.get("tags", [])
        cell.execution_count = count if kept else None
        for output in cell.outputs if kept else ():
            if output.get("output_type") == "execute_result":
                output.execution_count = count
    out = nbformat.writes(nb, version=nbformat.NO_CONVERT)
    return out if out.endswith("\n") else out + "\n"


def forget_stat(path) -> bool:
    """Clear the size and time that git's index records for ``path`` (a tracked file), keeping its staged content:
    the next ``git status`` then compares the file's content, through the clean filter, with the index (and records
    the new size and time when they match) instead of taking a changed size as a change. Returns True when an entry
    was cleared; False outside a git checkout, for an untracked or conflicted file, or one marked skip-worktree or
    assume-unchanged (``git ls-files -v`` tag other than ``H``). Never raises for git's failures."""
    path = Path(path)

    def git(*args, stdin=None):
        return subprocess.run(["git", *args], cwd=path.parent, input=stdin, capture_output=True, text=True, timeout=30)

    try:
        entry = git("ls-files", "-z", "--stage", "-v", "--full-name", "--", path.name)
    except (OSError, subprocess.SubprocessError):
        return False
    records = [r for r in entry.stdout.split("\0") if r] if entry.returncode == 0 else []
    if len(records) != 1 or not records[0].startswith("H "):
        return False
    info, full_name = records[0][2:].split("\t", 1)  # the path from the top of the checkout, as --index-info wants
    mode, blob, stage = info.split()
    if stage != "0":
        return False
    try:
        return git("update-index", "-z", "--index-info", stdin=f"{mode} {blob}\t{full_name}\0").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def post_save(model=None, os_path=None, contents_manager=None, **_):
    """jupyter_server's ``post_save_hook``: :func:`forget_stat` for a saved notebook. A failure is logged, never
    raised (a save must not fail because of git)."""
    if not os_path or not str(os_path).endswith(".ipynb"):
        return
    try:
        forget_stat(os_path)
    except Exception as exc:  # noqa: BLE001 - the save already happened; report and go on
        log = getattr(contents_manager, "log", None)
        if log is not None:
            log.warning("scripts/nbclean.py save hook: %s", exc)


HOOK_CONFIG = Path("etc", "jupyter", "jupyter_server_config.py")
HOOK_BEGIN, HOOK_END = "# >>> dnlib notebook save hook (make git-filter)", "# <<< dnlib notebook save hook"


def install_save_hook(prefix=None) -> Path:
    """Write the block that makes JupyterLab (jupyter_server) call :func:`post_save` of this file after each save into
    ``PREFIX/etc/jupyter/jupyter_server_config.py`` (``PREFIX``: this Python's ``sys.prefix``, the environment
    ``make setup`` builds); an earlier block is replaced, other lines are kept. A missing script (a moved checkout)
    leaves the server without the hook, not broken. Returns the config path."""
    path = Path(prefix if prefix is not None else sys.prefix) / HOOK_CONFIG
    script = Path(__file__).resolve()
    block = "\n".join([
        HOOK_BEGIN,
        "# After a notebook is saved, git status compares its stored form (scripts/nbclean.py) instead of its size.",
        "def _dnlib_nbclean_post_save(script=" + repr(str(script)) + "):",
        "    import importlib.util, os",
        "    if not os.path.exists(script):",
        "        return None",
        "    spec = importlib.util.spec_from_file_location('dnlib_nbclean', script)",
        "    module = importlib.util.module_from_spec(spec)",
        "    spec.loader.exec_module(module)",
        "    return module.post_save",
        "",
        "",
        "c.ContentsManager.post_save_hook = _dnlib_nbclean_post_save()",
        HOOK_END, ""])
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if HOOK_BEGIN in text and HOOK_END in text:
        head, rest = text.split(HOOK_BEGIN, 1)
        text = head + rest.split(HOOK_END, 1)[1].lstrip("\n")
    new = text + ("" if not text or text.endswith("\n") else "\n") + block
    if new != (path.read_text(encoding="utf-8") if path.exists() else None):
        from dnlib.io import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, new)
    return path


def main(argv):
    if argv and argv[0] == "--install-save-hook":
        print(f"JupyterLab save hook: {install_save_hook(argv[1] if len(argv) > 1 else None)}")
        return 0
    if not argv:
        sys.stdout.buffer.write(clean(sys.stdin.buffer.read().decode("utf-8")).encode("utf-8"))
        return 0
    if argv[0] == "-t":
        for path in argv[1:]:
            with open(path, encoding="utf-8") as f:
                sys.stdout.buffer.write(clean(f.read()).encode("utf-8"))
        return 0
    from dnlib.io import atomic_write_text

    for path in argv:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        stored = clean(text)
        if stored != text:
            atomic_write_text(path, stored)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
