"""A CIFAR ResNet (He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016, §4.2) with
``norm=`` at every site: ResNet-20 by default.

::

    input 3x32x32
    conv 3x3, 16 -> norm -> ReLU                                                  32x32
    stage 1: n basic blocks, 16 channels                                          32x32
    stage 2: n basic blocks, 32 channels (the first with stride 2)                16x16
    stage 3: n basic blocks, 64 channels (the first with stride 2)                 8x8
    global average pool -> FC num_classes

    basic block: conv 3x3 -> norm -> ReLU -> conv 3x3 -> norm, + shortcut(x), -> ReLU

with ``6n + 2`` weighted layers (n = 3: ResNet-20, 0.27M parameters with BN; He et al. Table 6 lists 20, 32,
44, 56, 110). The convolutions have no bias (the normalizer that follows has the bias, when its preset is
affine). Where a block changes the size (stride 2, twice the channels) the shortcut is

- ``shortcut="A"`` (default, the paper's choice for CIFAR): the identity on every second position
  (``x[:, :, ::2, ::2]``) with the new channels zero (zero padding of the channel axis, appended after the old
  ones): no parameters;
- ``shortcut="B"``: a 1x1 convolution with stride 2 followed by a normalizer (projection; +2752 parameters
  with BN at n = 3).

Initialization: He (Kaiming) normal for the convolutions (``mode="fan_out"``, as torchvision's ResNets), torch's
default for the FC layer; every normalizer starts at its own initialization (gamma 1, beta 0).

Every site is built by :func:`dnlib.norms.presets.get_norm_layer` from ``norm`` and ``norm_kwargs``, as in every model
of :mod:`dnlib.models`; with ``alpha`` in ``norm_kwargs`` each of the ``6n + 1`` sites (+2 with shortcut B) adds
its L1 term (:func:`dnlib.sparse_penalty`). ``norm="gn"`` needs ``groups`` dividing 16 (its preset default of
32 groups does not): e.g. ``norm_kwargs={"groups": 8}``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.norm import DivisiveNorm
from ..norms.presets import NormLike, get_norm_layer, norm_name

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "SHORTCUTS"]

SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    """He et al.'s basic block: two 3x3 convolutions with a normalizer after each, plus the shortcut (see the
    module's docstring for ``shortcut``). ``norm_layer(C)`` builds a normalizer."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm_layer(planes)
        self.stride, self.extra = stride, planes - in_planes
        self.shortcut = None
        if (stride != 1 or in_planes != planes) and shortcut == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          norm_layer(planes))

    def _identity(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else self._identity(x)))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with ``6 * blocks + 2`` layers and ``norm`` at every site.

    Args:
        num_classes: 10 (CIFAR-10) or 100.
        norm: a preset name (:func:`dnlib.list_norms`), a :class:`~dnlib.norms.spec.NormSpec` or None (= ``"none"``).
        norm_kwargs: :func:`dnlib.make_norm` overrides for every site (``sigma``, ``alpha``, ``groups``, ...).
        blocks: basic blocks per stage, n (3: ResNet-20, 5: -32, 7: -44, 9: -56, 18: -110).
        widths: channels of the three stages (16, 32, 64 in the paper).
        shortcut: ``"A"`` (zero-padding identity, no parameters) or ``"B"`` (1x1 projection + norm).

    ``model.norm_sites()`` lists every normalizer, ``sparse_sites()`` those with an L1 term, ``decay_parameters()``
    splits the conv/FC weights (weight decay) from the rest, as :class:`~dnlib.models.CifarCNN`.

    Examples::

        >>> net = CifarResNet(10, "dn", norm_kwargs=dict(sigma=0.5, alpha=0.005))   # DN* at every site
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, norm: NormLike = "bn", *, norm_kwargs: Mapping | None = None,
                 blocks: int = 3, widths=(16, 32, 64), shortcut: str = "A"):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
        if not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks: must be an integer >= 1 (basic blocks per stage), got {blocks!r}")
        if len(widths) != 3 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"widths: need 3 positive integer stage widths, got {widths!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut: must be one of {list(SHORTCUTS)}, got {shortcut!r}")
        layer = get_norm_layer(norm, norm_kwargs)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.norm1 = layer(widths[0])
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(in_planes, planes, 2 if (i > 0 and b == 0) else 1, layer, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(widths[2], num_classes)
        self.num_classes, self.blocks, self.shortcut = num_classes, blocks, shortcut
        self.norm_name = norm_name(norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He normal (fan_out) convolutions; the FC layer and normalizers get their own default init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.fc.reset_parameters()

    def features(self, x: torch.Tensor, upto: int = 4, pre_norm: bool = False) -> torch.Tensor:
        """Activations after the stem (``upto=1``) or after stage ``upto - 1`` (2-4); with ``pre_norm`` (only with
        ``upto=1``) the first convolution's output before its normalizer (what Table 10's statistics use)."""
        if upto not in (1, 2, 3, 4):
            raise ValueError(f"upto: must be 1 (the stem) to 4 (the last stage), got {upto!r}")
        if pre_norm and upto != 1:
            raise ValueError("pre_norm: only the first layer's responses (upto=1) are available before normalization")
        z = self.conv1(x)
        if pre_norm:
            return z
        x = F.relu(self.norm1(z))
        for stage in (self.stage1, self.stage2, self.stage3)[:upto - 1]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))

    def norm_sites(self) -> list:
        """Every normalizer site, in forward order, as ``(name, module)``."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, DivisiveNorm)]

    def sparse_sites(self) -> list:
        """The normalizers that add an L1 term (``alpha > 0``) to the loss, as ``(name, module)``."""
        return [(n, m) for n, m in self.norm_sites() if m.alpha > 0]

    def decay_parameters(self) -> tuple:
        """``(weights, others)``: the conv and FC weights (the recipe's weight decay applies to them) and the rest
        (FC bias, normalizer gamma/beta and any learned normalizer parameters)."""
        weights = [m.weight for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        ids = {id(w) for w in weights}
        return weights, [p for p in self.parameters() if id(p) not in ids]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, layers={6 * self.blocks + 2}, norm={self.norm_name!r}, "
                f"shortcut={self.shortcut!r}")


def resnet20(num_classes: int = 10, norm: NormLike = "bn", *, norm_kwargs: Mapping | None = None,
             shortcut: str = "A") -> CifarResNet:
    """ResNet-20 of He et al. 2016 (3 stages x 3 basic blocks, 16/32/64 channels): :class:`CifarResNet` with
    ``blocks=3``."""
    return CifarResNet(num_classes, norm, norm_kwargs=norm_kwargs, blocks=3, shortcut=shortcut)
