"""The sparse (L1) regularizer of PAPER.md §2.

At every normalization site with ``alpha > 0`` the training loss gets
``alpha * mean |z - E_A[z]|``: the pre-normalization activation centred by *that site's own* summation-field
mean (batch mean for BN, example mean for LN, local mean for DN, 0 for no normalization), averaged over all its
elements, gradients flowing through the mean. Sites accumulate their terms during forward passes in training
mode (an RNN site once per time step); :func:`sparse_penalty` sums them over the model and clears them.

- Under ``nn.DataParallel`` the replicas' terms land on the module itself (a replica shares its pending terms
  with the module it was copied from) and are combined weighted by each replica's share of the batch: the
  one-device value (per-replica batch statistics, as torch's BN under ``DataParallel``).
- A term whose forward has already been backpropagated without it (``sparse_penalty`` not called before
  ``backward``) can give no gradient any more; at the site's next forward (or collection) it is detached,
  which frees its graph, and a warning says the loss lacked it. Its value is still reported. So forgetting
  ``sparse_penalty`` in a training loop costs no memory; forwards with gradients that are never backpropagated
  keep their graphs until collected or dropped (:func:`clear_penalties`), as their outputs would.
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import field_mean
from .norm import DivisiveNorm
from .spec import NormSpec


def sparse_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the L1 terms accumulated by every :class:`DivisiveNorm` of ``model`` since the last call.

    Returns a scalar tensor (0 when no site has ``alpha > 0``); the sites are cleared.
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
    """Drop accumulated L1 terms (e.g. after a forward pass whose loss is not used)."""
    for m in model.modules():
        if isinstance(m, DivisiveNorm):
            m.clear_penalty()


def l1_penalty(x: torch.Tensor, spec: NormSpec, alpha: float) -> torch.Tensor:
    """``alpha * mean|x - E_A[x]|`` for one activation tensor (what a site with this spec would add)."""
    return alpha * (x - field_mean(x, spec)).abs().mean()
