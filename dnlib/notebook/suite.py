"""The notebook suite's runner: ``python -m dnlib.notebook.suite run [--profile smoke|full] [-p NAME VALUE ...]
[NOTEBOOK ...]``.

Every lesson in ``notebooks/NN_topic.ipynb`` is a papermill notebook with exactly one cell tagged
``parameters``, written ``name: type = value  # help`` with literal values. This module runs them headless:

1. **Discover.** With no NOTEBOOK arguments, all ``notebooks/[0-9][0-9]_*.ipynb``, sorted.
2. **Resolve.** A profile's parameter values come from the notebook itself, from its metadata
   ``metadata.dnlib.profiles = {"smoke": {...}, "full": {...}}``, so a new notebook declares its own
   profiles; ``-p NAME VALUE`` overrides them (``-p 02:sigma 1.0`` targets one notebook by name or number prefix).
   A selected notebook that lacks the profile asked is an error (smoke excepted: its defaults are the smoke run).
3. **Validate, before anything runs** (:mod:`dnlib.notebook.parameters`). Each name must be a declared parameter
   of the notebook (``papermill.inspect_notebook``) and each value must have the declared type (``-p`` strings are
   parsed per that type: ``int``, ``float``, ``bool``, ``str``, ``list``/``dict``/``tuple`` literals). Papermill itself
   only warns about an unknown name and injects a wrong type as given; here both are errors that name the
   notebook and the parameter, and no notebook is executed.
4. **Execute** each notebook with kernel ``python3`` into a run folder of its own: every invocation makes
   ``runs/<profile>/suite-<UTC time>/`` (``--out`` names another), and each notebook gets ``<stem>/`` there
   with its executed copy ``<name>.ipynb``, ``results.json`` (its headline numbers, written by
   :func:`save_results` through ``DNLIB_RESULTS``) and ``record.json`` (a :mod:`dnlib.experiments.records` run record:
   the value of every declared parameter, ``config.set`` naming those the profile or ``-p`` set (the others are
   the notebook's defaults), git commit, versions, device, times, status). Nothing is overwritten, and the source
   notebook is never touched. Every path handed to the kernel is absolute (it runs in the notebook's folder). A
   notebook fails when a code cell never ran (a cell that raised ``SystemExit(0)``, which papermill takes for an
   early exit: :func:`~dnlib.notebook.outcome.stopped_early`) or when its cells call ``save_results`` but it
   completes without ``results.json``. The kernel gets
   ``DNLIB_RESULTS``, ``DNLIB_PROFILE``, the repository on ``PYTHONPATH``, matplotlib's inline backend and
   ``DNLIB_PROGRESS=text``: a training call's progress bar is a text bar redrawn every 10 s, echoed here as one line
   per redraw (``[03_cifar] bn-star s0: 45%|...``), and the executed copy keeps only its
   last state (stream outputs are merged, carriage returns applied). Cells run with a tqdm bar (``--no-progress``:
   neither).
5. **Limit** each cell's time (:func:`dnlib.notebook.limits.cell_limit`): 600 s on the smoke profile; on the
   others a limit derived from the notebook's training schedule; ``--cell-timeout`` sets it. A cell past it fails
   naming the cell (index and first line), how long it ran and how the limit was derived. Where the schedule is
   unknown (``steps = None`` without a ``metadata.dnlib.schedule``) no limit applies, and the suite says so: a run
   of unknown length is never cut short by a guess; ``--cell-timeout`` sets one.
6. **Report** the time per notebook and a summary (also ``summary.json`` in the invocation's folder). A failing
   cell makes the exit status 1 and the message names the notebook, the cell and the exception.

Exit status: 0 all passed, 1 a notebook failed, 2 invalid arguments or parameters (nothing ran).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import cli
from ..experiments import records
from ..io import atomic_write_json, atomic_write_text
from ..training.progress import PROGRESS_ENV
from .limits import cell_limit
from .outcome import calls_save_results, describe_failure, run_parameters, stopped_early
from .parameters import (
    NOTEBOOK_DIR,
    REPO_ROOT,
    ParameterError,
    changed_parameters,
    check_parameter_cell,
    declared_parameters,
    notebook_profiles,
    read_notebook,
    resolve_parameters,
)

RUNS_DIR = REPO_ROOT / "runs"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL_NAME = "python3"
PROFILES = ("smoke", "full")
RESULTS_ENV = "DNLIB_RESULTS"
PROFILE_ENV = "DNLIB_PROFILE"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message names the notebook and the cell."""


