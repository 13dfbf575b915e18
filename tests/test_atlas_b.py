"""The atlas of normalizers, part b (issue 26): brn, sn, bcn and masked statistics, each equal to its reference.

The references do not install here, so each is written below from its source, file and commit cited, and our
module is compared with it in fp64 to 1e-12 after loading the reference's state dict: forward, input gradient,
parameter gradients, the running statistics over several training steps, and evaluation.

* Batch Renorm: chainer ``chainer/functions/normalization/batch_renormalization.py`` (forward and its hand-written
  backward) and ``chainer/links/normalization/batch_renormalization.py`` (evaluation: ``fixed_batch_normalization``),
  chainer/chainer @ a8e15cbe55a90854a3918b8b5a976abbbff9ec94.
* Switchable Norm: ``devkit/ops/switchable_norm.py`` (``SwitchNorm1d``, ``SwitchNorm2d``),
  switchablenorms/Switchable-Normalization @ 5472286952ba5519a7d3229d9ad899a5c1b2e5b1.
* Batch-Channel Norm: ``labml_nn/normalization/batch_channel_norm/__init__.py`` (``BatchChannelNorm`` with
  ``EstimatedBatchNorm`` and ``ChannelNorm``), labmlai/annotated_deep_learning_paper_implementations @
  e6b3c8a6a2cdae4071bcde1abeaaf9a2bc37bd53.
* Masked statistics: ``flax/linen/normalization.py`` (``_compute_stats(..., mask=...)``, ``_normalize``,
  ``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``, ``RMSNorm``), google/flax @
  18f8f311c275d57f46d95e41b15aa97b454754c0.
"""
import math
import warnings

import pytest
import torch
from torch import nn

import dnlib
from dnlib import DivisiveNorm, NormSpec, make_norm
from dnlib.norms.batch_variants import BatchChannelNorm, BatchRenorm, SwitchNorm

D = torch.float64
TOL = 1e-12


def _close(a, b, what, tol=TOL):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= tol, f"{what}: max |diff| {err:.3g}"


def _x(shape, seed, scale=2.0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=D) * scale + shift


def _ch(t, nd):
    return t.view((1, -1) + (1,) * (nd - 2))


# ============================================================================ Batch Renorm (chainer)
def chainer_brn(x, gamma, beta, rmax, dmax, eps, running_mean, running_var, decay):
    """``BatchRenormalizationFunction.forward`` (numpy branch) with ``update_statistics=True``: returns
    ``y``, the new running statistics and what its backward keeps."""
    nd = x.dim()
    axis = (0,) + tuple(range(2, nd))
    mean = x.mean(axis)
    var = x.var(axis, unbiased=False)
    std = torch.sqrt(var + eps)
    running_sigma = torch.sqrt(running_var + eps)
    r = torch.clamp(std / running_sigma, 1.0 / rmax, rmax)
    d = torch.clamp((mean - running_mean) / running_sigma, -dmax, dmax)
    x_hat = (x - _ch(mean, nd)) / _ch(std, nd)
    x_hat_renorm = x_hat * _ch(r, nd) + _ch(d, nd)
    y = _ch(gamma, nd) * x_hat_renorm + _ch(beta, nd)
    m = x.numel() // gamma.numel()
    adjust = m / max(m - 1.0, 1.0)  # unbiased estimation
    new_mean = running_mean * decay + (1 - decay) * mean
    new_var = running_var * decay + (1 - decay) * adjust * var
    return y, new_mean, new_var, (x_hat, x_hat_renorm, std, r, m)


def chainer_brn_backward(gy, gamma, saved):
    """``BatchRenormalizationFunction.backward`` (numpy branch): ``gx``, ``ggamma``, ``gbeta``."""
    x_hat, x_hat_renorm, std, r, m = saved
    nd = gy.dim()
    axis = (0,) + tuple(range(2, nd))
    gbeta = gy.sum(axis)
    ggamma = (gy * x_hat_renorm).sum(axis)
    gsigma_batch = (gy * x_hat).sum(axis)
    scale = _ch(r * gamma / std, nd)
    gx = scale * (gy - (x_hat * _ch(gsigma_batch, nd) + _ch(gbeta, nd)) / m)
    return gx, ggamma, gbeta


def chainer_fixed_bn(x, gamma, beta, mean, var, eps):
    """``fixed_batch_normalization``: the link's evaluation forward."""
    nd = x.dim()
    return _ch(gamma, nd) * (x - _ch(mean, nd)) / _ch(torch.sqrt(var + eps), nd) + _ch(beta, nd)


def _chainer_state(c, seed):
    g = torch.Generator().manual_seed(seed)
    return {"gamma": 1 + 0.5 * torch.rand(c, generator=g, dtype=D), "beta": torch.randn(c, generator=g, dtype=D),
            "avg_mean": torch.randn(c, generator=g, dtype=D), "avg_var": 0.2 + 6 * torch.rand(c, generator=g, dtype=D),
            "N": torch.tensor(0)}


