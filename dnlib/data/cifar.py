"""CIFAR-10 / CIFAR-100: readers, the paper's preprocessing, splits and subsets (PAPER.md §3.1).

Two on-disk formats are read:

* the official python pickles (``cifar-10-batches-py/``, ``cifar-100-python/``, fine labels), the
  exact data; downloaded from the official URL when missing. A pickle can run code when it is loaded, so each
  file is read once into memory, its md5 and sha256 are checked against the official files' digests
  (:data:`CIFAR_FILE_DIGESTS`) and only those bytes are unpickled, with a restricted unpickler that builds
  nothing but what the format holds (dicts, lists, strings, numbers, numpy arrays); ``verify=False`` skips
  the digests (for a legitimate copy in the official format) but never the restricted unpickler;
* the torchvision ``ImageFolder`` layout (``cifar10-jpeg/{train,test}/<class>/<k>.jpg``), e.g. the
  lossy JPEG copy in the shared mirror. Decoded once with PIL (a process pool) and cached as uint8
  ``.npy`` in :func:`~dnlib.data.root.cache_dir`, so later loads take about a second.

The image-folder cache is verified, not trusted. Its manifest records a :func:`~dnlib.data.root.stat_key`
of every image file and of the root's ``SHA256SUMS`` (path, size, ``mtime_ns``, ``ctime_ns``: one
``stat`` per file, ~0.4 s for 60,000, where hashing the JPEGs on every load would read 60,000 files),
and the shape, dtype and sha256 of each cached array (hashing the 180 MB of arrays costs ~0.1 s, far
less than the decode it saves, and catches any change to them, which their ``stat`` would not).
A changed image file (even overwritten in place with its ``mtime`` restored: its ``ctime`` changes),
an added or removed one, or a changed ``SHA256SUMS`` makes the cache stale; an unreadable cache, wrong
shapes, labels that disagree with the class folders or a hash mismatch make it corrupt (a
:class:`~dnlib.data.root.DataWarning` names the file). Either way the images are decoded again, checked
against ``SHA256SUMS`` when the root has one (the hashes are taken while decoding), and the cache is
rewritten.

The paper's preprocessing is raw 0-255 RGB minus a per-pixel, per-channel mean image; the authors'
code takes that mean over train+test (``mean_over="train+test"``), the default here is the
training images only. The validation split is the authors': ``RandomState(0)`` shuffle of the 50,000
training indices, 10 folds, fold 0 held out (5,000 images).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .root import (
    SUMS_NAME,
    ChecksumError,
    DatasetNotFoundError,
    DatasetSource,
    DataWarning,
    atomic_save_npy,
    atomic_write_json,
    cache_dir,
    check_regular_file,
    data_root,
    find_or_fetch,
    open_regular,
    stat_key,
    verify_checksums,
)

__all__ = ["CIFAR", "load_cifar", "validation_split", "stratified_subset", "mean_image", "CIFAR_SOURCES",
           "CIFAR_FILE_DIGESTS"]

_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_SOURCES = ("auto", "python", "imagefolder")
_MEAN_OVER = ("train", "train+test")

CIFAR_SOURCES = {
    "cifar10": DatasetSource(
        name="CIFAR-10 (official python version)",
        folders=("cifar-10-batches-py",),
        check=("data_batch_1", "test_batch", "batches.meta"),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": DatasetSource(
        name="CIFAR-100 (official python version)",
        folders=("cifar-100-python",),
        check=("train", "test", "meta"),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive="cifar-100-python.tar.gz",
    ),
}
#: ``{dataset: {file: (md5, sha256)}}`` of the files in the official python archives (cifar-10-python.tar.gz,
#: md5 c58f30108f718f92721af3b95e74349a; cifar-100-python.tar.gz, md5 eb9058c3a382ffc7106e4002c42a8d85).
#: The md5s are torchvision's (``torchvision/datasets/cifar.py``: ``train_list``, ``test_list``, ``meta``);
#: the publisher lists none per file. The sha256s are not published by the CIFAR authors either: they are the
#: values that several independent public projects pinned for these files and that agree with each other
#: (CIFAR-10: four, one of them beside the same md5s; CIFAR-100: three). ``load_cifar(verify=True)`` requires
#: both digests to match before a file is unpickled. ``readme.html`` is listed for completeness; it is not read.
CIFAR_FILE_DIGESTS = {
    "cifar10": {
        "data_batch_1": ("c99cafc152244af753f735de768cd75f",
                         "54636561a3ce25bd3e19253c6b0d8538147b0ae398331ac4a2d86c6d987368cd"),
        "data_batch_2": ("d4bba439e000b95fd0a9bffe97cbabec",
                         "766b2cef9fbc745cf056b3152224f7cf77163b330ea9a15f9392beb8b89bc5a8"),
        "data_batch_3": ("54ebc095f3ab1f0389bbae665268c751",
                         "0f00d98ebfb30b3ec0ad19f9756dc2630b89003e10525f5e148445e82aa6a1f9"),
        "data_batch_4": ("634d18415352ddfa80567beed471001a",
                         "3f7bb240661948b8f4d53e36ec720d8306f5668bd0071dcb4e6c947f78e9682b"),
        "data_batch_5": ("482c414d41f54cd18b22e5b47cb7c3cb",
                         "d91802434d8376bbaeeadf58a737e3a1b12ac839077e931237e0dcd43adcb154"),
        "test_batch": ("40351d587109b95175f43aff81a1287e",
                       "f53d8d457504f7cff4ea9e021afcf0e0ad8e24a91f3fc42091b8adef61157831"),
        "batches.meta": ("5ff9c542aee3614f3951f8cda6e48888",
                         "f962466ef690d46b226450fb9aadc74ba4bc64a76aa526b5827fe4bc5c7125cb"),
        "readme.html": (None, "4d1c3fb199d6a183ae03f5162b469d7bc04edf2fad9547bd5f224271d52f98e5"),
    },
    "cifar100": {
        "train": ("16019d7e3df5f24257cddd939b257f8d",
                  "735e79b04f092ca3d2e6d07f368c0a7d70d48c48d28865950cc24454cf45129b"),
        "test": ("f0ef6b0ae62326f3e7ffdfab6717acfc",
                 "4b67687d9933c4db8f0831104447f15b93774f4f464bd0516f0f0f2ac83b7864"),
        "meta": ("7973b15100ade9c7d40fb424638fde48",
                 "a5d4786345c961390f865e93b434dbd5c6904ce880667e0cb888c97d449f28b9"),
    },
}
_IMAGEFOLDER = {"cifar10": ("cifar10-jpeg", "cifar10"), "cifar100": ("cifar100-jpeg", "cifar100")}
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")
_CACHE_VERSION = 2
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_PYTHON_FILES = {"cifar10": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                             "test_batch", "batches.meta"),
                 "cifar100": ("train", "test", "meta")}


@dataclass
class CIFAR:
    """A loaded CIFAR dataset: uint8 images ``(N, 3, 32, 32)``, int64 labels, and provenance.

    ``x_val``/``y_val`` hold the 5,000-image validation fold when loaded with ``validation=True``
    (``x_train`` is then the other 45,000), else ``None``. ``mean`` is the float32 ``(3, 32, 32)``
    mean image chosen by ``mean_over``; :meth:`loader` subtracts it.
    ``source`` is ``"python"`` (official pickles, exact) or ``"imagefolder"`` (e.g. the JPEG copy).
    ``verified`` is False for pickles loaded with ``verify=False`` (not checked against the official digests).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str
    path: Path
    mean: np.ndarray
    mean_over: str = "train"
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    verified: bool = True
    load_seconds: float = field(default=0.0, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def description(self) -> str:
        """E.g. ``"CIFAR-10 (JPEG copy)"`` or ``"CIFAR-10 (official)"``: say this next to results."""
        if self.source == "python" and not self.verified:
            return f"{_PRETTY[self.name]} (official format, not verified)"
        kind = "official" if self.source == "python" else (
            "JPEG copy" if "jpeg" in self.path.name.lower() else "image folder")
        return f"{_PRETTY[self.name]} ({kind})"

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if split == "val" and self.x_val is None:
            raise ValueError("split='val' needs load_cifar(..., validation=True)")
        table = {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                 "test": (self.x_test, self.y_test)}
        if split not in table:
            raise ValueError(f"split must be one of {list(table)}, got {split!r}")
        return table[split]

    def loader(self, split: str = "train", batch_size: int = 100, *, device=None, seed: int = 0,
               shuffle: bool | None = None, drop_last: bool | None = None):
        """A :class:`~dnlib.data.loader.GPULoader` over ``split`` with the mean image subtracted.

        Defaults: training split shuffled with ``drop_last=True``; other splits in order, keeping
        the last partial batch.
        """
        from .loader import GPULoader
        x, y = self.split(split)
        train = split == "train"
        return GPULoader(x, y, batch_size, mean=self.mean, seed=seed, device=device,
                         shuffle=train if shuffle is None else shuffle,
                         drop_last=train if drop_last is None else drop_last)


def _check_name(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _PRETTY:
        raise ValueError(f"name must be one of 'cifar10', 'cifar100', got {name!r}")
    return key


class _Refused(pickle.UnpicklingError):
    pass


def _checked_reconstruct(subtype, *args):
    if subtype is not np.ndarray:
        raise _Refused(f"an array of type {subtype!r} (only numpy.ndarray is allowed)")
    return _RECONSTRUCT(subtype, *args)


def _checked_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise _Refused(f"the dtype {dt} (it holds Python objects)")
    return dt


def _checked_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused(f"a numpy scalar of dtype {dtype!r}")
    return _SCALAR(dtype, *args)


def _latin1_bytes(text, encoding):
    # how Python 3 writes bytes at pickle protocol 2: _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {type(text).__name__}, {encoding!r} (only str, 'latin1')")
    return text.encode("latin1")


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's multiarray._reconstruct, wherever this numpy keeps it
_SCALAR = np.float64(0).__reduce__()[0]     # numpy's multiarray.scalar
#: The only globals a CIFAR pickle may name: what numpy arrays (and, in copies re-pickled by Python 3 at
#: protocol 2, bytes and numpy scalars) are rebuilt from. Every one is a checked wrapper.
_ALLOWED_GLOBALS = {
    **{(m, "_reconstruct"): _checked_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _checked_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _CIFARUnpickler(pickle.Unpickler):
    """Unpickles only the official CIFAR format: dicts, lists, tuples, strings, bytes, numbers, numpy arrays.

    Containers, strings and numbers need no globals; :meth:`find_class` resolves only the numpy array
    reconstruction names in :data:`_ALLOWED_GLOBALS` and refuses every other global (``os.system``, ``open``,
    ``builtins.eval``, any class), so a crafted file cannot run code or build arbitrary objects.
    """

    def find_class(self, module, name):
        fn = _ALLOWED_GLOBALS.get((module, name))
        if fn is None:
            raise _Refused(f"the global {module}.{name}")
        return fn


def _walk_plain(obj, depth: int = 0) -> None:
    """Refuse object arrays (numpy's own checks aside) anywhere in a loaded CIFAR dict."""
    if depth > 8:
        raise _Refused("containers nested deeper than the format's")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise _Refused(f"an array of dtype {obj.dtype} (it holds Python objects)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk_plain(k, depth + 1)
            _walk_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple)) and obj and not all(type(v) is int for v in obj):  # labels: skip them fast
        for v in obj:
            _walk_plain(v, depth + 1)


def _unpickle(raw: bytes, path: Path) -> dict:
    """Unpickle the bytes of CIFAR file ``path`` with :class:`_CIFARUnpickler` into a dict with str keys."""
    try:
        d = _CIFARUnpickler(io.BytesIO(raw), encoding="latin1").load()
        _walk_plain(d)
    except _Refused as e:
        raise ValueError(f"refused to unpickle {path}: it asks for {e}, which the CIFAR python format does not "
                         f"hold (only dicts, lists, strings, numbers and numpy arrays). It is not an official CIFAR "
                         f"file and may be crafted to run code: nothing of it was run; delete it") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means a corrupt file
        raise ValueError(f"cannot read CIFAR pickle {path}: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR pickle {path} holds a {type(d).__name__}, expected a dict")
    # official files (Python 2 str, read as latin1) have str keys; copies re-pickled from encoding="bytes" have bytes
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_raw(path: Path) -> bytes:
    with open_regular(path) as f:  # a FIFO, device or folder is refused, naming it, before it is opened
        return f.read()


def _check_official(key: str, files: dict[str, bytes], sha256: dict[str, str], folder: Path) -> None:
    """Raise :class:`ChecksumError` naming every file whose md5 or sha256 (given) is not the official one."""
    problems = []
    for fname, raw in files.items():
        md5_want, sha_want = CIFAR_FILE_DIGESTS[key][fname]
        sha = sha256[fname]
        md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if sha != sha_want or md5 != md5_want:
            problems.append(f"{folder / fname}: sha256 {sha}, expected {sha_want}; md5 {md5}, expected {md5_want}")
    if problems:
        src = CIFAR_SOURCES[key]
        raise ChecksumError(
            f"{src.name}: not the official files, so they were not unpickled (a pickle can run code):\n  "
            + "\n  ".join(problems) + f"\nRestore them from the official archive {src.url} (md5 {src.md5}). "
            f"If they are a legitimate copy in the official format (e.g. re-pickled), load them with "
            f"load_cifar(..., verify=False): they are still read with a restricted unpickler that builds only "
            f"dicts, lists, strings, numbers and numpy arrays, and the data are then described as not verified.")


def _pickle_images(d: dict, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"CIFAR pickle {path} lacks key {e}") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"CIFAR pickle {path}: expected data (N, 3072) and N labels, "
                         f"got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(d: dict, path: Path, key: str) -> list[str]:
    names = d.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"CIFAR pickle {path}: expected a list of class names under {key!r}")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _read_python(name: str, folder: Path, raw: dict[str, bytes]):
    """The arrays and class names from the files' bytes ``raw`` (``{file name: bytes}``, verified by the caller)."""
    def load(fname):
        return _unpickle(raw[fname], folder / fname)

    if name == "cifar10":
        parts = [_pickle_images(load(f"data_batch_{i}"), folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _pickle_images(load("test_batch"), folder / "test_batch", "labels")
        classes = _class_names(load("batches.meta"), folder / "batches.meta", "label_names")
    else:
        x_train, y_train = _pickle_images(load("train"), folder / "train", "fine_labels")
        x_test, y_test = _pickle_images(load("test"), folder / "test", "fine_labels")
        classes = _class_names(load("meta"), folder / "meta", "fine_label_names")
    return x_train, y_train, x_test, y_test, classes


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


def _sort_key(p: str):
    stem = os.path.splitext(os.path.basename(p))[0]  # not Path(p).stem: this runs for 60,000 files per load
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def _imagefolder_classes(folder: Path) -> list[str]:
    classes = None
    for split in ("train", "test"):
        sdir = folder / split
        if not sdir.is_dir():
            raise ValueError(f"image-folder dataset {folder} lacks the {split}/ folder")
        names = sorted(d.name for d in os.scandir(sdir) if d.is_dir())
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
        cf = sorted((e.path for e in entries), key=_sort_key)
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


def _read_imagefolder(name: str, folder: Path, base: Path, use_cache: bool, progress: bool):
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
    x_train, d_train = _decode_all(train_files, progress, f"decoding {folder.name}/train")
    x_test, d_test = _decode_all(test_files, progress, f"decoding {folder.name}/test")
    verify_checksums(base, folder, train_files + test_files, what=f"{_PRETTY[name]} image folder", recursive=True,
                     accept=lambda n: n.lower().endswith(_IMAGE_EXT),
                     digests=dict(zip(train_files + test_files, d_train + d_test)))
    out = (x_train, y_train, x_test, y_test)
    if cdir is not None:
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "manifest.json").unlink(missing_ok=True)  # invalid until every array is written
        for a, arr in zip(_ARRAYS, out):
            atomic_save_npy(cdir / f"{a}.npy", arr)
        atomic_write_json(cdir / "manifest.json", {**fp, "arrays": {a: _array_sha256(arr) for a, arr in zip(_ARRAYS, out)}},
                          sort_keys=True)
    return (*out, classes)


def validation_split(num_train: int = 50000, num_folds: int = 10, fold: int = 0,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` as the authors' code: ``RandomState(seed)`` shuffle, fold ``fold`` of ``num_folds``.

    With the defaults this is the paper's 45,000 / 5,000 split.
    """
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold!r}")
    idx = np.arange(num_train)
    np.random.RandomState(seed).shuffle(idx)
    num_valid = int(np.ceil(num_train / num_folds))
    start, end = fold * num_valid, min((fold + 1) * num_valid, num_train)
    return np.concatenate([idx[:start], idx[end:]]), idx[start:end]


def stratified_subset(labels, n: int | None = None, *, per_class: int | None = None,
                      seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of ``labels``.

    Give either ``n`` (total; split as evenly as possible over the classes, the remainder going
    to randomly chosen classes) or ``per_class``. Raises ValueError if a class has too few examples.
    """
    labels = np.asarray(labels)
    if (n is None) == (per_class is None):
        raise ValueError(f"give exactly one of n or per_class, got n={n!r}, per_class={per_class!r}")
    classes = np.unique(labels)
    rng = np.random.RandomState(seed)
    k = len(classes)
    if per_class is not None:
        if not isinstance(per_class, (int, np.integer)) or per_class < 1:
            raise ValueError(f"per_class must be a positive int, got {per_class!r}")
        counts = np.full(k, per_class)
    else:
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= len(labels):
            raise ValueError(f"n must be an int in [1, {len(labels)}], got {n!r}")
        counts = np.full(k, n // k)
        counts[rng.permutation(k)[: n % k]] += 1
    picked = []
    for c, m in zip(classes, counts):
        members = np.flatnonzero(labels == c)
        if m > len(members):
            raise ValueError(f"class {c} has {len(members)} examples, fewer than the {m} requested "
                             f"(n={n!r}, per_class={per_class!r})")
        picked.append(rng.choice(members, size=m, replace=False))
    return np.sort(np.concatenate(picked))


def mean_image(*arrays: np.ndarray) -> np.ndarray:
    """float32 per-pixel, per-channel mean image of uint8 ``(N, 3, H, W)`` arrays taken together."""
    total = sum(a.sum(axis=0, dtype=np.float64) for a in arrays)
    return (total / sum(len(a) for a in arrays)).astype(np.float32)


def load_cifar(name: str = "cifar10", root: str | os.PathLike | None = None, *, source: str = "auto",  # noqa: C901  (issue 24: to split)
               validation: bool = False, subset: int | tuple[int, int] | None = None,
               mean_over: str = "train", seed: int = 0, download: bool = True, cache: bool = True,
               progress: bool = True, verify: bool = True) -> CIFAR:
    """Load CIFAR-10 or CIFAR-100 as uint8 ``(N, 3, 32, 32)`` images and int64 labels.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        root: data root; default :func:`~dnlib.data.root.data_root` (``$DNLIB_DATA``, else
            ``../shared/data`` beside the clone, else ``data/``).
        source: ``"python"`` (official pickles ``cifar-10-batches-py/``/``cifar-100-python/``),
            ``"imagefolder"`` (``cifar10-jpeg/{train,test}/<class>/*``) or ``"auto"``: the official
            pickles if present, else the image folder, else download the official archive.
        validation: hold out the authors' validation fold (5,000 of the 50,000 training images,
            ``RandomState(0)``, fold 0 of 10) as ``x_val``/``y_val``.
        subset: for smoke runs, a class-stratified random subset (seeded by ``seed``): an int keeps
            that many images in every split, a pair ``(n_train, n_eval)`` sets train and val/test apart.
        mean_over: ``"train"`` (the training images used, before ``subset``) or ``"train+test"``
            (all 60,000 images, as the authors' code).
        seed: seed of ``subset``.
        download: fetch the official archive when nothing is found (``source`` ``"auto"``/``"python"``).
        cache: cache decoded image-folder data as ``.npy`` under :func:`~dnlib.data.root.cache_dir`
            (verified on every load; rebuilt when stale or corrupt).
        progress: show tqdm bars for downloads and decoding.
        verify: check each official pickle's md5 and sha256 against :data:`CIFAR_FILE_DIGESTS` before it is
            unpickled; a file that differs raises :class:`~dnlib.data.root.ChecksumError` naming it with the
            expected and actual digests, and nothing is unpickled. ``False`` accepts other files in the official
            format (e.g. a re-pickled copy): they are still unpickled with the restricted unpickler (only dicts,
            lists, strings, numbers and numpy arrays; anything else is refused naming the file and the global),
            and :attr:`CIFAR.description` says "not verified". Either way the files are also checked against the
            data root's ``SHA256SUMS`` when it lists them. No effect on the image-folder layout.

    Every file read must be a regular file (symlinks are resolved): a FIFO, a device or a folder in a file's
    place raises :class:`~dnlib.data.root.NotRegularFileError` naming it, before it is opened.
    """
    t0 = time.perf_counter()
    key = _check_name(name)
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {list(_SOURCES)}, got {source!r}")
    if mean_over not in _MEAN_OVER:
        raise ValueError(f"mean_over must be one of {list(_MEAN_OVER)}, got {mean_over!r}")
    if not isinstance(verify, bool):
        raise ValueError(f"verify must be True or False, got {verify!r}")
    if subset is not None:
        pair = subset if isinstance(subset, tuple) else (subset, subset)
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
            raise ValueError(f"subset must be a positive int or a pair of them, got {subset!r}")
    base = data_root(root)
    src = CIFAR_SOURCES[key]
    folder, kind = None, None
    if source in ("auto", "python"):
        folder = src.found_in(base)
        kind = "python" if folder is not None else None
    if folder is None and source in ("auto", "imagefolder"):
        for cand in _IMAGEFOLDER[key]:
            if (base / cand / "train").is_dir() and (base / cand / "test").is_dir():
                folder, kind = base / cand, "imagefolder"
                break
        if folder is None and source == "imagefolder":
            looked = "\n  ".join(str(base / c) for c in _IMAGEFOLDER[key])
            raise DatasetNotFoundError(
                f"dataset {_PRETTY[key]} (image folder) not found. Looked in:\n  {looked}\n"
                f"Data root: {base} (from root=, else the DNLIB_DATA environment variable, else ../shared/data "
                f"beside the clone, else data/ in the clone). Use "
                f"source='python' or 'auto' to use/download the official archive {src.url}.")
    if folder is None:
        try:
            folder, kind = find_or_fetch(src, base, download=download, progress=progress), "python"
        except DatasetNotFoundError as e:
            if source != "auto":
                raise
            looked = "\n  ".join(str(base / c) for c in _IMAGEFOLDER[key])
            raise DatasetNotFoundError(f"{e}\nAlso looked for the image-folder layout ({{train,test}}/<class>/*) "
                                       f"in:\n  {looked}") from None
    if kind == "python":
        names = _PYTHON_FILES[key]
        paths = [Path(folder) / f for f in names]
        for p in paths:
            check_regular_file(p)  # before anything is opened: a FIFO would block the reads below
        raw = {f: _read_raw(p) for f, p in zip(names, paths)}  # what is checked is what is unpickled
        sha = ({f: hashlib.sha256(raw[f]).hexdigest() for f in names}
               if verify or os.path.lexists(base / SUMS_NAME) else {})  # each file hashed once, if at all
        verify_checksums(base, folder, paths, what=src.name, accept=names.__contains__,
                         digests={os.fspath(p): sha[f] for f, p in zip(names, paths) if f in sha})
        if verify:
            _check_official(key, raw, sha, Path(folder))
        x_train, y_train, x_test, y_test, classes = _read_python(key, folder, raw)
        del raw
    else:
        x_train, y_train, x_test, y_test, classes = _read_imagefolder(key, folder, base, cache, progress)

    x_val = y_val = None
    if validation:
        tr, va = validation_split(len(x_train))
        x_val, y_val = x_train[va], y_train[va]
        all_x = (x_train, x_test)
        x_train, y_train = x_train[tr], y_train[tr]
    else:
        all_x = (x_train, x_test)
    mean = mean_image(x_train) if mean_over == "train" else mean_image(*all_x)
    if subset is not None:
        n_tr, n_ev = pair
        i = stratified_subset(y_train, min(n_tr, len(y_train)), seed=seed)
        x_train, y_train = x_train[i], y_train[i]
        i = stratified_subset(y_test, min(n_ev, len(y_test)), seed=seed + 1)
        x_test, y_test = x_test[i], y_test[i]
        if validation:
            i = stratified_subset(y_val, min(n_ev, len(y_val)), seed=seed + 2)
            x_val, y_val = x_val[i], y_val[i]
    return CIFAR(name=key, x_train=np.ascontiguousarray(x_train), y_train=y_train,
                 x_test=np.ascontiguousarray(x_test), y_test=y_test, classes=classes, source=kind,
                 path=Path(folder), mean=mean, mean_over=mean_over, x_val=x_val, y_val=y_val,
                 verified=kind != "python" or verify, load_seconds=time.perf_counter() - t0)
