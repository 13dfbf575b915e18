r"""Normalizers by name: every preset is one line, a :class:`NormSpec` plus the module defaults.

The "-s" forms add the smoothing term sigma (defaults: the paper's CIFAR-10 values, PAPER.md §2.3:
bn-s 1.0, ln-s and dn-s 0.5; the PTB 1-D DN uses 1.0). The "-ms" forms are mean subtraction only (the
authors' ``bnms``/``lnms``/``dnms``). ``dn`` is the paper's conv DN (all channels x a k x k spatial window,
both fields, k = 3 by default: pass ``window=``); ``dn-1d`` its FC/RNN form, a window of ``2R + 1`` units
along the unit axis (R = 30: the paper's LSTM radius).

``ln`` is torch's ``nn.LayerNorm(normalized_shape=(C, *spatial))``: one mean and variance per example over
channels *and* positions. ``ln2d`` is timm's ``LayerNorm2d`` (ConvNeXt): one per example *and position*, over
the channels only (``NormSpec("channel", "channel")``, eps 1e-6 as timm); ``rms2d`` likewise timm's
``RmsNorm2d``. On ``(N, C)`` inputs each pair coincides (up to eps). ``rms`` keeps ``nn.RMSNorm``'s default
eps, ``torch.finfo(dtype).eps`` (``NormSpec(eps=None)``).

``lcn`` is local contrast normalization (Jarrett, Kavukcuoglu, Ranzato, LeCun 2009, "What is the best
multi-stage architecture for object recognition?"):

.. math::

    v_{n,i,j,k} = x_{n,i,j,k} - \sum_{i',p,q} w_{pq}\, x_{n,i',j+p,k+q}, \qquad
    \sigma_{n,j,k} = \Big(\sum_{i',p,q} w_{pq}\, v_{n,i',j+p,k+q}^2 + \epsilon\Big)^{1/2}, \qquad
    y_{n,i,j,k} = \frac{v_{n,i,j,k}}{\max(c_n, \sigma_{n,j,k})}, \quad c_n = \operatorname{mean}_{j,k}\,
    \sigma_{n,j,k}

with ``w`` a 9 x 9 Gaussian of std 2 pixels times 1/C (``sum w = 1`` over channels and window; the sizes used by
common LCN code such as Theano's ``lecun_lcn``, not taken from the paper; change them with ``window=`` and
``weights=``): ``NormSpec(CS, CS, {"space": 9}, {"space": 9}, sum_weights={"space": 2.0},
sup_weights={"space": 2.0}, floor="mean")``, eps 1e-5 (keeps a constant map finite), the valid border (near the
border the weights inside the map are renormalized, as torch7's ``SpatialContrastiveNormalization``; pass
``border="zeros"`` for zero padding). The floor is an option of the spec (``floor="mean"``), not an operator.

``gdn``, ``igdn`` and ``gdn1`` are :class:`~dnlib.norms.gdn.GDN` (Balle et al. 2016; compressai's ``GDN``,
``GDN(inverse=True)``, ``GDN1``): a learned non-negative channel-suppression matrix, which no box field
expresses; their ``Preset.module`` builds them, with GDN's own overrides (``beta_min``, ``gamma_init``, ``alpha``).

This is the one registry of normalizers. A preset is a *kind* of normalizer; an experiment's hyperparameters
(the paper's sigma, alpha and windows per row) are rows of its configuration table that name a preset plus
overrides: :mod:`dnlib.experiments.cifar_configs` (``"dn-star"``: ``dn`` with windows 5, 3, 3, sigma 0.5, alpha),
:mod:`dnlib.experiments.ptb_configs` (``dn-1d-s`` with a 61-unit window) and :mod:`dnlib.experiments.sr_configs`
(``"dn*"``: ``dn`` with a 5 x 5 summation and 7 x 7 suppression window, sigma 1, alpha 0.1; ``"dn*-code"``;
``"dn-ms"``). So the paper's BN*, LN* and DN* are not presets: their sigma, alpha and windows differ between the
experiments (and DN*'s window between CIFAR layers); ``make_norm("dn*")`` (or ``"dn-star"``, ``"bn*"``, ...) raises an
error that gives the :func:`make_norm` call of each experiment's sites (:data:`STARRED`).

Every model takes its normalizer the same way, ``Model(..., norm=<preset name> | NormSpec | "none",
norm_kwargs={...})``, resolved once in ``__init__`` by :func:`get_norm_layer` (as timm's ``get_norm_layer``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .batch_variants import BatchChannelNorm, BatchRenorm, SwitchNorm
from .dyt import DYT_SPEC, DyT
from .evonorm import EVONORM_B0_SPEC, EVONORM_S0_SPEC, EvoNorm2dB0, EvoNorm2dS0
from .frn import FRN_SPEC, FilterResponseNorm2d
from .frozen import FROZEN_BN_SPEC, FrozenBatchNorm2d
from .gdn import GDN
from .norm import DivisiveNorm
from .spec import NormSpec, is_int, is_real
from .weight_std import WS_SPEC, WeightStandardization

CS, BS = "channel,space", "batch,space"


@dataclass(frozen=True)
class Preset:
    """A named normalizer: its :class:`NormSpec`, the :class:`DivisiveNorm` defaults (``affine``, ``bias``) and a
    one-line description. ``module`` is the class built for it (a :class:`DivisiveNorm` subclass such as
    :class:`~dnlib.norms.gdn.GDN`, called as ``module(num_features, **defaults, **overrides)`` with the overrides
    ``keys`` allows), or None for :class:`DivisiveNorm` with ``spec``. For a ``module`` preset, ``spec`` is its
    Table-1 view (the fields its statistics pool) and ``extra`` names what the module computes beyond
    ``(A, B, sigma)`` (empty: nothing, the spec is the whole normalizer)."""
    spec: NormSpec
    defaults: Mapping = field(default_factory=dict)
    doc: str = ""
    module: type | None = None
    keys: frozenset = frozenset()
    extra: str = ""


_P = Preset
#: GDN's Table-1 view: no centring, B = every channel at the position (its module keeps the learned field itself).
_GDN_VIEW = NormSpec(None, "channel", eps=0.0)
_GDN_EXTRA = "learned weights gamma_ij >= 0 over B in place of its box mean, a learned beta_i per channel for sigma^2"
_GDN_KEYS = frozenset({"inverse", "simplified", "beta_min", "gamma_init", "alpha", "impl", "device", "dtype"})
_BATCH_KEYS = frozenset({"eps", "momentum", "affine", "impl", "track_running_stats", "device", "dtype"})
PRESETS = {
    "none":     _P(NormSpec(), dict(affine=False), "identity; with alpha, the L1 penalty on raw activations"),
    "bn":       _P(NormSpec(BS, BS), dict(affine=True), "batch norm: A = B = same unit over batch and space"),
    "bn-s":     _P(NormSpec(BS, BS, sigma=1.0), dict(affine=True), "batch norm with smoothing sigma"),
    "bn-ms":    _P(NormSpec(BS, None), dict(affine=True), "batch mean subtraction only"),
    "ln":       _P(NormSpec(CS, CS), dict(affine=True), "layer norm: A = B = all units of one example"),
    "ln-s":     _P(NormSpec(CS, CS, sigma=0.5), dict(affine=False), "layer norm with sigma, no affine"),
    "ln-ms":    _P(NormSpec(CS, None), dict(affine=False), "layer mean subtraction only"),
    "ln2d":     _P(NormSpec("channel", "channel", eps=1e-6), dict(affine=True),
                   "LayerNorm over the channels at each position (timm's LayerNorm2d, eps 1e-6)"),
    "dn":       _P(NormSpec(CS, CS, {"space": 3}, {"space": 3}), dict(affine=False),
                   "divisive norm: all channels x a k x k spatial window"),
    "dn-s":     _P(NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.5), dict(affine=False), "DN with sigma"),
    "dn-ms":    _P(NormSpec(CS, None, {"space": 3}), dict(affine=False), "local mean subtraction only"),
    "dn-1d":    _P(NormSpec("channel", "channel", {"channel": 61}, {"channel": 61}), dict(affine=False),
                   "DN for FC/RNN layers: a window of units (2R+1, R=30)"),
    "dn-1d-s":  _P(NormSpec("channel", "channel", {"channel": 61}, {"channel": 61}, sigma=1.0),
                   dict(affine=False), "1-D DN with sigma"),
    "in":       _P(NormSpec("space", "space"), dict(affine=False), "instance norm: one channel of one example"),
    "gn":       _P(NormSpec(CS, CS, groups=32), dict(affine=True), "group norm: a group of channels of one example"),
    "lrn":      _P(NormSpec(None, "channel", None, {"channel": 5}, sigma=1.0, eps=0.0, power=0.75, sup_scale=1e-4,
                            border="zeros"), dict(affine=False),
                   "local response norm (AlexNet): k=sigma^2, alpha, beta=power"),
    "rms":      _P(NormSpec(None, CS, eps=None), dict(affine=True, bias=False),
                   "RMSNorm: no centring, B = all units of one example; eps finfo(dtype).eps as nn.RMSNorm"),
    "rms2d":    _P(NormSpec(None, "channel", eps=1e-6), dict(affine=True, bias=False),
                   "RMSNorm over the channels at each position (timm's RmsNorm2d, eps 1e-6)"),
    "lcn":      _P(NormSpec(CS, CS, {"space": 9}, {"space": 9}, sum_weights={"space": 2.0},
                            sup_weights={"space": 2.0}, floor="mean"), dict(affine=False),
                   "local contrast norm (Jarrett 2009): Gaussian (9x9, std 2) A and B over all channels, divisor "
                   "max(c, local std), c its mean over the map"),
    "gdn":      _P(_GDN_VIEW, dict(inverse=False, simplified=False), "GDN (Balle 2016): x_i / sqrt(beta_i + "
                   "sum_j gamma_ij x_j^2), learned gamma >= 0, beta > 0 (compressai's GDN)", GDN, _GDN_KEYS,
                   _GDN_EXTRA),
    "igdn":     _P(_GDN_VIEW, dict(inverse=True, simplified=False), "inverse GDN: x_i * sqrt(beta_i + sum_j "
                   "gamma_ij x_j^2) (compressai's GDN(inverse=True))", GDN, _GDN_KEYS,
                   _GDN_EXTRA + "; multiplies by the root instead of dividing"),
    "gdn1":     _P(_GDN_VIEW, dict(inverse=False, simplified=True), "GDN1 (Johnston 2019): x_i / (beta_i + "
                   "sum_j gamma_ij |x_j|) (compressai's GDN1)", GDN, _GDN_KEYS,
                   _GDN_EXTRA + "; abs(x) and no root (power 1 on the L1 mean)"),
}

_DEV = frozenset({"impl", "device", "dtype"})
PRESETS.update({  # the atlas of issue 26: modules whose Table-1 view is ``spec``, plus the ``extra``
    "frn":      _P(FRN_SPEC, dict(apply_act=True), "filter response norm + TLU (Singh 2020; timm's "
                   "FilterResponseNormTlu2d): no centring, B = space of one channel", FilterResponseNorm2d,
                   _DEV | {"apply_act", "eps", "learn_eps", "eps_init", "alpha"},
                   "TLU max(y, tau), tau learned per channel; learn_eps: a learned sigma^2 beside eps"),
    "evonorm-s0": _P(EVONORM_S0_SPEC, dict(variant="s0"), "EvoNorm-S0 (Liu 2020; timm's EvoNorm2dS0): "
                     "x sigmoid(v x) / GN's std", EvoNorm2dS0, _DEV | {"groups", "group_size", "apply_act", "eps"},
                     "numerator x sigmoid(v x), not centred (A's mean only inside B)"),
    "evonorm-s0a": _P(EVONORM_S0_SPEC.replace(eps=1e-3), dict(variant="s0a"), "EvoNorm-S0a (timm's "
                      "EvoNorm2dS0a): S0 with eps 1e-3", EvoNorm2dS0, _DEV | {"groups", "group_size", "apply_act",
                                                                              "eps"},
                      "numerator x sigmoid(v x), not centred (A's mean only inside B)"),
    "evonorm-b0": _P(EVONORM_B0_SPEC, {}, "EvoNorm-B0 (Liu 2020; timm's EvoNorm2dB0): x / max(BN's std, "
                     "v x + IN's std)", EvoNorm2dB0, _DEV | {"apply_act", "momentum", "eps", "process_group"},
                     "divisor max(batch std (running at eval), v x + instance std); numerator not centred"),
    "frozen-bn": _P(FROZEN_BN_SPEC, {}, "frozen batch norm (torchvision's FrozenBatchNorm2d): BN with fixed "
                    "statistics and affine", FrozenBatchNorm2d, _DEV | {"eps"},
                    "running statistics in training too; gamma, beta are buffers (nothing learns)"),
    "dyt":      _P(DYT_SPEC, {}, "Dynamic Tanh (Zhu 2025; Liger-Kernel's LigerDyT): gamma tanh(alpha x) + beta",
                   DyT, _DEV | {"init_alpha", "beta", "channels_last"},
                   "no statistics: tanh(alpha x), alpha a learned scalar (init 0.5)"),
    "ws":       _P(WS_SPEC, {}, "weight standardization (Qiao 2019; timm's StdConv2d): a conv weight (C_out, "
                   "fan_in) viewed as (1, C_out, fan_in)", WeightStandardization,
                   _DEV | {"eps", "scaled", "gamma", "gain_init"},
                   "on a conv's weights, not activations (StdConv2d); scaled: gain x gamma/sqrt(fan_in) "
                   "(ScaledStdConv2d)"),
    # batch-norm relatives with one extra each (dnlib.norms.batch_variants); spec: the BN field they keep
    "brn":      _P(NormSpec(BS, BS), dict(rmax=3.0, dmax=5.0), "batch renorm (Ioffe 2017; chainer's "
                   "BatchRenormalization): BN corrected towards its running statistics", BatchRenorm,
                   _BATCH_KEYS | {"rmax", "dmax", "relax", "sigma", "alpha"},
                   "training output r v / sigma_B + d, r and d from the running statistics, clipped at rmax, dmax "
                   "(relaxed from BN's 1, 0 on Ioffe's schedule), stop-gradient"),
    "sn":       _P(NormSpec(BS, BS), dict(fields=("in", "ln", "bn")), "switchable norm (Luo 2019; the authors' "
                   "SwitchNorm2d): a learned mixture of the in, ln and bn fields", SwitchNorm,
                   _BATCH_KEYS | {"fields", "unbiased", "sigma", "alpha"},
                   "mean and variance are softmax mixtures of the in, ln and bn fields' moments (learned weights)"),
    "bcn":      _P(NormSpec(BS, BS), dict(groups=32), "batch-channel norm (Qiao 2019; labml's BatchChannelNorm): "
                   "running-stat BN, then GN", BatchChannelNorm, _BATCH_KEYS | {"groups"},
                   "two specs in sequence: bn with its running statistics (updated first), then the gn field with "
                   "a per-group affine"),
})

_SPEC_KEYS = {"sigma", "learn_sigma", "eps", "power", "sup_scale", "groups", "border", "sum_axes", "sup_axes",
              "sum_window", "sup_window", "window", "sum_weights", "sup_weights", "weights", "floor"}
_MODULE_KEYS = {"affine", "bias", "momentum", "track_running_stats", "alpha", "impl", "device", "dtype",
                "running_stats"}


#: The paper's starred normalizers in dnlib's terms, by experiment: the :func:`make_norm` call of their sites (the
# : values of PAPER.md §2.3, CIFAR-10 and the LSTM unless said; ``tests/test_star_names.py`` builds the CIFAR calls
# against : :mod:`dnlib.experiments.cifar_configs`). Asking for one by name raises an error that shows these.
STARRED = {
    "bn": ("BN*", "BN with the smoothing sigma and the L1 term", {
        "CIFAR": "make_norm('bn', C, sigma=1.0, eps=0, alpha=0.005) (CIFAR-100: sigma=0.25, alpha=0.01); "
                 "the model: dnlib.experiments.cifar_configs.get_config('bn-star').build_model()",
        "PTB": "the config 'bn-star-lstm' (dnlib.experiments.ptb_configs: sigma 1.0, alpha 0.1)"}),
    "ln": ("LN*", "LN with the smoothing sigma, no gain/bias, and the L1 term", {
        "CIFAR": "make_norm('ln', C, sigma=0.5, eps=0, affine=False, alpha=0.005); the model: "
                 "dnlib.experiments.cifar_configs.get_config('ln-star').build_model()",
        "PTB": "the config 'ln-star-lstm' (dnlib.experiments.ptb_configs: sigma 1.0, alpha 0.001)"}),
    "dn": ("DN*", "DN with the smoothing sigma and the L1 term", {
        "CIFAR": "make_norm('dn', C, window=5 (conv1) or 3 (conv2, conv3), sigma=0.5, eps=0, border='reference', "
                 "alpha=0.005) (CIFAR-100: alpha=0.001); the model: "
                 "dnlib.experiments.cifar_configs.get_config('dn-star').build_model()",
        "PTB": "make_norm('dn-1d-s', H, window=61, border='zeros', sigma=1.0, eps=0, alpha=1e-4) at each gate "
               "and the cell state; the config 'dn-star-lstm' (dnlib.experiments.ptb_configs)",
        "SR": "5 x 5 summation and 7 x 7 suppression windows, sigma 1, alpha 0.1: "
              "dnlib.experiments.sr_configs.get_config(...).build_model('dn*')"}),
}


def _starred(name: str) -> str | None:
    """The STARRED key a spelling of BN*/LN*/DN* means (``"dn*"``, ``"DN-star"``, ``"dnstar"``, ...), or None."""
    key = name.lower().replace("_", "-")
    for base in STARRED:
        if key in (f"{base}*", f"{base}-star", f"{base}star"):
            return base
    return None


#: What a model's ``norm=`` accepts: a preset name, a :class:`NormSpec`, or None (= ``"none"``).
NormLike = str | NormSpec | None


def list_norms() -> list:
    """The preset names :func:`make_norm` and every model's ``norm=`` accept (the experiments' named rows, such
    as SR's ``"dn*"``, are in their configuration tables: the ``*_configs`` modules of :mod:`dnlib.experiments`)."""
    return list(PRESETS)


