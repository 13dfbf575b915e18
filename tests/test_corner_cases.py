"""Corner cases where torch's layers behave and a normalizer must too (issue 12 items 7-9, issue 11 §3).

Each test states torch's behaviour (or a formula written here) and checks ``DivisiveNorm`` against it:
RMSNorm's default eps, the channel-only LayerNorm2d/RmsNorm2d of timm, the L1 penalty under
``nn.DataParallel``'s replication and its memory when never collected, half-precision BN models, empty
batches, one value per channel, complex input, TorchScript, numpy scalars and non-finite ``alpha``.
"""
import importlib
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnlib import DivisiveNorm, NormSpec, get_spec, make_norm, sparse_penalty

IMPLS = ["auto", "general"]
replicate_mod = importlib.import_module("torch.nn.parallel.replicate")  # the module, not the function


def _x(shape, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + 0.5).to(dtype)


# --- item 7: rms uses torch's default eps ---------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [2.0, 1e-3])
def test_rms_default_eps_is_torchs(impl, dtype, scale):
    shape = (3, 4, 5, 6)
    x = _x(shape, dtype, scale=scale).requires_grad_()
    ref = nn.RMSNorm(shape[1:], dtype=dtype)  # eps=None: torch.finfo(x.dtype).eps at forward time
    ours = make_norm("rms", shape[1], impl=impl, dtype=dtype)
    y, r = ours(x), ref(x)
    torch.testing.assert_close(y, r, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)
    (gy,) = torch.autograd.grad(y.square().sum(), x)
    (gr,) = torch.autograd.grad(r.square().sum(), x)
    torch.testing.assert_close(gy, gr, rtol=1e-10 if dtype == torch.float64 else 1e-4,
                               atol=1e-12 if dtype == torch.float64 else 1e-5 / scale)


def test_rms_eps_none_in_spec_and_repr():
    spec = get_spec("rms")
    assert spec.eps is None and "eps=finfo" in repr(spec)
    assert spec.eps_for(torch.float64) == torch.finfo(torch.float64).eps
    assert spec.eps_for(torch.float16) == torch.finfo(torch.float32).eps  # torch's opmath type, as F.rms_norm
    with pytest.raises(ValueError, match=r"eps: must be a finite number >= 0 or None, got -1"):
        NormSpec(eps=-1)


# --- item 9: ln2d / rms2d = timm's LayerNorm2d / RmsNorm2d -----------------------------------------------------

def _timm_layernorm2d(x, w, b, eps):
    """timm.layers.LayerNorm2d.forward: NCHW -> NHWC, F.layer_norm over C, back."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)


def _timm_rmsnorm2d(x, w, eps):
    """timm.layers.RmsNorm2d (its F.rms_norm form): RMS over C at each position."""
    return F.rms_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize("impl", IMPLS)
def test_ln2d_matches_naive_formula_and_timm(impl):
    x = _x((3, 6, 4, 5)).requires_grad_()
    m = make_norm("ln2d", 6, impl=impl, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 1.5, 6))
        m.bias.copy_(torch.linspace(-0.2, 0.3, 6))
    w4, b4 = m.weight.view(1, -1, 1, 1), m.bias.view(1, -1, 1, 1)
    mu = x.mean(1, keepdim=True)
    naive = (x - mu) / ((x - mu).square().mean(1, keepdim=True) + 1e-6).sqrt() * w4 + b4
    timm = _timm_layernorm2d(x, m.weight, m.bias, 1e-6)
    y = m(x)
    torch.testing.assert_close(y, naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, timm, rtol=1e-12, atol=1e-12)
    up = torch.randn_like(y)
    g = torch.autograd.grad((y * up).sum(), [x, m.weight, m.bias])
    gt = torch.autograd.grad((timm * up).sum(), [x, m.weight, m.bias])
    for a, b in zip(g, gt):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # ln normalizes over (C, H, W), ln2d over C only: they differ on images, agree on (N, C)
    assert (make_norm("ln", 6, dtype=torch.float64)(x) - make_norm("ln2d", 6, dtype=torch.float64)(x)).abs().max() > 0.1
    x2 = _x((4, 6))
    torch.testing.assert_close(make_norm("ln2d", 6, eps=1e-5).double()(x2), make_norm("ln", 6).double()(x2))


@pytest.mark.parametrize("impl", IMPLS)
def test_rms2d_matches_naive_formula_and_timm(impl):
    x = _x((3, 6, 4, 5)).requires_grad_()
    m = make_norm("rms2d", 6, impl=impl, dtype=torch.float64)
    assert m.bias is None
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 1.5, 6))
    naive = x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-6) * m.weight.view(1, -1, 1, 1)
    timm = _timm_rmsnorm2d(x, m.weight, 1e-6)
    y = m(x)
    torch.testing.assert_close(y, naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, timm, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)
    (gt,) = torch.autograd.grad(timm.sum(), x)
    torch.testing.assert_close(g, gt, rtol=1e-10, atol=1e-12)


# --- item 8: the L1 penalty under nn.DataParallel's replication -----------------------------------------------

def _cpu_broadcast(tensors, devices, detach=False):
    """What ``torch.nn.parallel.replicate`` gets from its cross-GPU broadcast: per device, non-leaf copies of
    the parameters (differentiable unless ``detach``). Only the copy between devices is replaced; the
    replication itself is torch's."""
    return [[t.detach() if detach else t.view_as(t) for t in tensors] for _ in devices]


