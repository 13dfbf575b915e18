"""The sites of the fused LSTM cell (:mod:`dnlib.models.rnn_fused`): what a normalizer of the gate block or of the
cell state computes, as plain tuples its TorchScript loops can read (:data:`Window`, :data:`SitePlan`), made by
:func:`plan` from a :class:`~dnlib.norms.norm.DivisiveNorm`; the window operators on the last axis (:func:`box`,
:func:`apply_window` and its transpose); and the centring ``v = x - E_A[x]`` that the cell folds into its weights
where it is linear (:func:`folds`, :func:`centre`, :func:`centre_columns`).

A field's window is the normalizer layer's own field mean (:func:`dnlib.norms.functional.field_mean`) applied to
the identity, so every border rule and window weight is the general path's by construction.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..norms.functional import field_mean
from ..norms.norm import DivisiveNorm

__all__ = ["Window", "SitePlan", "NONE", "IDENTITY", "box", "window", "plan", "apply_window", "apply_window_t",
           "is_ln", "v_is_x", "into", "centre", "centre_columns", "folds"]

# A field of a site for the TorchScript loops: (mode, matrix, left, right, post). mode 0: no field; 1: the mean over
# the H units; 2: a window as a product with the (H, H) matrix (``t @ matrix``); 3: a box window as a cumulative
# sum: unit i's sum over units i - left .. i + right (zeros beyond the border), times ``post[i]``.
Window = tuple[int, Tensor | None, int, int, Tensor | None]
# A site: (sum field, suppression field, eps, sigma^2, sup_scale, power, identity: no normalizer at all). A windowed
# suppression field (modes 2, 3) holds sup_scale in its matrix or ``post``, and the site's sup_scale is then 1.
SitePlan = tuple[Window, Window, float, float, float, float, bool]
NONE: Window = (0, None, 0, 0, None)
IDENTITY: SitePlan = (NONE, NONE, 0.0, 0.0, 1.0, 0.5, True)


def box(x: Tensor, left: int, right: int) -> Tensor:
    """Sum over units i - left .. i + right along the last axis (zeros beyond the border): two slices of one
    cumulative sum, O(1) per unit whatever the window."""
    n = x.size(-1)
    cs = torch.cumsum(torch.constant_pad_nd(x, [left + 1, right], 0.0), -1)
    return cs.narrow(-1, left + right + 1, n) - cs.narrow(-1, 0, n)


def window(spec, field: str, n: int, dtype, device) -> Window:
    """The :data:`Window` of one field of a per-example spec on ``(N, n)`` rows. Its matrix is the normalizer
    layer's own field mean (:func:`dnlib.norms.functional.field_mean`) of the identity: every border rule and
    window weight as the general path by construction; a box window whose matrix the cumulative sum reproduces
    (to 1e-15) runs as one (O(n) per row, instead of O(n^2))."""
    axes = spec.sum_axes if field == "sum" else spec.sup_axes
    if not axes:
        return NONE
    if not (spec.sum_window if field == "sum" else spec.sup_window):
        return (1, None, 0, 0, None)
    one = spec if field == "sum" else spec.replace(sum_axes=spec.sup_axes, sum_window=spec.sup_window,
                                                    sum_weights=spec.sup_weights)
    m = field_mean(torch.eye(n, dtype=torch.float64), one)
    # the window's support: entries above rounding (the general path's shifted sums leave ~1e-18 far from the
    # diagonal; counted as support, they made every window span all n units and never run as a cumulative sum)
    rows, cols = (m.abs() > 1e-12 * m.abs().max()).nonzero().unbind(1)
    left, right = int((cols - rows).max()), int((rows - cols).max())
    post = m.max(0).values
    if torch.allclose(box(torch.eye(n, dtype=torch.float64), left, right) * post, m, rtol=0.0, atol=1e-15):
        return (3, None, left, right, post.to(device=device, dtype=dtype))
    return (2, m.to(device=device, dtype=dtype).contiguous(), 0, 0, None)


def plan(norm: DivisiveNorm | None, n: int, dtype, device) -> SitePlan | None:
    """The fused path's plan of a site normalizing ``(N, n)`` rows, or None where it takes the reference path.

    Covered: no normalizer; a :class:`~dnlib.norms.norm.DivisiveNorm` whose fields pool only ``channel`` (LN over
    the units, 1-D DN with a channel window, RMS-style or mean-only fields), fixed sigma, any ``eps``, ``power``,
    ``sup_scale``, border and window weights, affine or not, any ``alpha``; float32/float64. Not covered (the
    reference path): fields pooling the batch or groups, a learned sigma, ``floor``, a process group, half
    precision, a forced ``impl`` other than ``"auto"``/``"band"``/``"fused"``."""
    if dtype not in (torch.float32, torch.float64):
        return None
    if norm is None:
        return IDENTITY
    spec = norm.spec
    if (type(norm) is not DivisiveNorm or spec.groups != 1 or spec.learn_sigma or spec.floor is not None
            or norm.sigma is not None or norm.process_group is not None or norm.track_running_stats
            or norm.impl not in ("auto", "band", "fused")):
        return None
    if not all(axes <= {"channel", "space"} for axes in (spec.sum_axes, spec.sup_axes)):
        return None
    wb, scale = window(spec, "sup", n, dtype, device), float(spec.sup_scale)
    if wb[0] >= 2:  # sup_scale baked into the window (one kernel less per use); the plan's own scale is then 1
        mode, m, left, right, post = wb
        wb = (mode, m * scale if m is not None else None, left, right, post * scale if post is not None else None)
        scale = 1.0
    return (window(spec, "sum", n, dtype, device), wb, float(spec.eps_for(dtype)), float(spec.sigma) ** 2, scale,
            float(spec.power), False)


# ------------------------------------------------------------------------------------- TorchScript kernels
def apply_window(x: Tensor, w: Window) -> Tensor:
    """The field mean ``x @ A`` of window ``w`` (modes 2, 3)."""
    mode, m, left, right, post = w
    if mode == 2:
        assert m is not None
        return torch.matmul(x, m)
    assert post is not None
    return box(x, left, right) * post


def apply_window_t(g: Tensor, w: Window) -> Tensor:
    """The transpose ``g @ A^T`` of :func:`apply_window` (its backward)."""
    mode, m, left, right, post = w
    if mode == 2:
        assert m is not None
        return torch.matmul(g, m.t())
    assert post is not None
    return box(g * post, right, left)


def is_ln(p: SitePlan) -> bool:
    return p[0][0] == 1 and p[1][0] == 1 and p[4] == 1.0 and p[5] == 0.5


def v_is_x(p: SitePlan) -> bool:
    """Whether the site's centred ``v`` is its input itself (no sum field, or one folded away: :func:`folds`); the
    loops then keep no copy of it."""
    return not p[6] and not is_ln(p) and p[0][0] == 0


def into(p: SitePlan) -> bool:
    """Whether the fused loops give the site's v, r, d tensors of their own to write into: a windowed suppression
    field, whose r and d are as large as v."""
    return not p[6] and not is_ln(p) and p[1][0] >= 2


class _BoxCentre(torch.autograd.Function):
    """``x - box(x) * post`` (a box sum field, mode 3) whose backward is the transposed box, ``g - box^T(g * post)``:
    two cumulative sums, where autograd's own cumsum backward flips the (T, N, 4, H) tensor twice. The backward
    is linear in ``g`` and made of differentiable ops, so double backward records it."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.w = w
        return _apply_centre(x, w)

    @staticmethod
    def backward(ctx, g):
        return g - apply_window_t(g, ctx.w), None


