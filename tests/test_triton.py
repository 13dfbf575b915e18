"""``DivisiveNorm(impl="triton")`` (:mod:`dnlib.norms.triton_dn`): the Triton kernels' values and gradients (input,
learned sigma, the L1 term) against the general path, in float64, float32 and bfloat16, for both field kinds (all
channels, channel window), every border rule, odd and even windows and shapes that leave partial tiles.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``):
numpy per program, so the shapes are tiny and the tile sizes small (several programs per axis, partial tiles).
"""
import os
import subprocess
import sys

import pytest
import torch

from dnlib import DivisiveNorm, NormSpec, make_norm, sparse_penalty
from dnlib.norms import functional as DF
from dnlib.norms import triton_dn

pytest.importorskip("triton")
pytestmark = [pytest.mark.skipif(not triton_dn.available(), reason="Triton cannot run here (no GPU, no interpreter)"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

CS = "channel,space"
# : the interpreter computes on CPU tensors, the compiled kernels on CUDA tensors (a GPU machine without
# TRITON_INTERPRET)
DEV = "cpu" if triton_dn.interpreted() else "cuda"
CASES = {
    # name: (spec, shape, blocks (channels, positions) or None)
    "dn3-valid": (NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.5), (2, 5, 3, 4), (4, 8)),
    "dn5-3-zeros": (NormSpec(CS, CS, {"space": 5}, {"space": 3}, sigma=0.5, border="zeros"), (1, 3, 5, 6), None),
    "even-reference-eps-none": (NormSpec(CS, CS, {"space": 4}, {"space": 2}, sigma=0.5, border="reference",
                                         eps=None), (2, 3, 5, 4), (2, 16)),
    "sr-5-7-reference": (NormSpec(CS, CS, {"space": 5}, {"space": 7}, sigma=1.0, eps=0.0, border="reference"),
                         (1, 4, 6, 7), None),
    "chwin-valid-power": (NormSpec(CS, CS, {"channel": 3, "space": 3}, {"channel": 5, "space": 3}, sigma=0.5,
                                   power=0.75, sup_scale=2.0), (1, 5, 2, 3), (4, 8)),
    "chwin-even-reference": (NormSpec("channel", "channel", {"channel": 2}, {"channel": 4}, sigma=0.5,
                                      border="reference"), (2, 6, 2, 3), (4, 4)),
    "all-channels-only": (NormSpec("channel", "channel", sigma=0.3), (2, 3, 3, 3), (2, 4)),
}


def _general(x, spec, sigma):
    """The general path (dnlib.norms.functional's hand-written Function): y and the L1 sum sum|x - E_A x|."""
    y, v, _, _ = DF.divisive_norm_stats(x, spec, sigma)
    return y, v.abs().sum()


def _run(fn, x, sigma, gy, w1):
    y, l1 = fn(x, sigma)
    gx, gs = torch.autograd.grad((y * gy).sum() + w1 * l1, [x, sigma])
    return y.detach(), l1.detach(), gx, gs


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(DEV, dtype).requires_grad_()
    gy = torch.randn(shape, generator=g, dtype=torch.float64).to(DEV, dtype)
    sigma = torch.tensor(0.7, dtype=torch.float64).to(DEV, dtype).requires_grad_()
    return x, gy, sigma


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_values_and_all_gradients_float64(name):
    """y, the L1 sum, and the gradients of x and a learned sigma through both equal the general path (1e-12)."""
    spec, shape, blocks = CASES[name]
    assert triton_dn.supported(spec)
    x, gy, sigma = _inputs(shape, torch.float64)
    ours = _run(lambda x, s: triton_dn.divisive_norm(x, spec, s, l1=True, blocks=blocks), x, sigma, gy, 0.3)
    ref = _run(lambda x, s: _general(x, spec, s), x, sigma, gy, 0.3)
    for what, a, b in zip(("y", "l1", "grad x", "grad sigma"), ours, ref):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, w=what: f"{name} {w}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dn3-valid", "chwin-even-reference"])
def test_float32_and_bfloat16_against_general_float64(name):
    """float32 in and out (tolerance of float32 accumulation) and bfloat16 in and out (one bfloat16 rounding of
    the output and of the gradient; the kernels compute in float32)."""
    spec, shape, blocks = CASES[name]
    x64, gy64, s64 = _inputs(shape, torch.float64, seed=1)
    ref = _run(lambda x, s: _general(x, spec, s), x64, s64, gy64, 0.3)
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
        x, gy, sigma = (t.detach().to(dtype).requires_grad_(t.requires_grad) for t in (x64, gy64, s64))
        ours = _run(lambda x, s: triton_dn.divisive_norm(x, spec, s, l1=True, blocks=blocks), x, sigma, gy, 0.3)
        assert ours[0].dtype == dtype and ours[2].dtype == dtype
        if dtype == torch.bfloat16:  # the reference on the same (rounded) input, in float64
            xr, gyr, sr = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, gy, sigma))
            ref = _run(lambda x, s: _general(x, spec, s), xr, sr, gyr, 0.3)
        for what, a, b in zip(("y", "l1", "grad x", "grad sigma"), ours, ref):
            scale = b.abs().max().item()
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * scale,
                                       msg=lambda m, w=what, d=dtype: f"{name} {d} {w}: {m}")


