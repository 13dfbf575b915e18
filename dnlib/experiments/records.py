"""Run records: every run writes a folder of its own that no other run overwrites, and that says what made it.

A run folder (``runs/<experiment>/<config>-s<seed>-<UTC time>``, made by :func:`new_run_dir`) holds

- ``record.json``: :func:`make_record`'s dict: the experiment, the full resolved config, the seed, the notebook
  parameters when any, the git commit and a dirty flag, dnlib/torch/numpy/python versions, the device and card (and
  its TF32 switches),
  start and end time, steps planned and done, why the run stopped, its headline numbers and the paper's numbers
  beside them (:data:`RECORD_KEYS`, the same keys for every experiment). A run of the runner
  (:mod:`dnlib.experiments.runner`) may be resumed by later calls: its ``started``, git state, versions, device and
  host are the first call's, ``ended`` the last write's, and it ends with ``segments`` (:data:`RUN_RECORD_KEYS`),
  one per call that trained (:func:`make_segment`: its start and end, seconds, the steps ``[from, to]``, git,
  device and host); its ``seconds`` are theirs summed;
- ``curves.csv``: one row per logged step, every logged metric (:func:`write_curves`);
- whatever else the experiment keeps there (its checkpoint).

Every file is written atomically (:mod:`dnlib.io`), so a killed run leaves the previous complete file or none,
never half of one. :func:`gather` turns any set of run folders into one list of flat rows (a table).

This module sits low in the package: it imports :mod:`dnlib.io`, :mod:`.claim` (standard library only) and,
lazily, torch (for the device name).
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text
from . import claim

__all__ = ["RECORD_FILE", "CURVES_FILE", "RECORD_KEYS", "RUN_RECORD_KEYS", "SEGMENT_KEYS", "make_segment",
           "read_json_object", "jsonable", "git_state", "versions",
           "device_info", "provenance", "utc_stamp", "run_name", "new_run_dir", "make_record", "write_record",
           "read_record", "read_records", "settled", "check_record", "RecordWarning", "write_curves", "read_curves",
           "find_runs", "gather"]

RECORD_FILE = "record.json"
CURVES_FILE = "curves.csv"
SCHEMA = 1
#: The keys of every record.json, in order (``make_record`` fills all of them; unknown values are None).
RECORD_KEYS = ("schema", "experiment", "name", "config", "seed", "parameters", "git", "versions", "device", "host",
               "started", "ended", "seconds", "steps_planned", "steps_done", "stopped", "headline", "paper",
               "argv")
#: The keys of a record.json that the runner writes: :data:`RECORD_KEYS`, then ``segments``.
RUN_RECORD_KEYS = (*RECORD_KEYS, "segments")
#: The keys of each of a record's ``segments`` (:func:`make_segment`), in order.
SEGMENT_KEYS = ("started", "ended", "seconds", "steps", "git", "device", "host")
_REPO = Path(__file__).resolve().parents[2]     # the repository (dnlib/experiments/<this>)


def jsonable(value: Any) -> Any:
    """``value`` with tensors/arrays as lists, paths and other objects as strings, non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def git_state(root: str | os.PathLike | None = None) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout dnlib runs from (None outside a git checkout).

    ``dirty`` is True when tracked files differ from the commit (untracked files are not counted)."""
    root = Path(root) if root is not None else _REPO
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions() -> dict:
    """Versions of dnlib, torch, numpy and python."""
    out = {"python": platform.python_version()}
    for name in ("dnlib", "torch", "numpy"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                out[name] = None
                continue
        out[name] = getattr(mod, "__version__", None)
    return out


def device_info(device: Any = None) -> dict:
    """``{"type": "cpu"|"cuda"|..., "name": card or processor, "threads": torch threads, "precision": the TF32
    switches as they stand}`` of ``device`` (:func:`dnlib.training.precision.switches`: ``cudnn_tf32``,
    ``matmul_tf32``, ``float32_matmul_precision``; a run's record: those it ran with)."""
    import torch

    from ..training.precision import switches
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info = {"type": dev.type, "name": None, "threads": torch.get_num_threads()}
    if dev.type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpus"] = os.cpu_count()
    info["precision"] = switches()
    return info


def provenance(device: Any = None) -> dict:
    """What made a result: git state, versions, device and host (the shared part of every record)."""
    return {"git": git_state(), "versions": versions(), "device": device_info(device), "host": platform.node()}


def utc_stamp(t: float | None = None) -> str:
    """A sortable UTC time for folder names, to the millisecond: ``20261130T062512.345Z``."""
    dt = datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc)
    return dt.strftime("%Y%m%dT%H%M%S.") + f"{dt.microsecond // 1000:03d}Z"


