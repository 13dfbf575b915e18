"""The atlas of normalizers, part A (issue 26): frn, evonorm-s0/s0a, evonorm-b0, frozen-bn, dyt and weight
standardization, each equal to its reference.

The references are written here from their source, one class each, with the reference's parameter and buffer
names, so that our module loads the reference's state dict (strict) and is then compared in float64 to 1e-12:
output, input gradient and every parameter gradient, in training and evaluation mode (and the running buffers):

- timm ``timm/layers/filter_response_norm.py`` (``FilterResponseNormTlu2d``), ``timm/layers/evo_norm.py``
  (``EvoNorm2dS0``, ``EvoNorm2dS0a``, ``EvoNorm2dB0``), ``timm/layers/std_conv.py`` (``StdConv2d``,
  ``ScaledStdConv2d``) at huggingface/pytorch-image-models@aa4b5850c1543fa488abf260f18390eda46cf85d. timm computes
  its statistics in float32 even for float64 inputs (``x.float()``); the formulas below leave that cast out.
- torchvision ``torchvision/ops/misc.py`` (``FrozenBatchNorm2d``) at
  pytorch/vision@4f2b2db10c6f25d31c072556c7f9b506b62cc038
  (the eps default there is 0; later releases default to 1e-5, which dnlib uses; the formula is the same).
- Liger-Kernel ``src/liger_kernel/transformers/dyt.py`` (``LigerDyT``: its parameters) and the reference its tests
  check the Triton kernel against, ``test/transformers/test_dyt.py`` (``TorchDyT``: ``gamma * tanh(x * alpha) + beta``),
  at linkedin/Liger-Kernel@ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c.

Where timm's layer files are importable (``pip install --no-deps timm``: they need torch only, not torchvision),
the real classes are compared too, in float32 (to rounding: timm's float32 statistics); skipped otherwise.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

import dnlib
from dnlib import DivisiveNorm, NormSpec, get_spec, list_norms, make_norm
from dnlib.norms.dyt import DyT
from dnlib.norms.evonorm import EvoNorm2dB0, EvoNorm2dS0, field_divisor
from dnlib.norms.frn import FilterResponseNorm2d
from dnlib.norms.frozen import FrozenBatchNorm2d
from dnlib.norms.presets import PRESETS, get_norm_layer
from dnlib.norms.weight_std import ScaledStdConv2d, StdConv2d, WeightStandardization, get_padding

ROWS = ("frn", "evonorm-s0", "evonorm-s0a", "evonorm-b0", "frozen-bn", "dyt", "ws")
CONVERTIBLE = ROWS[:-1]  # the activation normalizers (ws normalizes weights)
C, G = 8, 4          # channels; EvoNorm-S0's groups in these tests (timm's default 32 needs C % 32 == 0)
SHAPE = (4, C, 5, 6)
TOL = dict(rtol=0, atol=1e-12)


# --- the references, from their source ---------------------------------------------------------------------

class RefFRN(nn.Module):
    """timm FilterResponseNormTlu2d: x * rsqrt(mean_hw(x^2) + eps) * weight + bias, then max(., tau)."""

    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight, self.bias, self.tau = (nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)),
                                            nn.Parameter(torch.zeros(c)))

    def forward(self, x):
        v = (1, -1, 1, 1)
        x = x * x.square().mean(dim=(2, 3), keepdim=True).add(self.eps).rsqrt().expand(x.shape)
        x = x * self.weight.view(v) + self.bias.view(v)
        return torch.maximum(x, self.tau.reshape(v))


def _group_std(x, groups, eps):  # timm evo_norm.group_std (flatten=False)
    b, c, h, w = x.shape
    x = x.reshape(b, groups, c // groups, h, w)
    std = x.var(dim=(2, 3, 4), unbiased=False, keepdim=True).add(eps).sqrt()
    return std.expand(x.shape).reshape(b, c, h, w)


class RefS0(nn.Module):
    """timm EvoNorm2dS0 (s0a=False) / EvoNorm2dS0a: x * sigmoid(x v) / group_std(x) * weight + bias."""

    def __init__(self, c, groups, s0a=False):
        super().__init__()
        self.groups, self.s0a, self.eps = groups, s0a, 1e-3 if s0a else 1e-5
        self.weight, self.bias, self.v = (nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)),
                                          nn.Parameter(torch.ones(c)))

    def forward(self, x):
        vs = (1, -1, 1, 1)
        if self.s0a:
            d = _group_std(x, self.groups, self.eps)
            x = x * (x * self.v.view(vs)).sigmoid()
            x = x / d
        else:
            x = x * (x * self.v.view(vs)).sigmoid() / _group_std(x, self.groups, self.eps)
        return x * self.weight.view(vs) + self.bias.view(vs)


class RefB0(nn.Module):
    """timm EvoNorm2dB0: x / max(sqrt(var_batch + eps), x v + instance_std(x)) * weight + bias; running_var."""

    def __init__(self, c, momentum=0.1, eps=1e-3):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight, self.bias, self.v = (nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)),
                                          nn.Parameter(torch.ones(c)))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        vs = (1, -1, 1, 1)
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            n = x.numel() / x.shape[1]
            self.running_var.copy_(self.running_var * (1 - self.momentum)
                                   + var.detach() * self.momentum * (n / (n - 1)))
        else:
            var = self.running_var
        left = var.add(self.eps).sqrt_().view(vs).expand_as(x)
        instance_std = x.var(dim=(2, 3), unbiased=False, keepdim=True).add(self.eps).sqrt().expand(x.shape)
        right = x * self.v.view(vs) + instance_std
        x = x / left.max(right)
        return x * self.weight.view(vs) + self.bias.view(vs)


class RefFrozenBN(nn.Module):
    """torchvision FrozenBatchNorm2d: buffers weight, bias, running_mean, running_var; x * scale + bias."""

    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.eps = eps
        for name, val in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((c,), val))

    def forward(self, x):
        w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)
        rv, rm = self.running_var.reshape(1, -1, 1, 1), self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class RefDyT(nn.Module):
    """Liger-Kernel's TorchDyT (test/transformers/test_dyt.py) with LigerDyT's parameters: over the last dim."""

    def __init__(self, hidden_size, beta=True, init_alpha=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * init_alpha)
        self.gamma = nn.Parameter(torch.ones(hidden_size))
        self.beta = nn.Parameter(torch.zeros(hidden_size)) if beta else None

    def forward(self, x):
        y = self.gamma * torch.tanh(x * self.alpha)
        return y if self.beta is None else y + self.beta


def _ref_std_weight(weight, eps, gain=None):
    """timm StdConv2d / ScaledStdConv2d: F.batch_norm of weight.reshape(1, out, -1) in training mode."""
    return F.batch_norm(weight.reshape(1, weight.shape[0], -1), None, None, weight=gain, training=True,
                        momentum=0.0, eps=eps).reshape_as(weight)


# --- helpers ------------------------------------------------------------------------------------------------

def _randomize(m: nn.Module, seed: int = 0) -> None:
    """Parameters and float buffers away from their init (gain-like ~1, shifts ~0, variances > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if not t.is_floating_point():
                continue
            u = torch.rand(t.shape, generator=g, dtype=t.dtype)
            if name.endswith(("running_var", "gain")):
                t.copy_(0.5 + u)
            elif name.endswith(("weight", "gamma", "v")) and t.dim() == 1:
                t.copy_(0.5 + u * (1.5 if name.endswith("v") else 1.0) - (0.7 if name.endswith("v") else 0.0))
            elif name.endswith("alpha"):
                t.copy_(0.3 + u)
            else:
                t.copy_(u * 2 - 1)


def _x(shape=SHAPE, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 1.5 + 0.3)


def _compare(ours: nn.Module, ref: nn.Module, x: torch.Tensor, tol=TOL, steps=2):
    """Load ref's state dict into ours (strict), then: output, input gradient, parameter gradients (by name) and
    buffers equal, ``steps`` training steps then evaluation."""
    assert set(ours.state_dict()) == set(ref.state_dict()), (sorted(ours.state_dict()), sorted(ref.state_dict()))
    ours.load_state_dict(ref.state_dict(), strict=True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    for mode in ["train"] * steps + ["eval"]:
        ours.train(mode == "train")
        ref.train(mode == "train")
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(ya, yb, **tol, msg=lambda m, mode=mode: f"{mode} output: {m}")
        torch.testing.assert_close(xa.grad, xb.grad, **tol, msg=lambda m, mode=mode: f"{mode} input gradient: {m}")
        pa = dict(ours.named_parameters())
        for name, p in ref.named_parameters():
            torch.testing.assert_close(pa[name].grad, p.grad, **tol,
                                       msg=lambda m, n=name, mode=mode: f"{mode} grad {n}: {m}")
        ba = dict(ours.named_buffers())
        for name, b in ref.named_buffers():
            torch.testing.assert_close(ba[name], b, **tol, msg=lambda m, n=name, mode=mode: f"{mode} buffer {n}: {m}")
        ours.zero_grad()
        ref.zero_grad()


def _pair(name: str):
    """(ours, reference) for a row, float64, the reference's parameters randomized."""
    refs = {"frn": lambda: RefFRN(C), "evonorm-s0": lambda: RefS0(C, G), "evonorm-s0a": lambda: RefS0(C, G, True),
            "evonorm-b0": lambda: RefB0(C), "frozen-bn": lambda: RefFrozenBN(C), "dyt": lambda: RefDyT(C)}
    kw = {"groups": G} if name.startswith("evonorm-s0") else {"channels_last": True} if name == "dyt" else {}
    ref = refs[name]().double()
    _randomize(ref)
    return make_norm(name, C, **kw).double(), ref


# --- equal to the reference ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONVERTIBLE)
def test_equals_the_reference_in_fp64_after_loading_its_state_dict(name):
    ours, ref = _pair(name)
    x = _x((4, 5, 6, C)) if name == "dyt" else _x()   # (LigerDyT's layout: channels last)
    _compare(ours, ref, x)


def test_frn_without_tlu_is_frn_then_affine_and_the_learned_eps_learns():
    x = _x()
    m = make_norm("frn", C, apply_act=False).double()
    assert "tau" not in m.state_dict()
    ref = (x * x.square().mean((2, 3), keepdim=True).add(1e-5).rsqrt())
    torch.testing.assert_close(m(x), ref, **TOL)
    m = make_norm("frn", C, learn_eps=True, eps_init=0.04).double()
    assert m.sigma.item() == pytest.approx(0.2) and m.spec.eps == 1e-5
    ref = x * x.square().mean((2, 3), keepdim=True).add(1e-5 + m.sigma.item() ** 2).rsqrt()  # (0.2 held in fp32)
    torch.testing.assert_close(m(x), torch.maximum(ref, torch.zeros(())), **TOL)
    m(x).sum().backward()
    assert m.sigma.grad is not None and m.sigma.grad.abs() > 0
    # a learned eps that starts at 0 never moves (its gradient 2 sigma is 0 there): refused (it was accepted)
    with pytest.raises(ValueError, match=r"eps_init: must be > 0 with learn_eps=True .*got 0"):
        make_norm("frn", C, learn_eps=True, eps_init=0.0)
    make_norm("frn", C, eps_init=0.0)                                 # (without learn_eps it is not used)


@pytest.mark.parametrize("momentum", [None, 2.0, -0.1, "0.1"])
def test_evonorm_b0_names_its_own_momentum_range(momentum):
    """An out-of-range momentum got the base class's message, "[0, 1] or None", yet B0 refuses None."""
    with pytest.raises(ValueError, match=r"momentum: must be a number in \[0, 1\] \(.*so not None\), got"):
        make_norm("evonorm-b0", C, momentum=momentum)


def test_evonorm_b0_eval_uses_the_running_variance_and_left_divisor_wins_for_small_v():
    m = make_norm("evonorm-b0", C).double().eval()
    _randomize(m)
    with torch.no_grad():
        m.v.fill_(-50.0)  # v x + d_IN < d_BN wherever x > 0: the batch divisor floors
    x = _x().abs() + 0.1
    want = x / (m.running_var.view(1, -1, 1, 1) + 1e-3).sqrt() * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), want, **TOL)


