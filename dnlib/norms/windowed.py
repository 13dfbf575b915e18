"""Windowed DN fast on the CPU, and the table that ``DivisiveNorm(impl="auto")`` dispatches by.

On a CPU the windowed layers (the paper's conv DN: all channels x a k x k window; its 1-D DN: a window of units)
are bound by memory traffic: the general path's hand-written Functions make one pass over the full tensor per
torch op (a reduction, a centring, a square, a window's shifted adds, ...), 8-17 passes for a forward and backward
that ``nn.BatchNorm2d`` makes in about 8. No eager composition fuses them, so the fast CPU path here is the general
path's own math (:func:`dnlib.norms.functional._compose`, the same code: every border rule, Gaussian weights, the
mean floor, ``power``, ``sup_scale``, a learned sigma, the L1 term) compiled by Inductor, which generates C++ loops
on the CPU: the channel mean and the sum of squares of one position in one loop, each window's shifted adds fused
into the loads of its neighbours, forward and backward each about two passes over the tensor.

Unlike ``impl="compile"`` (one AOTAutograd graph whose backward cannot be differentiated), forward and backward
are two compiled functions inside one :class:`torch.autograd.Function`: the backward is the ``torch.func.vjp`` of
the same composition, recomputed from the saved input in the fused kernels (nothing but ``x`` is saved); a double
backward (``create_graph=True``) takes the plain-op VJP instead, itself differentiable, so gradient penalties
and Hessian-vector products work as on the general path.

:data:`AUTO` is the dispatch table: per device and shape class, the path ``python -m dnlib.norms.bench_layers
--table`` measured fastest (its comment keeps the measurement). ``impl="auto"`` never takes a path that table
measured slower than torch's own layer. Grad-free calls (evaluation) compile a spec only once the compile has paid
for itself (:data:`INFERENCE_REPAY`), or use the kernels training compiled.
"""
from __future__ import annotations

import os
import types
import warnings

import torch

from . import functional as DF
from .spec import NormSpec

#: Inputs with at least this many elements are the "large" shape class: there the compiled path's first call
#: (10-60 s of compilation per spec, once per process) is repaid within a few hundred steps, and tests and smoke
#: runs (smaller) stay on the general path. The CIFAR layers at batch 100 (100 x 32 x 32 x 32 = 3.3M) and the
#: sequence shape (64 x 256 x 100 = 1.6M) are large; CIFAR at the notebook's batch 25 (0.8M) is not.
LARGE = 1 << 20

#: A grad-free call (evaluation, inference: ``torch.no_grad``/``inference_mode``) makes a spec compile only once the
#: grad-free large inputs it ran on the general path add up to this many elements (or when training already
#: compiled the spec's kernels in this process: then they are used at once). :data:`LARGE` is repaid within a few
#: hundred *training* steps; an evaluation is a handful of forward calls, so a smoke run (its training batches
#: small, its evaluation batch of up to 1,000 large) compiled for its evaluation alone: nb03's DN* run, 200 steps,
#: took 35 CPU-s with the compile (cold cache) and 9 CPU-s without. The threshold is the break-even of that
#: compile: one DN* spec (window 5, 500 x 32 x 32 x 32, no_grad, one thread, this 2-core machine, 2026-12-07)
#: compiled in 19 CPU-s and then ran 66 ms a call against the general path's 130 ms, 4 ns an element saved, so
#: 19 s / 4 ns = 4.8e9 elements. Running the general path until the compile would have paid for itself, then
#: compiling, costs at most twice the better of "never" and "at once" (the ski-rental rule). Evaluating the full
#: CIFAR test set (10,000 images) without training's kernels, the DN* CNN's first site (its own spec, window 5:
#: 0.33e9 elements an evaluation) compiles in the 14th evaluation, its 3x3 sites (one spec: 0.12e9) in the 35th.
INFERENCE_REPAY = 1 << 32

#: ``impl="auto"``'s choice per (device type, what the spec is, shape class): ``"compiled"`` (this module's path),
#: ``"general"`` (the hand-written Functions) or ``"native"`` (torch's kernel, where the spec has one).
#: Measured by ``python -m dnlib.norms.bench_layers --table`` (forward + backward, medians of interleaved
#: round-robin runs, ratios to torch's layer in the same run): see ``MEASURED``.
AUTO = {
    ("cpu", "windowed", "large"): "compiled",
    ("cpu", "windowed", "small"): "general",
    ("cpu", "rms", "large"): "general",
}

