"""The activation explorer's inputs: the real images it shows, their preprocessing, and its first conv layer.

:func:`explorer_images` gives CIFAR-10 test images through :mod:`dnlib.data` when the data root has them, else
crops of scikit-image's bundled photos (a loud fallback); :func:`preprocess` makes them what the first layer sees
(:data:`INPUTS`); :func:`first_conv` is that layer (5 x 5, 32 filters, like the paper's CIFAR CNN, PAPER.md §3.1),
random with a fixed seed or loaded from a checkpoint. Floor: notebook (the explorer of :mod:`dnlib.notebook.widgets`
is built from these).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["explorer_images", "preprocess", "first_conv", "INPUTS", "CIFAR_SAMPLES", "SKIMAGE_PHOTOS"]

CIFAR_SAMPLES = Path("cifar-exact-samples", "cifar10_test_first20_exact_foolbox.npz")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
#: What the first layer sees (:func:`preprocess`): each colour channel standardized over the batch, or the raw
#: pixel values / 255 in [0, 1], not centred (what torchvision's ``ToTensor`` gives).
INPUTS = ("standardized", "raw")


def _cifar_samples(n: int, root) -> tuple[np.ndarray, str]:
    from ..data import data_root
    from ..data.root import open_regular

    path = data_root(root) / CIFAR_SAMPLES
    with open_regular(path) as f, np.load(f) as d:     # a FIFO or device in the data root is refused, not read
        x = d["x_test"]
        _enough(n, len(x), f"the CIFAR-10 exact samples ({path}) hold", "images", "or source 'cifar' for more")
        x = x[:n].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), f"CIFAR-10 test images 0-{len(x) - 1} (official, lossless)"


def _cifar(n: int, root) -> tuple[np.ndarray, str]:
    from ..data import load_cifar

    data = load_cifar("cifar10", root, download=False, progress=False)
    x = getattr(data, "x_test", None)
    x = data.test_x if x is None else x
    desc = getattr(data, "description", f"CIFAR-10 ({data.source})")
    _enough(n, len(x), f"{desc} has", "test images", "")
    return np.ascontiguousarray(x[:n]), f"{desc} test images 0-{n - 1}"


def _enough(n: int, held: int, what: str, unit: str, hint: str) -> None:
    """Refuse ``n`` images from a source that holds fewer (it would hand back ``held`` and say nothing)."""
    if n > held:
        raise ValueError(f"n = {n}: {what} only {held} {unit}; ask for at most {held}{', ' + hint if hint else ''}")


def _skimage_crops(n: int, seed: int, size: int = 32, side: int = 96) -> tuple[np.ndarray, str]:
    import skimage.data

    photos, names = [], []
    for name in SKIMAGE_PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo that needs a download, or an older scikit-image
            continue
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        t = torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1).float().unsqueeze(0)
        scale = side / min(t.shape[-2:])  # shrink so a 32 x 32 crop holds an object part, like CIFAR
        t = torch.nn.functional.interpolate(t, scale_factor=scale, mode="area" if scale < 1 else "bilinear")
        photos.append(t[0].round().clamp(0, 255).to(torch.uint8))
        names.append(name)
    if not photos:
        raise RuntimeError("no scikit-image photo could be loaded")
    g = torch.Generator().manual_seed(seed)
    crops = []
    for k in range(n):
        p = photos[k % len(photos)]
        i = int(torch.randint(0, p.shape[1] - size + 1, (1,), generator=g))
        j = int(torch.randint(0, p.shape[2] - size + 1, (1,), generator=g))
        crops.append(p[:, i:i + size, j:j + size])
    return torch.stack(crops).numpy(), f"{n} crops of scikit-image photos ({', '.join(names)}), seed {seed}"


def explorer_images(n: int = 16, source: str = "auto", seed: int = 0, root=None) -> tuple[torch.Tensor, str]:
    """``n`` real 32 x 32 RGB images as a uint8 ``(n, 3, 32, 32)`` tensor, and a description of where from.

    ``source``:
      ``"cifar-samples"``: the first ``n`` of the 20 official CIFAR-10 test images (lossless, in the data root);
      ``"cifar"``: the first ``n`` test images of :func:`dnlib.data.load_cifar` (decoding the JPEG copy takes
      ~40 s the first time, then it is cached);
      ``"skimage"``: seeded 32 x 32 crops of scikit-image's bundled photos (always available);
      ``"auto"`` (default): the CIFAR samples when ``n <= 20``, else CIFAR, falling back to scikit-image
      when the data is absent or fails to load. A fallback is loud: a :class:`dnlib.data.DataWarning`
      (shown every time) names what was not found and where it looked, and the description starts
      with ``FALLBACK``.

    More images than a source holds (21 of the samples, 10,001 of CIFAR-10's test set) are refused (``ValueError``;
    with ``"auto"``, a fallback to the next source, as loud as above).
    """
    if source not in ("auto", "cifar", "cifar-samples", "skimage"):
        raise ValueError(f"source must be 'auto', 'cifar', 'cifar-samples' or 'skimage', got {source!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tries = {"auto": (["cifar-samples"] if n <= 20 else []) + ["cifar", "skimage"],
             "cifar": ["cifar"], "cifar-samples": ["cifar-samples"], "skimage": ["skimage"]}[source]
    errors = []
    for kind in tries:
        try:
            if kind == "cifar-samples":
                x, desc = _cifar_samples(n, root)
            elif kind == "cifar":
                x, desc = _cifar(n, root)
            else:
                x, desc = _skimage_crops(n, seed)
            if errors:
                desc = _fallback_notice(errors, desc, root)
            return torch.from_numpy(x), desc
        except Exception as exc:  # missing data, data layer absent, decode error
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            if source != "auto":
                raise
    raise RuntimeError("no images could be loaded:\n" + "\n".join(errors))


def _fallback_notice(errors: list[str], desc: str, root) -> str:
    """Warn (every time, visibly in a notebook's output) that ``desc`` replaces the images that failed; return the new
    desc."""
    import warnings

    from ..data import DataWarning, data_root

    where = data_root(root)
    msg = (f"explorer_images fell back to {desc}, because the preferred images could not be loaded:\n  "
           + "\n  ".join(errors)
           + f"\nData root: {where} (root=, else $DNLIB_DATA, else ../shared/data beside the clone, else data/). "
             "Every number computed from these images differs from a run on CIFAR-10; point DNLIB_DATA at the "
             "data folder (data/README.md) to use CIFAR-10.")
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.warn(msg, DataWarning, stacklevel=3)
    return f"FALLBACK (CIFAR-10 not found under {where}): {desc}"


def preprocess(images: torch.Tensor, inputs: str = "standardized") -> torch.Tensor:
    """uint8 images -> float32: with ``inputs="standardized"`` each colour channel standardized over the batch (zero
    mean, unit std); with ``"raw"`` the pixel values / 255 in [0, 1], not centred."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    x = torch.as_tensor(images).float() / 255.0
    if inputs == "raw":
        return x
    mean = x.mean((0, 2, 3), keepdim=True)
    std = x.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def _find_conv_weight(obj, prefix=""):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if torch.is_tensor(value) and value.dim() == 4 and value.shape[1] == 3:
                bias = obj.get(key[:-len("weight")] + "bias") if key.endswith("weight") else None
                return f"{prefix}{key}", value, bias
            if isinstance(value, dict):
                found = _find_conv_weight(value, f"{prefix}{key}.")
                if found:
                    return found
    return None


def _stacked_seeds(state) -> list | None:
    """The seeds of a stacked group's checkpoint (:mod:`dnlib.experiments.stacked`: ``identity.run.seeds``, one batch
    state per copy in ``batches.copies``) when it holds more than one copy, else None."""
    if not isinstance(state, dict):
        return None
    run = state.get("identity", {}).get("run", {}) if isinstance(state.get("identity"), dict) else {}
    seeds = run.get("seeds") if isinstance(run, dict) else None
    copies = state.get("batches", {}).get("copies") if isinstance(state.get("batches"), dict) else None
    if isinstance(seeds, (list, tuple)) and len(seeds) > 1:
        return list(seeds)
    if isinstance(copies, (list, tuple)) and len(copies) > 1:
        return [c.get("seed") if isinstance(c, dict) else None for c in copies]
    return None


def first_conv(checkpoint: str | None = None, seed: int = 0, out_channels: int = 32, kernel_size: int = 5) -> nn.Conv2d:
    """The explorer's first layer: ``Conv2d(3, 32, 5, padding=2)`` as in the paper's CIFAR CNN.

    With a ``checkpoint`` path (a ``torch.save``'d state dict, possibly nested under e.g. ``"model"``), the
    first 4-D weight with 3 input channels and its bias are used; a stacked group's checkpoint (several seeds' models
    packed in one, :mod:`dnlib.experiments.stacked`) is refused. Otherwise random filters with a fixed seed:
    Gaussian weights, each filter scaled to unit L2 norm, zero bias (``checkpoint`` None).
    """
    if checkpoint is not None and not str(checkpoint).strip():
        raise ValueError(f"checkpoint: a path to a saved state dict, or None for random filters; got {checkpoint!r}")
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        found = _find_conv_weight(state)
        if found is None:
            raise ValueError(f"checkpoint {checkpoint!r}: no conv weight with 3 input channels found")
        _, weight, bias = found
        seeds = _stacked_seeds(state)
        if seeds is not None:
            raise ValueError(f"checkpoint {checkpoint!r} is a stacked group's ({len(seeds)} copies, seeds {seeds}): "
                             f"its first conv {tuple(weight.shape)} packs the copies' filters side by side, not one "
                             f"model's layer; first_conv takes the checkpoint of one model (a run of one seed)")
        conv = nn.Conv2d(3, weight.shape[0], weight.shape[-1], padding=weight.shape[-1] // 2, bias=True)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias if bias is not None else torch.zeros(weight.shape[0]))
        return conv
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, out_channels, kernel_size, padding=kernel_size // 2)
    with torch.no_grad():
        w = torch.randn(conv.weight.shape, generator=g)
        conv.weight.copy_(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        conv.bias.zero_()
    return conv
