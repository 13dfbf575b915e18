"""Where datasets live, how missing ones are fetched, and where decoded caches go.

One data root serves every dataset: the ``root=`` argument if given, else the ``DNLIB_DATA``
environment variable, else ``../shared/data`` when that folder exists beside the clone, else ``data/`` in
the repository (:func:`data_root`; every entry point, i.e. the CLIs, notebooks under JupyterLab or
papermill, and pytest, goes through it). A dataset missing from the root is downloaded (:mod:`dnlib.data.fetch`)
from its official source into the root (when it has one with a published checksum):
streamed to a temporary file in the same folder with a tqdm bar, verified against the publisher's
md5, then moved into place with :func:`os.replace`; archives are unpacked into a temporary folder
and moved into place the same way. An interrupted or corrupt transfer therefore never leaves a
file or folder that a later run would trust.

Decoded caches (``.npy``) never go into the data root, which may be a shared, read-only mirror:
they go to ``DNLIB_CACHE`` if set, else ``$XDG_CACHE_HOME/dnlib``, else ``~/.cache/dnlib``. A cache is built under
:func:`cache_lock`, so processes that need it at once (a sweep's runs on a fresh machine) build it once.

Data are verified, not trusted. When the data root has a ``SHA256SUMS`` file (``sha256sum`` format,
paths relative to the root), :func:`verify_checksums` checks a dataset's files against it the first
time they are read: a changed file, a listed file that is missing and an image that is not listed all
raise :class:`ChecksumError` naming the file. The verdict is cached (``<cache>/verified/``) under a key
made of each file's path, size, ``mtime_ns`` and ``ctime_ns`` and the same of ``SHA256SUMS``, so later
loads only ``stat`` the files; rewriting a file changes its ``ctime`` (which a user cannot set back, unlike
the ``mtime``) and so the key, and the file is hashed again. Datasets with known sizes (PTB tokens and
vocabulary, the SR sets' image counts) that differ from them raise a :class:`DataWarning` when no checksum
decided.

The data root may be shared and is not trusted to hold only what it should: every file a loader opens or hashes
there is checked to be a regular file first (after resolving symlinks; :func:`open_regular`), so a FIFO, a
device or a folder in a file's place raises :class:`NotRegularFileError` naming it instead of blocking or
reading a device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_save_npy, atomic_write_json

__all__ = ["DATA_ENV", "CACHE_ENV", "SUMS_NAME", "DatasetNotFoundError", "DownloadError", "ChecksumError",
           "NotRegularFileError", "DataWarning", "SourceUnreachableError", "data_root", "cache_dir", "cache_lock",
           "hash_file", "atomic_save_npy", "read_checksums", "verify_checksums", "stat_key", "check_known_sizes",
           "check_regular_file", "open_regular"]

DATA_ENV = "DNLIB_DATA"
CACHE_ENV = "DNLIB_CACHE"
SUMS_NAME = "SHA256SUMS"
_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither in the data root nor obtainable from its official source."""


class DownloadError(RuntimeError):
    """A download or an archive failed verification; nothing was left in place."""


class SourceUnreachableError(DownloadError):
    """The official URL could not be opened (no network, server down, bad URL)."""


class ChecksumError(ValueError):
    """A data file differs from the data root's ``SHA256SUMS``, is missing from it, or is not listed in it."""


class NotRegularFileError(ValueError):
    """A path where a data file is expected is a FIFO, a device, a socket, a folder or a broken symlink."""


class DataWarning(UserWarning):
    """The data are not the standard dataset (its known sizes differ), or a fallback replaced them."""