def test_field_divisor_is_the_divisor_of_divisive_norm():
    x = _x()
    for spec in (get_spec("gn").replace(groups=4), get_spec("bn"), get_spec("in"), get_spec("dn-s"),
                 NormSpec("channel,space", "space", {"space": 3}, sigma=0.3, power=0.7, sup_scale=2.0)):
        got = (x - dnlib.field_mean(x, spec)) / field_divisor(x, spec)
        torch.testing.assert_close(got, dnlib.divisive_norm(x, spec), **TOL)


def test_frozen_bn_is_a_trained_batchnorm_in_eval_mode_in_both_modes_and_loads_its_state_dict():
    bn = nn.BatchNorm2d(C).double()
    bn.train()
    bn(_x(seed=3))  # running statistics away from their init
    _randomize(bn, seed=4)
    fz = make_norm("frozen-bn", C).double()
    fz.load_state_dict(bn.state_dict())            # num_batches_tracked dropped, as torchvision's
    x = _x()
    want = bn.eval()(x)
    for mode in (True, False):
        torch.testing.assert_close(fz.train(mode)(x), want, rtol=0, atol=1e-12)
    assert list(fz.parameters()) == [] and fz.running_var.equal(bn.running_var)


def test_dyt_channels_first_puts_gamma_on_dim_1():
    m = make_norm("dyt", C).double()
    _randomize(m)
    x = _x()
    want = m.gamma.view(1, -1, 1, 1) * torch.tanh(x * m.alpha) + m.beta.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), want, **TOL)
    assert m.weight is m.gamma and m.bias is m.beta
    with pytest.raises(ValueError, match="channels at dim 1"):
        m(_x((2, 3, C)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", CONVERTIBLE)
def test_half_inputs_are_normalized_in_fp32_and_returned_in_their_dtype(name, dtype):
    m = make_norm(name, C, **({"groups": G} if name.startswith("evonorm-s0") else {}))
    _randomize(m)
    x = _x(dtype=torch.float32) * 20 + 50   # an offset half-precision statistics would lose
    for mode in (True, False):
        m.train(mode)
        want = m(x)
        got = m(x.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


# --- weight standardization ------------------------------------------------------------------------------------

def test_std_conv_equals_timm_formula_and_loads_its_state_dict():
    torch.manual_seed(0)
    x = _x((2, 6, 7, 7))
    for cls, kw in ((StdConv2d, {}), (StdConv2d, {"stride": 2, "bias": True, "groups": 2}),
                    (ScaledStdConv2d, {}), (ScaledStdConv2d, {"gamma": 1.7, "dilation": 2})):
        conv = cls(6, 4, 3, **kw).double()
        _randomize(conv, seed=5)
        keys = {"weight"} | ({"bias"} if conv.bias is not None else set()) \
            | ({"gain"} if cls is ScaledStdConv2d else set())
        assert set(conv.state_dict()) == keys
        assert conv.padding == (get_padding(3, kw.get("stride", 1), kw.get("dilation", 1)),) * 2
        gain = (conv.gain * conv.scale).view(-1) if cls is ScaledStdConv2d else None
        if cls is ScaledStdConv2d:
            assert conv.scale == pytest.approx(kw.get("gamma", 1.0) / (6 * 9) ** 0.5)
        params = dict(conv.named_parameters())
        xa = x.clone().requires_grad_()
        ya = conv(xa)
        yb = F.conv2d(xa, _ref_std_weight(conv.weight, 1e-6, gain), conv.bias, conv.stride, conv.padding,
                      conv.dilation, conv.groups)
        torch.testing.assert_close(ya, yb, **TOL)
        ga = torch.autograd.grad(ya.square().sum(), [xa, *params.values()])
        gb = torch.autograd.grad(yb.square().sum(), [xa, *params.values()])
        for name, a, b in zip(["input", *params], ga, gb):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name, cls=cls: f"{cls.__name__} grad {n}: {m}")


def test_ws_preset_is_a_weight_parametrization_equal_to_std_conv():
    conv = nn.Conv2d(6, 4, 3, padding=1).double()
    std = StdConv2d(6, 4, 3, bias=True).double()
    std.load_state_dict(conv.state_dict())
    parametrize.register_parametrization(conv, "weight", make_norm("ws", 4))
    x = _x((2, 6, 5, 5))
    torch.testing.assert_close(conv(x), std(x), **TOL)
    scaled = ScaledStdConv2d(6, 4, 3).double()
    plain = nn.Conv2d(6, 4, 3, padding=1).double()
    plain.load_state_dict({k: v for k, v in scaled.state_dict().items() if k != "gain"})
    parametrize.register_parametrization(plain, "weight", make_norm("ws", 4, scaled=True).double())
    torch.testing.assert_close(plain(x), scaled(x), **TOL)
    with pytest.raises(ValueError, match="normalizes weights, not activations"):
        make_norm("ws", 4)(_x((2, 6, 5, 5)))


def test_ws_is_refused_as_a_models_normalizer_and_by_convert_norms():
    with pytest.raises(ValueError, match="weights, not activations"):
        get_norm_layer("ws")
    with pytest.raises(ValueError, match="weights, not activations"):
        dnlib.convert_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "ws")


# --- gradcheck, gradgradcheck ----------------------------------------------------------------------------------

def _func(m: nn.Module):
    names = [n for n, _ in m.named_parameters()]
    return names, lambda x, *ps: functional_call(m, dict(zip(names, ps)), (x,))


@pytest.mark.slow
@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_and_gradgradcheck(name, mode):
    kw = {"groups": 2} if name.startswith("evonorm-s0") else {"learn_eps": True} if name == "frn" else \
        {"scaled": True} if name == "ws" else {}
    m = make_norm(name, 4, **kw).double().train(mode == "train")
    _randomize(m, seed=2)
    x = _x((4, 3, 3, 3) if name == "ws" else (3, 4, 3, 3), seed=3).requires_grad_()  # (ws: a weight, C_out first)
    names, f = _func(m)
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    assert torch.autograd.gradcheck(f, (x, *params)), name
    assert torch.autograd.gradgradcheck(f, (x, *params)), name


# --- the registry and convert_norms ----------------------------------------------------------------------------

def test_registry_rows_have_a_spec_a_module_and_an_extra():
    assert set(ROWS) <= set(list_norms())
    for name in ROWS:
        p = PRESETS[name]
        assert get_spec(name) is p.spec and p.module is not None and p.extra, name
    assert get_spec("frn") == NormSpec(None, "space", eps=1e-5)
    assert get_spec("evonorm-b0").pools_batch and not get_spec("evonorm-s0").pools_batch
    assert get_spec("dyt") == NormSpec(eps=0.0)


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_convert_norms_to_and_from_each(name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, C, 3), nn.BatchNorm2d(C), nn.ReLU()).double()
    net.train()
    net(_x((4, 3, 7, 7)))
    _randomize(net[1], seed=6)
    bn = net[1]
    kw = {"groups": G} if name.startswith("evonorm-s0") else {}
    dnlib.convert_norms(net, name, types=nn.BatchNorm2d, **kw)
    new = net[1]
    assert type(new) is PRESETS[name].module
    assert new.weight.equal(bn.weight) and new.bias.equal(bn.bias)
    if name == "frozen-bn":  # a frozen copy of the trained BN computes its evaluation output in both modes
        x = _x((4, 3, 7, 7))
        torch.testing.assert_close(net.train()(x), nn.Sequential(net[0], bn.eval(), net[2])(x), **TOL)
    if name == "evonorm-b0":
        assert new.running_var.equal(bn.running_var)
    net(_x((4, 3, 7, 7))).sum().backward()
    dnlib.convert_norms(net, "bn", types=type(new))
    back = net[1]
    assert type(back) is DivisiveNorm and back.spec == get_spec("bn")
    assert back.weight.equal(bn.weight) and back.bias.equal(bn.bias)
    if name == "frozen-bn":
        assert back.running_mean.equal(bn.running_mean) and back.running_var.equal(bn.running_var)


