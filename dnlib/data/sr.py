"""Single-image super-resolution data (PAPER.md §3.4): image sets, MATLAB-compatible luma and bicubic.

The SRCNN pipeline the paper follows works on the Y channel of MATLAB's ``rgb2ycbcr``
(:func:`rgb2ycbcr_y`, :func:`luma`), crops the image to a multiple of the scale
(:func:`modcrop`), and makes the network input by MATLAB's antialiased bicubic ``imresize`` down by
the scale and back up (:func:`imresize`: MATLAB's ``contributions`` with its symmetric
border). :class:`SRCNNPatches` draws the 33x33 input / centre 17x17 target patches of the 9-5-5
valid-convolution SRCNN on the training device; :func:`sr_test_pair` makes a whole test image's input and ground
truth. The paper's Bicubic row (scored on the same region as the models) is
:func:`dnlib.experiments.sr.evaluate_bicubic`.

Sets (folders under the data root): ``T91`` (``sr/T91``), ``Set5`` (``sr/Set5``), ``Set14``
(``sr/Set14``), ``BSD100`` (``sr/BSDS500/val``), ``BSD200`` (``sr/BSDS500/test``) and
``BSD200-train`` (``sr/BSDS500/train``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fetch import DatasetSource, find_or_fetch
from .root import check_known_sizes, check_regular_file, data_root, open_regular, verify_checksums

__all__ = ["SRSet", "load_sr", "rgb2ycbcr_y", "luma", "modcrop", "imresize", "sr_test_pair",
           "SRCNNPatches", "srcnn_pairs", "SR_SETS", "SR_SIZES"]

_NOTE = ("SR sets have no official archive with a published checksum; get them from the SRCNN "
         "authors' page (T91, Set5, Set14: https://mmlab.ie.cuhk.edu.hk/projects/SRCNN.html) and "
         "BSDS500 (https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html), "
         "laid out as described in data/README.md.")


def _src(name: str, *folders: str) -> DatasetSource:
    return DatasetSource(name=name, folders=folders, note=_NOTE)


SR_SETS = {
    "t91": _src("T91", "sr/T91", "T91"),
    "set5": _src("Set5", "sr/Set5", "Set5"),
    "set14": _src("Set14", "sr/Set14", "Set14"),
    "bsd100": _src("BSD100 (BSDS500 val)", "sr/BSDS500/val", "BSDS500/val", "sr/BSD100", "BSD100"),
    "bsd200": _src("BSD200 (BSDS500 test)", "sr/BSDS500/test", "BSDS500/test", "sr/BSD200", "BSD200"),
    "bsd200-train": _src("BSD200-train (BSDS500 train)", "sr/BSDS500/train", "BSDS500/train"),
}
_IMAGE_EXT = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
_CANON = {"t91": "T91", "set5": "Set5", "set14": "Set14", "bsd100": "BSD100", "bsd200": "BSD200",
          "bsd200-train": "BSD200-train"}
#: Number of images in each standard set, checked on every load.
SR_SIZES = {"t91": 91, "set5": 5, "set14": 14, "bsd100": 100, "bsd200": 200, "bsd200-train": 200}


@dataclass
class SRSet:
    """An SR image set: uint8 images (``HxWx3``, or ``HxW`` for greyscale files with ``grey="keep"``) and names."""

    name: str
    images: list[np.ndarray]
    names: list[str]
    path: Path

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.images)


def _read_image(path: Path, grey: str) -> np.ndarray:
    from PIL import Image
    f = open_regular(path)  # a FIFO or folder raises NotRegularFileError naming it, unwrapped
    try:
        with f, Image.open(f) as im:
            arr = np.asarray(im.convert("L")) if im.mode in ("L", "1", "I;16", "I") else np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ValueError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
    if arr.ndim == 2 and grey == "rgb":
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def load_sr(set_name: str, root: str | os.PathLike | None = None, *, grey: str = "keep") -> SRSet:
    """Load an SR image set as uint8 numpy images, sorted by file name.

    Args:
        set_name: ``"T91"``, ``"Set5"``, ``"Set14"``, ``"BSD100"`` (BSDS500 val), ``"BSD200"``
            (BSDS500 test) or ``"BSD200-train"`` (BSDS500 train); case-insensitive.
        root: data root; default :func:`~dnlib.data.root.data_root` (``$DNLIB_DATA``, else
            ``../shared/data`` beside the clone, else ``data/``).
        grey: ``"keep"`` returns greyscale files (Set14 ``bridge``) as ``HxW``, whose luma is the
            grey value itself, as SRCNN's MATLAB code treats them (this reproduces the paper's
            bicubic row); ``"rgb"`` replicates them to ``HxWx3``.

    The images are checked against the data root's ``SHA256SUMS`` when it lists the set (once; the
    verdict is cached until a file changes): a changed, missing or unlisted image raises
    :class:`~dnlib.data.root.ChecksumError` naming it. A set whose image count differs from
    :data:`SR_SIZES` raises a :class:`~dnlib.data.root.DataWarning`. An image file that is not a regular file
    (a FIFO, a device, a folder; symlinks are resolved) raises :class:`~dnlib.data.root.NotRegularFileError`
    naming it, before anything is opened.
    """
    key = set_name.lower().replace("_", "-")
    if key not in SR_SETS:
        raise ValueError(f"set_name must be one of {list(_CANON.values())}, got {set_name!r}")
    if grey not in ("keep", "rgb"):
        raise ValueError(f"grey must be 'keep' or 'rgb', got {grey!r}")
    folder = find_or_fetch(SR_SETS[key], root, download=False)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT)
    for p in files:
        check_regular_file(p)  # a FIFO would block the hashing or the decoding below
    verify_checksums(data_root(root), folder, files, what=f"SR set {_CANON[key]}",
                     accept=lambda n: n.lower().endswith(_IMAGE_EXT))
    check_known_sizes(f"SR set {_CANON[key]}", folder, {"images": len(files)}, {"images": SR_SIZES[key]})
    if not files:
        raise ValueError(f"SR set {_CANON[key]}: no images ({', '.join(_IMAGE_EXT)}) in {folder}")
    return SRSet(name=_CANON[key], images=[_read_image(p, grey) for p in files],
                 names=[p.stem for p in files], path=folder)


def rgb2ycbcr_y(img: np.ndarray) -> np.ndarray:
    """Y of MATLAB's ``rgb2ycbcr``: ``16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B in [0, 1].

    As MATLAB, the output class follows the input: uint8 ``HxWx3`` gives uint8 Y in [16, 235]
    (rounded); float input in [0, 1] gives float Y in [16/255, 235/255].
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be HxWx3 RGB, got shape {img.shape}")
    if img.dtype == np.uint8:
        x = img.astype(np.float64) / 255.0
        y = 16.0 + x @ np.array([65.481, 128.553, 24.966])
        return np.clip(np.round(y), 0, 255).astype(np.uint8)
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"img must be uint8 or float in [0, 1], got dtype {img.dtype}")
    return (16.0 + img.astype(np.float64) @ np.array([65.481, 128.553, 24.966])) / 255.0


