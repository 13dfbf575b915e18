"""Strip a notebook the way the repository stores it (the git clean filter that ``make setup`` installs).

    python scripts/nbclean.py < saved.ipynb > stored.ipynb    # a filter: stdin to stdout (git's filter.nbstripout.clean)
    python scripts/nbclean.py -t NOTEBOOK                      # the stripped text on stdout (git's diff.ipynb.textconv)
    python scripts/nbclean.py NOTEBOOK [NOTEBOOK ...]          # strip files in place

Stored notebooks have no outputs and no execution counts, except cells tagged ``keep_output`` (nbval's reference
cells), which keep both; cell ids are kept (tests/test_notebooks_meta.py); ``language_info`` keeps only its name. ``nbstripout`` keeps every count or
none (``--keep-count``), so this calls its ``strip_output`` keeping counts and ids, then drops the counts of the
other cells. Text that is not a notebook passes through unchanged, so ``git add`` of a half-written file still works.
"""
import copy
import sys

import nbformat
from nbstripout import strip_output

#: nbstripout's default extra keys plus papermill's metadata (the list tests/test_notebooks_meta.py checks).
EXTRA_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed", "cell.metadata.ExecuteTime",
              "cell.metadata.execution", "cell.metadata.heading_collapsed", "cell.metadata.hidden",
              "cell.metadata.scrolled", "cell.metadata.papermill", "metadata.papermill"]


def clean(text: str) -> str:
    """The stored form of a notebook's JSON text (``text`` unchanged when it is not a notebook)."""
    try:
        nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    except Exception:  # not JSON / not a notebook: leave it to the tests to complain
        return text
    nb = strip_output(copy.deepcopy(nb), keep_output=False, keep_count=True, keep_id=True, extra_keys=EXTRA_KEYS)
    if "language_info" in nb.metadata:  # the kernel's version details change with every machine; keep the name
        nb.metadata.language_info = {"name": nb.metadata.language_info.get("name", "python")}
    for cell in nb.cells:
        if cell.cell_type == "code" and "keep_output" not in cell.metadata.get("tags", []):
            cell.execution_count = None
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