def test_convert_layernorm_to_dyt_in_a_transformer_and_back_refuses_the_wrong_layout():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, C), nn.LayerNorm(C), nn.Linear(C, 3)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-1, 1)
    ln = net[1]
    dnlib.convert_norms(net, "dyt", types=nn.LayerNorm)
    dyt = net[1]
    assert isinstance(dyt, DyT) and dyt.channels_last and dyt.gamma.equal(ln.weight) and dyt.beta.equal(ln.bias)
    x = _x((2, 5, 6))
    h = net[0](x)
    torch.testing.assert_close(net[1](h), ln.weight * torch.tanh(0.5 * h) + ln.bias, **TOL)
    dnlib.convert_norms(net, "ln", types=DyT)  # channels at dim 1: (N, L, C) inputs are refused at forward
    with pytest.raises(ValueError, match="last"):
        net(x)
    assert net[1](h[:, 0]).shape == (2, C)


def test_a_layernorm_without_bias_converts_to_dyt_without_a_shift():
    """``LayerNorm(C, bias=False)`` became a DyT with a trainable shift ``beta`` it never had (variants review)."""
    net = nn.Sequential(nn.LayerNorm(C, bias=False))
    _, rep = dnlib.convert_norms(net, "dyt", types=nn.LayerNorm, report=True)
    assert isinstance(net[0], DyT) and net[0].beta is None and "beta" not in net[0].state_dict()
    assert "beta=False: the source has no bias" in rep.rows[0].note
    net = nn.Sequential(nn.LayerNorm(C))
    dnlib.convert_norms(net, "dyt", types=nn.LayerNorm)
    assert net[0].beta is not None                                   # a bias: kept (and copied) as before


