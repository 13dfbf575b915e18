r"""Dynamic Tanh (Zhu, Chen, He, LeCun, Liu, CVPR 2025, arXiv:2503.10622): a normalizer without statistics.

.. math::

    y = \gamma \tanh(\alpha x) + \beta

elementwise, ``alpha`` one learned scalar (init 0.5), ``gamma``/``beta`` per channel. In Table-1 terms both fields
are empty (``NormSpec()``: no centring, no division); the *extra* is the squashing ``tanh(alpha x)`` that stands in
for the division (it bounds the output as LN's division does, for the tails only).

State dict: ``alpha`` ``(1,)``, ``gamma`` ``(C,)``, ``beta`` ``(C,)`` (no ``beta`` with ``beta=False``), the names of
Liger-Kernel's ``LigerDyT`` (``src/liger_kernel/transformers/dyt.py``), so its state dicts load. ``weight`` and
``bias`` are read-only aliases of ``gamma`` and ``beta`` (torch's names, which :func:`dnlib.convert_norms` copies).
Note that ``alpha`` here is DyT's slope, not the L1 weight ``alpha`` of :class:`~dnlib.norms.norm.DivisiveNorm`
(DyT has no L1 term).

Layout: ``gamma``/``beta`` act on dim 1 (channels first, as every dnlib normalizer; ``(N, C, *)`` inputs), or on
the last dim with ``channels_last=True`` (``LigerDyT``'s layout, a transformer's ``(N, L, C)``; any number of
leading dims). ``dnlib.convert_norms(model, "dyt", types=nn.LayerNorm)`` sets it for every ``nn.LayerNorm(C)``
it replaces, so a transformer's LayerNorms become DyT over the same last dim.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .spec import NormSpec, is_int, is_real

__all__ = ["DyT", "DYT_SPEC"]

#: DyT's Table-1 view: both fields empty (no statistics).
DYT_SPEC = NormSpec(eps=0.0)


class DyT(nn.Module):
    r"""Dynamic Tanh: ``gamma * tanh(alpha * x) + beta`` (see the module docstring).

    Args:
        num_features: C (Liger's ``hidden_size``).
        init_alpha: the initial slope ``alpha`` (0.5, the paper's default for non-LLM models).
        beta: learn the per-channel shift ``beta`` (Liger's ``beta=True``).
        channels_last: ``gamma``/``beta`` act on the last dim (Liger's layout) instead of dim 1.
        impl: ``"auto"`` or ``"general"`` (one path; accepted for the registry's uniform interface).

    Shape: ``(N, C, *)`` (``channels_last=False``) or ``(*, C)`` (``True``); output the same.

    Example::

        >>> dyt = DyT(64)                                         # gamma, beta per channel at dim 1
        >>> y = dyt(torch.randn(2, 64, 8, 8))
        >>> model = dnlib.convert_norms(transformer, "dyt", types=nn.LayerNorm)   # LN(C) -> DyT over dim -1
    """

    spec = DYT_SPEC
    affine = True

    def __init__(self, num_features: int, init_alpha: float = 0.5, beta: bool = True, channels_last: bool = False,
                 impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if not is_int(num_features) or num_features < 1:
            raise ValueError(f"num_features: must be an integer >= 1, got {num_features!r}")
        if not is_real(init_alpha) or not math.isfinite(init_alpha):
            raise ValueError(f"init_alpha: must be a finite number, got {init_alpha!r}")
        for name, val in (("beta", beta), ("channels_last", channels_last)):
            if not isinstance(val, bool):
                raise ValueError(f"{name}: must be True or False, got {val!r}")
        if impl not in ("auto", "general"):
            raise ValueError(f"impl: got {impl!r}; DyT has one path, allowed values are ['auto', 'general']")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.init_alpha, self.channels_last, self.impl = int(num_features), float(init_alpha), \
            channels_last, impl
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        self.gamma = nn.Parameter(torch.empty(num_features, **factory))
        self.beta = nn.Parameter(torch.empty(num_features, **factory)) if beta else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.init_alpha)
            self.gamma.fill_(1)
            if self.beta is not None:
                self.beta.zero_()

    @property
    def weight(self) -> nn.Parameter:
        """``gamma`` (torch's name for a normalizer's gain)."""
        return self.gamma

    @property
    def bias(self) -> nn.Parameter | None:
        """``beta`` (torch's name for a normalizer's shift), None with ``beta=False``."""
        return self.beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"input: expected a real floating-point tensor, got dtype {x.dtype}")
        dim = x.dim() - 1 if self.channels_last else 1
        if x.dim() < 2 - self.channels_last or x.shape[dim] != self.num_features:
            where = "the last dim" if self.channels_last else "dim 1"
            raise ValueError(f"input: expected {self.num_features} channels at {where} (channels_last="
                             f"{self.channels_last}), got shape {tuple(x.shape)}")
        in_dtype = x.dtype
        if in_dtype in (torch.float16, torch.bfloat16):  # (in float32, as Liger's kernel)
            x = x.float()
        shape = (-1,) if self.channels_last else (1, -1) + (1,) * (x.dim() - 2)
        y = self.gamma.to(x.dtype).view(shape) * torch.tanh(x * self.alpha.to(x.dtype))
        y = y if self.beta is None else y + self.beta.to(x.dtype).view(shape)
        return y if y.dtype == in_dtype else y.to(in_dtype)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, init_alpha={self.init_alpha:g}"
        if self.beta is None:
            s += ", beta=False"
        if self.channels_last:
            s += ", channels_last=True"
        return s
