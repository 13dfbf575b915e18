"""``DivisiveNorm(impl="triton")``: windowed divisive normalization as fused Triton kernels, forward and backward.

Scope: 4-D ``(N, C, H, W)`` inputs and per-example fields (:func:`supported`), which is what the CIFAR and SR DN
models use: both fields pool ``"channel"``, either all channels or a channel window (the same kind in A and B,
sizes may differ), and optionally ``"space"`` through a ``k x k`` window (A and B may differ: SR's 5 x 5 / 7 x 7),
with any sigma (fixed or learned), ``eps`` (also ``None``), ``power``, ``sup_scale`` and every border rule of
:class:`~dnlib.norms.spec.NormSpec` (``"valid"``, ``"zeros"``, ``"reference"`` with its even windows and its
suppression divisor); box windows only (no Gaussian weights, no ``floor``). The operator is the general path's
(:func:`dnlib.norms.functional.divisive_norm`):

.. math::
    m_0 = R x, \\quad \\mu = B_A m_0, \\quad v = x - \\mu, \\quad
    s = b\\,B_B R (v^2), \\quad y = v\\,(s\\,\\mathrm{sup\\_scale} + \\epsilon + \\sigma^2)^{-p}

where ``R`` is the mean over the field's channels (identity for a channel window), ``B`` the normalized box filter
over the window and ``b`` the reference code's divisor factor. Forward: three kernels (channel means, not needed
with a channel window; the local mean ``mu`` and ``R(v^2)``; the output, with the divisor's argument kept for
backward and the per-program sums of ``|v|``, the L1 term's statistic). Backward: three kernels (per-position sums
of ``gy * v``, ``gy``, ``sign(v)``; the transposed suppression and summation box filters on those small maps;
``gx``), exact gradients for ``x``, a learned sigma and the L1 sum. The statistics live on ``(N, 1, H, W)`` maps (all
channels) or ``(N, C, H, W)`` maps (channel window), in float32 (float64 for float64 inputs); ``x`` is read three times
forward (twice with a channel window) and twice backward. NCHW and channels_last inputs are read in place (the output
and the input's gradient keep the input's layout); other strides are copied first.

Double backward (``create_graph=True``) raises :class:`NotImplementedError`: use ``impl="general"`` for gradient
penalties. Offsets are 32-bit: inputs up to 2**31 elements.

The kernels are :mod:`dnlib.norms.triton_kernels`; Triton is imported only there, and only when a kernel is first
needed (``import dnlib`` never imports it). On a
machine without a GPU the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before the first
kernel is built (the tests do: ``tests/conftest.py``); slow, for checking values and gradients only. The GPU speed
of these kernels has not been measured (no GPU in the session that wrote them), so ``impl="auto"`` never picks
them; ``scripts/gpu_throughput.py`` compares them with the general path on a device.
:func:`dnlib.norms.triton_kernels.compile_for` builds them for a GPU architecture on a machine without one (Triton's
compiler and ``ptxas``), which checks what the interpreter cannot.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import torch

from .spec import NormSpec
from .triton_kernels import INSTALL_HINT, built_interpreted, interpret_env, kernels, tile_sizes

#: How to install Triton (the package's optional extra).

# ---------------------------------------------------------------------------------------------- what it computes


@dataclass(frozen=True)
class _Geom:
    glob: bool    # the fields pool all channels (else a channel window: stat maps have C channels)
    kca: int      # summation field: channel window (1: none), spatial window (1: none)
    ksa: int
    kcb: int      # suppression field
    ksb: int
    valid: bool   # border="valid": divide by the number of real neighbours (else by the window size)
    bug: float    # border="reference": the authors' suppression divisor factor (k_B^2 / k_A^2), else 1


def _field(axes, window, name: str):
    """``(all_channels, kc, ks)`` of one field, or a string saying why the kernels do not compute it."""
    if not axes:
        return f"{name} is empty"
    if "batch" in axes:
        return f"{name} pools 'batch'"
    if "channel" not in axes:
        return f"{name} does not pool 'channel'"
    w = dict(window)
    if "space" in axes and "space" not in w:
        return f"{name} pools 'space' globally (no spatial window)"
    return "channel" not in w, w.get("channel", 1), w.get("space", 1)


@lru_cache(maxsize=256)
def _analyse(spec: NormSpec):
    """A :class:`_Geom` for a supported spec, else the reason (a string)."""
    if not isinstance(spec, NormSpec):
        return f"expected a NormSpec, got {type(spec).__name__}"
    if spec.groups != 1:
        return f"groups={spec.groups}"
    if getattr(spec, "weighted", False):
        return "a window carries Gaussian weights (the kernels compute box windows)"
    if getattr(spec, "floor", None) is not None:
        return f"floor={spec.floor!r}"
    a = _field(spec.sum_axes, spec.sum_window, "the summation field")
    if isinstance(a, str):
        return a
    b = _field(spec.sup_axes, spec.sup_window, "the suppression field")
    if isinstance(b, str):
        return b
    if a[0] != b[0]:
        return "one field pools all channels and the other a channel window"
    bug = 1.0
    if spec.border == "reference" and a[2] > 1 and a[1] == 1 and b[1] == 1:
        bug = b[2] ** 2 / a[2] ** 2  # as dnlib.norms.functional: the authors' div_norm_2d (PAPER.md §5.4 item 1)
    return _Geom(a[0], a[1], a[2], b[1], b[2], spec.border == "valid", bug)


#: What :func:`supported` accepts, for error messages.
SCOPE = ("per-example fields (groups=1) that both pool 'channel' (all channels in both, or a channel window in "
         "both) and optionally 'space' through a k x k window, box windows, no floor, on (N, C, H, W) inputs; any "
         "sigma (also learned), eps, power, sup_scale and border")


def supported(spec: NormSpec) -> bool:
    """Whether :func:`divisive_norm` (``DivisiveNorm(impl="triton")``) computes ``spec`` (on 4-D inputs)."""
    return isinstance(_analyse(spec), _Geom)


def unsupported_reason(spec: NormSpec) -> str | None:
    """Why ``spec`` is not :func:`supported` (None when it is)."""
    r = _analyse(spec)
    return None if isinstance(r, _Geom) else r


def check(spec: NormSpec) -> None:
    """Raise unless ``DivisiveNorm(impl="triton")`` can run ``spec``: :class:`ValueError` for a spec outside the
    kernels' scope, :class:`ImportError` (naming the extra) when Triton is not installed."""
    why = unsupported_reason(spec)
    if why is not None:
        raise ValueError(f"impl: 'triton' does not compute {spec}: {why}; it computes {SCOPE}. Use impl='general'")
    if importlib.util.find_spec("triton") is None:
        raise ImportError(f"impl: 'triton' needs the triton package, which is not installed; install it with "
                          f"`{INSTALL_HINT}` (a GPU build of torch for CUDA tensors)")


