"""What a layer converted by :func:`dnlib.convert_norms` takes over from the layer it replaces.

:func:`carry_over` copies, from an old normalizer into the new one built for it, what means the same thing in
both: the per-channel affine (``weight``/``bias`` of shape ``(C,)``, or a LayerNorm/RMSNorm's elementwise one when
it is constant over the positions) and the running statistics (``running_mean``, ``running_var``,
``num_batches_tracked`` of a BatchNorm or a batch-pooling DivisiveNorm into a layer that keeps them). It returns
the report's words for what was copied and what was not (and why): an affine the preset has no place for, an
InstanceNorm's running statistics, the old layer's own extra parameters. :func:`carried_settings` gives the old
layer's settings (:data:`CARRIED`: eps, momentum, group count) that the new one is built with in place of the
preset's, and names a value the new layer cannot take. The rules are stated in :mod:`dnlib.norms.convert`, which
finds the layers, builds the new ones and swaps them in.

Part of the normalizers layer (``dnlib.norms``): it imports torch, :mod:`dnlib.norms.norm`,
:mod:`dnlib.norms.batch_variants` and :mod:`dnlib.norms.presets` (the settings each preset's module takes) only.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .batch_variants import BatchChannelNorm, BatchRenorm, SwitchNorm
from .dyt import DyT
from .norm import DivisiveNorm
from .presets import PRESETS

__all__ = ["carry_over", "carried_settings", "named_settings", "build_settings", "CARRIED"]

#: The settings a converted layer takes from the layer it replaces (where both have them and the caller passes
#: none): ``eps`` (torch's, a DivisiveNorm's ``spec.eps``: beside the variance, and beside sigma^2, under the root),
#: ``momentum`` (where both update running statistics) and the group count (a GroupNorm's ``num_groups`` into a
#: preset with groups: gn, evonorm-s0, bcn).
CARRIED = ("eps", "momentum", "groups")
_UNSET = object()   # a layer without the setting
#: The classes that take ``eps=None`` (the dtype's finfo) and ``momentum=None`` (a cumulative average).
_TAKE_NONE = (DivisiveNorm, BatchRenorm, SwitchNorm, BatchChannelNorm)
_NONE = {"eps": "the dtype's finfo eps", "momentum": "a cumulative average"}
#: A DivisiveNorm's settings that stay the preset's (named where they differ), with the overrides that set each:
#: sigma and alpha between any two, the others between layers that pool the same fields (the windows, their
#: weights and border: between two windowed layers).
_NAMED = {"sigma": ("sigma",), "alpha": ("alpha",), "power": ("power",), "sup_scale": ("sup_scale",),
          "floor": ("floor",), "border": ("border",), "sum_window": ("window", "sum_window"),
          "sup_window": ("window", "sup_window"), "sum_weights": ("weights", "sum_weights"),
          "sup_weights": ("weights", "sup_weights")}
_WINDOWED = ("border", "sum_window", "sup_window", "sum_weights", "sup_weights")


def carry_over(name: str, m: nn.Module, new: nn.Module, c: int, meta: bool, copy_affine: bool,
               lost: list, unkept: list) -> tuple:
    """Copy what means the same from ``m`` to ``new``: returns (copied, dropped); the trained values that could not
    be copied are added to ``lost``, the running statistics an InstanceNorm used in evaluation and the layer's own
    parameters besides the affine (a learned sigma, sn's mixture weights: :func:`_extras`) to ``unkept``."""
    if not copy_affine:
        dropped = [f"{n} (copy_affine=False)" for n, t in list(m.named_parameters(recurse=False))
                   + list(m.named_buffers(recurse=False)) if isinstance(t, torch.Tensor)]
        return [], dropped
    copied, dropped, lost_here = _copy(m, new, c, meta)
    lost += [f"{name or 'model'}.{d}" for d in lost_here]
    got, gone = _copy_stats(m, new, meta)
    if gone and isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
        unkept.append(f"{name or 'model'}.{gone[0].removesuffix(')')}; the source normalized with them in "
                      f"evaluation)")
    extras = _extras(m, new)     # trained: the new layer computes something else without them
    unkept += [f"{name or 'model'}.{e}" for e in extras]
    return copied + got, dropped + gone + extras


def _per_channel(t, c: int, elementwise: bool):
    """``t`` as a ``(C,)`` per-channel tensor when it means one, else None."""
    if t.dim() == 1 and t.shape[0] == c:
        return t
    flat = t.detach().reshape(c, -1)
    if elementwise and bool((flat == flat[:, :1]).all()):
        return flat[:, 0]
    return None


def _copy(old: nn.Module, new: nn.Module, c: int, meta: bool) -> tuple:
    """Copy the per-channel affine; returns (copied, dropped, dropped values that differ from the identity)."""
    copied, dropped, lost = [], [], []
    elementwise = isinstance(old, (nn.LayerNorm, nn.RMSNorm))
    for pname in ("weight", "bias"):
        src, dst = getattr(old, pname, None), getattr(new, pname, None)
        if not isinstance(src, torch.Tensor):
            continue
        slot = isinstance(dst, torch.Tensor) and tuple(dst.shape) == (c,)
        if meta:   # no values: nothing to copy or check (what cannot have a place in the new layer is named)
            if not slot or src.numel() != c:
                why = "an elementwise affine over the positions" if slot else "the preset has no per-channel affine"
                dropped.append(f"{pname} ({why})")
            continue
        val = _per_channel(src, c, elementwise)
        if val is None or not slot:
            why = ("an elementwise affine over the positions" if val is None else "the preset has no per-channel "
                   "affine" + (" (pass affine=True to keep it)" if _takes(new, "affine") else ""))
            dropped.append(f"{pname} ({why})")
            if not bool((src == (1.0 if pname == "weight" else 0.0)).all()):
                lost.append(f"{pname} ({why})")
            continue
        with torch.no_grad():
            dst.copy_(val.to(dst.dtype))
        if isinstance(dst, nn.Parameter) and isinstance(src, nn.Parameter):
            dst.requires_grad_(src.requires_grad)
        copied.append(pname if val is src else f"{pname} (constant over the positions)")
    return copied, dropped, lost


def _copy_stats(old: nn.Module, new: nn.Module, meta: bool) -> tuple:
    """Copy the running statistics where they mean the same thing; returns (copied, dropped)."""
    have = [b for b in ("running_mean", "running_var") if isinstance(getattr(old, b, None), torch.Tensor)]
    if not have:
        return [], []
    if not isinstance(old, (_BatchNorm, DivisiveNorm)):
        why = "InstanceNorm's are means of per-example statistics, not batch statistics"
        return [], [f"{', '.join(have)} ({why})"]
    if not getattr(new, "track_running_stats", False):
        return [], [f"{', '.join(have)} (the new layer keeps no running statistics)"]
    copied, dropped = [], []
    for b in ("running_mean", "running_var", "num_batches_tracked"):
        src, dst = getattr(old, b, None), getattr(new, b, None)
        if not isinstance(src, torch.Tensor):
            continue
        if isinstance(dst, torch.Tensor) and src.shape == dst.shape:
            if not meta:
                with torch.no_grad():
                    dst.copy_(src.to(dst.dtype))
                copied.append(b)
        elif b != "num_batches_tracked":
            dropped.append(f"{b} (the new layer keeps none)")
    return copied, dropped


def _extras(old: nn.Module, new: nn.Module) -> list:
    """The old layer's own parameters besides the per-channel affine (sn's mixture weights, bcn's group affine,
    a learned sigma, ...): never copied, named in the report."""
    out = []
    for name, _ in old.named_parameters(recurse=False):
        if name not in ("weight", "bias"):
            why = "not copied" if isinstance(getattr(new, name, None), torch.Tensor) else "the new layer has none"
            out.append(f"{name} ({why})")
    return out


def _keys(m: nn.Module) -> frozenset | None:
    """The overrides the preset whose module is ``m``'s class takes; None for DivisiveNorm itself (every spec and
    module setting) and for any other class."""
    return next((p.keys for p in PRESETS.values() if p.module is type(m)), None)


def _setting(m: nn.Module, key: str):
    """``m``'s value of the setting ``key`` of :data:`CARRIED`; ``_UNSET`` where ``m`` has no such setting."""
    keys = _keys(m)
    if key == "eps":   # torch's; a DivisiveNorm's spec.eps where its module takes eps (not GDN's view)
        if not isinstance(m, DivisiveNorm):
            return getattr(m, "eps", _UNSET)
        return m.spec.eps if _takes(m, "eps") else _UNSET
    if key == "momentum":   # where running statistics are kept and updated (not frozen-bn's)
        return m.momentum if getattr(m, "track_running_stats", False) and _takes(m, "momentum") else _UNSET
    if key == "groups":   # a GroupNorm, a preset module with groups, a grouped DivisiveNorm (gn)
        if isinstance(m, nn.GroupNorm):
            return m.num_groups
        if not isinstance(m, DivisiveNorm) or (keys is not None and "groups" not in keys):
            return _UNSET
        groups = getattr(m, "groups", m.spec.groups)
        return groups if keys is not None or groups > 1 else _UNSET
    raise AssertionError(key)


def _takes(m: nn.Module, key: str) -> bool:
    keys = _keys(m)
    return keys is None or key in keys


def build_settings(m: nn.Module, overrides: dict) -> dict:
    """What to build the new layer with when the preset's own defaults cannot be built for ``m``'s channels: ``m``'s
    group count (a ``GroupNorm(8, 16)``: the preset's 32 groups do not divide 16 channels), unless the caller set
    ``groups``/``group_size``; ``{}`` when ``m`` has none."""
    groups = _setting(m, "groups")
    if groups is _UNSET or "groups" in overrides or "group_size" in overrides:
        return {}
    return {"groups": groups}


def carried_settings(name: str, m: nn.Module, new: nn.Module, overrides: dict, unkept: list) -> tuple:
    """The settings of :data:`CARRIED` that ``m`` has and ``new`` (built with the preset's) has too, with another
    value: returns (the overrides to build the new layer with: the old layer's values, those the caller passed
    excepted; the notes that say where the caller's value replaced the layer's; the report's words for a value
    the new layer cannot take, which also go to ``unkept`` for the warning). A source without a bias gives a DyT
    none (``beta=False``)."""
    carry, notes, dropped = {}, [], []
    for key in CARRIED:
        src, dst = _setting(m, key), _setting(new, key)
        if key == "eps" and _folds_sigma(m, new) and src is not None:   # the whole constant beside the variance
            src = _named(m, "sigma") ** 2 + src
            notes.append(f"eps: the source's sigma^2 + eps ({src:g}; the new layer has no sigma)")
        elif key == "eps" and _sigma_not_carried(m, new):
            continue    # the floor is sigma^2 + eps: without the source's sigma, its eps (often 0) is no floor
        if src is _UNSET or dst is _UNSET or src == dst:
            continue
        if key in overrides or (key == "groups" and "group_size" in overrides):
            notes.append(f"{key}={dst} as asked (the source's {src} replaced)")
        elif src is None and type(new) not in _TAKE_NONE:
            why = f"{_NONE[key]}: {type(new).__name__} takes a number; pass {key}= to set one"
            dropped.append(f"{key}=None ({why})")
            unkept.append(f"{name or 'model'}.{key}=None ({why})")
        else:
            carry[key] = src
    if isinstance(new, DyT) and new.beta is not None and getattr(m, "bias", False) is None \
            and "beta" not in overrides:    # (a LayerNorm(C, bias=False) got a trainable shift it never had)
        carry["beta"] = False
        notes.append("beta=False: the source has no bias")
    return carry, notes, dropped


def _folds_sigma(m: nn.Module, new: nn.Module) -> bool:
    """Whether ``m``'s sigma (a number, not 0) goes into ``new``'s eps: ``new`` has an eps and no sigma (frozen-bn,
    frn, evonorm, bcn), so the divisor's constant sigma^2 + eps is all its eps."""
    return _named(m, "sigma") not in (_UNSET, 0.0) and _named(new, "sigma") is _UNSET \
        and _setting(new, "eps") is not _UNSET


def _sigma_not_carried(m: nn.Module, new: nn.Module) -> bool:
    """Whether ``m`` has a sigma (a number, not 0) that ``new``, a layer with a sigma of its own, does not take
    over: the new layer then keeps its preset's eps with its preset's sigma (``bn`` with sigma 1 and eps 0 converted
    to ``bn`` gets eps 1e-5, not 0: a divisor with no floor, which the fused BN refuses in training)."""
    src, dst = _named(m, "sigma"), _named(new, "sigma")
    return src not in (_UNSET, 0.0) and dst is not _UNSET and dst != src


def _named(m: nn.Module, key: str):
    """``m``'s value of the setting ``key`` of :data:`_NAMED`; ``_UNSET`` where it has none (a learned sigma is an
    extra parameter: :func:`_extras` names it)."""
    if not isinstance(m, DivisiveNorm) or not _takes(m, key) or (key == "sigma" and m.spec.learn_sigma):
        return _UNSET
    value = m.alpha if key == "alpha" else getattr(m.spec, key)
    return dict(value) if isinstance(value, tuple) else value


def named_settings(name: str, m: nn.Module, new: nn.Module, overrides: dict, unkept: list) -> tuple:
    """A DivisiveNorm's settings (:data:`_NAMED`) that the new layer has with another value, the preset's: returns
    (notes: where the caller's value replaced the layer's; dropped: the others, each also in ``unkept`` for the
    warning where it changes the output, i.e. all but alpha, the L1 term of the loss)."""
    same = isinstance(new, DivisiveNorm) and isinstance(m, DivisiveNorm) \
        and (m.spec.sum_axes, m.spec.sup_axes) == (new.spec.sum_axes, new.spec.sup_axes)
    windowed = same and m.spec.windowed and new.spec.windowed
    notes, dropped = [], []
    for key, asked in _NAMED.items():
        src, dst = _named(m, key), _named(new, key)
        if src is _UNSET or src == dst or (key in ("sigma", "alpha") and not src) \
                or (key == "sigma" and _folds_sigma(m, new)) \
                or (key not in ("sigma", "alpha") and not (windowed if key in _WINDOWED else same)):
            continue
        if dst is _UNSET:
            dropped.append(f"{key}={src} (the new layer has none)")
        elif any(k in overrides for k in asked):
            notes.append(f"{key}={dst} as asked (the source's {src} replaced)")
        else:
            dropped.append(f"{key}={src} (the new layer's is {dst}; pass {asked[-1]}= to keep it)")
            if key != "alpha":
                unkept.append(f"{name or 'model'}.{dropped[-1]}")
    return notes, dropped