def _alpha_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_norm("ln", 4, alpha=0.3), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), make_norm("dn", 4, alpha=0.2)).double()


def test_sparse_penalty_survives_data_parallel_replicas(monkeypatch):
    monkeypatch.setattr(replicate_mod, "_broadcast_coalesced_reshape", _cpu_broadcast)
    model = _alpha_model()
    x = _x((6, 3, 5, 5))
    # one device: the reference
    model(x)
    ref = sparse_penalty(model)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    # two replicas (what nn.DataParallel does on 2 GPUs: replicate, scatter along the batch, apply)
    replicas = replicate_mod.replicate(model, [0, 1])
    outs = [r(chunk) for r, chunk in zip(replicas, x.split([4, 2]))]  # (DataParallel gathers them)
    pen = sparse_penalty(model)
    assert len(outs) == 2
    # LN and DN fields are per example, so the batch-weighted mean over replicas is the one-device penalty
    torch.testing.assert_close(pen, ref, rtol=1e-12, atol=0)
    grads = torch.autograd.grad(pen, list(model.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert sparse_penalty(model).item() == 0.0  # collected once


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nn.DataParallel replicates only with 2+ GPUs")
def test_sparse_penalty_under_real_data_parallel():
    model = _alpha_model().float().cuda()
    x = _x((8, 3, 5, 5), torch.float32).cuda()
    model(x)
    ref = sparse_penalty(model)
    nn.DataParallel(model)(x)
    torch.testing.assert_close(sparse_penalty(model), ref, rtol=1e-5, atol=1e-7)


# --- item 8: pending L1 terms do not keep freed graphs alive ---------------------------------------------------

class _SavedTensorCounter:
    """Counts tensors autograd saved for backward that are still alive (through saved_tensors_hooks)."""

    class _Box:
        def __init__(self, t):
            self.t = t

    def __init__(self):
        self.refs = []

    def pack(self, t):
        box = self._Box(t)
        self.refs.append(weakref.ref(box))
        return box

    @staticmethod
    def unpack(box):
        return box.t

    def alive(self):
        return sum(r() is not None for r in self.refs)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_uncollected_terms_do_not_keep_graphs_alive(impl):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_norm("bn", 4, alpha=0.1, impl=impl),
                          nn.Conv2d(4, 4, 3, padding=1), make_norm("dn", 4, alpha=0.1, impl=impl))
    counter = _SavedTensorCounter()
    with pytest.warns(UserWarning, match=r"L1 term .* was not part of"):
        for step in range(30):
            x = _x((2, 3, 6, 6), torch.float32, seed=step)
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                out = model(x)
            out.square().mean().backward()   # the user forgot sparse_penalty(model)
            if step == 0:
                one_step = counter.alive()
    # before: every forward's term held its saved activations (30 steps x the L1 branch)
    assert counter.alive() <= one_step + 4, (counter.alive(), one_step)
    # the terms the losses missed are dropped: their values are not added to a later loss either
    assert sparse_penalty(model).item() == 0.0


def test_terms_still_accumulate_across_connected_calls_and_retained_graphs():
    m = make_norm("ln", 4, alpha=0.5).double()
    x = _x((3, 4)).requires_grad_()
    h, expected = x, 0.0
    for _ in range(5):                              # an RNN site: one term per time step
        expected = expected + 0.5 * (h - h.mean(1, keepdim=True)).abs().mean()
        h = torch.tanh(m(h))
    # a gradient penalty through the same graph (create_graph keeps it) must not drop the terms
    torch.autograd.grad(h.sum(), x, create_graph=True, retain_graph=True)
    h2 = m(x)                                       # another forward before the loss
    expected = expected + 0.5 * (x - x.mean(1, keepdim=True)).abs().mean()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pen = sparse_penalty(m)
    torch.testing.assert_close(pen, expected)
    torch.testing.assert_close(torch.autograd.grad(pen, x, retain_graph=True)[0], torch.autograd.grad(expected, x)[0])
    assert h2.shape == x.shape


# --- item 8: half-precision BN models, empty batches, one value per channel, complex input -------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bn_model_cast_to_half_runs_like_torch(impl, dtype):
    ours, ref = make_norm("bn", 4, impl=impl).to(dtype), nn.BatchNorm2d(4).to(dtype)
    for step in range(3):
        x = _x((5, 4, 3, 3), torch.float32, seed=step).to(dtype)
        y, r = ours(x), ref(x)
        assert y.dtype == r.dtype == dtype
        torch.testing.assert_close(y.float(), r.float(), rtol=0, atol=2e-2)
    for name in ("running_mean", "running_var"):
        assert getattr(ours, name).dtype == dtype
        torch.testing.assert_close(getattr(ours, name).float(), getattr(ref, name).float(), rtol=1e-2, atol=1e-2)
    ours.eval(), ref.eval()
    x = _x((2, 4, 3, 3), torch.float32, seed=9).to(dtype)
    torch.testing.assert_close(ours(x).float(), ref(x).float(), rtol=0, atol=2e-2)


_EMPTY_REFS = {
    "in": lambda c: nn.InstanceNorm2d(c),
    "bn": lambda c: nn.BatchNorm2d(c),
    "ln": lambda c: nn.GroupNorm(1, c),
    "gn": lambda c: nn.GroupNorm(32, c),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["in", "bn", "ln", "gn", "dn", "rms", "ln2d"])
def test_empty_batch_returns_empty_like_torch(name, impl):
    x = torch.randn(0, 32, 5, 5, requires_grad=True)
    m = make_norm(name, 32, impl=impl)
    y = m(x)
    assert y.shape == x.shape
    if name in _EMPTY_REFS:
        ref = _EMPTY_REFS[name](32)
        assert ref(x).shape == y.shape
        if name == "bn":
            torch.testing.assert_close(m.running_mean, ref.running_mean, equal_nan=True)
            torch.testing.assert_close(m.running_var, ref.running_var, equal_nan=True)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_one_value_per_channel_raises_like_torch(impl, train):
    x = torch.randn(1, 4, 1, 1)
    ref = nn.BatchNorm2d(4, track_running_stats=False).train(train)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ref(x)
    ours = make_norm("bn", 4, impl=impl, track_running_stats=False).train(train)
    with pytest.raises(ValueError, match=r"more than 1 value per channel .*1, 4, 1, 1"):
        ours(x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["bn", "ln", "dn", "none"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_non_real_input_is_rejected(name, impl, dtype):
    x = torch.ones(2, 4, 3, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"input: expected a real floating-point tensor, got dtype {dtype}"):
        make_norm(name, 4, impl=impl)(x)


# --- item 8: TorchScript --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bn", "dn"])
def test_torchscript_refuses_with_a_clear_message(name):
    torch.jit.script(nn.BatchNorm2d(4))  # torch's layer scripts
    model = nn.Sequential(nn.Conv2d(3, 4, 3), make_norm(name, 4))
    with pytest.raises(RuntimeError, match=r"DivisiveNorm cannot be compiled by torch.jit.script.*torch.jit.trace"):
        torch.jit.script(model)


@pytest.mark.parametrize("name", ["bn", "dn", "rms"])
def test_torch_jit_trace_works_in_eval(name):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), make_norm(name, 4)).eval()
    x = _x((2, 3, 6, 6), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x, check_trace=False)
    torch.testing.assert_close(traced(_x((2, 3, 6, 6), torch.float32, seed=1)),
                               model(_x((2, 3, 6, 6), torch.float32, seed=1)))


# --- item 8: numpy scalars; issue 11 §3: alpha must be finite --------------------------------------------------

def test_numpy_scalars_are_accepted():
    a = NormSpec("channel,space", "channel,space", {"space": np.int64(3)}, sigma=np.float32(0.5), groups=np.int64(4),
                 eps=np.float64(1e-5), power=np.float32(0.5), sup_scale=np.float64(1.0))
    b = NormSpec("channel,space", "channel,space", {"space": 3}, sigma=0.5, groups=4)
    assert a == b and hash(a) == hash(b)
    assert type(a.sigma) is float and type(a.groups) is int and type(dict(a.sum_window)["space"]) is int
    m = make_norm("dn", np.int64(8), window=np.int64(5), sigma=np.float32(0.5), alpha=np.float64(0.1))
    assert m.num_features == 8 and dict(m.spec.sum_window) == {"space": 5} and m.alpha == pytest.approx(0.1)
    assert m(torch.randn(2, 8, 4, 4)).shape == (2, 8, 4, 4)
    assert make_norm("bn", np.int64(8), momentum=np.float32(0.1)).momentum == pytest.approx(0.1)  # (dn keeps none)


@pytest.mark.parametrize("build, match", [
    (lambda: NormSpec(sigma=np.float32(-0.5)), r"sigma: must be a finite number >= 0, got -0.5"),
    (lambda: NormSpec(sigma=np.float64("nan")), r"sigma: must be a finite number >= 0, got nan"),
    (lambda: NormSpec("channel", "channel", groups=np.int64(0)), r"groups: must be an integer >= 1, got 0"),
    (lambda: NormSpec("channel", "channel", groups=np.float64(4.0)), r"groups: must be an integer >= 1, got 4.0"),
    (lambda: NormSpec("channel", "channel", groups=np.bool_(True)), r"groups: must be an integer >= 1, got True"),
    (lambda: NormSpec("channel", "channel", groups=True), r"groups: must be an integer >= 1, got True"),
    (lambda: NormSpec("space", "space", {"space": np.float32(3)}), r"window size for 'space' must be an integer"),
    (lambda: NormSpec(sigma="0.5"), r"sigma: must be a finite number >= 0, got '0.5'"),
    (lambda: make_norm("ln", np.int64(0)), r"num_features: must be an integer >= 1, got 0"),
])
def test_bad_numpy_and_python_values_name_the_parameter(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, -0.1, np.float32("nan"), True, "0.1"])
@pytest.mark.parametrize("via", ["make_norm", "DivisiveNorm"])
def test_alpha_must_be_finite_and_non_negative(alpha, via):
    with pytest.raises(ValueError, match=r"alpha: the L1 weight must be a finite number >= 0, got"):
        if via == "make_norm":
            make_norm("dn", 4, alpha=alpha)
        else:
            DivisiveNorm(4, get_spec("ln"), alpha=alpha)
