"""The Triton kernels of ``DivisiveNorm(impl="triton")`` (:mod:`dnlib.norms.triton_dn` launches them): three forward
kernels (channel means; the local mean and ``R(v^2)``; the output and the L1 statistic) and three backward kernels
(per-position sums; the transposed box filters; ``gx``), written as plain functions and made Triton kernels by
:func:`kernels` on first use, so that importing this module does not import Triton. :func:`tile_sizes` picks their
tiles; :func:`compile_for` compiles every variant for a GPU architecture on a machine without a GPU (Triton's
compiler and ``ptxas``), which checks what Triton's CPU interpreter cannot.
"""
from __future__ import annotations

import os

__all__ = ["INSTALL_HINT", "kernels", "built_interpreted", "interpret_env", "tile_sizes", "compile_for",
           "compile_kernel"]

#: How to install the optional dependency (named in every error that needs it).
INSTALL_HINT = "pip install dnlib[triton]"


def interpret_env() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read when the kernels are first built)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def built_interpreted() -> bool | None:
    """Whether the kernels, once built in this process, run in Triton's interpreter; None before they are built."""
    return _KERNELS["interpret"] if _KERNELS else None


# Written as plain functions and made Triton kernels by kernels() on first use, so that importing this module does
# not import Triton. ``tl`` and the helpers' names are bound in this module's globals there (Triton resolves a
# kernel's names through its globals, in the compiler and in the interpreter alike).
tl = None
_box = _count = _tiles = _divisor = _chunk = _centred = None
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


def _chunk_src(n, p, c0, C, HW, SC, SP, BR: tl.constexpr):
    # the chunk of BR channels from c0 at the positions p (1, BP) of image n: its offsets into an input map (N, C, H,
    # W; channel stride SC, position stride SP) and its in-range mask
    c = (c0 + tl.arange(0, BR))[:, None]
    return n * C * HW + c * SC + p * SP, (c < C) & (p < HW)


def _centred_src(x, off, msk, mu_t, acc0):
    # v = x - mu at the offsets, in acc0's dtype; 0 where masked
    return tl.where(msk, tl.load(x + off, mask=msk, other=0.0).to(acc0.dtype) - mu_t, 0.0)


def _mean_src(x, m0, C, HW, SC, SP, BR: tl.constexpr, BP: tl.constexpr):
    # m0[n, 0, p] = mean over the C channels of x[n, :, p] (the fields that pool all channels). x: channel stride SC,
    # position stride SP (NCHW: HW, 1; channels_last: 1, C); the stat maps are NCHW.
    n = tl.program_id(0)
    p = (tl.program_id(1) * BP + tl.arange(0, BP))[None, :]
    acc = tl.zeros((1, BP), dtype=m0.dtype.element_ty)
    for c0 in range(0, C, BR):
        off, msk = _chunk(n, p, c0, C, HW, SC, SP, BR)
        t = tl.load(x + off, mask=msk, other=0.0).to(acc.dtype)
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
            off, msk = _chunk(n, p, c0, C, HW, SC, SP, BR)
            v = _centred(x, off, msk, mu_t, acc0)
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
    t = s * (BUG * SCALE) + EPS
    if SIG_T:
        t += tl.load(sig2_ptr).to(acc0.dtype)
    else:  # the constexpr added to the tensor itself, in its dtype (exact in float64); a local bound to it, as
        t += SIG2  # before, was a float32 scalar: sigma^2 rounded to float32 for float64 inputs
    d = _divisor(t, POWER)
    tl.store(targ + (n * CM + m) * HW + p, t, mask=ok)
    mu_t = tl.load(mu + (n * CM + m) * HW + p, mask=ok, other=0.0)
    a1 = acc0
    if GLOB:
        for c0 in range(0, C, BR):
            off, msk = _chunk(n, p, c0, C, HW, SC, SP, BR)
            v = _centred(x, off, msk, mu_t, acc0)
            tl.store(y + off, (v * d).to(y.dtype.element_ty), mask=msk)
            if L1:
                a1 += tl.sum(tl.abs(v), axis=0)[None, :]
    else:
        off = n * C * HW + m * SC + p * SP
        v = _centred(x, off, ok, mu_t, acc0)
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
            off, msk = _chunk(n, p, c0, C, HW, SC, SP, BR)
            v = _centred(x, off, msk, mu_t, acc0)
            g = tl.load(gy + off, mask=msk, other=0.0).to(acc0.dtype)
            gd += tl.sum(g * v, axis=0)[None, :]
            sgy += tl.sum(g, axis=0)[None, :]
            if L1:
                ssn += tl.sum((v > 0).to(acc0.dtype) - (v < 0).to(acc0.dtype), axis=0)[None, :]
    else:
        off = n * C * HW + m * SC + p * SP
        v = _centred(x, off, ok, mu_t, acc0)
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
            off, msk = _chunk(n, p, c0, C, HW, SC, SP, BR)
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


