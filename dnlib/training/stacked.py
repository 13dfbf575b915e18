"""The one training loop over K independent copies of a model packed in one (stacked runs: K seeds of one
configuration trained as one model, :mod:`dnlib.experiments.stacked`): per-copy histories, divergence checks and
stops, and the ordinary trainer's checkpoints and exact resume."""
from __future__ import annotations

from torch import nn

from .graphs import GraphTrainer
from .trainer import Trainer

__all__ = ["StackedTrainer", "StackedGraphTrainer"]


class StackedTrainer(Trainer):
    """The :class:`~dnlib.training.trainer.Trainer` loop over K independent copies packed in one model (a model with
    ``copies`` and ``copy_state_dict(k)``, e.g. :class:`~dnlib.models.stacked.StackedCifarCNN`): ``loss_fn``
    returns the copies' losses ``(K,)`` (the trainer minimizes their sum), ``evaluate`` a list of K metric dicts.

    Every history row carries its ``copy``; :meth:`copy_history` gives copy k's rows (without it), as an ordinary
    run's history. A copy whose loss, metric or weights turn non-finite stops alone: its history ends with its
    ``stopped`` row and its values are no longer read (its block of the model trains on unread; the copies share
    no arithmetic); :class:`~dnlib.training.trainer.TrainingDiverged` is raised when every copy has stopped. The
    checkpoint is the Trainer's (the history holds which copies stopped), so a stacked run resumes exactly as an
    ordinary
    one. Gradient clipping is refused (a global norm would mix the copies)."""

    def __init__(self, model: nn.Module, loss_fn, batches, cfg, **kwargs):
        super().__init__(model, loss_fn, batches, cfg, **kwargs)
        if cfg.clip_norm:
            raise ValueError(f"clip_norm: a stacked trainer cannot clip the gradients (the global norm would mix "
                             f"the copies), got {cfg.clip_norm}")
        self.copies = int(model.copies)
        self._stopped: list = [None] * self.copies

    def live_copies(self) -> list:
        return [k for k, s in enumerate(self._stopped) if s is None]

    def copy_history(self, k: int = 0) -> list:
        return [{key: v for key, v in r.items() if key != "copy"} for r in self.history if r.get("copy") == k]

    def copy_state_dict(self, k: int = 0) -> dict:
        return self.model.copy_state_dict(k)

    def _append(self, row: dict, copy: int) -> None:
        self.history.append({"copy": copy, **row})

    def _stop_copy(self, copy: int, status: str) -> bool:
        self._stopped[copy] = status
        if self.live_copies():
            return False
        self.stopped = status
        return True

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._stopped = [None] * self.copies
        for r in self.history:
            if "stopped" in r:
                self._stopped[r["copy"]] = r["stopped"]


class StackedGraphTrainer(StackedTrainer, GraphTrainer):
    """:class:`StackedTrainer` whose whole step is one CUDA graph (:class:`~dnlib.training.graphs.GraphTrainer`)."""
