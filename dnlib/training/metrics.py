"""Image-quality metrics for super-resolution, with the paper's settings (PAPER.md §3.4).

Both metrics take two single-channel images (the Y channel) of the same ``HxW`` shape as numpy
arrays or tensors, compute in float64 numpy, and first drop a ``border``-pixel frame on every side
(8 px in the authors' code: the shrinkage of SRCNN's valid convolutions).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["psnr", "ssim"]


def _as_f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _pair(a, b, border: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    ta, tb = _as_f64(a), _as_f64(b)
    if ta.shape != tb.shape:
        raise ValueError(f"{name}: a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    if ta.ndim != 2:
        raise ValueError(f"{name}: expected single-channel HxW images (the Y channel), got shape {tuple(ta.shape)}")
    if not isinstance(border, int) or border < 0:
        raise ValueError(f"{name}: border must be a non-negative int, got {border!r}")
    if border:
        if min(ta.shape) <= 2 * border:
            raise ValueError(f"{name}: border={border} leaves nothing of a {tuple(ta.shape)} image")
        ta, tb = ta[border:-border, border:-border], tb[border:-border, border:-border]
    return ta, tb


def psnr(a, b, border: int = 8, max_val: float = 255.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(max_val^2 / MSE)`` in dB, ``border`` px dropped; ``inf`` if equal."""
    if not max_val > 0:
        raise ValueError(f"psnr: max_val must be positive, got {max_val!r}")
    ta, tb = _pair(a, b, border, "psnr")
    mse = float(np.mean((ta - tb) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(max_val ** 2 / mse)


def _gaussian_1d(size: int, sigma: float) -> list[float]:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).tolist()


def _filter_valid(a: np.ndarray, g: list[float], axis: int) -> np.ndarray:
    n = a.shape[axis] - len(g) + 1
    out = np.zeros(a.shape[:axis] + (n,) + a.shape[axis + 1:])
    tmp = np.empty_like(out)
    index = [slice(None)] * a.ndim
    for k, gk in enumerate(g):
        index[axis] = slice(k, k + n)
        np.multiply(a[tuple(index)], gk, out=tmp)
        out += tmp
    return out


def ssim(a, b, border: int = 8, max_val: float = 255.0, *, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window, ``border`` px dropped.

    Defaults are the paper's: 11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, L = 255. Local
    statistics use the window weights (population covariance); the SSIM map is computed where the
    window fits inside the image ("valid", as Wang's ``ssim_index.m``) and averaged.
    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)``.
    """
    ta, tb = _pair(a, b, border, "ssim")
    if min(ta.shape) < win_size:
        raise ValueError(f"ssim: image {tuple(ta.shape)} (after border={border}) is smaller than the "
                         f"{win_size}x{win_size} window")
    g = _gaussian_1d(win_size, sigma)
    x, y = ta, tb
    # Five local Gaussian means at once; the 2-D window is separable, so filter columns then rows
    # ("valid") as weighted sums of shifted slices, in numpy (torch's CPU threads add nothing here).
    maps = np.stack([x, y, x * x, y * y, x * y])
    mu_x, mu_y, exx, eyy, exy = _filter_valid(_filter_valid(maps, g, axis=1), g, axis=2)
    sxx, syy, sxy = exx - mu_x ** 2, eyy - mu_y ** 2, exy - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(smap.mean())
