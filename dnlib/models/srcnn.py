"""SRCNN 9-5-5 (Dong et al. 2014) with a normalizer before each ReLU: the model of PAPER.md §3.4 (Tables 5, 6).

.. code-block:: text

    y (1 x H x W, bicubic-upsampled luma in [0, 1])
      -> conv 9x9, 64  -> [norm] -> ReLU
      -> conv 5x5, 32  -> [norm] -> ReLU
      -> conv 5x5, 1   (linear)                   -> 1 x (H - 16) x (W - 16)

Every convolution is VALID (no padding), as in the authors' code: a 33 x 33 training patch gives a 17 x 17
output, and a whole test image loses :attr:`SRCNN.shave` = 8 px on every side. The network predicts the
high-resolution luma directly (no residual). Weights are drawn from a normal with std 1e-3 truncated at two
standard deviations (TensorFlow's ``truncated_normal``), biases are 0 (``init="paper"``); ``init="he"`` (the
fast configuration) uses He-normal weights instead.

``norm=`` picks the normalizer of the two hidden layers:

=============  ==================================================================================================
``"none"``     SRCNN as published (Tables 5/6 "SRCNN").
``"bn"``       batch norm (affine, running statistics with momentum 0.1 used in eval mode; Tables 5/6 "BN").
``"dn*"``      the paper's DN*: DN over all channels with a 5 x 5 summation and a 7 x 7 suppression window,
               sigma = 1, and the sparse L1 term alpha = 0.1 at each site, *applied* (PAPER.md §2.3 SR table).
               Windows average over the real neighbours at the map border (``border="valid"``).
``"dn*-code"`` what the authors' released code actually trains under the name ``dn-star``: no L1 term (the SR
               model never adds it, §5.4 item 10), zero padding counted at the border and the suppression sum
               divided by the 5 x 5 *summation* area, which inflates the variance by 49/25 (§1.2 step 5,
               §5.4 item 1): ``border="reference"``, ``alpha=0``; and ``eps=0``: the code's epsilon is sigma^2
               alone (``sqrt(s + sigma^2)``, §1.2 step 6).
``"dn-ms"``    the code's ``dnms``: 5 x 5 local mean subtraction only, no division; zero padding counted at the
               border (the mean divided by 25 everywhere, ``border="reference"``), no L1.
=============  ==================================================================================================

Any other :func:`dnlib.make_norm` preset name, a :class:`~dnlib.spec.NormSpec`, or a callable
``f(num_features) -> nn.Module`` is accepted too; ``norm_kwargs`` are overrides passed to :func:`dnlib.make_norm`
(e.g. ``{"alpha": 0.0}``).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from ..presets import make_norm
from ..spec import NormSpec

__all__ = ["SRCNN", "SR_NORMS", "srcnn_norm"]

#: The SRCNN normalizers by name: (make_norm preset, overrides). See the module docstring.
SR_NORMS: dict = {
    "none": ("none", {}),
    "bn": ("bn", {}),
    "dn*": ("dn", dict(sum_window=5, sup_window=7, sigma=1.0, alpha=0.1)),
    "dn*-code": ("dn", dict(sum_window=5, sup_window=7, sigma=1.0, eps=0.0, alpha=0.0, border="reference")),
    "dn-ms": ("dn-ms", dict(window=5, border="reference")),
}
_ALIASES = {"dn-star": "dn*", "dnstar": "dn*", "dn-star-code": "dn*-code", "dnms": "dn-ms", "base": "none",
            "srcnn": "none"}

NormLike = Union[str, NormSpec, Callable[[int], nn.Module], None]


def srcnn_norm(norm: NormLike, num_features: int, **overrides) -> nn.Module:
    """The normalizer module for one SRCNN hidden layer (``nn.Identity`` for ``"none"`` without L1)."""
    if norm is None:
        norm = "none"
    if isinstance(norm, NormSpec):
        return make_norm(norm, num_features, **overrides)
    if callable(norm):
        return norm(num_features)
    if not isinstance(norm, str):
        raise ValueError(f"norm: expected a name, a NormSpec or a callable, got {type(norm).__name__}")
    key = _ALIASES.get(norm.lower(), norm.lower())
    preset, defaults = SR_NORMS.get(key, (key, {}))
    kwargs = {**defaults, **overrides}
    if preset == "none" and not kwargs.get("alpha"):
        return nn.Identity()
    return make_norm(preset, num_features, **kwargs)


def _canonical(norm: NormLike) -> str:
    if isinstance(norm, str):
        return _ALIASES.get(norm.lower(), norm.lower())
    if norm is None:
        return "none"
    return repr(norm)


class SRCNN(nn.Module):
    """SRCNN 9-5-5 with ``norm`` before the two ReLUs (see the module docstring for the names).

    Args:
        norm: ``"none"``, ``"bn"``, ``"dn*"``, ``"dn*-code"``, ``"dn-ms"``, any :func:`dnlib.make_norm` preset,
            a :class:`~dnlib.spec.NormSpec` or a callable ``f(num_features)``.
        channels: filters of the two hidden layers (paper: 64, 32).
        kernels: kernel sizes of the three layers (paper: 9, 5, 5).
        in_channels: 1 (luma).
        init: ``"paper"`` (truncated normal with ``init_std``) or ``"he"`` (He-normal; the fast configuration:
            direct prediction from a 1e-3 init takes far longer to reach even bicubic quality).
        init_std: std of the paper's truncated-normal weight init (paper and code: 1e-3).
        norm_kwargs: overrides for :func:`dnlib.make_norm`, e.g. ``{"alpha": 0.0}``.

    Shape:
        - Input: ``(N, 1, H, W)``, bicubic-upsampled luma in [0, 1].
        - Output: ``(N, 1, H - 2 * shave, W - 2 * shave)``, ``shave = sum((k - 1) // 2)`` = 8.

    Examples::

        >>> net = SRCNN("dn*")
        >>> net(torch.rand(2, 1, 33, 33)).shape
        torch.Size([2, 1, 17, 17])
    """

    def __init__(self, norm: NormLike = "none", channels: tuple = (64, 32), kernels: tuple = (9, 5, 5),
                 in_channels: int = 1, init: str = "paper", init_std: float = 1e-3,
                 norm_kwargs: Optional[Mapping] = None):
        super().__init__()
        if len(channels) != 2 or len(kernels) != 3 or any(k % 2 == 0 for k in kernels):
            raise ValueError(f"SRCNN: need 2 hidden widths and 3 odd kernel sizes, got channels={channels}, "
                             f"kernels={kernels}")
        c1, c2 = channels
        k1, k2, k3 = kernels
        if init not in ("paper", "he"):
            raise ValueError(f"init: got {init!r}; allowed 'paper' (N(0, init_std) truncated) or 'he'")
        self.norm_name = _canonical(norm)
        self.init, self.init_std = init, init_std
        self.conv1 = nn.Conv2d(in_channels, c1, k1)
        self.norm1 = srcnn_norm(norm, c1, **dict(norm_kwargs or {}))
        self.conv2 = nn.Conv2d(c1, c2, k2)
        self.norm2 = srcnn_norm(norm, c2, **dict(norm_kwargs or {}))
        self.conv3 = nn.Conv2d(c2, in_channels, k3)
        self.shave = sum((k - 1) // 2 for k in kernels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``init="paper"``: weights ~ N(0, init_std^2) truncated at +-2 std (TF ``truncated_normal``).
        ``init="he"``: N(0, 2 / fan_in) before the ReLUs, N(0, 1 / fan_in) for the linear output. Biases 0."""
        for conv in (self.conv1, self.conv2, self.conv3):
            if self.init == "paper":
                nn.init.trunc_normal_(conv.weight, std=self.init_std, a=-2 * self.init_std, b=2 * self.init_std)
            else:
                gain = 1.0 if conv is self.conv3 else 2.0
                nn.init.normal_(conv.weight, std=math.sqrt(gain / conv.weight[0].numel()))
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))   # patch extraction: conv -> norm -> ReLU
        x = torch.relu(self.norm2(self.conv2(x)))   # non-linear mapping
        return self.conv3(x)                         # reconstruction (linear)

    def extra_repr(self) -> str:
        return f"norm={self.norm_name!r}, init={self.init!r}, shave={self.shave}"
