"""Put divisive normalization into a network you already have: :func:`convert_norms`.

::

    import torchvision, dnlib
    model = torchvision.models.resnet18()                  # any nn.Module with torch normalizers in it
    dnlib.convert_norms(model, "dn-s")                     # every BatchNorm2d/GroupNorm/... -> DN with sigma
    dnlib.convert_norms(model, "gn", groups=8)             # overrides are make_norm's (norm_kwargs)

The swap works like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: recursively, in place, returning the
model. Each replaced layer becomes the preset built with its channel count and ``**overrides`` exactly as a model's
``norm=``/``norm_kwargs=`` would build it (:func:`dnlib.presets.get_norm_layer`), so a converted network equals
the same architecture built with ``norm=`` directly, apart from what is copied over:

- **Affine weights** (``copy_affine=True``) are copied where they mean the same thing: a per-channel gain
  ``gamma`` and bias ``beta`` of shape ``(C,)`` (BatchNorm, SyncBatchNorm, InstanceNorm with ``affine=True``,
  GroupNorm, a :class:`~dnlib.norm.DivisiveNorm`; LayerNorm/RMSNorm over ``(C,)`` only, e.g. on ``(N, C)``
  inputs). A LayerNorm/RMSNorm over ``(C, H, W)`` has an *elementwise* affine, one gain per channel and
  position: it is copied only when it is constant over the positions (as at initialization), and otherwise left
  out with a warning (the preset's affine is per channel; nothing can represent it). The preset decides whether
  there is an affine at all: ``dn-s`` has none, so a trained BN's gamma/beta are dropped with a warning; pass
  ``affine=True`` to keep them.
- **Running statistics**: when the new layer keeps them (``bn``, ``bn-s``, ``bn-ms``) and the old one had them
  (BatchNorm, SyncBatchNorm, a batch-pooling DivisiveNorm), ``running_mean``, ``running_var`` and
  ``num_batches_tracked`` are copied: they are the same per-channel statistics (DivisiveNorm stores the unbiased
  variance, as torch). InstanceNorm's running variance is a mean of per-example variances, not the batch
  variance, so it is not copied. A ``to="bn"`` conversion of a trained BN network therefore computes exactly
  what it did, in training and evaluation mode (tested).
- Not carried over: the old layer's ``eps`` and ``momentum`` (the preset's apply; pass ``eps=``/``momentum=``
  overrides), its forward hooks and any attributes of a subclass (an instance of a *subclass* of a listed type
  counts as that type, as ``convert_sync_batchnorm`` treats every ``_BatchNorm``).

Device, dtype and the train/eval mode of every new layer are those of the layer it replaces; a copied parameter
keeps its ``requires_grad``. A module used at several places stays one (shared) module.

The new layers expect channels at dim 1 (``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``), as torch's BatchNorm,
InstanceNorm and GroupNorm do. A LayerNorm/RMSNorm is taken to normalize ``(C, *rest)`` of an ``(N, C, *rest)``
input (``normalized_shape[0]`` is C). A LayerNorm applied to the last dim of a channels-last tensor (a
transformer's ``(N, L, C)``, ConvNeXt's NHWC blocks) is not of that form: leave LayerNorm out of ``types`` there
(converting it raises at the forward when ``L != C``, and is wrong when ``L == C``).
"""
from __future__ import annotations

import warnings
from typing import Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .norm import DivisiveNorm
from .presets import NormLike, get_norm_layer

__all__ = ["convert_norms", "DEFAULT_TYPES", "SUPPORTED_TYPES"]

#: What :func:`convert_norms` replaces by default.
DEFAULT_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
#: The kinds of layer it can replace (``types`` must be these or subclasses of them). 3-D forms (BatchNorm3d,
#: InstanceNorm3d) are not among them: DivisiveNorm takes inputs of at most 4 dims.
SUPPORTED_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
                   nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, DivisiveNorm)

TypesLike = Union[type, tuple, list]


def _check_types(types: TypesLike) -> tuple:
    allowed = [t.__name__ for t in SUPPORTED_TYPES]
    seq = (types,) if isinstance(types, type) else types
    if not isinstance(seq, (tuple, list)) or not seq:
        raise ValueError(f"types: expected a normalizer class or a non-empty tuple of them, got {types!r}; "
                         f"allowed are {allowed} and their subclasses")
    for t in seq:
        if not (isinstance(t, type) and issubclass(t, SUPPORTED_TYPES)):
            raise ValueError(f"types: {t!r} is not a normalizer convert_norms can replace; allowed are {allowed} "
                             f"and their subclasses")
    return tuple(seq)


def _channels(m: nn.Module) -> int:
    if isinstance(m, nn.GroupNorm):
        c = m.num_channels
    elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        c = m.normalized_shape[0]
    else:
        c = m.num_features
    return int(c)