def get_spec(name: str) -> NormSpec:
    """The :class:`NormSpec` of a preset."""
    return _lookup(name).spec


def _lookup(name: str, param: str = "name_or_spec") -> Preset:
    if isinstance(name, str) and _starred(name):
        paper, what, calls = STARRED[_starred(name)]
        sites = "; ".join(f"{exp}: {call}" for exp, call in calls.items())
        raise ValueError(f"{param}: unknown normalizer {name!r}: {paper} is the paper's name for {what}, not a "
                         f"preset, because its values differ between the experiments. In dnlib's terms, {sites}")
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise ValueError(f"{param}: unknown normalizer {name!r}; known presets are {list_norms()}")
    return PRESETS[name.lower()]


def _no_window(spec: NormSpec, key: str, preset: str | None) -> ValueError:
    """The error for ``key`` (window/weights) that no field of ``spec`` (of ``preset``) would take."""
    what = f"the preset {preset!r} ({spec})" if preset else f"the spec {spec}"
    return ValueError(f"{key}: sets the {'windows' if 'window' in key else 'window weights'} of the fields that have "
                      f"a window, and {what} has no window for it (it would be ignored); add windows with "
                      f"sum_window=/sup_window= (e.g. {{'space': 5}}), or use a windowed preset such as 'dn' "
                      f"(space) or 'dn-1d' (channel)")


