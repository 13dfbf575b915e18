"""Normalization with statistics per time step (Cooijmans et al. 2017, recurrent batch normalization): the BN cells
of :mod:`dnlib.models.rnn` (``BNLSTMCell``, ``BNRNNCell``) normalize step ``t`` of a sequence with step ``t``'s own
batch statistics and running averages, and one gain and bias shared over time (:class:`StepNorm`).
:func:`set_bn_eval_step` makes every such site of a model use one step's running statistics in eval mode (the
authors' test pass, PAPER.md §1.4, §5.4 item 8).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..norms.presets import NormLike, get_norm_layer

__all__ = ["StepNorm", "step_layer", "set_bn_eval_step"]


class StepNorm(nn.Module):
    """Batch normalization with separate statistics (and running averages) for every time step and one gain and
    bias shared over time (Cooijmans et al. 2017). Steps beyond ``max_steps`` use the last step's statistics.
    ``layer``: the resolved normalizer (:func:`~dnlib.norms.presets.get_norm_layer`) of every step, built without
    affine; ``affine``: the shared gain and bias.

    ``eval_step``: when set, eval mode uses that step's running statistics for every step (the authors' test
    pass, unrolled one step at a time, used only step 0's: PAPER.md §1.4, §5.4 item 8).
    """

    def __init__(self, layer, num_features: int, max_steps: int, affine: bool = True):
        super().__init__()
        self.steps = nn.ModuleList(layer(num_features, affine=False) for _ in range(max_steps))
        self.num_features, self.max_steps = num_features, max_steps
        self.eval_step: int | None = None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        if not self.training and self.eval_step is not None:
            t = self.eval_step
        y = self.steps[min(t, self.max_steps - 1)](x)
        return y if self.weight is None else torch.addcmul(self.bias, y, self.weight)

    def extra_repr(self):
        return f"{self.num_features}, max_steps={self.max_steps}, affine={self.weight is not None}"


def step_layer(norm: NormLike, norm_kwargs: Mapping | None) -> tuple:
    """The per-step normalizer of a BN cell (its own affine removed) and the shared ``affine`` (default True)."""
    layer = get_norm_layer(norm, norm_kwargs)
    kwargs = dict(layer.keywords)
    affine = kwargs.pop("affine", True)
    return get_norm_layer(layer.args[0], kwargs), affine


def set_bn_eval_step(model: nn.Module, step: int | None) -> None:
    """Make every BN cell of ``model`` use time step ``step``'s running statistics for all steps in eval mode (the
    authors' test pass, unrolled one step: ``step=0``), or each step its own (``step=None``, the default)."""
    for m in model.modules():
        if isinstance(m, StepNorm):
            m.eval_step = step
