"""Super-resolution data: sets, MATLAB luma and bicubic, the SRCNN sampler, the paper's bicubic baseline."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dnlib.data import (
    DatasetNotFoundError,
    DataWarning,
    SRCNNPatches,
    data_root,
    imresize,
    load_sr,
    luma,
    modcrop,
    rgb2ycbcr_y,
    sr_test_pair,
)
from dnlib.training.metrics import psnr, ssim


def bicubic_baseline(images, scale, border=8):
    """The paper's Bicubic row written out (dnlib.experiments.sr.evaluate_bicubic is the library's): ``uint8(up * 255)``
    of the bicubic round trip against the HR Y, mean PSNR and SSIM with a ``border`` crop."""
    ps, ss = [], []
    for img in images:
        up, hr = sr_test_pair(img, scale)
        up8 = np.clip(np.round(up.astype(np.float64) * 255.0), 0, 255)
        ps.append(psnr(up8, hr, border=border))
        ss.append(ssim(up8, hr, border=border))
    return float(np.mean(ps)), float(np.mean(ss))

MIRROR = data_root()
SR = MIRROR / "sr"
needs_sr = pytest.mark.skipif(not all((SR / f).is_dir() for f in ("Set5", "Set14", "T91", "BSDS500")),
                              reason=f"SR sets not in DNLIB_DATA={MIRROR}")
needs_selfexsr = pytest.mark.skipif(not (SR / "SelfExSR").is_dir(), reason=f"SelfExSR not in DNLIB_DATA={MIRROR}")


def test_rgb2ycbcr_y_matches_matlab_formula():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 99]]], np.uint8)
    y = rgb2ycbcr_y(img)
    assert y.dtype == np.uint8
    want = 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255
    np.testing.assert_array_equal(y, np.round(want))
    assert y[0, 0] == 16 and y[0, 1] == 235
    yf = rgb2ycbcr_y(img / 255.0)
    np.testing.assert_allclose(yf * 255, want, rtol=1e-12)
    with pytest.raises(ValueError, match="HxWx3"):
        rgb2ycbcr_y(np.zeros((4, 4), np.uint8))
    g = np.full((3, 3), 77, np.uint8)
    assert luma(g) is g  # greyscale is used as Y directly, as SRCNN's MATLAB code


def test_modcrop_and_imresize_shapes():
    x = np.random.RandomState(0).rand(37, 41)
    assert modcrop(x, 4).shape == (36, 40)
    assert imresize(x, 1 / 3).shape == (13, 14)  # ceil, as MATLAB
    assert imresize(np.zeros((255, 258)), 1 / 3).shape == (85, 86)
    u = imresize((x * 255).astype(np.uint8), 2)
    assert u.dtype == np.uint8 and u.shape == (74, 82)
    c = np.full((30, 30), 0.3)
    np.testing.assert_allclose(imresize(imresize(c, 1 / 3), 3), 0.3, atol=1e-12)  # constants survive (symmetric border)
    with pytest.raises(ValueError, match="scale"):
        imresize(x, -1)
    with pytest.raises(ValueError, match="scale"):
        modcrop(x, 0)


def test_srcnn_patches_shapes_alignment_and_resume():
    rng = np.random.RandomState(0)
    imgs = [rng.randint(0, 256, (60, 70, 3), dtype=np.uint8), rng.randint(0, 256, (50, 45), dtype=np.uint8)]
    s = SRCNNPatches(imgs, scale=3, batch_size=8, seed=1)
    x, y = s.sample()
    assert x.shape == (8, 1, 33, 33) and y.shape == (8, 1, 17, 17) and x.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    # the target is the HR centre of the input patch: it lies within the HR image at an 8-px offset
    up, hr = sr_test_pair(imgs[0], 3)
    assert up.shape == hr.shape == (60, 69) and up.dtype == np.float32 and hr.dtype == np.uint8
    state = s.state_dict()
    a = [s.sample() for _ in range(3)]
    s2 = SRCNNPatches(imgs, scale=3, batch_size=8, seed=99)
    s2.load_state_dict(state)
    b = [s2.sample() for _ in range(3)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="label_size"):
        SRCNNPatches(imgs, label_size=16)
    with pytest.raises(ValueError, match="33x33"):
        SRCNNPatches([np.zeros((20, 20), np.uint8)])


def test_srcnn_patch_target_is_centre_of_hr():
    img = np.random.RandomState(3).randint(0, 256, (40, 44), dtype=np.uint8)
    s = SRCNNPatches([img], scale=2, batch_size=4, seed=0)
    x, y = s.sample()
    lab = s.labels[0]
    for k in range(4):  # find where each target came from
        hits = [(r, c) for r in range(8, lab.shape[0] - 24) for c in range(8, lab.shape[1] - 24)
                if np.array_equal(lab[r:r + 17, c:c + 17], y[k, 0].numpy())]
        assert len(hits) == 1
        r, c = hits[0]
        np.testing.assert_array_equal(s.inputs[0][r - 8:r + 25, c - 8:c + 25], x[k, 0].numpy())


def test_load_sr_errors(tmp_path):
    with pytest.raises(ValueError, match="set_name"):
        load_sr("Set15", tmp_path)
    with pytest.raises(DatasetNotFoundError) as e:
        load_sr("BSD100", tmp_path)
    assert "BSDS500" in str(e.value) and str(tmp_path / "sr" / "BSDS500" / "val") in str(e.value)
    assert "DNLIB_DATA" in str(e.value)
    (tmp_path / "sr" / "Set5").mkdir(parents=True)
    (tmp_path / "sr" / "Set5" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png"):
        load_sr("Set5", tmp_path)


@needs_sr
def test_sr_sets_on_mirror():
    s5, s14 = load_sr("Set5", MIRROR), load_sr("set14", MIRROR)
    assert len(s5) == 5 and len(s14) == 14
    assert s14.names[2] == "bridge" and s14[2].ndim == 2  # greyscale kept as Y
    assert load_sr("Set14", MIRROR, grey="rgb")[2].shape == (512, 512, 3)
    assert all(im.dtype == np.uint8 for im in s14)
    for name, n in (("T91", 91), ("BSD100", 100), ("BSD200", 200), ("BSD200-train", 200)):
        folder = {"T91": "T91", "BSD100": "BSDS500/val", "BSD200": "BSDS500/test",
                  "BSD200-train": "BSDS500/train"}[name]
        assert len([p for p in (SR / folder).iterdir() if p.suffix in (".bmp", ".jpg")]) == n


@pytest.mark.slow
@needs_sr
@pytest.mark.parametrize("scale, paper_psnr, paper_ssim", [(3, 27.54, 0.7733), (4, 26.01, 0.7018)])
def test_bicubic_baseline_reproduces_table5_set14(scale, paper_psnr, paper_ssim):
    images = load_sr("Set14", MIRROR).images
    p8, s8 = bicubic_baseline(images, scale, border=8)  # the authors' code: fixed 8-px border
    ps, ss = bicubic_baseline(images, scale, border=scale)
    print(f"Set14 x{scale} bicubic: border 8 {p8:.3f} dB / {s8:.4f}; border {scale} {ps:.3f} dB / {ss:.4f}; "
          f"paper {paper_psnr} / {paper_ssim}")
    assert abs(p8 - paper_psnr) < 0.05 and abs(ps - paper_psnr) < 0.05
    assert abs(s8 - paper_ssim) < 0.003 and abs(ss - paper_ssim) < 0.003


@needs_selfexsr
@pytest.mark.parametrize("setname, scale", [("Set5", 3), ("Set14", 4)])
def test_imresize_against_selfexsr_interior_exact_border_is_their_edge_replication(setname, scale):
    """The SelfExSR LR files: ours is bit-exact inside the LR image's 2-px border, every difference lies in that
    border, and the HR padded by edge replication (clamp) reproduces the whole file bit-exactly: they differ from
    MATLAB's mirrored border (``imresize``'s docstring), not in the kernel or the rounding."""
    from PIL import Image
    folder = SR / "SelfExSR" / setname / f"image_SRF_{scale}"
    n = differ = 0
    paths = sorted(folder.glob("*_HR.png"))
    assert paths
    for hr_path in paths:
        hr = np.asarray(Image.open(hr_path).convert("RGB"))
        theirs = np.asarray(Image.open(str(hr_path).replace("_HR", "_LR")).convert("RGB"))
        ours = imresize(hr, 1 / scale)
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours[2:-2, 2:-2], theirs[2:-2, 2:-2])
        n, differ = n + ours.size, differ + int((ours != theirs).sum())
        m = 3                                               # 3 LR pixels = 3 * scale HR pixels, past the kernel
        clamped = imresize(np.pad(hr, ((m * scale,) * 2, (m * scale,) * 2, (0, 0)), mode="edge"), 1 / scale)
        np.testing.assert_array_equal(clamped[m:-m, m:-m], theirs)
    print(f"SelfExSR {setname} x{scale}: {differ / n:.2%} of values differ, all in the 2-px border")
    # rounded once at the end instead of after each pass, 11-15% of the values differed, interior too
    assert 0 < differ / n < 0.02


# ------------------------------------------------------- checksums and known counts (issue 11, part 4)
def _real_set5(root: Path, sums: bool = True) -> Path:
    import shutil
    shutil.copytree(SR / "Set5", root / "sr" / "Set5")
    if sums:
        lines = [ln for ln in (MIRROR / "SHA256SUMS").read_text().splitlines() if ln[66:].startswith("sr/Set5/")]
        assert len(lines) == 5
        (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return root / "sr" / "Set5"


@needs_sr
@pytest.mark.parametrize("damage", ["missing image", "changed byte", "extra image"])
def test_sr_set_checked_against_sha256sums(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _real_set5(tmp_path / "root")
    assert len(load_sr("Set5", tmp_path / "root")) == 5
    victim = folder / "head_GT.bmp"
    if damage == "missing image":
        victim.unlink()
    elif damage == "changed byte":
        b = bytearray(victim.read_bytes())
        b[-7] ^= 0x01
        victim.write_bytes(bytes(b))
    else:
        victim = folder / "head_copy.bmp"
        victim.write_bytes((folder / "head_GT.bmp").read_bytes())
    with pytest.raises(ValueError, match="SHA256SUMS") as e:
        load_sr("Set5", tmp_path / "root")
    assert str(victim) in str(e.value)


@needs_sr
def test_sr_set_without_checksums_warns_on_known_count(tmp_path, monkeypatch):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _real_set5(tmp_path / "root", sums=False)
    (folder / "head_GT.bmp").unlink()
    with pytest.warns(DataWarning, match="images 4 .standard 5."):
        assert len(load_sr("Set5", tmp_path / "root")) == 4
