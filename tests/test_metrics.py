"""PSNR and SSIM with the paper's settings."""

import math

import numpy as np
import pytest
import torch

from dnlib.training.metrics import psnr, ssim


def test_psnr_identical_is_inf():
    a = np.random.RandomState(0).randint(0, 256, (32, 32)).astype(np.uint8)
    assert psnr(a, a) == math.inf


def test_psnr_closed_form_known_perturbation():
    a = np.random.RandomState(0).randint(10, 240, (40, 50)).astype(np.float64)
    b = a.copy()
    b[::2] += 3  # even rows off by 3: inside the 8-px border, 12 of 24 rows, so MSE = 9 / 2
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 4.5), rel=1e-12)
    assert psnr(a, a + 5, border=0) == pytest.approx(10 * math.log10(255 ** 2 / 25), rel=1e-12)
    assert psnr(a / 255, (a + 5) / 255, border=0, max_val=1.0) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    # border excludes the frame: a change there is invisible
    c = a.copy()
    c[:8] = 0
    assert psnr(a, c, border=8) == math.inf
    assert psnr(torch.as_tensor(a), torch.as_tensor(a + 5), border=0) == pytest.approx(psnr(a, a + 5, border=0))


@pytest.mark.parametrize("border", [0, 8])
def test_ssim_matches_skimage(border):
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.RandomState(1)
    a = rng.randint(0, 256, (64, 80)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    sl = (slice(border, -border), slice(border, -border)) if border else (slice(None), slice(None))
    ref = skm.structural_similarity(a[sl], b[sl], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255)
    assert ssim(a, b, border=border) == pytest.approx(ref, abs=1e-7)
    assert ssim(a, a, border=border) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_bad_arguments(fn):
    a = np.zeros((30, 30))
    with pytest.raises(ValueError, match="same shape"):
        fn(a, np.zeros((30, 31)))
    with pytest.raises(ValueError, match="HxW"):
        fn(np.zeros((30, 30, 3)), np.zeros((30, 30, 3)))
    with pytest.raises(ValueError, match="border"):
        fn(a, a, border=15)
    with pytest.raises(ValueError, match="border"):
        fn(a, a, border=-1)
