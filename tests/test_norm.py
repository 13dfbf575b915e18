"""DivisiveNorm against torch's own layers, naive loops, gradcheck, and its error messages.

Every preset is checked on both paths (``impl="general"``, the hand-written autograd Function; and
``impl="auto"``, which dispatches to the fused native kernel where one exists) in forward and backward.
"""
import itertools
import math
import re

import pytest
import torch
from torch import nn

from dnlib import PRESETS, DivisiveNorm, NormSpec, get_spec, list_norms, make_norm, sparse_penalty
from dnlib.norms.functional import band_supported, divisive_norm, divisive_norm_reference, field_mean
from dnlib.norms.norm import fused_kind

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
IMPLS = ["general", "auto"]


def _x(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype).requires_grad_()


def _compare(ours, ref, x, dtype, train=True):
    """Forward outputs, input gradients and parameter gradients agree within the dtype's tolerance."""
    ours.train(train)
    ref.train(train)
    y, r = ours(x), ref(x)
    tol = TOL[dtype]
    assert (y - r).abs().max().item() < tol
    g = torch.Generator().manual_seed(123)  # a fixed, non-trivial upstream gradient (not the global RNG's:
    w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)  # results must not depend on test order)
    gy = torch.autograd.grad((y * w).sum(), [x] + [p for p in ours.parameters()], retain_graph=False)
    gr = torch.autograd.grad((r * w).sum(), [x] + [p for p in ref.parameters()])
    assert (gy[0] - gr[0]).abs().max().item() < tol
    for a, b in zip(gy[1:], gr[1:]):
        if b.numel() > a.numel():  # torch's elementwise LN/RMS weights vs our per-channel ones
            b = b.reshape(a.numel(), -1).sum(1)
        # parameter gradients are sums of x.numel() / a.numel() terms each, whose rounding errors grow like the
        # square root of their count (a random walk): compare relative to their size, with that allowance
        allow = tol * max(1.0, math.sqrt(x.numel() / a.numel()))
        assert ((a - b).abs() / b.abs().clamp_min(1)).max().item() < allow


def _per_channel_ln_weights(ref, ours, shape):
    """torch's LayerNorm/RMSNorm weights are elementwise; ours per channel. Tie them for the comparison."""
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
        if ours.bias is not None:
            ours.bias.copy_(torch.linspace(-0.2, 0.3, shape[1]))
        view = (-1,) + (1,) * (len(shape) - 2)
        ref.weight.copy_(ours.weight.view(view).expand(shape[1:]))
        if getattr(ref, "bias", None) is not None:
            ref.bias.copy_(ours.bias.view(view).expand(shape[1:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 7), (4, 5, 6, 7)])
def test_bn_matches_batchnorm_train_eval_and_buffers(shape, impl, dtype):
    ref = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](shape[1], dtype=dtype)
    ours = make_norm("bn", shape[1], impl=impl, dtype=dtype)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    for step in range(4):  # several training steps: running statistics must track torch's exactly
        _compare(ours, ref, _x(shape, dtype, seed=step), dtype, train=True)
    tol = TOL[dtype]
    assert (ours.running_mean - ref.running_mean).abs().max() < tol
    assert (ours.running_var - ref.running_var).abs().max() < tol
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    _compare(ours, ref, _x(shape, dtype, seed=9), dtype, train=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_bn_cumulative_momentum_none(impl):
    ref, ours = nn.BatchNorm1d(3, momentum=None), make_norm("bn", 3, momentum=None, impl=impl)
    for s in range(3):
        x = _x((8, 3), torch.float32, s)
        ref(x), ours(x)
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 7), (3, 4, 5, 6)])
def test_ln_matches_layernorm(shape, impl, dtype):
    ref, ours = nn.LayerNorm(shape[1:], dtype=dtype), make_norm("ln", shape[1], impl=impl, dtype=dtype)
    _per_channel_ln_weights(ref, ours, shape)
    _compare(ours, ref, _x(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(3, 5, 7), (3, 4, 5, 6)])
