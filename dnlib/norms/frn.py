r"""Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, CVPR 2020, arXiv:1911.09737).

.. math::

    \nu^2 = \mathbb{E}_{space}[x^2], \qquad
    y = \max\left(\gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta,\ \tau\right)

per example and channel. In Table-1 terms it is ``NormSpec(None, "space")``: no summation field (no centring),
the suppression field the spatial positions of one channel of one example (the IN field without its mean), so
the division is the general path of :class:`~dnlib.norms.norm.DivisiveNorm`. The *extra* beyond (A, B, sigma)
is the TLU, a learned per-channel threshold ``tau`` applied after the affine (``apply_act=False`` drops it:
timm's ``FilterResponseNormAct2d`` is that followed by its activation, a ReLU by default).

The learned-eps option of the paper (``eps = eps_floor + |eps_l|``) is the spec's learned sigma: with
``learn_eps=True`` the divisor is ``sqrt(nu^2 + sigma^2 + eps)`` with ``sigma`` a learned scalar (initialised at
``sqrt(eps_init)``; it enters squared, so the learned part stays >= 0 and ``eps`` is its floor). The paper's
``|eps_l|`` and our ``sigma^2`` are two parameterizations of the same non-negative term (their gradients
differ: ``sign(eps_l)`` vs ``2 sigma``).

State dict: ``weight``, ``bias``, ``tau`` (``tau`` absent with ``apply_act=False``), the names of timm's
``FilterResponseNormTlu2d`` (``timm/layers/filter_response_norm.py``), so its state dicts load; ``learn_eps`` adds
``sigma``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .norm import DivisiveNorm
from .spec import NormSpec, is_real

__all__ = ["FilterResponseNorm2d", "FRN_SPEC"]

#: FRN's Table-1 view: no summation field, B = the spatial positions of one channel (timm's eps 1e-5).
FRN_SPEC = NormSpec(None, "space", eps=1e-5)


class FilterResponseNorm2d(DivisiveNorm):
    r"""FRN + TLU: ``max(gamma * x / sqrt(mean_space(x^2) + eps) + beta, tau)`` (see the module docstring).

    Args:
        num_features: C.
        apply_act: the TLU (a learned threshold ``tau`` per channel, init 0); False: FRN and the affine only.
        eps: the floor added to the mean square (timm's 1e-5; the paper's 1e-6).
        learn_eps: learn an extra ``sigma^2`` beside ``eps`` (the paper's learned eps).
        eps_init: with ``learn_eps``, the initial learned part (``sigma = sqrt(eps_init)``, default 1e-4).
        alpha: weight of the L1 penalty at this site (on the input: FRN does not centre).
        impl: ``"auto"`` or ``"general"`` (FRN's field has no native kernel: both run the general path).

    Shape: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` (timm's takes 4-D only); output the same.

    Example::

        >>> frn = FilterResponseNorm2d(64)               # == timm's FilterResponseNormTlu2d(64)
        >>> y = frn(torch.randn(2, 64, 8, 8))
    """

    def __init__(self, num_features: int, apply_act: bool = True, eps: float = 1e-5, learn_eps: bool = False,
                 eps_init: float = 1e-4, alpha: float = 0.0, impl: str = "auto", device=None, dtype=None):
        if impl not in ("auto", "general"):
            raise ValueError(f"impl: got {impl!r}; FRN's field has no native kernel, allowed values are "
                             f"['auto', 'general']")
        for name, val in (("apply_act", apply_act), ("learn_eps", learn_eps)):
            if not isinstance(val, bool):
                raise ValueError(f"{name}: must be True or False, got {val!r}")
        if not is_real(eps_init) or not math.isfinite(eps_init) or eps_init < 0:
            raise ValueError(f"eps_init: must be a finite number >= 0, got {eps_init!r}")
        if learn_eps and eps_init == 0:
            raise ValueError("eps_init: must be > 0 with learn_eps=True (the learned eps is sigma^2, whose gradient "
                             "2 sigma is 0 at sigma = 0: it would never move), got 0")
        spec = FRN_SPEC.replace(eps=eps, learn_sigma=learn_eps, sigma=math.sqrt(eps_init) if learn_eps else 0.0)
        super().__init__(num_features, spec, affine=True, alpha=alpha, impl=impl, device=device, dtype=dtype)
        self.apply_act = apply_act
        if apply_act:
            self.tau = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("tau", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "tau", None) is not None:  # (DivisiveNorm.__init__ calls this before tau exists)
            nn.init.zeros_(self.tau)

    @property
    def eps(self) -> float:
        """The floor beside the mean square (timm's attribute)."""
        return self.spec.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # FRN and the affine: the general path of NormSpec(None, "space")
        if self.tau is None:
            return y
        return torch.maximum(y, self.tau.to(y.dtype).view((1, -1) + (1,) * (y.dim() - 2)))

    def _where(self) -> str:
        return f"FilterResponseNorm2d({self.num_features}, alpha={self.alpha:g})"

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.spec.eps:g}"
        if not self.apply_act:
            s += ", apply_act=False"
        if self.spec.learn_sigma:
            s += f", learn_eps=True, eps_init={self.spec.sigma ** 2:g}"
        if self.alpha:
            s += f", alpha={self.alpha:g}"
        return s