def interpreted() -> bool:
    """Whether the kernels run (or, not built yet, would run) in Triton's CPU interpreter."""
    built = built_interpreted()
    return interpret_env() if built is None else built


def available() -> bool:
    """Whether the kernels can run here: Triton importable and, outside its interpreter, a CUDA device present."""
    if importlib.util.find_spec("triton") is None:
        return False
    return interpreted() or torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------ autograd
def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _strides(x: torch.Tensor):
    """``(channels_last, channel stride, position stride)`` of a 4-D ``x`` that is NCHW- or channels_last-contiguous
    (what the kernels index; the statistics maps are NCHW)."""
    _, C, H, W = x.shape
    if x.is_contiguous():
        return False, H * W, 1
    return True, 1, C


class _TritonDNFn(torch.autograd.Function):
    """``(y, l1) = DN(x)`` with ``l1 = sum |x - mu|`` (a 0-d tensor; empty when not asked), kernels both ways."""

    @staticmethod
    def forward(ctx, x, sig2, geom: _Geom, spec: NormSpec, want_l1: bool, blocks):
        ctx.set_materialize_grads(False)
        k = kernels()
        N, C, H, W = x.shape
        HW = H * W
        CM = 1 if geom.glob else C
        _, SC, SP = _strides(x)
        BM, BR, BP = tile_sizes(C, HW, geom.glob, blocks)
        acc = _acc(x.dtype)
        grid = (N * k["cdiv"](CM, BM), k["cdiv"](HW, BP))
        sig_t = torch.is_tensor(sig2)
        if geom.glob:
            m0 = torch.empty((N, 1, H, W), device=x.device, dtype=acc)
            k["mean"][(N, grid[1])](x, m0, C, HW, SC, SP, BR=BR, BP=BP)
        else:
            m0 = x
        mu = torch.empty((N, CM, H, W), device=x.device, dtype=acc)
        s0 = torch.empty_like(mu)
        msc, msp = (HW, 1) if geom.glob else (SC, SP)
        k["centre"][grid](x, m0, mu, s0, C, CM, H, W, SC, SP, msc, msp, KCA=geom.kca, KSA=geom.ksa, VALID=geom.valid,
                          GLOB=geom.glob, BM=BM, BR=BR, BP=BP)
        targ = torch.empty_like(mu)  # (not s0 in place: a program reads s0 around its own tile)
        y = torch.empty_like(x)  # (x's layout)
        l1 = torch.empty(grid[0] * grid[1] if want_l1 else 1, device=x.device, dtype=acc)
        k["divide"][grid](x, mu, s0, targ, y, l1, sig2 if sig_t else l1, C, CM, H, W, SC, SP,
                          KCB=geom.kcb, KSB=geom.ksb, VALID=geom.valid, GLOB=geom.glob, SIG_T=sig_t,
                          SIG2=0.0 if sig_t else float(sig2),
                          EPS=float(spec.eps_for(x.dtype)), SCALE=float(spec.sup_scale), BUG=float(geom.bug),
                          POWER=float(spec.power), L1=want_l1, BM=BM, BR=BR, BP=BP)
        ctx.geom, ctx.spec, ctx.blocks, ctx.want_l1 = geom, spec, (BM, BR, BP), want_l1
        ctx.sig_dtype = sig2.dtype if sig_t else None
        ctx.save_for_backward(x, m0 if geom.glob else None, mu, targ)
        l1_out = l1.sum() if want_l1 else x.new_empty(0)  # (float32 for half inputs, as the statistics)
        if not want_l1:
            ctx.mark_non_differentiable(l1_out)
        return y, l1_out

    @staticmethod
    def backward(ctx, gy, gl1):
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "DivisiveNorm(impl='triton'): double backward (create_graph=True) is not implemented by the Triton "
                "kernels; use impl='general' (exact to any order) for gradient penalties or Hessian-vector products")
        x, m0, mu, targ = ctx.saved_tensors
        geom, spec = ctx.geom, ctx.spec
        need_x, need_sig = ctx.needs_input_grad[0], ctx.sig_dtype is not None and ctx.needs_input_grad[1]
        want_l1 = ctx.want_l1 and gl1 is not None
        if gy is None and not want_l1 or not (need_x or need_sig):
            return None, None, None, None, None, None
        k = kernels()
        N, C, H, W = x.shape
        HW = H * W
        CM = mu.shape[1]
        BM, BR, BP = ctx.blocks
        grid = (N * k["cdiv"](CM, BM), k["cdiv"](HW, BP))
        last, SC, SP = _strides(x)
        if gy is None:
            gy = torch.zeros_like(x)
        else:  # gy in x's layout
            gy = gy.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)
        gl1 = gl1.reshape(1).to(mu.dtype) if want_l1 else mu
        gsb, sg = torch.empty_like(mu), torch.empty_like(mu)
        ssg = torch.empty_like(mu) if want_l1 else mu
        gtp = torch.empty(grid[0] * grid[1] if need_sig else 1, device=x.device, dtype=mu.dtype)
        power = float(spec.power)
        k["gstat"][grid](x, gy, mu, targ, gsb, sg, ssg, gtp, C, CM, H, W, SC, SP, SB=float(geom.bug * spec.sup_scale),
                         POWER=power, GLOB=geom.glob, L1=want_l1, SIG_T=need_sig, BM=BM, BR=BR, BP=BP)
        gsig2 = gtp.sum().to(ctx.sig_dtype) if need_sig else None
        if not need_x:
            return None, gsig2, None, None, None, None
        gs0, gmu = torch.empty_like(mu), sg  # (gmu overwrites sg in place: each program reads sg on its tile only)
        msc, msp = (SC, SP) if m0 is None else (HW, 1)
        k["gmid"][grid](x if m0 is None else m0, mu, targ, gsb, sg, ssg, gl1, gs0, gmu, CM, H, W, msc, msp,
                        KCB=geom.kcb, KSB=geom.ksb, VALID=geom.valid, POWER=power, L1=want_l1, BM=BM, BP=BP)
        gx = torch.empty_like(x)
        k["gx"][grid](x, gy, mu, targ, gs0, gmu, gl1, gx, C, CM, H, W, SC, SP, KCA=geom.kca, KSA=geom.ksa,
                      VALID=geom.valid, POWER=power, GLOB=geom.glob, L1=want_l1, BM=BM, BR=BR, BP=BP)
        return gx, gsig2, None, None, None, None