def test_in_matches_instancenorm(shape, impl, dtype):
    cls = nn.InstanceNorm1d if len(shape) == 3 else nn.InstanceNorm2d
    ref, ours = cls(shape[1], affine=True, dtype=dtype), make_norm("in", shape[1], affine=True, impl=impl, dtype=dtype)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    _compare(ours, ref, _x(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gn_matches_groupnorm(groups, impl, dtype):
    shape = (3, 8, 5, 6)
    ref, ours = nn.GroupNorm(groups, 8, dtype=dtype), make_norm("gn", 8, groups=groups, impl=impl, dtype=dtype)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    _compare(ours, ref, _x(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", ["auto", "band"])
@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("shape", [(3, 7, 5), (3, 7, 4, 5)])
def test_lrn_matches_localresponsenorm(shape, size, impl, dtype):
    ref = nn.LocalResponseNorm(size, alpha=0.3, beta=0.75, k=2.0)
    ours = make_norm("lrn", shape[1], window=size, sup_scale=0.3, sigma=math.sqrt(2.0), impl=impl, dtype=dtype)
    assert ours.fused is None  # LRN has no native kernel: the general path, or the band path
    _compare(ours, ref, _x(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5, 6)])
def test_rms_matches_rmsnorm(shape, impl, dtype):
    ref, ours = nn.RMSNorm(shape[1:], dtype=dtype), make_norm("rms", shape[1], impl=impl, dtype=dtype)  # eps: finfo
    assert ours.bias is None  # like nn.RMSNorm
    _per_channel_ln_weights(ref, ours, shape)
    _compare(ours, ref, _x(shape, dtype), dtype)


def test_fused_dispatch_table():
    assert {n: fused_kind(get_spec(n)) for n in ["bn", "bn-s", "ln", "ln-s", "in", "gn", "rms", "dn", "lrn"]} == {
        "bn": "bn", "bn-s": "bn", "ln": "ln", "ln-s": "ln", "in": "in", "gn": "gn", "rms": "rms", "dn": None,
        "lrn": None}
    assert make_norm("bn", 4, learn_sigma=True).fused is None  # a learned sigma cannot be folded into eps


def test_sigma_is_folded_into_eps():
    x = _x((4, 3, 5, 5), torch.float64)
    for impl in IMPLS:
        ours = make_norm("bn", 3, sigma=0.7, eps=0.0, impl=impl).double()
        ref = nn.BatchNorm2d(3, eps=0.49).double()
        assert (ours(x) - ref(x)).abs().max() < 1e-12


# --- DN: local windows against a naive per-position loop -------------------------------------------------

def _naive_dn(x, ka, kb, sigma, eps, border):
    """Eqs. 3-4 written out position by position (PAPER.md §1.2) for a spatial window, all channels."""
    N, C, H, W = x.shape

    def window_mean(t, k, divisor_k=None):  # t: (N, H, W)
        out = torch.zeros_like(t)
        r = k // 2
        for n, i, j in itertools.product(range(N), range(H), range(W)):
            vals = [t[n, a, b] for a in range(i - r, i + r + 1) for b in range(j - r, j + r + 1)
                    if 0 <= a < H and 0 <= b < W]
            if border == "valid":
                out[n, i, j] = sum(vals) / len(vals)
            else:  # zero padding counted; the reference code divides the suppression sum by k_A^2
                out[n, i, j] = sum(vals) / (divisor_k or k) ** 2
        return out

    mu = window_mean(x.mean(1), ka)
    v = x - mu[:, None]
    s = window_mean((v * v).mean(1), kb, divisor_k=ka if border == "reference" else None)
    return v / torch.sqrt(sigma ** 2 + eps + s[:, None])


@pytest.mark.parametrize("border", ["valid", "zeros", "reference"])
@pytest.mark.parametrize("ka,kb", [(3, 5), (5, 3), (3, 3), (7, 3)])  # 7 > W: window wider than the map
def test_dn_unequal_windows_match_naive_loop(ka, kb, border):
    x = _x((2, 3, 6, 5), torch.float64)
    spec = NormSpec("channel,space", "channel,space", {"space": ka}, {"space": kb}, sigma=0.5, border=border)
    ref = _naive_dn(x.detach(), ka, kb, 0.5, spec.eps, border)
    for impl in ("general",):
        m = DivisiveNorm(3, spec, affine=False, impl=impl).double()
        assert (m(x) - ref).abs().max() < 1e-10
    assert (divisive_norm_reference(x, spec) - ref).abs().max() < 1e-10


def test_reference_border_inflates_variance_by_window_ratio():
    """The authors' bug: the 7x7 suppression sum divided by 5x5 inflates E_B[v^2] by 49/25 (PAPER.md §1.2)."""
    x = _x((2, 4, 12, 12), torch.float64).detach()
    zeros = NormSpec("channel,space", "channel,space", {"space": 5}, {"space": 7}, eps=0.0, border="zeros")
    ref = zeros.replace(border="reference")
    ratio = divisive_norm(x, zeros) / divisive_norm(x, ref)
    assert torch.allclose(ratio, torch.full_like(ratio, math.sqrt(49 / 25)))


def test_dn_1d_window_matches_naive_loop():
    x = _x((3, 10), torch.float64)
    k = 5
    m = make_norm("dn-1d", 10, window=k, sigma=1.0)
    mu = torch.stack([x[:, max(0, j - 2):j + 3].mean(1) for j in range(10)], 1)
    v = x - mu
    s = torch.stack([(v[:, max(0, j - 2):j + 3] ** 2).mean(1) for j in range(10)], 1)
    assert (m.double()(x) - v / torch.sqrt(1.0 + 1e-5 + s)).abs().max() < 1e-10


def test_even_reference_window_uses_tf_same_padding():
    """Code's 1-D DN with window 30: TF SAME pads 14 before, 15 after; zeros counted, divided by 30."""
    x = _x((2, 40), torch.float64).detach()
    spec = NormSpec("channel", "channel", {"channel": 30}, {"channel": 30}, eps=0.0, sigma=1.0, border="reference")
    pad = torch.nn.functional.pad(x, (14, 15))
    mu = torch.stack([pad[:, j:j + 30].sum(1) / 30 for j in range(40)], 1)
    v = x - mu
    vp = torch.nn.functional.pad(v, (14, 15))
    s = torch.stack([(vp[:, j:j + 30] ** 2).sum(1) / 30 for j in range(40)], 1)
    assert (divisive_norm(x, spec) - v / torch.sqrt(1 + s)).abs().max() < 1e-12


def _naive_box_1d(t, k):
    """The authors' div_norm_1d box sum along the last dim: TF SAME zero padding ((k-1)//2 before, k//2 after),
    zeros counted, divided by this window's own size k."""
    n = t.shape[-1]
    out = torch.zeros_like(t)
    for j in range(n):
        vals = [t[..., i] for i in range(j - (k - 1) // 2, j + k // 2 + 1) if 0 <= i < n]
        out[..., j] = sum(vals) / k
    return out


@pytest.mark.parametrize("ka,kb", [(3, 5), (5, 3), (30, 20), (4, 7)])
def test_reference_border_1d_divides_each_window_by_its_own_size(ka, kb):
    """border="reference" on 1-D windows is the authors' div_norm_1d: each box sum over its own window size
    (no suppression-divisor bug: that is div_norm_2d's). Channel windows on (N, C), and a spatial window on
    (N, C, L) with the channel mean global."""
    x = _x((3, 40), torch.float64).detach()
    spec = NormSpec("channel", "channel", {"channel": ka}, {"channel": kb}, eps=0.0, sigma=1.0, border="reference")
    v = x - _naive_box_1d(x, ka)
    ref = v / torch.sqrt(1.0 + _naive_box_1d(v * v, kb))
    m = DivisiveNorm(40, spec, affine=False, impl="general").double()
    assert (m(x) - ref).abs().max() < 1e-12
    assert (divisive_norm_reference(x, spec) - ref).abs().max() < 1e-12
    x = _x((2, 3, 11), torch.float64).detach()
    spec = NormSpec("channel,space", "channel,space", {"space": ka}, {"space": kb}, eps=0.0, sigma=1.0,
                    border="reference")
    v = x - _naive_box_1d(x.mean(1, keepdim=True), ka)
    ref = v / torch.sqrt(1.0 + _naive_box_1d((v * v).mean(1, keepdim=True), kb))
    assert (divisive_norm(x, spec) - ref).abs().max() < 1e-12


def test_dn_with_window_covering_the_map_equals_ln():
    x = _x((2, 3, 4, 5), torch.float64)
    dn = make_norm("dn", 3, window=9, eps=1e-5)  # 9 >= 2*5-1: every window sees the whole map
    ln = nn.LayerNorm([3, 4, 5], elementwise_affine=False).double()
    assert (dn.double()(x) - ln(x)).abs().max() < 1e-10


def test_channel_and_space_windows_together():
    x = _x((2, 6, 5, 5), torch.float64)
    spec = NormSpec("channel,space", "channel,space", {"channel": 3, "space": 3}, {"channel": 5, "space": 3})
    assert (divisive_norm(x, spec) - divisive_norm_reference(x, spec)).abs().max() < 1e-12
    # naive check of the summation mean at one interior and one corner position
    mu = field_mean(x, spec)
    assert torch.allclose(mu[0, 2, 2, 2], x[0, 1:4, 1:4, 1:4].mean())
    assert torch.allclose(mu[1, 0, 0, 0], x[1, 0:2, 0:2, 0:2].mean())


# --- gradients, dtypes, state ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_norms()                 # (ws normalizes weights: test_atlas_a)
                                  if getattr(PRESETS[n].module, "normalizes", "activations") == "activations"])
def test_gradcheck_every_preset(name):
    shape = (2, 4, 3, 4) if name not in ("dn-1d", "dn-1d-s") else (3, 6)
    kw = {"groups": 2} if name in ("gn", "evonorm-s0", "evonorm-s0a") else {}
    if name.startswith("dn-1d"):
        kw["window"] = 3
    if name in ("bn", "bn-s", "bn-ms"):
        kw["track_running_stats"] = False
    if name == "brn":   # r and d are stop-gradient: the gradient is the function's where they are constant
        kw.update(rmax=1.0, dmax=0.0)
    if name == "bcn":   # the training forward uses the running statistics: keep them fixed across evaluations
        kw.update(groups=2, momentum=0.0)
    for impl in IMPLS + (["band"] if band_supported(get_spec(name)) else []):
        m = make_norm(name, shape[1], impl=impl, **kw).double()
        if m.affine:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.uniform_(-1, 1)
        x = _x(shape, torch.float64)
        assert torch.autograd.gradcheck(m, (x,)), (name, impl)


def test_learnable_sigma_receives_gradient_and_gradcheck():
    m = make_norm("dn", 3, sigma=0.5, learn_sigma=True).double()
    assert isinstance(m.sigma, nn.Parameter) and m.sigma.item() == 0.5
    x = _x((2, 3, 4, 4), torch.float64)
    m(x).pow(2).sum().backward()
    assert m.sigma.grad is not None and m.sigma.grad.abs() > 0
    spec = m.spec
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, s: divisive_norm(t, spec, s), (x, s))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["bn", "ln", "dn", "gn"])
def test_half_inputs_accumulate_in_fp32(name, dtype):
    x = _x((4, 32, 6, 6), torch.float32).detach() * 30 + 100  # large offset: fp16 statistics would lose it
    m = make_norm(name, 32, sigma=0.1)
    y16 = m(x.to(dtype))
    assert y16.dtype == dtype
    y32 = m(x.to(dtype).float())
    assert (y16.float() - y32).abs().max() < 0.05


def test_running_statistics_follow_the_default_dtype_as_batchnorms_buffers():
    """dtype=None: the running statistics take torch's default dtype, as nn.BatchNorm's buffers and the module's own
    parameters do (under set_default_dtype(float64) they were float32 beside float64 weights); a half-precision
    dtype keeps them in float32 (deliberate: half-precision statistics would lose the mean)."""
    old = torch.get_default_dtype()
    try:
        for default in (torch.float32, torch.float64):
            torch.set_default_dtype(default)
            ours, ref = make_norm("bn", 4), nn.BatchNorm2d(4)
            assert ours.weight.dtype == default
            for name in ("running_mean", "running_var"):
                assert getattr(ours, name).dtype == getattr(ref, name).dtype == default, (default, name)
            x = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 3 + 2
            ours(x), ref(x)
            torch.testing.assert_close(ours.running_var, ref.running_var)
            torch.testing.assert_close(ours.running_mean, ref.running_mean)
    finally:
        torch.set_default_dtype(old)
    for dtype in (torch.float16, torch.bfloat16):
        m = make_norm("bn", 4, dtype=dtype)
        assert m.weight.dtype == dtype and m.running_mean.dtype == m.running_var.dtype == torch.float32


def test_state_dict_round_trip():
    a = make_norm("bn-s", 5, momentum=0.3)
    for s in range(3):
        a(_x((8, 5, 3, 3), torch.float32, s))
    b = make_norm("bn-s", 5, momentum=0.3)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    a.eval(), b.eval()
    x = _x((2, 5, 3, 3), torch.float32)
    assert torch.equal(a(x), b(x))
    c = make_norm("dn", 5, learn_sigma=True, sigma=0.3)
    d = make_norm("dn", 5, learn_sigma=True, sigma=0.9)
    d.load_state_dict(c.state_dict())
    assert d.sigma.item() == pytest.approx(0.3)


def test_state_dict_loads_into_torch_batchnorm():
    ours = make_norm("bn", 4)
    ours(_x((8, 4, 3, 3), torch.float32))
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(ours.state_dict())
    assert torch.equal(ref.running_mean, ours.running_mean)


# --- the sparse penalty --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bn", "ln", "dn", "none", "rms"])
@pytest.mark.parametrize("impl", IMPLS)
def test_sparse_penalty_matches_definition_and_flows_through_mean(name, impl):
    x = _x((4, 6, 5, 5), torch.float64)
    model = nn.Sequential(make_norm(name, 6, alpha=0.3, impl=impl), nn.ReLU()).double()
    model(x)
    pen = sparse_penalty(model)
    spec = get_spec(name)
    if spec.sum_axes == {"batch", "space"}:
        mu = x.mean((0, 2, 3), keepdim=True)
    elif spec.sum_axes == {"channel", "space"} and not spec.sum_window:
        mu = x.mean((1, 2, 3), keepdim=True)
    elif name == "dn":
        mu = _naive_local_mean(x, 3)
    else:
        mu = torch.zeros(())
    expected = 0.3 * (x - mu).abs().mean()
    assert torch.allclose(pen, expected, atol=1e-12)
    g1 = torch.autograd.grad(pen, x)[0]
    g2 = torch.autograd.grad(expected, x)[0]
    assert torch.allclose(g1, g2, atol=1e-12)  # gradients flow through the mean
    assert sparse_penalty(model).item() == 0.0  # cleared


def _naive_local_mean(x, k):
    N, C, H, W = x.shape
    m = x.mean(1)
    out = torch.zeros_like(m)
    r = k // 2
    for i, j in itertools.product(range(H), range(W)):
        out[:, i, j] = m[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean((1, 2))
    return out[:, None]


def test_sparse_penalty_sums_over_sites_and_steps_and_costs_nothing_at_zero():
    a, b, c = make_norm("ln", 4, alpha=0.1), make_norm("ln", 4, alpha=0.2), make_norm("ln", 4)
    model = nn.ModuleList([a, b, c])
    x = _x((3, 4), torch.float32)
    a(x), a(x), b(x), c(x)
    expected = (0.1 * 2 + 0.2) * (x - x.mean(1, keepdim=True)).abs().mean()
    assert torch.allclose(sparse_penalty(model), expected, atol=1e-6)
    assert c.pop_penalty() is None
    a.eval()
    a(x)
    assert a.pop_penalty() is None  # only training forwards add to the loss


# --- errors and properties -----------------------------------------------------------------------------------

@pytest.mark.parametrize("build, match", [
    (lambda: make_norm("bn", 4)(torch.randn(2, 4, 3, 3, 3)), r"input: expected shape .*\(2, 4, 3, 3, 3\)"),
    (lambda: make_norm("ln", 4)(torch.randn(2, 5, 3)), r"input: has 5 channels .* num_features=4"),
    (lambda: make_norm("dn", 4, window=0), r"sum_window: window size .* >= 1, got 0"),
    (lambda: make_norm("dn", 4, window=4), r"window size 4 .* even.*odd"),
    (lambda: NormSpec("batch", "batch", {"space": 3}), r"sum_window: window on axis 'space', which sum_axes"),
    (lambda: NormSpec("batch", "batch", {"batch": 3}), r"window on axis 'batch' is not allowed"),
    (lambda: make_norm("dn", 4, sigma=-1.0), r"sigma: must be a finite number >= 0, got -1.0"),
    (lambda: make_norm("ln", 4, track_running_stats=True), r"track_running_stats: .*pools 'batch'"),
    (lambda: make_norm("batchnorm", 4), r"unknown normalizer 'batchnorm'; known presets are \['none', 'bn'"),
    (lambda: make_norm("gn", 6, groups=4), r"num_features: 6 is not divisible by groups=4"),
    (lambda: make_norm("bn", 4, colour="red"), r"unknown override 'colour'"),
    (lambda: NormSpec("width", "batch"), r"sum_axes: unknown axis 'width'"),
    (lambda: NormSpec(border="mirror"), r"border: got 'mirror'; allowed values are"),
    (lambda: make_norm("bn", 4)(torch.randn(1, 4)), r"more than 1 value per channel"),
    (lambda: make_norm("ln", 4, impl="fast"), r"impl: got 'fast'"),
    (lambda: make_norm("dn", 4, alpha=-0.1), r"alpha: the L1 weight must be a finite number >= 0"),
])
def test_bad_input_names_parameter_value_and_allowed(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("build, match", [
    (lambda: DivisiveNorm(4, "bn"), r"spec: expected a NormSpec, got str; use dnlib.make_norm for names"),
    (lambda: make_norm("bn", 4, momentum=1.5), r"momentum: must be a number in \[0, 1\] or None, got 1.5"),
    (lambda: make_norm("dn", 4, impl="fused"),
     r"impl: 'fused' needs a spec with a native kernel, and NormSpec\(.*\) has none"),
    (lambda: DivisiveNorm(4, NormSpec("channel", "batch,channel", groups=2), track_running_stats=True),
     r"track_running_stats: not supported with groups=2; pass False"),
    (lambda: DivisiveNorm(4, NormSpec("batch,channel", "batch,channel")),
     r"track_running_stats: .* must not pool 'channel' or carry windows; sum_axes=\['batch', 'channel'\] does"),
    (lambda: DivisiveNorm(4, NormSpec("batch", "batch,space", sup_window={"space": 3})),
     r"track_running_stats: .* must not pool 'channel' or carry windows; sup_axes=\['batch', 'space'\] does"),
])
def test_divisive_norm_checks_its_arguments_before_building(build, match):
    """DivisiveNorm.__init__'s argument checks that the table above does not reach (pinned for issue 24's split)."""
    with pytest.raises(ValueError, match=match):
        build()


def test_repr_is_one_compact_line():
    r = repr(make_norm("dn", 32, window=5, sigma=0.5, alpha=0.005))
    assert "\n" not in r
    assert "A=channel+space[5]" in r and "B=channel+space[5]" in r and "alpha=0.005" in r


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def _spec_and_shape(draw):
    rank = draw(st.sampled_from([2, 3, 4]))
    C = draw(st.integers(1, 6))
    shape = [draw(st.integers(2, 4)), C] + [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    axes = ["batch", "channel", "space"]
    sum_axes = draw(st.sets(st.sampled_from(axes)))
    sup_axes = draw(st.sets(st.sampled_from(axes)))
    border = draw(st.sampled_from(["valid", "zeros", "reference"]))

    def window(field):
        w = {}
        for a in ("channel", "space"):
            if a in field and draw(st.booleans()):
                w[a] = draw(st.integers(1, 4)) * 2 - 1 if border != "reference" else draw(st.integers(1, 6))
        return w

    spec = NormSpec(sum_axes, sup_axes, window(sum_axes), window(sup_axes), sigma=draw(st.floats(0, 2)),
                    eps=draw(st.sampled_from([0.0, 1e-5])) if sup_axes else 1e-5, border=border,
                    power=draw(st.sampled_from([0.5, 0.75])))
    return spec, shape


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(_spec_and_shape(), st.integers(0, 2**31 - 1))
def test_property_finite_in_finite_out(spec_shape, seed):
    spec, shape = spec_shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x[0] = 0.0  # include constant regions
    if spec.eps + spec.sigma ** 2 < 1e-30:
        spec = spec.replace(eps=1e-6)  # with no smoothing at all a constant field divides 0 by 0
    m = DivisiveNorm(shape[1], spec, affine=True, track_running_stats=False)
    if spec.sum_axes == {"space"} and math.prod(shape[2:]) == 1:   # instance norm on one position: refused, as torch
        with pytest.raises(ValueError, match="more than 1 spatial position"):
            m(x)
    else:
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        m.eval()
        assert torch.isfinite(m(x)).all()
    assert torch.allclose(divisive_norm(x, spec), divisive_norm_reference(x, spec), atol=1e-5)


@pytest.mark.parametrize("border", ["valid", "zeros", "reference"])
@pytest.mark.parametrize("shape", [(2, 1, 6, 5, 4), (3, 1, 7, 1, 1), (2, 1, 5, 9), (2, 1, 9), (2, 3, 1, 4, 4)])
@pytest.mark.parametrize("kc,ks", [(1, 3), (3, 1), (3, 5), (5, 7), (1, 9), (11, 1)])
def test_box_filters_agree_cpu_shift_and_gpu_pool(shape, kc, ks, border):
    """The CPU (shifted adds / cumulative sums) and GPU (pooling) box filters are the same operator, values
    and gradients; even windows (TF SAME) under the reference border; windows wider than the map."""
    from dnlib.norms.functional import _box_pool, _box_shift, _Field
    nspatial = len(shape) - 3
    if shape[1] > 1 and kc > 1:
        kc = 1  # channel windows need groups == 1
    if nspatial == 0:
        ks = 1  # an (N, C) input has no spatial axis to window
    if kc == 1 and ks == 1:
        return
    for even in ([0, 1] if border == "reference" else [0]):
        f = _Field((), kc + even if kc > 1 else 1, ks + even if ks > 1 else 1, border)
        t = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        a, b = _box_shift(t, f, nspatial), _box_pool(t, f, nspatial)
        assert torch.allclose(a, b, atol=1e-12)
        g = torch.randn_like(a)
        ga, = torch.autograd.grad(a, t, g)
        gb, = torch.autograd.grad(b, t, g)
        assert torch.allclose(ga, gb, atol=1e-12)


# --- the band path (impl="band"): 1-D channel-window specs as banded matrix products, the same operator ----------

BAND_SPECS = [
    # the issue-12 case: sup_scale was ignored by the RNN cells' former BandDivisiveNorm (max |diff| 0.43)
    NormSpec("channel", "channel", {"channel": 5}, {"channel": 5}, sigma=0.5, sup_scale=2.0),
    NormSpec("channel", "channel", {"channel": 61}, {"channel": 61}, sigma=1.0, eps=0.0, border="zeros"),
    NormSpec("channel", "channel", {"channel": 5}, {"channel": 9}, sigma=0.3, border="valid"),
    NormSpec("channel", "channel", {"channel": 6}, {"channel": 3}, sigma=1.0, eps=0.0, border="reference"),
    NormSpec("channel", "channel", {"channel": 30}, {"channel": 30}, sigma=1.0, eps=0.0, border="reference"),
    NormSpec("channel", "channel", {"channel": 7}, {"channel": 7}, sigma=0.5, learn_sigma=True, power=0.75),
    NormSpec("channel", None, {"channel": 5}),                                        # mean subtraction only
    NormSpec(None, "channel", None, {"channel": 5}, sigma=1.2, eps=0.0, power=0.75, sup_scale=0.3,
             border="zeros"),                                                          # LRN: no centring
    NormSpec("channel", "channel", None, {"channel": 3}, sigma=0.5),                  # global mean, local B
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 40), (3, 40, 4)])
@pytest.mark.parametrize("spec", BAND_SPECS, ids=repr)
def test_band_path_equals_general_path(spec, shape, dtype):
    """impl="band" against impl="general": outputs, input, gain/bias and learned-sigma gradients, the L1 penalty
    and its gradient."""
    ours = DivisiveNorm(shape[1], spec, affine=True, alpha=0.1, impl="band", dtype=dtype)
    ref = DivisiveNorm(shape[1], spec, affine=True, alpha=0.1, impl="general", dtype=dtype)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    x = _x(shape, dtype, seed=1)
    ours(x), ref(x)
    pa, pb = sparse_penalty(ours), sparse_penalty(ref)
    assert abs(pa.item() - pb.item()) < TOL[dtype]
    ga, = torch.autograd.grad(pa, x)
    gb, = torch.autograd.grad(pb, x)
    assert (ga - gb).abs().max().item() < TOL[dtype]
    ours.alpha = ref.alpha = 0.0   # (no L1 terms left behind by the backward passes below)
    _compare(ours, ref, _x(shape, dtype), dtype)


@pytest.mark.parametrize("spec", BAND_SPECS[:1] + BAND_SPECS[3:4] + BAND_SPECS[5:], ids=repr)
def test_band_path_gradgradcheck(spec):
    m = DivisiveNorm(7, spec, affine=True, impl="band").double()
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1)
    x = _x((3, 7), torch.float64)
    assert torch.autograd.gradcheck(m, (x,))
    assert torch.autograd.gradgradcheck(m, (x,))


def test_auto_takes_the_band_path_for_small_2d_inputs_only():
    """impl="auto" is the band path (bit for bit) for (N, C) inputs with C <= 256, the general path otherwise."""
    from dnlib.norms.norm import BAND_MAX_FEATURES
    spec = BAND_SPECS[0]
    for c, rank, expect in [(BAND_MAX_FEATURES, 2, "band"), (BAND_MAX_FEATURES + 1, 2, "general"),
                            (40, 3, "general")]:
        x = _x((4, c) + (3,) * (rank - 2), torch.float32).detach()
        outs = {impl: DivisiveNorm(c, spec, affine=False, impl=impl)(x) for impl in ("auto", "band", "general")}
        assert not torch.equal(outs["band"], outs["general"])   # the two paths round differently ...
        assert torch.equal(outs["auto"], outs[expect]), (c, rank)   # ... so this tells which one ran
    with pytest.raises(ValueError, match=r"impl: 'band' needs fields that pool only 'channel'"):
        make_norm("dn", 4, impl="band")


# ------------------------------------------------------------------ running statistics: the authors' TF convention
def _tf_ema_reference(xs, decay, dims):
    """TensorFlow's ExponentialMovingAverage of tf.nn.moments, as the authors' batch_norm keeps it: shadow values
    start at 0; each training step ema = decay * ema + (1 - decay) * x, with x the batch mean and the biased
    variance (mean of squares about the batch mean) over ``dims``."""
    mean = var = 0.0
    for x in xs:
        bm = x.mean(dims)
        bv = ((x - x.mean(dims, keepdim=True)) ** 2).mean(dims)
        mean = decay * mean + (1 - decay) * bm
        var = decay * var + (1 - decay) * bv
    return mean, var


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(20, 5), (4, 5, 3, 3)])
def test_bn_running_stats_tf_is_tensorflows_moving_average(shape, impl):
    dims = (0,) if len(shape) == 2 else (0, 2, 3)
    ours = make_norm("bn", shape[1], sigma=0.01, eps=0.0, impl=impl, running_stats="tf").double()
    torch_conv = make_norm("bn", shape[1], sigma=0.01, eps=0.0, impl=impl).double()
    assert torch.equal(ours.running_var, torch.zeros(shape[1], dtype=torch.float64))       # starts at 0, not 1
    xs = [_x(shape, torch.float64, seed=s).detach() for s in range(5)]
    for x in xs:
        torch.testing.assert_close(ours(x), torch_conv(x))     # training: batch statistics, the same
    mean, var = _tf_ema_reference(xs, 0.9, dims)
    torch.testing.assert_close(ours.running_mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_var, var, rtol=0, atol=1e-12)
    ours.eval()
    x = _x(shape, torch.float64, seed=9).detach()
    view = (1, -1) + (1,) * (len(shape) - 2)
    ref = (x - mean.view(view)) / torch.sqrt(var.view(view) + 1e-4)
    torch.testing.assert_close(ours(x), ref, rtol=0, atol=1e-10)
    # the default keeps torch's convention: running_var from 1, unbiased (n / (n - 1) = 20/19 for a batch of 20)
    assert not torch.allclose(torch_conv.running_var, var)
    if len(shape) == 2:
        n = shape[0]
        ema1 = 0.9 * 1.0 + 0.1 * xs[0].var(0, unbiased=True)
        fresh = make_norm("bn", shape[1]).double()
        fresh(xs[0])
        torch.testing.assert_close(fresh.running_var, ema1)
        ratio = xs[0].var(0, unbiased=True) / xs[0].var(0, unbiased=False)
        torch.testing.assert_close(ratio, torch.full_like(ratio, n / (n - 1)))


