"""GDN, IGDN and GDN1 (dnlib/norms/gdn.py) against naive formulas written here, compressai's forward written inline,
the validity of the reparameterized parameters after an optimizer step, the L1 term and the models' ``norm=``."""
import pytest
import torch
import torch.nn.functional as F

import dnlib
from dnlib import make_norm, sparse_penalty
from dnlib.models import SRCNN, CifarCNN
from dnlib.norms.gdn import GDN

PED = (2.0 ** -18) ** 2
VARIANTS = {"gdn": (False, False), "igdn": (True, False), "gdn1": (False, True)}


def _naive(x, beta_u, gamma_u, inverse, simplified, beta_min=1e-6):
    """The formula unit by unit: effective beta = beta_u^2 - p, gamma = gamma_u^2 - p (parameters above their
    bounds), then y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2) etc. at every (example, position)."""
    beta = beta_u ** 2 - PED
    gamma = gamma_u ** 2 - PED
    c = x.shape[1]
    out = []
    for i in range(c):
        norm = beta[i] + sum(gamma[i, j] * (x[:, j].abs() if simplified else x[:, j] ** 2) for j in range(c))
        if not simplified:
            norm = norm.sqrt()
        out.append(x[:, i] * norm if inverse else x[:, i] / norm)
    return torch.stack(out, 1)


