"""dnlib.analysis.probes on small cases whose answers are known in closed form (issue 27)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dnlib
from dnlib.analysis import probes
from dnlib.models.plain import PlainCNN


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Quadratic(nn.Module):
    """``L(w) = w^T A w / 2``; its gradient is ``A w`` and its smoothness the largest eigenvalue of ``A``."""

    def __init__(self, a: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(w.clone())

    def loss(self, _model=None, _batch=None):
        return 0.5 * self.w @ self.a @ self.w


def _quadratic(seed=0, d=5):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    eig = torch.tensor([10.0, 4.0, 2.0, 1.0, 0.5])[:d]
    return q @ torch.diag(eig) @ q.T, q, eig


def test_loss_along_a_direction_is_the_quadratic_exactly():
    a, _, _ = _quadratic()
    w0, d = torch.randn(5), torch.randn(5)
    m = Quadratic(a, w0)
    steps = [-1.0, 0.0, 0.3, 2.0]
    got = probes.loss_along(m, m.loss, None, steps, direction=[d])
    want = [float(0.5 * (w0 + t * d) @ a @ (w0 + t * d)) for t in steps]
    assert got == pytest.approx(want, rel=1e-12)
    assert torch.equal(m.w.detach(), w0)                         # restored
    # default direction: the negative gradient, so t > 0 is a gradient-descent step
    g = a @ w0
    got = probes.loss_along(m, m.loss, None, [0.05])
    assert got[0] == pytest.approx(float(0.5 * (w0 - 0.05 * g) @ a @ (w0 - 0.05 * g)), rel=1e-12)


def test_gradient_predictiveness_of_a_quadratic_gives_its_smoothness():
    """Along the top eigenvector the gradient changes by eta * L * ||g||: beta = L = 10 exactly; from any other
    point beta = ||A g|| / ||g|| <= L."""
    a, q, eig = _quadratic()
    m = Quadratic(a, 3.0 * q[:, 0])
    steps = [0.01, 0.05, 0.1]
    sm = probes.gradient_predictiveness(m, m.loss, None, steps)
    g = a @ (3.0 * q[:, 0])
    assert sm.grad_norm == pytest.approx(float(g.norm()), rel=1e-12)
    assert sm.beta == pytest.approx(float(eig.max()), rel=1e-10)
    assert sm.grad_changes == pytest.approx([t * 10.0 * float(g.norm()) for t in steps], rel=1e-10)
    w = 3.0 * q[:, 0]
    assert sm.losses == pytest.approx([float(0.5 * (w - t * g) @ a @ (w - t * g)) for t in steps], rel=1e-12)
    assert sm.loss_range == pytest.approx(max([sm.loss, *sm.losses]) - min([sm.loss, *sm.losses]))
    w1 = torch.randn(5)
    m = Quadratic(a, w1)
    sm = probes.gradient_predictiveness(m, m.loss, None, steps)
    g1 = a @ w1
    assert sm.beta == pytest.approx(float((a @ g1).norm() / g1.norm()), rel=1e-10) and sm.beta < 10.0
    assert sm.as_dict("x_").keys() == {"x_loss_range", "x_grad_change", "x_beta", "x_grad_norm"}


@pytest.mark.slow
def test_largest_stable_lr_of_a_linear_model_is_two_over_l():
    """Full-batch gradient descent on least squares, L = the largest eigenvalue of X^T X / n: stable below 2/L."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, generator=g)
    lmax = float(torch.linalg.eigvalsh(x.T @ x / 64).max())
    model = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    loss = lambda m, _b: 0.5 * ((m(x).squeeze(1) - y) ** 2).mean()  # noqa: E731

    def trains(lr):
        return probes.sgd_is_stable(model, loss, None, lr, steps=400)

    lr = probes.largest_stable_lr(trains, 1e-3, 10.0, iters=40, rtol=1e-4)
    assert lr == pytest.approx(2 / lmax, rel=0.01)
    assert trains(0.98 * 2 / lmax) and not trains(1.02 * 2 / lmax)
    assert torch.equal(model.weight, torch.zeros_like(model.weight))     # trained copies only
    with pytest.raises(ValueError, match="low: training is not stable"):
        probes.largest_stable_lr(trains, 1.1 * 2 / lmax, 10.0)
    with pytest.raises(ValueError, match="low, high"):
        probes.largest_stable_lr(trains, 1.0, 0.5)