# --------------------------------------------------------------------------------------------- discovery
def discover(notebooks: Sequence[str | Path] | None = None, root: str | Path | None = None) -> list[Path]:
    """The notebooks to run: the given paths (a bare name or stem is looked up in ``root``), else all
    ``root/[0-9][0-9]_*.ipynb`` sorted. ``root`` defaults to the repository's ``notebooks/``."""
    root = Path(root) if root is not None else NOTEBOOK_DIR
    if not notebooks:
        return sorted(root.glob(NOTEBOOK_GLOB))
    found = []
    for item in notebooks:
        path = Path(item)
        candidates = [path, root / path, root / f"{path}.ipynb"]
        candidates += sorted(root.glob(f"{path}*.ipynb")) if not path.suffix and len(path.parts) == 1 else []
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            raise FileNotFoundError(f"no notebook {str(item)!r} (looked in {root})")
        found.append(match)
    return found


# ---------------------------------------------------------------------------------------------- results
def _notebook_path(name: str | None) -> Path | None:
    """``notebooks/<name>.ipynb`` when it exists (``name`` with or without the suffix), else None."""
    if not name:
        return None
    path = NOTEBOOK_DIR / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    return path if path.is_file() else None


def notebook_parameters(name: str | None) -> dict[str, Any]:
    """The current values of the parameters that ``notebooks/<name>.ipynb`` declares, read from the running
    IPython kernel's namespace (``{}`` outside IPython or when the notebook is not found)."""
    path = _notebook_path(name)
    if path is None:
        return {}
    try:
        from IPython import get_ipython
    except ImportError:
        return {}
    shell = get_ipython()
    if shell is None:
        return {}
    try:
        declared = declared_parameters(path)
    except Exception:  # a notebook papermill cannot read: no parameters to record
        return {}
    return {k: shell.user_ns[k] for k in declared if k in shell.user_ns}


def save_results(results: Mapping[str, Any], name: str | None = None, *,
                 parameters: Mapping[str, Any] | None = None) -> Path:
    """Write a notebook's headline numbers as JSON and return the path.

    Under ``python -m dnlib.notebook.suite`` (which sets ``$DNLIB_RESULTS``) the file goes beside the executed copy and
    the suite writes the run record. Anywhere else (JupyterLab, plain papermill, a script) every call makes a run folder
    of its own, ``runs/notebooks/<name>-<UTC time>/`` with ``results.json`` and ``record.json`` (the notebook's
    parameters, git commit, versions, device...; :mod:`dnlib.experiments.records`), so two runs never overwrite each
    other. ``parameters``: default, the values of the parameters the notebook declares, read from the kernel; the
    record's ``config.set`` names those that differ from the notebook's defaults (None when the notebook is not
    found). Tensors and arrays become lists, non-finite floats become ``null``.
    """
    env = os.environ.get(RESULTS_ENV)
    results = records.jsonable(dict(results))
    if env:
        path = Path(env)
        atomic_write_json(path, results, indent=2, sort_keys=True)
        return path
    params = dict(parameters) if parameters is not None else notebook_parameters(name)
    run_dir = records.new_run_dir(RUNS_DIR / "notebooks", name or "results")
    path = atomic_write_json(run_dir / "results.json", results, indent=2, sort_keys=True)
    now = time.time()
    nb = _notebook_path(name)         # config.set: what a user or papermill's -p set (values unlike the defaults)
    config = {"notebook": name, "profile": os.environ.get(PROFILE_ENV),
              "set": None if nb is None else changed_parameters(nb, params)}
    records.write_record(run_dir, records.make_record(
        name or "notebook", config, None, name=name, parameters=params, ended=now, stopped="completed",
        headline=results))
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results JSON written by :func:`save_results`."""
    return json.loads(Path(path).read_text())


# -------------------------------------------------------------------------------------------- execution
@dataclass
class RunRecord:
    """What happened to one notebook."""

    notebook: str
    status: str  # "ok" | "failed"
    seconds: float
    output: str
    results: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _kernel_env(results: Path, profile: str) -> dict[str, str]:
    """The kernel's environment; every path in it absolute (the kernel runs in the notebook's folder)."""
    env = {RESULTS_ENV: str(Path(results).resolve()), PROFILE_ENV: profile, "MPLBACKEND": INLINE_BACKEND,
           PROGRESS_ENV: "text"}
    pythonpath = os.environ.get("PYTHONPATH", "")
    root = str(REPO_ROOT.resolve())
    if root not in pythonpath.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, pythonpath) if p)
    return env


@contextlib.contextmanager
def kernel_environment(values: Mapping[str, str]):
    """``os.environ`` holding ``values`` inside the block, for a kernel started there (it inherits the environment
    it starts with); afterwards each of those keys is as it was before, removed where it was unset."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _ProgressEcho:
    """The kernel's stderr as papermill hands it over: each progress-bar redraw (text after a carriage return)
    becomes one line here, ``[<notebook>] <bar>``; other stderr text stays in the executed copy only."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        if "\r" not in text:
            return
        redraws = [t.strip() for t in text.split("\r")[1:] if t.strip()]
        if redraws:
            tqdm.write(f"[{self.name}] {redraws[-1]}", file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()


def _literal_translator():
    """papermill's Python translator, except that every value is injected as the literal it is. papermill's own
    writes what is not ``None``/str/bool/int/float/list/dict as a *string* (a tuple ``(3, 4)`` became ``"(3, 4)"``,
    also inside a list) and a dict's keys as strings (``{1: 'x'}`` became ``{"1": 'x'}``), after the runner had
    checked the value's type."""
    from papermill.translators import PythonTranslator

    class LiteralTranslator(PythonTranslator):
        @classmethod
        def translate(cls, val):
            if isinstance(val, tuple):
                return "(" + ", ".join(cls.translate(v) for v in val) + ("," if len(val) == 1 else "") + ")"
            if isinstance(val, (set, frozenset)):
                return "{" + ", ".join(cls.translate(v) for v in val) + "}" if val else "set()"
            if isinstance(val, (complex, bytes)):
                return repr(val)
            return super().translate(val)

        @classmethod
        def translate_dict(cls, val):
            return "{" + ", ".join(f"{cls.translate(k)}: {cls.translate(v)}" for k, v in val.items()) + "}"

    return LiteralTranslator


