"""The project's one resumable batch stream (:class:`TensorBatches`, the trainer's and the recipes') and a
whole-dataset-on-device batch iterator with seeded per-epoch reshuffling and resumable state.

CIFAR is small enough (60,000 x 3 x 32 x 32 uint8 = 184 MB) to live on the GPU; gathering a batch
there is far cheaper than a DataLoader with workers. :class:`GPULoader` keeps the images as uint8 on
``device``, and each batch is gathered, cast to float32 and mean-subtracted on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

__all__ = ["TensorBatches", "GPULoader"]


def _as_tensor(a, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
    return t if dtype is None else t.to(dtype)


class TensorBatches:
    """An endless, resumable stream of minibatches from tensors that share their first dimension.

    Each epoch is a fresh permutation drawn from a ``torch.Generator`` seeded by mixing ``(seed, epoch)``
    (``numpy.random.SeedSequence``), so the stream is a pure function of ``(seed, epoch, position)``: that
    triple is the whole ``state_dict``. The tensors stay where they are (put them on the GPU once to keep the
    dataset resident there). With ``drop_last=False`` the last batch of an epoch may be smaller.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 100, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, transform: Callable | None = None):
        if not tensors:
            raise ValueError("tensors: need at least one tensor")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"tensors: first dimensions differ: {[t.shape[0] for t in tensors]}")
        if n == 0:
            raise ValueError("tensors: empty, need at least one example")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1 or (
                drop_last and batch_size > n):
            raise ValueError(f"batch_size: must be an integer in [1, {n}] (drop_last={drop_last}), got {batch_size!r}")
        self.tensors, self.n, self.batch_size = tensors, n, batch_size
        self.seed, self.shuffle, self.drop_last, self.transform = int(seed), shuffle, drop_last, transform
        self.epoch, self.position = 0, 0
        self._perm, self._perm_epoch = None, -1

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            device = self.tensors[0].device
            if self.shuffle:
                mixed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1)
                self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(mixed)).to(device)
            else:
                self._perm = torch.arange(self.n, device=device)
            self._perm_epoch = self.epoch
        return self._perm

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.batch_size
        idx = self._permutation()[start:start + self.batch_size]
        self.position += 1
        batch = tuple(t[idx] for t in self.tensors)
        return self.transform(batch) if self.transform else batch

    def state_dict(self) -> dict:
        """``{"epoch", "position", "seed"}``: enough to resume the exact batch sequence."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position saved by :meth:`state_dict`."""
        for key in ("epoch", "position", "seed"):
            if key not in state:
                raise ValueError(f"state: must contain {key!r}, got keys {sorted(state)}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"state: position must be in [0, {len(self)}], got {state['position']}")
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._perm_epoch = -1


class GPULoader(TensorBatches):
    """Iterate over ``(x, y)`` batches of an in-memory dataset kept on ``device``.

    A :class:`TensorBatches` (the project's one resumable batch stream: the order of epoch ``e``
    depends only on ``(seed, e)``, and ``state_dict`` restores the exact sequence) over the stored images and
    labels, with the batches cast to float32 and mean-subtracted on the device. Each pass over the loader
    (``for x, y in loader``) yields what is left of the current epoch, then stops: a pass that ran to the end is
    one whole epoch, but after a ``break`` (or a partial ``next``) the position stays where it stopped, and the
    next pass yields only the remaining batches of that epoch, not a new whole one. An evaluation loop broken off
    early would therefore score only those remaining batches the next time: evaluate with a loader of its own that
    is always iterated to the end (or restore a saved :meth:`state_dict`). :meth:`forever` (or ``next(loader)``)
    yields batches across epochs without end.

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
        """Yield the rest of the current epoch (the whole next epoch when this one is done); after a ``break`` the
        next call yields only the batches that pass did not reach."""
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