def test_is_stable():
    assert probes.is_stable([2.3, 1.0]) and probes.is_stable([2.3, 2.35], tol=0.1)
    assert not probes.is_stable([2.3, 2.5]) and not probes.is_stable([2.3, math.nan]) and not probes.is_stable([])


def _bn_classifier():
    """x (N, 1) -> BN (no affine) -> logits (-z, z): class 1 iff the normalized value is > 0."""
    bn = dnlib.make_norm("bn", 1, affine=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        bn.running_mean.fill_(2.5)
        bn.running_var.fill_(1.25)
    return nn.Sequential(bn, head), bn


def test_train_eval_gap_known_answer():
    """x = 1, 2, 3, 4 with labels 0, 0, 1, 1: running statistics (mean 2.5) classify all four right; batches of
    two ((1, 2), (3, 4)) normalize each pair to (-1, 1) and get 2 and 3 wrong: gap 0.5. One batch of all four
    is the running mean's split again: gap 0."""
    model, bn = _bn_classifier()
    x, y = torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([0, 0, 1, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = probes.train_eval_gap(model, x, y, batch_size=2)
    assert out == {"eval_err": 0.0, "batch_err": 0.5, "gap": 0.5}
    assert probes.train_eval_gap(model, x, y, batch_size=4)["gap"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # running stats restored
    ln = nn.Sequential(nn.Conv2d(3, 4, 3), dnlib.make_norm("ln", 4), nn.Flatten(), nn.Linear(4 * 16, 3))
    xs, ys = torch.randn(10, 3, 6, 6), torch.randint(0, 3, (10,))
    assert probes.train_eval_gap(ln, xs, ys, batch_size=3)["gap"] == 0.0      # no batch field: exactly 0
    with pytest.raises(ValueError, match="batch_size"):
        probes.train_eval_gap(model, x, y, batch_size=0)


def test_train_eval_gap_sees_the_model_as_it_is_in_every_batch():
    """Batch renorm unclipped (rmax, dmax large) normalizes a training batch with the running statistics exactly as
    evaluation does, so a fixed model's gap is 0. The probe let each test batch move the running statistics the
    next one is corrected towards, so the gap was not 0 and depended on the batches' order. Dropout stays off."""
    torch.manual_seed(0)
    brn = dnlib.make_norm("brn", 4, rmax=1e6, dmax=1e6, relax=None)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), brn, nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 16, 3))
    with torch.no_grad():
        brn.running_mean.normal_()
        brn.running_var.uniform_(0.5, 2.0)
    xs, ys = torch.randn(40, 3, 6, 6), torch.randint(0, 3, (40,))
    rng = torch.get_rng_state()
    out = probes.train_eval_gap(model, xs, ys, batch_size=2)
    assert out["gap"] == 0.0 and out == probes.train_eval_gap(model, xs.flip(0), ys.flip(0), batch_size=2)
    assert torch.equal(torch.get_rng_state(), rng)                    # dropout drew nothing


def test_layer_norms_of_a_linear_chain():
    """Three Linear(4, 4) with weight 2I, loss = sum of the output: activations 2, 4, 8 x rms(x); gradients with
    respect to the outputs 4, 2, 1 (each later layer multiplies by 2)."""
    layers = [nn.Linear(4, 4, bias=False) for _ in range(3)]
    for m in layers:
        with torch.no_grad():
            m.weight.copy_(2 * torch.eye(4))
    model = nn.Sequential(*layers)
    x = torch.randn(5, 4)
    rx = float(x.pow(2).mean().sqrt())
    out = probes.layer_norms(model, lambda m, _b: m(x).sum(), None, {f"l{i}": m for i, m in enumerate(layers)})
    assert out["act"] == pytest.approx([2 * rx, 4 * rx, 8 * rx], rel=1e-12)
    assert out["grad"] == pytest.approx([4.0, 2.0, 1.0], rel=1e-12)
    assert all(m.weight.grad is None for m in layers)                 # nothing left behind


@pytest.mark.parametrize("norm,invariant", [("bn", True), ("ln", True), ("gn", True), ("none", False),
                                            ("dn-s", False)])
def test_scale_change_bn_ln_gn_are_invariant_to_the_weights_scale(norm, invariant):
    torch.manual_seed(0)
    kw = {"groups": 2} if norm == "gn" else {}
    if invariant:
        kw.update(eps=0.0, impl="general")   # exactly invariant then (eps > 0: up to eps / variance); torch's
                                             # batch_norm refuses eps 0
    conv = nn.Conv2d(3, 4, 3, bias=False)
    model = nn.Sequential(conv, dnlib.make_norm(norm, 4, **kw), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3,
                                                                                                  bias=False))
    model.train()
    x = torch.randn(8, 3, 8, 8) * 0.1
    change = probes.scale_change(model, x, conv, 10.0)
    if invariant:
        assert change < 1e-12
    elif norm == "none":
        assert change == pytest.approx(9.0, rel=1e-10)               # a positively homogeneous network: x10
    else:
        assert change > 0.1           # sigma = 0.5 against activations of std ~0.1: far from invariant
    with pytest.raises(ValueError, match="factor"):
        probes.scale_change(model, x, conv, -1.0)


