"""Trainers whose whole step is one CUDA graph: :class:`GraphTrainer` (a step's batch is its whole input: CIFAR, SR)
and :class:`SequenceGraphTrainer` (truncated BPTT with a carried recurrent state: PTB); :class:`CarriedStateGraph`
is the carried state and the one capture that :class:`SequenceGraphTrainer` and
:class:`~dnlib.training.stacked_sequence.StackedSequenceTrainer` (K stacked PTB copies) share. On a CPU each runs the
same step eagerly (``capture=False``), which is how the step is checked against
:class:`~dnlib.training.trainer.Trainer` without a GPU."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..norms.sparse import clear_penalties, sparse_penalty
from .trainer import TrainConfig, Trainer

__all__ = ["GraphTrainer", "SequenceGraphTrainer", "CarriedStateGraph"]


def _capture_on(capture: bool | None, device: torch.device) -> bool:
    """``capture`` resolved: None means "on CUDA"; True off CUDA is refused."""
    if capture is None:
        capture = device.type == "cuda"
    if capture and device.type != "cuda":
        raise ValueError(f"capture: CUDA graphs need a CUDA device, got {device}")
    return bool(capture)


def _record(body: Callable[[], torch.Tensor], zero_grad: Callable[[], None], warmup: int):
    """The one capture of a training step, ``(graph, its static loss)``: ``warmup`` (at least 1) eager steps on a
    side stream (as the CUDA graph docs require), then ``body`` captured; ``zero_grad`` before each. What the
    warm-up changed is the caller's to undo."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            zero_grad()
            body()
    torch.cuda.current_stream().wait_stream(side)
    zero_grad()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = body()
    return graph, loss