@pytest.mark.parametrize("name", ["dn3-valid", "chwin-even-reference"])
def test_channels_last_input(name):
    """A channels_last input (the CIFAR recipe's layout on GPUs) is read in place: output and input gradient keep
    the layout and equal the general path (float64)."""
    spec, shape, blocks = CASES[name]
    x, gy, sigma = _inputs(shape, torch.float64, seed=4)
    x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    ours = _run(lambda x, s: triton_dn.divisive_norm(x, spec, s, l1=True, blocks=blocks), x, sigma, gy, 0.3)
    ref = _run(lambda x, s: _general(x, spec, s), x, sigma, gy, 0.3)
    assert ours[0].is_contiguous(memory_format=torch.channels_last) and not ours[0].is_contiguous()
    assert ours[2].is_contiguous(memory_format=torch.channels_last)
    for what, a, b in zip(("y", "l1", "grad x", "grad sigma"), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, w=what: f"{name} {w}: {m}")


def test_gradcheck_tiny():
    """torch.autograd.gradcheck of (y, L1 sum) in x and a learned sigma (finite differences, float64)."""
    spec = NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.5, border="zeros")
    x, _, sigma = _inputs((1, 3, 3, 4), torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda x, s: triton_dn.divisive_norm(x, spec, s, l1=True), (x, sigma),
                                    fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [
    # the CIFAR DN* first layer (reference border, eps 0, the L1 term) with a learned sigma and an affine
    ("dn", dict(window=5, sigma=0.5, eps=0.0, alpha=0.005, border="reference", learn_sigma=True, affine=True)),
    # the SR DN* layer: 5 x 5 summation, 7 x 7 suppression (the reference code's divisor), valid border for once
    ("dn", dict(sum_window=5, sup_window=7, sigma=1.0, alpha=0.1)),
])
def test_module_equals_general_module(name, kw):
    """DivisiveNorm(impl="triton") against impl="general" in training (output, L1 penalty, gradients of the input
    and of every parameter) and in evaluation (output), float32."""
    torch.manual_seed(0)
    a = make_norm(name, 6, impl="general", **kw).to(DEV)
    b = make_norm(name, 6, impl="triton", **kw).to(DEV)
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 6, 5, 7, generator=g) * 2 + 0.5).to(DEV).requires_grad_()
    w = torch.randn(2, 6, 5, 7, generator=g).to(DEV)
    out = []
    for m in (a, b):
        y = m(x)
        pen = sparse_penalty(m)
        gs = torch.autograd.grad((y * w).sum() + pen, [x] + list(m.parameters()))
        out.append((y.detach(), pen.detach(), gs))
    (ya, pa, ga), (yb, pb, gb) = out
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    assert pa.item() > 0 and abs(pa.item() - pb.item()) < 1e-5 * pa.item()
    assert len(ga) == len(gb) == 1 + len(list(a.parameters()))
    for u, v in zip(gb, ga):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)
    assert sparse_penalty(b).item() == 0.0  # no L1 term outside training


def test_partial_gradients():
    """Only sigma's gradient (an input without grad), and only the L1 sum's (y unused), equal the general path."""
    spec, shape, blocks = CASES["dn5-3-zeros"]
    x, gy, sigma = _inputs(shape, torch.float64, seed=5)
    x = x.detach()
    y, _ = triton_dn.divisive_norm(x, spec, sigma, blocks=blocks)
    yr, _ = _general(x, spec, sigma)
    (gs,), (gr,) = (torch.autograd.grad((t * gy).sum(), sigma) for t in (y, yr))
    torch.testing.assert_close(gs, gr, rtol=1e-12, atol=1e-12)
    x.requires_grad_()
    _, l1 = triton_dn.divisive_norm(x, spec, sigma, l1=True, blocks=blocks)
    _, l1r = _general(x, spec, sigma)
    (gx,), (gxr,) = (torch.autograd.grad(t, x) for t in (l1, l1r))
    torch.testing.assert_close(gx, gxr, rtol=1e-12, atol=1e-12)


def test_double_backward_raises():
    """create_graph=True (a gradient penalty) is refused with a pointer to the general path."""
    x, gy, sigma = _inputs((1, 2, 3, 3), torch.float64)
    y, _ = triton_dn.divisive_norm(x, CASES["dn3-valid"][0], sigma)
    with pytest.raises(NotImplementedError, match="double backward.*impl='general'"):
        torch.autograd.grad((y * gy).sum(), x, create_graph=True)