@pytest.mark.parametrize("shape", [(6, 5, 3, 4), (7, 5), (4, 5, 6)])
@pytest.mark.parametrize("rmax,dmax", [(1.5, 0.4), (3.0, 5.0), (1.0, 0.0)])
def test_brn_equals_chainer_train_and_eval(shape, rmax, dmax):
    c, eps, decay = shape[1], 2e-5, 0.9
    st = _chainer_state(c, 0)
    m = make_norm("brn", c, rmax=rmax, dmax=dmax, eps=eps, momentum=1 - decay, relax=None).double()
    m.load_state_dict(st)   # chainer's names (gamma, beta, avg_mean, avg_var, N)
    rm, rv = st["avg_mean"].clone(), st["avg_var"].clone()
    clipped = False
    for step in range(3):
        x = _x(shape, step + 1).requires_grad_()
        gy = _x(shape, 10 + step, 1.0, 0.0)
        y_ref, rm_new, rv_new, saved = chainer_brn(x.detach(), st["gamma"], st["beta"], rmax, dmax, eps, rm, rv,
                                                   decay)
        clipped |= bool(((saved[3] == rmax) | (saved[3] == 1 / rmax)).any())
        gx_ref, gg_ref, gb_ref = chainer_brn_backward(gy, st["gamma"], saved)
        m.zero_grad()
        y = m(x)
        y.backward(gy)
        _close(y, y_ref, f"output, step {step}")
        _close(x.grad, gx_ref, f"input gradient, step {step}")
        _close(m.weight.grad, gg_ref, "gamma gradient")
        _close(m.bias.grad, gb_ref, "beta gradient")
        rm, rv = rm_new, rv_new
        _close(m.running_mean, rm, "running_mean")
        _close(m.running_var, rv, "running_var")
    assert clipped or rmax == 3.0, "the case was meant to clip r for some channels"
    m.eval()
    x = _x(shape, 99)
    _close(m(x), chainer_fixed_bn(x, st["gamma"], st["beta"], rm, rv, eps), "evaluation output")


def test_brn_with_rmax_1_dmax_0_is_bn_exactly():
    x = _x((6, 4, 3, 3), 0).requires_grad_()
    gy = _x((6, 4, 3, 3), 1, 1.0, 0.0)
    brn = make_norm("brn", 4, rmax=1.0, dmax=0.0).double()
    bn = make_norm("bn", 4, impl="general").double()    # the general path: the same ops, bit for bit
    torch_bn = nn.BatchNorm2d(4).double()
    for mod in (brn, bn, torch_bn):
        with torch.no_grad():
            mod.running_mean.fill_(3.0)  # far from the batch: BN ignores them in training, so must brn here
    outs = []
    for mod in (brn, bn, torch_bn):
        xi = x.detach().clone().requires_grad_()
        mod(xi).backward(gy)
        outs.append((mod(xi.detach()), xi.grad, mod.weight.grad, mod.running_var.clone()))
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a, b)
    for a, b, what in zip(outs[0], outs[2], ("output", "input gradient", "weight gradient", "running_var")):
        _close(a, b, f"{what} vs nn.BatchNorm2d")


def test_brn_unclipped_output_is_the_running_statistics_output():
    """With wide clips the training output is the running statistics' normalization (Ioffe's point), while the
    gradient is BN's times r."""
    m = make_norm("brn", 3, rmax=1e6, dmax=1e6, relax=None).double()
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.3, -1.0, 2.0]))
        m.running_var.copy_(torch.tensor([0.5, 2.0, 9.0]))
    x = _x((5, 3, 4), 3)
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    y = m(x)
    _close(y, (x - _ch(rm, 3)) / _ch(torch.sqrt(rv + 1e-5), 3), "unclipped training output", 1e-11)


def test_brn_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rmax: must be a finite number >= 1"):
        make_norm("brn", 4, rmax=0.5)
    with pytest.raises(ValueError, match="dmax"):
        make_norm("brn", 4, dmax=-1)
    with pytest.raises(ValueError, match="track_running_stats"):
        make_norm("brn", 4, track_running_stats=False)
    with pytest.raises(ValueError, match="impl"):
        make_norm("brn", 4, impl="compile")
    with pytest.raises(ValueError, match="unknown override 'groups'"):
        make_norm("brn", 4, groups=2)
    with pytest.raises(ValueError, match=r"relax: expected None or \(start, r_end, d_end\)"):
        make_norm("brn", 4, relax=(10, 5, 20))


