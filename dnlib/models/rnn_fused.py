"""The fused sequence path of the per-nonlinearity LSTM cell (:class:`dnlib.models.rnn.NormLSTMCell`).

The cell's reference path runs :meth:`~dnlib.models.rnn.NormLSTMCell.step` once per time step through
:class:`~dnlib.norms.norm.DivisiveNorm` modules and autograd records every op of every step. This module computes
the same operator for a whole sequence as one :class:`torch.autograd.Function`:

- forward: a TorchScript loop over the steps (no Python per op, no autograd graph). Each step is one
  ``addmm`` for the recurrent transform, one normalization of the four gate blocks at once (the ``(N, 4, H)`` view:
  one ``native_layer_norm`` kernel for LN; for 1-D DN a window op per field: a box window as a cumulative sum,
  another window as an ``(H, H)`` product), the gates, the state update and the normalization of ``c``. A DN
  gate site's centring ``v = z - E_A[z]`` is linear in the inputs and ``W_hh``, so it is applied to them once per
  sequence (:func:`folds`) and each step's product is ``v``.
- backward: the hand-derived gradient, a second TorchScript loop run backwards; the weight gradient of the
  recurrent transform is one ``(4H, T N) x (T N, H)`` product after the loop (not one per step).
- double backward (``create_graph=True``: gradient penalties, ``gradgradcheck``): the backward recomputes the
  forward loop with autograd recording it and differentiates that, so second derivatives are exact too.

The normalizer's math is the normalizer layer's own (:mod:`dnlib.models.rnn_sites`: a site's windows are the
matrix of :func:`dnlib.norms.functional.field_mean` applied to the identity), the divisor
``(s * sup_scale + eps + sigma^2)^-p`` as :class:`~dnlib.norms.norm.DivisiveNorm`'s. Specs it does not cover
(fields pooling the batch, a learned sigma, ``floor``, groups, running statistics, half precision) take the
reference path; :func:`~dnlib.models.rnn_sites.plan` says which.

Measured by ``python -m dnlib.bench`` (``results/bench_cpu.txt``); TorchScript was kept over ``torch.compile``
(see the module's notes in the README's benchmark section).
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor

from ..norms.functional import l1_mean
from .rnn_sites import (
    NONE,
    SitePlan,
    apply_window,
    apply_window_t,
    box,
    centre,
    centre_columns,
    folds,
    into,
    is_ln,
    plan,
    v_is_x,
)

__all__ = ["SitePlan", "plan", "folds", "lstm_sequence", "norm_lstm_sequence"]


# ------------------------------------------------------------------------------------- TorchScript kernels
def _norm_fwd(x: Tensor, p: SitePlan, vo: Tensor, ro: Tensor,
              do: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y and what the backward needs: (mean, rstd) of native LN, or (v, r, d) of the general composition
    ``v = x - E_A[x]``, ``d = E_B[v^2] sup_scale + eps + sigma^2``, ``r = d^-p``, ``y = v r``. ``vo``/``ro``/``do``:
    where not empty, v, r and d are written into them (a step of the loops' (T, ...) tensors: no copy after)."""
    wa, wb, eps, sig2, scale, power, identity = p
    empty = x.new_empty(0)
    if identity:
        return x, empty, empty, empty
    if is_ln(p):
        y, mu, rstd = torch.native_layer_norm(x, [x.size(-1)], None, None, eps + sig2)
        return y, mu, rstd, empty
    mode_a, _, left, right, post = wa
    if mode_a == 0:
        v = x
    elif mode_a == 3:  # x - box(x) * post in one kernel after the box
        assert post is not None
        bx = box(x, left, right)
        v = torch.addcmul(x, bx, post, value=-1.0, out=vo) if vo.numel() > 0 else torch.addcmul(x, bx, post,
                                                                                                value=-1.0)
    else:
        mean = x.mean(-1, keepdim=True) if mode_a == 1 else apply_window(x, wa)
        v = torch.sub(x, mean, out=vo) if vo.numel() > 0 else x - mean
    if wb[0] == 0:
        return v, v, empty, empty
    if wb[0] == 1:
        d = (v * v).mean(-1, keepdim=True) * scale + (eps + sig2)
    else:  # a window (modes 2, 3) holds sup_scale (plan)
        mode_b, m, left, right, post = wb
        if mode_b == 2:
            assert m is not None
            d = torch.matmul(v * v, m, out=do) if do.numel() > 0 else torch.matmul(v * v, m)
        else:
            assert post is not None
            bv = box(v * v, left, right)
            d = torch.mul(bv, post, out=do) if do.numel() > 0 else bv * post
        d = d.add_(eps + sig2)
    if ro.numel() > 0:
        r = torch.rsqrt(d, out=ro) if power == 0.5 else torch.pow(d, -power, out=ro)
    else:
        r = d.rsqrt() if power == 0.5 else d.pow(-power)
    return v * r, v, r, d


