"""A tiny notebook for the suite's tests (tests/test_suite.py, tests/test_suite_records.py): a Markdown title, a
``parameters`` cell and code cells, with the suite's metadata (``metadata.dnlib``: profiles, and the parameter
``rules`` or training ``schedule`` when given)."""
import nbformat


def write_notebook(path, code_cells, params, profiles=None, rules=None, schedule=None):
    """Write the notebook to ``path`` and return ``path``; ``profiles`` default to ``{"smoke": {}}``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["dnlib"] = {"profiles": profiles or {"smoke": {}}}
    if rules is not None:
        nb.metadata["dnlib"]["parameters"] = rules
    if schedule is not None:
        nb.metadata["dnlib"]["schedule"] = schedule
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test (PAPER.md §0)"), cell]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in code_cells]
    nbformat.write(nb, str(path))
    return path