def _random_module(name, c):
    g = torch.Generator().manual_seed(3)
    m = make_norm(name, c).double()
    with torch.no_grad():  # random parameters above their bounds (where LowerBound is the identity)
        m.beta.copy_(m.beta_reparam.lower_bound.bound + 0.2 + torch.rand(c, generator=g, dtype=torch.float64))
        m.gamma.copy_(m.gamma_reparam.lower_bound.bound + 0.5 * torch.rand(c, c, generator=g, dtype=torch.float64))
    return m


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), (2, 4, 3, 3)])
def test_equals_naive_formula_forward_and_gradients(name, shape):
    inverse, simplified = VARIANTS[name]
    m = _random_module(name, shape[1])
    assert isinstance(m, GDN) and (m.inverse, m.simplified) == (inverse, simplified)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    y = m(x)
    bu = m.beta.detach().clone().requires_grad_()
    gu = m.gamma.detach().clone().requires_grad_()
    ref = _naive(x, bu, gu, inverse, simplified)
    assert (y - ref).abs().max().item() < 1e-12
    got = torch.autograd.grad((y * w).sum(), [x, m.beta, m.gamma])
    want = torch.autograd.grad((ref * w).sum(), [x, bu, gu])
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < 1e-11


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradcheck_and_gradgradcheck(name):
    """First and second derivatives w.r.t. the input and the underlying parameters (above their bounds: at a
    bound, LowerBound's gradient is compressai's rule, not the derivative, by design; the module's own
    init puts gamma's off-diagonal exactly there)."""
    m = _random_module(name, 3)
    m.alpha = 0.1
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, b, g):
        y = torch.func.functional_call(m, {"beta": b, "gamma": g}, (x,))
        return y, sparse_penalty(m)
    inputs = (x, m.beta.detach().clone().requires_grad_(), m.gamma.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameters_stay_valid_after_large_steps(name):
    """SGD with a huge learning rate drives the underlying beta and gamma far below 0; the effective ones stay
    >= beta_min and >= 0. The gradient then still passes where it would raise them (compressai's LowerBound)."""
    torch.manual_seed(0)
    m = make_norm(name, 4, beta_min=1e-4)
    x = torch.rand(8, 4, 3, 3) + 0.5
    # the output grows with beta and gamma for IGDN and shrinks for GDN/GDN1: the loss sign that lowers them
    sign = 1.0 if m.inverse else -1.0
    opt = torch.optim.SGD(m.parameters(), lr=1e4)
    for _ in range(2):
        opt.zero_grad()
        (sign * m(x).sum()).backward()
        opt.step()
    assert m.beta.min().item() < 0 and m.gamma.min().item() < 0   # the underlying parameters went negative
    beta, gamma = m.effective_beta.detach(), m.effective_gamma.detach()
    assert gamma.min().item() >= 0.0
    assert beta.min().item() >= 1e-4 * (1 - 1e-6)  # beta_min up to float32 rounding of (sqrt(b + p))^2 - p
    assert torch.isfinite(m(x)).all()
    # a step in the other direction: the gradient passes through the bound (it raises the parameter)
    opt.zero_grad()
    (-sign * m(x).sum()).backward()
    assert (m.beta.grad < 0).all()


def test_lower_bound_gradient_rule():
    m = make_norm("gdn", 2)
    bound = m.beta_reparam.lower_bound.bound
    u = torch.tensor([bound.item() - 1.0, bound.item() + 1.0], requires_grad=True)
    for g, want in ((torch.tensor([1.0, 1.0]), [0.0, 1.0]), (torch.tensor([-1.0, -1.0]), [-1.0, -1.0])):
        (gu,) = torch.autograd.grad(m.beta_reparam.lower_bound(u), u, g)
        assert gu.tolist() == want


def _compressai_forward(x, beta_u, gamma_u, beta_min, inverse, simplified):
    """compressai.layers.GDN/GDN1.forward, written out (NonNegativeParametrizer, then conv2d with (C, C, 1, 1))."""
    ped = torch.tensor([PED])
    beta = torch.max(beta_u, torch.tensor([(beta_min + PED) ** 0.5])) ** 2 - ped
    gamma = torch.max(gamma_u, torch.tensor([PED ** 0.5])) ** 2 - ped
    c = x.shape[1]
    norm = F.conv2d(torch.abs(x) if simplified else x ** 2, gamma.reshape(c, c, 1, 1), beta)
    if simplified:
        return x * (norm if inverse else 1.0 / norm)
    return x * (torch.sqrt(norm) if inverse else torch.rsqrt(norm))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_equals_compressai_at_its_init(name):
    c = 5
    # compressai's init: beta_u = sqrt(max(1 + p, p)), gamma_u = sqrt(max(0.1 I + p, p))
    beta_u = torch.sqrt(torch.max(torch.ones(c) + PED, torch.tensor([PED])))
    gamma_u = torch.sqrt(torch.max(0.1 * torch.eye(c) + PED, torch.tensor([PED])))
    m = make_norm(name, c)
    assert torch.equal(m.beta.detach(), beta_u) and torch.equal(m.gamma.detach(), gamma_u)
    assert set(m.state_dict()) == {"beta", "gamma", "beta_reparam.pedestal", "beta_reparam.lower_bound.bound",
                                   "gamma_reparam.pedestal", "gamma_reparam.lower_bound.bound"}
    x = torch.randn(2, c, 6, 7, generator=torch.Generator().manual_seed(5)) * 3
    want = _compressai_forward(x, beta_u, gamma_u, 1e-6, *VARIANTS[name])
    assert (m(x) - want).abs().max().item() <= 1e-6 * want.abs().max().item()
    # and after training-like changes of the parameters (some below their bounds)
    with torch.no_grad():
        m.gamma.add_(0.3 * torch.randn(c, c, generator=torch.Generator().manual_seed(6)))
        m.beta.add_(-0.5 * torch.rand(c, generator=torch.Generator().manual_seed(7)))
    want = _compressai_forward(x, m.beta.detach(), m.gamma.detach(), 1e-6, *VARIANTS[name])
    assert (m(x) - want).abs().max().item() <= 1e-6 * want.abs().max().item()


def test_sparse_penalty_acts_on_the_input():
    m = make_norm("gdn", 3, alpha=0.5)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    m(x)
    p = sparse_penalty(m)
    assert torch.allclose(p, 0.5 * x.abs().mean())
    (gx,) = torch.autograd.grad(p, x)
    assert torch.allclose(gx, 0.5 * x.sign() / x.numel())
    m.eval()
    m(x)
    assert sparse_penalty(m).item() == 0.0   # evaluation adds nothing


def test_bad_arguments_name_the_parameter():
    for kw, word in ((dict(beta_min=0.0), "beta_min"), (dict(gamma_init=-1.0), "gamma_init"),
                     (dict(impl="compile"), "impl"), (dict(inverse=1), "inverse")):
        with pytest.raises(ValueError, match=word):
            make_norm("gdn", 3, **kw)
    with pytest.raises(ValueError, match="'sigma'"):
        make_norm("gdn", 3, sigma=1.0)
    with pytest.raises(ValueError, match="'window'"):
        dnlib.norms.presets.get_norm_layer("igdn", {"window": 3})


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["gdn", "igdn", "gdn1"])
def test_models_build_and_train(norm):
    torch.manual_seed(0)
    for model, x, target in ((CifarCNN(10, norm, norm_kwargs={"alpha": 0.01}), torch.randn(4, 3, 32, 32),
                              torch.randint(0, 10, (4,))),
                             (SRCNN(norm, init="he"), torch.rand(2, 1, 21, 21), torch.rand(2, 1, 5, 5))):
        assert sum(isinstance(m, GDN) for m in model.modules()) >= 2
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(2):
            out = model(x)
            task = F.cross_entropy(out, target) if out.dim() == 2 else F.mse_loss(out, target)
            loss = task + sparse_penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
            for m in model.modules():
                if isinstance(m, GDN):  # the learned field gets gradients
                    assert m.gamma.grad.abs().sum() > 0 and torch.isfinite(m.gamma.grad).all()
                    assert m.beta.grad.abs().sum() > 0 and torch.isfinite(m.beta.grad).all()
        assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
