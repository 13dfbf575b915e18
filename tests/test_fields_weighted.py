"""Weighted (Gaussian) windows and the mean floor of the divisor (``lcn``): against a naive per-unit Python loop over
the Gaussian window under every border rule (fp64), gradcheck on the general path, the compiled path equal to the
general one, and box weights identical to the unweighted spec."""
import math

import numpy as np
import pytest
import torch

from dnlib import DivisiveNorm, NormSpec, get_spec, make_norm, sparse_penalty
from dnlib.norms.functional import band_divisive_norm, divisive_norm, divisive_norm_reference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CS = "channel,space"


def _offsets(k):
    return range(-((k - 1) // 2), k // 2 + 1)


def _gauss(k, width):
    """{offset: weight}: exp(-o^2 / (2 width^2)) over the window, normalized to sum 1 (box: width 0)."""
    raw = {o: (math.exp(-o * o / (2 * width * width)) if width else 1.0) for o in _offsets(k)}
    z = sum(raw.values())
    return {o: v / z for o, v in raw.items()}


def _naive_mean(t, window, weights, border):
    """Weighted field mean of ``t`` (N, C, *S) over all channels (or a channel window) and a spatial window, one
    unit at a time: sum of weight * value over the window's in-map neighbours, divided by the sum of the weights
    inside the map (valid) or of the whole window (zeros/reference)."""
    n_, c_, *sp = t.shape
    kc, ks = window.get("channel", 0), window.get("space", 1)
    gc = _gauss(kc, weights.get("channel", 0.0)) if kc else None
    gs = _gauss(ks, weights.get("space", 0.0))
    out = np.zeros_like(t)
    for idx in np.ndindex(*t.shape):
        n, c, pos = idx[0], idx[1], idx[2:]
        num = den_in = den_all = 0.0
        chans = [(c + o, gc[o]) for o in gc] if gc else [(cc, 1.0) for cc in range(c_)]
        for cc, wc in chans:
            for offs in np.ndindex(*([ks] * len(sp))):
                offs = [o - (ks - 1) // 2 for o in offs]
                w = wc * math.prod(gs[o] for o in offs)
                q = [p + o for p, o in zip(pos, offs)]
                den_all += w
                if 0 <= cc < c_ and all(0 <= qq < s for qq, s in zip(q, sp)):
                    num += w * t[(n, cc, *q)]
                    den_in += w
        out[idx] = num / (den_in if border == "valid" else den_all)
    return out


def _naive_dn(x, spec):
    """The spec's DN (A = B = channels x windows, sigma, eps, floor) by the loop; the reference border's factor
    (k_B / k_A)^2 on 2-D spatial windows."""
    x = x.numpy()
    mu = _naive_mean(x, spec.window("sum"), spec.weights("sum"), spec.border)
    v = x - mu
    s = _naive_mean(v * v, spec.window("sup"), spec.weights("sup"), spec.border)
    if spec.border == "reference" and x.ndim == 4 and "channel" not in spec.window("sum"):
        s = s * (spec.window("sup")["space"] / spec.window("sum")["space"]) ** 2
    d = np.sqrt(spec.sigma ** 2 + spec.eps + s)
    if spec.floor == "mean":
        c = d.reshape(d.shape[0], -1).mean(1).reshape((-1,) + (1,) * (d.ndim - 1))
        d = np.maximum(d, c)
    return torch.from_numpy(v / d)


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5


BORDERS = ("valid", "zeros", "reference")


@pytest.mark.parametrize("border", BORDERS)
def test_lcn_equals_naive_loop(border):
    spec = get_spec("lcn").replace(sum_window={"space": 5}, sup_window={"space": 5}, border=border)
    assert spec.floor == "mean" and spec.weights("sum") == {"space": 2.0}
    x = _x((2, 3, 6, 5))
    want = _naive_dn(x, spec)
    for y in (divisive_norm(x, spec), divisive_norm_reference(x, spec),
              make_norm("lcn", 3, window=5, border=border).double()(x)):
        assert (y - want).abs().max().item() < 1e-12
    # the floor is active: some positions are divided by c (their local std is below the mean), some not
    d_local = _naive_dn(x, spec.replace(floor=None))
    assert ((want - d_local).abs() > 1e-6).any() and ((want - d_local).abs() < 1e-14).any()


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 7)])
def test_gaussian_dn_unequal_windows_equals_naive_loop(border, shape):
    """Unequal windows and widths, a box A with a Gaussian B, sigma; 2-D and 1-D maps; every border."""
    for sum_w in ({"space": 1.5}, {"space": "box"}):
        spec = NormSpec(CS, CS, {"space": 3}, {"space": 5}, sigma=0.5, border=border, sum_weights=sum_w,
                        sup_weights={"space": 0.8})
        x = _x(shape, seed=1)
        want = _naive_dn(x, spec)
        assert (divisive_norm(x, spec) - want).abs().max().item() < 1e-12
        assert (divisive_norm_reference(x, spec) - want).abs().max().item() < 1e-12


