"""K copies of SRCNN (:class:`~dnlib.models.srcnn.SRCNN`) packed into ONE module (models layer; the stacked runs are
:mod:`dnlib.experiments.stacked_sr`).

:class:`StackedSRCNN` holds K SRCNNs of one configuration (any weights): the three convolutions become grouped
convolutions (``groups=K``, channel block k is copy k) and each normalizer sees only its copy's channels
(:func:`dnlib.models.stacked.stack_norm`: channel-pooling fields get ``groups=K``; where the spec refuses groups,
e.g. a window along the channels, the copies are folded into the batch, :class:`~dnlib.models.stacked.FoldedNorm`;
the L1 term of a site is the sum of the K copies' own). Input ``(N, K, H, W)`` (copy k's luma in channel k),
output ``(N, K, H - 16, W - 16)``; :meth:`StackedSRCNN.copy_state_dict` unpacks copy k (an ``SRCNN`` state dict).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .srcnn import SRCNN
from .stacked import stack_norm

__all__ = ["StackedSRCNN"]


def _same(values, what: str) -> None:
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"models: the copies differ in {what} ({values[0]!r} vs another); stacked copies must be "
                         f"the same configuration")


def _norm(norms: list) -> nn.Module:
    if all(isinstance(m, nn.Identity) for m in norms):
        return nn.Identity()
    try:
        return stack_norm(norms)
    except ValueError as e:
        if "groups" not in str(e):
            raise
        return stack_norm(norms, fold=True)


class StackedSRCNN(nn.Module):
    """K :class:`~dnlib.models.srcnn.SRCNN` s of one configuration as one module (module doc). Tensor names are the
    copies' (``conv1.weight``, ``norm1.running_mean``...), each the K copies' tensors concatenated along dim 0."""

    def __init__(self, models: Sequence[SRCNN]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("models: need at least one SRCNN")
        bad = [type(m).__name__ for m in models if not isinstance(m, SRCNN)]
        if bad:
            raise ValueError(f"models: stacking needs SRCNN models, got {bad[0]}")
        _same([m.extra_repr() for m in models], "norm or init")
        _same([[tuple(c.weight.shape) for c in (m.conv1, m.conv2, m.conv3)] for m in models], "conv shapes")
        m0, k = models[0], len(models)
        self.copies, self.shave, self.norm_name = k, m0.shave, m0.norm_name
        ref = m0.conv1.weight
        for name in ("conv1", "conv2", "conv3"):
            c = getattr(m0, name)
            setattr(self, name, nn.Conv2d(k * c.in_channels, k * c.out_channels, c.kernel_size, groups=k,
                                          device=ref.device, dtype=ref.dtype))
        self.norm1 = _norm([m.norm1 for m in models])
        self.norm2 = _norm([m.norm2 for m in models])
        self._copy_shapes = {n: tuple(t.shape) for n, t in m0.state_dict().items()}
        mine = {n.replace(".norm.", ".", 1) if n.startswith(("norm1.norm.", "norm2.norm.")) else n
                for n in self.state_dict()}
        if set(self._copy_shapes) != mine:
            raise ValueError(f"models: the SRCNN's tensors {sorted(set(self._copy_shapes) ^ mine)} have no place in "
                             f"the stacked model")
        self.load_copies(models)

    def _tensors(self) -> dict:
        """``{copy's name: (this module's tensor, rule)}``: rule ``cat`` (copy k's block of dim 0) or ``shared``."""
        out = {}
        for name, t in self.state_dict().items():
            key = name.replace(".norm.", ".", 1) if name.startswith(("norm1.norm.", "norm2.norm.")) else name
            shape = self._copy_shapes[key]
            out[key] = (t, "cat" if shape and t.shape[0] == self.copies * shape[0] else "shared")
        return out

    @torch.no_grad()
    def load_copies(self, models: Sequence[nn.Module]) -> None:
        """Pack K SRCNNs' parameters and buffers (copy k = ``models[k]``) into this module."""
        if len(models) != self.copies:
            raise ValueError(f"models: need {self.copies} models, got {len(models)}")
        states = [m.state_dict() for m in models]
        for name, (t, rule) in self._tensors().items():
            parts = [s[name] for s in states]
            if rule == "shared":
                if any(not torch.equal(p, parts[0]) for p in parts[1:]):
                    raise ValueError(f"models: {name} differs between the copies; it cannot be shared")
                t.copy_(parts[0])
            else:
                t.copy_(torch.cat(parts))

    def copy_state_dict(self, k: int) -> dict:
        """Copy ``k``'s tensors as an ``SRCNN`` state dict (views of this module's tensors, detached)."""
        if not 0 <= k < self.copies:
            raise ValueError(f"k: must be in [0, {self.copies}), got {k!r}")
        out = {}
        for name, (t, rule) in self._tensors().items():
            n = self._copy_shapes[name][0] if rule == "cat" else 0
            out[name] = t[k * n:(k + 1) * n] if rule == "cat" else t
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.conv3(x)

    def extra_repr(self) -> str:
        return f"copies={self.copies}, norm={self.norm_name!r}, shave={self.shave}"