def _window_axis(spec: NormSpec, key: str, preset: str | None = None) -> str:
    axes = {a for a, _ in spec.sum_window + spec.sup_window}
    if not axes:
        raise _no_window(spec, key, preset)
    if len(axes) != 1:
        raise ValueError(f"{key}: an integer window needs a preset with one windowed axis, and {spec} has "
                         f"{sorted(axes)}; pass a mapping such as {{'space': 5}}")
    return axes.pop()


def resolve_spec(spec: NormSpec, *, preset: str | None = None, **changes) -> NormSpec:
    """Apply spec-level overrides (``window``/``sum_window``/``sup_window`` may be ints; ``weights``/
    ``sum_weights``/``sup_weights`` numbers (a Gaussian width) or ``"box"``, for the one windowed axis) to
    ``spec``. ``window`` sets the windows of the fields that have one (unless ``sum_window``/``sup_window`` set
    them), ``weights`` the weights of the fields that have a window then (unless ``sum_weights``/``sup_weights``
    do); either is refused when no field would take it. ``preset``: the preset's name, for the errors."""
    window = changes.pop("window", None)
    weights = changes.pop("weights", None)
    for key in ("sum_weights", "sup_weights"):
        if key in changes and (isinstance(changes[key], str) or is_real(changes[key])):
            changes[key] = {_window_axis(spec, key, preset): changes[key]}
    for key in ("sum_window", "sup_window"):
        if key in changes and is_int(changes[key]):
            changes[key] = {_window_axis(spec, key, preset): changes[key]}
    if window is not None:
        if is_int(window):
            window = {_window_axis(spec, "window", preset): window}
        takers = [f for f in ("sum", "sup") if f"{f}_window" not in changes and spec.window(f)]
        if not takers:
            raise _no_window(spec, "window", preset)
        for f in takers:
            changes[f"{f}_window"] = window
    if weights is not None:
        if isinstance(weights, str) or is_real(weights):
            weights = {_window_axis(spec, "weights", preset): weights}
        windowed = [f for f in ("sum", "sup") if changes.get(f"{f}_window", spec.window(f))]
        if not windowed:
            raise _no_window(spec, "weights", preset)
        for f in windowed:
            changes.setdefault(f"{f}_weights", weights)
    return spec.replace(**changes) if changes else spec