#: The measurement behind :data:`AUTO`: ``python -m dnlib.norms.bench_layers --table --repeat 20 --threads 1`` on the
#: project's 2-core machine, quiet (nothing else running; load average 0.2-0.6), 2026-12-06. The same table from a
#: second quiet run minutes earlier (``make bench``, results/bench_cpu.txt) agrees on every choice; single ratios
#: moved by up to 0.15x between runs, and by 0.55x for dn3 at 64 channels (1.41x there, 0.86x here). That row is
#: not slowed by its recompile with dynamic sizes (its spec compiled first at 32 channels): on 2026-12-07 four runs
#: of this code read 0.83-1.56x for it, and kernels compiled static per layer shape (no dynamic recompile) read
#: 0.92-1.53x in two runs; torch's own BatchNorm2d moved 12.9-20.9 ms between those processes. A row of one kernel
#: against itself (``native_path`` where ``auto`` is native) reads 0.88-1.23x: the noise floor. Ratios to torch's
#: own layer, forward + backward; "auto" ran the table above.
MEASURED = """\
torch 2.13.0+cpu
dn2d dn3 100x32x32x32: auto 1.01x, general 1.70x (load 0.2, 1 threads)
dn2d dn5 100x32x32x32: auto 0.75x, general 1.88x (load 0.3, 1 threads)
dn2d dn3 100x64x32x32: auto 0.86x, general 1.61x (load 0.3, 1 threads)
dn2d dn5 100x64x32x32: auto 0.72x, general 1.67x (load 0.3, 1 threads)
dn1d dn3 64x256x100: auto 1.54x, general 7.74x (load 0.4, 1 threads)
dn1d dn5 64x256x100: auto 1.74x, general 10.24x (load 0.4, 1 threads)
presets bn 128x32x32x32: auto 0.95x, general 2.70x, native_path 1.09x (load 0.4, 1 threads)
presets ln 128x32x32x32: auto 0.86x, general 3.71x, native_path 0.96x (load 0.4, 1 threads)
presets in 128x32x32x32: auto 0.97x, general 3.23x, native_path 1.23x (load 0.4, 1 threads)
presets gn 128x32x32x32: auto 0.98x, general 4.94x, native_path 1.21x (load 0.5, 1 threads)
presets rms 128x32x32x32: auto 0.66x, general 0.65x, native_path 1.14x (load 0.5, 1 threads)
presets lrn 128x32x32x32: auto 0.44x, general 0.86x (load 0.5, 1 threads)
presets bn 64x256x100: auto 1.02x, general 2.99x, native_path 1.01x (load 0.6, 1 threads)
presets ln 64x256x100: auto 0.92x, general 4.04x, native_path 0.96x (load 0.6, 1 threads)
presets in 64x256x100: auto 1.02x, general 3.34x, native_path 1.04x (load 0.6, 1 threads)
presets gn 64x256x100: auto 1.08x, general 5.17x, native_path 1.17x (load 0.6, 1 threads)
presets rms 64x256x100: auto 0.82x, general 0.76x, native_path 0.99x (load 0.6, 1 threads)
presets lrn 64x256x100: auto 0.55x, general 0.87x (load 0.6, 1 threads)
"""

_broken: dict = {}      # spec -> why compiling failed (then the general path, warned once)
_inference_seen: dict = {}  # (spec, nspatial) -> elements of grad-free large inputs run on the general path


def shape_class(x: torch.Tensor) -> str:
    """``"large"`` (at least :data:`LARGE` elements) or ``"small"``."""
    return "large" if x.numel() >= LARGE else "small"


def choice(spec: NormSpec, kind: str | None, x: torch.Tensor) -> str:
    """What ``impl="auto"`` runs for ``spec`` on ``x``: ``"native"`` (the module's fused kernel ``kind``),
    ``"compiled"`` or ``"general"``, from :data:`AUTO` (``"native"`` where the table has no entry and a kernel
    exists, else ``"general"``); a grad-free call takes ``"compiled"`` only as :data:`INFERENCE_REPAY` says."""
    what = kind if kind is not None else ("windowed" if spec.windowed else "general")
    default = "native" if kind is not None else "general"
    got = AUTO.get((x.device.type, what, shape_class(x)), default)
    if got == "compiled" and (spec in _broken or not compile_allowed() or not _compilable(x)):
        return "general"
    if got == "compiled" and not torch.is_grad_enabled() and not _inference_repaid(spec, x):
        return "general"
    return got


