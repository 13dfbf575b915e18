"""The math of divisive normalization, free of module state.

All functions take activations ``x`` of shape ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` and a
:class:`~dnlib.norms.spec.NormSpec`. Internally ``x`` is viewed as ``(N, G, C/G, *spatial)`` (``G`` = groups, 1
unless the spec groups channels), so every field is a set of dimensions of that view:
``batch`` -> dim 0, ``channel`` -> dim 2, ``space`` -> dims 3.. . Dim 1 (the group) is never pooled.

A field's mean is computed in two steps: a global mean over its pooled axes that carry no window
(one pass over the full tensor), then a box filter over its windowed axes on that (usually much smaller)
result. The box filter is separable shifted adds (or cumulative sums for wide windows) on CPU and one
pooling kernel on GPU, so no Python loop ever visits a position. A weighted (Gaussian) window is the same
separable filter with a weight per offset (shifted multiply-adds on every device; see :mod:`dnlib.norms.spec`), and
``spec.floor == "mean"`` floors the divisor at its mean over each example (:func:`_divisor`); both live on the
reduced statistics, so every path (the two Functions, the band and the compiled path) computes them alike.

``divisive_norm`` runs as one autograd Function whose backward is written out by hand for the passes over the
full tensor and uses autograd only on the reduced statistics: about half the memory traffic of the eager
composition, which matters because these layers are bandwidth-bound.
While ``torch.compile`` traces them (and no process group pools the batch), the same functions compute the same
math as plain ops instead, which Dynamo and Inductor trace without a graph break and fuse (:func:`_traced`); so do
they under ``torch.func`` transforms (vmap, grad, jvp, jacrev, hessian) and forward-mode AD (:func:`under_transform`),
which torch then applies op by op.
"""
from __future__ import annotations

import functools
import math
import types
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.distributed as dist
import torch.nn.functional as F

from .spec import NormSpec

_AXIS_DIMS = {"batch": (0,), "channel": (2,)}


def compile_safe_cache(maxsize: int):
    """``functools.lru_cache(maxsize)`` for eager calls; while ``torch.compile`` traces, the plain function.

    For the pure functions of hashable configuration (specs, plans, window weights) that the layers call in
    ``forward``: Dynamo traces the plain function as constants, whereas through an ``lru_cache`` wrapper it warns
    that the cached result may be silently wrong."""
    def wrap(fn):
        cached = lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args):
            return fn(*args) if torch.compiler.is_compiling() else cached(*args)
        call.cache_info, call.cache_clear = cached.cache_info, cached.cache_clear
        return call
    return wrap


@dataclass(frozen=True)
class _Field:
    dims: tuple          # dims of the grouped view that are reduced globally
    kc: int              # window along channels (1 = none)
    ks: int              # window along each spatial dim (1 = none)
    border: str
    wc: float = 0.0      # Gaussian width of the channel window (0 = box)
    ws: float = 0.0      # Gaussian width of the spatial window (0 = box)

    @property
    def has_window(self):
        return self.kc > 1 or self.ks > 1

    @property
    def weighted(self):
        return bool(self.wc or self.ws)


@dataclass(frozen=True)
class _Plan:
    nspatial: int
    sum: _Field | None
    sup: _Field | None
    bug: float           # the reference code's suppression divisor factor (k_B area / k_A area)


def _field(axes, window, nspatial, border, weights=()) -> _Field | None:
    if not axes:
        return None
    w, g = dict(window), dict(weights)
    dims = []
    for axis in sorted(axes):
        if axis in w:
            continue
        if axis == "space":
            dims.extend(range(3, 3 + nspatial))
        else:
            dims.extend(_AXIS_DIMS[axis])
    ks = w.get("space", 1) if nspatial else 1
    return _Field(tuple(sorted(dims)), w.get("channel", 1), ks, border, g.get("channel", 0.0),
                  g.get("space", 0.0) if ks > 1 else 0.0)