def test_brn_relaxes_its_clips_on_ioffes_schedule():
    """BN (1, 0) for relax[0] batches, then linear to rmax at relax[1] and dmax at relax[2] (Ioffe 2017 §4:
    5000, 40000, 25000 by default); before: the clips were rmax, dmax from the first batch, and a ResNet-20 at
    lr 0.1 diverged in six steps (test_resnet's brn case)."""
    m = make_norm("brn", 3, relax=(2, 6, 4)).double()
    assert make_norm("brn", 3).relax == (5000, 40000, 25000)
    seen = []
    for step in range(8):
        x = _x((6, 3, 4), step)
        bn = make_norm("bn", 3, impl="general").double()
        bn.load_state_dict(m.state_dict())
        y = m(x)
        seen.append(m.clips())  # the clips this batch used (num_batches_tracked counts it now)
        if step < 2:
            assert torch.equal(y, bn(x)), step   # BN exactly while the clips are (1, 0)
    assert [tuple(round(v, 6) for v in c) for c in seen] == [(1, 0), (1, 0), (1, 0), (1.5, 2.5), (2, 5), (2.5, 5),
                                                              (3, 5), (3, 5)]


# ============================================================================ Switchable Norm (the authors' code)
class RefSwitchNorm2d(nn.Module):
    """``SwitchNorm2d`` of devkit/ops/switchable_norm.py (using_moving_average=True), torch.autograd.Variable
    dropped; ``unbiased=False`` is the one change for the paper's biased IN variance."""

    def __init__(self, num_features, eps=1e-5, momentum=0.9, using_bn=True, unbiased=True):
        super().__init__()
        self.eps, self.momentum, self.using_bn, self.unbiased = eps, momentum, using_bn, unbiased
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        k = 3 if using_bn else 2
        self.mean_weight = nn.Parameter(torch.ones(k))
        self.var_weight = nn.Parameter(torch.ones(k))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(1, num_features, 1))
            self.register_buffer("running_var", torch.zeros(1, num_features, 1))

    def forward(self, x):
        N, C, H, W = x.size()
        x = x.view(N, C, -1)
        mean_in = x.mean(-1, keepdim=True)
        var_in = x.var(-1, keepdim=True, unbiased=self.unbiased)
        mean_ln = mean_in.mean(1, keepdim=True)
        temp = var_in + mean_in ** 2
        var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
        if self.using_bn:
            if self.training:
                mean_bn = mean_in.mean(0, keepdim=True)
                var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
                self.running_mean.mul_(self.momentum)
                self.running_mean.add_((1 - self.momentum) * mean_bn.data)
                self.running_var.mul_(self.momentum)
                self.running_var.add_((1 - self.momentum) * var_bn.data)
            else:
                mean_bn, var_bn = self.running_mean, self.running_var
        mean_weight = torch.softmax(self.mean_weight, 0)
        var_weight = torch.softmax(self.var_weight, 0)
        if self.using_bn:
            mean = mean_weight[0] * mean_in + mean_weight[1] * mean_ln + mean_weight[2] * mean_bn
            var = var_weight[0] * var_in + var_weight[1] * var_ln + var_weight[2] * var_bn
        else:
            mean = mean_weight[0] * mean_in + mean_weight[1] * mean_ln
            var = var_weight[0] * var_in + var_weight[1] * var_ln
        x = (x - mean) / (var + self.eps).sqrt()
        x = x.view(N, C, H, W)
        return x * self.weight + self.bias


