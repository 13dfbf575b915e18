"""Silent defects of the notebook runner (dnlib.notebook.suite): a parameter that reaches the kernel as another
type than the runner validated, a run that overwrites another's folder. Each test runs tiny notebooks for real."""
import nbformat
import pytest

from dnlib.notebook import parameters, suite


def _notebook(path, code_cells, params, profiles=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["dnlib"] = {"profiles": profiles or {"smoke": {}}}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test (PAPER.md §0)"), cell]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in code_cells]
    nbformat.write(nb, str(path))
    return path


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
