r"""GDN: a learned channel-suppression field (Balle, Laparra, Simoncelli 2016; compressai's ``GDN``/``GDN1``).

.. math::

    \text{GDN:}\quad y_i = \frac{x_i}{\sqrt{\beta_i + \sum_j \gamma_{ij} x_j^2}} \qquad
    \text{IGDN:}\quad y_i = x_i \sqrt{\beta_i + \sum_j \gamma_{ij} x_j^2} \qquad
    \text{GDN1:}\quad y_i = \frac{x_i}{\beta_i + \sum_j \gamma_{ij} |x_j|}

at every position (and example) separately: the suppression field is all channels of one position, no
centring (an empty summation field), each neighbour weighted by a learned ``gamma_ij >= 0`` instead of the
box weight ``1/C`` of ``NormSpec(None, "channel")``; ``beta`` plays sigma^2 + eps, one per channel.

Parameterization, as compressai's ``NonNegativeParametrizer`` (the stored parameters are ``beta`` and ``gamma``
under the same names and buffers as compressai, so its state dicts load): with pedestal ``p = 2**-36``
(``reparam_offset**2``, offset ``2**-18``)

.. math::

    \beta = \max(\beta_u, \sqrt{\beta_{min} + p})^2 - p \ge \beta_{min}, \qquad
    \gamma = \max(\gamma_u, \sqrt{p})^2 - p \ge 0,

where ``max`` is compressai's ``LowerBound``: its gradient passes where ``u >= bound`` or where the gradient
descent step would raise ``u`` (``grad < 0``), and is 0 otherwise, so a parameter stuck below its bound can come
back. Init (compressai's): ``beta = 1``, ``gamma = gamma_init * I`` (0.1), i.e. ``beta_u = sqrt(1 + p)``,
``gamma_u = sqrt(gamma_init * I + p)`` (the off-diagonal ``sqrt(p)``, exactly at the bound).
``gamma[i, j]`` is output channel i's weight on input channel j (compressai's ``conv2d`` weight layout).

:class:`GDN` is a :class:`~dnlib.norms.norm.DivisiveNorm` (``spec = NormSpec()``, no affine), so the sparse L1
penalty of PAPER.md §2 works through :func:`dnlib.sparse_penalty` as at any site: with ``alpha > 0`` each training
forward adds ``alpha * mean|x|``, the L1 norm of the *input* ``x`` (GDN has no summation field, so
``E_A[x] = 0``, as for ``rms`` and ``lrn``), averaged over all its elements.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .norm import DivisiveNorm
from .spec import NormSpec, is_real

#: compressai's ``NonNegativeParametrizer`` default offset; the pedestal is its square (2**-36).
REPARAM_OFFSET = 2.0 ** -18


class _LowerBoundFn(torch.autograd.Function):
    """``max(x, bound)`` with compressai's gradient: passed where ``x >= bound`` or ``grad < 0``, else 0.

    In the functorch form (``setup_context``, a generated vmap rule) so that it runs under ``torch.func``
    transforms; forward mode (``jvp``) passes the tangent of ``x`` where ``x >= bound`` (the derivative of max away
    from the bound, and the side the backward takes at it), else the bound's."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, bound):
        return torch.max(x, bound)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bound = inputs
        ctx.save_for_backward(x, bound)
        ctx.save_for_forward(x, bound)

    @staticmethod
    def backward(ctx, g):
        x, bound = ctx.saved_tensors
        return ((x >= bound) | (g < 0)).to(g.dtype) * g, None

    @staticmethod
    def jvp(ctx, tx, tbound):
        x, bound = ctx.saved_tensors
        if tx is None:
            tx = torch.zeros_like(x)
        if tbound is None:
            tbound = torch.zeros_like(bound)
        return torch.where(x >= bound, tx, tbound)


class LowerBound(nn.Module):
    """compressai's ``LowerBound``: ``max(x, bound)`` (buffer ``bound``, shape ``(1,)``) with the gradient of
    :class:`_LowerBoundFn`."""

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LowerBoundFn.apply(x, self.bound.to(x.dtype))


class NonNegativeParametrizer(nn.Module):
    """compressai's ``NonNegativeParametrizer``: ``forward(u) = LowerBound(sqrt(minimum + p))(u)**2 - p >=
    minimum`` with pedestal ``p = reparam_offset**2`` (buffer ``pedestal``); :meth:`init` is its inverse for
    values ``>= 0``: ``sqrt(max(x + p, p))``."""

    def __init__(self, minimum: float = 0.0, reparam_offset: float = REPARAM_OFFSET):
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        self.register_buffer("pedestal", torch.tensor([self.reparam_offset ** 2]))
        self.lower_bound = LowerBound((self.minimum + self.reparam_offset ** 2) ** 0.5)

    def init(self, x: torch.Tensor) -> torch.Tensor:
        ped = self.pedestal.to(x.dtype)
        return torch.sqrt(torch.max(x + ped, ped))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.lower_bound(u) ** 2 - self.pedestal.to(u.dtype)