@pytest.mark.parametrize("name,kw", [("bn", {}), ("ln", {}), ("gn", {"groups": 2}),
                                     ("dn", {"window": 3, "sigma": 0.5, "eps": 0.0, "border": "reference"})])
def test_detached_statistics_same_forward_gradient_through_x_only(name, kw):
    """With the statistics detached the output and running statistics are unchanged and the gradient is the one
    of the normalizer with its statistics given as constants (its own functional with mean/sup passed)."""
    torch.manual_seed(0)
    a, b = dnlib.make_norm(name, 4, **kw), dnlib.make_norm(name, 4, **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    r = torch.randn(3, 4, 5, 5)
    ya = a(x)
    (ga,) = torch.autograd.grad((ya * r).sum(), x)
    handles = probes.detach_statistics(b)
    yb = b(x)
    (gb,) = torch.autograd.grad((yb * r).sum(), x)
    assert torch.allclose(ya, yb, atol=1e-12)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    from dnlib.norms import functional as DF
    with torch.no_grad():
        _, _, mu, s = DF.divisive_norm_stats(x, b.spec, b.sigma)
    xc = x.detach().clone().requires_grad_()
    ref = DF.divisive_norm_stats(xc, b.spec, b.sigma, mu, s)[0]
    if b.affine:
        ref = ref * b.weight.view(1, -1, 1, 1) + b.bias.view(1, -1, 1, 1)
    (gref,) = torch.autograd.grad((ref * r).sum(), xc)
    assert torch.allclose(gb, gref, atol=1e-10)
    assert not torch.allclose(ga, gb, atol=1e-3)                    # the statistics' own gradient is gone
    for h in handles:
        h.remove()
    (gc,) = torch.autograd.grad((b(x) * r).sum(), x)
    assert torch.allclose(gc, ga, atol=1e-10)


def test_detached_bn_gradient_is_one_over_the_std():
    """BN without affine and statistics detached: dy/dx = 1 / sqrt(var + eps), elementwise per channel."""
    bn = dnlib.make_norm("bn", 2, affine=False)
    probes.detach_statistics(bn)
    x = torch.randn(6, 2, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(bn(x).sum(), x)
    var = x.detach().var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(g, (1 / torch.sqrt(var + 1e-5)).view(1, 2, 1, 1).expand_as(x), atol=1e-12)


def test_preserved_restores_everything():
    model = PlainCNN(10, "bn", depth=3, width=2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with probes.preserved(model):
        model.train()
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plain_cnn_shapes_and_bad_depth():
    m = PlainCNN(10, "ln", depth=7, width=4)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10) and len(m.convs) == len(m.norms) == 7
    assert [c.stride[0] for c in m.convs].count(2) == 2
    with pytest.raises(ValueError, match="depth"):
        PlainCNN(10, depth=2)
