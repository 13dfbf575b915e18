"""CIFAR in the torchvision ``ImageFolder`` layout (``cifar10-jpeg/{train,test}/<class>/<k>.jpg``, e.g. the lossy
JPEG copy in the shared mirror): :func:`read_imagefolder` decodes the images once with PIL (a process pool), checks
them against the data root's ``SHA256SUMS`` when it has one (hashed while decoding), and caches the uint8 arrays as
``.npy`` in :func:`~dnlib.data.root.cache_dir`. The cache is verified, not trusted (see :mod:`dnlib.data.cifar`):
a stale or corrupt one is decoded again and rewritten.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .root import (
    SUMS_NAME,
    DataWarning,
    atomic_save_npy,
    atomic_write_json,
    cache_dir,
    cache_lock,
    check_regular_file,
    open_regular,
    stat_key,
    verify_checksums,
)

__all__ = ["read_imagefolder"]


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")
_CACHE_VERSION = 2
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _decode_files(paths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Decode image files to a uint8 (n, 3, 32, 32) array, with each file's sha256; a bad file raises ValueError naming
    it."""
    from PIL import Image
    out = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    digests = []
    for i, p in enumerate(paths):
        try:
            with open_regular(p) as f:  # a FIFO swapped in after the listing is refused, not waited on
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
        try:
            digests.append(hashlib.sha256(data).hexdigest())
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise ValueError(f"cannot decode image {p}: {type(e).__name__}: {e}") from None
        if arr.shape != (32, 32, 3):
            raise ValueError(f"image {p} has shape {arr.shape}, expected 32x32 RGB")
        out[i] = arr
    return out.transpose(0, 3, 1, 2), digests


def _sort_key(name: str):
    # a file name's order in its class folder: numeric stems by number, then the others by name. Runs for 60,000
    # names per load: the stem without os.path.splitext where that gives the same (a name not starting with a dot)
    dot = name.rfind(".")
    stem = name[:dot] if dot > 0 and name[0] != "." else os.path.splitext(name)[0]
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def _imagefolder_classes(folder: Path) -> list[str]:
    classes = None
    for split in ("train", "test"):
        sdir = folder / split
        if not sdir.is_dir():
            raise ValueError(f"image-folder dataset {folder} lacks the {split}/ folder")
        # hidden folders (Jupyter's .ipynb_checkpoints, a trash) are not classes: as class 0 they shifted every id
        names = sorted(d.name for d in os.scandir(sdir) if d.is_dir() and not d.name.startswith("."))
        if classes is None:
            classes = names
        elif names != classes:
            raise ValueError(f"{folder}: train/ and test/ have different class folders: {classes} vs {names}")
    if not classes:
        raise ValueError(f"image-folder dataset {folder} has no class folders in train/")
    return classes