def _repo_dir() -> Path | None:
    """The clone this package runs from (an editable install), or ``None`` for an installed package."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "dnlib").is_dir():
        return repo
    return None


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data root.

    In order: ``root`` if given; else ``$DNLIB_DATA`` if set and not empty; else ``../shared/data``
    when that folder exists beside the clone (the clone is the repository this package runs from, or
    the working directory for an installed package); else ``data/`` in the clone. The result need not
    exist yet (a download creates it). Every loader, the CLIs and the notebooks resolve the root here,
    so JupyterLab, plain papermill and plain pytest find the same data as ``make``.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    clone = _repo_dir() or Path.cwd()
    beside = clone.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    return clone / "data"


def cache_dir(create: bool = True) -> Path:
    """Return the folder for decoded caches: ``$DNLIB_CACHE``, else ``$XDG_CACHE_HOME/dnlib``, else
    ``~/.cache/dnlib``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "dnlib"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(path: Path):
    """Hold an exclusive lock on the file ``path`` (created) while one cache is built, so that processes needing the
    same cache at once build it once: the others wait here. Yields whether this process waited (then the cache may
    be there now). The lock is the kernel's (``flock``): it goes with its holder, also one killed with ``kill -9``.
    Without ``fcntl`` (not POSIX), or on a file system that refuses locks, there is no lock and each process builds
    its own copy, as before."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = True
        except OSError:  # e.g. ENOLCK: no locks here
            yield False
            return
        try:
            yield waited
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(path, mode: int | None) -> NotRegularFileError:
    kind = "a broken symlink" if mode is None else next((k for test, k in _KINDS if test(mode)), "not a plain file")
    link = ""
    if os.path.islink(path):
        link = f" (a symlink to {os.path.realpath(path)})"
    return NotRegularFileError(f"{path}{link} is {kind}, not a regular file; a data file must be a regular file "
                               f"(reading anything else can block forever or read a device): replace it with "
                               f"the dataset's file")


def check_regular_file(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a regular file after resolving symlinks; else raise :class:`NotRegularFileError` naming
    it.

    Only ``stat`` is called: nothing is opened, so a FIFO cannot block here. A missing path raises
    :class:`FileNotFoundError` as ``open`` would.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise _not_regular(path, None) from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return Path(path)


def open_regular(path: str | os.PathLike, mode: str = "rb", **kwargs):
    """``open(path, mode)`` for reading a data file, refusing anything but a regular file (:func:`check_regular_file`).

    The file is checked before it is opened, then opened without blocking (``O_NONBLOCK``) and checked again
    on the open descriptor, so a file swapped for a FIFO between the two steps cannot block either.
    ``mode`` is ``"rb"`` or ``"r"`` (``kwargs`` as :func:`open`'s, e.g. ``encoding``).
    """
    if mode not in ("r", "rb"):
        raise ValueError(f"mode must be 'r' or 'rb', got {mode!r}")
    check_regular_file(path)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def hash_file(path: str | os.PathLike, algo: str) -> str:
    """The ``algo`` (``hashlib`` name) hex digest of a regular file (:func:`open_regular`), read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def stat_key(paths: Sequence[str | os.PathLike]) -> str:
    """A cheap identity of files: sha256 over each path's name, size, ``mtime_ns`` and ``ctime_ns``, in order.

    Any write to a file changes its ``ctime`` (which, unlike the ``mtime``, cannot be set back
    without root), so a file overwritten in place, even with its ``mtime`` restored, changes the key;
    a missing path counts as missing. 60,000 files take about 0.4 s (one ``stat`` each).
    """
    rows = []
    for p in paths:
        p = os.fspath(p)
        try:
            st = os.stat(p)
            rows.append(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n")
        except FileNotFoundError:
            rows.append(f"{p}\0missing\n")
    return hashlib.sha256("".join(rows).encode("utf-8", "surrogateescape")).hexdigest()


_SUMS_CACHE: dict[str, tuple[str, dict[str, str]]] = {}


def read_checksums(base: str | os.PathLike) -> dict[str, str]:
    """``{path relative to base: sha256}`` from ``base/SHA256SUMS`` (``sha256sum`` format), or ``{}`` if absent.

    Parsed once per process and file version. A malformed line raises :class:`ChecksumError`
    naming the file and the line number.
    """
    path = Path(base) / SUMS_NAME
    if not os.path.lexists(path):
        return {}
    check_regular_file(path)  # a FIFO or folder in its place is refused, not taken as "no checksums"
    key = stat_key([path])
    hit = _SUMS_CACHE.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    sums: dict[str, str] = {}
    with open_regular(path, "r", encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            digest, sep, name = line.partition(" ")
            if len(digest) != 64 or not sep or not name or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise ChecksumError(f"{path}, line {n}: expected '<64 hex digits>  <path>', got {line[:120]!r}")
            name = name[1:] if name[:1] in (" ", "*") else name
            sums[name[2:] if name.startswith("./") else name] = digest.lower()
    _SUMS_CACHE[str(path)] = (key, sums)
    return sums


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def verify_checksums(base: str | os.PathLike, folder: str | os.PathLike, files: Sequence[str | os.PathLike], *,
                     what: str, recursive: bool = False, accept=None,
                     digests: dict[str, str] | None = None) -> int | None:
    """Check the files a loader is about to read against the data root's ``SHA256SUMS``, once.

    Args:
        base: the data root (where ``SHA256SUMS`` lives; its paths are relative to it).
        folder: the dataset's folder inside ``base``; ``SHA256SUMS`` entries under it (directly, or at
            any depth with ``recursive``) whose file name passes ``accept`` are the expected files.
        files: the files the loader will read.
        what: the dataset's name, for messages.
        digests: sha256 hex digests already computed (``{os.fspath(file): digest}``), e.g. while decoding.

    Returns the number of files checked: ``None`` when the root has no ``SHA256SUMS``, 0 when it
    lists nothing in ``folder``. Raises :class:`ChecksumError` naming every file that differs, every
    listed file that is missing and every file that is not listed, and what to do. A success is
    cached under :func:`stat_key` of ``SHA256SUMS`` and the files, so it costs one ``stat`` per file
    until one of them (or ``SHA256SUMS``) is written to.
    """
    base, folder = Path(base), Path(folder)
    sums_path = base / SUMS_NAME
    if not os.path.lexists(sums_path):
        return None
    check_regular_file(sums_path)
    files = sorted(Path(f) for f in files)
    for f in files:
        if os.path.lexists(f):
            check_regular_file(f)  # before the cached verdict: a FIFO is refused whether or not it is listed
    key = stat_key([sums_path, *files])
    name = hashlib.sha256(f"{what}\0{os.path.abspath(folder)}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
    verdict = cache_dir(create=False) / "verified" / f"{name}.json"
    try:
        stored = json.loads(verdict.read_text())
        if stored.get("key") == key:
            return int(stored["checked"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no verdict yet, or an unreadable one: verify
    sums = read_checksums(base)
    prefix = _rel(folder, base).rstrip("/") + "/"
    listed = {}
    for rel, digest in sums.items():
        if rel.startswith(prefix) and (recursive or "/" not in rel[len(prefix):]) and \
                (accept is None or accept(rel.rsplit("/", 1)[-1])):
            listed[rel] = digest
    if listed:
        have = {_rel(f, base): f for f in files}
        problems = [f"missing: {base / rel}" for rel in sorted(set(listed) - set(have))]
        problems += [f"not listed: {have[rel]}" for rel in sorted(set(have) - set(listed))]
        for rel in sorted(set(have) & set(listed)):
            got = (digests or {}).get(os.fspath(have[rel])) or hash_file(have[rel], "sha256")
            if got != listed[rel]:
                problems.append(f"changed: {have[rel]} (sha256 {got}, listed {listed[rel]})")
        if problems:
            shown = "\n  ".join(problems[:20]) \
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            raise ChecksumError(
                f"{what}: the files in {folder} do not match {sums_path}:\n  {shown}\n"
                f"Restore them from the dataset's source (see data/README.md"
                f"{' and ' + str(base / 'README.md') if (base / 'README.md').is_file() else ''}) or point "
                f"{DATA_ENV} at an intact copy; if you changed them on purpose, update their lines in {sums_path}.")
    with contextlib.suppress(OSError):      # an unwritable cache only means verifying again next time
        atomic_write_json(verdict, {"key": key, "checked": len(listed), "what": what, "folder": str(folder)},
                          sort_keys=True)
    return len(listed)


def check_known_sizes(what: str, where: str | os.PathLike, got: dict, expected: dict) -> bool:
    """Warn (:class:`DataWarning`) when a dataset's sizes differ from the standard dataset's; True if they agree.

    Used where no checksum decides (a root without ``SHA256SUMS``): e.g. PTB's token counts and
    vocabulary, the number of images of Set5. The data are still used: a custom corpus is legitimate,
    but its results are not comparable with the paper's, and the warning says so.
    """
    diff = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    if not diff:
        return True
    shown = ", ".join(f"{k} {g:,} (standard {v:,})" if isinstance(g, int) else f"{k} {g!r} (standard {v!r})"
                      for k, (g, v) in diff.items())
    warnings.warn(f"{what} in {where} is not the standard dataset: {shown}. Results on it are not comparable "
                  f"with the paper's; restore the original files (data/README.md) if this is unintended.",
                  DataWarning, stacklevel=3)
    return False
