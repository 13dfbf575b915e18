"""Silent data defects: each test computes the expected data with a naive reference written here."""

import math

import numpy as np
import pytest

from dnlib.data import data_root, imresize, load_sr, luma

MIRROR = data_root()


# ------------------------------------------------------------------- MATLAB imresize, written out naively
def _matlab_cubic(x: float) -> float:
    a = abs(x)
    if a <= 1:
        return 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    if a <= 2:
        return -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return 0.0


def _matlab_resize_1d(v: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(v, scale, 'bicubic')`` along one axis, one output sample at a time (imresize.m's
    ``contributions``: ``u = x/scale + 0.5*(1 - 1/scale)`` in 1-based coordinates, the kernel widened by 1/scale
    when shrinking, weights normalized, indices mirrored ``[1:n, n:-1:1]``); output length ``ceil(scale * n)``."""
    n = len(v)
    width = 4.0 / scale if scale < 1 else 4.0
    out = []
    for x in range(1, math.ceil(n * scale - 1e-9) + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        js = range(left, left + math.ceil(width) + 2)
        ws = [scale * _matlab_cubic(scale * (u - j)) if scale < 1 else _matlab_cubic(u - j) for j in js]
        total = sum(ws)
        acc = 0.0
        for j, w in zip(js, ws):
            k = (j - 1) % (2 * n)                 # mirror: 1..n, n..1, 1..n, ...
            acc += w / total * v[k if k < n else 2 * n - 1 - k]
        out.append(acc)
    return np.array(out)


def _matlab_imresize(img: np.ndarray, scale: float, uint8: bool = False) -> np.ndarray:
    """Rows, then columns; ``uint8``: each pass rounded half away from zero and clipped to uint8, as MATLAB keeps the
    input's class after each dimension."""
    keep = (lambda a: np.clip(np.floor(a + 0.5), 0, 255)) if uint8 else (lambda a: a)
    rows = keep(np.stack([_matlab_resize_1d(img[:, c], scale) for c in range(img.shape[1])], axis=1))
    return keep(np.stack([_matlab_resize_1d(rows[r], scale) for r in range(rows.shape[0])], axis=0))


@pytest.mark.parametrize("shape", [(36, 48), (37, 41), (33, 50), (22, 25)])
@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3])
def test_imresize_is_matlab_for_sizes_that_are_not_multiples_of_the_factor(shape, scale):
    """imresize promises MATLAB's bicubic imresize(img, scale) for any size (output ceil(scale * size)). MATLAB maps
    output pixel x to input u = x/scale + 0.5(1 - 1/scale) with the given scale; resize-right centres its grid on the
    image instead, which is the same only when scale * size is a whole number: for 37 rows at 1/3 the result was
    shifted by a whole input pixel (max error 0.26 on [0, 1] data)."""
    x = np.random.RandomState(sum(shape)).rand(*shape)
    want = _matlab_imresize(x, scale)
    got = imresize(x, scale)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.skipif(not (MIRROR / "sr" / "Set5").is_dir(), reason=f"Set5 not in DNLIB_DATA={MIRROR}")
def test_imresize_of_a_real_image_without_modcrop_is_matlab():
    """A real Y channel (Set5 'bird', 288x288) cropped to 50x61 and shrunk by 3 without modcrop, also as uint8."""
    y = luma(load_sr("Set5", MIRROR)[1])[100:150, 100:161]
    want = _matlab_imresize(y.astype(np.float64), 1 / 3)
    np.testing.assert_allclose(imresize(y.astype(np.float64), 1 / 3), want, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(imresize(y, 1 / 3), _matlab_imresize(y.astype(np.float64), 1 / 3, uint8=True))


# ------------------------------------------------------------------- CIFAR image folder: labels of the class folders
@pytest.mark.skipif(not (MIRROR / "cifar10-jpeg" / "train").is_dir(),
                    reason=f"CIFAR-10 JPEGs not in DNLIB_DATA={MIRROR}")
@pytest.mark.parametrize("stray", [".ipynb_checkpoints", ".Trash-1000"])
def test_hidden_folders_beside_the_class_folders_do_not_shift_the_labels(tmp_path, monkeypatch, stray):
    """An empty hidden folder in train/ and test/ (Jupyter's checkpoints, a desktop's trash) became class 0 with no
    images, so every real class got the id one higher than its sorted name says (airplane 1, not 0) and the
    dataset 3 classes instead of 2, silently. Hidden folders are not classes."""
    import shutil

    from PIL import Image

    from dnlib.data import load_cifar
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    src, dst = MIRROR / "cifar10-jpeg", tmp_path / "cifar10-jpeg"
    want = {}
    for split, n in (("train", 3), ("test", 2)):
        (dst / split / stray).mkdir(parents=True)
        xs, ys = [], []
        for label, c in enumerate(["airplane", "automobile"]):       # sorted visible names give the ids
            (dst / split / c).mkdir()
            for k in range(n):
                shutil.copy(src / split / c / f"{k:04d}.jpg", dst / split / c / f"{k:04d}.jpg")
                with Image.open(dst / split / c / f"{k:04d}.jpg") as im:
                    xs.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
                ys.append(label)
        want[split] = (np.stack(xs), np.array(ys))
    d = load_cifar("cifar10", tmp_path, source="imagefolder", progress=False)
    assert d.classes == ["airplane", "automobile"]
    for split in ("train", "test"):
        x, y = d.split(split)
        np.testing.assert_array_equal(y, want[split][1])
        np.testing.assert_array_equal(x, want[split][0])


def test_an_empty_class_folder_is_refused_naming_it(tmp_path, monkeypatch):
    """A class folder with no images would be a class with no examples that shifts the ids of the classes after it."""
    from PIL import Image

    from dnlib.data import load_cifar
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for c in ("aaa_empty", "cat", "dog"):
            (tmp_path / "cifar10-jpeg" / split / c).mkdir(parents=True)
            if c != "aaa_empty":
                Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cifar10-jpeg" / split / c / "0.png")
    with pytest.raises(ValueError, match="aaa_empty"):
        load_cifar("cifar10", tmp_path, source="imagefolder", progress=False)