def _inference_repaid(spec: NormSpec, x: torch.Tensor) -> bool:
    """Whether a grad-free call on ``x`` takes the compiled path (:data:`INFERENCE_REPAY`): the spec's kernels exist
    already, or the grad-free inputs it ran on the general path, this one included, add up to the threshold (this
    call then compiles)."""
    key = (spec, x.dim() - 2)
    if key in _compiled:
        return True
    seen = _inference_seen.get(key, 0)
    if seen < INFERENCE_REPAY:
        seen = _inference_seen[key] = seen + x.numel()
    return seen >= INFERENCE_REPAY


def compile_allowed() -> bool:
    """False when the environment says ``DNLIB_COMPILE=0`` (or ``off``/``false``/``no``): ``impl="auto"`` then never
    compiles, and large windowed inputs take the general path (the same values; per step 1.7-2.5x the compiled
    kernels' time at the CIFAR shapes of :data:`MEASURED`, but no compile).
    For short work where compiling would dominate: a smoke run or a test compiles each spec for 2-40 s (more
    with Inductor's cache cold) and then takes a few steps. The environment reaches the processes a sweep or a
    script starts. An explicit ``impl="compile"`` still compiles."""
    return os.environ.get("DNLIB_COMPILE", "1").strip().lower() not in ("0", "off", "false", "no")


def _compilable(x: torch.Tensor) -> bool:
    """Whether the compiled path may run on ``x``: not while ``torch.compile`` traces (the general path is then
    traced as plain ops) nor under ``torch.func`` transforms (vmap/grad wrap their tensors)."""
    if torch.compiler.is_compiling():
        return False
    return not (DF.under_transform() or torch._C._functorch.is_functorch_wrapped_tensor(x))


# ------------------------------------------------------------------------------------------------ the compiled path
def _forward(x, sig2, alpha: float, spec: NormSpec, plan):
    """``(y, penalty)``: the general path's math (:func:`~dnlib.norms.functional._compose`), box filters as shifted
    adds that Inductor fuses; ``penalty = alpha * mean|v|`` (0-d; zeros when alpha is 0)."""
    xg = DF._grouped(x, spec.groups)
    y, v, _, _ = DF._compose(xg, sig2, spec, plan, DF._box_shift)
    if plan.sum is None and plan.sup is None:
        y = xg
    pen = alpha * v.abs().mean() if alpha else x.new_zeros(())
    return y.reshape(x.shape), pen


def _forward_stats(x, sig2, alpha: float, spec: NormSpec, plan):
    """:func:`_forward` with nothing saved for :func:`_backward` (which recomputes from ``x``)."""
    y, pen = _forward(x, sig2, alpha, spec, plan)
    return y, pen, ()


def _backward(x, sig2, gy, gpen, stats, alpha: float, spec: NormSpec, plan):
    """The VJP of :func:`_forward` at ``x`` (recomputed from it): ``(gx, gsig2)``, gsig2 None for a float sigma."""
    if torch.is_tensor(sig2):
        _, vjp = torch.func.vjp(lambda t, s: _forward(t, s, alpha, spec, plan), x, sig2)
        return vjp((gy, gpen))
    _, vjp = torch.func.vjp(lambda t: _forward(t, sig2, alpha, spec, plan), x)
    return vjp((gy, gpen))[0], None


def _suppression(s0, plan):
    """E_B[v^2] from its global part (:func:`dnlib.norms.functional._suppression` with the shifted-add window)."""
    s = DF._box_shift(s0, plan.sup, plan.nspatial)
    return s * plan.bug if plan.bug != 1.0 else s