def _allowed_keys(preset: Preset | None) -> set:
    """The overrides :func:`make_norm` accepts for ``preset`` (None: a :class:`NormSpec`)."""
    if preset is not None and preset.module is not None:
        return set(preset.keys)
    return _SPEC_KEYS | _MODULE_KEYS


def make_norm(name_or_spec: str | NormSpec, num_features: int, **overrides) -> DivisiveNorm:
    """Build a normalizer by preset name (see :func:`list_norms`) or from a :class:`NormSpec`.

    Overrides change the spec (``sigma``, ``learn_sigma``, ``eps``, ``power``, ``sup_scale``, ``groups``,
    ``border``, ``window`` (both fields), ``sum_window``, ``sup_window``, ``weights`` (both fields),
    ``sum_weights``, ``sup_weights``, ``floor``) or the module (``affine``, ``bias``,
    ``momentum``, ``track_running_stats``, ``alpha``, ``impl``, ``running_stats``, ``device``, ``dtype``;
    ``momentum``, ``running_stats`` and ``track_running_stats=True`` are refused where the module keeps no running
    statistics: no field pools ``batch``, or ``track_running_stats=False``). The GDN
    presets (``gdn``, ``igdn``, ``gdn1``: :class:`~dnlib.norms.gdn.GDN`) take ``inverse``, ``simplified``, ``beta_min``,
    ``gamma_init``, ``alpha``, ``impl``, ``device`` and ``dtype``; ``brn``, ``sn`` and ``bcn``
    (:mod:`dnlib.norms.batch_variants`) take ``eps``, ``momentum``, ``affine``, ``impl``, ``track_running_stats``,
    ``device``, ``dtype`` and their own: ``rmax``, ``dmax``, ``relax``, ``sigma``, ``alpha`` (brn); ``fields``,
    ``unbiased``, ``sigma``, ``alpha`` (sn); ``groups`` (bcn).

    Example: ``make_norm("dn", 32, window=5, sigma=0.5, eps=0, border="reference", alpha=0.005)`` is the paper's
    first DN* layer (``make_norm("dn*")`` says so: :data:`STARRED`).
    """
    preset = None if isinstance(name_or_spec, NormSpec) else _lookup(name_or_spec)
    allowed = _allowed_keys(preset)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"make_norm: unknown override {unknown[0]!r}; allowed are {sorted(allowed)}")
    if preset is not None and preset.module is not None:
        return preset.module(num_features, **{**preset.defaults, **overrides})
    if preset is None:
        spec, defaults = name_or_spec, {}
    else:
        spec, defaults = preset.spec, dict(preset.defaults)
    name = None if preset is None else name_or_spec.lower()
    spec = resolve_spec(spec, preset=name, **{k: v for k, v in overrides.items() if k in _SPEC_KEYS})
    _check_running_keys(spec, name, overrides)
    kwargs = {**defaults, **{k: v for k, v in overrides.items() if k in _MODULE_KEYS}}
    return DivisiveNorm(num_features, spec, **kwargs)