def test_running_stats_option_is_checked_and_shown():
    with pytest.raises(ValueError, match=r"running_stats: got 'keras'; allowed values are \['torch', 'tf'\]"):
        make_norm("bn", 4, running_stats="keras")
    with pytest.raises(ValueError, match=r"impl: 'fused' .* running_stats='tf'"):
        make_norm("bn", 4, impl="fused", running_stats="tf")
    m = make_norm("bn", 4, running_stats="tf")
    assert m.fused is None and "running_stats='tf'" in repr(m) and "running_stats='" not in repr(make_norm("bn", 4))
    m.running_var.fill_(3.0)
    m.reset_running_stats()
    assert torch.equal(m.running_var, torch.zeros(4)) and torch.equal(m.running_mean, torch.zeros(4))


# --- instance norm on one position per (sample, channel) ---------------------------------------------------------

@pytest.mark.parametrize("impl", ["auto", "general", "fused", "compile"])
@pytest.mark.parametrize("shape", [(8, 16), (8, 16, 1), (8, 16, 1, 1), (1, 16, 1, 1)])
@pytest.mark.parametrize("train", [True, False])
def test_instance_norm_on_one_position_raises_like_torch(impl, shape, train):
    """'in' centres each channel of each sample over its positions: with one position the output was all zeros
    (training and eval), where torch's InstanceNorm raises 'Expected more than 1 spatial element when training' (in
    eval too: it keeps no running statistics). Now a ValueError naming the preset and the input's shape."""
    x = torch.randn(shape)
    if len(shape) > 2:
        ref = (nn.InstanceNorm1d if len(shape) == 3 else nn.InstanceNorm2d)(16).train(train)
        with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
            ref(x)
    for m in (make_norm("in", 16, impl=impl), make_norm("in", 16, impl=impl, sigma=0.5, affine=True),
              DivisiveNorm(16, NormSpec("space", None), impl="general")):
        m.train(train)
        with pytest.raises(ValueError, match=rf"instance norm \('in'.* more than 1 spatial position .*"
                                             rf"{re.escape(str(tuple(shape)))}"):
            m(x)
    # two positions are fine
    y = make_norm("in", 16, impl=impl).train(train)(torch.randn(*shape[:2], 2))
    assert y.abs().max() > 0


