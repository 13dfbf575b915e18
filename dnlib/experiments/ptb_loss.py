"""The loss of a PTB language model, in training and in evaluation: the NLL a trainer minimizes with the recurrent
state carried from one minibatch to the next (:func:`lm_loss`, :func:`lm_step` for the CUDA-graph step,
:class:`LMLoss` for the eager one), its gradient clipped by the global norm the authors' TensorFlow code measures
(:class:`SliceClip`, ``clip_mode="slices"``), and the perplexity ``exp(mean per-word NLL)`` of a split with the state
carried over it (:func:`evaluate_perplexity`). Part of the PTB recipe (experiments layer): :mod:`dnlib.experiments.ptb`
builds its runs from them::

    from dnlib.experiments.ptb import build_model, load_data
    from dnlib.experiments.ptb_configs import get_config
    from dnlib.experiments.ptb_loss import evaluate_perplexity
    splits, vocab = load_data(16000, 500)
    evaluate_perplexity(build_model(get_config("dn-star-lstm", hidden_size=32), vocab), splits["valid"])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import PTBBatches
from ..models.rnn_lm import LanguageModel
from ..models.step_norm import set_bn_eval_step
from ..norms.sparse import clear_penalties

__all__ = ["lm_loss", "lm_step", "LMLoss", "SliceClip", "evaluate_perplexity"]


# --------------------------------------------------------------------------------------------------- training
def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NLL summed over time steps, averaged over the batch; ``logits`` time-major ``(T, N, V)``, ``y`` ``(N, T)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum") / y.shape[0]


def lm_step(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, state):
    """One window from ``state``: ``(lm_loss, new_state)`` (a pure function: the ``step_fn`` of
    :class:`~dnlib.training.graphs.SequenceGraphTrainer`)."""
    logits, new_state = model(x, state)
    return lm_loss(logits, y), new_state


class LMLoss:
    """The training loss of the eager :class:`~dnlib.training.trainer.Trainer`, carrying the recurrent state across
    minibatches (:func:`lm_step` on ``(x, y, reset)`` batches): the state is detached after each minibatch and zeroed
    when the batch says ``reset``. ``state_dict`` holds the state, so resume is exact."""

    def __init__(self):
        self.state = None

    def __call__(self, model: LanguageModel, batch):
        x, y, reset = batch
        if reset or self.state is None:
            state = model.init_state(x.shape[0], x.device)
        else:   # a resumed state comes from the CPU
            state = [tuple(s.to(x.device) for s in layer) for layer in self.state]
        loss, new_state = lm_step(model, x, y, state)
        self.state = [tuple(s.detach() for s in layer) for layer in new_state]
        return loss

    def state_dict(self) -> dict:
        return {"state": None if self.state is None else [tuple(s.cpu() for s in layer) for layer in self.state]}

    def load_state_dict(self, d: dict) -> None:
        self.state = d["state"]


# --------------------------------------------------------------------------------------------------- clipping
class SliceClip:
    r"""Gradient clipping by the global norm as the authors' TensorFlow code measures it (``source="code"``,
    ``clip_mode="slices"``): a ``clip_fn`` of :class:`~dnlib.training.trainer.Trainer`.

    TF's embedding lookup has an ``IndexedSlices`` gradient, one row per token *occurrence*, and
    ``tf.clip_by_global_norm`` measures those rows as they are: a word used k times in the batch contributes the
    squared norms of its k rows, not the squared norm of their sum (the dense gradient that
    ``torch.nn.utils.clip_grad_norm_`` sees). So

    .. math::

        \|g\|^2 = \sum_{p \ne E} \|\nabla_p L\|^2 + \sum_{n, t} \|\nabla_{e_{n,t}} L\|^2

    where ``e_{n,t}`` is the embedding lookup's output at position ``(n, t)``; every gradient (the dense embedding
    gradient too: TF scales the slices before summing them into rows) is multiplied by ``min(1, max_norm / |g|)``
    (TF's ``clip_norm / max(|g|, clip_norm)``). The output's gradient is captured by a tensor hook that a forward
    hook on ``model.embedding`` attaches in every forward that records a graph; each call uses (and drops) those of
    the backward just run. On CUDA this works inside the captured graph step as well. Returns the norm (a tensor).
    """

    def __init__(self, model: LanguageModel):
        self.embedding = model.embedding
        self._slices: list = []
        self._handle = self.embedding.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, out) -> None:
        if out.requires_grad:
            out.register_hook(self._slices.append)

    def remove(self) -> None:
        """Detach from the model (no further gradients are captured)."""
        self._handle.remove()

    def global_norm(self, params) -> torch.Tensor:
        """The norm TF's ``clip_by_global_norm`` computes for the gradients of ``params`` (which hold the
        embedding weight) after a backward through one training forward."""
        if not self._slices:
            raise RuntimeError("SliceClip: no gradient of the embedding output since the last call; call it after "
                               "backward through a training forward of the model it was built on")
        weight = self.embedding.weight
        grads = [p.grad.detach() for p in params if p.grad is not None and p is not weight] + self._slices
        acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
        norm = torch.stack([g.to(acc).square().sum() for g in grads]).sum().sqrt()
        self._slices.clear()
        return norm

    def __call__(self, params, max_norm: float) -> torch.Tensor:
        params = list(params)
        norm = self.global_norm(params)
        scale = (max_norm / norm).clamp(max=1.0)       # norm 0: inf -> 1
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        return norm


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_perplexity(model: LanguageModel, ids: torch.Tensor, batch_size: int = 20, num_steps: int = 20,
                        bn_step0: bool = False) -> float:
    """Perplexity ``exp(mean per-word NLL)`` of ``ids`` laid out as ``batch_size`` contiguous streams, the state
    carried over the whole split (eval mode; BN cells use running statistics, of step 0 only if ``bn_step0``).

    As TF's ``ptb_producer`` (:class:`dnlib.data.PTBBatches`), it scores the first ``len(batches) * batch_size *
    num_steps`` targets and drops the rest, fewer than ``batch_size * (num_steps + 1)`` tokens at the end (29 of
    PTB's 82,430 test tokens at 20 x 20, 9 at batch size 1)."""
    was = model.training
    model.eval()
    set_bn_eval_step(model, 0 if bn_step0 else None)
    device = next(model.parameters()).device
    batches = PTBBatches(ids, batch_size, num_steps, device)
    state = model.init_state(batch_size, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in batches:
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum").double()
    set_bn_eval_step(model, None)
    clear_penalties(model)
    model.train(was)
    nll = total.item() / (len(batches) * batch_size * num_steps)
    return math.exp(nll) if nll < 709.0 else float("inf")   # inf (or nan) marks a diverged model, not a crash
