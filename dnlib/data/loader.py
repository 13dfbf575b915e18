"""A whole-dataset-on-device batch iterator with seeded per-epoch reshuffling and resumable state.

CIFAR is small enough (60,000 x 3 x 32 x 32 uint8 = 184 MB) to live on the GPU; gathering a batch
there is far cheaper than a DataLoader with workers. :class:`GPULoader` keeps the images as uint8 on
``device``, and each batch is gathered, cast to float32 and mean-subtracted on the device.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..train import TensorBatches

__all__ = ["GPULoader"]


def _as_tensor(a, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
    return t if dtype is None else t.to(dtype)


class GPULoader(TensorBatches):
    """Iterate over ``(x, y)`` batches of an in-memory dataset kept on ``device``.

    A :class:`~dnlib.train.TensorBatches` (the project's one resumable batch stream: the order of epoch ``e``
    depends only on ``(seed, e)``, and ``state_dict`` restores the exact sequence) over the stored images and
    labels, with the batches cast to float32 and mean-subtracted on the device. Each pass over the loader
    (``for x, y in loader``) is one epoch; breaking out of an epoch and iterating again continues where it
    stopped; :meth:`forever` (or ``next(loader)``) yields batches across epochs without end.

    Args:
        x: images, uint8 (or any dtype) array/tensor of shape ``(N, ...)``; stored as given on ``device``.
        y: labels, shape ``(N,)``, stored as int64.
        batch_size: examples per batch (default 100, as the authors' CIFAR code).
        mean: optional array broadcastable to ``x[0]``; batches are ``x.float() - mean``
            (the paper's per-pixel, per-channel mean-image subtraction on raw 0-255 values).
        scale: optional divisor applied after the mean subtraction (``None``: none, as the paper).
        shuffle: reshuffle every epoch (``False``: dataset order, e.g. for evaluation).
        seed: seed of the per-epoch permutations.
        device: where the data and batches live (default CPU).
        drop_last: drop the final incomplete batch of each epoch.

    Yields:
        ``x`` float32 ``(B, ...)`` and ``y`` int64 ``(B,)`` on ``device``.
    """

    def __init__(self, x, y, batch_size: int = 100, *, mean=None, scale: float | None = None,
                 shuffle: bool = True, seed: int = 0, device: torch.device | str | None = None,
                 drop_last: bool = True) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mean = None if mean is None else _as_tensor(mean, torch.float32).to(self.device)
        self.scale = scale
        super().__init__(_as_tensor(x).to(self.device), _as_tensor(y, torch.int64).to(self.device),
                         batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                         transform=self._normalize)

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def num_examples(self) -> int:
        return self.n

    def _normalize(self, batch):
        xb, yb = batch
        xb = xb.to(torch.float32)
        if self.mean is not None:
            xb = xb - self.mean
        if self.scale is not None:
            xb = xb / self.scale
        return xb, yb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the rest of the current epoch (or the next epoch when this one is done)."""
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        epoch = self.epoch
        while self.epoch == epoch and self.position < len(self):
            yield next(self)

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches across epochs without end (use with a step budget)."""
        while True:
            yield next(self)

    def __repr__(self) -> str:
        return (f"GPULoader(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, device={self.device}, drop_last={self.drop_last}, "
                f"epoch={self.epoch}, position={self.position})")