@pytest.mark.parametrize("impl", ["auto", "general", "fused", "compile"])
@pytest.mark.parametrize("shape", [(0, 16), (0, 16, 1), (0, 16, 1, 1), (0, 16, 5, 5)])
@pytest.mark.parametrize("train", [True, False])
def test_instance_norm_on_an_empty_batch_gives_an_empty_output(impl, shape, train):
    """The docstring's 'Empty batches give empty outputs': (0, C) raised torch's '...when training' message, in eval
    too."""
    x = torch.randn(shape, requires_grad=True)
    m = make_norm("in", 16, impl=impl, affine=True).train(train)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("cell, kwargs", [("lstm", {}), ("rnn", {}), ("ln-lstm", {}), ("bn-lstm", {}),
                                          ("bn-rnn", {}), ("lstm", {"norm_kwargs": {"sigma": 0.5}})])
@pytest.mark.parametrize("norm", ["in", "IN", NormSpec("space", "space")])
def test_recurrent_cells_refuse_instance_norm(cell, kwargs, norm):
    """The cells feed their normalizers (N, H): NormLSTMCell(norm='in') built and ran with every gate
    pre-activation zeroed. Now refused when the cell is built."""
    from dnlib.models.rnn import make_cell
    with pytest.raises(ValueError, match=r"norm: .*'space' alone.*\(N, H\)"):
        make_cell(cell, 10, 16, norm=norm, **kwargs)
    make_cell(cell, 10, 16, norm="bn" if cell.startswith("bn") else "ln", **kwargs)   # (the usual norms build)
