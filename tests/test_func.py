"""Every normalizer under ``torch.func`` (vmap, grad, jvp, jacrev, hessian, functional_call) and forward-mode AD.

For every preset and every path that applies to it (general, native/fused, band; GDN's one path; compile and
triton, which run the general path's plain ops under transforms), in float64:

- ``jvp`` (inputs and parameters together) against central differences and against the plain-op reference
  (``divisive_norm_reference`` + affine, ``gdn`` with plain max); ``torch.autograd.forward_ad`` dual tensors;
- ``vmap`` over a batch of inputs, and over stacked parameters (``stack_module_state`` + ``functional_call``:
  model ensembling), against a Python loop of the ordinary path (the hand-written autograd Functions);
- ``vmap(grad(...))`` per-sample gradients against a loop of single-example backward passes;
- ``jacrev`` and ``hessian`` against ``torch.autograd.functional`` (backward and double backward of the Functions);
- running statistics in training mode refused as torch's BatchNorm refuses them, stacked buffers updated per copy,
  evaluation mode, and :func:`dnlib.replace_all_batch_norm_modules_`;
- the L1 penalty: per copy / per sample inside the transform, refused when collected outside it.

Tiny shapes; the references for ``impl="compile"``/``"triton"`` run the general path (no compilation here).
"""
import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, stack_module_state, vmap

import dnlib
from dnlib import list_norms, make_norm, sparse_penalty
from dnlib.norms.functional import band_supported, divisive_norm_reference
from dnlib.norms.gdn import GDN, gdn
from dnlib.norms.norm import DivisiveNorm, fused_kind
from dnlib.norms.presets import PRESETS
from dnlib.norms.weight_std import StdConv2d

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

C = 4
OVERRIDES = {"gn": dict(groups=2), "bcn": dict(groups=2), "evonorm-s0": dict(groups=2), "evonorm-s0a": dict(groups=2)}
#: presets that update running statistics they cannot do without in training: the generic tests run them in eval
#: mode; training is the refusal and stacked-buffer tests' business
NEEDS_STATS = {"brn", "bcn", "evonorm-b0"}


def _cases():
    out = []
    for name in list_norms():
        preset = PRESETS[name]
        if preset.module is not None:  # the GDN family: one path
            out.append((name, "auto"))
            continue
        out.append((name, "general"))
        if fused_kind(preset.spec):
            out.append((name, "fused"))
        if band_supported(preset.spec):
            out.append((name, "band"))
    out += [("dn", "compile"), ("bn", "compile"), ("lrn", "compile"), ("dn", "triton"), ("dn-s+learn", "general")]
    return out


CASES = _cases()
IDS = [f"{n}-{i}" for n, i in CASES]


