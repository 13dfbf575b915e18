"""The sparse (L1) regularizer of PAPER.md §2.

At every normalization site with ``alpha > 0`` the training loss gets
``alpha * mean |z - E_A[z]|``: the pre-normalization activation centred by *that site's own* summation-field
mean (batch mean for BN, example mean for LN, local mean for DN, 0 for no normalization), averaged over all its
elements, gradients flowing through the mean. :func:`sparse_penalty` returns the sum of the pending terms of
the model's sites and clears them; add it to the loss you backpropagate::

    loss = criterion(model(x), y) + dnlib.sparse_penalty(model)
    loss.backward()

Which forwards count (the penalty is the penalty of the forwards the loss is built from):

- Only a forward that can be backpropagated records a term: training mode with gradients on. A forward under
  ``torch.no_grad()`` or ``torch.inference_mode()``, or in eval mode, records none (a logging forward does not
  add to the next loss).
- Every such forward since the last call counts: several forwards before one backward (gradient accumulation,
  the two branches of a siamese network, the time steps of an RNN, where a site runs once per step) sum.
- A forward that raised midway leaves the terms of the sites that ran before the raise pending as long as its
  traceback lives (IPython keeps the last one, ``sys.last_traceback``): they would count in the next call. The
  trainers (:mod:`dnlib.training`) clear the pending terms at the start of each step; a loop of your own calls
  :func:`clear_penalties` before a step's forward (or after catching the exception).
- A term is dropped, and its graph freed, when no loss can use it any more: when a backward has run through its
  forward without it (the loss lacked the term: a warning says so, once), and, at the site's next forward,
  when nothing refers to its forward's output any more (the output and everything computed from it are gone).
  So pending terms never hold more than the graphs the caller holds plus the last forward's: a loop that never
  calls :func:`sparse_penalty` does not grow in memory. (Right after a forward whose output was not kept, its
  term is still there: ``model(x); sparse_penalty(model)`` gives that forward's penalty.)
- Under ``nn.DataParallel`` the replicas' terms land on the module itself (a replica shares its pending terms
  with the module it was copied from) and are combined weighted by each replica's share of the batch: the
  one-device value (per-replica batch statistics, as torch's BN under ``DataParallel``).
- Activation checkpointing (``torch.utils.checkpoint``): with ``use_reentrant=False`` (torch's recommendation) the
  checkpointed forward records its term as without checkpointing, and the recompute inside the backward records
  none (no forward run inside a backward keeps a term: no loss could still add it). ``use_reentrant=True`` runs the
  forward under ``no_grad`` and recomputes it inside the backward, so the term of its sites cannot be collected:
  :func:`sparse_penalty` has none from them, and the recompute says so (a warning, once per site); use
  ``use_reentrant=False``.
- Under ``torch.compile`` (``fullgraph=True`` works) a compiled graph cannot tell when its outputs are gone, and
  no code of the site runs between compiled calls, so a compiled forward's term stays pending until
  :func:`sparse_penalty` or :func:`clear_penalties`: collect every step, as the training loops do, or clear
  after compiled training forwards whose penalty you do not use.
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import field_mean, l1_mean
from .norm import DivisiveNorm
from .spec import NormSpec


def sparse_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the pending L1 terms of every :class:`DivisiveNorm` of ``model``: those of the forwards since the last
    call that can still be backpropagated (see the rules in :mod:`dnlib.norms.sparse`: no term from ``no_grad``,
    ``inference_mode`` or eval-mode forwards; several training forwards before one backward sum).

    Returns a scalar tensor (0 when there is none); the sites are cleared.
    """
    total = None
    for m in model.modules():
        if isinstance(m, DivisiveNorm):
            p = m.pop_penalty()
            if p is not None:
                total = p if total is None else total + p.to(total.device)
    if total is None:
        ref = next(model.parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    return total


def clear_penalties(model: nn.Module) -> None:
    """Drop the pending L1 terms (e.g. after a training forward whose loss is not used)."""
    for m in model.modules():
        if isinstance(m, DivisiveNorm):
            m.clear_penalty()


def l1_penalty(x: torch.Tensor, spec: NormSpec, alpha: float) -> torch.Tensor:
    """``alpha * mean|x - E_A[x]|`` for one activation tensor (what a site with this spec would add)."""
    return l1_mean(x - field_mean(x, spec), alpha)