def _iso(t: float | str | None) -> str | None:
    """``time.time()`` as ISO 8601 UTC (to the second); a string (already one, e.g. a record's) as it is."""
    if t is None or isinstance(t, str):
        return t
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-.")
    return s or "run"


def run_name(config: str, seed: int | None = None) -> str:
    """``<config>-s<seed>`` (file-name safe), the stem of a run folder."""
    return _slug(config) + ("" if seed is None else f"-s{seed}")


def new_run_dir(base: str | os.PathLike, name: str) -> Path:
    """Create and return a new folder ``base/<name>-<UTC time>`` that no other run has (``-2``, ``-3``... when two
    runs start in the same millisecond). The folder is claimed by ``mkdir``, which is atomic: two processes never
    get the same one."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(name)}-{utc_stamp()}"
    for k in range(1, 1000):
        path = base / (stem if k == 1 else f"{stem}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"new_run_dir: could not make a new folder for {stem!r} in {base}")


def make_segment(started: float, ended: float | None, steps: Sequence[int | None],
                 prov: Mapping[str, Any]) -> dict:
    """One call's part of a resumable run (an entry of a record's ``segments``, :data:`SEGMENT_KEYS`): its start
    and end (``time.time()`` values; ``ended`` None while it runs), its seconds (to ``ended``, or to now), the steps
    it trained ``[from, to]`` and where it ran (``prov``: :func:`provenance`'s git, device and host)."""
    seconds = round((time.time() if ended is None else ended) - started, 3)
    return jsonable({"started": _iso(started), "ended": _iso(ended), "seconds": seconds, "steps": list(steps),
                     "git": prov["git"], "device": prov["device"], "host": prov["host"]})


def make_record(experiment: str, config: Mapping[str, Any], seed: int | None, *, name: str | None = None,
                parameters: Mapping[str, Any] | None = None, started: float | str | None = None,
                ended: float | None = None, steps_planned: int | None = None, steps_done: int | None = None,
                stopped: str | None = None, headline: Mapping[str, Any] | None = None,
                paper: Mapping[str, Any] | None = None, device: Any = None,
                argv: Sequence[str] | None = None, prov: Mapping[str, Any] | None = None,
                segments: Sequence[Mapping[str, Any]] | None = None) -> dict:
    """One run's record (:data:`RECORD_KEYS`, in that order; with ``segments``, :data:`RUN_RECORD_KEYS`).

    Args:
        experiment: ``"cifar"``, ``"ptb"``, ``"sr"``, a notebook's name...
        config: the full resolved configuration (a flat or nested dict).
        seed: the run's seed.
        name: the configuration's short name (default ``config["name"]`` when present).
        parameters: a notebook's parameters, when the run was a notebook.
        started, ended: ``time.time()`` values (stored as ISO 8601 UTC; ``started`` may be one already, the first
            call's of a resumed run). ``seconds`` is ``ended - started``, or with ``segments`` their seconds summed.
        steps_planned, steps_done: the schedule's length and how far the run got.
        stopped: why it stopped: ``"completed"``, ``"time limit"``, ``"diverged at step N"``, ``"interrupted"``...
        headline: the run's headline numbers; ``paper``: the paper's numbers for the same quantities.
        device: the device it ran on (its card's name is recorded).
        argv: the command line, when started from one.
        prov: :func:`provenance` computed once by a caller that rewrites its record (default: computed now).
        segments: the calls that trained a resumable run (:func:`make_segment`, oldest first; [] when none did).
    """
    prov = provenance(device) if prov is None else prov
    config = dict(config)
    rec = {
        "schema": SCHEMA, "experiment": experiment, "name": name if name is not None else config.get("name"),
        "config": config, "seed": seed, "parameters": dict(parameters) if parameters else None,
        "git": prov["git"], "versions": prov["versions"], "device": prov["device"], "host": prov["host"],
        "started": _iso(started), "ended": _iso(ended),
        "seconds": (round(sum(s["seconds"] for s in segments if _number(s.get("seconds"))), 3)
                    if segments is not None else None if started is None or ended is None or isinstance(started, str)
                    else round(ended - started, 3)),
        "steps_planned": steps_planned, "steps_done": steps_done, "stopped": stopped,
        "headline": dict(headline or {}), "paper": dict(paper or {}),
        "argv": list(argv) if argv is not None else None,
        **({"segments": [dict(s) for s in segments]} if segments is not None else {}),
    }
    return jsonable(rec)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def write_record(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``run_dir/record.json`` atomically (non-finite numbers become null)."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"record: missing keys {missing}; build it with dnlib.experiments.records.make_record")
    return atomic_write_json(Path(run_dir) / RECORD_FILE, jsonable(dict(record)), indent=1)


class RecordWarning(UserWarning):
    """A run folder skipped because its ``record.json`` is not a run record (:func:`read_records`)."""


#: The types of a record's keys (None is allowed for each but ``experiment``): what :func:`read_record` checks.
_TYPES = {"schema": int, "experiment": str, "name": str, "config": dict, "seed": int, "parameters": dict,
          "git": dict, "versions": dict, "device": dict, "host": str, "started": str, "ended": str,
          "seconds": (int, float), "steps_planned": int, "steps_done": int, "stopped": str, "headline": dict,
          "paper": dict, "argv": list, "segments": list}


def check_record(record: Any, path: str | os.PathLike = RECORD_FILE) -> dict:
    """``record`` when it is a run record, else a ValueError naming ``path``: a JSON object with an ``experiment``
    (a string) whose :data:`RECORD_KEYS` and ``segments`` present have their types (None allowed; each segment an
    object; unknown keys are kept)."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a run record (a JSON {type(record).__name__}, not an object)")
    if not isinstance(record.get("experiment"), str) or not record["experiment"]:
        raise ValueError(f"{path}: not a run record (no 'experiment' name; a file that dnlib did not write?)")
    for k, t in _TYPES.items():
        v = record.get(k)
        if v is not None and (not isinstance(v, t) or isinstance(v, bool)):
            want = " or ".join(c.__name__ for c in (t if isinstance(t, tuple) else (t,)))
            raise ValueError(f"{path}: not a run record ({k!r} is {type(v).__name__}, not {want} or null)")
    for i, seg in enumerate(record.get("segments") or ()):
        if not isinstance(seg, dict):
            raise ValueError(f"{path}: not a run record (segment {i} is {type(seg).__name__}, not an object)")
    return record


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object stored at ``path``; a ValueError names the file and says it is not ``what`` (not UTF-8 text,
    not JSON, a folder, or JSON that is not an object). A missing file raises FileNotFoundError as ``open`` does."""
    stored = _read_json(Path(path), what)
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: not {what} (a JSON {type(stored).__name__}, not an object)")
    return stored


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not {what} (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not {what} ({e})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: not {what} (a folder)") from None


def read_record(run_dir: str | os.PathLike) -> dict:
    """The ``record.json`` of a run folder (or the file itself); a clear error names a missing or broken file:
    FileNotFoundError, or ValueError for one that is not UTF-8 JSON or not a run record (:func:`check_record`)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RECORD_FILE
    try:
        stored = _read_json(path, "a valid run record")     # check_record names what is not a record
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no run record here (a run folder holds {RECORD_FILE})") from None
    return check_record(stored, path)


def read_records(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, dict]]:
    """``[(run folder, record)]`` of every run folder at or under ``paths`` (:func:`find_runs`), skipping a folder
    whose ``record.json`` is broken or foreign with a :class:`RecordWarning` that names the file and why. Each record
    as :func:`settled` reads it."""
    out = []
    for d in find_runs(paths):
        try:
            out.append((d, settled(d, read_record(d))))
        except ValueError as e:
            warnings.warn(f"skipped {e}", RecordWarning, stacklevel=2)
    return out


def settled(run_dir: str | os.PathLike, record: dict) -> dict:
    """``record`` as the tables read it: one that says ``running`` while no process holds its folder (nor, for a
    stacked copy, the group's folder above it; :mod:`dnlib.experiments.claim`) is of a run that ended without its
    last write (SIGKILL, out of memory, a machine lost): ``stopped`` reads ``ended without a final record at step
    N``. Before, gather and the reports called such a run ``running`` for ever. Unchanged where locks cannot be
    read (no ``fcntl``, a filesystem without them)."""
    if record.get("stopped") != "running":
        return record
    d = Path(run_dir)
    if d.is_file():
        d = d.parent
    for folder in (d, d.parent):
        if claim.held(folder) is not False:      # held, or unknown: as it says
            return record
    return {**record, "stopped": f"ended without a final record at step {record.get('steps_done')}"}


def write_curves(run_dir: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write the logged rows as ``run_dir/curves.csv`` atomically: one row per logged step, one column per metric
    (the union of the rows' keys, ``step`` first, then in order of first appearance; a missing value is empty,
    a non-finite one ``nan``/``inf``). Non-numeric values (e.g. a ``stopped`` note) are written as text."""
    rows = [dict(r) for r in rows]
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    if "step" in cols:
        cols.remove("step")
        cols.insert(0, "step")
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in cols})
    return atomic_write_text(Path(run_dir) / CURVES_FILE, buf.getvalue())


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return v


def read_curves(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``curves.csv`` with numbers parsed (ints as int, else float; empty cells left out)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / CURVES_FILE
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.append({k: _parse(v) for k, v in r.items() if v != ""})
    return out


def _parse(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder (one holding ``record.json``) at or under ``paths``, sorted; a missing path is an error."""
    found = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run folder")
        if (p / RECORD_FILE).is_file():
            found.add(p)
        elif p.is_file() and p.name == RECORD_FILE:
            found.add(p.parent)
        else:
            found.update(r.parent for r in p.rglob(RECORD_FILE))
    return sorted(found)


def gather(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """One flat row per run folder under ``paths``: experiment, name, seed, stopped, steps, seconds (a resumed run's:
    its calls' summed), commit, device, ``<headline key>`` and ``paper_<key>`` columns, and ``run`` (the folder). A
    folder whose record is broken or foreign is skipped with a :class:`RecordWarning` naming the file
    (:func:`read_records`)."""
    rows = []
    for d, rec in read_records(paths):
        git = rec.get("git") or {}
        row = {"run": str(d), "experiment": rec.get("experiment"), "name": rec.get("name"), "seed": rec.get("seed"),
               "stopped": rec.get("stopped"), "steps_done": rec.get("steps_done"),
               "steps_planned": rec.get("steps_planned"), "seconds": rec.get("seconds"),
               "commit": (git.get("commit") or "")[:12] + ("+dirty" if git.get("dirty") else ""),
               "device": (rec.get("device") or {}).get("name")}
        for k, v in (rec.get("headline") or {}).items():
            row[k] = v
        for k, v in (rec.get("paper") or {}).items():
            row[f"paper_{k}"] = v
        rows.append(row)
    return rows