def _norm(name: str, impl: str, alpha: float = 0.0, track=False, seed=0) -> nn.Module:
    """A float64 normalizer with non-trivial parameters (affine values, GDN's gamma off its bound, a learned sigma),
    running statistics off unless ``track`` (then random running statistics)."""
    kw = dict(OVERRIDES.get(name, {}))
    if name == "dn-s+learn":
        name, kw = "dn-s", dict(learn_sigma=True)
    if PRESETS[name].module is None:
        kw["impl"] = impl
    if alpha:
        kw["alpha"] = alpha
    m = make_norm(name, C, **kw).double()
    if not track:
        dnlib.replace_all_batch_norm_modules_(m)
        if name in NEEDS_STATS:
            m.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname in ("weight", "bias"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
            elif pname == "sigma":
                p.fill_(0.7)
            elif pname == "gamma":  # above the lower bound everywhere: max() has no tie there
                p.add_(0.1 + 0.3 * torch.rand(p.shape, generator=g, dtype=p.dtype))
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(torch.randn(C, generator=g, dtype=torch.float64))
        if getattr(m, "running_var", None) is not None:
            m.running_var.copy_(torch.rand(C, generator=g, dtype=torch.float64) + 0.5)
    return m


def _ordinary(m: nn.Module) -> nn.Module:
    """``m`` on its ordinary (untransformed) path for the references: the general path for compile and triton."""
    ref = copy.deepcopy(m)
    for sub in ref.modules():
        if getattr(sub, "impl", None) in ("compile", "triton"):
            sub.impl = "general"
    return ref


def _reference(m: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor | None:
    """The normalizer as plain ops written here: ``divisive_norm_reference`` and the affine map; GDN with the plain
    ``max`` of its reparameterization; None for the other preset classes (FRN, EvoNorm, BRN, ...: their forward is
    plain ops already, checked against central differences and the loops of their ordinary path)."""
    if type(m) not in (DivisiveNorm, GDN):
        return None
    if isinstance(m, GDN):
        def eff(u, reparam):
            return torch.maximum(u, reparam.lower_bound.bound) ** 2 - reparam.pedestal
        return gdn(x, eff(params["beta"], m.beta_reparam), eff(params["gamma"], m.gamma_reparam), m.inverse,
                   m.simplified)
    y = divisive_norm_reference(x, m.spec, params.get("sigma"))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if "weight" in params:
        y = y * params["weight"].view(shape)
    if "bias" in params:
        y = y + params["bias"].view(shape)
    return y


def _x(shape, seed=1, name=None):
    """Random float64 values; for ``ws`` (a normalizer of conv weights) shaped as a weight ``(C_out, ...)``."""
    if name == "ws":
        shape = shape[:-4] + (C, shape[-4]) + shape[-2:] if len(shape) >= 4 else (C, shape[0])
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ------------------------------------------------------------------------------------------- forward mode
@pytest.mark.parametrize("name,impl", CASES, ids=IDS)
def test_jvp_matches_central_differences_and_the_plain_op_reference(name, impl):
    m = _norm(name, impl)
    x = _x((3, C, 4, 4), name=name)
    params = {k: v.detach() for k, v in m.named_parameters()}
    tx = _x(x.shape, seed=2)
    tp = {k: _x(v.shape, seed=3 + i) for i, (k, v) in enumerate(params.items())}

    def f(x, p):
        return functional_call(m, p, (x,))

    y, ty = jvp(f, (x, params), (tx, tp))
    h = 1e-6
    ref = _ordinary(m)
    plus = functional_call(ref, {k: v + h * tp[k] for k, v in params.items()}, (x + h * tx,))
    minus = functional_call(ref, {k: v - h * tp[k] for k, v in params.items()}, (x - h * tx,))
    assert _rel(ty, (plus - minus) / (2 * h)) < 1e-6
    if _reference(m, params, x) is not None:
        y_ref, ty_ref = jvp(lambda x, p: _reference(m, p, x), (x, params), (tx, tp))
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ty, ty_ref, rtol=1e-9, atol=1e-11)
    with fwAD.dual_level():  # torch.autograd.forward_ad: dual tensors through the module itself
        dual = {k: fwAD.make_dual(v, tp[k]) for k, v in params.items()}
        out = fwAD.unpack_dual(f(fwAD.make_dual(x, tx), dual))
    torch.testing.assert_close(out.primal, y, rtol=0, atol=1e-14)
    torch.testing.assert_close(out.tangent, ty, rtol=1e-12, atol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dn", "lrn"])
def test_large_inputs_take_the_plain_ops_too(name, compiled_path):
    """At 2^20 elements (where impl="auto" compiles windowed DN for the ordinary step) a transform still runs the
    plain-op composition: jvp equals the plain-op reference's, and the primal the compiled call's."""
    m = make_norm(name, 32)
    x = _x((16, 32, 64, 32)).float()
    t = _x(x.shape, seed=2).float()
    y, ty = jvp(m, (x,), (t,))
    y_ref, ty_ref = jvp(lambda x: divisive_norm_reference(x, m.spec), (x,), (t,))
    torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ty, ty_ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("name,impl", CASES, ids=IDS)
def test_vmap_over_inputs_equals_a_loop(name, impl):
    m = _norm(name, impl)
    xs = _x((3, 2, C, 4, 4), name=name)
    ref = _ordinary(m)
    expected = torch.stack([ref(x) for x in xs])
    torch.testing.assert_close(vmap(m)(xs), expected, rtol=1e-10, atol=1e-12)


def _model(name, impl, alpha=0.0, track=False, seed=0) -> nn.Module:
    """Conv2d + the normalizer; for ``ws`` (a weight normalizer) timm's StdConv2d, which applies it."""
    torch.manual_seed(10 + seed)  # distinct convolutions
    if name == "ws":
        return StdConv2d(3, C, 3, padding=1, bias=True).double()
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), _norm(name, impl, alpha, track, seed=seed)).double()


def _ensemble(name, impl, k=3, alpha=0.0, track=False):
    return [_model(name, impl, alpha, track, seed=s) for s in range(k)]


@pytest.mark.parametrize("name,impl", CASES, ids=IDS)
def test_vmap_over_stacked_parameters_equals_a_loop(name, impl):
    """torch's model-ensembling recipe: stack_module_state + vmap(functional_call)."""
    models = _ensemble(name, impl)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = _x((2, 3, 4, 4))
    got = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    expected = torch.stack([_ordinary(model)(x) for model in models])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------- per-sample grads
