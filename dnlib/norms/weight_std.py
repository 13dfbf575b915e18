r"""Weight standardization (Qiao et al. 2019, arXiv:1903.10520) and its scaled form (Brock et al. 2021, NF-ResNets,
arXiv:2101.08692): a normalizer of the *weights*, as timm's ``StdConv2d`` and ``ScaledStdConv2d``.

.. math::

    \hat W_{o} = \frac{W_{o} - \mathbb{E}[W_{o}]}{\sqrt{\mathrm{Var}[W_{o}] + \epsilon}} \qquad
    \text{(scaled: } \hat W_o \cdot g_o \cdot \gamma / \sqrt{\text{fan-in}}\text{)}

with ``W_o`` the ``fan_in = (C_in / groups) * k_h * k_w`` weights of output channel ``o`` and a biased variance.
In Table-1 terms: the weight viewed as ``(1, C_out, fan_in)`` normalized by ``NormSpec("space", "space")``
(:data:`WS_SPEC`; A = B = the fan-in of one output channel, eps 1e-6), i.e. instance norm of the weight, computed
by :func:`~dnlib.norms.functional.divisive_norm`. The *extra*: it applies to a conv's weight (not to activations);
the scaled form adds a learned gain per output channel and the fixed fan-in scale ``gamma / sqrt(fan_in)``.

- :class:`StdConv2d`, :class:`ScaledStdConv2d`: ``nn.Conv2d`` subclasses with timm's constructor, defaults and
  state dict (``weight``, ``bias``; ``gain`` ``(C_out, 1, 1, 1)`` for the scaled one), so timm's state dicts load.
- :class:`WeightStandardization` (the ``ws`` preset: ``make_norm("ws", C_out)``): the same map as a module from a
  weight to its standardized weight, for ``torch.nn.utils.parametrize.register_parametrization(conv, "weight",
  make_norm("ws", conv.out_channels))``. It normalizes weights, so a model's ``norm=`` and
  :func:`dnlib.convert_norms` refuse it (a clear error).
- :func:`standardize_convs` turns a network's ``nn.Conv2d`` layers into standardized ones (what
  :func:`dnlib.convert_norms` is for activation normalizers); :func:`fold_standardized_convs` bakes the standardized
  weights back into plain convolutions (the same outputs, for deployment).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .functional import divisive_norm
from .spec import NormSpec, is_real

__all__ = ["StdConv2d", "ScaledStdConv2d", "WeightStandardization", "standardize_weight", "get_padding", "WS_SPEC",
           "standardize_convs", "fold_standardized_convs"]

#: The weight ``(C_out, ...)`` viewed as ``(1, C_out, fan_in)``: A = B = the fan-in of each output channel.
WS_SPEC = NormSpec("space", "space", eps=1e-6)


def standardize_weight(weight: torch.Tensor, eps: float = 1e-6, gain: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` ``(C_out, ...)`` standardized per output channel (biased variance, ``eps`` beside it), times
    ``gain`` (``C_out`` values, any shape) when given: divisive normalization of the ``(1, C_out, fan_in)`` view
    with :data:`WS_SPEC`."""
    o = weight.shape[0]
    y = divisive_norm(weight.reshape(1, o, -1), WS_SPEC.replace(eps=eps))
    if gain is not None:
        y = y * gain.reshape(1, o, 1).to(y.dtype)
    return y.reshape(weight.shape)


def get_padding(kernel_size, stride=1, dilation=1):
    """timm's ``get_padding``: the symmetric padding ``((stride - 1) + dilation * (k - 1)) // 2`` (per dim)."""
    if any(isinstance(v, (tuple, list)) for v in (kernel_size, stride, dilation)):
        k, s, d = (v if isinstance(v, (tuple, list)) else (v, v) for v in (kernel_size, stride, dilation))
        return [get_padding(*a) for a in zip(k, s, d)]
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def _check_eps(eps) -> float:
    if not is_real(eps) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: must be a finite number >= 0, got {eps!r}")
    return float(eps)


class StdConv2d(nn.Conv2d):
    """``nn.Conv2d`` with weight standardization (timm's ``StdConv2d``, BiT's ResNet-V2): each forward convolves
    with :func:`standardize_weight` of ``weight``. ``padding=None`` is timm's symmetric :func:`get_padding`; no bias
    by default; eps 1e-6."""

    def __init__(self, in_channel: int, out_channels: int, kernel_size, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, eps: float = 1e-6, device=None, dtype=None):
        if padding is None:
            padding = get_padding(kernel_size, stride, dilation)
        super().__init__(in_channel, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, device=device, dtype=dtype)
        self.eps = _check_eps(eps)

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps:g}"