def _check_running_keys(spec: NormSpec, preset: str | None, overrides: Mapping) -> None:
    """Refuse the running-statistics overrides (``momentum``, ``running_stats``, ``track_running_stats=True``) of a
    :class:`DivisiveNorm` that keeps no running statistics (no field pools the batch, or
    ``track_running_stats=False``), where they would do nothing. A field that pools the batch but cannot keep
    them (it pools channels too, or has windows) is DivisiveNorm's own error."""
    track = overrides.get("track_running_stats")
    off = track is not None and not track
    if spec.pools_batch and not off:
        return
    refused = sorted(k for k in ("momentum", "running_stats") if k in overrides)
    if track and not spec.pools_batch:
        refused = sorted(refused + ["track_running_stats"])
    if not refused:
        return
    key = refused[0]
    what = f"the preset {preset!r} ({spec})" if preset else f"the spec {spec}"
    effect = "cannot apply" if key == "track_running_stats" else "would do nothing"
    if spec.pools_batch:
        why, todo = "track_running_stats=False", "drop it, or keep them with track_running_stats=None (default)"
    else:
        why, todo = ("no field pools 'batch'", "drop it (running statistics are kept by a field that pools 'batch': "
                     "'bn', 'bn-s', 'bn-ms', or sum_axes/sup_axes with 'batch')")
    raise ValueError(f"{key}: {what} keeps no running statistics ({why}), so {key}={overrides[key]!r} {effect}; "
                     f"{todo}")