# --- timm's real classes (where its layer files import) ---------------------------------------------------------

def _timm_layers():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (pip install --no-deps timm: its layer files need torch only)")
    root = list(spec.submodule_search_locations)[0]
    saved = {k: sys.modules.get(k) for k in ("timm", "timm.layers")}
    try:  # packages without their __init__ (which imports torchvision): only the layer files run
        for name, path in (("timm", root), ("timm.layers", f"{root}/layers")):
            if name not in sys.modules or not hasattr(sys.modules[name], "__file__"):
                pkg = types.ModuleType(name)
                pkg.__path__ = [path]
                sys.modules[name] = pkg
        return {f: importlib.import_module(f"timm.layers.{f}") for f in ("filter_response_norm", "evo_norm",
                                                                          "std_conv")}
    except Exception as e:  # noqa: BLE001 (an incompatible timm: say why and skip)
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
        pytest.skip(f"timm's layer files do not import here: {e}")


def test_equals_timms_real_classes_in_fp32():
    timm = _timm_layers()
    frn, evo = timm["filter_response_norm"], timm["evo_norm"]
    tol = dict(rtol=2e-5, atol=2e-5)  # timm's float32 statistics
    cases = [("frn", frn.FilterResponseNormTlu2d(C), {}), ("evonorm-s0", evo.EvoNorm2dS0(C, groups=G), {"groups": G}),
             ("evonorm-s0a", evo.EvoNorm2dS0a(C, groups=G), {"groups": G}), ("evonorm-b0", evo.EvoNorm2dB0(C), {})]
    for name, ref, kw in cases:
        _randomize(ref)
        _compare(make_norm(name, C, **kw), ref, _x(dtype=torch.float32), tol=tol)
    std = timm["std_conv"]
    x = _x((2, 6, 7, 7), dtype=torch.float32)
    for cls, ours in ((std.StdConv2d, StdConv2d), (std.ScaledStdConv2d, ScaledStdConv2d)):
        ref = cls(6, 4, 3)
        _randomize(ref, seed=5)
        m = ours(6, 4, 3)
        m.load_state_dict(ref.state_dict(), strict=True)
        torch.testing.assert_close(m(x), ref(x), **tol)
    assert isinstance(make_norm("evonorm-s0", C, groups=G), EvoNorm2dS0)
    assert isinstance(make_norm("evonorm-b0", C), EvoNorm2dB0) and isinstance(make_norm("frn", C), FilterResponseNorm2d)
    assert isinstance(make_norm("frozen-bn", C), FrozenBatchNorm2d)
    assert isinstance(make_norm("ws", C), WeightStandardization)


