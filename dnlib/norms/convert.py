"""Put divisive normalization into a network you already have: :func:`convert_norms`.

::

    import torchvision, dnlib
    model = torchvision.models.resnet18()                  # any nn.Module with torch normalizers in it
    dnlib.convert_norms(model, "dn-s")                     # every BatchNorm2d/GroupNorm/... -> DN with sigma
    dnlib.convert_norms(model, "gn", groups=8)             # overrides are make_norm's (norm_kwargs)
    model, report = dnlib.convert_norms(model, "bn", report=True)   # ... and what was done, layer by layer
    print(report)

The swap works like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: recursively, in place, returning the
model. Each replaced layer becomes the preset built with its channel count and ``**overrides`` exactly as a model's
``norm=``/``norm_kwargs=`` would build it (:func:`dnlib.norms.presets.get_norm_layer`), so a converted network equals
the same architecture built with ``norm=`` directly, apart from what is taken over (by
:mod:`dnlib.norms.convert_state`; this module finds the layers, builds and swaps them, and reports):

- **Affine weights** (``copy_affine=True``) are copied where they mean the same thing: a per-channel gain
  ``gamma`` and bias ``beta`` of shape ``(C,)`` (BatchNorm, SyncBatchNorm, InstanceNorm with ``affine=True``,
  GroupNorm, a :class:`~dnlib.norms.norm.DivisiveNorm`; LayerNorm/RMSNorm over ``(C,)`` only, e.g. on ``(N, C)``
  inputs). A LayerNorm/RMSNorm over ``(C, H, W)`` has an *elementwise* affine, one gain per channel and
  position: it is copied only when it is constant over the positions (as at initialization), and otherwise left
  out with a warning (the preset's affine is per channel; nothing can represent it). The preset decides whether
  there is an affine at all: ``dn-s`` has none, so a trained BN's gamma/beta are dropped with a warning; pass
  ``affine=True`` to keep them.
- **Running statistics**: when the new layer keeps them (``bn``, ``bn-s``, ``bn-ms``) and the old one had them
  (BatchNorm, SyncBatchNorm, a batch-pooling DivisiveNorm), ``running_mean``, ``running_var`` and
  ``num_batches_tracked`` are copied: they are the same per-channel statistics (DivisiveNorm stores the unbiased
  variance, as torch). InstanceNorm's running variance is a mean of per-example variances, not the batch
  variance, so it is not copied (a warning says so where the old layer used it in evaluation). A ``to="bn"``
  conversion of a trained BN network therefore computes exactly what it did, in training and evaluation mode
  (tested). A BatchNorm *without* running statistics (``track_running_stats=False``: batch statistics in
  evaluation too) becomes a layer without them (the preset built with ``track_running_stats=False``, unless you
  pass that override), so evaluation stays the same.
- **Settings** are the old layer's where the new layer has the same one, unless you pass them (yours win; the
  report's note names the layer's value each replaced; the report's target names those taken): its ``eps``
  (torch's ``eps``, a DivisiveNorm's ``spec.eps``: beside the variance under the root; a DivisiveNorm's whole
  ``sigma^2 + eps`` into a preset without sigma: ``frozen-bn``, ``frn``, ``evonorm-*``, ``bcn``), its ``momentum``
  where both update running statistics (``frozen-bn`` updates none) and its group count (``gn``, ``evonorm-s0``,
  ``bcn``: ``GroupNorm(8, C)`` becomes ``gn`` with 8 groups, not the preset's 32). A value the new layer cannot
  take (``eps=None``, the dtype's finfo as ``nn.RMSNorm``'s, or ``momentum=None``, into a module preset other than
  ``brn``/``sn``/``bcn``) is named in a warning; ``dyt`` and the GDN presets have no eps. A DivisiveNorm's
  ``sigma`` and ``alpha``, and between layers that pool the same fields its ``power``, ``sup_scale``, ``floor`` and
  (both windowed) windows, weights and border, are the preset's: the report names each that differs, and so does
  a warning where it changes the output (all but ``alpha``, the L1 term). So ``bn*`` (sigma 1, eps 0) converted
  to ``bn`` has sigma 0 and the preset's eps 1e-5 (its eps 0 is no floor without its sigma), with a warning: pass
  ``sigma=1.0`` to keep it.
- Not carried over: the old layer's forward hooks and any attributes of a subclass (an instance of a *subclass*
  of a listed type counts as that type, as ``convert_sync_batchnorm`` treats every ``_BatchNorm``).

Device, dtype and the train/eval mode of every new layer are those of the layer it replaces; a copied parameter
keeps its ``requires_grad``. A module used at several places stays one (shared) module. A model on the ``meta``
device converts to new layers on ``meta``: there are no values, so nothing is copied (the report says so; load
the weights after ``model.to_empty(device=...)``).

The new layers expect channels at dim 1 (``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``), as torch's BatchNorm,
InstanceNorm and GroupNorm do. A LayerNorm/RMSNorm is taken to normalize ``(C, *rest)`` of an ``(N, C, *rest)``
input (``normalized_shape[0]`` is C). torch's ``nn.LayerNorm``/``nn.RMSNorm`` normalizes the *last*
``len(normalized_shape)`` dims of whatever it is given, so the two agree only on ``(N, *normalized_shape)``
inputs: the layer converted from one refuses any other input at its forward (a transformer's ``(N, L, C)``, even
with ``L == C``, where it would otherwise compute something else), naming the layer and ``types=`` (a forward
pre-hook; a *subclass* of LayerNorm, such as timm's channels-first ``LayerNorm2d``, gets no such check: its
forward decides its layout). Leave LayerNorm out of ``types`` for channels-last networks.

An elementwise preset (``dyt``: no statistics) takes any layout: a LayerNorm/RMSNorm over one dim (``LayerNorm(C)``)
becomes it with ``channels_last=True``, acting on the last dim as the layer it replaces, so
``convert_norms(transformer, "dyt", types=nn.LayerNorm)`` works on ``(N, L, C)`` inputs; a channels-last ``DyT``
converted to a channels-first preset refuses other inputs than ``(N, C)`` at its forward, as a LayerNorm's does.

What cannot be converted is never skipped silently. A warning names each layer left as is and why (a
``torch.jit.script``/``trace`` submodule: compiled code cannot be replaced; an uninitialized ``LazyBatchNorm2d``
etc.: its channel count is known only at the first forward), each trained affine that is dropped, each setting
the new layer cannot take, and a model in which nothing matched ``types`` (the types looked for and the
normalizers the model has). ``strict=True`` turns every such warning into a ``ValueError``, raised before anything
is changed. A whole TorchScript model is refused (``ValueError``): convert the ``nn.Module``, then script or
trace it. ``report=True`` returns ``(model, ConversionReport)``: one row per layer (path, from, to, what was
copied, what was dropped, a note).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.lazy import LazyModuleMixin

from .convert_state import build_settings, carried_settings, carry_over, named_settings
from .dyt import DyT
from .norm import DivisiveNorm
from .presets import NormLike, get_norm_layer
from .spec import NormSpec

__all__ = ["convert_norms", "ConversionReport", "ConvertedLayer", "DEFAULT_TYPES", "SUPPORTED_TYPES"]

#: What :func:`convert_norms` replaces by default.
DEFAULT_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
#: The kinds of layer it can replace (``types`` must be these or subclasses of them). 3-D forms (BatchNorm3d,
#: InstanceNorm3d) are not among them: DivisiveNorm takes inputs of at most 4 dims.
SUPPORTED_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
                   nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, DivisiveNorm, DyT)
#: What counts as a normalizer when a warning lists the ones a model has.
_NORM_KINDS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d,
               DivisiveNorm, DyT)

TypesLike = type | tuple | list


@dataclass(frozen=True)
class ConvertedLayer:
    """One row of a :class:`ConversionReport`: the layer at ``path`` (``""``: the model itself).

    ``source`` describes the old layer, ``target`` the new one (None: the layer was left as is, ``note`` says
    why), ``copied`` names what was copied into it, ``dropped`` what was not carried over and why, ``note``
    anything else the conversion decided (e.g. ``track_running_stats=False`` kept from the source)."""
    path: str
    source: str
    target: str | None
    copied: tuple = ()
    dropped: tuple = ()
    note: str = ""

    def __str__(self) -> str:
        where = self.path or "(the model)"
        if self.target is None:
            return f"{where}: {self.source} left as is: {self.note}"
        parts = [f"{where}: {self.source} -> {self.target}",
                 "copied " + (", ".join(self.copied) if self.copied else "nothing")]
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


@dataclass
class ConversionReport:
    """What :func:`convert_norms` did (``report=True``): one :class:`ConvertedLayer` per layer it replaced or
    had to leave as is (``rows``; iterate over the report for them), the types it looked for, the normalizer
    types the model had before (``found``: name -> count) and the warnings it gave. ``str(report)`` is a
    readable list."""
    to: str
    types: tuple
    rows: list = field(default_factory=list)
    found: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def converted(self) -> list:
        return [r for r in self.rows if r.target is not None]

    @property
    def skipped(self) -> list:
        return [r for r in self.rows if r.target is None]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        lines = [f"convert_norms to {self.to}: {len(self.converted)} converted, {len(self.skipped)} left as is "
                 f"(types: {', '.join(self.types)})"]
        lines += [f"  {r}" for r in self.rows]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class _LayoutCheck:
    """Forward pre-hook of a layer converted from an ``nn.LayerNorm``/``nn.RMSNorm``. Those normalize the last
    ``k = len(normalized_shape)`` dims of any input; the converted layer normalizes channels at dim 1. The two
    agree only on ``(N, *normalized_shape)`` inputs (``(N, C)`` for ``LayerNorm(C)``): any other input (a
    transformer's ``(N, L, C)``, even with ``L == C``) is refused, naming the layer and ``types=``. A module-level
    class, so the converted model still pickles."""

    def __init__(self, path: str, source: str, kind: str, k: int, c: int):
        self.path, self.source, self.kind, self.k, self.c = path, source, kind, k, c

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and (x.dim() != self.k + 1 or x.shape[1] != self.c):
            layout = {1: "(N, C)", 2: "(N, C, L)", 3: "(N, C, H, W)"}.get(self.k, f"(N, C, ...) of {self.k + 1} dims")
            raise ValueError(
                f"{self.path or 'the model'} (converted by dnlib.convert_norms from {self.source}): got input of "
                f"shape {tuple(x.shape)}, but torch's {self.kind} normalizes the last {self.k} dim(s) of its input "
                f"and the converted layer the channels at dim 1, so it takes {layout} inputs with C = {self.c} "
                f"only. A {self.kind} over the last dim of channels-last inputs (a transformer's (N, L, C), "
                f"NHWC blocks) cannot be converted: leave nn.{self.kind} out of convert_norms(types=...).")


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


def _tensors(m: nn.Module) -> list:
    return list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))


def _factory(m: nn.Module, model: nn.Module) -> dict:
    ref = next(iter(_tensors(m)), None)
    if ref is None or not ref.is_floating_point():
        ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    return {} if ref is None else {"device": ref.device, "dtype": ref.dtype}


def _describe(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})"


def _short(m: nn.Module, c: int) -> str:
    """``BatchNorm2d(64)``; a GroupNorm with its group count, as torch prints it: ``GroupNorm(8, 16)``."""
    return f"GroupNorm({m.num_groups}, {c})" if isinstance(m, nn.GroupNorm) else f"{type(m).__name__}({c})"


def _batch_stats_in_eval(m: nn.Module) -> bool:
    """Whether ``m`` normalizes with the batch's statistics in evaluation mode too (BN without running stats)."""
    if isinstance(m, _BatchNorm):
        return not m.track_running_stats
    return isinstance(m, DivisiveNorm) and m.spec.pools_batch and not m.track_running_stats


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def _norms_in(model: nn.Module) -> dict:
    found = {}
    for _, m in model.named_modules():
        if isinstance(m, _NORM_KINDS):
            found[type(m)] = found.get(type(m), 0) + 1
        elif isinstance(m, torch.jit.ScriptModule) and "Norm" in str(getattr(m, "original_name", "")):
            key = f"{m.original_name} (TorchScript)"
            found[key] = found.get(key, 0) + 1
    return found


def _no_match(model: nn.Module, names: tuple, found: dict) -> str:
    msg = f"convert_norms: no layer of the types it looked for ({', '.join(names)}) in this {type(model).__name__}"
    if not found:
        return msg + "; it has no normalizer layers"
    have = ", ".join(f"{getattr(k, '__name__', k)} ({n})" for k, n in found.items())
    unsupported = [k.__name__ for k in found if isinstance(k, type) and not issubclass(k, SUPPORTED_TYPES)]
    listable = [k.__name__ for k in found if isinstance(k, type) and issubclass(k, SUPPORTED_TYPES)]
    msg += f"; its normalizers are {have}"
    if listable:
        msg += f"; pass types=({', '.join('nn.' + n if n != 'DivisiveNorm' else n for n in listable)},) to convert them"
    if unsupported:
        msg += (f"; {', '.join(unsupported)} cannot be converted (supported: "
                f"{', '.join(t.__name__ for t in SUPPORTED_TYPES)}; DivisiveNorm takes inputs of at most 4 dims)")
    return msg


def _to_name(to: NormLike) -> str:
    return "none" if to is None else to.lower() if isinstance(to, str) else repr(to)


def _check_convert_args(model, to: NormLike, types: TypesLike, overrides: dict, **flags) -> tuple:
    """convert_norms' argument checks, before anything is changed: returns (the layer factory, types, their names)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    layer = get_norm_layer(to, overrides, param="to")
    types = _check_types(types)
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{flag}: expected True or False, got {value!r}")
    names = tuple(t.__name__ for t in types)
    if isinstance(model, torch.jit.ScriptModule):
        inside = [f"{m.original_name} at {n or '(the model)'!r}" for n, m in model.named_modules()
                  if getattr(m, "original_name", None) in names]
        raise ValueError(f"model: a TorchScript module ({type(model).__name__} of "
                         f"{getattr(model, 'original_name', '?')}) cannot be converted: its layers are compiled "
                         f"code{' (' + ', '.join(inside) + ')' if inside else ''}, which cannot be replaced. "
                         f"Convert the nn.Module, then script or trace it (a model with DivisiveNorm layers: "
                         f"torch.jit.trace(model.eval(), example))")
    return layer, types, names


def _left_as_is(name: str, m: nn.Module, types: tuple, names: tuple, rep: ConversionReport, skipped: dict,
                scripted: list) -> bool:
    """Whether the submodule ``m`` at ``name`` cannot be converted: inside a TorchScript module (its layers of
    ``types`` are reported, once) or an uninitialized lazy normalizer (reported); the reasons go to ``skipped``."""
    if any(name.startswith(p + ".") for p in scripted):
        return True
    if isinstance(m, torch.jit.ScriptModule):
        scripted.append(name)
        why = ("inside a TorchScript module: compiled code cannot be replaced (convert the nn.Module before "
               "torch.jit.script/trace)")
        for sub, sm in m.named_modules():
            if getattr(sm, "original_name", None) in names:
                path = _join(name, sub)
                rep.rows.append(ConvertedLayer(path, f"{sm.original_name} (TorchScript)", None, note=why))
                skipped.setdefault(why, []).append(path)
        return True
    if isinstance(m, LazyModuleMixin) and isinstance(getattr(m, "cls_to_become", None), type) \
            and issubclass(m.cls_to_become, types):
        why = (f"an uninitialized {type(m).__name__}: its channel count is known only at the first forward, "
               f"which turns it into torch's {m.cls_to_become.__name__} (run one forward, then convert)")
        rep.rows.append(ConvertedLayer(name, type(m).__name__, None, note=why))
        skipped.setdefault(why, []).append(name)
        return True
    return False


def _build(name: str, m: nn.Module, c: int, layer, to: NormLike, overrides: dict, kw: dict) -> tuple:
    """The new layer for ``m`` (its ``c`` channels): returns (new, notes, the extra keyword of its description)."""
    notes, target_kw = [], ""
    try:
        new = layer(c, **kw)
        if _batch_stats_in_eval(m) and getattr(new, "track_running_stats", False):
            if "track_running_stats" in overrides:
                notes.append("the source used batch statistics in evaluation; the new layer uses running "
                             "statistics (track_running_stats=True as asked)")
            else:
                new = layer(c, track_running_stats=False, **kw)
                target_kw = ", track_running_stats=False"
                notes.append("track_running_stats=False as the source (batch statistics in evaluation too)")
    except ValueError as e:
        raise ValueError(f"{name or 'model'} ({_short(m, c)}): cannot build {to!r} for it: {e}") from e
    return new, notes, target_kw


def _adapt_layout(name: str, m: nn.Module, new: nn.Module, c: int) -> list:
    """Make ``new`` act on the dims ``m`` acted on (channels_last, or a forward check of the input's layout):
    returns the notes that say so."""
    last = (type(m) in (nn.LayerNorm, nn.RMSNorm) and len(m.normalized_shape) == 1) \
        or getattr(m, "channels_last", False) is True
    if last and getattr(new, "channels_last", None) is False:  # an elementwise layer (dyt): any layout
        new.channels_last = True
        return ["channels_last=True: acts on the last dim, as the layer it replaces"]
    if getattr(m, "channels_last", False) is True:
        new.register_forward_pre_hook(_LayoutCheck(name, _describe(m), type(m).__name__, 1, c))
        return [f"takes (N, {c}) inputs only: the source acted on the last dim, other inputs are refused "
                f"at forward"]
    if type(m) in (nn.LayerNorm, nn.RMSNorm):
        k = len(m.normalized_shape)
        new.register_forward_pre_hook(_LayoutCheck(name, _describe(m), type(m).__name__, k, c))
        return [f"takes (N, {', '.join(str(s) for s in m.normalized_shape)}) inputs only: torch's "
                f"{type(m).__name__} normalizes the last {k} dim(s), other inputs are refused at forward"]
    return []


def _convert_one(name: str, m: nn.Module, model: nn.Module, layer, to: NormLike, overrides: dict,
                 copy_affine: bool, rep: ConversionReport, lost: list, unkept: list) -> nn.Module:
    """The layer that replaces ``m`` (at ``name`` in ``model``); its row goes to ``rep``, what it cannot take to
    ``lost`` (trained values) and ``unkept`` (settings)."""
    c = _channels(m)
    kw = {k: v for k, v in _factory(m, model).items() if k not in overrides}
    try:
        new, notes, target_kw = _build(name, m, c, layer, to, overrides, kw)
    except ValueError:       # the preset's defaults do not fit (32 groups of 16 channels): the source's settings
        first = build_settings(m, overrides)
        if not first:
            raise
        try:
            new, notes, target_kw = _build(name, m, c, layer, to, overrides, {**kw, **first})
        except (ValueError, TypeError):       # nor with them (or a layer without such a setting)
            raise ValueError(f"{name or 'model'} ({_short(m, c)}): cannot build {to!r} for it with the preset's "
                             f"settings nor with the layer's own ({', '.join(f'{k}={v}' for k, v in first.items())})"
                             ) from None
        kw = {**kw, **first}
        target_kw += "".join(f", {k}={v}" for k, v in first.items())
    carry, said, unset = carried_settings(name, m, new, overrides, unkept)
    if carry:   # the old layer's own settings in place of the preset's
        new = _build(name, m, c, layer, to, overrides, {**kw, **carry})[0]
        target_kw += "".join(f", {k}={v}" for k, v in carry.items())
    notes += said
    new.train(m.training)
    meta = any(t.is_meta for t in _tensors(m) + _tensors(new))
    copied, dropped = carry_over(name, m, new, c, meta, copy_affine, lost, unkept)
    said, named = named_settings(name, m, new, overrides, unkept)
    notes += said
    dropped += unset + named
    if getattr(m, "running_stats", "torch") != getattr(new, "running_stats", "torch") \
            and getattr(new, "track_running_stats", False):
        notes.append(f"running statistics kept from now on as running_stats={new.running_stats!r}")
    if isinstance(getattr(new, "weight", None), torch.Tensor) and getattr(m, "weight", None) is None:
        notes.append("a new affine at the identity (the source had none)")
    notes += _adapt_layout(name, m, new, c)
    if meta:
        notes.append("on the meta device: no values to copy (load the weights after to_empty)")
    target = f"DivisiveNorm({c}, {to!r}" if isinstance(to, NormSpec) else f"{rep.to}({c}"
    rep.rows.append(ConvertedLayer(name, _describe(m), f"{target}{target_kw})", tuple(copied),
                                   tuple(dropped), "; ".join(notes)))
    return new


def _add_warnings(rep: ConversionReport, lost: list, unkept: list, skipped: dict, model: nn.Module, names: tuple,
                  found: dict) -> None:
    """The report's warnings: trained values not copied, settings not kept, layers left as is, nothing matched."""
    if lost:
        rep.warnings.append(f"convert_norms: not copied (they differ from the identity): {', '.join(lost)}")
    if unkept:
        rep.warnings.append(f"convert_norms: not carried over, so the converted layer computes something else: "
                            f"{', '.join(unkept)}")
    for why, paths in skipped.items():
        rep.warnings.append(f"convert_norms: left as is: {', '.join(repr(p or '(the model)') for p in paths)} "
                            f"({why})")
    if not rep.rows:
        rep.warnings.append(_no_match(model, names, found))


def _swap_in(model: nn.Module, built: dict) -> None:
    """Put each new layer of ``built`` (by the id of the layer it replaces) in every place of ``model``."""
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):   # every place (named_children skips repeats)
            if id(child) in built:
                setattr(parent, child_name, built[id(child)])


def convert_norms(model: nn.Module, to: NormLike = "dn-s", types: TypesLike = DEFAULT_TYPES, *,
                  copy_affine: bool = True, strict: bool = False, report: bool = False, **overrides):
    """Replace every normalizer of the kinds ``types`` in ``model`` by the preset ``to`` (see
    :mod:`dnlib.norms.convert`).

    Args:
        model: any ``nn.Module``; changed in place. A TorchScript module is refused (convert before scripting).
        to: a preset name (:func:`dnlib.list_norms`) or a :class:`~dnlib.norms.spec.NormSpec`, as a model's ``norm=``.
        types: a class or a tuple of classes; every submodule that is an instance of one of them is replaced
            (default: BatchNorm2d, BatchNorm1d, GroupNorm, LayerNorm, InstanceNorm2d; SyncBatchNorm is not a
            BatchNorm2d: list it to convert it). Allowed: :data:`SUPPORTED_TYPES` and their subclasses.
        copy_affine: copy per-channel gamma/beta and running statistics where they mean the same thing.
        strict: raise ``ValueError`` (before anything is changed) where a warning would be given: a layer of
            ``types`` left as is, a trained affine dropped, nothing matched.
        report: also return a :class:`ConversionReport` (what was converted, copied and dropped, per layer).
        **overrides: :func:`dnlib.make_norm` overrides (a model's ``norm_kwargs``), e.g. ``sigma=0.5``,
            ``window=5``, ``groups=8``, ``alpha=0.005``, ``affine=True``.

    Returns:
        ``model`` (the new layer when ``model`` itself is one of ``types``); ``(model, report)`` with
        ``report=True``.

    Raises:
        ValueError: a bad ``to``, ``types``, override or flag, a TorchScript ``model``, a layer the preset cannot
            be built for (e.g. ``groups`` not dividing its channels; the message names the layer), or with
            ``strict=True`` anything a warning would say. Raised before anything is changed.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        >>> dnlib.convert_norms(net, "dn-s", window=5)[1]
        DivisiveNorm(16, NormSpec(...), affine=False)
    """
    layer, types, names = _check_convert_args(model, to, types, overrides, copy_affine=copy_affine, strict=strict,
                                              report=report)
    found = _norms_in(model)
    rep = ConversionReport(to=_to_name(to), types=names, found={getattr(k, "__name__", k): n for k, n in found.items()})
    built, lost, unkept, skipped, scripted = {}, [], [], {}, []
    for name, m in model.named_modules(remove_duplicate=True):
        if _left_as_is(name, m, types, names, rep, skipped, scripted) or not isinstance(m, types):
            continue
        built[id(m)] = _convert_one(name, m, model, layer, to, overrides, copy_affine, rep, lost, unkept)
    _add_warnings(rep, lost, unkept, skipped, model, names, found)
    if strict and rep.warnings:
        raise ValueError("convert_norms (strict=True; nothing was changed): "
                         + " | ".join(w.removeprefix("convert_norms: ") for w in rep.warnings))
    for w in rep.warnings:
        warnings.warn(w, stacklevel=2)
    out = built.get(id(model), model)
    if id(model) not in built:
        _swap_in(model, built)
    return (out, rep) if report else out