def luma(img: np.ndarray) -> np.ndarray:
    """The Y channel SRCNN works on: :func:`rgb2ycbcr_y` of an RGB image, a greyscale ``HxW`` image unchanged."""
    img = np.asarray(img)
    if img.ndim == 2:
        return img
    return rgb2ycbcr_y(img)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right of ``img`` so that height and width are multiples of ``scale`` (MATLAB ``modcrop``)."""
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _out_size(n: int, s: float) -> int:
    v = n * s
    return int(round(v)) if abs(v - round(v)) < 1e-6 else math.ceil(v)


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (a = -0.5)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _contributions(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``imresize``'s ``contributions``: normalized weights ``(n_out, P)`` and 0-based input indices
    ``(n_out, P)`` of the bicubic kernel, widened by ``1/scale`` when shrinking (antialiasing), with the border
    mirrored (``[1:n, n:-1:1]``). Output pixel ``x`` (1-based) sits at input ``x/scale + 0.5(1 - 1/scale)``."""
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    idx = np.floor(u - width / 2)[:, None] + np.arange(math.ceil(width) + 2)[None, :]
    d = u[:, None] - idx
    w = scale * _cubic(scale * d) if scale < 1 else _cubic(d)
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    return w, mirror[(idx.astype(np.int64) - 1) % (2 * n_in)]


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB-compatible bicubic ``imresize(img, scale)`` (antialiased when shrinking, symmetric border).

    Resizes the first two axes of an ``HxW`` or ``HxWxC`` array to ``ceil(scale * size)``, with MATLAB's
    ``contributions`` (output pixel ``x`` at input ``x/scale + 0.5(1 - 1/scale)`` for the given ``scale``; rows, then
    columns), also when ``scale * size`` is not a whole number (resize-right, used before, centres its grid
    on the image instead, which agrees with MATLAB only for whole numbers).
    uint8 input stays uint8 after each pass, as MATLAB's (its per-dimension ``imresizemex`` returns the input's
    class): each pass is computed in float64, then rounded half away from zero (MATLAB's ``round``) and clipped to
    0..255. Against the SelfExSR LR files of Set5 and Set14 (x2, x3, x4; one rounding at the end left 11-15% of
    values different) the interior is bit-exact; every difference lies in the LR image's 2-px border: 0.6-1.4% of
    all values differ there, by up to 7 grey levels on Set5 and 11 on Set14 (0.07-0.37% by more than one). The cause
    is the border rule: those files were made with the edge pixel replicated (clamp), which matches them bit-exactly
    (``imresize`` of the HR padded with ``np.pad(mode="edge")``, tests/test_data_sr.py), whereas this function mirrors
    as MATLAB's ``imresize.m`` (its ``contributions``: ``aux = [1:n, n:-1:1]``) and so reproduces the paper's
    Bicubic rows. Float input stays float64 and is not clipped (the SRCNN pipeline resizes floats).
    """
    img = np.asarray(img)
    if not (isinstance(scale, (int, float, np.floating, np.integer)) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if img.ndim not in (2, 3):
        raise ValueError(f"img must be HxW or HxWxC, got shape {img.shape}")
    is_u8 = img.dtype == np.uint8
    out = img.astype(np.float64)
    for axis in (0, 1):
        w, idx = _contributions(img.shape[axis], _out_size(img.shape[axis], scale), float(scale))
        g = np.moveaxis(out, axis, 0)[idx]                                  # (n_out, P, ...)
        out = np.moveaxis((w.reshape(w.shape + (1,) * (g.ndim - 2)) * g).sum(axis=1), 0, axis)
        if is_u8:
            out = np.clip(np.floor(out + 0.5), 0, 255)
    return out.astype(np.uint8) if is_u8 else out


def sr_test_pair(img: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole test image's network input and ground truth, SRCNN-style.

    Returns ``(lr_up, hr)``: ``hr`` is the uint8 Y of ``modcrop(img, scale)``; ``lr_up`` is
    float32 Y in [0, 1] scale (``im2double``), bicubic-downsampled by ``scale`` and upsampled back
    to ``hr``'s size (not clipped, not rounded).
    """
    hr = modcrop(luma(img), scale)
    if hr.dtype != np.uint8:
        raise ValueError(f"img must be uint8, got dtype {hr.dtype}")
    lr = imresize(hr.astype(np.float64) / 255.0, 1.0 / scale)
    up = imresize(lr, scale)
    if up.shape != hr.shape:  # pragma: no cover - guarded by modcrop and _out_size
        raise RuntimeError(f"bicubic round trip changed the shape {hr.shape} -> {up.shape}")
    return up.astype(np.float32), hr


def srcnn_pairs(images: Sequence[np.ndarray], scale: int = 3, input_size: int = 33) -> tuple[list, list]:
    """The SRCNN training pairs of ``images``: ``(inputs, labels)``, float32 ``HxW`` in [0, 1]: the bicubic
    down-and-up Y (:func:`sr_test_pair`) and the HR Y / 255, one pair per image at least ``input_size`` square."""
    if not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an int >= 2, got {scale!r}")
    inputs, labels = [], []
    for img in images:
        up, hr = sr_test_pair(img, scale)
        if min(hr.shape) >= input_size:
            inputs.append(up)
            labels.append(hr.astype(np.float32) / 255.0)
    if not inputs:
        raise ValueError(f"no image is at least {input_size}x{input_size} after modcrop")
    return inputs, labels


class SRCNNPatches:
    """Endless random SRCNN batches drawn on ``device``: bicubic-degraded Y inputs ``x`` ``(B, 1, 33, 33)``, HR Y
    centres ``y`` ``(B, 1, 17, 17)``; the one SR batch pipeline (what :mod:`dnlib.experiments.sr` trains on).

    ``SRCNNPatches(images, scale)`` turns each image into the SRCNN pair once (:func:`srcnn_pairs`: Y via
    :func:`luma`, ``modcrop``, ``im2double``, bicubic down by ``scale`` and back up);
    :meth:`from_pairs` takes pairs made before (cached ones). The pairs are padded into one tensor on the device;
    each batch draws an image (one per batch with ``per_image=True``, as the authors' code; else one per patch)
    and uniformly random top-left corners on the stride-1 grid; the target is the centre ``label_size`` crop of
    the HR patch (8 px each side for 33 -> 17, the shrinkage of SRCNN's 9-5-5 valid convolutions). The draws
    come from a seeded :class:`torch.Generator` on the CPU (the same stream on every device), ``block`` batches
    at a time in one host-to-device copy, so a GPU step never waits for Python. :meth:`state_dict` /
    :meth:`load_state_dict` resume the exact sequence. Iterating yields batches; :meth:`sample` draws one.
    """

    def __init__(self, images: Sequence[np.ndarray], scale: int = 3, *, batch_size: int = 100,
                 input_size: int = 33, label_size: int = 17, per_image: bool = True, seed: int = 0,
                 device=None, block: int = 256) -> None:
        _check_sizes(input_size, label_size)
        inputs, labels = srcnn_pairs(images, scale, input_size)
        self._setup(inputs, labels, batch_size, per_image, input_size, label_size, seed, device, block)
        self.scale = scale

    @classmethod
    def from_pairs(cls, inputs: Sequence[np.ndarray], labels: Sequence[np.ndarray], batch_size: int = 100, *,
                   per_image: bool = True, input_size: int = 33, label_size: int = 17, seed: int = 0, device=None,
                   block: int = 256) -> SRCNNPatches:
        """The sampler of pairs made before (``labels`` in [0, 1], the same shapes as ``inputs``); images smaller
        than ``input_size`` are skipped."""
        _check_sizes(input_size, label_size)
        if not len(inputs) or len(inputs) != len(labels):
            raise ValueError(f"inputs, labels: need as many of each, at least one; got {len(inputs)}, {len(labels)}")
        keep = [i for i, a in enumerate(inputs) if min(a.shape) >= input_size]
        if not keep:
            raise ValueError(f"no image is at least {input_size}x{input_size}")
        self = cls.__new__(cls)
        self._setup([inputs[i] for i in keep], [labels[i] for i in keep], batch_size, per_image, input_size,
                    label_size, seed, device, block)
        self.scale = None
        return self

    def _setup(self, inputs, labels, batch_size, per_image, input_size, label_size, seed, device, block) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        self.inputs, self.labels = list(inputs), list(labels)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size, self.per_image, self.block = batch_size, per_image, block
        self.input_size, self.label_size = input_size, label_size
        hmax = max(a.shape[0] for a in inputs)
        wmax = max(a.shape[1] for a in inputs)
        x = torch.zeros(len(inputs), hmax, wmax)
        y = torch.zeros(len(inputs), hmax, wmax)
        for k, (a, b) in enumerate(zip(inputs, labels)):
            h, w = a.shape
            x[k, :h, :w] = torch.from_numpy(np.asarray(a, np.float32))
            y[k, :h, :w] = torch.from_numpy(np.asarray(b, np.float32))
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.sizes = torch.tensor([a.shape for a in inputs], dtype=torch.long)      # (n, 2), CPU
        off = (input_size - label_size) // 2
        self._ar_in = torch.arange(input_size, device=self.device)
        self._ar_lab = torch.arange(off, off + label_size, device=self.device)
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self._draw_block()

    def __len__(self) -> int:
        """Number of usable images."""
        return len(self.inputs)

    def _draw_block(self) -> None:
        """Draw the images and corners of the next ``block`` batches on the CPU and move them in one copy."""
        k, b, p, n = self.block, self.batch_size, self.input_size, len(self)
        self._block_state = self.gen.get_state()
        if self.per_image:
            img = torch.randint(n, (k, 1), generator=self.gen).expand(k, b)
        else:
            img = torch.randint(n, (k, b), generator=self.gen)
        room = self.sizes[img] - p + 1                                   # (k, b, 2) valid corner counts
        corner = (torch.rand(k, b, 2, generator=self.gen) * room).long().clamp_max(room - 1)
        self._block = torch.cat([img.unsqueeze(-1), corner], -1).to(self.device)   # (k, b, 3)
        self._pos = 0

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch ``(x, y)`` of float32 tensors on ``device``."""
        if self._pos >= self.block:
            self._draw_block()
        draw = self._block[self._pos]
        self._pos += 1
        b = self.batch_size
        i, rows, cols = (draw[:, j].view(b, 1, 1) for j in range(3))
        x = self.x[i, rows + self._ar_in.view(1, -1, 1), cols + self._ar_in.view(1, 1, -1)]
        y = self.y[i, rows + self._ar_lab.view(1, -1, 1), cols + self._ar_lab.view(1, 1, -1)]
        return x.unsqueeze(1), y.unsqueeze(1)

    __next__ = sample

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def state_dict(self) -> dict:
        """Where the stream stands (the generator state of the current block and the position in it)."""
        return {"seed": self.seed, "block_state": self._block_state, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by :meth:`state_dict`."""
        self.seed = state["seed"]
        self.gen.set_state(state["block_state"])
        self._draw_block()
        self._pos = state["pos"]


def _check_sizes(input_size, label_size) -> None:
    if not (isinstance(label_size, int) and isinstance(input_size, int)
            and 0 < label_size <= input_size and (input_size - label_size) % 2 == 0):
        raise ValueError(f"need 0 < label_size <= input_size with an even difference, got "
                         f"input_size={input_size!r}, label_size={label_size!r}")