# --- the atlas figure reads the registry -------------------------------------------------------------------------

def test_atlas_places_every_preset_of_the_registry_on_table_1s_axes(monkeypatch):
    from matplotlib.figure import Figure

    from dnlib.analysis import atlas
    from dnlib.norms.presets import Preset

    monkeypatch.setitem(PRESETS, "my-norm", Preset(NormSpec("batch", "channel,space", sigma=0.5), {}, "a test row",
                                                   extra="something beyond the fields"))
    monkeypatch.setitem(PRESETS, "my-module", Preset(NormSpec(), {}, "a module that names no extra", module=DyT))
    rows = {r["name"]: r for r in atlas.atlas_rows()}
    assert rows["my-module"]["kind"] == "extra" and "not named" in rows["my-module"]["extra"]
    assert list(rows) == list_norms()                      # every preset, the one added at run time included
    assert (rows["bn"]["A"], rows["bn"]["B"], rows["bn"]["kind"]) == ("batch + space", "batch + space", "fields")
    assert (rows["frn"]["A"], rows["frn"]["B"], rows["frn"]["kind"]) == ("-", "space", "extra")
    assert (rows["gn"]["A"], rows["gn"]["kind"]) == ("channel/32 + space", "knobs")
    assert rows["dn"]["A"] == "channel + space 3x3" and rows["dn-1d"]["B"] == "channel 61"
    assert rows["lcn"]["knobs"] == ["Gaussian weights", "floor=mean"] and rows["lrn"]["kind"] == "knobs"
    assert rows["my-norm"]["extra"] == "something beyond the fields" and rows["my-norm"]["A"] == "batch"
    fig = atlas.atlas_figure()
    assert isinstance(fig, Figure)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for name in list_norms():
        assert any(t.split(" ")[0] == name for t in texts), name
    assert any("my-norm: something beyond the fields" in t for t in texts)    # the extra, listed under the grid
    table = atlas.atlas_table(["bn", "frn"])
    assert table.count("\n") == 3 and "TLU" in table
    assert isinstance(atlas.atlas_figure1(["frn", "dyt"], ncols=2), Figure)