class ScaledStdConv2d(nn.Conv2d):
    """``nn.Conv2d`` with scaled weight standardization (timm's ``ScaledStdConv2d``, NF-ResNets): the standardized
    weight times ``gain * gamma / sqrt(fan_in)``, ``gain`` a learned ``(C_out, 1, 1, 1)`` (init ``gain_init``).
    Bias on by default; eps 1e-6."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = True, gamma: float = 1.0, eps: float = 1e-6, gain_init: float = 1.0,
                 device=None, dtype=None):
        if padding is None:
            padding = get_padding(kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, device=device, dtype=dtype)
        self.scale = float(gamma) * self.weight[0].numel() ** -0.5  # gamma / sqrt(fan-in)
        self.eps = _check_eps(eps)
        self.gain_init = float(gain_init)
        self.gain = nn.Parameter(torch.empty((self.out_channels, 1, 1, 1), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "gain", None) is not None:  # (nn.Conv2d.__init__ calls this before gain exists)
            nn.init.constant_(self.gain, self.gain_init)

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.eps, self.gain * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps:g}, scale={self.scale:g}"


class WeightStandardization(nn.Module):
    """The ``ws`` preset: a module mapping a weight ``(C_out, ...)`` to :func:`standardize_weight` of it, for
    ``torch.nn.utils.parametrize.register_parametrization``; ``scaled=True`` adds the learned ``gain`` ``(C_out,
    1, 1, 1)`` and the fan-in scale ``gamma / sqrt(fan_in)`` of :class:`ScaledStdConv2d` (fan-in read from the
    weight). It normalizes weights: ``normalizes = "weights"``."""

    normalizes = "weights"
    spec = WS_SPEC

    def __init__(self, num_features: int, eps: float = 1e-6, scaled: bool = False, gamma: float = 1.0,
                 gain_init: float = 1.0, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if impl not in ("auto", "general"):
            raise ValueError(f"impl: got {impl!r}; allowed values are ['auto', 'general']")
        if not isinstance(scaled, bool):
            raise ValueError(f"scaled: must be True or False, got {scaled!r}")
        self.num_features, self.eps, self.scaled, self.gamma = int(num_features), _check_eps(eps), scaled, float(gamma)
        self.gain_init = float(gain_init)
        if scaled:
            self.gain = nn.Parameter(torch.full((self.num_features, 1, 1, 1), self.gain_init, device=device,
                                                dtype=dtype))
        else:
            self.register_parameter("gain", None)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() < 2 or weight.shape[0] != self.num_features:
            raise ValueError(f"weight: expected a weight of shape ({self.num_features}, ...) (C_out = num_features "
                             f"first; ws normalizes weights, not activations), got {tuple(weight.shape)}")
        gain = None if self.gain is None else self.gain * (self.gamma * weight[0].numel() ** -0.5)
        return standardize_weight(weight, self.eps, gain)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}" + (", scaled=True" if self.scaled else "")


def _swap(model: nn.Module, make) -> nn.Module:
    """Replace every submodule ``m`` for which ``make(m)`` returns a module (in place; shared modules stay shared)."""
    built = {}
    for m in model.modules():
        if id(m) not in built:
            new = make(m)
            if new is not None:
                built[id(m)] = new
    if id(model) in built:
        return built[id(model)]
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in built:
                setattr(parent, name, built[id(child)])
    return model


def standardize_convs(model: nn.Module, scaled: bool = False, eps: float = 1e-6, gamma: float = 1.0) -> nn.Module:
    """Turn every plain ``nn.Conv2d`` of ``model`` into a :class:`StdConv2d` (``scaled=True``: a
    :class:`ScaledStdConv2d` with ``gamma`` and gain 1) with the same hyper-parameters, weight and bias, in place
    (BiT-style weight standardization of an existing network; the network computes something else from now on, as
    it is meant to). Convolutions that already standardize, or with a ``padding_mode`` other than ``"zeros"``
    (which the standardized convolutions do not implement: a ``ValueError`` naming the layer), are refused or left
    alone as said. Returns the model (the new layer when ``model`` itself is a ``Conv2d``)."""
    eps = _check_eps(eps)
    for name, m in model.named_modules():
        if type(m) is nn.Conv2d and m.padding_mode != "zeros":
            raise ValueError(f"{name or 'model'}: padding_mode={m.padding_mode!r}; StdConv2d pads with zeros only")

    def make(m):
        if type(m) is not nn.Conv2d:
            return None
        kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                  eps=eps, device=m.weight.device, dtype=m.weight.dtype)
        new = (ScaledStdConv2d(m.in_channels, m.out_channels, m.kernel_size, gamma=gamma, **kw) if scaled else
               StdConv2d(m.in_channels, m.out_channels, m.kernel_size, **kw))
        with torch.no_grad():
            new.weight.copy_(m.weight)
            if m.bias is not None:
                new.bias.copy_(m.bias)
        return new.train(m.training)

    return _swap(model, make)


def fold_standardized_convs(model: nn.Module) -> nn.Module:
    """The inverse for deployment: every :class:`StdConv2d` / :class:`ScaledStdConv2d` becomes a plain ``nn.Conv2d``
    whose weight is the standardized weight (computed once), so the model computes exactly what it did, without the
    per-forward standardization. In place; returns the model."""
    def make(m):
        if not isinstance(m, (StdConv2d, ScaledStdConv2d)):
            return None
        new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                        dilation=m.dilation, groups=m.groups, bias=m.bias is not None, device=m.weight.device,
                        dtype=m.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(m.standardized_weight())
            if m.bias is not None:
                new.bias.copy_(m.bias)
        return new.train(m.training)

    return _swap(model, make)