@compile_safe_cache(maxsize=512)
def _plan(spec: NormSpec, nspatial: int) -> _Plan:
    sum_f = _field(spec.sum_axes, spec.sum_window, nspatial, spec.border, spec.sum_weights)
    sup_f = _field(spec.sup_axes, spec.sup_window, nspatial, spec.border, spec.sup_weights)
    bug = 1.0
    if (spec.border == "reference" and nspatial == 2 and sum_f is not None and sup_f is not None
            and sum_f.ks > 1 and sum_f.kc == 1 and sup_f.kc == 1):
        # The authors' div_norm_2d (spatial windows on 2-D maps) sums the suppression window and divides by the
        # summation window's area. Their div_norm_1d divides each sum by its own window size: no factor for
        # 1-D windows (channel windows, or a spatial window on (N, C, L)).
        bug = sup_f.ks ** 2 / sum_f.ks ** 2
    return _Plan(nspatial, sum_f, sup_f, bug)


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c = x.shape[:2]
    return x.view(n, groups, c // groups, *x.shape[2:])


@compile_safe_cache(maxsize=128)
def _gauss(k: int, width: float) -> tuple:
    """The Gaussian weights of a window of ``k`` (offsets ``-(k-1)//2 .. k//2``), std ``width``, summing to 1."""
    g = [math.exp(-o * o / (2.0 * width * width)) for o in range(-((k - 1) // 2), k // 2 + 1)]
    total = math.fsum(g)
    return tuple(v / total for v in g)


def _gauss1d(t: torch.Tensor, dim: int, k: int, width: float, border: str) -> torch.Tensor:
    """Gaussian-weighted mean over a window of ``k`` neighbours along ``dim`` (the window of :func:`_box1d`, each
    neighbour at offset o weighted by :func:`_gauss`); ``border="valid"`` divides by the sum of the weights
    inside the map, the others by the window's (1). Shifted multiply-adds: no loop over positions."""
    n = t.shape[dim]
    before, after = (k - 1) // 2, k // 2
    g = _gauss(k, width)
    pad = [0, 0] * (t.dim() - 1 - dim) + [before, after]
    p = F.pad(t, pad)
    out = p.narrow(dim, 0, n) * g[0]
    for i in range(1, k):
        out = out + p.narrow(dim, i, n) * g[i]
    if border == "valid":
        ones = F.pad(torch.ones(n, dtype=torch.float64), [before, after])
        total = sum(ones[i:i + n] * g[i] for i in range(k)).to(device=t.device, dtype=t.dtype)
        return out / total.view((n,) + (1,) * (t.dim() - 1 - dim))
    return out


def _box1d(t: torch.Tensor, dim: int, k: int, border: str, width: float = 0.0) -> torch.Tensor:
    """Mean over a window of ``k`` neighbours along ``dim`` (stride 1, same size), zero padded.

    The window of position i is [i - (k-1)//2, i + k//2] (centred for odd k; TensorFlow SAME for even k).
    ``border="valid"`` divides by the number of real neighbours, the others by ``k``. Small windows are
    shifted adds, large ones a difference of cumulative sums: no pooling kernel, no loop over positions.
    ``width > 0``: the Gaussian-weighted mean instead (:func:`_gauss1d`).
    """
    if width:
        return _gauss1d(t, dim, k, width, border)
    n = t.shape[dim]
    before, after = (k - 1) // 2, k // 2
    lead = [0, 0] * (t.dim() - 1 - dim)
    i = torch.arange(n, device=t.device)
    count = (torch.clamp(i + after, max=n - 1) - torch.clamp(i - before, min=0) + 1).to(t.dtype)
    count = count.view((n,) + (1,) * (t.dim() - 1 - dim))
    if k <= 5:
        p = F.pad(t, lead + [before, after])
        out = p.narrow(dim, 0, n)
        for i in range(1, k):
            out = out + p.narrow(dim, i, n)
    else:
        # running sums (O(1) per element) of t minus its row mean m: the window sum is c[i + k] - c[i] + m * count.
        # Without the offset the running sums grow with the row's mean and cancel its digits (fp32, 800 units of
        # mean 5, window 61: max error 1.1e-5 -> 4.3e-7; shifted adds 3.0e-6)
        m = t.mean(dim, keepdim=True)
        c = F.pad(t - m, lead + [before + 1, after]).cumsum(dim)
        out = torch.addcmul(c.narrow(dim, k, n) - c.narrow(dim, 0, n), m, count)
    if border == "valid":
        return out / count
    return out / k


def _box_shift(t: torch.Tensor, f: _Field, nspatial: int) -> torch.Tensor:
    """Separable box filter: one 1-D filter per windowed dim (the valid-border count of a 2-D window is the
    product of the 1-D counts). Few flops, several small kernels: the fast choice on CPU."""
    if f.kc > 1:
        t = _box1d(t, 2, f.kc, f.border, f.wc)
    if f.ks > 1:
        for d in range(3, 3 + nspatial):
            t = _box1d(t, d, f.ks, f.border, f.ws)
    return t


def _box_pool(t: torch.Tensor, f: _Field, nspatial: int) -> torch.Tensor:
    """The same box filter as one ``avg_pool{1,2,3}d`` (one kernel forward, one backward): the fast choice on
    GPUs, where these small layers are bound by kernel launches."""
    include_pad = f.border != "valid"
    shape = t.shape
    if f.kc > 1:  # channel window (G == 1): pool over (C, *S) of a (N, 1, C, *S) tensor
        kernel = (f.kc,) + (f.ks,) * nspatial
        u = t.reshape(shape[0], 1, *shape[2:])
        if f.ks == 1 and all(n == 1 for n in shape[3:]):   # no spatial extent left: plain 1-D pooling over C
            kernel, u = (f.kc,), u.reshape(shape[0], 1, shape[2])
    else:         # spatial window only: pool each (n, g, c) map independently
        kernel = (f.ks,) * nspatial
        u = t.reshape(-1, 1, *shape[3:])
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(kernel) - 1]
    if any(k % 2 == 0 for k in kernel) or any(k > n for k, n in zip(kernel, u.shape[2:])):
        # Explicit zero padding: TensorFlow SAME for even windows ((k-1)//2 before, k//2 after; only reachable
        # with border="reference"), and windows larger than the map (which avg_pool's padding rejects).
        pads = []
        for k in reversed(kernel):
            pads += [(k - 1) // 2, k // 2]
        out = pool(F.pad(u, pads), kernel, stride=1, padding=0)
        if not include_pad:  # average over the real neighbours only
            out = out / pool(F.pad(torch.ones_like(u[:1]), pads), kernel, stride=1, padding=0)
    else:
        out = pool(u, kernel, stride=1, padding=tuple(k // 2 for k in kernel), count_include_pad=include_pad)
    return out.reshape(shape)


def _box(t: torch.Tensor, f: _Field, nspatial: int) -> torch.Tensor:
    """Box-filter ``t`` (grouped layout) along the windowed axes of field ``f``; stride 1, same size.
    Shifted adds on CPU, pooling kernels on GPU (``tests/test_norm.py`` checks that the two agree); weighted
    (Gaussian) windows are always shifted multiply-adds."""
    if not f.has_window:
        return t
    return _box_pool(t, f, nspatial) if t.is_cuda and not f.weighted else _box_shift(t, f, nspatial)


def _reduce_mean(t: torch.Tensor, dims: tuple, sync: BatchSync | None = None) -> torch.Tensor:
    if sync is not None and 0 in dims:
        return sync.sum(t, dims) / sync.numel(t, dims)
    return t.mean(dims, keepdim=True) if dims else t


def _numel(t: torch.Tensor, dims: tuple, sync: BatchSync | None = None) -> int:
    if sync is not None and 0 in dims:
        return sync.numel(t, dims)
    return math.prod([t.shape[d] for d in dims])


# ------------------------------------------------------------------------ synchronized batch statistics
_NO_GRADGRAD = ("DivisiveNorm: double backward (create_graph=True) is not supported with synchronized batch "
                "statistics (a process group in training mode); run the second-order step without the process "
                "group (dnlib.convert_sync_norm) or in evaluation mode")


class BatchSync:
    """The processes of a ``torch.distributed`` group that pool the batch axis together, for one forward call.

    A reduction over a set of dims that includes the batch (dim 0) becomes the local sum all-reduced (summed) over
    the group, divided by the global element count: the statistics of one process holding every process's
    examples. The processes' batch sizes may differ (even be 0); the global batch size travels with the first
    all-reduce of the forward. The backward passes all-reduce their batch-axis reductions the same way. Every
    process must run the same layers in the same order (as for ``nn.SyncBatchNorm``)."""

    def __init__(self, group, local_n: int):
        self.group = group          # None: the default (world) group
        self.local_n = int(local_n)
        self.global_n: int | None = None

    def all_reduce(self, parts: list) -> list:
        """Sum each tensor of ``parts`` over the group (one collective); returns new tensors. The first call also
        sums the batch size."""
        flat = [p.reshape(-1) for p in parts]
        count = self.global_n is None
        if count:
            flat.append(parts[0].new_full((1,), float(self.local_n)))
        packed = torch.cat(flat)
        dist.all_reduce(packed, group=self.group)
        if count:
            self.global_n = int(round(packed[-1].item()))
        out, at = [], 0
        for p in parts:
            out.append(packed[at:at + p.numel()].view(p.shape))
            at += p.numel()
        return out

    def sum(self, t: torch.Tensor, dims: tuple) -> torch.Tensor:
        """The sum of ``t`` over ``dims`` (keepdim) on all processes' examples (dims must include 0)."""
        return self.all_reduce([t.sum(dims, keepdim=True)])[0]

    def numel(self, t: torch.Tensor, dims: tuple) -> int:
        """The global number of elements pooled by a reduction of ``t`` over ``dims`` (which include 0)."""
        if self.global_n is None:
            raise RuntimeError("BatchSync: the global batch size is known only after the first all-reduce")
        return self.global_n * math.prod([t.shape[d] for d in dims if d != 0])


class _SyncMeanFn(torch.autograd.Function):
    """The mean of every element of ``t`` over all processes' examples; backward: the all-reduced gradient over
    the global count (every process's loss depends on the one global mean)."""

    @staticmethod
    def forward(ctx, t, sync):
        total, count = sync.all_reduce([t.sum().reshape(1), t.new_full((1,), float(t.numel()))])
        ctx.sync, ctx.shape, ctx.count = sync, t.shape, count
        return (total / count).reshape(())

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_GRADGRAD)
        (g,) = ctx.sync.all_reduce([g.reshape(1)])
        return (g / ctx.count).reshape(()).expand(ctx.shape), None


def sync_mean(t: torch.Tensor, sync: BatchSync | None) -> torch.Tensor:
    """``t.mean()`` over the elements of every process of ``sync`` (plain ``t.mean()`` when ``sync`` is None),
    differentiable: the L1 penalty of a site whose statistics are synchronized."""
    return t.mean() if sync is None else _SyncMeanFn.apply(t, sync)


def _field_stat(t: torch.Tensor, f: _Field, nspatial: int) -> torch.Tensor:
    return _box(_reduce_mean(t, f.dims), f, nspatial)


def _divisor(s: torch.Tensor, sig2, spec: NormSpec) -> torch.Tensor:
    """The factor ``1 / d``, ``d = (sigma^2 + eps + s E_B[v^2])^p``; with ``spec.floor == "mean"``
    ``1 / max(d, c)``, ``c`` the mean of ``d`` over each example (and group): dims 2.. of the grouped layout,
    where ``d`` is constant along the dims it has size 1 in, so the mean over them is the mean over the map."""
    t = s * spec.sup_scale + spec.eps_for(s.dtype)  # eps=None: finfo(dtype).eps, as nn.RMSNorm
    t = t + sig2
    if spec.floor == "mean":
        d = t.sqrt() if spec.power == 0.5 else t.pow(spec.power)
        c = d.mean(tuple(range(2, d.dim())), keepdim=True) if d.dim() > 2 else d
        return torch.maximum(d, c).reciprocal()
    return t.rsqrt() if spec.power == 0.5 else t.pow(-spec.power)


def _check(x: torch.Tensor, spec: NormSpec):
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"input: expected shape (N, C), (N, C, L) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] % spec.groups:
        raise ValueError(f"input: {x.shape[1]} channels are not divisible by groups={spec.groups}")


def l1_mean(v: torch.Tensor, alpha) -> torch.Tensor:
    """``alpha * mean|v|`` (the sparse penalty of the centred activations) as one reduction,
    ``torch.linalg.vector_norm(v, 1)``: no ``|v|`` tensor is written, and its backward is ``sgn(v)`` times a scalar
    (``v.abs().mean()`` writes ``|v|`` and back-propagates a divided expand besides: forward + backward on the
    20 x 20 x 4 x 200 gate activations of a PTB cell, 1 thread, 1.14 ms against 0.57 ms). Inside
    ``torch.compile``d kernels Inductor fuses ``abs().mean()`` itself."""
    if v.numel() == 0:
        return alpha * v.abs().mean()
    return torch.linalg.vector_norm(v, 1) * (alpha / v.numel())


def field_mean(x: torch.Tensor, spec: NormSpec) -> torch.Tensor:
    """E_A[x]: the summation-field mean of eq. 3, broadcastable to ``x`` (0 when the field is empty).

    Plain differentiable torch ops (gradients flow through the mean); used by the sparse penalty on the
    fused paths and by the statistics in :mod:`dnlib.analysis.stats`.
    """
    _check(x, spec)
    plan = _plan(spec, x.dim() - 2)
    if plan.sum is None:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    xg = _grouped(x, spec.groups)
    mu = _field_stat(xg, plan.sum, plan.nspatial)
    shape = [x.shape[0], x.shape[1]] + list(x.shape[2:])
    return mu.expand(xg.shape).reshape(shape) if mu.shape != xg.shape else mu.reshape(shape)


def _suppression(s0: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """E_B[v^2] from its global part ``s0``: the suppression window, and the reference code's divisor."""
    s = _box(s0, plan.sup, plan.nspatial)
    return s * plan.bug if plan.bug != 1.0 else s


def _divisor_vjp(gd, s0, fixed_s, sig2, need_sig: bool, plan: _Plan, spec: NormSpec):
    """Pull ``gd`` = dL/dd back through d = divisor(suppression(s0), sigma^2) with autograd on these reduced
    tensors only; returns (dL/ds0 or None when s0 is None, dL/dsigma^2 or None)."""
    with torch.enable_grad():
        inputs = []
        if s0 is not None:
            s0 = s0.detach().requires_grad_()
            inputs.append(s0)
        if need_sig:
            sig2 = sig2.detach().requires_grad_()
            inputs.append(sig2)
        s = _suppression(s0, plan) if s0 is not None else fixed_s
        grads = torch.autograd.grad(_divisor(s, sig2, spec), inputs, gd)
    return (grads[0] if s0 is not None else None), (grads[-1] if need_sig else None)


def _mean_vjp(gmu, m0, plan: _Plan, create_graph: bool = False):
    """Pull dL/dmu back through mu = window(m0) (identity without a summation window). The window is linear, so
    with ``create_graph`` the result is differentiable w.r.t. ``gmu`` (the only thing it depends on)."""
    if not plan.sum.has_window:
        return gmu
    with torch.enable_grad():
        m0 = m0.detach().requires_grad_()
        (gm0,) = torch.autograd.grad(_box(m0, plan.sum, plan.nspatial), m0, gmu, create_graph=create_graph)
    return gm0


def _sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the dims along which ``like`` (of the same rank) was broadcast to it."""
    dims = tuple(i for i in range(t.dim()) if like.shape[i] == 1 and t.shape[i] != 1)
    return t.sum(dims, keepdim=True) if dims else t


def _grads(outputs, grad_outputs, inputs):
    """``torch.autograd.grad`` with ``create_graph=True`` over the pairs whose grad_output is given; one entry per
    input (None for an input that is None or unused)."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    wrt = [t for t in inputs if t is not None]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], create_graph=True,
                                   allow_unused=True) if pairs and wrt else [None] * len(wrt))
    return [None if t is None else next(got) for t in inputs]


class _DivNormFn(torch.autograd.Function):
    """y, v = DN(x): forward over the full tensor in four passes, backward written out by hand.

    Outputs ``(y, v, mu, s)``: the normalized tensor, the centred tensor (differentiable, for the sparse
    penalty), and the two field statistics (not differentiable, for running statistics). ``mu``/``s`` may be
    given (running statistics in eval mode); then they are constants.
    """

    @staticmethod
    def forward(ctx, xg, sig2, spec, plan, fixed_mu, fixed_s, sync=None):
        ctx.set_materialize_grads(False)
        ctx.sync = sync
        empty = xg.new_empty(0)
        m0 = s0 = mu_out = s_out = None
        if plan.sum is not None:
            if fixed_mu is None:
                m0 = _reduce_mean(xg, plan.sum.dims, sync)
                mu = _box(m0, plan.sum, plan.nspatial)
                mu_out = mu
            else:
                mu = fixed_mu
            v = xg - mu
        else:
            v = xg
        d = None
        if plan.sup is not None:
            if fixed_s is None:
                s0 = _reduce_mean(v * v, plan.sup.dims, sync)
                s = s_out = _suppression(s0, plan)
            else:
                s = fixed_s
            d = _divisor(s, sig2, spec)
            y = v * d
        else:
            y = v if plan.sum is not None else xg.clone()
        ctx.spec, ctx.plan = spec, plan
        ctx.sig2_is_tensor = torch.is_tensor(sig2)
        ctx.save_for_backward(v if plan.sup is not None else None, d, m0, s0, fixed_s,
                              sig2 if ctx.sig2_is_tensor else None)
        if not ctx.sig2_is_tensor:
            ctx.sig2 = sig2
        v_out = v if (plan.sum is not None and plan.sup is not None) else empty
        mu_out = mu_out if mu_out is not None else empty
        s_out = s_out if s_out is not None else empty
        ctx.mark_non_differentiable(mu_out, s_out)
        return y, v_out, mu_out, s_out

    @staticmethod
    def backward(ctx, gy, gv_ext, _gmu, _gs):
        v, d, m0, s0, fixed_s, sig2_t = ctx.saved_tensors
        spec, plan = ctx.spec, ctx.plan
        sig2 = sig2_t if ctx.sig2_is_tensor else ctx.sig2
        need_sig = ctx.sig2_is_tensor and ctx.needs_input_grad[1]
        gsig2 = None
        sync = ctx.sync
        if gy is None and gv_ext is None:
            return None, None, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            if sync is not None:
                raise RuntimeError(_NO_GRADGRAD)
            gx, gsig2 = _DivNormFn._backward_graph(ctx, v, m0, fixed_s, sig2, need_sig, gy, gv_ext)
            return gx, gsig2, None, None, None, None, None
        if sync is not None and gy is None and plan.sup is not None:
            gy = torch.zeros_like(v)  # every process must take part in the same all-reduces
        if plan.sup is not None:
            gv = gy * d if gy is not None else torch.zeros_like(v)
            if gy is not None and (s0 is not None or need_sig):
                # dL/dd, summed over the dims that d was broadcast along (under sync: over every process's
                # examples for s0, this process's only for sigma, whose gradients the processes sum)
                bdims = tuple(i for i in range(v.dim()) if d.shape[i] == 1 and v.shape[i] != 1)
                gd = gy * v
                if bdims:
                    gd = gd.sum(bdims, keepdim=True)
                if sync is not None and s0 is not None and 0 in plan.sup.dims:
                    gs0, _ = _divisor_vjp(sync.all_reduce([gd])[0], s0, fixed_s, sig2, False, plan, spec)
                    if need_sig:
                        _, gsig2 = _divisor_vjp(gd, s0, fixed_s, sig2, True, plan, spec)
                else:
                    gs0, gsig2 = _divisor_vjp(gd, s0, fixed_s, sig2, need_sig, plan, spec)
                if gs0 is not None:
                    gv.addcmul_(v, gs0 * (2.0 / _numel(v, plan.sup.dims, sync)))
        else:
            gv = gy.clone() if gy is not None else None
        if gv_ext is not None:
            gv = gv_ext.clone() if gv is None else gv.add_(gv_ext)
        if plan.sum is not None and m0 is not None:
            if sync is not None and 0 in plan.sum.dims:
                gmu = -sync.sum(gv, plan.sum.dims)
            else:
                bdims = tuple(i for i in range(gv.dim()) if m0.shape[i] == 1 and gv.shape[i] != 1)
                gmu = -(gv.sum(bdims, keepdim=True) if bdims else gv)
            gm0 = _mean_vjp(gmu, m0, plan)
            n = _numel(gv, plan.sum.dims, sync)
            gx = gv.add_(gm0, alpha=1.0 / n) if gm0.shape == gv.shape else gv.add_(gm0 / n)
        else:
            gx = gv
        return gx, gsig2, None, None, None, None, None

    @staticmethod
    def _backward_graph(ctx, v, m0, fixed_s, sig2, need_sig, gy, gv_ext):
        """The VJP as differentiable ops, for double backward. The saved ``v`` is the input ``x`` (no centring)
        or an output of this Function (its ``v``, or ``y`` without division), so the graph built here reaches
        ``x`` through it (through this Function's own backward for ``v``, which is exact to first order); the
        divisor is recomputed from ``v`` (one reduction) instead of the detached saved copy."""
        spec, plan = ctx.spec, ctx.plan
        need_x = ctx.needs_input_grad[0]
        gsig2 = None
        if plan.sup is not None and gy is not None:
            vv = v if need_x else v.detach()
            sg = sig2 if need_sig else (sig2.detach() if torch.is_tensor(sig2) else sig2)
            s = _suppression(_reduce_mean(vv * vv, plan.sup.dims), plan) if fixed_s is None else fixed_s
            gv, gsig2 = _grads([vv * _divisor(s, sg, spec)], [gy], [vv if need_x else None, sg if need_sig else None])
        else:
            gv = gy
        if not need_x:
            return None, gsig2
        if gv_ext is not None:
            gv = gv_ext if gv is None else gv + gv_ext
        if gv is None:
            gv = torch.zeros_like(v)
        if plan.sum is not None and m0 is not None:
            gm0 = _mean_vjp(-_sum_to(gv, m0), m0, plan, create_graph=True)
            gv = gv + gm0 / _numel(gv, plan.sum.dims)
        return gv, gsig2


class _DivNormSharedFn(torch.autograd.Function):
    """DN when both fields reduce the same axes globally (windows only on the rest): BN, LN, GN, IN and the
    paper's conv DN (all channels x a spatial window).

    The mean is then constant across the shared axes, so the backward pass needs only two reductions
    (of ``gy`` and ``gy * x``) and two fused passes for ``gx``, and stores neither ``v`` nor ``y``: every
    other quantity lives on the reduced statistics.
    """

    @staticmethod
    def forward(ctx, xg, sig2, spec, plan, need_v, sync=None):
        ctx.set_materialize_grads(False)
        dims = plan.sum.dims
        if sync is not None and 0 not in dims:
            sync = None
        ctx.sync = sync
        m0 = xg.mean(dims, keepdim=True) if sync is None else _reduce_mean(xg, dims, sync)
        mu = _box(m0, plan.sum, plan.nspatial)
        v = xg - mu  # (torch.var_mean over a non-innermost dim is ~40x slower than these three passes on CPU)
        s0 = v.square().mean(dims, keepdim=True) if sync is None else _reduce_mean(v.square(), dims, sync)
        s = _suppression(s0, plan)
        d = _divisor(s, sig2, spec)
        y = v * d
        v_out = v if need_v else xg.new_empty(0)
        ctx.spec, ctx.plan = spec, plan
        ctx.sig2_is_tensor = torch.is_tensor(sig2)
        if not ctx.sig2_is_tensor:
            ctx.sig2 = sig2
        ctx.save_for_backward(xg, m0, mu, s0, d, sig2 if ctx.sig2_is_tensor else None)
        ctx.mark_non_differentiable(mu, s)
        return y, v_out, mu, s

    @staticmethod
    def backward(ctx, gy, gv_ext, _gmu, _gs):
        xg, m0, mu, s0, d, sig2_t = ctx.saved_tensors
        spec, plan = ctx.spec, ctx.plan
        dims = plan.sum.dims
        sync = ctx.sync
        n = _numel(xg, dims, sync)
        need_sig = ctx.sig2_is_tensor and ctx.needs_input_grad[1]
        sig2 = sig2_t if ctx.sig2_is_tensor else ctx.sig2
        if torch.is_grad_enabled():
            if sync is not None:
                raise RuntimeError(_NO_GRADGRAD)
            # create_graph=True: the VJP of the plain-op composition, from the saved input, itself differentiable
            need_x = ctx.needs_input_grad[0]
            x = xg if need_x else xg.detach()
            sg = sig2 if need_sig else (sig2.detach() if torch.is_tensor(sig2) else sig2)
            y, v, _, _ = _compose(x, sg, spec, plan)
            gx, gsig2 = _grads([y, v], [gy, gv_ext], [x if need_x else None, sg if need_sig else None])
            return gx, gsig2, None, None, None, None
        if gy is None:
            gy = torch.zeros_like(xg)
        sg = gy.sum(dims, keepdim=True)                         # sum over the field of gy
        gd = (gy * xg).sum(dims, keepdim=True) - mu * sg        # sum over the field of gy * v
        gext = None if gv_ext is None else gv_ext.sum(dims, keepdim=True)
        if sync is None:
            gs0, gsig2 = _divisor_vjp(gd, s0, None, sig2, need_sig, plan, spec)
        else:  # the field's sums over every process's examples (sigma's gradient stays this process's share)
            sg_all, gd_all, gext = sync.all_reduce([sg, gd, torch.zeros_like(sg) if gext is None else gext])
            gs0, _ = _divisor_vjp(gd_all, s0, None, sig2, False, plan, spec)  # (mu is the same everywhere)
            if need_sig:
                _, gsig2 = _divisor_vjp(gd, s0, None, sig2, True, plan, spec)
            else:
                gsig2 = None
            sg = sg_all
        coef = gs0 * (2.0 / n)                                  # gv = gy * d + coef * v (+ gv_ext)
        gmu = -(d * sg + coef * (n * (m0 - mu)))                # -sum over the field of gv
        if gext is not None:
            gmu = gmu - gext
        gm0 = _mean_vjp(gmu, m0, plan)
        gx = torch.addcmul(gm0 / n - coef * mu, gy, d)          # gv + E_A^T(gmu), v = x - mu expanded
        gx.addcmul_(xg, coef)
        if gv_ext is not None:
            gx.add_(gv_ext)
        return gx, gsig2, None, None, None, None


def _shared(plan: _Plan, mean, sup) -> bool:
    return (plan.sum is not None and plan.sup is not None and mean is None and sup is None
            and plan.sum.dims == plan.sup.dims and bool(plan.sum.dims) and plan.sum.kc == 1 and plan.sup.kc == 1)


def divisive_norm_stats(x: torch.Tensor, spec: NormSpec, sigma=None, mean=None, sup=None, need_v=True,
                        sync: BatchSync | None = None):
    """Divisive normalization returning ``(y, v, mu, s)``; see :func:`divisive_norm`.

    ``v`` is the centred activation (empty when the spec does not both centre and divide: then it is ``y``
    or ``x``; or when ``need_v`` is False and the fast shared-field path runs), ``mu``/``s`` the batch statistics in the
    grouped layout ``(N|1, G, C/G|1, ...)`` (empty when not computed). ``mean``/``sup`` replace the statistics (running
    statistics), given in that layout. ``sync`` (a :class:`BatchSync`) pools the batch axis over the processes of a
    group, forward and backward (double backward then raises).
    """
    _check(x, spec)
    plan = _plan(spec, x.dim() - 2)
    sig = spec.sigma if sigma is None else sigma
    sig2 = sig * sig if torch.is_tensor(sig) else float(sig) ** 2
    y, v, mu, s = _apply(_grouped(x, spec.groups), sig2, spec, plan, mean, sup, need_v, sync)
    return y.reshape(x.shape), v, mu, s


def transform_level() -> int | None:
    """The level of the innermost ``torch.func`` transform running now (vmap, grad, vjp, jvp, jacrev, jacfwd,
    hessian, functionalize), or None outside all of them."""
    return torch._C._functorch.maybe_current_level()


def under_transform() -> bool:
    """Whether a ``torch.func`` transform or forward-mode AD (``torch.autograd.forward_ad.dual_level``) is active.

    The general path's autograd Functions then step aside: it runs as its plain-op composition (:func:`_compose`,
    the math of double backward and of ``torch.compile``), which torch batches and differentiates op by op, in
    both modes and to any order (:func:`_apply`). Costs one C call on the ordinary path."""
    return torch._C._functorch.maybe_current_level() is not None or _forward_ad._current_level >= 0


def _apply(xg: torch.Tensor, sig2, spec: NormSpec, plan: _Plan, mean, sup, need_v: bool, sync=None):
    if sync is None and (torch.compiler.is_compiling() or under_transform()):
        return _traced(xg, sig2, spec, plan, mean, sup)
    if _shared(plan, mean, sup):
        return _DivNormSharedFn.apply(xg, sig2, spec, plan, need_v, sync)
    return _DivNormFn.apply(xg, sig2, spec, plan, mean, sup, sync)


def divisive_norm(x: torch.Tensor, spec: NormSpec, sigma=None) -> torch.Tensor:
    """Divisive normalization (Ren et al. 2017, eqs. 3-4), no affine and no running statistics.

    .. math::
        v = x - \\mathbb{E}_A[x], \\qquad y = v \\,/\\, (\\sigma^2 + \\epsilon + s\\,\\mathbb{E}_B[v^2])^{p}

    ``E_A`` averages over the summation field of ``spec`` (its pooled axes, with local windows where given),
    ``E_B`` over the suppression field, of the squares of each neighbour's own centred value. Means are
    biased (divide by the field size; within windows by the number of real neighbours, or by the window size
    for ``border="zeros"``/``"reference"``). ``sigma`` overrides ``spec.sigma`` (a tensor for a learned sigma).
    """
    return divisive_norm_stats(x, spec, sigma)[0]


def _compose(xg: torch.Tensor, sig2, spec: NormSpec, plan: _Plan, box=_box, mean=None, sup=None):
    """DN of the grouped ``xg`` composed of plain autograd ops: ``(y, v, mu, s)`` (``mu``/``s`` None when the spec
    has no such field). ``box`` is the box filter (:func:`_box`, or :func:`_box_shift` on every device).
    ``mean``/``sup`` replace the field statistics (running statistics in eval mode), as in the Functions."""
    mu = s = None
    if plan.sum is not None:
        mu = box(_reduce_mean(xg, plan.sum.dims), plan.sum, plan.nspatial) if mean is None else mean
        v = xg - mu
    else:
        v = xg
    if plan.sup is None:
        return v, v, mu, s
    if sup is None:
        s = box(_reduce_mean(v * v, plan.sup.dims), plan.sup, plan.nspatial)
        if plan.bug != 1.0:
            s = s * plan.bug
    else:
        s = sup
    return v * _divisor(s, sig2, spec), v, mu, s


def _traced(xg: torch.Tensor, sig2, spec: NormSpec, plan: _Plan, mean, sup):
    """:func:`_apply` while ``torch.compile`` traces or a ``torch.func`` transform runs (no process group): the
    plain-op composition, the math of ``impl="compile"`` (:func:`_plain`), which Dynamo and Inductor trace whole and
    fuse, and which vmap, grad and jvp transform op by op. The hand-written Functions would break the graph (their
    backward calls ``torch.autograd.grad`` on the statistics) and have no batching or forward-mode rule."""
    y, v, mu, s = _compose(xg, sig2, spec, plan, _box_shift, mean, sup)
    if plan.sum is None and plan.sup is None:
        y = xg.clone()  # (as _DivNormFn: the output is never the input itself)
    empty = xg.new_empty(0)
    mu_out = empty if mu is None or mean is not None else mu.detach()
    s_out = empty if s is None or sup is not None else s.detach()
    return y, v, mu_out, s_out


def divisive_norm_reference(x: torch.Tensor, spec: NormSpec, sigma=None) -> torch.Tensor:
    """The same math as :func:`divisive_norm` composed of plain autograd ops (slower; for checking)."""
    _check(x, spec)
    sig = spec.sigma if sigma is None else sigma
    return _compose(_grouped(x, spec.groups), sig * sig, spec, _plan(spec, x.dim() - 2))[0].reshape(x.shape)


# ------------------------------------------------------------------------------------ the compiled path
def _plain(x: torch.Tensor, sig2, alpha, spec: NormSpec, plan: _Plan):
    """The general path as plain differentiable ops, for ``torch.compile`` to trace and fuse: returns
    ``(y, penalty, mu, s)`` with ``penalty = alpha * mean|v|`` (None when ``alpha`` is 0) and the batch
    statistics ``mu``/``s`` (grouped layout, detached; None when the spec has no such field).

    The box filters are the shifted adds (:func:`_box_shift`) on every device: pure pointwise ops that Inductor
    fuses into their neighbours (a pooling kernel would stay a separate kernel)."""
    y, v, mu, s = _compose(_grouped(x, spec.groups), sig2, spec, plan, _box_shift)
    penalty = alpha * v.abs().mean() if alpha else None
    return (y.reshape(x.shape), penalty, None if mu is None else mu.detach(), None if s is None else s.detach())


@lru_cache(maxsize=256)
def compiled_divisive_norm(spec: NormSpec, nspatial: int):
    """``torch.compile`` of the general path for one spec and input rank: ``fn(x, sig2, alpha) -> (y, penalty,
    mu, s)`` (see :func:`_plain`). Inductor fuses the passes of forward and backward into a few kernels, which
    is what a launch-bound GPU step needs (``DivisiveNorm(impl="compile")``).

    Each (spec, rank) gets its own copy of the code object, so that Dynamo's per-code cache (and its
    recompile limit) counts the shapes of one layer, not every layer of a network. A changed input size
    recompiles once with dynamic sizes; an input that would exceed the recompile limit (e.g. many dtypes or
    grad modes) runs the general path instead (same values; one ``RuntimeWarning``). The compiled backward is
    not differentiable: double backward (``create_graph=True``) raises in AOTAutograd."""
    code = _plain.__code__.replace(co_name=f"_plain_{abs(hash((spec, nspatial))):x}")
    fn = types.FunctionType(code, _plain.__globals__, code.co_name)
    plan = _plan(spec, nspatial)
    # dynamic=None: the first shape is compiled static (fastest kernels); a dim whose size changes is then
    # recompiled as dynamic, so new batch or map sizes reuse that graph instead of compiling one graph each.
    compiled = torch.compile(fn, dynamic=None, fullgraph=True)
    from torch._dynamo.exc import FailOnRecompileLimitHit as limit_hit  # (imports Dynamo: only when compiling)
    warned = []

    def run(x: torch.Tensor, sig2, alpha: float = 0.0):
        _check(x, spec)
        try:
            return compiled(x, sig2, float(alpha), spec, plan)
        except limit_hit as e:
            # Dynamo raises before running anything when this function's recompile limit is hit (fullgraph=True
            # makes that an error): run the general path, which computes the same values.
            if not warned:
                warned.append(True)
                warnings.warn(f"DivisiveNorm(impl='compile'): torch.compile hit its recompile limit for {spec} on "
                              f"input {tuple(x.shape)} {x.dtype} ({type(e).__name__}); inputs that need a new "
                              f"compilation run the uncompiled general path from now on (same values). Raise "
                              f"torch._dynamo.config.recompile_limit to compile more variants.", RuntimeWarning,
                              stacklevel=3)
            return _general(x, sig2, float(alpha), spec, plan)
    return run


def _general(x: torch.Tensor, sig2, alpha: float, spec: NormSpec, plan: _Plan):
    """:func:`_plain`'s contract ``(y, penalty, mu, s)`` on the general path (the hand-written Functions)."""
    y, v, mu, s = _apply(_grouped(x, spec.groups), sig2, spec, plan, None, None, bool(alpha))
    y = y.reshape(x.shape)
    penalty = None
    if alpha:
        penalty = l1_mean(v if v.numel() else (y if spec.centre else x), alpha)
    return y, penalty, (mu if mu.numel() else None), (s if s.numel() else None)


# ---------------------------------------------------------------------------------------------- the band path
@compile_safe_cache(maxsize=256)
def band_supported(spec: NormSpec) -> bool:
    """Whether :func:`band_divisive_norm` computes ``spec``: one group, every non-empty field pools only
    ``"channel"``, and some field has a channel window (1-D DN along the unit axis, eqs. 6-7; LRN)."""
    return (spec.groups == 1 and spec.windowed
            and all(not axes or axes == {"channel"} for axes in (spec.sum_axes, spec.sup_axes)))


@lru_cache(maxsize=64)
def _band_matrix(f: _Field, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The ``(n, n)`` matrix ``A`` with ``t @ A`` = the box filter of field ``f`` along a last axis of ``n``
    units: ``A[j, i]`` is unit j's weight in unit i's window mean. Built by filtering the identity with the box
    filter itself (in float64), so every border rule is the general path's by construction."""
    eye = torch.eye(n, dtype=torch.float64).view(n, 1, n)
    return _box_shift(eye, f, 0).view(n, n).to(device=device, dtype=dtype)


def _band_box(t: torch.Tensor, f: _Field, nspatial: int) -> torch.Tensor:
    """The box filter of a channel window (grouped layout, G == 1) as one 2-D matrix product along the channels
    (a batched ``(N, 1, C) @ (C, C)`` costs 1.7x as much forward + backward on CPU)."""
    if not f.has_window:
        return t
    n = t.shape[2]
    a = _band_matrix(f, n, t.device, t.dtype)
    if t.dim() == 3:
        return (t.reshape(-1, n) @ a).view(t.shape)
    u = t.movedim(2, -1)
    return (u.reshape(-1, n) @ a).view(u.shape).movedim(-1, 2)


def band_divisive_norm(x: torch.Tensor, spec: NormSpec, sigma=None):
    """Divisive normalization for channel-window specs (:func:`band_supported`) as plain autograd ops, each
    window mean one product with a banded ``(C, C)`` matrix: returns ``(y, v)``, ``v`` the centred input (``x``
    without a summation field), for the sparse penalty.

    The same operator as :func:`divisive_norm` (the composition of :func:`divisive_norm_reference` with the box
    filter as a matrix product: sigma, eps, ``sup_scale``, ``power``, every border rule; differentiable to any
    order, incl. a tensor ``sigma``). Cost O(N C^2) against the general path's O(N C k) plus its launches: the
    faster one for the RNN cells' ``(N, H)`` inputs with H <= 256 (see :class:`dnlib.DivisiveNorm`).
    """
    _check(x, spec)
    if not band_supported(spec):
        raise ValueError(f"spec: the band path needs fields that pool only 'channel' with a channel window, got {spec}")
    sig = spec.sigma if sigma is None else sigma
    y, v, _, _ = _compose(_grouped(x, 1), sig * sig, spec, _plan(spec, x.dim() - 2), _band_box)
    return y.reshape(x.shape), v.reshape(x.shape)
