"""CIFAR readers (official pickles written here, image folders, the real mirror), splits, subsets, GPULoader."""

import contextlib
import dataclasses
import hashlib
import os
import pickle
import re
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dnlib.data import (
    DatasetNotFoundError,
    DataWarning,
    DownloadError,
    GPULoader,
    cifar_images,
    data_root,
    load_cifar,
    stratified_subset,
    validation_split,
)
from dnlib.data import cifar as C

MIRROR = data_root()
needs_jpeg = pytest.mark.skipif(not (MIRROR / "cifar10-jpeg" / "train").is_dir(),
                                reason=f"CIFAR-10 JPEG copy not in DNLIB_DATA={MIRROR}")


def _images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch=20, n_test=30):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _images(per_batch, i), [int(v) for v in np.arange(per_batch) % 10]
        _dump(d / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y, "data": x,
                                       "filenames": [f"f{j}.png" for j in range(per_batch)]})
        xs.append(x), ys.append(y)
    xt, yt = _images(n_test, 9), [int(v) for v in np.arange(n_test) % 10]
    _dump(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": yt, "data": xt})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(d / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return np.concatenate(xs), np.concatenate(ys), xt, np.array(yt), names


def write_cifar100(root: Path, n_train=200, n_test=100):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    x, xt = _images(n_train, 1), _images(n_test, 2)
    fine, finet = np.arange(n_train) % 100, np.arange(n_test) % 100
    _dump(d / "train", {"data": x, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()})
    _dump(d / "test", {"data": xt, "fine_labels": finet.tolist(), "coarse_labels": (finet // 5).tolist()})
    names = [f"class{i:02d}" for i in range(100)]
    _dump(d / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    return x, fine, xt, finet, names


def test_official_cifar10_pickles(tmp_path):
    x, y, xt, yt, names = write_cifar10(tmp_path)
    d = load_cifar("cifar10", tmp_path, download=False, verify=False)  # not the official bytes: verify=False
    assert d.source == "python" and d.description == "CIFAR-10 (official format, not verified)" and d.classes == names
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64
    np.testing.assert_array_equal(d.x_train.reshape(100, -1), x)  # official layout is R, G, B planes
    np.testing.assert_array_equal(d.y_test, yt)
    np.testing.assert_allclose(d.mean, x.reshape(-1, 3, 32, 32).mean(0), rtol=1e-6)
    d2 = load_cifar("CIFAR-10", tmp_path, mean_over="train+test", download=False, verify=False)
    np.testing.assert_allclose(d2.mean, np.concatenate([x, xt]).reshape(-1, 3, 32, 32).mean(0), rtol=1e-6)


@pytest.mark.parametrize("batch, message", [
    ({"data": lambda x: x.astype(np.float32) / 255.0}, "data of dtype float32"),       # a [0, 1] float copy
    ({"data": lambda x: x.astype(np.int16) * 2}, "data of dtype int16"),              # would wrap modulo 256
    ({"labels": lambda y: [37] + y[1:]}, "labels outside 0..9: 37"),
    ({"labels": lambda y: [-1] + y[1:]}, "labels outside 0..9: -1"),
])
def test_a_copy_in_another_format_is_refused_not_cast(tmp_path, batch, message):
    """verify=False reads re-pickled copies: their data must still be uint8 images and their labels class ids, else
    a float [0, 1] copy loads as 0/1 images and an int16 one wraps modulo 256, silently."""
    _, _, xt, yt, _ = write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    d = {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in yt], "data": xt}   # as written (no load)
    for key, change in batch.items():
        d[key] = change(d[key])
    _dump(path, d)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        load_cifar("cifar10", tmp_path, download=False, verify=False)
    assert "test_batch" in str(e.value)


def test_official_cifar100_pickles_fine_labels(tmp_path):
    x, fine, xt, finet, names = write_cifar100(tmp_path)
    d = load_cifar("cifar100", tmp_path, download=False, verify=False)
    assert d.num_classes == 100 and d.classes == names and d.description == "CIFAR-100 (official format, not verified)"
    np.testing.assert_array_equal(d.y_train, fine)
    np.testing.assert_array_equal(d.x_test.reshape(len(xt), -1), xt)


def test_cifar_download_from_official_format_archive(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_cifar10(staging)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    src = dataclasses.replace(C.CIFAR_SOURCES["cifar10"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(C.CIFAR_SOURCES, "cifar10", src)
    root = tmp_path / "root"
    d = load_cifar("cifar10", root, progress=False, verify=False)
    assert d.source == "python" and len(d.x_train) == 100
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # a corrupted publisher file: refused, nothing unpacked
    monkeypatch.setitem(C.CIFAR_SOURCES, "cifar10", dataclasses.replace(src, md5="f" * 32))
    with pytest.raises(DownloadError, match="md5 mismatch"):
        load_cifar("cifar10", tmp_path / "root2", progress=False, verify=False)
    assert list((tmp_path / "root2").iterdir()) == []


def test_missing_cifar_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_cifar("cifar100", tmp_path, download=False)
    msg = str(e.value)
    for part in ("CIFAR-100", str(tmp_path / "cifar-100-python"), "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "DNLIB_DATA"):
        assert part in msg


@pytest.mark.parametrize("kwargs, param", [
    ({"name": "cifar1000"}, "name"), ({"source": "jpeg"}, "source"), ({"mean_over": "test"}, "mean_over"),
    ({"subset": 0}, "subset"), ({"subset": (10, -1)}, "subset")])
def test_bad_arguments(tmp_path, kwargs, param):
    with pytest.raises(ValueError, match=param):
        load_cifar(**{"name": "cifar10", "root": tmp_path, **kwargs})


def test_a_subset_larger_than_the_data_is_refused_not_recorded_as_given(tmp_path):
    """subset 100000 was clamped to the 50,000 images while the run recorded subset 100000: refused, naming the
    split, the number asked for and the data's size; a subset of a split's size is all of it."""
    write_cifar10(tmp_path)                                              # 100 training, 30 test images
    load = lambda **kw: load_cifar("cifar10", tmp_path, download=False, verify=False, **kw)  # noqa: E731
    n_val = len(load(validation=True).y_val)
    for subset, kw, message in [(101, {}, "subset: 101 asks for 101 training images; CIFAR-10 has 100 "),
                                (40, {}, "subset: 40 asks for 40 test images; CIFAR-10 has 30 "),
                                ((50, 31), {}, "subset: (50, 31) asks for 31 test images; CIFAR-10 has 30 "),
                                ((50, n_val + 1), {"validation": True},
                                 f"subset: (50, {n_val + 1}) asks for {n_val + 1} validation images; CIFAR-10 has "
                                 f"{n_val} ")]:
        with pytest.raises(ValueError) as e:
            load(subset=subset, **kw)
        assert str(e.value).startswith(message), str(e.value)
    d = load(subset=(100, 30))
    assert (len(d.y_train), len(d.y_test)) == (100, 30)


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "jpeg"}, "source must be one of ['auto', 'python', 'imagefolder'], got 'jpeg'"),
    ({"mean_over": "test"}, "mean_over must be one of ['train', 'train+test'], got 'test'"),
    ({"subset": (10, -1)}, "subset must be a positive int or a pair of them, got (10, -1)"),
    ({"subset": (1, 2, 3)}, "subset must be a positive int or a pair of them, got (1, 2, 3)"),
])
def test_bad_arguments_messages(tmp_path, kwargs, message):
    """The whole message of each refusal (pinned for issue 24's split of load_cifar)."""
    with pytest.raises(ValueError) as e:
        load_cifar(**{"name": "cifar10", "root": tmp_path, **kwargs})
    assert str(e.value) == message


@pytest.mark.parametrize("source", ["imagefolder", "auto", "python"])
def test_missing_cifar_names_where_it_looked(tmp_path, source):
    """Each source says where it looked: the image-folder candidates (imagefolder, auto) and the official pickles'
    folder (auto, python) (pinned for issue 24's split of load_cifar)."""
    with pytest.raises(DatasetNotFoundError) as e:
        load_cifar("cifar10", tmp_path, source=source, download=False)
    msg = str(e.value)
    looked = "\n  " + "\n  ".join(str(tmp_path / c) for c in ("cifar10-jpeg", "cifar10"))
    if source == "imagefolder":
        assert msg.startswith(f"dataset CIFAR-10 (image folder) not found. Looked in:{looked}\nData root: {tmp_path}")
        assert msg.endswith("source='python' or 'auto' to use/download the official archive "
                            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz.")
    else:
        assert str(tmp_path / "cifar-10-batches-py") in msg
        also = f"\nAlso looked for the image-folder layout ({{train,test}}/<class>/*) in:{looked}"
        assert msg.endswith(also) == (source == "auto")


def _write_folder(root: Path, n_per_class=(3, 2), classes=("cat", "dog"), ext=".png"):
    from PIL import Image
    rng = np.random.RandomState(0)
    truth = {}
    for split, n in zip(("train", "test"), n_per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                img = rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{k}{ext}")
                truth[(split, c, k)] = img
    return truth


def test_imagefolder_layout_order_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    truth = _write_folder(tmp_path / "cifar10-jpeg", n_per_class=(12, 2))
    d = load_cifar("cifar10", tmp_path, download=False, progress=False)
    assert d.source == "imagefolder" and d.classes == ["cat", "dog"] and d.description == "CIFAR-10 (JPEG copy)"
    assert d.y_train.tolist() == [0] * 12 + [1] * 12
    np.testing.assert_array_equal(d.x_train[10], truth[("train", "cat", 10)].transpose(2, 0, 1))  # 10 after 9
    assert (tmp_path / "cache").is_dir() and not list((tmp_path / "cifar10-jpeg").glob("*.npy"))
    d2 = load_cifar("cifar10", tmp_path, download=False, progress=False)
    np.testing.assert_array_equal(d2.x_train, d.x_train)
    # adding a file invalidates the cache
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cifar10-jpeg" / "test" / "dog" / "2.png")
    assert len(load_cifar("cifar10", tmp_path, download=False, progress=False).x_test) == 5


def test_loads_at_once_of_an_uncached_folder_decode_it_once(tmp_path, monkeypatch):
    """Two loads of one image folder at once, the cache empty (the runs of a sweep starting on a fresh machine):
    one decodes and writes the cache, the other waits for it and then reads the cache (before: each decoded,
    about 15 CPU-s apiece for CIFAR-10's 60,000 JPEGs)."""
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "cifar10-jpeg", n_per_class=(12, 2))
    real, calls, decoding = cifar_images._decode_all, [], threading.Event()

    def slow_decode(*args, **kwargs):     # called for train/, then test/: the other load arrives meanwhile
        calls.append(args[2])
        decoding.set()
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(cifar_images, "_decode_all", slow_decode)
    out = {}
    first = threading.Thread(target=lambda: out.setdefault(0, load_cifar("cifar10", tmp_path, download=False,
                                                                          progress=False)))
    first.start()
    assert decoding.wait(30)
    out[1] = load_cifar("cifar10", tmp_path, download=False, progress=False)
    first.join(30)
    assert len(calls) == 2, calls                                  # one load's train/ and test/
    np.testing.assert_array_equal(out[0].x_train, out[1].x_train)
    np.testing.assert_array_equal(out[0].y_test, out[1].y_test)


def test_a_cache_folder_that_refuses_locks_still_caches(tmp_path, monkeypatch):
    """On a file system without locks (``flock`` fails with ENOLCK) a load decodes and caches as without the lock."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    _write_folder(tmp_path / "cifar10-jpeg")
    d = load_cifar("cifar10", tmp_path, download=False, progress=False)
    monkeypatch.setattr(cifar_images, "_decode_all", lambda *a, **k: pytest.fail("the cache was not written"))
    np.testing.assert_array_equal(load_cifar("cifar10", tmp_path, download=False, progress=False).x_train, d.x_train)


def test_corrupt_image_names_file(tmp_path):
    _write_folder(tmp_path / "cifar10-jpeg")
    bad = tmp_path / "cifar10-jpeg" / "train" / "dog" / "1.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=str(bad)):
        load_cifar("cifar10", tmp_path, source="imagefolder", cache=False, progress=False)


def test_validation_split_matches_authors_code():
    tr, va = validation_split()
    idx = np.arange(50000)
    np.random.RandomState(0).shuffle(idx)
    assert len(tr) == 45000 and len(va) == 5000
    np.testing.assert_array_equal(va, idx[:5000])
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(50000))
    with pytest.raises(ValueError, match="fold"):
        validation_split(fold=10)


def test_stratified_subset():
    y = np.repeat(np.arange(10), 50)
    i = stratified_subset(y, 25, seed=1)
    counts = np.bincount(y[i], minlength=10)
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1
    assert np.bincount(y[stratified_subset(y, per_class=7)]).tolist() == [7] * 10
    np.testing.assert_array_equal(stratified_subset(y, 25, seed=1), i)
    with pytest.raises(ValueError, match="per_class"):
        stratified_subset(y, per_class=51)
    with pytest.raises(ValueError, match="exactly one"):
        stratified_subset(y)


def test_gpuloader_epochs_and_resume():
    x = np.arange(10 * 2, dtype=np.uint8).reshape(10, 2)
    y = np.arange(10)
    run = GPULoader(x, y, batch_size=3, mean=np.array([1.0, 1.0]), seed=5)
    assert len(run) == 3
    seq = []
    for _ in range(3):
        seq += [yb.tolist() for _, yb in run]
    xb, yb = next(iter(GPULoader(x, y, 3, mean=np.array([1.0, 1.0]), seed=5)))
    assert xb.dtype == torch.float32 and torch.equal(xb, torch.as_tensor(x)[yb].float() - 1)
    epochs = [sorted(sum(seq[i:i + 3], [])) for i in (0, 3, 6)]
    assert all(len(set(e)) == 9 for e in epochs) and seq[:3] != seq[3:6]  # reshuffled, no repeats
    # interrupt after 4 batches, checkpoint, resume in a fresh loader
    a = GPULoader(x, y, 3, seed=5)
    it = a.forever()
    got = [next(it)[1].tolist() for _ in range(4)]
    state = a.state_dict()
    b = GPULoader(x, y, 3, seed=5)
    b.load_state_dict(state)
    it = b.forever()
    got += [next(it)[1].tolist() for _ in range(5)]
    assert got == seq
    # eval order, keep the last partial batch
    ev = GPULoader(x, y, 4, shuffle=False, drop_last=False)
    assert [yb.tolist() for _, yb in ev] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch_size"):
        GPULoader(x, y, 0)


# --------------------------------------------------------------------------- the real mirror
@pytest.mark.slow
@needs_jpeg
def test_cifar10_jpeg_mirror_counts_means_and_cache(monkeypatch):
    first = load_cifar("cifar10", MIRROR, download=False)  # decodes once (tqdm) if not cached

    def no_decode(*args, **kwargs):
        raise AssertionError("the second load decoded the JPEGs again instead of reading the .npy cache")
    monkeypatch.setattr(cifar_images, "_decode_all", no_decode)
    d = load_cifar("cifar10", MIRROR, download=False)  # from the cache, or the line above fails
    print(f"CIFAR-10 JPEG load: first {first.load_seconds:.1f} s, second (cache) {d.load_seconds:.2f} s")
    for a in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d, a), getattr(first, a))
    assert d.source == "imagefolder" and d.description == "CIFAR-10 (JPEG copy)"
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert np.bincount(d.y_train).tolist() == [5000] * 10 and np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.classes[:3] == ["airplane", "automobile", "bird"]
    means = d.x_train.mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(means, [0.4914, 0.4822, 0.4465], atol=2e-3)
    # k.jpg in a class folder is the k-th test image of that class: compare with exact samples
    ex = np.load(MIRROR / "cifar-exact-samples" / "cifar10_test_first20_exact_foolbox.npz")
    rank = {}
    for img, lab in zip(ex["x_test"], ex["y_test"]):
        r = rank.get(int(lab), 0)
        rank[int(lab)] = r + 1
        mine = d.x_test[int(lab) * 1000 + r].transpose(1, 2, 0).astype(float)
        assert 10 * np.log10(255 ** 2 / np.mean((mine - img) ** 2)) > 22


@needs_jpeg
def test_cifar10_mirror_validation_subset_loader():
    d = load_cifar("cifar10", MIRROR, validation=True, subset=(200, 50), mean_over="train+test", download=False)
    assert len(d.x_train) == 200 and len(d.x_val) == 50 and len(d.x_test) == 50
    assert np.bincount(d.y_train).tolist() == [20] * 10
    np.testing.assert_allclose(d.mean.mean(axis=(1, 2)) / 255, [0.4914, 0.4822, 0.4465], atol=2e-3)
    xb, yb = next(iter(d.loader("train", batch_size=100)))
    assert xb.shape == (100, 3, 32, 32) and abs(xb.mean().item()) < 10
    assert len(d.loader("test", batch_size=100)) == 1


# ------------------------------------------------------- the cache and the data are verified (issue 11, part 4)
def _real_copy(dst_root: Path, sums: bool = True, per_class=(4, 2), classes=("airplane", "automobile")) -> list[str]:
    """Copy a few real JPEGs of the mirror into ``dst_root/cifar10-jpeg`` (and their SHA256SUMS lines)."""
    import shutil
    rels = [f"cifar10-jpeg/{split}/{c}/{k:04d}.jpg" for split, n in zip(("train", "test"), per_class)
            for c in classes for k in range(n)]
    for rel in rels:
        (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MIRROR / rel, dst_root / rel)
    if sums:
        wanted = set(rels)
        lines = [ln for ln in (MIRROR / "SHA256SUMS").read_text().splitlines() if ln[66:] in wanted]
        assert len(lines) == len(rels)
        (dst_root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return rels


def _decoded(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def _truth(root: Path):
    """x_train, y_train, x_test, y_test decoded here with PIL, independently of dnlib."""
    out = []
    for split in ("train", "test"):
        classes = sorted(p.name for p in (root / "cifar10-jpeg" / split).iterdir())
        files = [(k, f) for k, c in enumerate(classes) for f in sorted((root / "cifar10-jpeg" / split / c).iterdir())]
        out += [np.stack([_decoded(f) for _, f in files]), np.array([k for k, _ in files])]
    return out


def _same(d, truth):
    for a, t in zip(("x_train", "y_train", "x_test", "y_test"), truth):
        np.testing.assert_array_equal(getattr(d, a), t, err_msg=a)


def _cache_folder(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("cifar10-imagefolder-")]
    return folder


def _flip_bytes(path: Path):
    b = bytearray(path.read_bytes())
    b[-100] ^= 0xFF
    path.write_bytes(bytes(b))


def _corrupt(kind: str, cdir: Path, root: Path):
    if kind == "wrong shape":  # 5 images against the labels of all of them
        np.save(cdir / "x_train.npy", np.load(cdir / "x_train.npy")[:5])
    elif kind == "flipped bytes":
        _flip_bytes(cdir / "x_train.npy")
    elif kind == "relabelled":
        y = np.load(cdir / "y_train.npy")
        np.save(cdir / "y_train.npy", 1 - y)
    elif kind == "empty file":
        (cdir / "x_test.npy").write_bytes(b"")
    elif kind == "jpeg overwritten in place":  # same folder, same count; mtime even set back
        victim = root / "cifar10-jpeg" / "train" / "airplane" / "0001.jpg"
        st = victim.stat()
        victim.write_bytes((root / "cifar10-jpeg" / "train" / "automobile" / "0003.jpg").read_bytes())
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))


@needs_jpeg
@pytest.mark.parametrize("kind", ["wrong shape", "flipped bytes", "relabelled", "empty file",
                                  "jpeg overwritten in place"])
def test_cifar_cache_corruption_is_detected_and_rebuilt(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    _real_copy(root, sums=False)
    d = load_cifar("cifar10", root, download=False, progress=False)
    _same(d, _truth(root))
    _corrupt(kind, _cache_folder(tmp_path / "cache"), root)
    bad = {"wrong shape": "x_train.npy", "flipped bytes": "x_train.npy", "relabelled": "y_train.npy",
           "empty file": "x_test.npy"}.get(kind)
    with (pytest.warns(DataWarning, match=f"cache .*{bad}") if bad else contextlib.nullcontext()):
        d = load_cifar("cifar10", root, download=False, progress=False)
    _same(d, _truth(root))  # served fresh, not stale
    # and the cache was rewritten: a third load decodes nothing
    monkeypatch.setattr(cifar_images, "_decode_all", lambda *a, **k: pytest.fail("the repaired cache was not used"))
    _same(load_cifar("cifar10", root, download=False, progress=False), _truth(root))


@needs_jpeg
@pytest.mark.parametrize("kind", ["jpeg overwritten in place", "flipped jpeg byte", "missing jpeg", "extra image"])
def test_cifar_images_are_checked_against_sha256sums(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    _real_copy(root)
    d = load_cifar("cifar10", root, download=False, progress=False)  # the intact copy loads
    assert d.x_train.shape == (8, 3, 32, 32)
    folder = root / "cifar10-jpeg"
    victim = folder / "train" / "airplane" / "0001.jpg"
    if kind == "jpeg overwritten in place":
        _corrupt(kind, None, root)
    elif kind == "flipped jpeg byte":
        _flip_bytes(victim)
    elif kind == "missing jpeg":
        victim.unlink()
    else:
        victim = folder / "test" / "automobile" / "0099.jpg"
        victim.write_bytes((folder / "test" / "automobile" / "0000.jpg").read_bytes())
    for cache in (True, False):
        with pytest.raises(ValueError, match="SHA256SUMS") as e:
            load_cifar("cifar10", root, download=False, progress=False, cache=cache)
        assert str(victim) in str(e.value)


@needs_jpeg
def test_cifar_sha256sums_verdict_is_cached(tmp_path, monkeypatch):
    import dnlib.data.root as R
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    _real_copy(root)
    load_cifar("cifar10", root, download=False, progress=False, cache=False)
    monkeypatch.setattr(R, "hash_file", lambda *a: pytest.fail("hashed again although nothing changed"))
    load_cifar("cifar10", root, download=False, progress=False, cache=False)


def test_official_pickles_checked_against_sha256sums(tmp_path, monkeypatch):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  cifar-10-batches-py/{p.name}"
             for p in sorted(folder.iterdir())]
    (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert len(load_cifar("cifar10", tmp_path, download=False, verify=False).x_train) == 100
    victim = folder / "data_batch_3"
    b = bytearray(victim.read_bytes())
    b[len(b) // 2] ^= 0xFF  # one pixel byte: the pickle still loads, with a wrong pixel
    victim.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="SHA256SUMS") as e:
        load_cifar("cifar10", tmp_path, download=False, verify=False)
    assert str(victim) in str(e.value)
