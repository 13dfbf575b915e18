r"""Masked statistics: any field of a :class:`~dnlib.norms.spec.NormSpec` restricted to the units a mask keeps.

For padded sequences (a batch of sentences of different lengths, ``(N, C, L)`` with padding at the end) the
padding must not enter a field's statistics. ``DivisiveNorm.forward(x, mask=m)`` computes every field mean as
the mean over the kept units only,

.. math::

    \mathbb{E}^m_A[x] = \frac{\sum_{A} m\,x}{\sum_{A} m}, \qquad
    \mathbb{E}^m_B[v^2] = \frac{\sum_{B} m\,v^2}{\sum_{B} m},

(weighted sums for Gaussian windows), and then eqs. 3-4 as usual: ``y = v / (sigma^2 + eps + s E^m_B[v^2])^p``
at *every* unit, the padding included (as flax: its value is defined, and a loss that masks it ignores it).
This is flax's ``_compute_stats(..., mask=...)`` (``flax/linen/normalization.py``: ``x.mean(axes, where=mask)``)
for every field, windows included: a window's mean is over its kept neighbours. ``floor="mean"`` takes the
mean of the divisor over the kept units of the example. The sparse L1 term is the mean of ``|v|`` over the kept
units. A field with no kept unit has mean 0 and second moment 0 (flax: NaN), so its outputs stay finite.

The mask is a boolean (or 0/1) tensor broadcastable to the input with one dimension per input dimension, e.g.
``(N, 1, L)`` for ``(N, C, L)`` (``True``: keep). Running statistics (a field over the batch) are the masked
batch mean and variance; the unbiased factor uses the number of kept values per channel, ``n / (n - 1)``
(``running_stats="tf"``: none, flax's ``batch_stats``). Windowed fields take a mask under ``border="valid"``
only; a process group (synchronized batch statistics) does not take a mask.

Plain differentiable torch ops (built on :func:`dnlib.norms.functional.field_mean`), so gradients of every order
come from autograd.
"""
from __future__ import annotations

import torch

from . import functional as DF
from .spec import NormSpec


def check_mask(mask, x: torch.Tensor, param: str = "mask") -> torch.Tensor:
    """``mask`` as a float 0/1 tensor of ``x``'s dtype expanded to ``x``'s shape; a clear error otherwise."""
    if not torch.is_tensor(mask):
        raise ValueError(f"{param}: expected a boolean tensor broadcastable to the input {tuple(x.shape)}, got "
                         f"{type(mask).__name__}")
    if mask.is_complex() or (mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all())):
        raise ValueError(f"{param}: expected booleans (or 0/1 values), got a {mask.dtype} tensor with other values")
    ok = mask.dim() == x.dim() and all(m in (1, s) for m, s in zip(mask.shape, x.shape))
    if not ok:
        hint = (x.shape[0], 1) + tuple(x.shape[2:])
        raise ValueError(f"{param}: shape {tuple(mask.shape)} does not broadcast to the input {tuple(x.shape)} "
                         f"dimension by dimension; give one size per input dimension, 1 or the input's (e.g. "
                         f"{hint} for a mask over the positions of each example)")
    return mask.to(device=x.device, dtype=x.dtype).expand(x.shape)


def check_spec(spec: NormSpec, param: str = "mask") -> None:
    """Refuse a spec whose masked statistics are not defined here (windows under another border than valid)."""
    if spec.windowed and spec.border != "valid":
        raise ValueError(f"{param}: a mask needs border='valid' for windowed fields (a window's mean over its kept "
                         f"neighbours), and this spec has border={spec.border!r}")


@DF.compile_safe_cache(maxsize=256)
def _field_spec(spec: NormSpec, which: str) -> NormSpec | None:
    """A spec whose summation field is field ``which`` ("sum" or "sup") of ``spec`` (None when that is empty)."""
    axes = spec.sum_axes if which == "sum" else spec.sup_axes
    if not axes:
        return None
    groups = spec.groups if "channel" in axes else 1
    return NormSpec(axes, None, spec.window(which), None, groups=groups, border=spec.border,
                    sum_weights=spec.weights(which), eps=0.0)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (no kept unit: ``num`` is 0 there too), NaN-free gradients."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), torch.zeros_like(num))


def masked_mean(t: torch.Tensor, m: torch.Tensor, dims: tuple) -> torch.Tensor:
    """The mean of ``t`` over ``dims`` (keepdim) counting only where ``m`` (0/1, ``t``'s shape) is 1."""
    if not dims:
        return t * m
    return _ratio((t * m).sum(dims, keepdim=True), m.sum(dims, keepdim=True))


def field_mean(t: torch.Tensor, m: torch.Tensor, spec: NormSpec, which: str = "sum") -> torch.Tensor:
    """``E^m`` over field ``which`` of ``spec`` at every unit (``t``'s shape or broadcastable to it)."""
    fspec = _field_spec(spec, which)
    return _ratio(DF.field_mean(t * m, fspec), DF.field_mean(m, fspec))


def masked_divisive_norm_stats(x: torch.Tensor, spec: NormSpec, m: torch.Tensor, sigma=None, mean=None, sup=None):
    """Divisive normalization with masked field statistics: ``(y, v, mu, s)`` (``mu``/``s`` None where the spec
    has no such field; given ``mean``/``sup``, running statistics broadcastable to ``x``, replace them).
    ``m``: the 0/1 mask expanded to ``x`` (:func:`check_mask`)."""
    check_spec(spec)
    sig = spec.sigma if sigma is None else sigma
    sig2 = sig * sig if torch.is_tensor(sig) else float(sig) ** 2
    mu = s = None
    v = x
    if spec.centre:
        mu = field_mean(x, m, spec, "sum") if mean is None else mean
        v = x - mu
    if not spec.divide:
        return v.clone() if v is x else v, v, mu, s
    s = field_mean(v * v, m, spec, "sup") if sup is None else sup
    t = s * spec.sup_scale + spec.eps_for(x.dtype) + sig2
    d = t.sqrt() if spec.power == 0.5 else t.pow(spec.power)
    d = d.expand(x.shape)
    if spec.floor == "mean":  # the divisor's mean over the kept units of each example (and group)
        g = spec.groups
        dg, mg = d.reshape(x.shape[0], g, -1), m.reshape(x.shape[0], g, -1)
        c = masked_mean(dg, mg, (2,))
        d = torch.maximum(dg, c).reshape(x.shape)
    return v / d, v, mu, s


def field_count(m: torch.Tensor, axes) -> torch.Tensor:
    """The number of kept values a per-channel field over ``axes`` (the batch, and space, no window) pools, per
    channel, shape ``(C,)``."""
    dims = tuple(d for d in range(m.dim()) if (d == 0 and "batch" in axes) or (d >= 2 and "space" in axes))
    return m.sum(dims) if dims else m[0]