def _list_imagefolder(folder: Path, split: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    files, labels = [], []
    for k, c in enumerate(classes):
        entries = [e for e in os.scandir(folder / split / c) if e.name.lower().endswith(_IMAGE_EXT)]
        for e in entries:
            if not e.is_file():  # follows symlinks; a FIFO, device or folder here would block or fail the decoding
                check_regular_file(e.path)
        cf = [e.path for e in sorted(entries, key=lambda e: _sort_key(e.name))]
        if not cf:  # a class without examples would take an id and shift the ids of the classes after it
            raise ValueError(f"class folder {folder / split / c} has no images ({', '.join(_IMAGE_EXT)}); "
                             f"every class folder of an image-folder dataset needs at least one")
        files += cf
        labels += [k] * len(cf)
    return files, np.asarray(labels, dtype=np.int64)


def _decode_all(files: list[str], progress: bool, desc: str) -> tuple[np.ndarray, list[str]]:
    from tqdm.auto import tqdm
    if not files:
        return np.empty((0, 3, 32, 32), np.uint8), []
    chunk = 500
    chunks = [files[i:i + chunk] for i in range(0, len(files), chunk)]
    workers = min(len(chunks), os.cpu_count() or 1, 8)
    with tqdm(total=len(files), desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1:
            parts = []
            for c in chunks:
                parts.append(_decode_files(c))
                bar.update(len(c))
        else:
            import multiprocessing as mp
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(workers) as pool:
                parts = []
                for c, part in zip(chunks, pool.imap(_decode_files, chunks)):
                    parts.append(part)
                    bar.update(len(c))
    return np.ascontiguousarray(np.concatenate([p[0] for p in parts])), [d for p in parts for d in p[1]]


def _array_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def _load_cache(cdir: Path, fp: dict, n: tuple[int, int], labels: tuple[np.ndarray, np.ndarray]):
    """The cached arrays if the cache is current and intact; ``None`` (after a DataWarning if it is corrupt)
    otherwise."""
    mpath = cdir / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        warnings.warn(f"CIFAR cache {mpath} is unreadable ({type(e).__name__}: {e}); decoding the images again",
                      DataWarning, stacklevel=4)
        return None
    if {k: manifest.get(k) for k in fp} != fp:
        return None  # stale: the images, SHA256SUMS or the cache format changed
    expect = {"x_train": ((n[0], 3, 32, 32), "uint8"), "y_train": ((n[0],), "int64"),
              "x_test": ((n[1], 3, 32, 32), "uint8"), "y_test": ((n[1],), "int64")}
    out = []
    for a in _ARRAYS:
        path = cdir / f"{a}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
            shape, dtype = expect[a]
            if arr.shape != shape or arr.dtype != np.dtype(dtype):
                raise ValueError(f"shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
            if a.startswith("y") and not np.array_equal(arr, labels[a == "y_test"]):
                raise ValueError("labels disagree with the class folders")
            want = manifest.get("arrays", {}).get(a)
            got = _array_sha256(arr)
            if got != want:
                raise ValueError(f"sha256 {got} differs from the manifest's {want}")
        except Exception as e:  # noqa: BLE001 - np.load raises OSError, ValueError, EOFError... on a bad file
            warnings.warn(f"CIFAR cache {path} is corrupt ({type(e).__name__}: {e}); decoding the images again",
                          DataWarning, stacklevel=4)
            return None
        out.append(arr)
    return tuple(out)


def read_imagefolder(name: str, folder: Path, base: Path, use_cache: bool, progress: bool, what: str):
    """``(x_train, y_train, x_test, y_test, classes)`` of the image folder ``folder`` (under the data root ``base``),
    from the cache when it is current and intact (``use_cache``), else decoded (a tqdm bar if ``progress``) and
    checked against ``base``'s ``SHA256SUMS`` (``what`` names the data set in its errors)."""
    classes = _imagefolder_classes(folder)
    train_files, y_train = _list_imagefolder(folder, "train", classes)
    test_files, y_test = _list_imagefolder(folder, "test", classes)
    resolved = str(folder.resolve())
    fp = {"version": _CACHE_VERSION, "folder": resolved, "classes": classes,
          "counts": [len(train_files), len(test_files)],
          "files": stat_key([base / SUMS_NAME, *train_files, *test_files])}
    key = hashlib.sha1(resolved.encode()).hexdigest()[:12]
    cdir = cache_dir() / f"{name}-imagefolder-{key}" if use_cache else None
    if cdir is not None and (cdir / "manifest.json").exists():
        cached = _load_cache(cdir, fp, (len(train_files), len(test_files)), (y_train, y_test))
        if cached is not None:
            return (*cached, classes)
    # one process decodes and caches; others that need the cache meanwhile wait for it and then read it
    lock = cache_lock(cdir.parent / "locks" / f"{cdir.name}.lock") if cdir else contextlib.nullcontext(False)
    with lock as waited:
        if waited and (cdir / "manifest.json").exists():
            cached = _load_cache(cdir, fp, (len(train_files), len(test_files)), (y_train, y_test))
            if cached is not None:
                return (*cached, classes)
        x_train, d_train = _decode_all(train_files, progress, f"decoding {folder.name}/train")
        x_test, d_test = _decode_all(test_files, progress, f"decoding {folder.name}/test")
        verify_checksums(base, folder, train_files + test_files, what=what, recursive=True,
                         accept=lambda n: n.lower().endswith(_IMAGE_EXT),
                         digests=dict(zip(train_files + test_files, d_train + d_test)))
        out = (x_train, y_train, x_test, y_test)
        if cdir is not None:
            cdir.mkdir(parents=True, exist_ok=True)
            (cdir / "manifest.json").unlink(missing_ok=True)  # invalid until every array is written
            for a, arr in zip(_ARRAYS, out):
                atomic_save_npy(cdir / f"{a}.npy", arr)
            arrays = {a: _array_sha256(arr) for a, arr in zip(_ARRAYS, out)}
            atomic_write_json(cdir / "manifest.json", {**fp, "arrays": arrays}, sort_keys=True)
    return (*out, classes)