def test_spec_table_shows_a_module_presets_view_and_its_extra():
    from dnlib.analysis import figures

    table = figures.spec_table(["gdn", "frn"])
    assert "| `gdn` | - | channel |" in table and "| `frn` | - | space |" in table and "beyond the fields: TLU" in table


def test_standardize_convs_and_fold_them_back():
    from dnlib.norms.weight_std import fold_standardized_convs, standardize_convs

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(4, 8), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, stride=2, groups=2)).double()
    w0, w3, b3 = net[0].weight.clone(), net[3].weight.clone(), net[3].bias.clone()
    x = _x((2, 3, 9, 9))
    standardize_convs(net)
    assert type(net[0]) is StdConv2d and type(net[3]) is StdConv2d and net[3].groups == 2 and net[3].stride == (2, 2)
    assert net[0].weight.equal(w0) and net[3].weight.equal(w3) and net[3].bias.equal(b3)
    want = F.conv2d(F.relu(net[1](F.conv2d(x, _ref_std_weight(w0, 1e-6), None, 1, 1))),
                    _ref_std_weight(w3, 1e-6), b3, 2, 0, 1, 2)
    y = net(x)
    torch.testing.assert_close(y, want, **TOL)
    fold_standardized_convs(net)
    assert type(net[0]) is nn.Conv2d and type(net[3]) is nn.Conv2d
    torch.testing.assert_close(net(x), y, **TOL)
    scaled = standardize_convs(nn.Conv2d(3, 4, 3).double(), scaled=True, gamma=2.0)
    assert isinstance(scaled, ScaledStdConv2d) and scaled.scale == pytest.approx(2.0 / 27 ** 0.5)
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        standardize_convs(nn.Sequential(nn.Conv2d(3, 4, 3, padding_mode="reflect")))