def gdn(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, inverse: bool = False,
        simplified: bool = False) -> torch.Tensor:
    """The GDN family on ``x`` of shape ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` with *effective* (already
    reparameterized) ``beta`` ``(C,)`` and ``gamma`` ``(C, C)``: ``x * norm**-0.5`` (GDN), ``x * norm**0.5``
    (``inverse``), ``x / norm1`` (``simplified``: GDN1), ``x * norm1`` (both), where ``norm = beta + gamma @
    x**2`` and ``norm1 = beta + gamma @ |x|`` along the channels at each position."""
    n, c = x.shape[:2]
    f = x.abs() if simplified else x * x
    norm = F.conv1d(f.reshape(n, c, -1), gamma.to(x.dtype).unsqueeze(-1), beta.to(x.dtype)).reshape(x.shape)
    if simplified:
        return x * norm if inverse else x / norm
    return x * (norm.sqrt() if inverse else norm.rsqrt())


class GDN(DivisiveNorm):
    r"""Generalized divisive normalization (Balle et al. 2016), its inverse (IGDN) and GDN1 (Johnston et al.
    2019); see the module docstring for the equations and compressai's parameterization.

    Args:
        num_features: C, the number of channels.
        inverse: IGDN (multiply by the norm instead of dividing).
        simplified: GDN1 (``|x|`` and no square root).
        beta_min: the lower bound of the effective ``beta`` (compressai's ``1e-6``); must be > 0.
        gamma_init: the effective ``gamma`` starts as ``gamma_init * I``; must be >= 0.
        alpha: weight of the sparse L1 penalty at this site (``alpha * mean|x|``: GDN does not centre).
        impl: ``"auto"`` or ``"general"`` (GDN has one path).

    Attributes:
        beta, gamma: the underlying parameters (compressai's names); :attr:`effective_beta` and
            :attr:`effective_gamma` are the values used in the formula.

    Shape: input ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; output the same.
    """

    def __init__(self, num_features: int, inverse: bool = False, simplified: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1, alpha: float = 0.0, impl: str = "auto", device=None, dtype=None):
        if impl not in ("auto", "general"):
            raise ValueError(f"impl: got {impl!r}; GDN has one path, allowed values are ['auto', 'general']")
        for name, val, low in (("beta_min", beta_min, "> 0"), ("gamma_init", gamma_init, ">= 0")):
            if not is_real(val) or not math.isfinite(val) or (val <= 0 if low == "> 0" else val < 0):
                raise ValueError(f"{name}: must be a finite number {low}, got {val!r}")
        for name, val in (("inverse", inverse), ("simplified", simplified)):
            if not isinstance(val, bool):
                raise ValueError(f"{name}: must be True or False, got {val!r}")
        super().__init__(num_features, NormSpec(), affine=False, alpha=alpha, impl="general", device=device,
                         dtype=dtype)
        self.inverse, self.simplified = inverse, simplified
        self.beta_min, self.gamma_init = float(beta_min), float(gamma_init)
        factory = {"device": device, "dtype": dtype}
        self.beta_reparam = NonNegativeParametrizer(minimum=self.beta_min).to(device)
        self.gamma_reparam = NonNegativeParametrizer().to(device)
        self.beta = nn.Parameter(torch.empty(num_features, **factory))
        self.gamma = nn.Parameter(torch.empty(num_features, num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """compressai's init: effective ``beta = 1``, ``gamma = gamma_init * I``."""
        super().reset_parameters()
        if getattr(self, "gamma", None) is None:  # (DivisiveNorm.__init__ calls this before GDN's parameters exist)
            return
        with torch.no_grad():
            self.beta.copy_(self.beta_reparam.init(torch.ones_like(self.beta)))
            eye = torch.eye(self.num_features, dtype=self.gamma.dtype, device=self.gamma.device)
            self.gamma.copy_(self.gamma_reparam.init(self.gamma_init * eye))

    @property
    def effective_beta(self) -> torch.Tensor:
        """``beta`` as used in the formula (>= ``beta_min``)."""
        return self.beta_reparam(self.beta)

    @property
    def effective_gamma(self) -> torch.Tensor:
        """``gamma`` as used in the formula (>= 0), ``(C, C)``, row i = output channel i's weights."""
        return self.gamma_reparam(self.gamma)

    def _forward_general(self, x: torch.Tensor, use_batch_stats: bool, sync=None) -> torch.Tensor:
        # DivisiveNorm.forward has checked the input, cast half precision to float32 and tapped x for the L1 term
        y = gdn(x, self.effective_beta, self.effective_gamma, self.inverse, self.simplified)
        if self.alpha and self.training:
            self._add_penalty(x)  # E_A[x] = 0: GDN has no summation field
        return y

    def _where(self) -> str:
        return f"GDN({self.num_features}, alpha={self.alpha:g})"

    def extra_repr(self) -> str:
        s = f"{self.num_features}"
        if self.inverse:
            s += ", inverse=True"
        if self.simplified:
            s += ", simplified=True"
        s += f", beta_min={self.beta_min:g}, gamma_init={self.gamma_init:g}"
        if self.alpha:
            s += f", alpha={self.alpha:g}"
        return s
