"""K copies of the paper's CIFAR CNN packed into ONE module (models layer; the stacked runs are
:mod:`dnlib.experiments.stacked`).

:class:`StackedCifarCNN` holds K :class:`~dnlib.models.CifarCNN` of one configuration (any weights): convolutions
become grouped convolutions (``groups=K``: channel block k is copy k), the FC layers batched matrix products
(:class:`StackedLinear`, weights ``(K, out, in)``), and each normalizer sees only its copy's channels
(:func:`stack_norm`: a field that pools ``channel`` gets ``groups=K``, or, for ``impl="triton"``, whose kernels
take no groups, the copies are folded into the batch, :class:`FoldedNorm`; the L1 term of a site is ``alpha * K *
mean|v|``, the sum of the K copies' own terms). Input ``(N, K*3, 32, 32)``, output ``(K, N, classes)``;
:meth:`StackedCifarCNN.copy_state_dict` unpacks copy k, :meth:`StackedCifarCNN.load_copies` packs K models.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.norm import DivisiveNorm
from .cnn import CifarCNN

__all__ = ["StackedCifarCNN", "StackedLinear", "stack_norm", "norm_settings", "FoldedNorm"]


class StackedLinear(nn.Module):
    """K independent ``nn.Linear(in_features, out_features)`` layers: ``weight (K, out, in)``, ``bias (K, out)``;
    input ``(K, N, in)`` -> ``(K, N, out)`` (one batched matrix product)."""

    def __init__(self, copies: int, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.copies, self.in_features, self.out_features = copies, in_features, out_features
        self.weight = nn.Parameter(torch.zeros(copies, out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(copies, out_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"copies={self.copies}, in_features={self.in_features}, out_features={self.out_features}"


def _same(values, what: str) -> None:
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"models: the copies differ in {what} ({values[0]!r} vs another); stacked copies must be "
                         f"the same configuration")


class FoldedNorm(nn.Module):
    """A per-example normalizer ``norm`` of C channels applied to each copy's channel block of a ``(N, K*C, ...)``
    input by folding the K copies into the batch: ``(N, K*C, H, W)`` -> ``(N*K, C, H, W)`` -> back (a copy of a
    channels-last input). For implementations that take no channel groups (``impl="triton"``)."""

    def __init__(self, norm: DivisiveNorm, copies: int):
        super().__init__()
        self.norm, self.copies = norm, copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.reshape(x.shape[0] * self.copies, x.shape[1] // self.copies, *x.shape[2:]))
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"copies={self.copies}"


def norm_settings(m: DivisiveNorm) -> dict:
    """Every setting of a :class:`DivisiveNorm` that shapes its forward or its buffers (its constructor's arguments
    but ``device``/``dtype``, which follow its tensors), by name: a stack of copies holds one value of each."""
    return {"spec": m.spec, "num_features": m.num_features, "affine": m.affine, "bias": m.bias is not None,
            "momentum": m.momentum, "track_running_stats": m.track_running_stats, "alpha": m.alpha, "impl": m.impl,
            "running_stats": m.running_stats, "process_group": m.process_group}


def stack_norm(norms: Sequence[nn.Module], fold: bool | None = None) -> nn.Module:
    """One module over ``K * C`` channels computing the K normalizers ``norms`` (:class:`DivisiveNorm` s of C channels
    equal in every setting of :func:`norm_settings`) on their own channel blocks: a :class:`DivisiveNorm` with those
    settings whose fields that pool ``channel`` get ``groups`` times K and whose ``alpha`` is times K (the L1 term is
    the mean over the K equally sized blocks: times K it is the sum of the K copies' terms); its running statistics
    have the copies' dtype. Parameters and buffers are not copied (see :meth:`StackedCifarCNN.load_copies`). Copies
    that differ in a setting are refused naming it, and so are subclasses of DivisiveNorm (batch renorm, FRN, ...),
    whose own settings a DivisiveNorm stack would drop.

    ``fold``: instead, a :class:`FoldedNorm` (the copies folded into the batch; per-example fields without
    parameters or running statistics only, e.g. DN*); ``None``: fold when the impl takes no groups (``"triton"``).
    """
    k, m0 = len(norms), norms[0]
    odd = next((m for m in norms if type(m) is not DivisiveNorm), None)
    if odd is not None:
        raise ValueError(f"norms: stacking needs DivisiveNorm layers, got {type(odd).__name__} (a subclass's own "
                         f"settings and forward would be lost in a DivisiveNorm stack)")
    settings = [norm_settings(m) for m in norms]
    for name, value in settings[0].items():
        other = next((s[name] for s in settings[1:] if s[name] != value), value)
        if other != value:
            raise ValueError(f"models: the copies' normalizers differ in {name} ({value!r} vs {other!r}); stacked "
                             f"copies must be the same configuration")
    spec = m0.spec
    if spec.learn_sigma:
        raise ValueError(f"norms: a learned sigma (one scalar per site) cannot be stacked, got {spec}")
    ref = next(iter(m0.parameters()), None)
    ref = ref if ref is not None else next((b for b in m0.buffers() if b.is_floating_point()), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    if fold is None:
        fold = m0.impl == "triton"
    if fold:
        if m0.affine or m0.track_running_stats or spec.pools_batch:
            raise ValueError(f"fold: folding the copies into the batch needs a per-example normalizer without "
                             f"parameters or running statistics, got {m0}")
        return FoldedNorm(DivisiveNorm(m0.num_features, spec, affine=False, track_running_stats=False,
                                       alpha=m0.alpha * k, impl=m0.impl, process_group=m0.process_group,
                                       running_stats=m0.running_stats, **factory), k)
    if "channel" in spec.sum_axes | spec.sup_axes:
        spec = spec.replace(groups=spec.groups * k)
    out = DivisiveNorm(k * m0.num_features, spec, affine=m0.affine, bias=not m0.affine or m0.bias is not None,
                       momentum=m0.momentum, track_running_stats=m0.track_running_stats, alpha=m0.alpha * k,
                       impl=m0.impl, process_group=m0.process_group, running_stats=m0.running_stats, **factory)
    for name in ("running_mean", "running_var"):
        mine, theirs = getattr(out, name), getattr(m0, name)
        if mine is not None and theirs is not None and mine.dtype != theirs.dtype:
            setattr(out, name, mine.to(theirs.dtype))
    return out


class StackedCifarCNN(nn.Module):
    """K copies of :class:`~dnlib.models.CifarCNN` (one configuration, any weights) as one module.

    Input ``(N, K*3, 32, 32)`` (channel block k: copy k's images), output ``(K, N, num_classes)``. Parameter and
    buffer names are those of the copies (``convs.0.weight``, ``norms.1.running_mean``, ``fc1.weight``...); each
    packs the K copies' tensors: along dim 0 for conv and normalizer tensors (grouped convolutions, ``groups=K``),
    stacked on a new dim 0 for the FC layers. :meth:`copy_state_dict` unpacks copy k (a ``CifarCNN`` state dict).
    ``fold``: how the normalizers keep the copies apart (:func:`stack_norm`).
    """

    def __init__(self, models: Sequence[CifarCNN], fold: bool | None = None):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("models: need at least one CifarCNN")
        bad = [type(m).__name__ for m in models if not isinstance(m, CifarCNN)]
        if bad:
            raise ValueError(f"models: stacking needs CifarCNN models, got {bad[0]}")
        m0 = models[0]
        _same([m.extra_repr() for m in models], "num_classes, norm or dropout")
        _same([[tuple(c.weight.shape) for c in m.convs] for m in models], "conv widths")
        _same([[(p.kind, p.kernel, p.stride) for p in m.pools] for m in models], "pooling")
        k = self.copies = len(models)
        ref = m0.fc1.weight
        factory = {"device": ref.device, "dtype": ref.dtype}
        self.convs = nn.ModuleList(
            nn.Conv2d(k * c.in_channels, k * c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                      groups=k, bias=c.bias is not None, **factory) for c in m0.convs)
        self.norms = nn.ModuleList(stack_norm([m.norms[i] for m in models], fold) for i in range(len(m0.norms)))
        self.pools = copy.deepcopy(m0.pools)
        self.fc1 = StackedLinear(k, m0.fc1.in_features, m0.fc1.out_features, **factory)
        self.fc2 = StackedLinear(k, m0.fc2.in_features, m0.fc2.out_features, **factory)
        self.dropout, self.num_classes, self.norm_name = m0.dropout, m0.num_classes, m0.norm_name
        self._copy_shapes = {name: tuple(t.shape) for name, t in m0.state_dict().items()}
        if set(self._copy_shapes) != set(self.state_dict()):
            odd = sorted(set(self._copy_shapes) ^ set(self.state_dict()))
            raise ValueError(f"models: the CifarCNN's tensors {odd} have no place in the stacked model")
        self.load_copies(models)

    def _pack_rule(self, name: str, stacked_shape: tuple) -> str:
        shape = self._copy_shapes[name]
        if stacked_shape == (self.copies,) + shape:
            return "stack"
        if shape and stacked_shape == (self.copies * shape[0],) + shape[1:]:
            return "cat"
        return "shared"   # a scalar every copy has alike (num_batches_tracked)

    @torch.no_grad()
    def load_copies(self, models: Sequence[nn.Module]) -> None:
        """Pack the parameters and buffers of K ``CifarCNN`` models (copy k = ``models[k]``) into this module."""
        if len(models) != self.copies:
            raise ValueError(f"models: need {self.copies} models, got {len(models)}")
        states = [m.state_dict() for m in models]
        for name, t in self.state_dict().items():
            parts = [s[name] for s in states]
            rule = self._pack_rule(name, tuple(t.shape))
            if rule == "shared":
                if any(not torch.equal(p, parts[0]) for p in parts[1:]):
                    raise ValueError(f"models: {name} differs between the copies; it cannot be shared")
                t.copy_(parts[0])
            else:
                t.copy_(torch.stack(parts) if rule == "stack" else torch.cat(parts))

    def copy_state_dict(self, k: int) -> dict:
        """Copy ``k``'s tensors as a ``CifarCNN`` state dict (views of this module's tensors, detached)."""
        if not 0 <= k < self.copies:
            raise ValueError(f"k: must be in [0, {self.copies}), got {k!r}")
        out = {}
        for name, t in self.state_dict().items():
            rule, shape = self._pack_rule(name, tuple(t.shape)), self._copy_shapes[name]
            out[name] = t[k] if rule == "stack" else t[k * shape[0]:(k + 1) * shape[0]] if rule == "cat" else t
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, pool in zip(self.convs, self.norms, self.pools):
            x = pool(F.relu(norm(conv(x))))
        n = x.shape[0]
        x = x.reshape(n, self.copies, -1).transpose(0, 1)        # (K, N, C*H*W): copy k's flattened features
        x = F.dropout(self.fc1(x), self.dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def extra_repr(self) -> str:
        return (f"copies={self.copies}, num_classes={self.num_classes}, norm={self.norm_name!r}, "
                f"dropout={self.dropout:g}")