def norm_name(norm: NormLike) -> str:
    """How a model names its ``norm``: the preset's name in lower case (``"none"`` for None), or the spec's repr."""
    if norm is None:
        return "none"
    return norm.lower() if isinstance(norm, str) else repr(norm)


def get_norm_layer(norm: NormLike = "none", norm_kwargs: Mapping | None = None, *,
                   param: str = "norm") -> Callable[..., DivisiveNorm]:
    """Resolve a model's normalizer once: ``norm`` (a preset name, case-insensitive; a :class:`NormSpec`; or None
    = ``"none"``) with the :func:`make_norm` overrides ``norm_kwargs``. Returns
    ``functools.partial(make_norm, norm, **norm_kwargs)``: call it with ``num_features`` (and further overrides)
    for each site. An unknown preset, a ``norm`` of another type, ``norm_kwargs`` that is not a mapping or holds
    an unknown key raise ValueError naming ``param`` / ``norm_kwargs`` before anything is built.

    Example: ``layer = get_norm_layer("dn", {"window": 5, "sigma": 0.5}); layer(32)``.
    """
    if norm is None:
        norm = "none"
    if isinstance(norm, str):
        if getattr(_lookup(norm, param).module, "normalizes", "activations") == "weights":
            raise ValueError(f"{param}: {norm!r} normalizes a conv's weights, not activations, so it cannot be a "
                             f"model's normalizer; use dnlib.norms.weight_std.StdConv2d / ScaledStdConv2d (with "
                             f"an activation normalizer such as 'gn'), or make_norm({norm!r}, C_out) as a "
                             f"torch.nn.utils.parametrize parametrization of a conv's weight")
        norm = norm.lower()
    elif not isinstance(norm, NormSpec):
        raise ValueError(f"{param}: expected a preset name (see dnlib.list_norms()) or a NormSpec, got "
                         f"{type(norm).__name__} {norm!r}")
    if norm_kwargs is None:
        norm_kwargs = {}
    if not isinstance(norm_kwargs, Mapping):
        raise ValueError(f"norm_kwargs: expected a mapping of make_norm overrides (e.g. {{'sigma': 0.5}}), got "
                         f"{type(norm_kwargs).__name__} {norm_kwargs!r}")
    allowed = _allowed_keys(None if isinstance(norm, NormSpec) else _lookup(norm, param))
    unknown = sorted(set(norm_kwargs) - allowed, key=str)
    if unknown:
        raise ValueError(f"norm_kwargs: unknown key {unknown[0]!r}; allowed are {sorted(allowed)}")
    return functools.partial(make_norm, norm, **norm_kwargs)
