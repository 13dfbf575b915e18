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

``norm=`` picks the normalizer of the two hidden layers, as in every model of :mod:`dnlib.models`: a preset name
(:func:`dnlib.list_norms`) or a :class:`~dnlib.norms.spec.NormSpec`, with ``norm_kwargs`` the :func:`dnlib.make_norm`
overrides (e.g. ``SRCNN("dn", norm_kwargs={"sum_window": 5, "sup_window": 7, "sigma": 1.0})``). ``"none"``
without an L1 weight builds ``nn.Identity`` (SRCNN as published); with ``alpha`` it is the identity plus the L1
term.

The SR experiment's named normalizers (``"none"``, ``"bn"``, ``"dn*"``, ``"dn*-code"``, ``"dn-ms"`` and the authors'
spellings ``dn-star``, ``dnms``, ``base``) are rows of :mod:`dnlib.experiments.sr_configs` (a preset plus overrides,
with the paper's and the code's values); build one with ``get_config("fast").build_model("dn*")``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..norms.presets import NormLike, get_norm_layer, norm_name

__all__ = ["SRCNN"]


class SRCNN(nn.Module):
    """SRCNN 9-5-5 with ``norm`` before the two ReLUs (see the module docstring).

    Args:
        norm: a preset name (:func:`dnlib.list_norms`; ``"none"``: no normalizer) or a
            :class:`~dnlib.norms.spec.NormSpec`. The SR experiment's rows (``"dn*"``, ...) are in
            :mod:`dnlib.experiments.sr_configs`.
        channels: filters of the two hidden layers (paper: 64, 32).
        kernels: kernel sizes of the three layers (paper: 9, 5, 5).
        in_channels: 1 (luma).
        init: ``"paper"`` (truncated normal with ``init_std``) or ``"he"`` (He-normal; the fast configuration:
            direct prediction from a 1e-3 init takes far longer to reach even bicubic quality).
        init_std: std of the paper's truncated-normal weight init (paper and code: 1e-3).
        norm_kwargs: overrides for :func:`dnlib.make_norm`, e.g. ``{"sigma": 1.0, "alpha": 0.1}``.

    Shape:
        - Input: ``(N, 1, H, W)``, bicubic-upsampled luma in [0, 1].
        - Output: ``(N, 1, H - 2 * shave, W - 2 * shave)``, ``shave = sum((k - 1) // 2)`` = 8.

    Examples::

        >>> net = SRCNN("dn", norm_kwargs={"sum_window": 5, "sup_window": 7, "sigma": 1.0, "alpha": 0.1})
        >>> net(torch.rand(2, 1, 33, 33)).shape
        torch.Size([2, 1, 17, 17])
    """

    def __init__(self, norm: NormLike = "none", channels: tuple = (64, 32), kernels: tuple = (9, 5, 5),
                 in_channels: int = 1, init: str = "paper", init_std: float = 1e-3,
                 norm_kwargs: Mapping | None = None):
        super().__init__()
        if len(channels) != 2 or len(kernels) != 3 or any(k % 2 == 0 for k in kernels):
            raise ValueError(f"SRCNN: need 2 hidden widths and 3 odd kernel sizes, got channels={channels}, "
                             f"kernels={kernels}")
        c1, c2 = channels
        k1, k2, k3 = kernels
        if init not in ("paper", "he"):
            raise ValueError(f"init: got {init!r}; allowed 'paper' (N(0, init_std) truncated) or 'he'")
        try:
            layer = get_norm_layer(norm, norm_kwargs)
        except ValueError as e:
            if isinstance(norm, str) and "unknown normalizer" in str(e):
                raise ValueError(f"{e}. The SR experiment's rows ('dn*', 'dn*-code', 'dn-ms', 'dn-star', ...) are "
                                 f"in dnlib.experiments.sr_configs: get_config(...).build_model({norm!r})") from None
            raise
        identity = layer.args[0] == "none" and not layer.keywords.get("alpha")
        self.norm_name = norm_name(norm)
        self.init, self.init_std = init, init_std
        self.conv1 = nn.Conv2d(in_channels, c1, k1)
        self.norm1 = nn.Identity() if identity else layer(c1)
        self.conv2 = nn.Conv2d(c1, c2, k2)
        self.norm2 = nn.Identity() if identity else layer(c2)
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