def test_gaussian_even_window_reference_border():
    spec = NormSpec(CS, CS, {"space": 2}, {"space": 4}, border="reference", sum_weights={"space": 1.0},
                    sup_weights={"space": 1.5})
    x = _x((1, 2, 5, 4), seed=2)
    assert (divisive_norm(x, spec) - _naive_dn(x, spec)).abs().max().item() < 1e-12


@pytest.mark.parametrize("border", BORDERS)
def test_gaussian_channel_window_equals_naive_loop_on_every_path(border):
    """A Gaussian channel window (1-D DN) with the floor: general, reference and band paths against the loop."""
    spec = NormSpec("channel", "channel", {"channel": 5}, {"channel": 7}, sigma=0.3, border=border,
                    sum_weights={"channel": 1.2}, sup_weights={"channel": 2.5}, floor="mean")
    x = _x((3, 9), seed=3)
    want = _naive_dn(x, spec)
    assert (divisive_norm(x, spec) - want).abs().max().item() < 1e-12
    assert (band_divisive_norm(x, spec)[0] - want).abs().max().item() < 1e-12
    x3 = _x((2, 9, 3), seed=4)
    assert (divisive_norm(x3, spec) - _naive_dn(x3, spec)).abs().max().item() < 1e-12


@pytest.mark.parametrize("spec", [
    NormSpec(CS, CS, {"space": 3}, {"space": 5}, sigma=0.5, sum_weights={"space": 1.0}, sup_weights={"space": 2.0},
             floor="mean"),                                                           # the shared-field Function
    NormSpec(CS, CS, {"channel": 3, "space": 3}, {"space": 3}, sum_weights={"channel": 1.0, "space": 0.7},
             sup_weights={"space": 1.5}, border="zeros", floor="mean"),               # the general Function
], ids=["shared", "general"])
def test_gradcheck_general_path(spec):
    m = DivisiveNorm(4, spec.replace(learn_sigma=True, sigma=0.6), affine=True, alpha=0.1, impl="general").double()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]

    def fn(x, *ps):
        y = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return y, sparse_penalty(m)
    x = _x((2, 4, 4, 3), seed=5).requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params), fast_mode=True)


def test_box_weights_are_todays_spec_and_output():
    """Box weights spelled out give the very same spec (equal, same hash, same repr) and bit-identical outputs and
    gradients; the box presets are unchanged (no weights, no floor)."""
    plain = NormSpec(CS, CS, {"space": 5}, {"space": 3}, sigma=0.5, border="reference")
    boxed = NormSpec(CS, CS, {"space": 5}, {"space": 3}, sigma=0.5, border="reference",
                     sum_weights={"space": "box"}, sup_weights={"space": "box"})
    assert boxed == plain and hash(boxed) == hash(plain) and repr(boxed) == repr(plain)
    for name in ("dn", "dn-s", "dn-ms", "dn-1d", "lrn", "bn", "ln"):
        assert not get_spec(name).weighted and get_spec(name).floor is None
    x = _x((2, 3, 6, 6)).requires_grad_()
    ya = make_norm(plain, 3, affine=False)(x)
    yb = make_norm("dn", 3, window=5, sup_window=3, sigma=0.5, border="reference", weights="box")(x)
    assert torch.equal(ya, yb)
    ga, = torch.autograd.grad(ya.sum(), x)
    gb, = torch.autograd.grad(yb.sum(), x)
    assert torch.equal(ga, gb)


def test_a_wide_gaussian_tends_to_the_box():
    spec = NormSpec(CS, CS, {"space": 3}, {"space": 3}, sum_weights={"space": 1e4}, sup_weights={"space": 1e4})
    x = _x((2, 3, 5, 5))
    assert (divisive_norm(x, spec) - divisive_norm(x, spec.replace(sum_weights=None, sup_weights=None))).abs().max() \
        < 1e-6