def _loss(out):
    return (out.sin() * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)).sum()


@pytest.mark.parametrize("name,impl", CASES, ids=IDS)
def test_per_sample_gradients_equal_single_example_backward(name, impl):
    model = _model(name, impl)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = _x((3, 3, 4, 4))

    def loss(p, x):
        return _loss(functional_call(model, p, (x.unsqueeze(0),)))

    got = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    ref = _ordinary(model)
    for i in range(xs.shape[0]):
        ref.zero_grad()
        _loss(ref(xs[i:i + 1])).backward()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(got[k][i], p.grad, rtol=1e-9, atol=1e-11, msg=f"{k} of example {i}")


# ------------------------------------------------------------------------------------- jacrev and hessian
@pytest.mark.parametrize("name,impl", CASES, ids=IDS)
def test_jacrev_and_hessian_equal_backward_and_double_backward(name, impl):
    m = _norm(name, impl)
    x = _x((2, C, 2, 2), name=name)
    ref = _ordinary(m)
    torch.testing.assert_close(jacrev(m)(x), torch.autograd.functional.jacobian(ref, x), rtol=1e-9, atol=1e-11)
    got = hessian(lambda x: _loss(m(x)))(x)
    expected = torch.autograd.functional.hessian(lambda x: _loss(ref(x)), x)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


# -------------------------------------------------------------------------------------- running statistics
RUNNING = [("bn", "general"), ("bn", "fused"), ("bn-s", "fused"), ("bn-ms", "general"), ("sn", "auto"),
           ("brn", "auto"), ("bcn", "auto"), ("evonorm-b0", "auto")]


@pytest.mark.parametrize("transform", ["vmap", "grad", "jvp"])
def test_training_with_running_statistics_is_refused_as_torch_refuses_it(transform):
    x = _x((2, 3, C, 4, 4))

    def run(m):
        if transform == "vmap":
            return vmap(m)(x)
        if transform == "grad":
            return grad(lambda x: m(x).sum())(x[0])
        return jvp(m, (x[0],), (x[0],))

    with pytest.raises(RuntimeError):  # torch's own
        run(nn.BatchNorm2d(C).double())
    for name, impl in RUNNING:
        m = _norm(name, impl, track=True)
        before = {k: v.clone() for k, v in m.named_buffers()}
        # (evonorm-b0 has its own forward: torch's in-place refusal, as for nn.BatchNorm2d)
        with pytest.raises(RuntimeError, match=None if name == "evonorm-b0" else "replace_all_batch_norm_modules_"):
            run(m)
        for k, v in m.named_buffers():  # refused before anything changed
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name,impl", RUNNING)
def test_eval_mode_uses_the_running_statistics_under_transforms(name, impl):
    m = _norm(name, impl, track=True).eval()
    xs = _x((3, 2, C, 4, 4))
    torch.testing.assert_close(vmap(m)(xs), torch.stack([m(x) for x in xs]), rtol=1e-12, atol=1e-13)
    t = _x(xs[0].shape, seed=5)
    _, ty = jvp(m, (xs[0],), (t,))
    h = 1e-6
    assert _rel(ty, (m(xs[0] + h * t) - m(xs[0] - h * t)) / (2 * h)) < 1e-6


@pytest.mark.parametrize("name,impl", RUNNING)
def test_stacked_running_statistics_are_updated_per_copy(name, impl):
    """As torch's BatchNorm: buffers that come through vmap (stack_module_state) are each copy's own."""
    models = _ensemble(name, impl, track=True)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = _x((2, 3, 4, 4))
    got = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    expected = torch.stack([model(x) for model in models])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    for k, stacked in buffers.items():
        torch.testing.assert_close(stacked, torch.stack([dict(mm.named_buffers())[k] for mm in models]),
                                   rtol=1e-12, atol=1e-14, msg=k)
    if "1.num_batches_tracked" in buffers:  # (evonorm-b0 keeps none, as timm's)
        assert buffers["1.num_batches_tracked"].tolist() == [1, 1, 1]


