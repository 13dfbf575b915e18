"""Second derivatives: ``gradgradcheck`` in fp64 for every preset on every path, and Hessian-vector products
against the plain-op composition.

Gradient penalties (WGAN-GP, R1), MAML and Hessian-vector products differentiate the backward pass. The general
path's autograd Functions must therefore be exact to the second derivative, like torch's own normalization
layers (whose double backward the fused path inherits). Covered here: every preset on the general path, on the
native path where it has one and on the band path (plain ops) where it applies, in train and eval mode (running
statistics), a learned sigma, the L1 penalty (``alpha > 0``: its gradient is differentiated too), unequal
summation/suppression windows under every border rule, even windows (TensorFlow SAME), channel windows and a
channel x space window. The compiled path raises on double backward (``tests/test_compile.py``).

Shapes are small; the sweep runs ``gradgradcheck`` in fast mode (random projections of the second derivative,
which any missing second-order term fails), a few cases in full mode.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from dnlib import NormSpec, list_norms, make_norm, sparse_penalty
from dnlib.norms.functional import band_supported, divisive_norm, divisive_norm_reference
from dnlib.norms.norm import DivisiveNorm, fused_kind
from dnlib.norms.presets import PRESETS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CS = "channel,space"


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()


def _as_function(m: DivisiveNorm):
    """``m`` as a function of (x, *parameters) returning y and, with alpha in training, the L1 penalty; and the
    parameters (affine weight/bias, learned sigma) as fp64 leaves, so that their second derivatives are checked."""
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().double().requires_grad_() for _, p in m.named_parameters()]
    if m.affine:  # non-trivial affine values
        g = torch.Generator().manual_seed(3)
        for n, p in zip(names, params):
            if n in ("weight", "bias"):
                with torch.no_grad():
                    p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)

    def fn(x, *ps):
        y = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        if m.alpha and m.training:
            return y, sparse_penalty(m)
        return y
    return fn, params


def _check(m: DivisiveNorm, x, fast=True):
    m = m.double()
    fn, params = _as_function(m)
    inputs = (x, *params)
    assert gradcheck(fn, inputs, fast_mode=fast)
    assert gradgradcheck(fn, inputs, fast_mode=fast)


def _preset_kw(name):
    kw = {"groups": 2} if name == "gn" else {}
    return kw


def _shape(name):
    return (3, 6) if name.startswith("dn-1d") else (3, 4, 3, 3)


def _cases():
    # presets built by their own module (GDN: its beta/gamma sit on the reparameterization's bound at init, where a
    # numerical second derivative cannot match) are checked in tests/test_gdn.py with the parameters off the bound
    out = []
    for name in [n for n in list_norms() if PRESETS[n].module is None]:
        spec = make_norm(name, 4, **_preset_kw(name)).spec
        impls = ["general"] + (["auto"] if fused_kind(spec) else []) + (["band"] if band_supported(spec) else [])
        for impl in impls:
            for alpha in (0.0, 0.1):
                out.append(pytest.param(name, impl, True, alpha, id=f"{name}-{impl}-train-a{alpha:g}"))
            if spec.pools_batch:
                out.append(pytest.param(name, impl, False, 0.0, id=f"{name}-{impl}-eval"))
    return out


@pytest.mark.parametrize("name,impl,train,alpha", _cases())
def test_gradgradcheck_every_preset_every_path(name, impl, train, alpha):
    m = make_norm(name, _shape(name)[1], impl=impl, alpha=alpha, **_preset_kw(name)).double()
    if not train:  # running statistics that differ from the batch's
        with torch.no_grad():
            for _ in range(2):
                m(_x(_shape(name), seed=5) * 1.5 + 0.3)
        m.eval()
    _check(m, _x(_shape(name)))


@pytest.mark.parametrize("name", [n for n in list_norms()
                                  if PRESETS[n].module is None and make_norm(n, 4, **_preset_kw(n)).spec.divide])
def test_gradgradcheck_learned_sigma_with_penalty(name):
    m = make_norm(name, _shape(name)[1], learn_sigma=True, sigma=0.7, alpha=0.1, **_preset_kw(name))
    assert m.sigma is not None and m.fused is None
    _check(m, _x(_shape(name)))


WINDOWED = [
    # unequal spatial windows under every border rule (the reference border's divisor bug included)
    *[pytest.param(NormSpec(CS, CS, {"space": a}, {"space": b}, sigma=0.5, border=bd), (2, 3, 5, 4),
                   id=f"space{a}x{b}-{bd}") for bd in ("valid", "zeros", "reference") for a, b in ((3, 5), (5, 3))],
    # even windows: TensorFlow SAME padding (reference border only)
    pytest.param(NormSpec(CS, CS, {"space": 2}, {"space": 4}, sigma=0.5, border="reference"), (2, 3, 5, 4),
                 id="space2x4-reference"),
    # channel windows (the 1-D DN of RNN cells), unequal, every border, on (N, C) and (N, C, L)
    *[pytest.param(NormSpec("channel", "channel", {"channel": 3}, {"channel": 5}, sigma=1.0, border=bd), shape,
                   id=f"channel3x5-{bd}-{len(shape)}d") for bd in ("valid", "zeros", "reference")
      for shape in ((3, 7), (2, 6, 3))],
    pytest.param(NormSpec("channel", "channel", {"channel": 4}, {"channel": 2}, sigma=1.0, border="reference"),
                 (3, 7), id="channel4x2-reference"),
    # a channel x space window, a mean-only window, a suppression-only window with power 3/4 (LRN-like)
    pytest.param(NormSpec(CS, CS, {"channel": 3, "space": 3}, {"channel": 5, "space": 3}, sigma=0.5),
                 (2, 5, 4, 4), id="channel-space"),
    pytest.param(NormSpec(CS, None, {"space": 3}, border="zeros"), (2, 3, 4, 4), id="mean-only"),
    pytest.param(NormSpec(None, "channel", None, {"channel": 3}, sigma=1.0, power=0.75, sup_scale=0.5),
                 (2, 5, 3), id="suppression-only"),
    # a global suppression field beside a local summation window (the non-shared Function)
    pytest.param(NormSpec(CS, "channel", {"space": 3}, None, sigma=0.5, border="reference"), (2, 3, 4, 4),
                 id="space3-global-sup"),
]


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("spec,shape", WINDOWED)
def test_gradgradcheck_windows(spec, shape, learn_sigma):
    m = DivisiveNorm(shape[1], spec.replace(learn_sigma=learn_sigma), affine=True, alpha=0.1 if spec.centre else 0.0,
                     impl="general")
    _check(m, _x(shape))


@pytest.mark.parametrize("name,shape", [("dn", (2, 3, 4, 4)), ("bn", (3, 2, 3, 3)), ("dn-1d", (2, 7))])
def test_gradgradcheck_full_mode(name, shape):
    """The full Jacobian of the backward pass (not only random projections) on the general path."""
    kw = dict(window=3) if name.startswith("dn") else {}
    m = make_norm(name, shape[1], impl="general", alpha=0.1, learn_sigma=True, sigma=0.6, **kw)
    _check(m, _x(shape), fast=False)


def test_gradgradcheck_sigma_alone():
    """Only sigma requires grad (the input is data): the Functions' backward returns no input gradient."""
    x = _x((2, 3, 4, 4)).detach()
    for spec in (make_norm("dn", 3).spec, make_norm("ln", 3).spec, make_norm("dn-1d", 3, window=3).spec):
        s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        assert gradgradcheck(lambda s, spec=spec: divisive_norm(x, spec, s), (s,))