def execute(
    path: str | Path, output: str | Path, parameters: Mapping[str, Any], profile: str = "smoke",
    *, progress: bool = True, cell_timeout: float | None = None, stall_timeout: float | None = 30.0,
    limit_note: str | None = None,
) -> RunRecord:
    """Execute one (already validated) notebook into ``output``; never raises on a failing cell.

    ``cell_timeout`` (seconds) turns a cell that hangs into a failure that names the notebook, the cell (index and
    first line) and how long it ran (``limit_note``: how the limit was derived, for that message). ``progress``:
    papermill's bar over the cells and the kernel's progress bars echoed as lines (:class:`_ProgressEcho`).
    ``stall_timeout`` (seconds; None: off) fails a cell sooner when the kernel is idle and never answers it
    (a lost request or reply, see :mod:`dnlib.notebook.stall`); a kernel busy with the cell is never cut short by it."""
    import papermill
    from papermill.translators import papermill_translators

    from .stall import register_engine

    papermill_translators.register(KERNEL_NAME, _literal_translator())   # the kernel gets the values as validated
    # absolute: the kernel runs in the notebook's folder, where a relative results path would land (and be lost)
    path, output = Path(path).resolve(), Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    results = output.with_name("results.json")
    if results.exists():
        results.unlink()
    start, started = time.perf_counter(), time.time()
    error = None
    try:
        with kernel_environment(_kernel_env(results, profile)):
            papermill.execute_notebook(
                str(path), str(output), parameters=dict(parameters), kernel_name=KERNEL_NAME,
                progress_bar=progress, cwd=str(path.parent), execution_timeout=cell_timeout, start_timeout=120,
                engine_name=register_engine(), stall_timeout=stall_timeout, notebook_name=path.name,
                coalesce_streams=True, stderr_file=_ProgressEcho(path.stem) if progress else None,
            )
    except Exception as exc:  # PapermillExecutionError, kernel death, ...
        limit = None if cell_timeout is None else f"{cell_timeout:.0f} s" + (f" ({limit_note})" if limit_note else "")
        error = describe_failure(path, exc, output, limit)
    seconds = time.perf_counter() - start
    if error is None:   # papermill reports success for a cell that raised SystemExit(0), the cells after it skipped
        error = stopped_early(path, output)
    if error is None and not results.exists() and calls_save_results(path):
        error = (f"{path.name}: completed but wrote no results (its cells call save_results; expected {results})")
    headline = load_results(results) if results.exists() else {}
    # every declared parameter's value; config["set"]: those the profile or -p set (the others: the defaults)
    records.write_record(output.parent, records.make_record(
        path.stem, {"notebook": path.name, "profile": profile, "set": list(parameters)}, None, name=path.stem,
        parameters=run_parameters(path, parameters),
        started=started, ended=time.time(), stopped=f"failed: {error}" if error else "completed", headline=headline))
    return RunRecord(
        notebook=path.name, status="failed" if error else "ok", seconds=round(seconds, 2), output=str(output),
        results=str(results) if results.exists() else None, parameters=dict(parameters), error=error,
    )