def test_bad_weights_and_floor_name_the_parameter():
    cases = [(dict(sum_weights={"channel": 1.0}), "sum_weights: weights on axis 'channel'"),
             (dict(sup_weights={"space": -1.0}), "sup_weights: .*'box' or a Gaussian width"),
             (dict(sup_weights={"space": "gauss"}), "sup_weights: .*'box' or a Gaussian width"),
             (dict(sum_weights=3), "sum_weights: expected a mapping"),
             (dict(floor="max"), r"floor: got 'max'; allowed values are \[None, 'mean'\]")]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            NormSpec(CS, CS, {"space": 3}, {"space": 3}, **kw)
    with pytest.raises(ValueError, match="floor: .*sup_axes is empty"):
        NormSpec(CS, None, {"space": 3}, floor="mean")
    with pytest.raises(ValueError, match="make_norm: unknown override 'width'"):
        make_norm("lcn", 3, width=2.0)


def test_compile_path_equals_general():
    torch.manual_seed(0)
    kw = dict(window=3, alpha=0.01)
    a = make_norm("lcn", 4, impl="general", **kw).double()
    b = make_norm("lcn", 4, impl="compile", **kw).double()
    b.load_state_dict(a.state_dict())
    x = _x((3, 4, 5, 4), seed=6).requires_grad_()
    w = _x((3, 4, 5, 4), seed=7)
    out = []
    for m in (a, b):
        y = m(x)
        loss = (y * w).sum() + sparse_penalty(m)
        out.append((y.detach(), loss.detach(), torch.autograd.grad(loss, [x, *m.parameters()])))
    (ya, la, ga), (yb, lb, gb) = out
    assert (ya - yb).abs().max().item() < 1e-10 and abs(la.item() - lb.item()) < 1e-9
    for u, v in zip(ga, gb):
        assert (u - v).abs().max().item() < 1e-9


def test_floor_leaves_the_native_kernels():
    """A floored spec whose fields are BN's is not F.batch_norm (which has no floor): here the floor is the mean
    over the channels of the per-channel divisors (the one example-independent statistic)."""
    m = DivisiveNorm(3, NormSpec("batch,space", "batch,space", floor="mean"), affine=False,
                     track_running_stats=False).double()
    assert m.fused is None
    x = _x((4, 3, 2, 2), seed=8) * torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    v = x - x.mean((0, 2, 3), keepdim=True)
    d = (v.square().mean((0, 2, 3), keepdim=True) + 1e-5).sqrt()
    want = v / torch.maximum(d, d.mean())
    assert (m(x) - want).abs().max().item() < 1e-12


def test_replace_keeps_the_weights_of_the_windows_that_remain():
    lcn = get_spec("lcn")
    assert lcn.replace(sum_window={"space": 5}).weights("sum") == {"space": 2.0}
    assert lcn.replace(sum_window={}).weights("sum") == {} and lcn.replace(sum_window={}).weights("sup") == {
        "space": 2.0}
    assert lcn.replace(sup_window={"space": 1}).sup_weights == ()
    # a window given as a bare number is refused with the parameter's name (it raised TypeError before)
    with pytest.raises(ValueError, match="sum_window: expected a mapping"):
        lcn.replace(sum_window=3)


def test_figure_field_weights_are_the_field_mean_weights():
    """figures.field_weights (the shading of Figure 1 for weighted windows) gives the weights of the library's own
    field mean: sum(weights * x) == E_A[x] at the drawn unit, centre and corner, lcn and a box preset."""
    from matplotlib.figure import Figure

    from dnlib.analysis import figures
    from dnlib.norms.functional import field_mean
    x = _x((2, 3, 7, 6), seed=9)
    for name, kw in (("lcn", dict(sum_window={"space": 5}, sum_weights={"space": 1.3})), ("dn", {})):
        spec = get_spec(name).replace(**kw)
        mu = field_mean(x, spec).numpy()
        for center in ((0, 1, 3, 2), (1, 0, 0, 5)):
            w = figures.field_weights(spec, x.shape, center, "sum")
            assert abs((w * x.numpy()).sum() - mu[center]) < 1e-12
            assert ((w > 0) == figures.field_mask(spec, x.shape, center, "sum")).all()
    assert isinstance(figures.draw_fields("lcn"), Figure)
    m = make_norm("gdn", 5)
    fig = figures.gdn_matrix(m)
    assert np.allclose(fig.axes[0].images[0].get_array(), m.effective_gamma.detach().numpy())
