r"""Frozen batch normalization: BN with fixed statistics and a fixed affine (torchvision's ``FrozenBatchNorm2d``,
which timm's ``create_norm`` offers as ``frozenbatchnorm2d`` and its ``freeze_batch_norm_2d`` swaps in).

.. math::

    y = (x - \mu_{run}) \frac{\gamma}{\sqrt{\sigma^2_{run} + \epsilon}} + \beta
      = x \cdot s + (\beta - \mu_{run} s), \qquad s = \gamma\,(\sigma^2_{run} + \epsilon)^{-1/2}

In Table-1 terms it is the ``bn`` row, ``NormSpec("batch,space", "batch,space")``, evaluated with its running
statistics. The *extra*: there are no training-mode statistics (training and evaluation compute the same thing,
nothing is updated) and ``gamma``/``beta`` are buffers, not parameters, so nothing in the layer learns.

State dict: ``weight``, ``bias``, ``running_mean``, ``running_var`` (all buffers), torchvision's names; as its
class, loading drops a ``num_batches_tracked`` entry, so an ``nn.BatchNorm2d``'s state dict loads too.
``dnlib.convert_norms(model, "frozen-bn", types=nn.BatchNorm2d)`` freezes a trained network (the affine and the
statistics are copied); ``convert_norms(model, "bn", types=FrozenBatchNorm2d)`` thaws it.
"""
from __future__ import annotations

import torch

from .norm import DivisiveNorm
from .spec import NormSpec

__all__ = ["FrozenBatchNorm2d", "FROZEN_BN_SPEC"]

#: The row FrozenBatchNorm2d evaluates: BN's fields (torchvision's eps 1e-5).
FROZEN_BN_SPEC = NormSpec("batch,space", "batch,space", eps=1e-5)


class FrozenBatchNorm2d(DivisiveNorm):
    r"""BatchNorm with fixed running statistics and affine (see the module docstring): torchvision's formula.

    Args:
        num_features: C.
        eps: added to the running variance (torchvision's default 1e-5; older torchvision releases had 0).
        impl: ``"auto"`` or ``"general"`` (one path).

    Shape: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` (torchvision's: any shape with channels at dim 1 of a
    4-D input); output the same.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, impl: str = "auto", device=None, dtype=None):
        if impl not in ("auto", "general"):
            raise ValueError(f"impl: got {impl!r}; FrozenBatchNorm2d has one path, allowed values are "
                             f"['auto', 'general']")
        super().__init__(num_features, FROZEN_BN_SPEC.replace(eps=eps), affine=False, track_running_stats=True,
                         device=device, dtype=dtype)
        self.impl = impl
        self.affine = True  # a per-channel affine, fixed: buffers (torchvision's), not parameters
        factory = {"device": device, "dtype": dtype}
        del self.weight, self.bias
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("num_batches_tracked", None)

    @property
    def eps(self) -> float:
        return self.spec.eps

    def reset_running_stats(self) -> None:
        if getattr(self, "running_mean", None) is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if isinstance(getattr(self, "weight", None), torch.Tensor):
            with torch.no_grad():
                self.weight.fill_(1)
                self.bias.zero_()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # (torchvision's: a BatchNorm2d's state dict loads)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        in_dtype = x.dtype
        if in_dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        w, b = self.weight.to(x.dtype).reshape(shape), self.bias.to(x.dtype).reshape(shape)
        rv, rm = self.running_var.to(x.dtype).reshape(shape), self.running_mean.to(x.dtype).reshape(shape)
        scale = w * (rv + self.eps).rsqrt()
        y = x * scale + (b - rm * scale)
        return y if y.dtype == in_dtype else y.to(in_dtype)

    def _where(self) -> str:
        return f"FrozenBatchNorm2d({self.num_features})"

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}"
