"""The official CIFAR python files (``cifar-10-batches-py/``, ``cifar-100-python/``), read safely: a pickle can run
code when it is loaded, so :func:`check_official` compares each file's md5 and sha256 with the official digests
(:data:`dnlib.data.cifar.CIFAR_FILE_DIGESTS`) before anything is unpickled, and :func:`read_python` unpickles the
checked bytes with a restricted unpickler that builds only what the format holds (dicts, lists, tuples, strings,
bytes, numbers, numpy arrays) and refuses every other global (``os.system``, ``builtins.eval``, any class).
:func:`dnlib.data.load_cifar` reads each file once into memory and passes the same bytes to both.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from .fetch import DatasetSource
from .root import ChecksumError

__all__ = ["check_official", "read_python"]


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


def check_official(files: dict[str, bytes], sha256: dict[str, str], folder: Path, digests: dict,
                   src: DatasetSource) -> None:
    """Raise :class:`ChecksumError` naming every file of ``files`` (``{file name: bytes}`` read from ``folder``)
    whose md5 or sha256 (``sha256``: given, ``{file name: hex}``) is not the official one (``digests``:
    ``{file name: (md5, sha256)}``; ``src``: the official archive, named in the message)."""
    problems = []
    for fname, raw in files.items():
        md5_want, sha_want = digests[fname]
        sha = sha256[fname]
        md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if sha != sha_want or md5 != md5_want:
            problems.append(f"{folder / fname}: sha256 {sha}, expected {sha_want}; md5 {md5}, expected {md5_want}")
    if problems:
        raise ChecksumError(
            f"{src.name}: not the official files, so they were not unpickled (a pickle can run code):\n  "
            + "\n  ".join(problems) + f"\nRestore them from the official archive {src.url} (md5 {src.md5}). "
            f"If they are a legitimate copy in the official format (e.g. re-pickled), load them with "
            f"load_cifar(..., verify=False): they are still read with a restricted unpickler that builds only "
            f"dicts, lists, strings, numbers and numpy arrays, and the data are then described as not verified.")


def _pickle_images(d: dict, path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) int64 of one unpickled CIFAR batch ``d``. A copy in another
    format is refused, not cast: float data (e.g. scaled to [0, 1]) would load as 0/1 images and wider integers would
    wrap modulo 256; labels must be class ids 0..num_classes-1."""
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key])
    except KeyError as e:
        raise ValueError(f"CIFAR pickle {path} lacks key {e}") from e
    if data.dtype != np.uint8:
        raise ValueError(f"CIFAR pickle {path}: data of dtype {data.dtype}; the CIFAR format holds uint8 pixels "
                         f"0..255 (convert the copy, do not let it be cast)")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"CIFAR pickle {path}: labels of dtype {labels.dtype}; expected integer class ids")
    labels = labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"CIFAR pickle {path}: expected data (N, 3072) and N labels, "
                         f"got {data.shape} and {labels.shape}")
    bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    if bad.size:
        raise ValueError(f"CIFAR pickle {path}: labels outside 0..{num_classes - 1}: "
                         f"{', '.join(map(str, bad[:5].tolist()))}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(d: dict, path: Path, key: str) -> list[str]:
    names = d.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"CIFAR pickle {path}: expected a list of class names under {key!r}")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_python(name: str, folder: Path, raw: dict[str, bytes]):
    """``(x_train, y_train, x_test, y_test, classes)`` of ``name`` (``cifar10``/``cifar100``) from the files' bytes
    ``raw`` (``{file name: bytes}``, read from ``folder`` and verified by the caller), unpickled restrictedly."""
    def load(fname):
        return _unpickle(raw[fname], folder / fname)

    if name == "cifar10":
        parts = [_pickle_images(load(f"data_batch_{i}"), folder / f"data_batch_{i}", "labels", 10)
                 for i in range(1, 6)]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _pickle_images(load("test_batch"), folder / "test_batch", "labels", 10)
        classes = _class_names(load("batches.meta"), folder / "batches.meta", "label_names")
    else:
        x_train, y_train = _pickle_images(load("train"), folder / "train", "fine_labels", 100)
        x_test, y_test = _pickle_images(load("test"), folder / "test", "fine_labels", 100)
        classes = _class_names(load("meta"), folder / "meta", "fine_label_names")
    return x_train, y_train, x_test, y_test, classes