def _factory(m: nn.Module, model: nn.Module) -> dict:
    ref = next(iter(list(m.parameters()) + list(m.buffers())), None)
    if ref is None or not ref.is_floating_point():
        ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    return {} if ref is None else {"device": ref.device, "dtype": ref.dtype}


def _per_channel(t, c: int, kind: str):
    """``t`` as a ``(C,)`` per-channel tensor when it means one, else None (with ``kind`` saying why not)."""
    if t.dim() == 1 and t.shape[0] == c:
        return t
    flat = t.detach().reshape(c, -1)
    if kind == "elementwise" and bool((flat == flat[:, :1]).all()):
        return flat[:, 0]
    return None


def _copy(old: nn.Module, new: nn.Module, name: str, c: int, dropped: list) -> None:
    elementwise = isinstance(old, (nn.LayerNorm, nn.RMSNorm))
    for pname in ("weight", "bias"):
        src, dst = getattr(old, pname, None), getattr(new, pname, None)
        if src is None:
            continue
        val = _per_channel(src, c, "elementwise" if elementwise else "channel")
        trivial = bool((src == (1.0 if pname == "weight" else 0.0)).all())
        if val is None or not isinstance(dst, torch.Tensor) or dst.shape != (c,):
            if not trivial:
                why = ("an elementwise affine over the positions" if val is None
                       else "the preset has no per-channel affine (pass affine=True to keep it)")
                dropped.append(f"{name}.{pname} ({why})")
            continue
        with torch.no_grad():
            dst.copy_(val.to(dst.dtype))
        if isinstance(dst, nn.Parameter) and isinstance(src, nn.Parameter):
            dst.requires_grad_(src.requires_grad)


def _copy_stats(old: nn.Module, new: nn.Module) -> None:
    if not isinstance(old, (_BatchNorm, DivisiveNorm)) or not getattr(new, "track_running_stats", 0):
        return
    for b in ("running_mean", "running_var", "num_batches_tracked"):
        src, dst = getattr(old, b, None), getattr(new, b, None)
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.shape == dst.shape:
            with torch.no_grad():
                dst.copy_(src.to(dst.dtype))


def convert_norms(model: nn.Module, to: NormLike = "dn-s", types: TypesLike = DEFAULT_TYPES, *,
                  copy_affine: bool = True, **overrides) -> nn.Module:
    """Replace every normalizer of the kinds ``types`` in ``model`` by the preset ``to`` (see :mod:`dnlib.convert`).

    Args:
        model: any ``nn.Module``; changed in place.
        to: a preset name (:func:`dnlib.list_norms`) or a :class:`~dnlib.spec.NormSpec`, as a model's ``norm=``.
        types: a class or a tuple of classes; every submodule that is an instance of one of them is replaced
            (default: BatchNorm2d, BatchNorm1d, GroupNorm, LayerNorm, InstanceNorm2d; SyncBatchNorm is not a
            BatchNorm2d: list it to convert it). Allowed: :data:`SUPPORTED_TYPES` and their subclasses.
        copy_affine: copy per-channel gamma/beta and running statistics where they mean the same thing.
        **overrides: :func:`dnlib.make_norm` overrides (a model's ``norm_kwargs``), e.g. ``sigma=0.5``,
            ``window=5``, ``groups=8``, ``alpha=0.005``, ``affine=True``.

    Returns:
        ``model`` (the new layer when ``model`` itself is one of ``types``).

    Raises:
        ValueError: a bad ``to``, ``types``, override, or a layer the preset cannot be built for (e.g. ``groups``
            not dividing its channels; the message names the layer). Raised before anything is changed.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        >>> dnlib.convert_norms(net, "dn-s", window=5)[1]
        DivisiveNorm(16, NormSpec(...), affine=False)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    layer = get_norm_layer(to, overrides, param="to")
    types = _check_types(types)
    if not isinstance(copy_affine, bool):
        raise ValueError(f"copy_affine: expected True or False, got {copy_affine!r}")
    built, dropped = {}, []
    for name, m in model.named_modules(remove_duplicate=True):
        if isinstance(m, types):
            c = _channels(m)
            kw = {k: v for k, v in _factory(m, model).items() if k not in overrides}
            try:
                new = layer(c, **kw)
            except ValueError as e:
                raise ValueError(f"{name or 'model'} ({type(m).__name__}({c})): cannot build {to!r} for it: {e}") \
                    from e
            new.train(m.training)
            if copy_affine:
                _copy(m, new, name or "model", c, dropped)
                _copy_stats(m, new)
            built[id(m)] = new
    if dropped:
        warnings.warn(f"convert_norms: not copied (they differ from the identity): {', '.join(dropped)}",
                      stacklevel=2)
    if id(model) in built:
        return built[id(model)]
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):   # every place (named_children skips repeats)
            if id(child) in built:
                setattr(parent, child_name, built[id(child)])
    return model
