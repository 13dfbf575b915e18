"""One process trains in a run folder at a time.

Two processes resuming one folder (two sweeps over one ``--out``, a second terminal, a notebook beside a script) each
trained it to the end and rewrote its checkpoint, curves and record in turn: twice the work, timings measured under
each other's load, and a folder whose checkpoint and record could come from different processes when one of them was
stopped between writes. A run now holds its folder with an advisory lock (``flock``) on the folder itself while it
trains; another process is refused before it builds anything (:class:`RunInUse`, one line and exit 2 from the command
line, a failed run with that line in a sweep). The operating system drops the lock when the holder ends however it
ends (``kill -9`` too), so a dead run never blocks its resume. Where ``fcntl`` is missing (Windows) nothing is locked;
a filesystem that cannot lock (some network mounts) gets a warning and no lock.

This module sits low in the package: it imports only the standard library.
"""
from __future__ import annotations

import errno
import os
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:        # Windows: no flock; runs are not guarded there
    fcntl = None

__all__ = ["RunInUse", "hold", "check_free", "held"]


class RunInUse(RuntimeError):
    """Another process (or an unfinished run object of this one) is training in the run folder."""


def _lock(run_dir: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunInUse(_in_use(run_dir)) from None
    except OSError as e:         # a filesystem without locks (some network mounts): run unguarded, and say so
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise
        warnings.warn(f"{run_dir}: this filesystem cannot lock ({e.strerror}): another run resuming this folder at "
                      f"the same time is not refused", RuntimeWarning, stacklevel=3)
        return None
    return fd


def _in_use(run_dir) -> str:
    return (f"resume: {run_dir} is in use: a run is training in it now (another process, or a run prepared in this "
            f"one and not yet run); wait until it ends (its record.json then says why it stopped) or give another "
            f"folder")


def hold(run_dir: str | os.PathLike, owner: object) -> Callable[[], None]:
    """Hold ``run_dir`` (an existing folder) for ``owner``; returns ``release()`` (idempotent), which is also called
    when ``owner`` is garbage-collected. Raises :class:`RunInUse` when it is held elsewhere."""
    fd = _lock(Path(run_dir))
    if fd is None:
        return lambda: None
    return weakref.finalize(owner, os.close, fd)


def check_free(run_dir: str | os.PathLike) -> None:
    """Raise :class:`RunInUse` when a run holds ``run_dir`` now (nothing when it is free or does not exist); holds
    nothing itself: the check a run makes before its build, so a busy folder is refused before any work."""
    if held(run_dir):
        raise RunInUse(_in_use(Path(run_dir)))


def held(run_dir: str | os.PathLike) -> bool | None:
    """Whether a run holds ``run_dir`` now: True, False (free, or no such folder), None where it cannot be known
    (no ``fcntl``, a filesystem without locks)."""
    path = Path(run_dir)
    if fcntl is None:
        return None
    if not path.is_dir():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # (no locks here: the answer is None, said by it)
        try:
            fd = _lock(path)
        except RunInUse:
            return True
        except PermissionError:   # a folder this process may not open: unknown
            return None
    if fd is None:
        return None
    os.close(fd)
    return False
