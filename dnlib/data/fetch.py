"""How a dataset missing from the data root arrives: :class:`DatasetSource` (where a dataset's folder may be, its
official archive and checksum), :func:`find_or_fetch` (the folder in the data root, else the archive there, else a
download), :func:`download_url` (streamed to a temporary file beside the target with a tqdm bar, verified against
the publisher's md5, then moved into place with :func:`os.replace`) and :func:`extract_archive` (unpacked into a
temporary folder, then moved into place). An interrupted or corrupt transfer never leaves a file or folder that a
later run would trust. Where the data root is and how its files are checked: :mod:`dnlib.data.root`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .root import (
    DATA_ENV,
    DatasetNotFoundError,
    DownloadError,
    SourceUnreachableError,
    check_regular_file,
    data_root,
    hash_file,
)

__all__ = ["DatasetSource", "find_or_fetch", "download_url", "extract_archive"]

_CHUNK = 1 << 20   # bytes per read of a download

def _check_digest(path: Path, md5: str | None, sha256: str | None) -> None:
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want is not None:
            got = hash_file(path, algo)
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

    Members are unpacked, with tarfile's ``"data"`` filter (no absolute paths, no ``..``, no links
    out of the folder, no device files), into a temporary folder inside ``dest_dir``; only when the
    whole archive has been read are its entries moved into place. An existing folder of the same
    name is kept: the archive's entries are merged into it and nothing already there is deleted; if
    a file there differs from the archive's copy, :class:`DownloadError` names it and nothing is
    changed. A truncated or corrupt archive raises :class:`DownloadError` naming the archive and
    leaves nothing behind. A Python without the filters (before 3.10.12 / 3.11.4) is refused rather
    than unpacking unfiltered. Returns the paths of the top-level entries.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not hasattr(tarfile, "data_filter"):
        raise DownloadError(
            f"cannot unpack {archive} safely: this Python ({sys.version.split()[0]}) lacks tarfile's extraction "
            f"filters (added in 3.10.12 and 3.11.4), and an unfiltered extractall can write outside the target "
            f"folder; upgrade Python, or unpack the archive yourself into {dest_dir}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise DownloadError(f"archive {archive} is truncated or corrupt ({type(e).__name__}: {e}); "
                                f"delete it and fetch it again") from e
        conflicts: list[str] = []
        _merge_plan(tmp, dest_dir, conflicts)
        if conflicts:
            shown = "\n  ".join(conflicts[:10]) \
                + (f"\n  ... and {len(conflicts) - 10} more" if len(conflicts) > 10 else "")
            raise DownloadError(
                f"unpacking {archive} into {dest_dir} would overwrite files that differ from the archive's:\n  "
                f"{shown}\nNothing was changed; move them away (or delete them) and try again")
        moved = []
        for entry in sorted(tmp.iterdir()):
            _merge_move(entry, dest_dir / entry.name)
            moved.append(dest_dir / entry.name)
        return moved
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and hash_file(a, "sha256") == hash_file(b, "sha256")


def _merge_plan(src: Path, dst: Path, conflicts: list[str]) -> None:
    """Collect the paths under ``dst`` that moving ``src``'s tree in would overwrite with different content."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if not (target.exists() or target.is_symlink()):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if target.is_dir() and not target.is_symlink():
                _merge_plan(entry, target, conflicts)
            else:
                conflicts.append(f"{target} (a file where the archive has a folder)")
        elif target.is_dir() or target.is_symlink() or not _same_file(entry, target):
            conflicts.append(str(target))


def _merge_move(entry: Path, target: Path) -> None:
    """Move ``entry`` to ``target``; into an existing folder, move only what is not there yet (nothing is deleted)."""
    if not (target.exists() or target.is_symlink()):
        os.replace(entry, target)
    elif entry.is_dir() and not entry.is_symlink():
        for child in sorted(entry.iterdir()):
            _merge_move(child, target / child.name)


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset may be found in the data root and where its official archive lives.

    ``folders`` are candidate paths relative to the data root, tried in order; ``check`` names
    files that must exist inside a folder for it to count. ``url``/``md5`` describe the official
    archive (``None`` when there is no official archive with a published checksum); ``archive``
    is its file name in the data root, and unpacking it must create one of ``folders`` (:func:`find_or_fetch`
    looks in each again afterwards, else raises :class:`DownloadError`).
    """

    name: str
    folders: tuple[str, ...]
    check: tuple[str, ...] = ()
    url: str | None = None
    md5: str | None = None
    archive: str | None = None
    note: str = ""

    def found_in(self, root: Path) -> Path | None:
        for folder in self.folders:
            path = root / folder
            # lexists: a dangling symlink counts, so that the loader names it rather than "not found"
            if path.is_dir() and all(os.path.lexists(path / c) for c in self.check):
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
        if os.path.lexists(archive):
            check_regular_file(archive)  # a FIFO or folder named like the archive is refused, naming it
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
            f"Data root: {base} (from root=, else the {DATA_ENV} environment variable, else ../shared/data "
            f"beside the clone, else data/ in the clone). {how}" + (f" {source.note}" if source.note else ""))
