"""A whole-dataset-on-device batch iterator with seeded per-epoch reshuffling and resumable state.

CIFAR is small enough (60,000 x 3 x 32 x 32 uint8 = 184 MB) to live on the GPU; gathering a batch
there is far cheaper than a DataLoader with workers. :class:`GPULoader` keeps the images as uint8 on
``device``, and each batch is gathered, cast to float32 and mean-subtracted on the device.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

__all__ = ["GPULoader"]


def _as_tensor(a, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
    return t if dtype is None else t.to(dtype)


class GPULoader:
    """Iterate over ``(x, y)`` batches of an in-memory dataset kept on ``device``.

    Each pass over the loader (``for x, y in loader``) is one epoch. With ``shuffle=True`` the
    order of epoch ``e`` is ``torch.randperm`` drawn from a ``torch.Generator`` seeded with
    ``(seed, e)`` (via :class:`numpy.random.SeedSequence`), so the order depends only on the seed
    and the epoch number: a run resumed from :meth:`state_dict` sees exactly the batches the
    uninterrupted run would have seen. Breaking out of an epoch and iterating again continues
    where it stopped; :meth:`forever` yields batches across epochs without end, for step-based
    training loops.

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
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if len(x) == 0:
            raise ValueError("x is empty: need at least one example")
        if drop_last and len(x) < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {len(x)} examples with drop_last=True: "
                             f"no batch would be produced")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.x = _as_tensor(x).to(self.device)
        self.y = _as_tensor(y, torch.int64).to(self.device)
        self.mean = None if mean is None else _as_tensor(mean, torch.float32).to(self.device)
        self.scale = scale
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._perm: torch.Tensor | None = None
        self._perm_epoch = -1

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.y)

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            n = len(self.y)
            if self.shuffle:
                s = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0] >> 1)
                g = torch.Generator().manual_seed(s)
                self._perm = torch.randperm(n, generator=g).to(self.device)
            else:
                self._perm = torch.arange(n, device=self.device)
            self._perm_epoch = epoch
        return self._perm

    def _batch(self, idx: torch.Tensor):
        xb = self.x[idx].to(torch.float32)
        if self.mean is not None:
            xb = xb - self.mean
        if self.scale is not None:
            xb = xb / self.scale
        return xb, self.y[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the rest of the current epoch, then advance to the next epoch."""
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        n = len(self.y)
        while self.position < len(self):
            start = self.position * self.batch_size
            idx = order[start:min(start + self.batch_size, n)]
            self.position += 1
            yield self._batch(idx)
        self.epoch, self.position = self.epoch + 1, 0

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches across epochs without end (use with a step budget)."""
        while True:
            yield from self

    def state_dict(self) -> dict:
        """``{"epoch", "position", "seed"}``: enough to resume the exact batch sequence."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position saved by :meth:`state_dict`."""
        for key in ("epoch", "position", "seed"):
            if key not in state:
                raise ValueError(f"state must contain {key!r}, got keys {sorted(state)}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"state['position'] must be in [0, {len(self)}], got {state['position']}")
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._perm_epoch = -1

    def __repr__(self) -> str:
        return (f"GPULoader(n={len(self.y)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, device={self.device}, drop_last={self.drop_last}, "
                f"epoch={self.epoch}, position={self.position})")