def _hvp(f, x, w, u):
    """u^T H of L = <f(x), w>: d/dx <dL/dx, u>, through a create_graph backward."""
    (g,) = torch.autograd.grad((f(x) * w).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g * u).sum(), x, allow_unused=True)
    return torch.zeros_like(x) if h is None else h


HVP_CASES = [
    ("dn", dict(window=3, sigma=0.5), (3, 4, 5, 5)),
    ("dn", dict(sum_window=3, sup_window=5, border="reference", sigma=0.5), (3, 4, 5, 5)),
    ("bn", dict(impl="general"), (3, 4, 5, 5)),
    ("bn", dict(impl="general", learn_sigma=True, sigma=0.7), (3, 4, 5, 5)),
    ("ln", dict(impl="general"), (3, 4, 5, 5)),
    ("lrn", {}, (3, 6, 5, 5)),
    ("rms", dict(impl="general"), (3, 4, 5, 5)),
    ("dn-1d", dict(window=5), (3, 12)),
]


@pytest.mark.parametrize("name,kw,shape", HVP_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(HVP_CASES)])
def test_hessian_vector_product_matches_plain_ops(name, kw, shape):
    """d/dx <dL/dx, u> of the module equals that of the same math composed of plain autograd ops (double
    backward of torch's own ops); and so does the gradient of a gradient penalty |dL/dx|^2 w.r.t. sigma."""
    m = make_norm(name, shape[1], **kw).double()
    g = torch.Generator().manual_seed(1)
    x = _x(shape)
    w, u = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))

    def ref(t):
        return m._affine(divisive_norm_reference(t, m.spec, m.sigma), t.dtype)

    a, b = _hvp(m, x, w, u), _hvp(ref, x, w, u)
    assert b.norm() > 0
    assert ((a - b).norm() / b.norm()).item() < 1e-10
    if m.sigma is not None:
        pa, pb = ((torch.autograd.grad((f(x) * w).sum(), x, create_graph=True)[0] ** 2).sum() for f in (m, ref))
        ga, gb = torch.autograd.grad(pa, m.sigma)[0], torch.autograd.grad(pb, m.sigma)[0]
        assert abs((ga - gb).item()) < 1e-10 * max(1.0, abs(gb.item()))