class GraphTrainer(Trainer):
    """A :class:`Trainer` whose whole training step is one CUDA graph (``torch.cuda.graph``).

    At batch sizes where a model is bound by kernel launches (the paper's CIFAR CNN at batch 100), replaying
    forward, loss (with the sparse L1 terms), backward and the SGD update as one captured graph is several times
    faster than eager execution. The step reads its batch from *static* tensors that each step fills with
    ``copy_``, so batches must keep their shapes (``drop_last``). The SGD update (momentum, no dampening, and the
    weight decay of each parameter group coupled as L2: ``wd * p`` added to the gradient before the momentum, exactly
    as ``torch.optim.SGD``; not AdamW's decoupled decay) is written with ``torch._foreach`` ops and reads the
    learning rate from a device tensor per group, filled when the schedule changes it; its momentum buffers are the
    optimizer's own ``state[p]["momentum_buffer"]``, so checkpoints are interchangeable with :class:`Trainer`'s.

    Capture happens at the first step (after a resume): a few warm-up steps on a side stream (as the CUDA graph
    docs require), then the capture, then model, buffers and momentum are restored *in place* to their values
    before the warm-up, so the warm-up leaves no trace in the run.

    ``capture=False`` runs exactly the same step (static batch, hand-written SGD) eagerly, without a graph: that
    is what runs on CPU, and how the step is checked against :class:`Trainer` without a GPU. ``capture=None``
    (default) captures on CUDA only. Only ``optimizer="sgd"`` without ``clip_norm`` is supported.
    """

    def __init__(self, *args, capture: bool | None = None, warmup: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.optimizer != "sgd" or self.cfg.clip_norm:
            raise ValueError("GraphTrainer: supports optimizer='sgd' without clip_norm; use Trainer otherwise")
        if any(g.get("nesterov") or g.get("dampening") for g in self.opt.param_groups):
            raise ValueError("GraphTrainer: nesterov and dampening are not supported")
        self.capture, self.warmup = _capture_on(capture, self.device), int(warmup)
        self.graph = None
        self._static = None
        self._static_loss = None
        self._lr_tensors = None
        self._lr_values = None

    # --- the step, as captured ---------------------------------------------------------------------------
    def _momentum_buffers(self, group) -> list:
        bufs = []
        for p in group["params"]:
            state = self.opt.state[p]
            if state.get("momentum_buffer") is None:
                # torch's first SGD step sets buf = grad; buf = momentum * 0 + grad is the same.
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs

    def _sgd_update(self) -> None:
        with torch.no_grad():
            for group, lr in zip(self.opt.param_groups, self._lr_tensors):
                pairs = [(p, b) for p, b in zip(group["params"], self._momentum_buffers(group)) if p.grad is not None]
                if not pairs:
                    continue
                params, bufs = [p for p, _ in pairs], [b for _, b in pairs]
                grads = [p.grad for p in params]
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                if group["momentum"]:
                    torch._foreach_mul_(bufs, group["momentum"])
                    torch._foreach_add_(bufs, grads)
                    grads = bufs
                torch._foreach_sub_(params, torch._foreach_mul(grads, lr))

    def _body(self) -> torch.Tensor:
        clear_penalties(self.model)     # the step's penalty is its own forward's alone (see dnlib.training.trainer)
        out = self.loss_fn(self.model, self._static)
        loss = out[0] if isinstance(out, tuple) else out
        ((loss.sum() if loss.dim() else loss) + sparse_penalty(self.model)).backward()
        self._sgd_update()
        return loss.detach()

    def _sync_lr(self) -> None:
        values = [g["lr"] for g in self.opt.param_groups]
        if self._lr_tensors is None:
            ref = next(self.model.parameters())
            self._lr_tensors = [torch.tensor(v, dtype=ref.dtype, device=ref.device) for v in values]
        elif values != self._lr_values:
            for t, v in zip(self._lr_tensors, values):
                t.fill_(v)
        self._lr_values = values

    def _snapshot(self) -> list:
        tensors = list(self.model.state_dict(keep_vars=False).values())
        for group in self.opt.param_groups:
            tensors += self._momentum_buffers(group)
        return [(t, t.detach().clone()) for t in tensors]

    def _capture_graph(self) -> None:
        saved = self._snapshot()
        graph, self._static_loss = _record(self._body, lambda: self.opt.zero_grad(set_to_none=True), self.warmup)
        with torch.no_grad():
            for t, v in saved:
                t.copy_(v)
        clear_penalties(self.model)
        self.graph = graph

    def train_step(self, batch) -> torch.Tensor:
        """One step: fill the static batch, then replay the graph (or run the same step eagerly)."""
        self.model.train()
        self._set_lr()
        self._sync_lr()
        if self._static is None:
            self._static = tuple(t.detach().clone() for t in batch)
        else:
            for s, t in zip(self._static, batch):
                s.copy_(t)
        if self.capture:
            if self.graph is None:
                self._capture_graph()
            self.graph.replay()
            return self._static_loss.clone()
        self.opt.zero_grad(set_to_none=True)
        return self._body()


class CarriedStateGraph:
    """The part of a truncated-BPTT graph trainer that does not depend on what is stacked (a mixin, before the
    :class:`~dnlib.training.trainer.Trainer` class in the bases): the carried recurrent state and the step's one
    CUDA-graph capture, shared by :class:`SequenceGraphTrainer` and
    :class:`~dnlib.training.stacked_sequence.StackedSequenceTrainer`.

    * :attr:`state`: the carried state, a list of tuples of static tensors (one tuple per layer), set up at the first
      step; checkpointed as ``{"loss_fn": {"state": [...]}}`` (a resumed one is copied in at the next step);
    * :meth:`_load_inputs` fills the static batch ``(x, y)`` and the state (reset, or the resumed one);
    * :meth:`_run` captures the step at the first call (``warmup`` steps on a side stream, then the capture, then the
      model's tensors and the carried state restored in place, so the warm-up leaves no trace), replays it, or runs
      the body eagerly (``capture=False``, or after a capture that failed: one warning, :attr:`fell_back`).

    The trainer defines ``_setup(x, y)`` (the static ``_x``, ``_y``, :attr:`state`, ``_params``), ``_body()`` (one
    step from them, returning the loss) and ``_reset_state(x)``; ``_after_capture()`` (default: the model's L1 terms
    cleared) runs after the warm-up is undone."""

    def _init_carried(self, capture: bool | None, warmup: int) -> None:
        self.capture, self.warmup = _capture_on(capture, self.device), int(warmup)
        self.graph = None
        self.fell_back = False          # True when the capture failed and the step runs eagerly
        self.state = None               # the carried state (static tensors once the step is set up)
        self._stored = None             # a resumed checkpoint's state, copied in at the next step

    # --- the carried state in checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        carried = self._stored if self._stored is not None else self.state
        state["loss_fn"] = {"state": None if carried is None else
                            [tuple(s.detach().cpu().clone() for s in layer) for layer in carried]}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._stored = (state.get("loss_fn") or {}).get("state")

    # --- the step -------------------------------------------------------------------------------------------
    def _flat(self, state) -> list:
        return [s for layer in state for s in layer]

    def _load_inputs(self, x: torch.Tensor, y: torch.Tensor, reset) -> None:
        """Fill the static batch (the first call sets the step up) and the carried state: reset, or a resumed one."""
        if self.state is None:
            self._setup(x, y)
        else:
            self._x.copy_(x)
            self._y.copy_(y)
        with torch.no_grad():
            if reset:
                self._reset_state(x)
            elif self._stored is not None:
                for dst, src in zip(self._flat(self.state), self._flat(self._stored)):
                    dst.copy_(src)
        self._stored = None

    def _after_capture(self) -> None:
        clear_penalties(self.model)

    def _zero_grad(self) -> None:
        for p in self._params:
            p.grad = None

    def _capture(self) -> None:
        saved = [(t, t.detach().clone()) for t in self.model.state_dict().values()]
        carried = [s.clone() for s in self._flat(self.state)]
        try:
            self.graph, self._loss = _record(self._body, self._zero_grad, self.warmup)
        finally:
            torch.cuda.synchronize()
            with torch.no_grad():           # undo the warm-up (the capture itself computes nothing)
                for t, v in saved:
                    t.copy_(v)
                for dst, src in zip(self._flat(self.state), carried):
                    dst.copy_(src)
            self._after_capture()

    def _run(self) -> torch.Tensor:
        """The step on the filled static inputs: capture it (once), replay it, or run the body eagerly."""
        if self.capture and self.graph is None and not self.fell_back:
            try:
                self._capture()
            except Exception as e:   # noqa: BLE001  an op that cannot be captured: keep training, eagerly
                warnings.warn(f"{type(self).__name__}: capture failed ({type(e).__name__}: {e}); training eagerly",
                              stacklevel=3)
                self.fell_back, self.graph = True, None
        if self.graph is not None:
            self.graph.replay()
            return self._loss.clone()
        self._zero_grad()
        return self._body()


class SequenceGraphTrainer(CarriedStateGraph, Trainer):
    """A :class:`Trainer` for truncated BPTT whose whole training step is one CUDA graph: forward over the
    unrolled steps from a carried recurrent state, loss + the sparse L1 terms, backward, global-norm clipping,
    plain SGD ``p -= lr * g`` (the learning rate read from a device tensor, so the schedule needs no re-capture),
    and the copy of the final state into the carried one.

    Its contract differs from :class:`GraphTrainer` (whose batch is the whole step input): a batch is ``(x, y,
    reset)`` (``reset``: zero the carried state first, e.g. at the start of an epoch), and what the step needs is
    passed explicitly:

    * ``step_fn(model, x, y, state) -> (loss, new_state)``: the task loss (no L1 terms) of one window from
      ``state``; a pure function (it keeps nothing between calls). It is the trainer's ``loss_fn``.
    * ``init_state(batch_size, device) -> state``: the zero state, a list of tuples of tensors (one tuple per
      layer), as ``dnlib.models.rnn.LanguageModel.init_state``.

    The carried state belongs to the trainer (:attr:`state`) and is checkpointed as ``{"loss_fn": {"state":
    [...]}}``, the layout of a stateful loss's ``state_dict`` (``dnlib.experiments.ptb.LMLoss``), so checkpoints are
    interchangeable with those of the eager :class:`Trainer` on the same loss; the optimizer (momentum 0, no
    weight decay) is never stepped, its update being the same. Capture happens at the first step, after
    ``warmup`` steps on a side stream whose effects are undone (:class:`CarriedStateGraph`). ``capture=False`` (what
    runs on CPU, the default there) runs the same step body eagerly: that is how it is tested without a GPU; a
    capture that fails falls back to it with one warning (:attr:`fell_back`).
    """

    def __init__(self, model: nn.Module, step_fn: Callable, batches, cfg: TrainConfig, *,
                 init_state: Callable, capture: bool | None = None, warmup: int = 3, **kwargs):
        super().__init__(model, step_fn, batches, cfg, **kwargs)
        if self.cfg.optimizer != "sgd" or self.cfg.momentum or self.cfg.weight_decay:
            raise ValueError("SequenceGraphTrainer: only plain SGD (momentum 0, weight decay 0) is captured; "
                             f"got optimizer={self.cfg.optimizer!r}, momentum={self.cfg.momentum}, "
                             f"weight_decay={self.cfg.weight_decay}")
        self.init_state = init_state
        self._init_carried(capture, warmup)

    # --- the step -------------------------------------------------------------------------------------------
    def _body(self) -> torch.Tensor:
        clear_penalties(self.model)     # the step's penalty is its own forward's alone (see dnlib.training.trainer)
        loss, new_state = self.loss_fn(self.model, self._x, self._y, self.state)
        (loss + sparse_penalty(self.model)).backward()
        if self.cfg.clip_norm:
            if self.clip_fn is nn.utils.clip_grad_norm_:
                nn.utils.clip_grad_norm_(self._params, self.cfg.clip_norm, foreach=True)
            else:
                self.clip_fn(self._params, self.cfg.clip_norm)
        with torch.no_grad():
            grads = [p.grad for p in self._params]
            torch._foreach_add_(self._params, torch._foreach_mul(grads, self._neg_lr))
            for dst, src in zip(self._flat(self.state), self._flat(new_state)):
                dst.copy_(src)
        return loss.detach()

    def _setup(self, x, y) -> None:
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._x, self._y = x.detach().clone(), y.detach().clone()
        self.state = [tuple(s.clone() for s in layer) for layer in self.init_state(x.shape[0], x.device)]
        self._neg_lr = torch.zeros((), device=x.device)

    def _reset_state(self, x) -> None:
        fresh = self.init_state(x.shape[0], x.device)
        for dst, src in zip(self._flat(self.state), self._flat(fresh)):
            dst.copy_(src)

    def train_step(self, batch) -> torch.Tensor:
        """One step on ``(x, y, reset)``: fill the static inputs, then replay the graph (or run the body)."""
        x, y, reset = batch
        self.model.train()
        self._set_lr()
        self._load_inputs(x, y, reset)
        self._neg_lr.fill_(-self.opt.param_groups[0]["lr"])
        return self._run()
