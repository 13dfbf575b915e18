"""``NormSpec``: the paper's Table 1 as a frozen value.

Every normalizer in this library is divisive normalization (Ren et al., ICLR 2017, eqs. 3-4)

.. math::

    v_{n,j} = z_{n,j} - \\mathbb{E}_{A_{n,j}}[z] \\qquad
    y_{n,j} = \\frac{v_{n,j}}{\\left(\\sigma^2 + \\epsilon + s\\,\\mathbb{E}_{B_{n,j}}[v^2]\\right)^{p}}

and differs from the others only in the *summation field* ``A`` (which activations the mean is taken
over) and the *suppression field* ``B`` (which centred activations the mean square is taken over).
A field is a set of pooled axes of the ``(N, C, *spatial)`` activation tensor:

* ``"batch"``   the N examples of the minibatch (BN);
* ``"channel"`` the C channels / hidden units of one example (LN, DN);
* ``"space"``   the spatial positions, H x W for images or L for sequences (BN, LN, IN, DN).

A pooled axis may carry a local *window*: ``{"space": 3}`` pools a 3 x 3 neighbourhood centred on each
position (the paper's conv DN, PAPER.md §1.2), ``{"channel": 61}`` a run of 61 neighbouring units (its FC/RNN
DN with radius R = 30, §1.3; and LRN). An axis pooled without a window is pooled globally.
An empty summation field means no centring (RMSNorm, LRN); an empty suppression field means no division
(the mean-only ``*-ms`` variants).

A window may carry *weights* (``sum_weights``/``sup_weights``): a box (the default; every neighbour counts
equally) or a Gaussian of a given width, ``{"space": 2.0}`` (standard deviation in pixels; in units along
``"channel"``). The Gaussian weight of offset ``o`` (``o`` from ``-(k-1)//2`` to ``k//2``) is
``exp(-o^2 / (2 width^2))``, truncated at the window and normalized to sum 1 over the whole window; a 2-D
spatial window is the product of two 1-D ones. The field's "mean" is then the weighted mean: under
``border="valid"`` divided by the sum of the weights inside the map (a box's count of real neighbours),
under ``"zeros"``/``"reference"`` by the whole window's sum (1; zero padding counted), the reference border's
suppression factor ``(k_B / k_A)^2`` of 2-D windows unchanged. Local contrast normalization (Jarrett et al.
2009) is the ``lcn`` preset: Gaussian-weighted fields plus ``floor="mean"``, the divisor floored at its mean
over the map.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

AXES = ("batch", "channel", "space")
WINDOW_AXES = ("channel", "space")
BORDERS = ("valid", "zeros", "reference")
FLOORS = (None, "mean")

AxesLike = str | Iterable[str] | None
WindowLike = Mapping[str, int] | Iterable[tuple] | None


def is_int(value) -> bool:
    """An integer (Python or numpy: any ``numbers.Integral``) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A real number (Python or numpy: any ``numbers.Real``) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _show(value) -> str:
    """A value for an error message: numpy scalars as their Python value (``-0.5``, not ``np.float32(-0.5)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _parse_axes(param: str, value: AxesLike) -> frozenset:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [v for v in value.replace("+", ",").split(",") if v.strip()]
    axes = frozenset(a.strip() for a in value)
    bad = sorted(a for a in axes if a not in AXES)
    if bad:
        raise ValueError(f"{param}: unknown axis {bad[0]!r} in {sorted(axes)}; allowed axes are {list(AXES)}")
    return axes


def _parse_window(param: str, value: WindowLike, field: frozenset, field_param: str, border: str) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, (Mapping, list, tuple)):
        raise ValueError(f"{param}: expected a mapping axis -> size such as {{'space': 3}}, got {value!r}")
    items = value.items() if isinstance(value, Mapping) else value
    out = {}
    for item in items:
        try:
            axis, size = item
        except (TypeError, ValueError):
            raise ValueError(f"{param}: expected a mapping axis -> size such as {{'space': 3}}, "
                             f"got {value!r}") from None
        if axis not in WINDOW_AXES:
            raise ValueError(f"{param}: a window on axis {axis!r} is not allowed; windows go on {list(WINDOW_AXES)}")
        if axis not in field:
            raise ValueError(f"{param}: window on axis {axis!r}, which {field_param}={sorted(field)} does not pool; "
                             f"add {axis!r} to {field_param} or drop the window")
        if not is_int(size) or size < 1:
            raise ValueError(f"{param}: window size for {axis!r} must be an integer >= 1, got {_show(size)}")
        size = int(size)
        if size % 2 == 0 and border != "reference":
            raise ValueError(f"{param}: window size {size} for {axis!r} is even, but border={border!r} centres the "
                             f"window on each unit, which needs an odd size; use an odd size or border='reference' "
                             f"(TensorFlow SAME padding, as the authors' code)")
        if size > 1:
            out[axis] = size
    return tuple(sorted(out.items()))


def _parse_weights(param: str, value, window: tuple, window_param: str) -> tuple:
    """``{axis: "box" | width}`` -> sorted ``((axis, width), ...)`` of the Gaussian axes (boxes dropped)."""
    if value is None:
        return ()
    if not isinstance(value, (Mapping, list, tuple)):
        raise ValueError(f"{param}: expected a mapping axis -> 'box' or a Gaussian width, such as {{'space': 2.0}}, "
                         f"got {value!r}")
    items = value.items() if isinstance(value, Mapping) else value
    w = dict(window)
    out = {}
    for item in items:
        try:
            axis, width = item
        except (TypeError, ValueError):
            raise ValueError(f"{param}: expected a mapping axis -> 'box' or a Gaussian width, such as "
                             f"{{'space': 2.0}}, got {value!r}") from None
        if axis not in w:
            raise ValueError(f"{param}: weights on axis {axis!r}, which {window_param}={w} does not window; "
                             f"weights go on a windowed axis of this field ({sorted(w) or 'none'})")
        if isinstance(width, str) and width == "box":
            continue
        if not is_real(width) or not math.isfinite(width) or width <= 0:
            raise ValueError(f"{param}: the weights of axis {axis!r} must be 'box' or a Gaussian width (standard "
                             f"deviation in units, a finite number > 0), got {_show(width)}")
        out[axis] = float(width)
    return tuple(sorted(out.items()))


@dataclass(frozen=True, repr=False)
class NormSpec:
    """Which activations a divisive normalizer pools, and how (PAPER.md Table 1).

    Args:
        sum_axes: axes the summation field ``A`` pools (mean subtraction); empty = no centring.
        sup_axes: axes the suppression field ``B`` pools (divisive step); empty = no division.
        sum_window: optional local windows on axes of ``A``, e.g. ``{"space": 5}``.
        sup_window: optional local windows on axes of ``B`` (may differ from ``sum_window``).
        sigma: the smoothing term sigma (the normalizer bias of eq. 4); it enters as sigma^2.
        learn_sigma: make sigma a learnable scalar (initialised at ``sigma``).
        eps: numerical safety added beside sigma^2; not part of the model. ``None`` means
            ``torch.finfo(dtype).eps`` of the computation's dtype at forward time, as ``nn.RMSNorm``'s default
            (float32's for half inputs, which are normalized in float32); see :meth:`eps_for`.
        power: exponent p of the divisor (1/2 for DN/BN/LN; 3/4 for LRN).
        sup_scale: factor s on E_B[v^2] (1 except for LRN, where it is LRN's alpha).
        groups: split the channels into groups; a field pooling ``"channel"`` then pools within one group (GN).
        border: how windows treat the map border.
            ``"valid"`` (default) averages over the real neighbours only;
            ``"zeros"`` counts zero padding and divides by the full window size (torch's LRN);
            ``"reference"`` reproduces the authors' TensorFlow code: zero padding counted, TF ``SAME``
            padding for even windows, and the suppression sum divided by the *summation* window's size
            (PAPER.md §1.2 step 5, §5.4 item 1; identical to ``"zeros"`` when the windows are equal).
            Weighted windows follow the same rules with weights in place of counts (module docstring).
        sum_weights: weights of the windows of ``A``: ``{axis: "box" | width}``, a Gaussian of standard deviation
            ``width`` units (normalized to sum 1 over the window, truncated at its size); default box.
        sup_weights: the same for the windows of ``B``.
        floor: ``None`` (default) or ``"mean"``: the divisor ``d = (sigma^2 + eps + s E_B[v^2])^p`` is replaced
            by ``max(d, c)``, ``c`` the mean of ``d`` over all units of the example (per example and group; over
            the map for a field that pools all channels), as local contrast normalization (Jarrett et al.
            2009): ``y = v / max(c, d)``.
    """

    sum_axes: frozenset = frozenset()
    sup_axes: frozenset = frozenset()
    sum_window: tuple = ()
    sup_window: tuple = ()
    sigma: float = 0.0
    learn_sigma: bool = False
    eps: float | None = 1e-5
    power: float = 0.5
    sup_scale: float = 1.0
    groups: int = 1
    border: str = "valid"
    sum_weights: tuple = ()
    sup_weights: tuple = ()
    floor: str | None = None

    def __post_init__(self):
        if self.border not in BORDERS:
            raise ValueError(f"border: got {self.border!r}; allowed values are {list(BORDERS)}")
        if self.floor not in FLOORS:
            raise ValueError(f"floor: got {self.floor!r}; allowed values are {list(FLOORS)}")
        sum_axes = _parse_axes("sum_axes", self.sum_axes)
        sup_axes = _parse_axes("sup_axes", self.sup_axes)
        object.__setattr__(self, "sum_axes", sum_axes)
        object.__setattr__(self, "sup_axes", sup_axes)
        object.__setattr__(self, "sum_window",
                           _parse_window("sum_window", self.sum_window, sum_axes, "sum_axes", self.border))
        object.__setattr__(self, "sup_window",
                           _parse_window("sup_window", self.sup_window, sup_axes, "sup_axes", self.border))
        object.__setattr__(self, "sum_weights",
                           _parse_weights("sum_weights", self.sum_weights, self.sum_window, "sum_window"))
        object.__setattr__(self, "sup_weights",
                           _parse_weights("sup_weights", self.sup_weights, self.sup_window, "sup_window"))
        if self.floor is not None and not sup_axes:
            raise ValueError(f"floor: floor={self.floor!r} floors the divisor, and sup_axes is empty (no division); "
                             f"add a suppression field or pass floor=None")
        for name in ("sigma", "eps"):
            val = getattr(self, name)
            if name == "eps" and val is None:
                continue
            if not is_real(val) or not math.isfinite(val) or val < 0:
                none = " or None" if name == "eps" else ""
                raise ValueError(f"{name}: must be a finite number >= 0{none}, got {_show(val)}")
            object.__setattr__(self, name, float(val))
        for name in ("power", "sup_scale"):
            val = getattr(self, name)
            if not is_real(val) or not math.isfinite(val) or val <= 0:
                raise ValueError(f"{name}: must be a finite number > 0, got {_show(val)}")
            object.__setattr__(self, name, float(val))
        if not is_int(self.groups) or self.groups < 1:
            raise ValueError(f"groups: must be an integer >= 1, got {_show(self.groups)}")
        object.__setattr__(self, "groups", int(self.groups))
        if self.groups > 1:
            if "channel" not in (sum_axes | sup_axes):
                raise ValueError(f"groups: groups={self.groups} needs a field that pools 'channel'")
            if dict(self.sum_window).get("channel") or dict(self.sup_window).get("channel"):
                raise ValueError(f"groups: groups={self.groups} cannot be combined with a channel window")
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma: must be True or False, got {self.learn_sigma!r}")

    # --- derived facts ---------------------------------------------------------------------------------
    @property
    def centre(self) -> bool:
        """Whether the summation field is non-empty (mean subtraction happens)."""
        return bool(self.sum_axes)

    @property
    def divide(self) -> bool:
        """Whether the suppression field is non-empty (the divisive step happens)."""
        return bool(self.sup_axes)

    @property
    def pools_batch(self) -> bool:
        return "batch" in self.sum_axes or "batch" in self.sup_axes

    @property
    def windowed(self) -> bool:
        return bool(self.sum_window or self.sup_window)

    @property
    def weighted(self) -> bool:
        """Whether some window carries non-box (Gaussian) weights."""
        return bool(self.sum_weights or self.sup_weights)

    def eps_for(self, dtype: torch.dtype) -> float:
        """The eps added beside sigma^2 for a computation in ``dtype``: ``eps``, or when it is ``None``
        ``torch.finfo`` of the dtype torch accumulates ``dtype`` in (float32 for float16/bfloat16), as
        ``F.rms_norm`` with ``eps=None``."""
        if self.eps is not None:
            return self.eps
        return torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype).eps

    def window(self, field: str) -> dict:
        """The windows of field ``"sum"`` or ``"sup"`` as a dict axis -> size."""
        return dict(self.sum_window if field == "sum" else self.sup_window)

    def weights(self, field: str) -> dict:
        """The Gaussian widths of the windows of field ``"sum"`` or ``"sup"`` as a dict axis -> width (box axes
        are absent)."""
        return dict(self.sum_weights if field == "sum" else self.sup_weights)

    def replace(self, **changes) -> NormSpec:
        """A copy with some fields changed (validated again). A changed window keeps the weights of the axes it
        still windows (unless the weights are changed too): ``lcn.replace(sum_window={})`` is box-free, not an
        error."""
        for key in ("sum_window", "sup_window", "sum_weights", "sup_weights"):
            if key in changes and isinstance(changes[key], Mapping):
                changes[key] = dict(changes[key])
        for f in ("sum", "sup"):
            if f"{f}_window" in changes and f"{f}_weights" not in changes and self.weights(f):
                new = changes[f"{f}_window"]
                try:
                    items = dict(new.items() if isinstance(new, Mapping) else (new or ())).items()
                except (TypeError, ValueError):
                    items = ()  # (a malformed window: its own check names it)
                axes = {a for a, k in items if not (is_int(k) and k <= 1)}
                changes[f"{f}_weights"] = {a: w for a, w in self.weights(f).items() if a in axes}
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        def field(axes, window, weights):
            if not axes:
                return "-"
            w, g = dict(window), dict(weights)
            return "+".join((f"{a}[{w[a]}]" if a not in g else f"{a}[{w[a]},gauss{g[a]:g}]") if a in w else a
                            for a in AXES if a in axes)

        parts = [f"A={field(self.sum_axes, self.sum_window, self.sum_weights)}",
                 f"B={field(self.sup_axes, self.sup_window, self.sup_weights)}",
                 f"sigma={self.sigma:g}{'(learned)' if self.learn_sigma else ''}",
                 f"eps={'finfo' if self.eps is None else format(self.eps, 'g')}"]
        if self.power != 0.5:
            parts.append(f"power={self.power:g}")
        if self.sup_scale != 1.0:
            parts.append(f"sup_scale={self.sup_scale:g}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.windowed:
            parts.append(f"border={self.border}")
        if self.floor is not None:
            parts.append(f"floor={self.floor}")
        return f"NormSpec({', '.join(parts)})"
