"""The paper's CIFAR CNN: the Caffe "quick" model of PAPER.md §3.1 (Table 2), with a normalizer before each ReLU.

::

    input 3x32x32 (raw 0-255 RGB minus the mean image)
    conv 5x5, 32, SAME -> norm -> ReLU -> max pool 3x3 s2 (TF SAME)   32x32 -> 16x16
    conv 5x5, 32, SAME -> norm -> ReLU -> avg pool 3x3 s2 (TF SAME)   16x16 ->  8x8
    conv 5x5, 64, SAME -> norm -> ReLU -> avg pool 3x3 s2 (TF SAME)    8x8  ->  4x4
    flatten (1024) -> FC 64, linear (no nonlinearity) -> FC num_classes

TF ``SAME`` pooling pads ``total = max((out - 1) * s + k - n, 0)`` with ``total // 2`` *before* and the rest
after (for 32 -> 16 with k = 3, s = 2: 0 before, 1 after), excludes the padding from the max, and divides an
average by the number of real inputs in the window. Torch's symmetric ``padding=`` cannot express that, so
:func:`tf_same_pool2d` uses ``ceil_mode`` when nothing is padded before (every pool of this model), and
explicit padding with a precomputed divisor otherwise.

Initialization as the authors' code: truncated normal (+-2 std) with std 1e-4, 1e-2, 1e-2 for the convs and
1e-1, 1e-1 for the FC layers, biases 0 (PAPER.md §3.1).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.norm import DivisiveNorm
from ..norms.presets import NormLike, get_norm_layer, norm_name
from ..norms.spec import NormSpec

__all__ = ["CifarCNN", "tf_same_pads", "tf_same_pool2d", "TFSamePool2d", "INIT_STD",
           "layer_kwargs", "WINDOW_KEYS"]

#: Init std of conv1, conv2, conv3, fc1, fc2 (PAPER.md §3.1).
INIT_STD = (1e-4, 1e-2, 1e-2, 1e-1, 1e-1)


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple:
    """``(before, after)`` padding of TF ``SAME`` along one axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def tf_same_pool2d(x: torch.Tensor, kind: str, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max or average pooling with TensorFlow ``SAME`` semantics (padding never counted)."""
    if kind not in ("max", "avg"):
        raise ValueError(f"kind: must be 'max' or 'avg', got {kind!r}")
    (t, b), (left, r) = (tf_same_pads(n, kernel, stride) for n in x.shape[-2:])
    if t == 0 and left == 0:
        # Windows start at 0, s, 2s, ...; ceil_mode adds the last, partial window and (with no padding)
        # divides it by the number of real inputs: exactly TF SAME with only "after" padding.
        if kind == "max":
            return F.max_pool2d(x, kernel, stride, ceil_mode=True)
        return F.avg_pool2d(x, kernel, stride, ceil_mode=True, count_include_pad=False)
    if kind == "max":
        return F.max_pool2d(F.pad(x, (left, r, t, b), value=float("-inf")), kernel, stride)
    ones = torch.ones((1, 1) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
    count = F.avg_pool2d(F.pad(ones, (left, r, t, b)), kernel, stride, divisor_override=1)
    return F.avg_pool2d(F.pad(x, (left, r, t, b)), kernel, stride, divisor_override=1) / count


class TFSamePool2d(nn.Module):
    """Module form of :func:`tf_same_pool2d`."""

    def __init__(self, kind: str, kernel: int = 3, stride: int = 2):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"kind: must be 'max' or 'avg', got {kind!r}")
        self.kind, self.kernel, self.stride = kind, kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf_same_pool2d(x, self.kind, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"{self.kind!r}, kernel={self.kernel}, stride={self.stride}, padding='TF SAME'"


#: make_norm keys whose value in ``norm_kwargs`` may be one per conv layer, as a list or tuple of integers (or None):
#: a window of one layer is an integer, an ``{axis: size}`` mapping or ``(axis, size)`` pairs, never a sequence of
#: integers, so such a value cannot be one layer's (the configurations' DN windows 5, 3, 3).
WINDOW_KEYS = ("window", "sum_window", "sup_window")


def _per_layer(value, n: int, name: str) -> list:
    """A list/tuple of length ``n`` is one value per layer; anything else is shared by all layers."""
    if isinstance(value, (list, tuple)) and not isinstance(value, NormSpec):
        if len(value) != n:
            raise ValueError(f"{name}: a per-layer list needs {n} entries, got {len(value)}")
        return list(value)
    return [value] * n


def _norm_kwargs(norm_kwargs: Mapping | None) -> dict:
    """``norm_kwargs`` as a dict; a ValueError naming it when it is not a mapping."""
    if norm_kwargs is not None and not isinstance(norm_kwargs, Mapping):
        raise ValueError(f"norm_kwargs: expected a mapping of make_norm overrides (e.g. {{'sigma': 0.5}}), got "
                         f"{type(norm_kwargs).__name__} {norm_kwargs!r}")
    return dict(norm_kwargs or {})


def _is_window_list(key: str, value) -> bool:
    return key in WINDOW_KEYS and isinstance(value, (list, tuple)) and len(value) > 0 and all(
        v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value)


def layer_kwargs(norm_kwargs: Mapping | None, per_layer: Mapping | None, n: int = 3) -> list:
    """The :func:`dnlib.make_norm` overrides of each of ``n`` layers: ``norm_kwargs`` shared by all (every value
    whole, tuples too: sn's ``fields``, brn's ``relax``), ``per_layer`` one value per layer (a list or tuple of
    ``n``). A window key (:data:`WINDOW_KEYS`) of ``norm_kwargs`` given as integers (or None) is one per layer too.
    ValueErrors name the key: a ``per_layer`` value that is not ``n`` values, a key given in both."""
    shared = _norm_kwargs(norm_kwargs)
    if per_layer is not None and not isinstance(per_layer, Mapping):
        raise ValueError(f"per_layer: expected a mapping of make_norm overrides to {n} values, one per conv layer "
                         f"(e.g. {{'alpha': (0.0, 0.01, 0.02)}}), got {type(per_layer).__name__} {per_layer!r}")
    layered = {}
    for key, value in (per_layer or {}).items():
        if key in shared:
            raise ValueError(f"per_layer[{key!r}]: also given in norm_kwargs; give each key once")
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"per_layer[{key!r}]: needs {n} values (one per conv layer) in a list or tuple, got "
                             f"{value!r}")
        layered[key] = list(value)
    for key in [k for k, v in shared.items() if _is_window_list(k, v)]:
        value = shared.pop(key)
        if len(value) != n:
            raise ValueError(f"norm_kwargs[{key!r}]: a per-layer window needs {n} entries (one per conv layer), got "
                             f"{len(value)}: {value!r}")
        layered[key] = list(value)
    return [{**shared, **{k: v[i] for k, v in layered.items()}} for i in range(n)]


class CifarCNN(nn.Module):
    """The CIFAR CNN of PAPER.md §3.1 with ``norm`` before each conv ReLU.

    Args:
        num_classes: 10 (CIFAR-10) or 100 (CIFAR-100).
        norm: a preset name (see :func:`dnlib.list_norms`), a :class:`NormSpec`, ``None`` (= ``"none"``), or a
            list of three of them, one per conv layer.
        norm_kwargs: overrides passed to :func:`dnlib.make_norm` for every layer (``sigma``, ``alpha``,
            ``affine``, ``eps``, ``window``, ``border``, ...), each value whole (a tuple too: ``fields=("in",
            "ln")``, ``relax=(5000, 40000, 25000)``). One exception: a window (``window``, ``sum_window``,
            ``sup_window``) given as three integers (or None) is one per layer, e.g. ``window=(5, 3, 3)``; no
            window of one layer is a sequence of integers.
        per_layer: overrides with one value per conv layer, each a list or tuple of three, e.g.
            ``{"alpha": (0.0, 0.01, 0.02)}`` or ``{"fields": [("in",), ("ln",), ("bn",)]}`` (a key goes in
            ``norm_kwargs`` or here, not both).
        dropout: drop probability after both FC layers, logits included, as the authors' code (0.5 for
            "Baseline +WD +Dropout"; 0 = none).
        widths: conv channels.
        init_std: std of the truncated-normal init of conv1-3 and fc1-2; None keeps torch's default init.

    A "none" site is a parameterless :class:`DivisiveNorm` (the identity), where ``alpha`` adds the L1 term on
    the raw activations (the "Baseline +L1" row).

    ``model.norms`` are the three normalizers; ``model.sparse_sites()`` those that add an L1 term.

    Examples::

        >>> dn_star = CifarCNN(10, "dn", norm_kwargs=dict(window=(5, 3, 3), sigma=0.5, eps=0.0, alpha=0.005,
        ...                                               border="reference"))
        >>> dn_star(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, norm: NormLike | Sequence[NormLike] = "none", *,
                 norm_kwargs: Mapping | None = None, per_layer: Mapping | None = None, dropout: float = 0.0,
                 widths: Sequence[int] = (32, 32, 64), init_std: Sequence[float] | None = INIT_STD):
        super().__init__()
        kwargs = layer_kwargs(norm_kwargs, per_layer, 3)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {dropout!r}")
        if len(widths) != 3:
            raise ValueError(f"widths: need 3 conv widths, got {widths!r}")
        norms = _per_layer(norm, 3, "norm")
        layers = [get_norm_layer(norms[i], kwargs[i]) for i in range(3)]
        chans = (3,) + tuple(widths)
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 5, padding=2) for i in range(3))
        try:
            self.norms = nn.ModuleList(layers[i](chans[i + 1]) for i in range(3))
        except ValueError as e:
            three = [k for k, v in _norm_kwargs(norm_kwargs).items() if isinstance(v, (list, tuple)) and len(v) == 3
                     and not _is_window_list(k, v)]
            if not three:
                raise
            raise ValueError(f"{e} (norm_kwargs values go whole to every layer; for one value per conv layer pass "
                             f"per_layer={{{three[0]!r}: ...}})") from e
        self.norm_name = norm_name(norms[0]) if len({norm_name(n) for n in norms}) == 1 else \
            [norm_name(n) for n in norms]
        self.pools = nn.ModuleList([TFSamePool2d("max"), TFSamePool2d("avg"), TFSamePool2d("avg")])
        self.fc1 = nn.Linear(widths[2] * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)
        self.dropout = dropout
        self.num_classes = num_classes
        self.init_std = None if init_std is None else tuple(float(s) for s in init_std)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal (+-2 std) weights with :data:`INIT_STD`, zero biases (no-op with ``init_std=None``)."""
        if self.init_std is None:
            return
        layers = list(self.convs) + [self.fc1, self.fc2]
        if len(self.init_std) != len(layers):
            raise ValueError(f"init_std: need {len(layers)} values (conv1-3, fc1-2), got {self.init_std!r}")
        for layer, std in zip(layers, self.init_std):
            nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor, upto: int = 3, pre_norm: bool = False) -> torch.Tensor:
        """Activations after conv block ``upto`` (1-3); with ``pre_norm`` the conv output (+bias) of that block,
        before its normalizer (Table 10 uses ``features(x, 1, pre_norm=True)``)."""
        for i in range(upto):
            z = self.convs[i](x)
            if pre_norm and i == upto - 1:
                return z
            x = self.pools[i](F.relu(self.norms[i](z)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        x = F.dropout(self.fc1(x), self.dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def sparse_sites(self) -> list:
        """The normalizers that add an L1 term (``alpha > 0``) to the loss, as ``(name, module)``."""
        return [(f"norms.{i}", m) for i, m in enumerate(self.norms) if isinstance(m, DivisiveNorm) and m.alpha > 0]

    def decay_parameters(self) -> tuple:
        """``(weights, others)``: the conv and FC weights (weight decay applies, as TF's l2_loss in the authors'
        code) and everything else (biases, normalizer gamma/beta)."""
        weights = [m.weight for m in list(self.convs) + [self.fc1, self.fc2]]
        ids = {id(w) for w in weights}
        return weights, [p for p in self.parameters() if id(p) not in ids]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, norm={self.norm_name!r}, dropout={self.dropout:g}"