def _apply_centre(x: Tensor, w: Window) -> Tensor:
    mode, m, left, right, post = w
    if mode == 1:
        return x - x.mean(-1, keepdim=True)
    if mode == 2:
        assert m is not None
        return x - torch.matmul(x, m)
    assert post is not None
    return torch.addcmul(x, box(x, left, right), post, value=-1.0)


def centre(x: Tensor, w: Window) -> Tensor:
    """``x - E_A[x]`` along the last axis for the sum field ``w`` (modes 1-3), differentiable (twice)."""
    return _BoxCentre.apply(x, w) if w[0] == 3 else _apply_centre(x, w)


def folds(gp: SitePlan) -> bool:
    """Whether the gate site's centring ``v = z - E_A[z]`` is folded into the inputs and the weights by
    :func:`dnlib.models.rnn_fused.lstm_sequence`: a DN sum field (not LN, whose one native kernel centres and
    scales together)."""
    return not gp[6] and not is_ln(gp) and gp[0][0] != 0


def centre_columns(w: Tensor, gp: SitePlan) -> Tensor:
    """``W`` (4H, K) with its rows centred per gate block as the gate site's outputs are: ``(W^T (I - A))^T``, so
    that ``x W^T`` comes out centred (:func:`folds`)."""
    k, hs = w.shape[1], w.shape[0] // 4
    return centre(w.t().reshape(k, 4, hs), gp[0]).reshape(k, 4 * hs).t()