def _shared_forward(x, sig2, alpha: float, spec: NormSpec, plan):
    """DN when both fields reduce the same dims globally (the paper's conv DN: all channels x a spatial window;
    :func:`dnlib.norms.functional._shared`): ``(y, penalty, (m0, mu, s0, d))``, the statistics for
    :func:`_shared_backward`.

    One pass over ``x`` gives the field's mean and mean square of ``x - K``, ``K`` its value at the first index of
    the field (a per-row offset: the sums then cancel no more than a centred sum does, also when the activations'
    common mean is large against their spread, where E[x^2] - E[x]^2 loses fp32's digits). Then
    ``E[(x - mu)^2] = E[(x - K)^2] - 2 (mu - K) E[x - K] + (mu - K)^2`` on the reduced maps, windows and divisor
    there too, and one pointwise pass writes ``y``."""
    dims = plan.sum.dims
    xg = DF._grouped(x, spec.groups)
    k = xg
    for dim in dims:
        k = k.narrow(dim, 0, 1)
    u = xg - k
    a, q = u.mean(dims, keepdim=True), (u * u).mean(dims, keepdim=True)
    m0 = k + a
    mu = DF._box_shift(m0, plan.sum, plan.nspatial)
    c = mu - k
    s0 = (q - 2.0 * c * a + c * c).clamp_min(0.0)
    d = DF._divisor(_suppression(s0, plan), sig2, spec)
    v = xg - mu
    y = v * d
    pen = alpha * v.abs().mean() if alpha else x.new_zeros(())
    return y.reshape(x.shape), pen, (m0, mu, s0, d)


def _shared_backward(x, sig2, gy, gpen, stats, alpha: float, spec: NormSpec, plan):
    """The VJP of :func:`_shared_forward` from its statistics: one reduction pass over ``gy`` and ``x`` (the field
    sums of ``gy``, ``gy * x`` and, with the L1 term, ``sign(x - mu)``), autograd on the reduced maps only, and one
    pointwise pass for ``gx`` (the math of :class:`dnlib.norms.functional._DivNormSharedFn`'s backward)."""
    m0, mu, s0, d = stats
    dims = plan.sum.dims
    xg, gg = DF._grouped(x, spec.groups), DF._grouped(gy, spec.groups)
    n = DF._numel(xg, dims)
    sg = gg.sum(dims, keepdim=True)
    gd = (gg * xg).sum(dims, keepdim=True) - mu * sg            # the field's sum of gy * v
    gv_ext = None
    if alpha:
        gv_ext = (gpen * (alpha / x.numel())) * torch.sign(xg - mu)  # d(alpha mean|v|)/dv
    if torch.is_tensor(sig2):
        _, vjp = torch.func.vjp(lambda t, s2: DF._divisor(_suppression(t, plan), s2, spec), s0, sig2)
        gs0, gsig2 = vjp(gd)
    else:
        _, vjp = torch.func.vjp(lambda t: DF._divisor(_suppression(t, plan), sig2, spec), s0)
        (gs0,), gsig2 = vjp(gd), None
    coef = gs0 * (2.0 / n)                                       # gv = gy * d + coef * v (+ gv_ext)
    gmu = -(d * sg + coef * (n * (m0 - mu)))                     # -(the field's sum of gv)
    if gv_ext is not None:
        gmu = gmu - gv_ext.sum(dims, keepdim=True)
    if plan.sum.has_window:
        _, vjp = torch.func.vjp(lambda t: DF._box_shift(t, plan.sum, plan.nspatial), m0)
        (gm0,) = vjp(gmu)
    else:
        gm0 = gmu
    gx = gg * d + coef * xg + (gm0 / n - coef * mu)
    if gv_ext is not None:
        gx = gx + gv_ext
    return gx.reshape(x.shape), gsig2


def _windows_only(spec: NormSpec, plan) -> bool:
    """Whether every field of ``spec`` pools only along its windows (no global dims) and the divisor is pointwise:
    1-D DN along the units (``dn-1d``), LRN. Then :func:`_window_forward` / :func:`_window_backward` apply."""
    return (plan.sup is not None and spec.floor is None and not plan.sup.dims
            and (plan.sum is None or not plan.sum.dims))


def _window_forward(x, sig2, alpha: float, spec: NormSpec, plan):
    """DN whose fields are windows only (:func:`_windows_only`): ``mu = E_A[x]``, ``v = x - mu``, ``s = E_B[v^2]``,
    ``y = v d``, each window's shifted adds fused into one pass; returns the divisor ``d`` for the backward, which
    then need not recompute ``E_B`` (the window of windows)."""
    xg = DF._grouped(x, spec.groups)
    v = xg - DF._box_shift(xg, plan.sum, plan.nspatial) if plan.sum is not None else xg
    d = DF._divisor(_suppression(v * v, plan), sig2, spec)
    pen = alpha * v.abs().mean() if alpha else x.new_zeros(())
    return (v * d).reshape(x.shape), pen, (d,)