def kernels() -> dict:
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
    g["_chunk"] = triton.jit(_chunk_src)
    g["_centred"] = triton.jit(_centred_src)
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
    k = kernels()
    if k["interpret"]:
        raise RuntimeError("compile_for: the kernels were built for Triton's interpreter (TRITON_INTERPRET=1); run "
                           "it in a process without TRITON_INTERPRET")
    bad = [d for d in dtypes if d not in _TRITON_DTYPES]
    if bad:
        raise ValueError(f"dtypes: unknown dtype {bad[0]!r}; allowed values are {list(_TRITON_DTYPES)}")
    count = 0
    for dtype in dtypes:
        for glob in (True, False):
            bm, br, bp = tile_sizes(64, 1024, glob, None)
            tiles = dict(BM=bm, BR=br, BP=bp)
            kc = 1 if glob else 3
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
                out = compile_kernel(name, consts, dtype, arch, glob=glob)
                if "cubin" not in out.asm:
                    raise RuntimeError(f"compile_for: no cubin for kernel {name!r} ({dtype})")
                count += 1
    return count


def compile_kernel(name: str, consts: dict, dtype: str = "float32", arch: int = 90, glob: bool = True):
    """Triton's compiled kernel ``name`` of :func:`kernels` (its ``asm``: ``ptx``, ``cubin``...) for compute
    capability ``arch``, without a GPU: ``consts`` its constexpr arguments, the pointers typed for input ``dtype``
    (the data in it, the statistics in its accumulation dtype: float64 for float64, else float32; ``glob``: the
    global field's layout of ``m0``), the other arguments i32. Needs the compiler, not the interpreter (as
    :func:`compile_for`, which compiles every variant with it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    xdt = _TRITON_DTYPES[dtype]
    acc = "fp64" if xdt == "fp64" else "fp32"
    ptrs = dict.fromkeys(_POINTERS, acc)
    ptrs.update(x=xdt, y=xdt, gy=xdt, gx=xdt, sig2_ptr="fp32", m0=acc if glob else xdt)
    fn = kernels()[name]
    sig = {a: "constexpr" if a in consts else ("*" + ptrs[a] if a in _POINTERS else "i32") for a in fn.arg_names}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", int(arch), 32))


def _pow2(n: int, cap: int) -> int:
    return max(1, min(cap, 1 << max(0, int(n) - 1).bit_length()))


def tile_sizes(C: int, HW: int, glob: bool, blocks):
    """Tile sizes (BM map channels, BR channels per chunk, BP positions); ``blocks`` = (channels, positions)
    overrides the defaults (powers of two)."""
    bc, bp = blocks if blocks is not None else (None, None)
    bp = bp or _pow2(HW, 128)
    bc = bc or _pow2(C, 32 if glob else 8)
    for name, b in (("channels", bc), ("positions", bp)):
        if b < 1 or b & (b - 1):
            raise ValueError(f"blocks: the {name} block must be a power of two >= 1, got {b}")
    return (1, bc, bp) if glob else (bc, 1, bp)