def test_replace_all_batch_norm_modules_turns_tracking_off_in_place():
    model = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), make_norm("bn", C, impl="general"), nn.BatchNorm2d(C),
                          make_norm("bn-ms", C), make_norm("ln", C)).double()
    assert dnlib.replace_all_batch_norm_modules_(model) is model
    for m in model.modules():
        if hasattr(m, "track_running_stats"):
            assert not m.track_running_stats and m.running_mean is None and m.running_var is None
    assert not [k for k in model.state_dict() if "running" in k or "num_batches" in k]
    keep = nn.Sequential(make_norm("frozen-bn", C), make_norm("brn", C), make_norm("bcn", C, groups=2),
                         make_norm("evonorm-b0", C))
    dnlib.replace_all_batch_norm_modules_(keep)  # the presets that need their running statistics keep them
    assert all(m.running_var is not None for m in keep)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = _x((3, 3, 4, 4))
    got = vmap(grad(lambda p, x: _loss(functional_call(model, p, (x.unsqueeze(0),)))), in_dims=(None, 0))(params, xs)
    model.zero_grad()
    _loss(model(xs[1:2])).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k][1], p.grad, rtol=1e-9, atol=1e-11)
    with pytest.raises(TypeError, match="root"):
        dnlib.replace_all_batch_norm_modules_("bn")


# ---------------------------------------------------------------------------------------------- L1 penalty
L1_CASES = [("dn", "general"), ("ln", "fused"), ("bn", "fused"), ("lrn", "band"), ("rms", "general"), ("gdn", "auto"),
            ("dn", "compile")]


@pytest.mark.parametrize("name,impl", L1_CASES, ids=[f"{n}-{i}" for n, i in L1_CASES])
def test_l1_penalty_is_recorded_per_copy_and_per_sample(name, impl):
    models = _ensemble(name, impl, alpha=0.05)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = _x((2, 3, 4, 4))

    def ens(p, b, x):
        out = functional_call(base, (p, b), (x,))
        return out, sparse_penalty(base)

    out, pen = vmap(ens, in_dims=(0, 0, None))(params, buffers, x)
    for k, model in enumerate(models):
        ref = _ordinary(model)
        torch.testing.assert_close(out[k], ref(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(pen[k], sparse_penalty(ref), rtol=1e-12, atol=1e-14)
    model = models[0]
    p0 = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return _loss(out) + sparse_penalty(model)

    got = vmap(grad(loss), in_dims=(None, 0))(p0, x)
    ref = _ordinary(model)
    for i in range(x.shape[0]):
        ref.zero_grad()
        (_loss(ref(x[i:i + 1])) + sparse_penalty(ref)).backward()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(got[k][i], p.grad, rtol=1e-9, atol=1e-11, msg=f"{k} of example {i}")
    def penalty(x):
        ref(x)
        return sparse_penalty(ref)

    t = _x(x.shape, seed=4)  # forward mode: the penalty's tangent
    _, tpen = jvp(penalty, (x,), (t,))
    h = 1e-6
    fd = (penalty(x + h * t) - penalty(x - h * t)) / (2 * h)
    assert abs(tpen.item() - fd.item()) < 1e-6 * max(1.0, abs(tpen.item()))
    with fwAD.dual_level():  # forward-mode AD outside torch.func: through the site's output tap too
        tdual = fwAD.unpack_dual(penalty(fwAD.make_dual(x, t))).tangent
    torch.testing.assert_close(tdual, tpen, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("transform", ["vmap", "grad", "jvp", "vmap-then-inside"])
def test_l1_penalty_collected_outside_its_transform_is_refused(transform):
    m = _norm("dn", "general", alpha=0.05)
    xs = _x((2, 2, C, 4, 4))
    if transform == "vmap":
        vmap(m)(xs)
    elif transform == "grad":
        grad(lambda x: m(x).sum())(xs[0])
    elif transform == "jvp":
        jvp(m, (xs[0],), (xs[1],))
    else:  # recorded in one vmap call, collected in the next
        vmap(m)(xs)
        with pytest.raises(RuntimeError, match="inside the transformed function"):
            vmap(lambda x: sparse_penalty(m) + x.sum())(xs)
        return
    with pytest.raises(RuntimeError, match="inside the transformed function"):
        sparse_penalty(m)
    assert sparse_penalty(m).item() == 0  # the escaped terms were dropped
    m(xs[0])  # and the site records as before
    assert sparse_penalty(m).item() > 0


def test_the_readme_example_runs():
    """README's torch.func example (ensembling with each copy's L1 term, per-sample gradients) as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### torch.func, forward-mode AD and export"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"].shape == (4, 16, 8, 8, 8) and scope["penalty"].shape == (4,)
    assert (scope["penalty"] > 0).all() and len(set(scope["penalty"].tolist())) == 4  # one term per copy
    assert scope["per_sample"]["0.weight"].shape == (16, 8, 3, 3, 3)