def _window_backward(x, sig2, gy, gpen, stats, alpha: float, spec: NormSpec, plan):
    """The VJP of :func:`_window_forward` from the saved divisor: with ``d = t^-p``, ``t = s sup_scale + eps +
    sigma^2``, ``dd/dt = -p d^(1 + 1/p)``; the windows' transposes by ``torch.func.vjp`` of the (linear) filters."""
    (d,) = stats
    xg, gg = DF._grouped(x, spec.groups), DF._grouped(gy, spec.groups)
    v = xg - DF._box_shift(xg, plan.sum, plan.nspatial) if plan.sum is not None else xg
    p = spec.power
    dt = d * d * d if p == 0.5 else d.pow(1.0 + 1.0 / p)
    gt = -p * (gg * v) * dt                                      # dL/dt
    gsig2 = gt.sum() if torch.is_tensor(sig2) else None
    _, vjp = torch.func.vjp(lambda q: _suppression(q, plan), v * v)
    (gq,) = vjp(gt * spec.sup_scale)                             # dL/d(v^2)
    gv = gg * d + 2.0 * v * gq
    if alpha:
        gv = gv + (gpen * (alpha / x.numel())) * torch.sign(v)
    if plan.sum is not None:
        _, vjp = torch.func.vjp(lambda t: DF._box_shift(t, plan.sum, plan.nspatial), xg)
        gv = gv - vjp(gv)[0]
    return gv.reshape(x.shape), gsig2