def test_api_and_errors(monkeypatch):
    """supported()/available() for scripts; unsupported specs, ranks and a missing triton are clear errors."""
    assert triton_dn.available()
    assert triton_dn.supported(make_norm("dn", 32).spec) and triton_dn.supported(make_norm("ln2d", 32).spec)
    for name in ("bn", "ln", "gn", "lrn", "dn-ms", "rms2d", "lcn"):
        spec = make_norm(name, 32).spec
        assert not triton_dn.supported(spec)
        with pytest.raises(ValueError, match=r"impl: 'triton' does not compute NormSpec\(.*per-example fields"):
            DivisiveNorm(32, spec, impl="triton")
    mixed = NormSpec(CS, CS, {"space": 3, "channel": 3}, {"space": 3})
    assert "one field pools all channels" in triton_dn.unsupported_reason(mixed)
    assert "Gaussian weights" in triton_dn.unsupported_reason(make_norm("lcn", 4).spec)
    assert triton_dn.supported(NormSpec(CS, CS, {"space": 3}, {"space": 3}, sup_weights={"space": "box"}))
    assert triton_dn.unsupported_reason(NormSpec(CS, CS, {"space": 3}, {"space": 3}, floor="mean")) == "floor='mean'"
    m = make_norm("dn", 4, impl="triton")
    with pytest.raises(ValueError, match=r"input: impl='triton' computes \(N, C, H, W\) inputs, got shape \(2, 4, 5\)"):
        m(torch.randn(2, 4, 5))
    assert m(torch.randn(0, 4, 3, 3)).shape == (0, 4, 3, 3)  # an empty batch: an empty output
    monkeypatch.setitem(sys.modules, "triton", None)  # as if triton were not installed
    assert not triton_dn.available()
    with pytest.raises(ImportError, match=r"pip install dnlib\[triton\]"):
        make_norm("dn", 4, impl="triton")


@pytest.mark.slow
def test_import_dnlib_does_not_import_triton_and_auto_never_picks_it():
    """`import dnlib`, building an impl="triton" module and asking supported()/available() import no triton, and
    impl="auto" runs a supported spec on CPU without the kernels (triton is still not imported after its
    forward and backward)."""
    code = ("import sys, torch, dnlib\n"
            "from dnlib.norms import triton_dn\n"
            "m = dnlib.make_norm('dn', 4, impl='triton')\n"
            "assert triton_dn.supported(m.spec)\n"
            "a = dnlib.make_norm('dn', 4, window=5, sigma=0.5, alpha=0.01)\n"
            "x = torch.randn(2, 4, 6, 6, requires_grad=True)\n"
            "(a(x).sum() + dnlib.sparse_penalty(a)).backward()\n"
            "assert 'triton' not in sys.modules, sorted(k for k in sys.modules if 'triton' in k)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def _compiler_env(tmp_path) -> dict:
    """The environment of a process that compiles the kernels (no interpreter) into a fresh cache at ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    return env


@pytest.mark.slow
def test_kernels_compile_for_an_h100_without_a_gpu(tmp_path):
    """Triton's compiler and ptxas build the float32 kernels for sm_90 (H100/H200) on this CPU machine, every branch
    once: what the interpreter does not check (types, lowering, registers). A fresh cache, so nothing is taken as
    compiled. Without the interpreter a CPU tensor is refused with a clear error."""
    env = _compiler_env(tmp_path)
    code = ("import torch, dnlib\n"
            "from dnlib.norms import triton_dn, triton_kernels\n"
            "print(triton_kernels.compile_for(90, dtypes=('float32',), minimal=True))\n"
            "assert not triton_dn.interpreted() and triton_dn.available() == torch.cuda.is_available()\n"
            "try:\n"
            "    dnlib.make_norm('dn', 4, impl='triton')(torch.randn(1, 4, 3, 3))\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "11", r.stdout
    if not torch.cuda.is_available():
        assert lines[1].startswith("input: the Triton kernels need a CUDA tensor, got one on cpu"), r.stdout


def test_a_fixed_sigma_is_float64_in_float64():
    """A fixed sigma whose square float32 does not hold (0.3^2) keeps float64 exactness: the kernels promise float64
    in float64. Before, sigma^2 reached the divisor rounded to float32 (a constexpr bound to a local): 1.1e-9 off the
    general path here instead of ~1e-16."""
    spec = NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.3, eps=0.0)
    x, _, _ = _inputs((1, 3, 3, 4), torch.float64)
    with torch.no_grad():
        y, _ = triton_dn.divisive_norm(x, spec)
        torch.testing.assert_close(y, _general(x, spec, None)[0], rtol=1e-14, atol=1e-15)


@pytest.mark.slow
def test_the_compiled_float64_kernel_holds_sigma2_exactly(tmp_path):
    """The PTX of the float64 output kernel (compiled for sm_90 without a GPU) holds sigma^2 = 0.09 as the exact
    float64 constant, not its float32 rounding (before: 0d3FB70A3D80000000, the float32 0.09 widened)."""
    env = _compiler_env(tmp_path)
    code = ("from dnlib.norms import triton_kernels as TK\n"
            "consts = dict(KCB=1, KSB=3, VALID=True, GLOB=True, SIG_T=False, SIG2=0.09, EPS=0.0, SCALE=1.0, BUG=1.0,\n"
            "              POWER=0.5, L1=False, BM=1, BR=4, BP=16)\n"
            "print(TK.compile_kernel('divide', consts, 'float64').asm['ptx'].upper())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0D3FB70A3D70A3D70A" in r.stdout and "0D3FB70A3D80000000" not in r.stdout