def _norm_bwd(gy: Tensor, x: Tensor, t1: Tensor, t2: Tensor, t3: Tensor, p: SitePlan) -> Tensor:
    wa, wb, eps, sig2, scale, power, identity = p
    if identity:
        return gy
    if is_ln(p):
        return torch.ops.aten.native_layer_norm_backward(gy, x, [x.size(-1)], t1, t2, None, None,
                                                         [True, False, False])[0]
    gv = gy
    if wb[0] != 0:
        v, r, d = t1, t2, t3
        gv = gy * r
        q = gy * v
        if wb[0] == 1:
            gs = q.sum(-1, keepdim=True) * r / d * (-2.0 * power * scale / x.size(-1))
            gv = torch.addcmul(gv, v, gs)
        else:  # the window holds sup_scale (plan)
            gv = torch.addcmul(gv, v, apply_window_t(q * r / d * (-2.0 * power), wb))
    if wa[0] == 1:
        return gv - gv.mean(-1, keepdim=True)
    if wa[0] >= 2:
        return gv - apply_window_t(gv, wa)
    return gv


def _put(buf: Tensor, t: int, x: Tensor, steps: int) -> Tensor:
    """Write step ``t``'s ``x`` into ``buf`` (``steps``, ``*x.shape``), allocated at step 0; an empty ``x`` (a
    statistic the site does not have) leaves ``buf`` empty. One copy per step instead of a list stacked after the
    loop (the stacks were 8-14% of a training step's time: ``scripts/profile_cells.py``)."""
    if t == 0:
        if x.numel() == 0:
            return buf
        buf = x.new_empty([steps] + list(x.size()))
    if buf.numel() > 0:
        buf[t] = x
    return buf


def _preallocated(xw: Tensor, gp: SitePlan, cp: SitePlan, keep: list[bool], size: list[int]) -> list[Tensor]:
    """The (T, ...) tensors that :func:`_norm_fwd` writes the kept v, r, d of each step into, where the site
    :func:`into`; empty elsewhere (the stats order of :func:`_forward_loop`; ``size``: T, N, H)."""
    pre = [xw.new_empty(0) for _ in range(8)]
    for off, p, shape in ((0, gp, [size[0], size[1], 4, size[2]]), (4, cp, size)):
        if into(p):
            for k in range(1, 4):
                if keep[off + k]:
                    pre[off + k] = xw.new_empty(shape)
    return pre