def _selection_errors(paths: Sequence[Path], overrides: Sequence[tuple[str, str]], out_dir) -> list[str]:
    """What is wrong with a selection before anything runs: a notebook selected twice, a given ``out_dir`` that
    already holds a notebook's run (each runs into ``<out>/<stem>/``, which nothing overwrites), a ``-p`` scope that
    matches no selected notebook."""
    errors, stems = [], {}
    for path in paths:
        stems.setdefault(path.stem, []).append(path)
    for stem, same in stems.items():
        if len(same) > 1:
            errors.append(f"{stem}: selected twice ({', '.join(map(str, same))}); each notebook runs into "
                          f"<out>/{stem}/, so run them in separate invocations")
        if out_dir is not None and (Path(out_dir) / stem).exists():
            errors.append(f"{stem}: {Path(out_dir) / stem} already holds a run, which nothing overwrites: give --out "
                          "a new folder (or remove that one)")
    for scope in sorted({k.split(":", 1)[0] for k, _ in overrides if ":" in k}):
        if not any(p.stem.startswith(Path(scope).stem) for p in paths):
            errors.append(f"-p {scope}:...: no selected notebook starts with {scope!r}")
    return errors


def run(
    notebooks: Sequence[str | Path] | None = None, profile: str = "smoke",
    overrides: Iterable[tuple[str, str]] = (), out_dir: str | Path | None = None, *, progress: bool = True,
    root: str | Path | None = None, cell_timeout: float | None | str = "default",
) -> list[RunRecord]:
    """Validate every notebook's parameters, then execute them in order; return one record per notebook.

    ``cell_timeout``: seconds per cell (``"default"``: :func:`~dnlib.notebook.limits.cell_limit` of the profile and
    each notebook's parameters; None: no limit).

    Raises :class:`ParameterError` (nothing executed) when any notebook's parameters are invalid or it lacks
    ``profile`` (:func:`~dnlib.notebook.parameters.resolve_parameters`), and
    :class:`NotebookFailed` after the whole suite ran when any cell failed (its ``records`` attribute
    holds the records).
    """
    from tqdm.auto import tqdm

    paths = discover(notebooks, root)
    if not paths:
        raise FileNotFoundError("no notebooks to run")
    overrides = list(overrides)
    known_profiles = set(PROFILES).union(*(notebook_profiles(p) for p in paths))
    if profile not in known_profiles:
        raise ParameterError(f"unknown profile {profile!r}; known: {', '.join(sorted(known_profiles))}")
    errors, plans = [], []
    for path in paths:
        try:
            check_parameter_cell(path)
            params = resolve_parameters(path, profile, overrides)
            # the cell limit before anything runs: a notebook's metadata.dnlib.schedule may be wrong
            limit = cell_limit(profile, path, params) if cell_timeout == "default" else \
                (cell_timeout, "--cell-timeout" if cell_timeout is not None else "--cell-timeout 0")
            plans.append((path, params, limit))
        except (ParameterError, ValueError) as exc:
            errors.append(str(exc))
    out_dir = Path(out_dir).resolve() if out_dir is not None else None   # the kernel is handed absolute paths
    errors += _selection_errors(paths, overrides, out_dir)
    if errors:
        raise ParameterError("\n".join(errors))

    # every invocation writes a folder of its own (runs/<profile>/suite-<UTC time>/), one sub-folder per notebook
    out_dir = out_dir if out_dir is not None else records.new_run_dir(RUNS_DIR / profile, "suite")
    done = []
    for path, params, (timeout, how) in plans:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
        tqdm.write(f"[dnlib.notebook.suite] {path.name} ({profile}: {shown})")
        if timeout is None:   # a busy cell is never ended (the stall watch still ends an idle kernel's)
            tqdm.write(f"[dnlib.notebook.suite] {path.name}: no cell time limit: a cell that hangs runs until it is "
                       f"stopped ({how}; --cell-timeout SECONDS sets one)")
        else:
            tqdm.write(f"[dnlib.notebook.suite] {path.name}: cell time limit {timeout:.0f} s ({how})")
        record = execute(path, out_dir / path.stem / path.name, params, profile, progress=progress,
                         cell_timeout=timeout, limit_note=how)
        tqdm.write(f"[dnlib.notebook.suite] {path.name}: {record.status} in {record.seconds:.1f} s")
        if record.error:
            tqdm.write(f"[dnlib.notebook.suite] {record.error}")
        done.append(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.json", json.dumps([asdict(r) for r in done], indent=2, default=str) + "\n")
    tqdm.write(f"[dnlib.notebook.suite] executed copies, results and run records in {out_dir}")
    failed = [r for r in done if r.status != "ok"]
    if failed:
        exc = NotebookFailed("\n".join(r.error for r in failed))
        exc.records = done
        raise exc
    return done


def format_summary(records: Sequence[RunRecord]) -> str:
    """A small fixed-width table: notebook, status, seconds; then the total."""
    width = max([len(r.notebook) for r in records] + [8])
    lines = [f"{'notebook':<{width}}  status  seconds"]
    lines += [f"{r.notebook:<{width}}  {r.status:<6}  {r.seconds:7.1f}" for r in records]
    lines.append(f"{'total':<{width}}  {'':<6}  {sum(r.seconds for r in records):7.1f}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- CLI
def _list(paths: Sequence[Path]) -> None:
    for path in paths:
        print(path.name)
        for name, info in declared_parameters(path).items():
            print(f"  {name}: {info['inferred_type_name']} = {info['default']}  # {info['help']}")
        for profile, values in notebook_profiles(path).items():
            print(f"  profile {profile}: {values or 'defaults'}")


def _take_parameters(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(argv without them, the pairs)``: each ``-p NAME VALUE`` / ``--parameter NAME VALUE`` of a ``run`` command
    line, VALUE taken as it is (argparse reads a VALUE such as ``-inf``, ``-1e-3`` or ``-nan`` as an option and
    answers "expected 2 arguments"). A ``-p`` short of two words, or whose NAME starts with ``-``, and anything after
    ``--`` are left to argparse."""
    if not argv or argv[0] != "run":
        return argv, []
    rest, pairs, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--":
            rest += argv[i:]
            break
        if argv[i] in ("-p", "--parameter") and i + 2 < len(argv) and not argv[i + 1].startswith("-"):
            pairs.append((argv[i + 1], argv[i + 2]))
            i += 3
            continue
        rest.append(argv[i])
        i += 1
    return rest, pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m dnlib.notebook.suite",
                                description="Run the dnlib notebook suite headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run",
                           help="validate parameters, then execute notebooks into runs/<profile>/suite-<UTC time>/")
    run_p.add_argument("notebooks", nargs="*", help="notebook paths or names (default: notebooks/[0-9][0-9]_*.ipynb)")
    run_p.add_argument("--profile", default="smoke",
                       help="parameter profile from each notebook's metadata (default: smoke)")
    run_p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="override a parameter; NB:NAME targets notebooks whose name starts with NB")
    run_p.add_argument("--out", type=cli.out_dir, default=None,
                       help="output folder (default: a new runs/<profile>/suite-<UTC time>/)")
    run_p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    run_p.add_argument("--cell-timeout", type=cli.nonnegative_float, default=None,
                       help="seconds a cell may run before it fails (default: 600 for smoke; otherwise derived from "
                            "each notebook's training schedule, see dnlib.notebook.limits; 0: none)")
    list_p = sub.add_parser("list", help="show notebooks, their parameters and profiles")
    list_p.add_argument("notebooks", nargs="*")
    argv, pairs = _take_parameters(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)

    try:
        # every notebook named is found and is JSON, before anything runs
        with cli.user_errors(sub.choices[args.command]):
            for path in discover(args.notebooks):
                read_notebook(path)
        if args.command == "list":
            _list(discover(args.notebooks))
            return 0
        timeout = "default" if args.cell_timeout is None else (args.cell_timeout or None)
        records = run(args.notebooks, args.profile, pairs + [tuple(p) for p in args.parameter], args.out,
                      progress=not args.no_progress, cell_timeout=timeout)
    except (ParameterError, FileNotFoundError) as exc:  # raised by run() before it executes anything
        print(f"{parser.prog} {args.command}: error: {cli.one_line(exc)} (nothing was executed)", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print("\n" + format_summary(exc.records))
        print(f"dnlib.notebook.suite: FAILED\n{exc}", file=sys.stderr)
        return 1
    print("\n" + format_summary(records))
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("rfc3987_syntax", None)   # 1 s of start-up this command never uses (scripts/nbclean.py)
    sys.exit(main())
