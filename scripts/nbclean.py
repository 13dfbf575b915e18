"""Strip a notebook the way the repository stores it (the git clean filter that ``make setup`` installs).

    python scripts/nbclean.py < saved.ipynb > stored.ipynb    # a filter: stdin to stdout (git's filter.nbstripout.clean)
    python scripts/nbclean.py -t NOTEBOOK                      # the stripped text on stdout (git's diff.ipynb.textconv)
    python scripts/nbclean.py NOTEBOOK [NOTEBOOK ...]          # strip files in place

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
"""
import copy
import sys

import nbformat
from nbstripout import strip_output

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


def main(argv):
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