def _forward_loop(xw: Tensor, h: Tensor, c: Tensor, wt: Tensor, gw: Tensor | None, gb: Tensor | None,
                  cw: Tensor | None, cb: Tensor | None, gp: SitePlan, cp: SitePlan,
                  save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
    """The steps of the per-nonlinearity LSTM from the transformed inputs ``xw`` (T, N, 4H): ``wt`` = W_hh^T,
    ``gw``/``gb`` the per-gate affine (4, H), ``cw``/``cb`` the cell norm's (H). Returns ``(out, h_T, c_T, Z, C)``
    (Z: the gate pre-activations (T, N, 4, H), C: the raw cell states) and, with ``save``, what the backward
    needs, over time: gate-norm output and statistics, sigmoids, tanh(j), cell-norm output and statistics, tanh of
    the normalized cell (each (T, ...), empty where the site has no such statistic; c_{t-1} is C's step t - 1).

    Without autograd recording (training forward, inference) the step's results are written straight into the
    (T, ...) tensors (``out=``); recorded (the recomputation of double backward) they are computed, then copied."""
    steps, n, hs = xw.shape[0], h.shape[0], h.shape[1]
    direct = not torch.is_grad_enabled()
    outs, zs, cs = xw.new_empty(steps, n, hs), xw.new_empty(steps, n, 4, hs), xw.new_empty(steps, n, hs)
    e = xw.new_empty(0)
    ss = xw.new_empty(steps, n, 4, hs) if save else e
    js, tcs = (xw.new_empty(steps, n, hs), xw.new_empty(steps, n, hs)) if save else (e, e)
    stats = [e for _ in range(8)]  # y, g1, g2, g3, yc, c1, c2, c3
    # kept over time only where the backward reads them: y and yc for the affine weights' gradients, v where it is
    # not the site's input (z and c are kept anyway)
    keep = [gw is not None, not v_is_x(gp), True, True, cw is not None, not v_is_x(cp), True, True]
    pre = _preallocated(xw, gp, cp, keep, [steps, n, hs]) if save else [e for _ in range(8)]
    for t in range(steps):
        if direct:
            z = zs[t]
            torch.addmm(xw[t], h, wt, out=z.view(n, 4 * hs))
        else:
            z = torch.addmm(xw[t], h, wt).view(n, 4, hs)
            zs[t] = z
        y, g1, g2, g3 = _norm_fwd(z, gp, pre[1][t] if pre[1].numel() > 0 else e,
                                  pre[2][t] if pre[2].numel() > 0 else e, pre[3][t] if pre[3].numel() > 0 else e)
        a = y
        if gw is not None:
            a = a * gw if gb is None else torch.addcmul(gb, a, gw)
        if save:
            s = torch.sigmoid(a, out=ss[t])
            j = torch.tanh(a[:, 1], out=js[t])
        else:
            s = torch.sigmoid(a)
            j = torch.tanh(a[:, 1])
        if direct:
            c = torch.addcmul(s[:, 2] * c, s[:, 0], j, out=cs[t])
        else:
            c = torch.addcmul(s[:, 2] * c, s[:, 0], j)
            cs[t] = c
        yc, c1, c2, c3 = _norm_fwd(c, cp, pre[5][t] if pre[5].numel() > 0 else e,
                                   pre[6][t] if pre[6].numel() > 0 else e, pre[7][t] if pre[7].numel() > 0 else e)
        cn = yc
        if cw is not None:
            cn = cn * cw if cb is None else torch.addcmul(cb, cn, cw)
        tc = torch.tanh(cn, out=tcs[t]) if save else torch.tanh(cn)
        if direct:
            h = torch.mul(s[:, 3], tc, out=outs[t])
        else:
            h = s[:, 3] * tc
            outs[t] = h
        if save:
            for k, x in enumerate((y, g1, g2, g3, yc, c1, c2, c3)):
                if keep[k] and pre[k].numel() == 0:
                    stats[k] = _put(stats[k], t, x, steps)
    for k in range(8):
        if pre[k].numel() > 0:
            stats[k] = pre[k]
    saved = [stats[0], stats[1], stats[2], stats[3], ss, js, stats[4], stats[5], stats[6], stats[7], tcs]
    if direct:  # h_T and c_T as their own tensors, not views of out and C (a caller keeps them as the next state)
        h, c = h.clone(), c.clone()
    return outs, h, c, zs, cs, (saved if save else [])


def _backward_loop(gout: Tensor, gh: Tensor, gc: Tensor, gz_out: Tensor, gc_out: Tensor, w: Tensor,
                   gw: Tensor | None, cw: Tensor | None, gp: SitePlan, cp: SitePlan, zs: Tensor, cs: Tensor,
                   c0: Tensor, saved: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradient of :func:`_forward_loop`, steps in reverse. ``gh``/``gc``: of h_T and c_T; ``gz_out``/
    ``gc_out``: of the outputs Z and C (empty: none); ``c0``: the initial cell state. Returns the gradient of ``xw``
    (T, N, 4, H), of h_0 and c_0,
    and the gradients at the two affine sites over time (GA of the per-gate affine's output, GCN of the cell
    norm's; empty without affine): the weight gradients are one reduction each, after the loop."""
    ys, g1s, g2s, g3s, ss, js, ycs, c1s, c2s, c3s, tcs = saved
    steps, n, hs = zs.shape[0], zs.shape[1], zs.shape[3]
    e = zs.new_empty(0)
    gzs = torch.empty_like(zs)
    gas = torch.empty_like(zs) if gw is not None else e
    gcns = torch.empty_like(cs) if cw is not None else e
    v_is_z, cv_is_c = v_is_x(gp), v_is_x(cp)   # v not kept: it is z (c) itself
    for t in range(steps - 1, -1, -1):
        gh = gh + gout[t]
        s = ss[t]
        tc = tcs[t]
        j = js[t]
        go = gh * tc
        gcn = gh * s[:, 3] * (1.0 - tc * tc)
        gyc = gcn
        if cw is not None:
            gcns[t] = gcn
            gyc = gcn * cw
        gc = gc + _norm_bwd(gyc, cs[t], c1s[t] if c1s.numel() > 0 else (cs[t] if cv_is_c else e),
                            c2s[t] if c2s.numel() > 0 else e,
                            c3s[t] if c3s.numel() > 0 else e, cp)
        if gc_out.numel() > 0:
            gc = gc + gc_out[t]
        ga = gas[t] if gw is not None else torch.empty_like(s)
        sp = s * (1.0 - s)
        torch.mul(gc * j, sp[:, 0], out=ga[:, 0])
        torch.mul(gc * s[:, 0], 1.0 - j * j, out=ga[:, 1])
        torch.mul(gc * (cs[t - 1] if t > 0 else c0), sp[:, 2], out=ga[:, 2])
        torch.mul(go, sp[:, 3], out=ga[:, 3])
        gc = gc * s[:, 2]
        gy = ga
        if gw is not None:
            gy = ga * gw
        gz = _norm_bwd(gy, zs[t], g1s[t] if g1s.numel() > 0 else (zs[t] if v_is_z else e),
                       g2s[t] if g2s.numel() > 0 else e,
                       g3s[t] if g3s.numel() > 0 else e, gp)
        if gz_out.numel() > 0:   # (the sum written straight into gzs: one copy less per step)
            gz = torch.add(gz, gz_out[t], out=gzs[t])
        else:
            gzs[t] = gz
        gh = torch.mm(gz.view(n, 4 * hs), w)
    return gzs, gh, gc, gas, gcns


_SCRIPTED: dict = {}


def _loops(backend: str):
    """(forward loop, backward loop) of ``backend``: ``"script"`` (TorchScript, compiled once per process) or
    ``"eager"`` (the same Python functions). TorchScript is deprecated since torch 2.13: where scripting fails (a
    torch without it), the eager loops run, with one warning per process (the same values, slower)."""
    if backend == "eager":
        return _forward_loop, _backward_loop
    if not _SCRIPTED:
        try:
            _SCRIPTED["loops"] = (torch.jit.script(_forward_loop), torch.jit.script(_backward_loop))
        except Exception as e:  # noqa: BLE001 - whatever a torch without TorchScript raises: the eager loops
            warnings.warn(f"dnlib.models.rnn_fused: TorchScript could not compile the fused LSTM loops "
                          f"({type(e).__name__}: {e}); they run eagerly (the same values, slower)", RuntimeWarning,
                          stacklevel=2)
            _SCRIPTED["loops"] = (_forward_loop, _backward_loop)
    return _SCRIPTED["loops"]


#: the loops the cells run (``"script"`` or ``"eager"``); see :func:`_loops`.
BACKEND = "script"


def _none_or(t: Tensor | None, like: Tensor) -> Tensor:
    return t if t is not None else like.new_empty(0)


class _LSTMSequence(torch.autograd.Function):
    """The fused per-nonlinearity LSTM over a sequence: outputs ``(out, h_T, c_T, Z, C)``."""

    @staticmethod
    def forward(ctx, xw, h0, c0, w, gw, gb, cw, cb, gp, cp, backend):
        fwd, _ = _loops(backend)
        out, h, c, zs, cs, saved = fwd(xw, h0, c0, w.t(), gw, gb, cw, cb, gp, cp, True)
        ctx.save_for_backward(xw, h0, c0, w, gw, gb, cw, cb, out, zs, cs, *saved)
        ctx.plans, ctx.backend = (gp, cp), backend
        ctx.set_materialize_grads(False)
        return out, h, c, zs, cs

    @staticmethod
    def backward(ctx, gout, gh, gc, gz_out, gc_out):
        xw, h0, c0, w, gw, gb, cw, cb, out, zs, cs, *saved = ctx.saved_tensors
        gp, cp = ctx.plans
        if torch.is_grad_enabled():  # create_graph: differentiate an autograd-recorded recomputation
            return _double_backward(ctx, (xw, h0, c0, w, gw, gb, cw, cb), (gout, gh, gc, gz_out, gc_out))
        e = xw.new_empty(0)
        gout = gout if gout is not None else torch.zeros_like(out)
        gh = gh if gh is not None else torch.zeros_like(h0)
        gc = gc if gc is not None else torch.zeros_like(c0)
        _, bwd = _loops(ctx.backend)
        gzs, gh0, gc0, ga, gcn = bwd(gout, gh.clone(), gc.clone(), gz_out if gz_out is not None else e,
                                     gc_out if gc_out is not None else e, w, gw, cw, gp, cp, zs, cs, c0, saved)
        steps, n, hs = zs.shape[0], zs.shape[1], zs.shape[3]
        needs = ctx.needs_input_grad
        g_w = g_gw = g_gb = g_cw = g_cb = None
        if needs[3]:  # dL/dW_hh = sum_t gz_t^T h_{t-1}: one product
            hprev = torch.cat([h0.unsqueeze(0), out[:-1]]).reshape(steps * n, hs)
            g_w = gzs.reshape(steps * n, 4 * hs).t().mm(hprev)
        if gw is not None:
            g_gw = (ga * saved[0]).sum((0, 1)) if needs[4] else None
            g_gb = ga.sum((0, 1)) if gb is not None and needs[5] else None
        if cw is not None:
            g_cw = (gcn * saved[6]).sum((0, 1)) if needs[6] else None
            g_cb = gcn.sum((0, 1)) if cb is not None and needs[7] else None
        g_xw = gzs.view(xw.shape) if needs[0] else None
        return (g_xw, gh0 if needs[1] else None, gc0 if needs[2] else None, g_w, g_gw, g_gb, g_cw, g_cb,
                None, None, None)


def _double_backward(ctx, inputs, grads):
    gp, cp = ctx.plans
    xw, h0, c0, w, gw, gb, cw, cb = inputs
    with torch.enable_grad():
        out, h, c, zs, cs, _ = _forward_loop(xw, h0, c0, w.t(), gw, gb, cw, cb, gp, cp, False)
    outs = [o for o, g in zip((out, h, c, zs, cs), grads, strict=True) if g is not None]
    gs = [g for g in grads if g is not None]
    wanted = [i for i, (x, need) in enumerate(zip(inputs, ctx.needs_input_grad, strict=False))
              if need and x is not None]
    got = torch.autograd.grad(outs, [inputs[i] for i in wanted], gs, create_graph=True, allow_unused=True)
    result = [None] * 11
    for i, g in zip(wanted, got, strict=True):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(result)


def lstm_sequence(xw: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gw: Tensor | None, gb: Tensor | None,
                  cw: Tensor | None, cb: Tensor | None, gp: SitePlan, cp: SitePlan, backend: str | None = None,
                  xw_centred: bool = False):
    """The per-nonlinearity LSTM over the transformed inputs ``xw`` (T, N, 4H) from state ``(h0, c0)``:
    returns ``(out, h_T, c_T, Z, C)`` with Z the gate pre-activations (T, N, 4, H) and C the raw cell states
    (T, N, H), for the L1 terms. ``w``: W_hh (4H, H); ``gw``/``gb``: per-gate affine (4, H) or None; ``cw``/``cb``:
    the cell norm's (H) or None; ``gp``/``cp``: the gate and cell sites' :func:`plan`. Differentiable (twice).

    Where :func:`folds` (DN's gate site), the centring is linear in ``xw`` and ``W_hh``, so it is applied to them
    once per sequence, ``xw (I - A)`` and ``W_hh^T (I - A)`` per gate block, and each step's product is already
    ``v``: no centring kernels in the steps, forward or backward (autograd differentiates the two centrings, on
    all steps at once). Z is then the centred ``v = z - E_A[z]``. ``xw_centred``: the caller has centred ``xw``
    already (:func:`norm_lstm_sequence` folds the centring into the input weights and bias, cheaper than
    centring the (T, N, 4H) product)."""
    backend = backend or BACKEND
    if folds(gp):
        if not xw_centred:
            hs = w.shape[0] // 4
            xw = centre(xw.view(xw.shape[0], xw.shape[1], 4, hs), gp[0]).view(xw.shape)
        w = centre_columns(w, gp)
        gp = (NONE,) + gp[1:]
    tensors = (xw, h0, c0, w, gw, gb, cw, cb)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _LSTMSequence.apply(xw, h0, c0, w, gw, gb, cw, cb, gp, cp, backend)
    fwd, _ = _loops(backend)
    return fwd(xw, h0, c0, w.t(), gw, gb, cw, cb, gp, cp, False)[:5]


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # cell -> {(dtype, device): plans or None}
_PLANNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cell -> the sites (_site_key) its _PLANS are for


def _site_key(norm) -> tuple | None:
    """Everything :func:`~dnlib.models.rnn_sites.plan` reads of a site's normalizer (keep the two in step): the
    module's type, its spec (a frozen, hashable NormSpec: windows, border, weights, sigma, eps, power,
    sup_scale...), and whether it has a learned sigma, a process group, running statistics, and its forced impl."""
    if norm is None:
        return None
    return (type(norm), norm.spec, norm.sigma is None, norm.process_group is None,
            bool(norm.track_running_stats), norm.impl)


def _plans(cell, key: tuple) -> tuple[SitePlan, SitePlan] | None:
    """The (gate, cell) site plans of ``cell`` for ``key`` = (dtype, device), or None (the per-step path). Cached
    per cell (a plan of 1-D DN costs about a forward of a short sequence: field_mean of an (H, H) identity; 56 ms
    at H = 650 against 39 ms for T = 10, N = 20), and made again whenever a site's normalizer was replaced or
    re-specified since (assignment, :func:`dnlib.convert_norms`, a new ``spec``, ``impl``, ...): :func:`_site_key`."""
    sites = (cell.hidden_size, _site_key(cell.gate_norm), _site_key(cell.cell_norm))
    if _PLANNED.get(cell) != sites:
        _PLANS[cell], _PLANNED[cell] = {}, sites
    plans = _PLANS[cell]
    if key not in plans:
        gp, cp = (plan(m, cell.hidden_size, *key) for m in (cell.gate_norm, cell.cell_norm))
        plans[key] = None if gp is None or cp is None else (gp, cp)
    return plans[key]


def norm_lstm_sequence(cell, x: Tensor, state: tuple):
    """``(out, (h_T, c_T))`` of a :class:`~dnlib.models.rnn.NormLSTMCell` over the inputs ``x`` (T, N, I) by
    :func:`lstm_sequence`, its L1 terms recorded at its normalizers as the per-step path records them; or None
    where the cell takes its per-step path (:func:`plan` does not cover a normalizer, ``trace`` records, or
    ``torch.compile``/``torch.jit.trace`` is tracing). Where the gate site's centring :func:`folds`, it is folded
    into the input transform too: ``x (W_ih^T (I - A)) + b (I - A)`` (the forget bias in ``b``) is ``xw`` centred,
    for the cost of centring two (I, 4H) and (4H) tensors instead of the (T, N, 4H) product."""
    if cell.trace is not None or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    h0, c0 = state
    plans = _plans(cell, (x.dtype, x.device))
    if plans is None or h0.dtype != x.dtype or c0.dtype != x.dtype:
        return None
    H, cn = cell.hidden_size, cell.cell_norm
    folded = folds(plans[0])
    if folded:
        b = cell.input_bias()
        if b is not None:
            b = centre(b.view(4, H), plans[0][0]).view(4 * H)
        xw = torch.nn.functional.linear(x, centre_columns(cell.weight_ih, plans[0]), b)
    else:
        xw = cell.input_transform(x)
    gw = cell.gate_weight.view(4, H) if cell.gate_weight is not None else None
    gb = cell.gate_bias.view(4, H) if cell.gate_bias is not None else None
    cw = cn.weight if cn is not None and cn.affine else None
    cb = cn.bias if cw is not None else None
    out, h, c, zs, cs = lstm_sequence(xw, h0, c0, cell.weight_hh, gw, gb, cw, cb, *plans, xw_centred=folded)
    steps, n = xw.shape[:2]
    for norm, act, rows, p, v in ((cell.gate_norm, zs, 4 * n, plans[0], folded), (cn, cs, n, plans[1], False)):
        if norm is not None and norm.alpha and norm.training and torch.is_grad_enabled():   # all T steps at once
            # Z is v = z - E_A[z] where it folds; else the site's own sum field centres it (one box, no flips)
            v = act if v or p[0][0] == 0 else centre(act, p[0])
            out = norm.record_penalty(out, l1_mean(v, norm.alpha) * steps, rows)
    return out, (h, c)