def _own_copy(fn, tag):
    """A copy of ``fn`` with its own code object, so that Dynamo's per-code cache (and recompile limit) counts the
    shapes of one spec, not every layer's (as :func:`dnlib.norms.functional.compiled_divisive_norm`)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name)


_compiled: dict = {}


def _kernels(spec: NormSpec, nspatial: int):
    key = (spec, nspatial)
    if key not in _compiled:
        tag = f"{abs(hash(key)):x}"
        # dynamic=None: the first shape compiled static (fastest loops); a dim whose size changes recompiles once
        # with dynamic sizes (a last, smaller batch).
        plan = DF._plan(spec, nspatial)
        if DF._shared(plan, None, None):
            fwd, bwd = _shared_forward, _shared_backward
        elif _windows_only(spec, plan):
            fwd, bwd = _window_forward, _window_backward
        else:
            fwd, bwd = _forward_stats, _backward
        _compiled[key] = (torch.compile(_own_copy(fwd, tag), dynamic=None, fullgraph=True),
                          torch.compile(_own_copy(bwd, tag), dynamic=None, fullgraph=True))
    return _compiled[key]


class _CompiledDN(torch.autograd.Function):
    """DN through the compiled forward and backward; a double backward differentiates the plain-op composition."""

    @staticmethod
    def forward(ctx, x, sig2, alpha, spec, plan, fwd, bwd):
        ctx.set_materialize_grads(False)
        ctx.alpha, ctx.spec, ctx.plan, ctx.bwd = alpha, spec, plan, bwd
        ctx.sig2_is_tensor = torch.is_tensor(sig2)
        if not ctx.sig2_is_tensor:
            ctx.sig2 = sig2
        y, pen, stats = fwd(x, sig2, alpha, spec, plan)
        ctx.save_for_backward(x, sig2 if ctx.sig2_is_tensor else None, *stats)
        return y, pen

    @staticmethod
    def backward(ctx, gy, gpen):
        x, sig2_t, *stats = ctx.saved_tensors
        sig2 = sig2_t if ctx.sig2_is_tensor else ctx.sig2
        need_x, need_sig = ctx.needs_input_grad[0], ctx.sig2_is_tensor and ctx.needs_input_grad[1]
        if gy is None and gpen is None:
            return None, None, None, None, None, None, None
        if not torch.is_grad_enabled() and ctx.spec not in _broken:
            gy = torch.zeros_like(x) if gy is None else gy.contiguous(memory_format=_format(x))
            gpen = x.new_zeros(()) if gpen is None else gpen
            try:
                gx, gsig2 = ctx.bwd(x, sig2, gy, gpen, tuple(stats), ctx.alpha, ctx.spec, ctx.plan)
                return (gx if need_x else None), (gsig2 if need_sig else None), None, None, None, None, None
            except Exception as e:  # noqa: BLE001 (compiling the backward failed: the plain-op VJP below)
                _give_up(ctx.spec, e, tuple(x.shape), x.dtype)
        # create_graph=True (or no compiled backward): the plain-op VJP from the saved input, differentiable
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            if create:  # the graph reaches the saved input (and sigma) itself
                xx = x if need_x else x.detach()
                sg = sig2 if need_sig or not torch.is_tensor(sig2) else sig2.detach()
            else:
                xx = x.detach().requires_grad_(need_x)
                sg = sig2.detach().requires_grad_(need_sig) if torch.is_tensor(sig2) else sig2
            y, pen = _forward(xx, sg, ctx.alpha, ctx.spec, ctx.plan)
            gx, gsig2 = DF._grads([y, pen], [gy, gpen], [xx if need_x else None, sg if need_sig else None])
        if not create:
            gx = None if gx is None else gx.detach()
            gsig2 = None if gsig2 is None else gsig2.detach()
        return gx, gsig2, None, None, None, None, None


def _format(x: torch.Tensor):
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


def compiled_norm(x: torch.Tensor, spec: NormSpec, sigma=None, alpha: float = 0.0):
    """``(y, penalty)`` of DN on ``x`` through the compiled kernels (see the module doc), or None when they
    cannot run (compilation failed, e.g. no C++ compiler; or Dynamo's recompile limit): then the caller takes the
    general path, which computes the same values (one ``RuntimeWarning`` per spec). ``penalty`` is
    ``alpha * mean|x - E_A[x]|`` (None when alpha is 0), differentiable."""
    DF._check(x, spec)
    if spec in _broken:
        return None
    plan = DF._plan(spec, x.dim() - 2)
    sig = spec.sigma if sigma is None else sigma
    sig2 = sig * sig if torch.is_tensor(sig) else float(sig) ** 2
    fwd, bwd = _kernels(spec, x.dim() - 2)
    try:
        y, pen = _CompiledDN.apply(x, sig2, float(alpha), spec, plan, fwd, bwd)
    except Exception as e:  # noqa: BLE001 (Inductor raises many types: no compiler, recompile limit, ...)
        _give_up(spec, e, tuple(x.shape), x.dtype)
        return None
    return y, (pen if alpha else None)


def _give_up(spec: NormSpec, e: Exception, shape: tuple, dtype) -> None:
    """Remember that ``spec`` does not compile here and say so once; it runs the general path from now on."""
    text = str(e).strip().splitlines()
    _broken[spec] = f"{type(e).__name__}: {text[0] if text else ''}"
    warnings.warn(f"DivisiveNorm(impl='auto'): the compiled CPU path failed for {spec} on input {shape} {dtype} "
                  f"({_broken[spec]}); this spec runs the general path from now on (same values). "
                  f"impl='general' skips the compiled path.", RuntimeWarning, stacklevel=4)


def fp32_error(shape=(100, 32, 32, 32), window: int = 3, seed: int = 0) -> dict:
    """Max |fp32 - fp64| of the general and the compiled path's output and input gradient on one input (the
    compiled path's numbers use its kernels): the measurement behind "exact at the current path's level"."""
    from .presets import get_spec, resolve_spec  # (presets imports norm, which imports this module)
    spec = resolve_spec(get_spec("dn"), window=window, sigma=0.5)
    g = torch.Generator().manual_seed(seed)
    x64 = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    gy64 = torch.randn(shape, generator=g, dtype=torch.float64)
    ref_y = DF.divisive_norm(x64, spec)
    (ref_g,) = torch.autograd.grad(ref_y, x64, gy64)
    out = {}
    for name in ("general", "compiled"):
        x = x64.detach().float().requires_grad_()
        y = DF.divisive_norm(x, spec) if name == "general" else compiled_norm(x, spec)[0]
        (gx,) = torch.autograd.grad(y, x, gy64.float())
        out[name] = (float((y.double() - ref_y).abs().max()), float((gx.double() - ref_g).abs().max()))
    return out