class RefSwitchNorm1d(nn.Module):
    """``SwitchNorm1d`` of devkit/ops/switchable_norm.py (using_moving_average=True): LN and BN of (N, C)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.997):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(1, num_features))
        self.bias = nn.Parameter(torch.zeros(1, num_features))
        self.mean_weight = nn.Parameter(torch.ones(2))
        self.var_weight = nn.Parameter(torch.ones(2))
        self.register_buffer("running_mean", torch.zeros(1, num_features))
        self.register_buffer("running_var", torch.zeros(1, num_features))

    def forward(self, x):
        mean_ln = x.mean(1, keepdim=True)
        var_ln = x.var(1, keepdim=True)
        if self.training:
            mean_bn = x.mean(0, keepdim=True)
            var_bn = x.var(0, keepdim=True)
            self.running_mean.mul_(self.momentum)
            self.running_mean.add_((1 - self.momentum) * mean_bn.data)
            self.running_var.mul_(self.momentum)
            self.running_var.add_((1 - self.momentum) * var_bn.data)
        else:
            mean_bn, var_bn = self.running_mean, self.running_var
        mean_weight = torch.softmax(self.mean_weight, 0)
        var_weight = torch.softmax(self.var_weight, 0)
        mean = mean_weight[0] * mean_ln + mean_weight[1] * mean_bn
        var = var_weight[0] * var_ln + var_weight[1] * var_bn
        x = (x - mean) / (var + self.eps).sqrt()
        return x * self.weight + self.bias


def _perturb(ref, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(ref.parameters()) + list(ref.buffers()):
            t.add_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 0.8)  # (running_var stays > 0)


def _compare_steps(ours, ref, shape, steps=3, view=lambda t, into: t):
    """Train both for ``steps`` on the same batches (loss sum(y * gy)), then evaluate: every value to 1e-12."""
    names = [k for k, _ in ref.named_parameters()]
    for step in range(steps):
        x = _x(shape, step + 1)
        gy = _x(shape, 20 + step, 1.0, 0.0)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours.zero_grad(), ref.zero_grad()
        ya, yb = ours(xa), view(ref(view(xb, True)), False)
        ya.backward(gy), yb.backward(gy)
        _close(ya, yb, f"output, step {step}")
        _close(xa.grad, xb.grad, f"input gradient, step {step}")
        for k in names:
            _close(dict(ours.named_parameters())[k].grad.reshape(-1), dict(ref.named_parameters())[k].grad.reshape(-1),
                   f"{k} gradient, step {step}")
        for k, b in ref.named_buffers():
            _close(getattr(ours, k).reshape(-1), b.reshape(-1), f"{k}, step {step}")
    ours.eval(), ref.eval()
    x = _x(shape, 77)
    _close(ours(x), view(ref(view(x, True)), False), "evaluation output")


@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
def test_sn_equals_the_reference_2d(using_bn, unbiased):
    ref = RefSwitchNorm2d(5, using_bn=using_bn, unbiased=unbiased).double()
    _perturb(ref, 0)
    fields = ("in", "ln", "bn") if using_bn else ("in", "ln")
    ours = make_norm("sn", 5, fields=fields, unbiased=unbiased, momentum=0.1).double()
    ours.load_state_dict(ref.state_dict())   # the reference's names and shapes
    _compare_steps(ours, ref, (4, 5, 3, 4))


def test_sn_on_sequences_is_the_reference_on_a_map_of_one_row():
    ref = RefSwitchNorm2d(5).double()
    _perturb(ref, 1)
    ours = make_norm("sn", 5, unbiased=True).double()
    ours.load_state_dict(ref.state_dict())
    _compare_steps(ours, ref, (4, 5, 7), view=lambda t, into: t.unsqueeze(-1) if into else t.squeeze(-1))


def test_sn_1d_equals_switchnorm1d():
    ref = RefSwitchNorm1d(6).double()
    _perturb(ref, 2)
    ours = make_norm("sn", 6, fields=("ln", "bn"), unbiased=True, momentum=1 - 0.997).double()
    ours.load_state_dict(ref.state_dict())
    _compare_steps(ours, ref, (5, 6))


def test_sn_refuses_bad_fields_and_in_on_vectors():
    with pytest.raises(ValueError, match="fields: expected a subsequence"):
        make_norm("sn", 4, fields=("bn", "in"))
    with pytest.raises(ValueError, match="fields"):
        make_norm("sn", 4, fields=("gn",))
    with pytest.raises(ValueError, match="no positions for the 'in' field"):
        make_norm("sn", 4)(torch.randn(3, 4))


# ============================================================================ Batch-Channel Norm (labml)
class RefEstimatedBatchNorm(nn.Module):
    """labml ``EstimatedBatchNorm`` (the running statistics updated with this batch, then used)."""

    def __init__(self, channels, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum, self.channels = eps, momentum, channels
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("exp_mean", torch.zeros(channels))
        self.register_buffer("exp_var", torch.ones(channels))

    def forward(self, x):
        x_shape = x.shape
        x = x.view(x_shape[0], self.channels, -1)
        if self.training:
            with torch.no_grad():
                mean = x.mean(dim=[0, 2])
                mean_x2 = (x ** 2).mean(dim=[0, 2])
                var = mean_x2 - mean ** 2
                self.exp_mean = (1 - self.momentum) * self.exp_mean + self.momentum * mean
                self.exp_var = (1 - self.momentum) * self.exp_var + self.momentum * var
        x_norm = (x - self.exp_mean.view(1, -1, 1)) / torch.sqrt(self.exp_var + self.eps).view(1, -1, 1)
        x_norm = self.scale.view(1, -1, 1) * x_norm + self.shift.view(1, -1, 1)
        return x_norm.view(x_shape)


class RefChannelNorm(nn.Module):
    """labml ``ChannelNorm``: group statistics, per-group affine."""

    def __init__(self, channels, groups, eps=1e-5):
        super().__init__()
        self.channels, self.groups, self.eps = channels, groups, eps
        self.scale = nn.Parameter(torch.ones(groups))
        self.shift = nn.Parameter(torch.zeros(groups))

    def forward(self, x):
        x_shape = x.shape
        x = x.view(x_shape[0], self.groups, -1)
        mean = x.mean(dim=[-1], keepdim=True)
        mean_x2 = (x ** 2).mean(dim=[-1], keepdim=True)
        var = mean_x2 - mean ** 2
        x_norm = (x - mean) / torch.sqrt(var + self.eps)
        x_norm = self.scale.view(1, -1, 1) * x_norm + self.shift.view(1, -1, 1)
        return x_norm.view(x_shape)


class RefBatchChannelNorm(nn.Module):
    """labml ``BatchChannelNorm(channels, groups, eps, momentum, estimate=True)``."""

    def __init__(self, channels, groups, eps=1e-5, momentum=0.1):
        super().__init__()
        self.batch_norm = RefEstimatedBatchNorm(channels, eps=eps, momentum=momentum)
        self.channel_norm = RefChannelNorm(channels, groups, eps)

    def forward(self, x):
        return self.channel_norm(self.batch_norm(x))


def _ref_grads_by_our_names(ref):
    names = {"batch_norm.scale": "weight", "batch_norm.shift": "bias", "channel_norm.scale": "group_weight",
             "channel_norm.shift": "group_bias"}
    return {names[k]: p.grad for k, p in ref.named_parameters()}


@pytest.mark.parametrize("shape", [(4, 6, 3, 3), (5, 6, 4), (7, 6)])
def test_bcn_equals_labml(shape):
    # (labml's variances are one-pass, E[x^2] - E[x]^2, rounding to eps E[x^2] / var: on (N, C) inputs two channels
    # per group can be close enough for 3e-12, so there the groups are of three)
    c, groups = shape[1], 3 if len(shape) > 2 else 2
    ref = RefBatchChannelNorm(c, groups, momentum=0.2).double()
    _perturb(ref, 3)
    ours = make_norm("bcn", c, groups=groups, momentum=0.2).double()
    ours.load_state_dict(ref.state_dict())   # labml's names: documented mapping (BatchChannelNorm docstring)
    for step in range(3):
        x = _x(shape, step + 1)
        gy = _x(shape, 30 + step, 1.0, 0.0)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours.zero_grad(), ref.zero_grad()
        ya, yb = ours(xa), ref(xb)
        ya.backward(gy), yb.backward(gy)
        _close(ya, yb, f"output, step {step}")
        _close(xa.grad, xb.grad, f"input gradient, step {step}")
        for k, g in _ref_grads_by_our_names(ref).items():
            _close(getattr(ours, k).grad, g, f"{k} gradient, step {step}")
        _close(ours.running_mean, ref.batch_norm.exp_mean, "running_mean")
        _close(ours.running_var, ref.batch_norm.exp_var, "running_var")
    ours.eval(), ref.eval()
    x = _x(shape, 55)
    _close(ours(x), ref(x), "evaluation output")


def test_bcn_refuses_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="not divisible by groups=4"):
        make_norm("bcn", 6, groups=4)


# ============================================================================ masked statistics (flax)
def flax_compute_stats(x, axes, mask, use_mean=True, use_fast_variance=True):
    """``_compute_stats``: ``mean(axes, where=mask)`` of x and x^2, ``var = max(0, E[x^2] - E[x]^2)`` (the default
    ``use_fast_variance=True``) or ``mean(|x - mu|^2, where=mask)``; without centring (``use_mean=False``,
    RMSNorm) ``var = E[x^2]``."""
    m = mask.to(x.dtype).expand(x.shape)

    def mean(t):
        return (t * m).sum(axes) / m.sum(axes)
    if not use_mean:
        var = mean(x * x)
        return torch.zeros_like(var), var
    if not use_fast_variance:
        mu = mean(x)
        keep = [d if i in [a % x.dim() for a in axes] else slice(None) for i, d in enumerate([None] * x.dim())]
        return mu, mean((x - mu[tuple(keep)]) ** 2)
    mu, mu2 = mean(x), mean(x * x)
    return mu, torch.clamp(mu2 - mu * mu, min=0.0)


def flax_normalize(x, mean, var, reduction_axes, eps, scale=None, bias=None):
    """``_normalize``: ``(x - mean) * rsqrt(var + eps) * scale + bias``, features on the last axis."""
    for a in sorted(reduction_axes):
        mean, var = mean.unsqueeze(a), var.unsqueeze(a)
    y = (x - mean) * torch.rsqrt(var + eps) * (1 if scale is None else scale)
    return y if bias is None else y + bias


def _padded(n=4, c=6, length=7, seed=0):
    """A batch of sequences of lengths 7, 5, 3, 1 (flax layout (N, L, C)), its mask (N, L, 1), padding = 100."""
    x = _x((n, length, c), seed)
    lengths = torch.tensor([length, 5, 3, 1])[:n]
    mask = (torch.arange(length)[None, :] < lengths[:, None]).unsqueeze(-1)
    return torch.where(mask, x, torch.full_like(x, 100.0)), mask


def _ours(x_nlc):
    return x_nlc.transpose(1, 2).contiguous()


def _affine(c, seed):
    g = torch.Generator().manual_seed(seed)
    return 1 + 0.5 * torch.rand(c, generator=g, dtype=D), torch.randn(c, generator=g, dtype=D)


def _flax_cases():
    """name -> (our module factory, flax formula on (N, L, C) with the mask (N, L, 1) and (scale, bias))."""
    eps = 1e-5

    def ln(x, m, s, b):      # LayerNorm(reduction_axes=(1, 2), feature_axes=-1)
        mu, var = flax_compute_stats(x, (1, 2), m)
        return flax_normalize(x, mu, var, (1, 2), eps, s, b)

    def inn(x, m, s, b):     # InstanceNorm(feature_axes=-1): the axes between batch and features
        mu, var = flax_compute_stats(x, (1,), m)
        return flax_normalize(x, mu, var, (1,), eps, s, b)

    def gn(x, m, s, b):      # GroupNorm(num_groups=3, use_fast_variance=False): x and mask as (..., groups, size)
        # (the fast variance of a group of 2 channels x 1 kept position rounds to 2e-11 here)
        n, length, c = x.shape
        xg, mg = x.reshape(n, length, 3, c // 3), m.expand(x.shape).reshape(n, length, 3, c // 3)
        mu, var = flax_compute_stats(xg, (1, 3), mg, use_fast_variance=False)
        mu, var = mu.repeat_interleave(c // 3, -1), var.repeat_interleave(c // 3, -1)
        return flax_normalize(x, mu, var, (1,), eps, s, b)

    def rms(x, m, s, b):     # RMSNorm(reduction_axes=(1, 2)): no centring, scale only
        mu, var = flax_compute_stats(x, (1, 2), m, use_mean=False)
        return flax_normalize(x, mu, var, (1, 2), eps, s)

    def bn(x, m, s, b):      # BatchNorm(use_running_average=False): batch statistics over (0, 1)
        mu, var = flax_compute_stats(x, (0, 1), m)
        return flax_normalize(x, mu, var, (0, 1), eps, s, b)

    return {"ln": (lambda c: make_norm("ln", c), ln), "in": (lambda c: make_norm("in", c, affine=True), inn),
            "gn": (lambda c: make_norm("gn", c, groups=3), gn), "rms": (lambda c: make_norm("rms", c, eps=eps), rms),
            "bn": (lambda c: make_norm("bn", c, running_stats="tf"), bn)}


@pytest.mark.parametrize("name", list(_flax_cases()))
def test_masked_fields_equal_flax(name):
    factory, formula = _flax_cases()[name]
    x, mask = _padded()
    c = x.shape[-1]
    scale, bias = _affine(c, 1)
    m = factory(c).double()
    with torch.no_grad():
        m.weight.copy_(scale)
        if m.bias is not None:
            m.bias.copy_(bias)
    xa = _ours(x).requires_grad_()
    xb = x.clone().requires_grad_()
    sb, bb = scale.clone().requires_grad_(), bias.clone().requires_grad_()
    ya = m(xa, mask=mask.transpose(1, 2))
    yb = formula(xb, mask, sb, bb)
    gy = _x(yb.shape, 5, 1.0, 0.0) * mask   # a loss over the kept positions only
    _close(ya, _ours(yb), "output (every position)", 1e-11)
    ya.backward(_ours(gy))
    yb.backward(gy)
    _close(xa.grad, _ours(xb.grad), "input gradient")
    _close(m.weight.grad, sb.grad, "scale gradient")
    if m.bias is not None:
        _close(m.bias.grad, bb.grad, "bias gradient")


def test_masked_batch_norm_running_statistics_equal_flax():
    """flax ``BatchNorm(momentum=0.9)``: ``ra = 0.9 ra + 0.1 stat`` with the masked mean and biased variance, then
    ``use_running_average=True`` normalizes with them. Ours with ``running_stats="tf"`` (biased) is the same; with
    torch's convention ``running_var`` takes the kept count's unbiased factor ``n / (n - 1)``."""
    c, eps = 6, 1e-5
    tf = make_norm("bn", c, running_stats="tf", momentum=0.1).double()
    torch_conv = make_norm("bn", c, momentum=0.1).double()
    ra_mean, ra_var = torch.zeros(c, dtype=D), torch.ones(c, dtype=D)   # flax's init
    with torch.no_grad():
        tf.running_var.fill_(1.0)     # (load flax's batch_stats: mean -> running_mean, var -> running_var)
    tv = torch_conv.running_var.clone()
    for step in range(3):
        x, mask = _padded(seed=step)
        mu, var = flax_compute_stats(x, (0, 1), mask)
        ra_mean, ra_var = 0.9 * ra_mean + 0.1 * mu, 0.9 * ra_var + 0.1 * var
        n = mask.sum()
        tv = 0.9 * tv + 0.1 * var * n / (n - 1)
        tf(_ours(x), mask=mask.transpose(1, 2))
        torch_conv(_ours(x), mask=mask.transpose(1, 2))
        _close(tf.running_mean, ra_mean, "running_mean")
        _close(tf.running_var, ra_var, "running_var (tf: biased, flax's)")
        _close(torch_conv.running_var, tv, "running_var (torch: unbiased over the kept values)")
    tf.eval()
    x, mask = _padded(seed=9)
    y = tf(_ours(x), mask=mask.transpose(1, 2))
    _close(y, _ours(flax_normalize(x, ra_mean, ra_var, (0, 1), eps, tf.weight.detach(), tf.bias.detach())),
           "evaluation output")


def _naive_masked_dn(x, m, k, sigma, eps):
    """DN over all channels x a k-window of positions of (N, C, L), each mean over the kept neighbours only."""
    n, c, length = x.shape
    y = torch.empty_like(x)
    r = k // 2
    for i in range(n):
        v = torch.empty(c, length, dtype=x.dtype)
        for t in range(length):
            lo, hi = max(0, t - r), min(length, t + r + 1)
            keep = m[i, 0, lo:hi]
            v[:, t] = x[i, :, t] - (x[i, :, lo:hi][:, keep].mean() if keep.any() else 0.0)
        for t in range(length):
            lo, hi = max(0, t - r), min(length, t + r + 1)
            keep = m[i, 0, lo:hi]
            s = (v[:, lo:hi][:, keep] ** 2).mean() if keep.any() else 0.0
            y[i, :, t] = v[:, t] / (sigma ** 2 + eps + s) ** 0.5
    return y


def test_masked_windowed_dn_equals_a_naive_loop():
    x, mask = _padded()
    xo, mo = _ours(x), mask.transpose(1, 2)
    m = make_norm("dn", 6, window=3, sigma=0.5).double()
    _close(m(xo, mask=mo), _naive_masked_dn(xo, mo, 3, 0.5, 1e-5), "windowed DN over kept neighbours")


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", "dn-s", "rms", "lcn", "brn", "sn", "bcn"])
def test_padding_does_not_reach_the_kept_outputs(name):
    """Change every padded value: the outputs at the kept positions, the gradient there and the running statistics
    stay the same; an all-True mask is the unmasked layer."""
    kw = {"groups": 3} if name in ("gn", "bcn") else {}
    x, mask = _padded()
    xo, mo = _ours(x), mask.transpose(1, 2)
    other = torch.where(mo, xo, -7 * torch.ones_like(xo))
    mods = [make_norm(name, 6, **kw).double() for _ in range(3)]
    ya, yb = mods[0](xo, mask=mo), mods[1](other, mask=mo)
    _close(ya * mo, yb * mo, "kept outputs")
    for k, buf in mods[0].named_buffers():
        _close(buf.double(), dict(mods[1].named_buffers())[k].double(), k)
    ones = torch.ones_like(mo)
    _close(mods[2](xo, mask=ones), make_norm(name, 6, **kw).double()(xo), "all-True mask == no mask", 1e-11)


def test_a_fully_masked_example_stays_finite():
    x, mask = _padded()
    mask[1] = False
    for name in ("ln", "in", "sn", "dn"):
        y = make_norm(name, 6).double()(_ours(x).requires_grad_(), mask=mask.transpose(1, 2))
        assert torch.isfinite(y).all(), name


def test_mask_errors_name_the_parameter():
    x = torch.randn(4, 6, 7)
    with pytest.raises(ValueError, match=r"mask: shape \(4, 7\) does not broadcast"):
        make_norm("ln", 6)(x, mask=torch.ones(4, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask: expected booleans"):
        make_norm("ln", 6)(x, mask=torch.full((4, 1, 7), 0.5))
    with pytest.raises(ValueError, match="border='valid'"):
        make_norm("dn", 6, window=3, border="reference")(x, mask=torch.ones(4, 1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask: GDN does not take a mask"):
        make_norm("gdn", 6)(x, mask=torch.ones(4, 1, 7, dtype=torch.bool))


# ============================================================================ gradcheck and gradgradcheck
def _grad_cases():
    """Training mode with momentum 0 (the running statistics, which brn and bcn use in training, stay fixed
    across gradcheck's evaluations); parameters away from their init. brn's r and d are stop-gradient, so its
    gradient is the function's only where they are constant: every channel clipped (``brn-clipped``: running
    statistics far from the batch's) or none corrected (rmax 1, dmax 0); its gradient with live r, d is chainer's
    (test_brn_equals_chainer_train_and_eval)."""
    return {
        "brn-clipped": (lambda: make_norm("brn", 4, rmax=1.5, dmax=0.3, momentum=0.0, relax=None), (5, 4, 3), "far"),
        "brn-as-bn": (lambda: make_norm("brn", 4, rmax=1.0, dmax=0.0, momentum=0.0), (5, 4, 3), None),
        "sn": (lambda: make_norm("sn", 4, momentum=0.0), (3, 4, 2, 3), None),
        "sn-code-1d": (lambda: make_norm("sn", 4, fields=("ln", "bn"), unbiased=True, momentum=0.0), (5, 4), None),
        "bcn": (lambda: make_norm("bcn", 4, groups=2, momentum=0.0), (3, 4, 5), None),
        "masked-bn": (lambda: make_norm("bn", 4, momentum=0.0), (4, 4, 5), "mask"),
        "masked-dn": (lambda: make_norm("dn", 4, window=3, sigma=0.5), (3, 4, 5), "mask"),
        "masked-sn": (lambda: make_norm("sn", 4, momentum=0.0), (4, 4, 5), "mask"),
        "masked-lcn": (lambda: make_norm("lcn", 4, window=3, weights=1.0), (3, 4, 5), "mask"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_grad_cases()))
def test_gradcheck_and_gradgradcheck(name):
    factory, shape, masked = _grad_cases()[name]
    torch.manual_seed(0)
    m = factory().double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.rand_like(p))
        if m.running_var is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if masked == "far":
            m.running_mean.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
            m.running_var.copy_(torch.tensor([0.01, 0.01, 100.0, 100.0]))
    x = _x(shape, 4, 1.0, 0.2).requires_grad_()
    params = [p for p in m.parameters()]
    mask = None
    if masked == "mask":
        mask = torch.ones((shape[0], 1) + shape[2:], dtype=torch.bool)
        mask[1, :, -2:] = False
        mask[2, :, -1:] = False

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip([k for k, _ in m.named_parameters()], ps))):
            return m(x) if mask is None else m(x, mask=mask)
    before = [b.clone() for b in m.buffers()]
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))
    for a, b in zip(before, m.buffers()):
        if a.is_floating_point():
            assert torch.equal(a, b)


# ============================================================================ convert_norms to and from each
def _net(norm=None):
    layer = (lambda c: nn.BatchNorm2d(c)) if norm is None else (lambda c: make_norm(norm, c, groups=2)
                                                                 if norm == "bcn" else make_norm(norm, c))
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), layer(4))


def _train_a_little(net, steps=3):
    for s in range(steps):
        net(_x((6, 3, 5, 5), s)).square().mean().backward()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("to", ["brn", "sn", "bcn"])
def test_convert_norms_to_and_from(to):
    torch.manual_seed(0)
    net = _net().double()
    _train_a_little(net)
    kw = {"groups": 2} if to == "bcn" else {}
    src = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.weight.clone(), m.bias.clone(), m.running_mean.clone(), m.running_var.clone()) for m in src]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net, rep = dnlib.convert_norms(net, to, report=True, **kw)
    kinds = {"brn": BatchRenorm, "sn": SwitchNorm, "bcn": BatchChannelNorm}
    new = [m for m in net.modules() if isinstance(m, DivisiveNorm)]
    assert len(new) == 2 and all(type(m) is kinds[to] for m in new)
    for m, (w, b, rm, rv) in zip(new, before):   # gamma, beta and BN's running statistics carried over
        assert torch.equal(m.weight, w) and torch.equal(m.bias, b)
        assert torch.equal(m.running_mean, rm) and torch.equal(m.running_var, rv)
    assert all({"weight", "bias", "running_mean", "running_var"} <= set(r.copied) for r in rep.converted)
    # the same architecture built with norm= directly loads the converted state dict and computes the same
    direct = _net(to).double()
    direct.load_state_dict(net.state_dict())
    x = _x((4, 3, 5, 5), 7)
    for mode in (False, True):
        net.train(mode), direct.train(mode)
        _close(net(x), direct(x), f"converted vs direct (training={mode})")
    # and back to BN: gamma, beta and the running statistics return; the extras are named as dropped
    net.eval()
    back, rep = dnlib.convert_norms(net, "bn", types=DivisiveNorm, report=True)
    for m, old in zip([m for m in back.modules() if isinstance(m, DivisiveNorm)], new):
        assert torch.equal(m.weight, old.weight) and torch.equal(m.running_var, old.running_var)
    extras = {"brn": [], "sn": ["mean_weight", "var_weight"], "bcn": ["group_weight", "group_bias"]}[to]
    for r in rep.converted:
        assert all(any(d.startswith(e) for d in r.dropped) for e in extras), r.dropped


def test_brn_converted_from_a_trained_bn_with_rmax_1_dmax_0_computes_what_it_did():
    torch.manual_seed(0)
    net = _net().double()
    _train_a_little(net)
    ref = _net().double()
    ref.load_state_dict(net.state_dict())
    dnlib.convert_norms(net, "brn", rmax=1.0, dmax=0.0)
    x = _x((4, 3, 5, 5), 8)
    for mode in (True, False):
        net.train(mode), ref.train(mode)
        _close(net(x), ref(x), f"training={mode}")
    for a, b in zip([m for m in net.modules() if isinstance(m, BatchRenorm)],
                    [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]):
        _close(a.running_var, b.running_var, "running_var")


def test_presets_are_registered_with_their_fields():
    for name, cls in (("brn", BatchRenorm), ("sn", SwitchNorm), ("bcn", BatchChannelNorm)):
        assert name in dnlib.list_norms()
        assert dnlib.get_spec(name) == NormSpec("batch,space", "batch,space")
        kw = {"groups": 2} if name == "bcn" else {}
        m = make_norm(name, 4, **kw)
        assert type(m) is cls and m.spec.pools_batch and m.track_running_stats
        assert math.isclose(m.momentum, 0.1)
    assert make_norm("brn", 4).rmax == 3.0 and make_norm("brn", 4).dmax == 5.0
