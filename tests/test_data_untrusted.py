"""An untrusted data root (issue 22, items 1 and 5): crafted CIFAR pickles never run, and no file blocks a load.

Item 1: the official CIFAR python batches are pickles. A file is checked against the official digests before it
is unpickled, and unpickled with a restricted unpickler either way, so a payload in a crafted ``data_batch_1``
never runs (the marker file it would create stays absent) and the error names the file. The restricted unpickler
still reads the genuine format: Python 2 pickles written here opcode by opcode as the CIFAR authors' ``cPickle``
wrote them (``numpy.core.multiarray._reconstruct``, latin-1 strings), and copies re-pickled by Python 3.

Item 5: a FIFO, a device, a folder or a symlink to one of them where a data file is expected is refused, naming
it, before it is opened. Each load runs in a thread with a 60 s limit; if it blocks, the test opens the FIFO's
write end to release it and fails, so a regression fails instead of hanging the suite.
"""

import contextlib
import hashlib
import os
import pickle
import re
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from dnlib.data import ChecksumError, NotRegularFileError, load_cifar, load_ptb, load_sr
from dnlib.data import cifar as C

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------- the official format, by hand
def _py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle (protocol 2) wrote the official CIFAR files.

    Python 2 ``str`` (here: ``str`` and ``bytes``) is a ``BINSTRING``; a numpy array is
    ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` with the state
    ``(1, shape, dtype, False, raw bytes)``, and its dtype ``numpy.dtype('u1', 0, 1)`` with
    ``(3, '|', None, None, None, -1, -1, 0)``. Python 3's pickler cannot write these opcodes.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2

    def put(x):
        if isinstance(x, dict):
            out.extend(b"}(")  # EMPTY_DICT MARK
            for k, v in x.items():
                put(k), put(v)
            out.extend(b"u")  # SETITEMS
        elif isinstance(x, list):
            out.extend(b"](")  # EMPTY_LIST MARK
            for v in x:
                put(v)
            out.extend(b"e")  # APPENDS
        elif isinstance(x, tuple):
            out.extend(b"(")
            for v in x:
                put(v)
            out.extend(b"t")  # TUPLE
        elif x is None:
            out.extend(b"N")
        elif isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))  # BININT
        elif isinstance(x, (str, bytes)):
            raw = x.encode("latin1") if isinstance(x, str) else x
            out.extend(b"T" + struct.pack("<I", len(raw)) + raw)  # BINSTRING
        elif isinstance(x, np.ndarray):
            assert x.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            put((0,)), put(b"b")
            out.extend(b"tR(")  # TUPLE REDUCE MARK
            put(1), put(tuple(x.shape))
            out.extend(b"cnumpy\ndtype\n(")
            put(b"u1"), put(0), put(1)
            out.extend(b"tR")
            put((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            put(False), put(x.tobytes())
            out.extend(b"tb")  # TUPLE BUILD the array
        else:
            raise TypeError(type(x))

    put(obj)
    return bytes(out + b".")


def _images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3072), dtype=np.uint8)


def write_official_cifar10(root: Path, per_batch=20, n_test=30) -> dict:
    """A small CIFAR-10 in the official Python 2 format; returns the arrays written."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _images(per_batch, i), [int(v) for v in np.arange(per_batch) % 10]
        (d / f"data_batch_{i}").write_bytes(_py2_pickle(
            {"batch_label": f"training batch {i} of 5", "labels": y, "data": x,
             "filenames": [f"f{j}.png" for j in range(per_batch)]}))
        xs.append(x), ys.append(y)
    xt, yt = _images(n_test, 9), [int(v) for v in np.arange(n_test) % 10]
    (d / "test_batch").write_bytes(_py2_pickle({"batch_label": "testing batch 1 of 1", "labels": yt, "data": xt}))
    (d / "batches.meta").write_bytes(_py2_pickle({"label_names": NAMES, "num_cases_per_batch": per_batch,
                                                  "num_vis": 3072}))
    return {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys), "x_test": xt, "y_test": np.array(yt)}


def test_the_hand_written_python2_pickle_is_the_official_layout(tmp_path):
    """The fixture itself: stdlib pickle reads it as it reads the official files (str keys, uint8 arrays)."""
    x = _images(3, 0)
    d = pickle.loads(_py2_pickle({"data": x, "labels": [1, 2, 3]}), encoding="latin1")  # our own bytes
    assert list(d) == ["data", "labels"] and d["data"].dtype == np.uint8 and np.array_equal(d["data"], x)


def test_restricted_unpickler_reads_the_official_python2_format(tmp_path):
    truth = write_official_cifar10(tmp_path)
    d = load_cifar("cifar10", tmp_path, download=False, verify=False)
    for a, t in truth.items():
        np.testing.assert_array_equal(getattr(d, a).reshape(len(t), -1) if a.startswith("x") else getattr(d, a), t)
    assert d.classes == NAMES and d.description == "CIFAR-10 (official format, not verified)"


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_restricted_unpickler_reads_python3_copies(tmp_path, protocol, keys):
    """Copies re-pickled by Python 3 (``_codecs.encode`` bytes at protocol 2; bytes keys from encoding='bytes')."""
    k = (lambda s: s.encode()) if keys == "bytes" else (lambda s: s)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x, xt = _images(200, 1), _images(100, 2)
    for name, arr in (("train", x), ("test", xt)):
        fine = (np.arange(len(arr)) % 100).tolist()
        (d / name).write_bytes(pickle.dumps({k("data"): arr, k("fine_labels"): fine, k("batch_label"): k(name)},
                                            protocol=protocol))
    classes = [f"c{i}" for i in range(100)]
    (d / "meta").write_bytes(pickle.dumps({k("fine_label_names"): [k(c) for c in classes]}, protocol=protocol))
    got = load_cifar("cifar100", tmp_path, download=False, verify=False)
    np.testing.assert_array_equal(got.x_train.reshape(200, -1), x)
    assert got.classes == classes and got.y_test.tolist() == (np.arange(100) % 100).tolist()


# ------------------------------------------------------------------------------------- crafted pickles
class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file (what a probe's payload did)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("verify", [True, False])
def test_a_crafted_batch_never_runs_its_payload(tmp_path, verify):
    write_official_cifar10(tmp_path)
    victim = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    marker = tmp_path / "payload-ran"
    victim.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0] * 20}, protocol=2))
    try:
        load_cifar("cifar10", tmp_path, download=False, **({} if verify else {"verify": False}))  # True: the default
        error = None
    except Exception as e:  # noqa: BLE001 - checked below, after the marker
        error = e
    assert not marker.exists(), "the crafted pickle's payload ran: it created the marker file"
    assert error is not None and str(victim) in str(error)
    if verify:  # refused on its digest, before any unpickling
        assert isinstance(error, ChecksumError)
        md5, sha = C.CIFAR_FILE_DIGESTS["cifar10"]["data_batch_1"]
        got = hashlib.sha256(victim.read_bytes()).hexdigest()
        assert f"sha256 {got}, expected {sha}" in str(error) and "verify=False" in str(error)
    else:  # refused by the restricted unpickler, naming the global it asked for
        assert isinstance(error, ValueError) and re.search(r"refused to unpickle .*global (io|builtins)\.open",
                                                           str(error))


@pytest.mark.parametrize("crafted, named", [
    ({"data": np.array([1, "x"], dtype=object), "labels": [0]}, "dtype object"),
    ({"data": np.ma.masked_array(_images(2, 0)), "labels": [0, 1]}, "global numpy.ma.core"),
    ({"data": _images(2, 0), "labels": __import__("collections").OrderedDict(a=1)}, "global collections.OrderedDict"),
    ({"data": _images(2, 0), "labels": [0, 1], "x": os.path.join}, "global posixpath.join"),
])
def test_restricted_unpickler_refuses_what_the_format_does_not_hold(tmp_path, crafted, named):
    write_official_cifar10(tmp_path)
    victim = tmp_path / "cifar-10-batches-py" / "test_batch"
    victim.write_bytes(pickle.dumps(crafted, protocol=4))
    with pytest.raises(ValueError, match="refused to unpickle") as e:
        load_cifar("cifar10", tmp_path, download=False, verify=False)
    assert str(victim) in str(e.value) and named in str(e.value)


def test_verify_refuses_files_that_are_not_the_official_ones(tmp_path):
    write_official_cifar10(tmp_path)
    with pytest.raises(ChecksumError) as e:
        load_cifar("cifar10", tmp_path, download=False)  # verify=True is the default
    msg = str(e.value)
    for f in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        md5, sha = C.CIFAR_FILE_DIGESTS["cifar10"][f]
        got = hashlib.sha256((tmp_path / "cifar-10-batches-py" / f).read_bytes()).hexdigest()
        assert f"{tmp_path / 'cifar-10-batches-py' / f}: sha256 {got}, expected {sha}" in msg and md5 in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg


def test_verify_accepts_files_whose_digests_are_the_table_s(tmp_path, monkeypatch):
    """The comparison itself: with the table holding these files' digests, verify=True loads them as official."""
    truth = write_official_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    table = {f.name: (hashlib.md5(f.read_bytes()).hexdigest(), hashlib.sha256(f.read_bytes()).hexdigest())
             for f in folder.iterdir()}
    monkeypatch.setitem(C.CIFAR_FILE_DIGESTS, "cifar10", table)
    d = load_cifar("cifar10", tmp_path, download=False)
    assert d.verified and d.description == "CIFAR-10 (official)"
    np.testing.assert_array_equal(d.y_train, truth["y_train"])
    monkeypatch.setitem(C.CIFAR_FILE_DIGESTS, "cifar10", {**table, "meta_unused": None,
                                                          "batches.meta": (table["batches.meta"][0], "0" * 64)})
    with pytest.raises(ChecksumError, match="batches.meta: sha256"):
        load_cifar("cifar10", tmp_path, download=False)


def test_digest_table_lists_every_file_the_loader_reads():
    for name, files in C._PYTHON_FILES.items():
        for f in files:
            md5, sha = C.CIFAR_FILE_DIGESTS[name][f]
            assert re.fullmatch("[0-9a-f]{32}", md5) and re.fullmatch("[0-9a-f]{64}", sha)
    assert len({sha for t in C.CIFAR_FILE_DIGESTS.values() for _, sha in t.values()}) == 11  # all distinct


def test_verify_argument_is_checked(tmp_path):
    with pytest.raises(ValueError, match="verify must be True or False, got 'no'"):
        load_cifar("cifar10", tmp_path, verify="no")


def _code_files():
    for folder, pattern in (("dnlib", "*.py"), ("scripts", "*.py"), ("notebooks", "*.ipynb")):
        yield from sorted((ROOT / folder).rglob(pattern))


def test_nothing_else_unpickles_foreign_files():
    """Every pickle the project reads that it did not write goes through a restricted path: ``torch.load`` only
    with ``weights_only=True``, ``np.load`` never with ``allow_pickle=True``, and ``pickle.load``/``loads``/
    ``Unpickler`` only in the CIFAR pickle reader (its restricted unpickler, ``dnlib/data/cifar_pickle.py``)."""
    bad = []
    for path in _code_files():
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT).as_posix()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.end():m.end() + 300].split("\n\n")[0]
            if "weights_only=True" not in call:
                bad.append(f"{rel}: torch.load without weights_only=True")
        if re.search(r"allow_pickle\s*=\s*True", text):
            bad.append(f"{rel}: np.load(allow_pickle=True)")
        if rel != "dnlib/data/cifar_pickle.py" and re.search(
                r"\b(c?[pP]ickle\.(load|loads|Unpickler)|dill|joblib\.load)\b", text):
            bad.append(f"{rel}: unpickles")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------ item 5: nothing in the root blocks
def _finishes(load, fifo: Path | None, timeout: float = 60.0):
    """Run ``load()`` in a thread; return the exception it raised (or None). Fail if it blocks for ``timeout`` s
    (after releasing it: opening the FIFO's write end and closing it gives the blocked reader an end of file)."""
    result = {}

    def target():
        try:
            load()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    blocked = t.is_alive()
    for _ in range(300):
        if not t.is_alive() or fifo is None:
            break
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(0.1)
    assert not blocked, f"the load blocked for {timeout:.0f} s on {fifo} (a FIFO in the data root)"
    return result.get("error")


def _refused(error, path: Path, kind: str):
    assert isinstance(error, NotRegularFileError), f"expected NotRegularFileError, got {error!r}"
    assert str(path) in str(error) and kind in str(error) and "not a regular file" in str(error)


def _ptb(root: Path):
    folder = root / "ptb"
    folder.mkdir(parents=True)
    for split, text in (("train", " a b <unk> \n"), ("valid", " a \n"), ("test", " b \n")):
        (folder / f"ptb.{split}.txt").write_text(text)
    return folder


@pytest.mark.parametrize("sums", [True, False])
def test_ptb_fifo_is_refused_not_waited_on(tmp_path, monkeypatch, sums):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _ptb(tmp_path)
    if sums:  # the case: hashing for SHA256SUMS opened the FIFO
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ptb/{p.name}" for p in sorted(folder.iterdir())]
        (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    fifo = folder / "ptb.test.txt"
    fifo.unlink()
    os.mkfifo(fifo)
    _refused(_finishes(lambda: load_ptb(tmp_path, download=False), fifo), fifo, "a FIFO")


@pytest.mark.parametrize("kind", ["symlink to a FIFO", "symlink to a device", "folder", "broken symlink"])
def test_ptb_other_non_regular_files_are_refused(tmp_path, kind):
    folder = _ptb(tmp_path)
    path = folder / "ptb.valid.txt"
    path.unlink()
    fifo = None
    if kind == "symlink to a FIFO":
        fifo = tmp_path / "elsewhere.fifo"
        os.mkfifo(fifo)
        path.symlink_to(fifo)
    elif kind == "symlink to a device":
        path.symlink_to("/dev/null")  # read as an empty file before
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone")
    error = _finishes(lambda: load_ptb(tmp_path, download=False), fifo)
    expect = {"symlink to a FIFO": "a FIFO", "symlink to a device": "a character device", "folder": "a folder",
              "broken symlink": "a broken symlink"}[kind]
    _refused(error, path, expect)
    if kind.startswith("symlink"):
        assert "a symlink to" in str(error)


def test_sha256sums_fifo_is_refused_not_taken_as_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    _ptb(tmp_path)
    fifo = tmp_path / "SHA256SUMS"
    os.mkfifo(fifo)
    _refused(_finishes(lambda: load_ptb(tmp_path, download=False), fifo), fifo, "a FIFO")


def test_sr_image_fifo_is_refused(tmp_path):
    from PIL import Image
    folder = tmp_path / "sr" / "Set5"
    folder.mkdir(parents=True)
    for k in range(4):
        Image.fromarray(_images(1, k).reshape(32, 32, 3)).save(folder / f"{k}.bmp")
    fifo = folder / "4.bmp"
    os.mkfifo(fifo)
    _refused(_finishes(lambda: load_sr("Set5", tmp_path), fifo), fifo, "a FIFO")


def test_cifar_image_folder_fifo_is_refused(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "cifar10-jpeg" / split / c).mkdir(parents=True)
            Image.fromarray(_images(1, 0).reshape(32, 32, 3)).save(tmp_path / "cifar10-jpeg" / split / c / "0.png")
    fifo = tmp_path / "cifar10-jpeg" / "train" / "dog" / "1.png"
    os.mkfifo(fifo)
    _refused(_finishes(lambda: load_cifar("cifar10", tmp_path, download=False, progress=False), fifo), fifo,
             "a FIFO")


def test_cifar_pickle_fifo_is_refused(tmp_path):
    write_official_cifar10(tmp_path)
    fifo = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    fifo.unlink()
    os.mkfifo(fifo)
    _refused(_finishes(lambda: load_cifar("cifar10", tmp_path, download=False, verify=False), fifo), fifo, "a FIFO")


def test_explorer_sample_images_fifo_is_refused(tmp_path):
    """The activation explorer's exact CIFAR samples (an .npz in the data root) were read with np.load: a FIFO there
    blocked the widget's image loading."""
    from dnlib.notebook.explorer_inputs import CIFAR_SAMPLES, explorer_images

    fifo = tmp_path / CIFAR_SAMPLES
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    error = _finishes(lambda: explorer_images(4, source="cifar-samples", root=tmp_path), fifo, timeout=20)
    _refused(error, fifo, "FIFO")
