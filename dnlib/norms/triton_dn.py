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

Triton is imported only here, and only when a kernel is first needed (``import dnlib`` never imports it). On a
machine without a GPU the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before the first
kernel is built (the tests do: ``tests/conftest.py``); slow, for checking values and gradients only. The GPU speed
of these kernels has not been measured (no GPU in the session that wrote them), so ``impl="auto"`` never picks
them; ``scripts/gpu_throughput.py`` compares them with the general path on a device. :func:`compile_for` builds
them for a GPU architecture on a machine without one (Triton's compiler and ``ptxas``), which checks what the
interpreter cannot.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from .spec import NormSpec

#: How to install Triton (the package's optional extra).
INSTALL_HINT = "pip install dnlib[triton]"

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


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def interpreted() -> bool:
    """Whether the kernels run (or, not built yet, would run) in Triton's CPU interpreter."""
    if _KERNELS:
        return _KERNELS["interpret"]
    return _interpret_env()


def available() -> bool:
    """Whether the kernels can run here: Triton importable and, outside its interpreter, a CUDA device present."""
    if importlib.util.find_spec("triton") is None:
        return False
    return interpreted() or torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------- the kernels
# Written as plain functions and made Triton kernels by _kernels() on first use, so that importing this module does
# not import Triton. ``tl`` and the helpers' names are bound in this module's globals there (Triton resolves a
# kernel's names through its globals, in the compiler and in the interpreter alike).
tl = None
_box = _count = _tiles = _divisor = None
_KERNELS: dict = {}


def _count_src(i, n, K: tl.constexpr):
    # real neighbours of position i (0..n-1) in a window [i - (K-1)//2, i + K//2]
    return tl.minimum(i + K // 2, n - 1) - tl.maximum(i - (K - 1) // 2, 0) + 1


def _box_src(src, n, m, h, w, ok, acc0, CM, H, W, SC, SP, KC: tl.constexpr, KS: tl.constexpr, VALID: tl.constexpr,
             TRANS: tl.constexpr):
    # The normalized box mean (TRANS False) or its transpose (TRANS True) of the map ``src`` (N, CM, H, W; channel
    # stride SC, position stride SP) at the tile positions (m: (BM, 1) map channels, h, w: (1, BP)), window
    # KC x KS x KS, accumulated into acc0's dtype.
    acc = acc0
    for i in range(KC):
        if TRANS:
            mm = m + (i - KC // 2)
        else:
            mm = m + (i - (KC - 1) // 2)
        okm = (mm >= 0) & (mm < CM)
        for j in range(KS):
            if TRANS:
                hh = h + (j - KS // 2)
            else:
                hh = h + (j - (KS - 1) // 2)
            okh = okm & (hh >= 0) & (hh < H)
            for k in range(KS):
                if TRANS:
                    ww = w + (k - KS // 2)
                else:
                    ww = w + (k - (KS - 1) // 2)
                msk = ok & okh & (ww >= 0) & (ww < W)
                off = n * CM * H * W + mm * SC + (hh * W + ww) * SP
                val = tl.load(src + off, mask=msk, other=0.0).to(acc0.dtype)
                if TRANS and VALID:
                    cnt = _count(mm, CM, KC) * _count(hh, H, KS) * _count(ww, W, KS)
                    val = val / tl.maximum(cnt, 1).to(acc0.dtype)  # (cnt <= 0 only off the map: masked)
                acc += val
    if VALID:
        if not TRANS:
            cnt = _count(m, CM, KC) * _count(h, H, KS) * _count(w, W, KS)
            acc = acc / tl.maximum(cnt, 1).to(acc0.dtype)
    else:
        acc = acc / (KC * KS * KS)
    return acc


def _tiles_src(CM, HW, W, BM: tl.constexpr, BP: tl.constexpr):
    # program -> (n, map channels m (BM, 1), positions p (1, BP), h, w, in-range mask of the stat tile)
    pid = tl.program_id(0)
    nbm = tl.cdiv(CM, BM)
    n = pid // nbm
    m = ((pid % nbm) * BM + tl.arange(0, BM))[:, None]
    p = (tl.program_id(1) * BP + tl.arange(0, BP))[None, :]
    return n, m, p, p // W, p % W, (m < CM) & (p < HW)


def _mean_src(x, m0, C, HW, SC, SP, BR: tl.constexpr, BP: tl.constexpr):
    # m0[n, 0, p] = mean over the C channels of x[n, :, p] (the fields that pool all channels). x: channel stride SC,
    # position stride SP (NCHW: HW, 1; channels_last: 1, C); the stat maps are NCHW.
    n = tl.program_id(0)
    p = (tl.program_id(1) * BP + tl.arange(0, BP))[None, :]
    acc = tl.zeros((1, BP), dtype=m0.dtype.element_ty)
    for c0 in range(0, C, BR):
        c = (c0 + tl.arange(0, BR))[:, None]
        t = tl.load(x + n * C * HW + c * SC + p * SP, mask=(c < C) & (p < HW), other=0.0).to(acc.dtype)
        acc += tl.sum(t, axis=0)[None, :]
    tl.store(m0 + n * HW + p, acc / C, mask=p < HW)


def _centre_src(x, m0, mu, s0, C, CM, H, W, SC, SP, MSC, MSP, KCA: tl.constexpr, KSA: tl.constexpr, VALID: tl.constexpr,
                GLOB: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    # mu = B_A m0 (stored), s0 = R (x - mu)^2 (stored)
    HW = H * W
    n, m, p, h, w, ok = _tiles(CM, HW, W, BM, BP)
    acc0 = tl.zeros((BM, BP), dtype=mu.dtype.element_ty)
    mu_t = _box(m0, n, m, h, w, ok, acc0, CM, H, W, MSC, MSP, KCA, KSA, VALID, False)
    tl.store(mu + (n * CM + m) * HW + p, mu_t, mask=ok)
    if GLOB:
        acc = acc0
        for c0 in range(0, C, BR):
            c = (c0 + tl.arange(0, BR))[:, None]
            msk = (c < C) & (p < HW)
            t = tl.load(x + n * C * HW + c * SC + p * SP, mask=msk, other=0.0).to(acc0.dtype)
            v = tl.where(msk, t - mu_t, 0.0)
            acc += tl.sum(v * v, axis=0)[None, :]
        s0_t = acc / C
    else:
        t = tl.load(x + n * C * HW + m * SC + p * SP, mask=ok, other=0.0).to(acc0.dtype)
        v = t - mu_t
        s0_t = v * v
    tl.store(s0 + (n * CM + m) * HW + p, s0_t, mask=ok)


def _divide_src(x, mu, s0, targ, y, l1, sig2_ptr, C, CM, H, W, SC, SP, KCB: tl.constexpr, KSB: tl.constexpr,
                VALID: tl.constexpr, GLOB: tl.constexpr, SIG_T: tl.constexpr, SIG2: tl.constexpr,
                EPS: tl.constexpr, SCALE: tl.constexpr, BUG: tl.constexpr, POWER: tl.constexpr,
                L1: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    # t = b B_B s0 * scale + eps + sigma^2 (stored), d = t^-p, y = (x - mu) d; l1[program] = sum |x - mu|
    HW = H * W
    n, m, p, h, w, ok = _tiles(CM, HW, W, BM, BP)
    acc0 = tl.zeros((BM, BP), dtype=mu.dtype.element_ty)
    s = _box(s0, n, m, h, w, ok, acc0, CM, H, W, HW, 1, KCB, KSB, VALID, False)
    if SIG_T:
        sig2 = tl.load(sig2_ptr).to(acc0.dtype)
    else:
        sig2 = SIG2
    t = s * (BUG * SCALE) + EPS + sig2
    d = _divisor(t, POWER)
    tl.store(targ + (n * CM + m) * HW + p, t, mask=ok)
    mu_t = tl.load(mu + (n * CM + m) * HW + p, mask=ok, other=0.0)
    a1 = acc0
    if GLOB:
        for c0 in range(0, C, BR):
            c = (c0 + tl.arange(0, BR))[:, None]
            msk = (c < C) & (p < HW)
            off = n * C * HW + c * SC + p * SP
            v = tl.where(msk, tl.load(x + off, mask=msk, other=0.0).to(acc0.dtype) - mu_t, 0.0)
            tl.store(y + off, (v * d).to(y.dtype.element_ty), mask=msk)
            if L1:
                a1 += tl.sum(tl.abs(v), axis=0)[None, :]
    else:
        off = n * C * HW + m * SC + p * SP
        v = tl.where(ok, tl.load(x + off, mask=ok, other=0.0).to(acc0.dtype) - mu_t, 0.0)
        tl.store(y + off, (v * d).to(y.dtype.element_ty), mask=ok)
        if L1:
            a1 += tl.abs(v)
    if L1:
        tl.store(l1 + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(a1, axis=1), axis=0))


def _divisor_src(t, POWER: tl.constexpr):
    # d = t^-p
    if POWER == 0.5:
        d = 1.0 / tl.sqrt(t)
    else:
        d = tl.exp(tl.log(t) * -POWER)
    return d


def _gstat_src(x, gy, mu, targ, gsb, sg, ssg, gtp, C, CM, H, W, SC, SP, SB: tl.constexpr, POWER: tl.constexpr,
               GLOB: tl.constexpr, L1: tl.constexpr, SIG_T: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr,
               BP: tl.constexpr):
    # backward 1, per stat position: gsb = b scale dL/dt (dL/dt = -p d / t * R^T-sum of gy v), sg = sum gy,
    # ssg = sum sign(v) (over the field's channels), gtp[program] = sum dL/dt (sigma^2's gradient)
    HW = H * W
    n, m, p, h, w, ok = _tiles(CM, HW, W, BM, BP)
    acc0 = tl.zeros((BM, BP), dtype=mu.dtype.element_ty)
    so = (n * CM + m) * HW + p
    mu_t = tl.load(mu + so, mask=ok, other=0.0)
    t = tl.load(targ + so, mask=ok, other=1.0)
    gd = acc0
    sgy = acc0
    ssn = acc0
    if GLOB:
        for c0 in range(0, C, BR):
            c = (c0 + tl.arange(0, BR))[:, None]
            msk = (c < C) & (p < HW)
            off = n * C * HW + c * SC + p * SP
            v = tl.where(msk, tl.load(x + off, mask=msk, other=0.0).to(acc0.dtype) - mu_t, 0.0)
            g = tl.load(gy + off, mask=msk, other=0.0).to(acc0.dtype)
            gd += tl.sum(g * v, axis=0)[None, :]
            sgy += tl.sum(g, axis=0)[None, :]
            if L1:
                ssn += tl.sum((v > 0).to(acc0.dtype) - (v < 0).to(acc0.dtype), axis=0)[None, :]
    else:
        off = n * C * HW + m * SC + p * SP
        v = tl.where(ok, tl.load(x + off, mask=ok, other=0.0).to(acc0.dtype) - mu_t, 0.0)
        g = tl.load(gy + off, mask=ok, other=0.0).to(acc0.dtype)
        gd += g * v
        sgy += g
        if L1:
            ssn += (v > 0).to(acc0.dtype) - (v < 0).to(acc0.dtype)
    gt = tl.where(ok, gd * _divisor(t, POWER) / t * -POWER, 0.0)
    tl.store(gsb + so, gt * SB, mask=ok)
    tl.store(sg + so, sgy, mask=ok)
    if L1:
        tl.store(ssg + so, ssn, mask=ok)
    if SIG_T:
        tl.store(gtp + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(gt, axis=1), axis=0))


def _gmid_src(m0, mu, targ, gsb, sg, ssg, gl1, gs0, gmu, CM, H, W, MSC, MSP, KCB: tl.constexpr, KSB: tl.constexpr,
              VALID: tl.constexpr, POWER: tl.constexpr, L1: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr):
    # backward 2, per stat position: gs0 = B_B^T gsb (dL/d(R v^2)), gmu = -(sum over the field's channels of gv)
    HW = H * W
    n, m, p, h, w, ok = _tiles(CM, HW, W, BM, BP)
    acc0 = tl.zeros((BM, BP), dtype=mu.dtype.element_ty)
    gs0_t = _box(gsb, n, m, h, w, ok, acc0, CM, H, W, HW, 1, KCB, KSB, VALID, True)
    so = (n * CM + m) * HW + p
    d = _divisor(tl.load(targ + so, mask=ok, other=1.0), POWER)
    m0_t = tl.load(m0 + n * CM * HW + m * MSC + p * MSP, mask=ok, other=0.0).to(acc0.dtype)
    v_mean = m0_t - tl.load(mu + so, mask=ok, other=0.0)
    gmu_t = -(d * tl.load(sg + so, mask=ok, other=0.0) + 2.0 * gs0_t * v_mean)
    if L1:
        gmu_t -= tl.load(gl1).to(acc0.dtype) * tl.load(ssg + so, mask=ok, other=0.0)
    tl.store(gs0 + so, gs0_t, mask=ok)
    tl.store(gmu + so, gmu_t, mask=ok)


def _gx_src(x, gy, mu, targ, gs0, gmu, gl1, gx, C, CM, H, W, SC, SP, KCA: tl.constexpr, KSA: tl.constexpr,
            VALID: tl.constexpr, POWER: tl.constexpr, GLOB: tl.constexpr, L1: tl.constexpr, BM: tl.constexpr,
            BR: tl.constexpr, BP: tl.constexpr):
    # backward 3: gx = gy d + 2 v gs0 / CR + gl1 sign(v) + (B_A^T gmu) / CR   (CR: channels per stat position)
    HW = H * W
    n, m, p, h, w, ok = _tiles(CM, HW, W, BM, BP)
    acc0 = tl.zeros((BM, BP), dtype=mu.dtype.element_ty)
    gm0 = _box(gmu, n, m, h, w, ok, acc0, CM, H, W, HW, 1, KCA, KSA, VALID, True)
    so = (n * CM + m) * HW + p
    mu_t = tl.load(mu + so, mask=ok, other=0.0)
    d = _divisor(tl.load(targ + so, mask=ok, other=1.0), POWER)
    if GLOB:
        g2 = tl.load(gs0 + so, mask=ok, other=0.0) * 2.0 / C  # (not 2.0 / C first: a float32 scalar)
        gm0 = gm0 / C
    else:
        g2 = tl.load(gs0 + so, mask=ok, other=0.0) * 2.0
    if L1:
        gl = tl.load(gl1).to(acc0.dtype)
    if GLOB:
        for c0 in range(0, C, BR):
            c = (c0 + tl.arange(0, BR))[:, None]
            msk = (c < C) & (p < HW)
            off = n * C * HW + c * SC + p * SP
            v = tl.load(x + off, mask=msk, other=0.0).to(acc0.dtype) - mu_t
            g = tl.load(gy + off, mask=msk, other=0.0).to(acc0.dtype) * d + v * g2 + gm0
            if L1:
                g += gl * ((v > 0).to(acc0.dtype) - (v < 0).to(acc0.dtype))
            tl.store(gx + off, g.to(gx.dtype.element_ty), mask=msk)
    else:
        off = n * C * HW + m * SC + p * SP
        v = tl.load(x + off, mask=ok, other=0.0).to(acc0.dtype) - mu_t
        g = tl.load(gy + off, mask=ok, other=0.0).to(acc0.dtype) * d + v * g2 + gm0
        if L1:
            g += gl * ((v > 0).to(acc0.dtype) - (v < 0).to(acc0.dtype))
        tl.store(gx + off, g.to(gx.dtype.element_ty), mask=ok)


def _kernels() -> dict:
    """Build the kernels (imports Triton; once per process)."""
    if _KERNELS:
        return _KERNELS
    try:
        import triton
        import triton.language as language
    except ImportError as e:
        raise ImportError(f"DivisiveNorm(impl='triton') needs the triton package ({INSTALL_HINT}): {e}") from e
    g = globals()
    g["tl"] = language
    g["_count"] = triton.jit(_count_src)
    g["_box"] = triton.jit(_box_src)
    g["_tiles"] = triton.jit(_tiles_src)
    g["_divisor"] = triton.jit(_divisor_src)
    built = {name: triton.jit(fn) for name, fn in (("mean", _mean_src), ("centre", _centre_src),
                                                    ("divide", _divide_src), ("gstat", _gstat_src),
                                                    ("gmid", _gmid_src), ("gx", _gx_src))}
    built["interpret"] = bool(triton.knobs.runtime.interpret)
    built["cdiv"] = triton.cdiv
    _KERNELS.update(built)
    return _KERNELS


_POINTERS = ("x", "y", "gy", "gx", "m0", "mu", "s0", "targ", "l1", "sig2_ptr", "gsb", "sg", "ssg", "gtp", "gl1", "gs0",
             "gmu")
_TRITON_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def compile_for(arch: int = 90, dtypes=("float32", "bfloat16", "float64"), minimal: bool = False) -> int:
    """Compile the kernels' variants for an NVIDIA GPU of compute capability ``arch`` (90: H100/H200) without a
    GPU: Triton's compiler to PTX, then ``ptxas`` to a cubin. This checks on a CPU machine what the interpreter
    cannot (types, lowering, float64/bfloat16 support, register allocation); it says nothing about speed.

    Needs the compiler, not the interpreter: ``TRITON_INTERPRET`` unset when the kernels are first built in this
    process. For each input dtype in ``dtypes`` and both field kinds it compiles the channel-mean kernel, the centring
    kernel and, with and without a learned sigma and the L1 term, the output kernel and the three backward kernels
    (``minimal``: one of the two per field kind, so that every branch still compiles once: 11 per dtype instead of
    19). Returns the number of variants compiled; the first failure raises Triton's error."""
    k = _kernels()
    if k["interpret"]:
        raise RuntimeError("compile_for: the kernels were built for Triton's interpreter (TRITON_INTERPRET=1); run "
                           "it in a process without TRITON_INTERPRET")
    bad = [d for d in dtypes if d not in _TRITON_DTYPES]
    if bad:
        raise ValueError(f"dtypes: unknown dtype {bad[0]!r}; allowed values are {list(_TRITON_DTYPES)}")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", int(arch), 32)
    count = 0
    for dtype in dtypes:
        xdt = _TRITON_DTYPES[dtype]
        acc = "fp64" if xdt == "fp64" else "fp32"
        for glob in (True, False):
            bm, br, bp = _blocks(64, 1024, glob, None)
            tiles = dict(BM=bm, BR=br, BP=bp)
            kc = 1 if glob else 3
            ptrs = dict.fromkeys(_POINTERS, acc)
            ptrs.update(x=xdt, y=xdt, gy=xdt, gx=xdt, sig2_ptr="fp32", m0=acc if glob else xdt)
            variants = [("mean", dict(BR=br, BP=bp))] if glob else []
            variants.append(("centre", dict(KCA=kc, KSA=5, VALID=False, GLOB=glob, **tiles)))
            options = ((True, True, 0.5, True), (False, False, 0.75, False))
            if minimal:
                options = options[:1] if glob else options[1:]
            for sig_t, l1, power, valid in options:
                variants += [
                    ("divide", dict(KCB=kc, KSB=3, VALID=valid, GLOB=glob, SIG_T=sig_t, SIG2=0.25, EPS=1e-5,
                                    SCALE=1.0, BUG=1.96, POWER=power, L1=l1, **tiles)),
                    ("gstat", dict(SB=1.96, POWER=power, GLOB=glob, L1=l1, SIG_T=sig_t, **tiles)),
                    ("gmid", dict(KCB=kc, KSB=3, VALID=valid, POWER=power, L1=l1, BM=bm, BP=bp)),
                    ("gx", dict(KCA=kc, KSA=5, VALID=valid, POWER=power, GLOB=glob, L1=l1, **tiles))]
            for name, consts in variants:
                fn = k[name]
                sig = {a: "constexpr" if a in consts else ("*" + ptrs[a] if a in _POINTERS else "i32")
                       for a in fn.arg_names}
                out = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
                if "cubin" not in out.asm:
                    raise RuntimeError(f"compile_for: no cubin for kernel {name!r} ({dtype})")
                count += 1
    return count


def _pow2(n: int, cap: int) -> int:
    return max(1, min(cap, 1 << max(0, int(n) - 1).bit_length()))


def _blocks(C: int, HW: int, glob: bool, blocks):
    """Tile sizes (BM map channels, BR channels per chunk, BP positions); ``blocks`` = (channels, positions)
    overrides the defaults (powers of two)."""
    bc, bp = blocks if blocks is not None else (None, None)
    bp = bp or _pow2(HW, 128)
    bc = bc or _pow2(C, 32 if glob else 8)
    for name, b in (("channels", bc), ("positions", bp)):
        if b < 1 or b & (b - 1):
            raise ValueError(f"blocks: the {name} block must be a power of two >= 1, got {b}")
    return (1, bc, bp) if glob else (bc, 1, bp)


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
        k = _kernels()
        N, C, H, W = x.shape
        HW = H * W
        CM = 1 if geom.glob else C
        _, SC, SP = _strides(x)
        BM, BR, BP = _blocks(C, HW, geom.glob, blocks)
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
        k["divide"][grid](x, mu, s0, targ, y, l1, sig2 if sig_t else l1, C, CM, H, W, SC, SP, KCB=geom.kcb, KSB=geom.ksb,
                          VALID=geom.valid, GLOB=geom.glob, SIG_T=sig_t, SIG2=0.0 if sig_t else float(sig2),
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
        k = _kernels()
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
    k = _kernels()
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


__all__ = ["INSTALL_HINT", "SCOPE", "available", "check", "compile_for", "divisive_norm", "interpreted", "supported",
           "unsupported_reason"]