def divisive_norm(x: torch.Tensor, spec: NormSpec, sigma=None, l1: bool = False, blocks=None):
    """Divisive normalization of a 4-D ``x`` by the Triton kernels: returns ``(y, l1_sum)``.

    The same operator as :func:`dnlib.norms.functional.divisive_norm` for a :func:`supported` spec. ``sigma`` overrides
    ``spec.sigma`` (a tensor for a learned sigma: gradients flow to it). With ``l1=True`` ``l1_sum`` is the sum
    of ``|x - E_A[x]|`` over every element (differentiable; the sparse penalty is ``alpha * l1_sum / x.numel()``;
    float32 for half-precision inputs), else None. ``blocks=(channels, positions)`` sets the tile sizes (powers of two;
    default 32 or 8 channels and 128 positions). Float16/bfloat16 inputs are computed in float32 and returned in their
    dtype; float64 in float64. Double backward raises :class:`NotImplementedError`.
    """
    geom = _analyse(spec)
    if not isinstance(geom, _Geom):
        raise ValueError(f"spec: the Triton kernels do not compute {spec}: {geom}; they compute {SCOPE}")
    if x.dim() != 4:
        raise ValueError(f"input: impl='triton' computes (N, C, H, W) inputs, got shape {tuple(x.shape)}; use "
                         f"impl='general' for other ranks")
    if not x.is_floating_point():
        raise TypeError(f"input: expected a real floating-point tensor, got dtype {x.dtype}")
    if x.numel() >= 2 ** 31:
        raise ValueError(f"input: {x.numel()} elements; the Triton kernels use 32-bit offsets (< 2**31 elements)")
    k = kernels()
    if not k["interpret"] and not x.is_cuda:
        raise ValueError(f"input: the Triton kernels need a CUDA tensor, got one on {x.device} (for Triton's CPU "
                         f"interpreter set TRITON_INTERPRET=1 before the first impl='triton' forward)")
    sig = spec.sigma if sigma is None else sigma
    sig2 = sig * sig if torch.is_tensor(sig) else float(sig) ** 2
    if torch.is_tensor(sig2):
        sig2 = sig2.reshape(())
    if x.numel() == 0:
        y = x * 0.0
        return y, ((x.sum() * 0.0) if l1 else None)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    y, l1_sum = _TritonDNFn.apply(x, sig2, geom, spec, bool(l1), blocks)
    return y, (l1_sum if l1 else None)


__all__ = ["SCOPE", "available", "check", "divisive_norm", "interpreted", "supported", "unsupported_reason"]
