"""A deep plain CNN (no skip connections) for signal-propagation probes: ``depth`` 3x3 convolutions, each followed by
a normalizer and a ReLU, the width doubled and the map halved (stride 2) at the start of each of three stages, then
global average pooling and a linear classifier. He (fan-in, ReLU) initialization, zero biases: without a normalizer
the forward signal keeps its scale in expectation, so what changes it with depth is the normalizer and training.
(Bjorck et al. 2018, "Understanding batch normalization", study the same question on a deeper ResNet.)
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.presets import NormLike, get_norm_layer, norm_name

__all__ = ["PlainCNN"]


class PlainCNN(nn.Module):
    """``depth`` conv-norm-ReLU blocks in three stages of widths ``width``, ``2 width``, ``4 width``.

    Args:
        num_classes: classes of the linear head.
        norm, norm_kwargs: the normalizer of every block (as every dnlib model: a preset name or NormSpec and the
            :func:`dnlib.make_norm` overrides).
        depth: conv layers (>= 3: at least one per stage).
        width: channels of the first stage.
        in_channels: input channels.

    ``model.convs`` and ``model.norms`` are the blocks' layers, in order (the probes watch them)."""

    def __init__(self, num_classes: int = 10, norm: NormLike = "none", *, norm_kwargs: Mapping | None = None,
                 depth: int = 12, width: int = 16, in_channels: int = 3):
        super().__init__()
        if not (isinstance(depth, int) and depth >= 3):
            raise ValueError(f"depth: must be an integer >= 3 (one conv per stage at least), got {depth!r}")
        if not (isinstance(width, int) and width >= 1):
            raise ValueError(f"width: must be an integer >= 1, got {width!r}")
        layer = get_norm_layer(norm, norm_kwargs)
        starts = {round(i * depth / 3) for i in range(3)}
        convs, norms, c = [], [], in_channels
        stage = -1
        for i in range(depth):
            if i in starts:
                stage += 1
            out = width * 2 ** stage
            convs.append(nn.Conv2d(c, out, 3, stride=2 if (i in starts and i > 0) else 1, padding=1))
            norms.append(layer(out))
            c = out
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.fc = nn.Linear(c, num_classes)
        self.norm_name = norm_name(norm)
        self.depth = depth
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return self.fc(x.mean((2, 3)))

    def decay_parameters(self) -> tuple:
        """``(weights, others)``: conv and FC weights, and everything else."""
        weights = [m.weight for m in list(self.convs) + [self.fc]]
        ids = {id(w) for w in weights}
        return weights, [p for p in self.parameters() if id(p) not in ids]

    def extra_repr(self) -> str:
        return f"depth={self.depth}, norm={self.norm_name!r}"
