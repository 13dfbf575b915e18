"""Atomic writes: every result, table, cache and checkpoint file of dnlib is written through these helpers.

Each one writes a temporary file in the destination's folder, flushes it and ``fsync``\\ s it, then moves it into
place with :func:`os.replace` (atomic on POSIX and Windows) and ``fsync``\\ s the folder where the platform allows
it. A crash or a full disk therefore leaves either the old file or the new one, never half a file, and a failed
write leaves no temporary behind; a full disk (or quota) is an OSError whose message is "No space left on device:
<destination>". The destination's missing parent folders are created.

This module is the lowest layer of the package: it imports nothing from dnlib (and torch/numpy only inside
:func:`atomic_save` and :func:`atomic_save_npy`).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_save", "atomic_save_npy"]


def _fsync(path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:  # e.g. Windows cannot open a folder
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


_FULL = (errno.ENOSPC, errno.EDQUOT)   # a full disk or quota: "No space left on device: <destination>"


class _Sink:
    """A file's ``write`` that keeps the OSError it raised (``torch.save`` turns a failed write into its own
    "unexpected pos" RuntimeError, which does not say that the disk is full)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def _new_temporary(path: Path) -> str:
    """Create an empty ``.<name>.<random>.tmp`` beside ``path`` with the mode ``open()`` gives (0666 less the
    umask: 0644 under 022), not mkstemp's 0600; ``O_EXCL``: never another writer's file."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"{path}: could not create a temporary file beside it")


def _replace_from_temporary(path: str | os.PathLike, fill: Callable[[str], None]) -> Path:
    """``fill(tmp)`` writes a temporary file (by name) beside ``path``; fsync it, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        fill(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _FULL:     # say which file did not fit, not the temporary's name
            raise OSError(e.errno, f"{os.strerror(e.errno)}: {path}") from e
        raise
    _fsync(path.parent, directory=True)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it and ``os.replace`` it onto ``path``.

    Args:
        path: the destination (its missing parent folders are created).
        write: fills the open file object ``f``.
        binary: open the temporary file in ``"wb"`` (default) or in ``"w"`` with UTF-8.

    Returns the destination as a :class:`~pathlib.Path`. On any error the temporary file is removed and the
    destination is left as it was.
    """
    def fill(tmp: str) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
    return _replace_from_temporary(path, fill)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _path_first("atomic_write_text", path)
    return atomic_write(path, lambda f: f.write(text), binary=False)


def _path_first(fn: str, path) -> None:
    """Every writer here takes the path first: a TypeError naming the order when it did not get one."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}(path, ...): the path comes first (as in every dnlib.io writer), got "
                        f"{type(path).__name__} as path")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, allow_nan: bool = False, indent: int | None = 1,
                      sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    Args:
        path: the destination.
        obj: anything :func:`json.dumps` accepts.
        allow_nan: write non-finite floats as the bare ``NaN``/``Infinity`` tokens, which are not JSON. By
            default they raise a :class:`ValueError` naming ``path``, before anything is written.
        indent, sort_keys: as in :func:`json.dumps`.
    """
    _path_first("atomic_write_json", path)
    try:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan)
    except ValueError as e:
        raise ValueError(f"{path}: not written, a value is NaN or infinite ({e}); JSON has no NaN, record null "
                         "or a status instead") from e
    return atomic_write_text(path, text + "\n")


def atomic_save(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically (checkpoints). A full disk is an OSError saying "No space
    left on device: <path>" (not torch's "unexpected pos"), and nothing is left behind."""
    import torch
    _path_first("atomic_save", path)

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
            except Exception:
                if sink.error is not None:   # the write's own error (ENOSPC...), not torch's account of it
                    raise sink.error from None
                raise
    return _replace_from_temporary(path, fill)


def atomic_save_npy(path: str | os.PathLike, array) -> Path:
    """Write ``array`` to ``path`` as ``.npy`` (no pickles) atomically."""
    import numpy as np
    _path_first("atomic_save_npy", path)
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
