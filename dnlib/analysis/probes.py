"""Probes of why normalizers help: measurements of a model at one point of its training, as plain functions.

The analyses people cite for why normalization works, each one function that leaves the model as it found it
(parameters, buffers such as running statistics, train/eval mode and pending L1 terms are restored):

* :func:`loss_along`: the loss at ``w + t d`` for step sizes ``t`` along a direction ``d`` (the gradient by default);
* :func:`gradient_predictiveness`: Santurkar et al. 2018 ("How does batch normalization help optimization?",
  NeurIPS; their Figure 4): step along the gradient with a range of step sizes, record the range of the loss
  ("loss landscape"), the l2 change of the gradient ("gradient predictiveness") and the largest ratio
  ``||g(w - eta g) - g(w)|| / ||eta g||`` ("effective beta-smoothness"; for a quadratic ``w^T A w / 2`` it is at
  most the largest eigenvalue of ``A``, and equal to it along the top eigenvector);
* :func:`train_eval_gap`: the classification error with running statistics (evaluation mode) and with the
  statistics of batches of a given size (training mode, as the model saw its data in training): for BN the gap
  grows as the batch shrinks (Wu & He 2018, Figure 1), for a normalizer without a batch field it is exactly 0;
* :func:`largest_stable_lr`: bisection, in log space, for the largest learning rate at which a training call
  stays stable (:func:`is_stable`: finite losses that end no higher than they started); for gradient descent on a
  quadratic with largest curvature ``L`` it is ``2 / L``;
* :func:`layer_norms`: per-layer RMS of the activations and of the loss gradients with respect to them (Bjorck
  et al. 2018: signal growth with depth);
* :func:`scale_change`: the relative change of a model's output when one layer's weights are scaled (BN, LN and
  GN are invariant to the scale of the preceding layer; DN with sigma > 0 is not exactly);
* :func:`detach_statistics`: normalizers whose statistics are constants for backpropagation (forward unchanged):
  "normalizing outside the gradient computation" (Ioffe & Szegedy 2015, §2), which labml notes does not work.

Layer: analysis (floor 4): it imports the normalizers and torch only.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..norms import functional as DF
from ..norms.norm import DivisiveNorm
from ..norms.sparse import clear_penalties

__all__ = ["preserved", "loss_along", "Smoothness", "gradient_predictiveness", "classification_error",
           "train_eval_gap", "is_stable", "sgd_is_stable", "largest_stable_lr", "layer_norms", "scale_change",
           "detach_statistics", "cross_entropy_loss"]

LossFn = Callable[[nn.Module, object], torch.Tensor]


def _params(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Restore ``model``'s parameters and buffers (values), its train/eval mode and its pending L1 terms (cleared)
    when the block ends; gradients enabled inside (probes differentiate, also under the trainer's ``no_grad``)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        with torch.enable_grad():
            yield model
    finally:
        with torch.no_grad():
            model.load_state_dict(state)
        for m, t in modes:
            m.training = t
        for p, g in grads:
            p.grad = g
        clear_penalties(model)


def _grad(model: nn.Module, loss_fn: LossFn, batch) -> tuple:
    """``(loss, [grads])`` of ``loss_fn(model, batch)`` at the current weights (no L1 terms)."""
    params = _params(model)
    loss = loss_fn(model, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    clear_penalties(model)
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def _norm(tensors: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def _check_steps(steps, name: str = "steps") -> list:
    steps = [float(t) for t in steps]
    if not steps or not all(math.isfinite(t) for t in steps):
        raise ValueError(f"{name}: need at least one finite step size, got {steps!r}")
    return steps


def loss_along(model: nn.Module, loss_fn: LossFn, batch, steps: Sequence[float], direction=None) -> list:
    """The loss ``loss_fn(model, batch)`` at ``w + t * d`` for each ``t`` in ``steps`` (a list of floats).

    ``direction``: one tensor per trainable parameter (in ``model.parameters()`` order), or None for the negative
    gradient at ``w`` (so ``t > 0`` is a gradient-descent step of size ``t``). The model's mode decides batch or
    running statistics; the model is restored afterwards (:func:`preserved`)."""
    steps = _check_steps(steps)
    with preserved(model):
        params = _params(model)
        if direction is None:
            _, g = _grad(model, loss_fn, batch)
            direction = [-t for t in g]
        direction = [d.detach() for d in direction]
        if len(direction) != len(params) or any(d.shape != p.shape for d, p in zip(direction, params)):
            raise ValueError(f"direction: need one tensor per trainable parameter with its shape "
                             f"({len(params)} parameters), got {len(direction)} tensors")
        start = [p.detach().clone() for p in params]
        out = []
        for t in steps:
            with torch.no_grad():
                for p, p0, d in zip(params, start, direction):
                    p.copy_(p0 + t * d)
                out.append(float(loss_fn(model, batch)))
            clear_penalties(model)
        return out


@dataclass
class Smoothness:
    """What :func:`gradient_predictiveness` measured at one point: the loss and gradient norm there, and per step
    size the loss and the l2 change of the gradient after the step; their summaries (Santurkar et al.'s plots)."""
    loss: float
    grad_norm: float
    steps: list
    losses: list
    grad_changes: list

    @property
    def loss_range(self) -> float:
        """max - min of the loss over the step sizes (and the start): the "loss landscape" band."""
        vals = [self.loss, *self.losses]
        return max(vals) - min(vals)

    @property
    def max_grad_change(self) -> float:
        """The largest l2 change of the gradient: the "gradient predictiveness" band."""
        return max(self.grad_changes)

    @property
    def beta(self) -> float:
        """Effective beta-smoothness: max over step sizes of ``||g(w - eta g) - g(w)|| / ||eta g||``."""
        if self.grad_norm == 0:
            return 0.0
        return max(c / (abs(t) * self.grad_norm) for c, t in zip(self.grad_changes, self.steps) if t != 0)

    def as_dict(self, prefix: str = "") -> dict:
        """The summaries (floats) under ``prefix``: loss_range, grad_change, beta, grad_norm."""
        return {f"{prefix}loss_range": self.loss_range, f"{prefix}grad_change": self.max_grad_change,
                f"{prefix}beta": self.beta, f"{prefix}grad_norm": self.grad_norm}


def gradient_predictiveness(model: nn.Module, loss_fn: LossFn, batch, steps: Sequence[float]) -> Smoothness:
    """Santurkar et al. 2018's probes at the current weights ``w``: the gradient ``g`` of ``loss_fn(model, batch)``,
    then for each step size ``eta`` in ``steps`` the loss at ``w - eta g`` and ``||grad(w - eta g) - g||``. The
    same batch throughout (so only the weights change); the model is restored afterwards."""
    steps = _check_steps(steps)
    if any(t == 0 for t in steps):
        raise ValueError(f"steps: step sizes must be nonzero, got {steps!r}")
    with preserved(model):
        params = _params(model)
        loss, g = _grad(model, loss_fn, batch)
        start = [p.detach().clone() for p in params]
        losses, changes = [], []
        for t in steps:
            with torch.no_grad():
                for p, p0, gi in zip(params, start, g):
                    p.copy_(p0 - t * gi)
            lt, gt = _grad(model, loss_fn, batch)
            losses.append(lt)
            changes.append(_norm(a - b for a, b in zip(gt, g)))
        return Smoothness(loss, _norm(g), steps, losses, changes)


def classification_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of rows whose argmax is not the label."""
    return float((logits.argmax(1) != labels).float().mean())


def train_eval_gap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   chunk: int = 1000) -> dict:
    """Classification error on ``(x, y)`` with running statistics (``eval_err``: evaluation mode) and with the
    statistics of consecutive batches of ``batch_size`` examples (``batch_err``: training mode; a last batch smaller
    than ``batch_size`` is used as it is, and a last batch of one example joins the previous one, since a batch of
    one has no batch statistics), and ``gap = batch_err - eval_err``. ``chunk``: examples per evaluation-mode
    forward.

    Every batch sees the model as it is: its buffers (running statistics, step counters) are restored before each
    batch, and dropout stays off (training mode only for the normalizers' batch statistics). Before, the running
    statistics moved from one test batch to the next, and batch renorm's training output, corrected towards them,
    drifted with the batches' order: a gap of 0.095 at batch 2 where the fixed model has none (its output equals
    the evaluation one wherever its correction is not clipped)."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    n = len(y)
    if n == 0:
        raise ValueError("x, y: need at least one example")
    with preserved(model), torch.no_grad():
        model.eval()
        eval_wrong = sum(float((model(x[i:i + chunk]).argmax(1) != y[i:i + chunk]).sum()) for i in range(0, n, chunk))
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        buffers = [(b, b.clone()) for b in model.buffers()]
        bounds = list(range(0, n, batch_size)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        batch_wrong = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            for buf, saved in buffers:
                buf.copy_(saved)
            batch_wrong += float((model(x[a:b]).argmax(1) != y[a:b]).sum())
            clear_penalties(model)
    out = {"eval_err": eval_wrong / n, "batch_err": batch_wrong / n}
    out["gap"] = out["batch_err"] - out["eval_err"]
    return out


def is_stable(losses: Sequence[float], tol: float = 0.0) -> bool:
    """A training run is stable when every loss is finite and the last is no higher than the first (+ ``tol``)."""
    losses = [float(v) for v in losses]
    return bool(losses) and all(math.isfinite(v) for v in losses) and losses[-1] <= losses[0] + tol


def largest_stable_lr(trains: Callable[[float], bool], low: float, high: float, iters: int = 20,
                      rtol: float = 1e-3) -> float:
    """The largest learning rate in ``[low, high]`` at which ``trains(lr)`` (a short training from the same start,
    True when stable: :func:`is_stable`) holds, by bisection on ``log(lr)`` (stability assumed monotone in the
    learning rate). ``low`` must be stable; returns ``high`` when ``high`` is, else the last stable midpoint after
    ``iters`` halvings or once ``hi / lo - 1 < rtol``."""
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"low, high: need 0 < low < high < inf, got {low!r}, {high!r}")
    if not trains(low):
        raise ValueError(f"low: training is not stable at the lower end lr={low:g}; lower it")
    if trains(high):
        return float(high)
    lo, hi = float(low), float(high)
    for _ in range(iters):
        if hi / lo - 1 < rtol:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if trains(mid) else (lo, mid)
    return lo


def sgd_is_stable(model: nn.Module, loss_fn: LossFn, batch, lr: float, steps: int = 100,
                  momentum: float = 0.0) -> bool:
    """Train a copy of ``model`` (``model`` itself is untouched) for ``steps`` SGD steps on ``batch`` at ``lr`` and
    say whether it was stable (:func:`is_stable` of its losses, the first before any step): the ``trains`` of
    :func:`largest_stable_lr` for one fixed batch (full-batch gradient descent when the batch is all the data)."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(_params(m), lr=lr, momentum=momentum)
    losses = []
    with torch.enable_grad():
        for _ in range(steps + 1):
            loss = loss_fn(m, batch)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                return False
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clear_penalties(m)
            opt.step()
    return is_stable(losses)


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


def layer_norms(model: nn.Module, loss_fn: LossFn, batch, modules: Mapping[str, nn.Module] | Sequence) -> dict:
    """Per-layer signal: ``{"act": [...], "grad": [...]}``, the RMS (root mean square per element) of each module's
    output and of the loss gradient with respect to that output, one forward and backward of
    ``loss_fn(model, batch)`` in the model's current mode (restored afterwards). ``modules``: a mapping of names to
    modules or a sequence of modules, in the order to report."""
    mods = list(modules.values()) if isinstance(modules, Mapping) else list(modules)
    if not mods:
        raise ValueError("modules: need at least one module to watch")
    acts, grads = [None] * len(mods), [None] * len(mods)

    def hook(i):
        def fn(_m, _inp, out):
            acts[i] = _rms(out)
            if out.requires_grad:
                out.register_hook(lambda g: grads.__setitem__(i, _rms(g)))
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(mods)]
    try:
        with preserved(model):
            loss = loss_fn(model, batch)
            params = _params(model)
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    if any(a is None for a in acts):
        raise ValueError("modules: a watched module did not run in the forward")
    return {"act": acts, "grad": [0.0 if g is None else g for g in grads]}


def scale_change(model: nn.Module, x: torch.Tensor, layer: nn.Module, factor: float) -> float:
    """The relative change ``||f'(x) - f(x)|| / ||f(x)||`` of the model's output on ``x`` (in its current mode)
    when ``layer``'s weight and bias are multiplied by ``factor``; the model is restored afterwards. A normalizer
    right after ``layer`` whose field is large enough makes it 0 up to its epsilon (BN, LN, GN)."""
    if not (isinstance(factor, (int, float)) and factor > 0):
        raise ValueError(f"factor: must be a number > 0, got {factor!r}")
    with preserved(model), torch.no_grad():
        ref = model(x).double()
        clear_penalties(model)
        for name in ("weight", "bias"):
            p = getattr(layer, name, None)
            if p is not None:
                p.mul_(factor)
        out = model(x).double()
        return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


class _DetachHook:
    """A forward hook of a :class:`DivisiveNorm` (training mode): the same output, with the batch statistics as
    constants for backpropagation (the normalizer's own functional, given the statistics as running ones)."""

    def __call__(self, m: DivisiveNorm, inputs, out):
        if not m.training or not torch.is_grad_enabled():
            return out
        (x,) = inputs
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        with torch.no_grad():
            _, _, mu, s = DF.divisive_norm_stats(xf, m.spec, m.sigma)
        mean = mu if mu.numel() else None
        sup = s if s.numel() else None
        y = DF.divisive_norm_stats(xf, m.spec, m.sigma, mean, sup)[0] if (mean is not None or sup is not None) \
            else xf.clone()
        if m.affine:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = y * m.weight.view(shape)
            if m.bias is not None:
                y = y + m.bias.view(shape)
        return y.to(out.dtype)


def detach_statistics(model: nn.Module) -> list:
    """Make every :class:`DivisiveNorm` of ``model`` treat its batch statistics as constants in backpropagation
    (the output, the running statistics and the L1 term stay as they were): returns the hook handles (``h.remove()``
    undoes it). The gradient then ignores that the statistics move with the weights, which is what Ioffe &
    Szegedy (2015, §2) warn against: the loss can no longer see, e.g., a growing bias that the mean removes."""
    handles = []
    for m in model.modules():
        if isinstance(m, DivisiveNorm) and type(m) is DivisiveNorm and (m.spec.sum_axes or m.spec.sup_axes):
            if m.alpha:
                raise ValueError(f"model: detached statistics with an L1 term (alpha={m.alpha:g}) are not supported; "
                                 f"use a normalizer without alpha")
            handles.append(m.register_forward_hook(_DetachHook()))
    return handles


def cross_entropy_loss(x: torch.Tensor, y: torch.Tensor) -> LossFn:
    """``loss_fn(model, _) = cross_entropy(model(x), y)``: a fixed batch for the probes."""
    return lambda model, _batch=None: F.cross_entropy(model(x), y)
