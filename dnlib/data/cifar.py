"""CIFAR-10 / CIFAR-100: readers, the paper's preprocessing, splits and subsets (PAPER.md §3.1).

Two on-disk formats are read:

* the official python pickles (``cifar-10-batches-py/``, ``cifar-100-python/``, fine labels), the
  exact data; downloaded from the official URL when missing. A pickle can run code when it is loaded, so each
  file is read once into memory, its md5 and sha256 are checked against the official files' digests
  (:data:`CIFAR_FILE_DIGESTS`) and only those bytes are unpickled, with a restricted unpickler that builds
  nothing but what the format holds (dicts, lists, strings, numbers, numpy arrays); ``verify=False`` skips
  the digests (for a legitimate copy in the official format) but never the restricted unpickler
  (:mod:`dnlib.data.cifar_pickle`);
* the torchvision ``ImageFolder`` layout (``cifar10-jpeg/{train,test}/<class>/<k>.jpg``), e.g. the
  lossy JPEG copy in the shared mirror. Decoded once with PIL (a process pool) and cached as uint8
  ``.npy`` in :func:`~dnlib.data.root.cache_dir`, so later loads take about a second (:mod:`dnlib.data.cifar_images`).

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
training indices, 10 folds, fold 0 held out (5,000 images). Those are the authors' images only in the official
order (the pickles): an image folder lists each class in turn (the official order is lost between classes), so
the same indices hold out another random 5,000 there, of the same size and procedure.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cifar_images import read_imagefolder
from .cifar_pickle import check_official, read_python
from .fetch import DatasetSource, find_or_fetch
from .root import SUMS_NAME, DatasetNotFoundError, check_regular_file, data_root, open_regular, verify_checksums

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


def _read_raw(path: Path) -> bytes:
    with open_regular(path) as f:  # a FIFO, device or folder is refused, naming it, before it is opened
        return f.read()


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


def _check_load_args(name: str, source: str, mean_over: str, verify: bool, subset) -> tuple[str, tuple | None]:
    """load_cifar's argument checks: returns the dataset's key and ``subset`` as a pair (None: no subset)."""
    key = _check_name(name)
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {list(_SOURCES)}, got {source!r}")
    if mean_over not in _MEAN_OVER:
        raise ValueError(f"mean_over must be one of {list(_MEAN_OVER)}, got {mean_over!r}")
    if not isinstance(verify, bool):
        raise ValueError(f"verify must be True or False, got {verify!r}")
    pair = None
    if subset is not None:
        pair = subset if isinstance(subset, tuple) else (subset, subset)
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
            raise ValueError(f"subset must be a positive int or a pair of them, got {subset!r}")
    return key, pair


def _find(key: str, base: Path, source: str, download: bool, progress: bool) -> tuple[Path, str]:
    """Where dataset ``key`` is under ``base`` and in which layout, ``(folder, "python" | "imagefolder")``, as
    ``source`` asks: the official pickles, the image folder, or (``"auto"``) the first found, else a download."""
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
    return folder, kind


def _read_official(key: str, folder, base: Path, verify: bool) -> tuple:
    """The official pickles in ``folder``, checked (regular files; the data root's SHA256SUMS; with ``verify``,
    the official digests) before anything is unpickled: ``(x_train, y_train, x_test, y_test, classes)``."""
    names = _PYTHON_FILES[key]
    paths = [Path(folder) / f for f in names]
    for p in paths:
        check_regular_file(p)  # before anything is opened: a FIFO would block the reads below
    raw = {f: _read_raw(p) for f, p in zip(names, paths)}  # what is checked is what is unpickled
    sha = ({f: hashlib.sha256(raw[f]).hexdigest() for f in names}
           if verify or os.path.lexists(base / SUMS_NAME) else {})  # each file hashed once, if at all
    verify_checksums(base, folder, paths, what=CIFAR_SOURCES[key].name, accept=names.__contains__,
                     digests={os.fspath(p): sha[f] for f, p in zip(names, paths) if f in sha})
    if verify:
        check_official(raw, sha, Path(folder), CIFAR_FILE_DIGESTS[key], CIFAR_SOURCES[key])
    return read_python(key, folder, raw)


def _check_subset(subset, pretty: str, splits: dict) -> None:
    """A subset larger than a split is refused (it would be recorded as given while the whole split was used)."""
    for split, (n, y) in splits.items():
        if n > len(y):
            raise ValueError(f"subset: {subset!r} asks for {n:,} {split} images; {pretty} has {len(y):,} (a "
                             f"subset is at most the data's size: N_TRAIN,N_EVAL sets the splits apart; none: all)")


def load_cifar(name: str = "cifar10", root: str | os.PathLike | None = None, *, source: str = "auto",
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
            ``RandomState(0)``, fold 0 of 10) as ``x_val``/``y_val``; the authors' images with the official
            pickles, another random 5,000 of an image folder (class by class, so its order is not the official one).
        subset: for smoke runs, a class-stratified random subset (seeded by ``seed``): an int keeps
            that many images in every split, a pair ``(n_train, n_eval)`` sets train and val/test apart; a
            number larger than its split is a ValueError naming both (the run would record a subset it did not use).
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
    key, pair = _check_load_args(name, source, mean_over, verify, subset)
    base = data_root(root)
    folder, kind = _find(key, base, source, download, progress)
    if kind == "python":
        x_train, y_train, x_test, y_test, classes = _read_official(key, folder, base, verify)
    else:
        x_train, y_train, x_test, y_test, classes = read_imagefolder(key, folder, base, cache, progress,
                                                                     f"{_PRETTY[key]} image folder")

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
        _check_subset(subset, _PRETTY[key], {"training": (n_tr, y_train), "test": (n_ev, y_test),
                                              **({"validation": (n_ev, y_val)} if validation else {})})
        i = stratified_subset(y_train, n_tr, seed=seed)
        x_train, y_train = x_train[i], y_train[i]
        i = stratified_subset(y_test, n_ev, seed=seed + 1)
        x_test, y_test = x_test[i], y_test[i]
        if validation:
            i = stratified_subset(y_val, n_ev, seed=seed + 2)
            x_val, y_val = x_val[i], y_val[i]
    return CIFAR(name=key, x_train=np.ascontiguousarray(x_train), y_train=y_train,
                 x_test=np.ascontiguousarray(x_test), y_test=y_test, classes=classes, source=kind,
                 path=Path(folder), mean=mean, mean_over=mean_over, x_val=x_val, y_val=y_val,
                 verified=kind != "python" or verify, load_seconds=time.perf_counter() - t0)
