"""Where datasets live, how missing ones are fetched, and where decoded caches go.

One data root serves every dataset: the ``root=`` argument if given, else the ``DNLIB_DATA``
environment variable, else ``data/`` in the repository. A dataset missing from the root is
downloaded from its official source into the root (when it has one with a published checksum):
streamed to a temporary file in the same folder with a tqdm bar, verified against the publisher's
md5, then moved into place with :func:`os.replace`; archives are unpacked into a temporary folder
and moved into place the same way. An interrupted or corrupt transfer therefore never leaves a
file or folder that a later run would trust.

Decoded caches (``.npy``) never go into the data root, which may be a shared, read-only mirror:
they go to ``DNLIB_CACHE`` if set, else ``$XDG_CACHE_HOME/dnlib``, else ``~/.cache/dnlib``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "DATA_ENV",
    "CACHE_ENV",
    "DatasetNotFoundError",
    "DownloadError",
    "SourceUnreachableError",
    "DatasetSource",
    "data_root",
    "cache_dir",
    "download_url",
    "extract_archive",
    "find_or_fetch",
    "atomic_save_npy",
]

DATA_ENV = "DNLIB_DATA"
CACHE_ENV = "DNLIB_CACHE"
_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither in the data root nor obtainable from its official source."""


class DownloadError(RuntimeError):
    """A download or an archive failed verification; nothing was left in place."""


class SourceUnreachableError(DownloadError):
    """The official URL could not be opened (no network, server down, bad URL)."""


def _repo_data_dir() -> Path:
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.cwd() / "data"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data root: ``root`` if given, else ``$DNLIB_DATA``, else ``data/`` in the repository.

    The folder need not exist yet (a download creates it).
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return _repo_data_dir()


def cache_dir(create: bool = True) -> Path:
    """Return the folder for decoded caches: ``$DNLIB_CACHE``, else ``$XDG_CACHE_HOME/dnlib``, else ``~/.cache/dnlib``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "dnlib"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(path: Path, md5: str | None, sha256: str | None) -> None:
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want is not None:
            got = _hash_file(path, algo)
            if got.lower() != want.lower():
                raise DownloadError(f"{algo} mismatch for {path}: expected {want}, got {got}; "
                                    f"the file is corrupt or not the official one: delete it and fetch it again")


def download_url(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its checksum.

    The bytes go to a temporary file beside ``dest``; the byte count is checked against the
    server's Content-Length (an interrupted transfer raises) and the md5/sha256 against the
    expected value, and only then is the file moved to ``dest`` with :func:`os.replace`. On any
    failure the temporary file is removed and :class:`DownloadError` names the URL and the reason.
    ``file://`` URLs work (the tests use them).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    hashers = {a: hashlib.new(a) for a, v in (("md5", md5), ("sha256", sha256)) if v is not None}
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise SourceUnreachableError(f"cannot open {url}: {e}") from e
            with resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {dest.name}", disable=not progress) as bar:
                    while True:
                        try:
                            chunk = resp.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            raise DownloadError(f"download of {url} interrupted after {received} bytes: {e}") from e
                        if not chunk:
                            break
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if total is not None and received != total:
                raise DownloadError(
                    f"download of {url} interrupted: got {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        for algo, want in (("md5", md5), ("sha256", sha256)):
            if want is not None:
                got = hashers[algo].hexdigest()
                if got.lower() != want.lower():
                    raise DownloadError(
                        f"{algo} mismatch for {url}: expected {want}, got {got}; "
                        f"the file was discarded (a corrupt or changed download)")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> list[Path]:
    """Unpack a tar archive (``.tar.gz``/``.tgz``/``.tar``) into ``dest_dir`` atomically.

    Members are unpacked into a temporary folder inside ``dest_dir``; only when the whole
    archive has been read are its top-level entries moved into place. A truncated or corrupt
    archive raises :class:`DownloadError` naming the archive and leaves nothing behind.
    Returns the paths of the top-level entries.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise DownloadError(f"archive {archive} is truncated or corrupt ({type(e).__name__}: {e}); "
                                f"delete it and fetch it again") from e
        moved = []
        for entry in sorted(tmp.iterdir()):
            target = dest_dir / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)
            moved.append(target)
        return moved
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset may be found in the data root and where its official archive lives.

    ``folders`` are candidate paths relative to the data root, tried in order; ``check`` names
    files that must exist inside a folder for it to count. ``url``/``md5`` describe the official
    archive (``None`` when there is no official archive with a published checksum); ``archive``
    is its file name in the data root, and unpacking it creates ``folders[archive_folder]``.
    """

    name: str
    folders: tuple[str, ...]
    check: tuple[str, ...] = ()
    url: str | None = None
    md5: str | None = None
    archive: str | None = None
    archive_folder: int = 0
    note: str = ""

    def found_in(self, root: Path) -> Path | None:
        for folder in self.folders:
            path = root / folder
            if path.is_dir() and all((path / c).exists() for c in self.check):
                return path
        return None


def find_or_fetch(source: DatasetSource, root: str | os.PathLike | None = None, *,
                  download: bool = True, progress: bool = True) -> Path:
    """Return the folder holding ``source`` in the data root, unpacking or downloading it if needed.

    Order: an unpacked folder; else the official archive already in the root (checksum-verified,
    then unpacked); else, when ``download`` is true and an official URL exists, a verified
    download. Otherwise raises :class:`DatasetNotFoundError` naming the dataset, every place
    looked, the official URL and the ``DNLIB_DATA`` variable.
    """
    base = data_root(root)
    found = source.found_in(base)
    if found is not None:
        return found
    reason = "download=False" if source.url else "it has no official archive to download"
    if source.archive is not None:
        archive = base / source.archive
        if archive.is_file() or (download and source.url):
            if not archive.is_file():
                try:
                    download_url(source.url, archive, md5=source.md5, progress=progress)
                except SourceUnreachableError as e:
                    raise DatasetNotFoundError(_not_found_message(source, base, f"download failed: {e}")) from e
            else:
                _check_digest(archive, source.md5, None)
            extract_archive(archive, base)
            found = source.found_in(base)
            if found is not None:
                return found
            raise DownloadError(f"archive {archive} did not contain any of {list(source.folders)}")
    raise DatasetNotFoundError(_not_found_message(source, base, reason))


def _not_found_message(source: DatasetSource, base: Path, reason: str) -> str:
    looked = [str(base / f) for f in source.folders]
    if source.archive:
        looked.append(str(base / source.archive))
    where = "\n  ".join(looked)
    if source.url:
        how = f"Official source: {source.url}" + (f" (md5 {source.md5})" if source.md5 else "") + "."
    else:
        how = "There is no official archive with a published checksum to download it from."
    return (f"dataset {source.name} not found ({reason}). Looked in:\n  {where}\n"
            f"Data root: {base} (from root=, else the {DATA_ENV} environment variable, else data/ in the "
            f"repository). {how}" + (f" {source.note}" if source.note else ""))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as ``.npy`` via a temporary file and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fingerprint_dirs(dirs: Sequence[Path]) -> list:
    """A cheap fingerprint of folders: (name, number of entries, mtime_ns) per folder."""
    out = []
    for d in dirs:
        st = d.stat()
        out.append([str(d), sum(1 for _ in os.scandir(d)), st.st_mtime_ns])
    return out
