"""Truncated BPTT of K independent copies of a language model packed in one
(:class:`~dnlib.models.stacked_rnn.StackedLanguageModel`): the trainer of stacked PTB runs
(:mod:`dnlib.experiments.stacked_ptb`), the :class:`~dnlib.training.stacked.StackedTrainer` loop with the carried state
and CUDA-graph capture of :class:`~dnlib.training.graphs.SequenceGraphTrainer` (one implementation:
:class:`~dnlib.training.graphs.CarriedStateGraph`)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ..models.stacked_rnn import StackedLanguageModel
from ..norms.sparse import clear_penalties, sparse_penalty
from .graphs import CarriedStateGraph
from .stacked import StackedTrainer

__all__ = ["StackedSequenceTrainer"]


class StackedSequenceTrainer(CarriedStateGraph, StackedTrainer):
    """Truncated BPTT of K copies in one :class:`~dnlib.models.stacked_rnn.StackedLanguageModel`: batches ``(x, y,
    reset)`` shared by the copies, the carried state ``(K, N, H)`` per layer (checkpointed as the PTB runs'
    ``{"loss_fn": {"state": ...}}``), per-copy losses ``(K,)``, per-copy gradient clipping (``clip_norms``: each
    copy's norm, > 0, or None: no clipping; ``clip_mode``) and per-copy learning rates (``lr_fns[k](step)``), plain
    SGD.

    ``loss_fn.step(model, x, y, state) -> (losses (K,), new_state)`` is the copies' task loss of one window (no L1
    terms), e.g. ``dnlib.experiments.stacked_ptb``'s. The step reads static tensors (batch, state, the learning rates
    and clipping norms as ``(K,)`` device tensors), so on CUDA it is captured once as a CUDA graph and replayed
    (``capture``; None: on CUDA), by the same code as :class:`~dnlib.training.graphs.SequenceGraphTrainer`
    (:class:`~dnlib.training.graphs.CarriedStateGraph`); a capture that fails falls back to the same body, eagerly,
    with one warning (:attr:`fell_back`). History rows carry each copy's own learning rate."""

    def __init__(self, model: StackedLanguageModel, loss_fn, batches, cfg, *, lr_fns: Sequence, clip_norms: Sequence,
                 clip_mode: str = "dense", capture: bool | None = None, warmup: int = 3, **kwargs):
        super().__init__(model, loss_fn, batches, dataclasses.replace(cfg, clip_norm=None), **kwargs)
        if cfg.optimizer != "sgd" or cfg.momentum or cfg.weight_decay:
            raise ValueError("StackedSequenceTrainer: plain SGD only (momentum 0, weight decay 0)")
        if len(lr_fns) != self.copies or len(clip_norms) != self.copies:
            raise ValueError(f"lr_fns, clip_norms: need one per copy ({self.copies}), got {len(lr_fns)} and "
                             f"{len(clip_norms)}")
        if clip_mode not in ("dense", "slices"):
            raise ValueError(f"clip_mode: got {clip_mode!r}; allowed values are ['dense', 'slices']")
        if any(c is not None and not (isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < math.inf)
               for c in clip_norms):        # (a negative one read as "no clipping" here, as gradient ascent in Trainer)
            raise ValueError(f"clip_norms: each copy's must be None (no clipping) or a number > 0, got "
                             f"{list(clip_norms)}")
        self._init_carried(capture, warmup)
        self.lr_fns, self.clip_norms, self.clip_mode = list(lr_fns), list(clip_norms), clip_mode
        self._copy_lrs = [f(0) for f in self.lr_fns]
        self._slices: list = []
        self._blocks = [(p, start) for p, start in model.copy_blocks() if p.requires_grad]
        if clip_mode == "slices":
            model.embedding_hook = self._slices.append

    # --- per copy: learning rates in the history --------------------------------------------------------------
    def lr_at(self, step: int, copy: int = 0) -> float:
        """Copy ``copy``'s learning rate at optimizer step ``step`` (1-based): ``lr_fns[copy](step - 1)`` (the
        optimizer's rate is never set: it stays copy 0's initial one)."""
        return float(self.lr_fns[copy](max(int(step) - 1, 0)))

    def _append(self, row: dict, copy: int) -> None:
        if "lr" in row:
            row = {**row, "lr": self._copy_lrs[copy]}
        super()._append(row, copy)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._copy_lrs = [f(max(self.step - 1, 0)) for f in self.lr_fns]

    # --- the step ---------------------------------------------------------------------------------------------
    def _clip_scale(self) -> torch.Tensor:
        """Each copy's factor ``min(1, clip_k / |g_k|)`` (dense: torch's ``clip_grad_norm_``, with its 1e-6;
        slices: TF's norm over the embedding's per-token rows), 1 where a copy does not clip."""
        k = self.copies
        sq = torch.zeros(k, device=self.device, dtype=self._params[0].dtype)
        emb = self.model.embedding
        for p, start in self._blocks:
            if p.grad is None or (self.clip_mode == "slices" and p is emb):
                continue
            g = p.grad.detach()
            sq[start:start + g.shape[0]] += g.reshape(g.shape[0], -1).square().sum(1)
        if self.clip_mode == "slices":
            for g in self._slices:
                sq += g.detach().reshape(k, -1).square().sum(1)
            self._slices.clear()
            scale = (self._max_norm / sq.sqrt()).clamp(max=1.0)
        else:
            scale = (self._max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        return torch.where(self._clips, scale, torch.ones_like(scale))

    def _body(self) -> torch.Tensor:
        clear_penalties(self.model)     # the step's penalty is its own forward's alone (see dnlib.training.trainer)
        losses, new_state = self.loss_fn.step(self.model, self._x, self._y, self.state)
        (losses.sum() + sparse_penalty(self.model)).backward()
        with torch.no_grad():
            scale = self._clip_scale() if bool(self._any_clip) else None
            for p, start in self._blocks:
                if p.grad is None:
                    continue
                n = p.shape[0]
                shape = (n,) + (1,) * (p.dim() - 1)
                g = p.grad if scale is None else p.grad * scale[start:start + n].view(shape)
                p.addcmul_(g, self._neg_lr[start:start + n].view(shape))
            for dst, src in zip(self._flat(self.state), self._flat(new_state)):
                dst.copy_(src)
        return losses.detach()

    def _setup(self, x, y) -> None:
        self._params = [p for p, _ in self._blocks]
        self._x, self._y = x.detach().clone(), y.detach().clone()
        self.state = [tuple(s.clone() for s in layer) for layer in self.model.init_state(x.shape[0], x.device)]
        ref = self._params[0]
        self._neg_lr = torch.zeros(self.copies, device=x.device, dtype=ref.dtype)
        self._max_norm = torch.tensor([1.0 if c is None else c for c in self.clip_norms], device=x.device,
                                      dtype=ref.dtype)
        self._clips = torch.tensor([c is not None for c in self.clip_norms], device=x.device)
        self._any_clip = any(c is not None for c in self.clip_norms)

    def _reset_state(self, x) -> None:
        for dst in self._flat(self.state):
            dst.zero_()

    def _after_capture(self) -> None:
        super()._after_capture()
        self._slices.clear()

    def train_step(self, batch) -> torch.Tensor:
        """One step of every copy on ``(x, y, reset)``: fill the static inputs, replay the graph (or run the body)."""
        x, y, reset = batch
        self.model.train()
        self._copy_lrs = [float(f(self.step)) for f in self.lr_fns]
        self._load_inputs(x, y, reset)
        self._neg_lr.copy_(torch.tensor([-v for v in self._copy_lrs], dtype=self._neg_lr.dtype))
        return self._run()
