"""``DivisiveNorm(impl="compile")``: the general path's math through ``torch.compile`` (Inductor on CPU here)
equals the hand-written general path and torch's own layers, in values, gradients, L1 terms and running
statistics; and the CIFAR trainer's step with it equals the uncompiled one.

Each case compiles (10-30 s on a small CPU), so the cases are few and each covers several features.
"""
import pytest
import torch
from torch import nn

from dnlib import make_norm, sparse_penalty
from dnlib.norms.functional import compiled_divisive_norm

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _pair(name, c, **kw):
    torch.manual_seed(0)
    a = make_norm(name, c, impl="general", **kw)
    b = make_norm(name, c, impl="compile", **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def _grads(m, x, w):
    y = m(x)
    loss = (y * w).sum() + sparse_penalty(m)
    params = [p for p in m.parameters()]
    gs = torch.autograd.grad(loss, [x] + params)
    return y.detach(), loss.detach(), gs


@pytest.mark.parametrize("case", [
    # the paper's first DN* conv layer: window 5, the reference border, the L1 term, channels-last input
    dict(name="dn", shape=(6, 8, 10, 10), kw=dict(window=5, sigma=0.5, eps=0.0, alpha=0.005, border="reference"),
         channels_last=True),
    # unequal windows, valid border, a learned sigma, per-channel affine, 1-D input
    dict(name="dn", shape=(4, 6, 9), kw=dict(sum_window=3, sup_window=5, border="valid", learn_sigma=True,
                                             affine=True, alpha=0.01), channels_last=False),
])
def test_compiled_dn_equals_general(case):
    a, b = _pair(case["name"], case["shape"][1], **case["kw"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case["shape"], generator=g, dtype=torch.float64) * 2 + 0.5
    if case["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(case["shape"], generator=g, dtype=torch.float64)
    a, b = a.double(), b.double()
    ya, la, ga = _grads(a, x, w)
    yb, lb, gb = _grads(b, x, w)
    assert (ya - yb).abs().max().item() < 1e-10
    assert abs(la.item() - lb.item()) < 1e-9 * max(1.0, abs(la.item()))
    assert len(ga) == len(gb) and len(ga) >= 1 + case["kw"].get("affine", False) * 2
    for u, v in zip(ga, gb):
        assert (u - v).abs().max().item() < 1e-9
    if case["channels_last"]:
        assert yb.is_contiguous(memory_format=torch.channels_last)  # the next conv keeps its fast layout


def test_compiled_bn_matches_batchnorm_train_buffers_and_eval():
    """BN through the compiled path: batch statistics, running buffers after 3 steps, and eval (which uses the
    running statistics on the uncompiled path) all equal nn.BatchNorm2d."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5)
    ours = make_norm("bn", 5, impl="compile")
    ours.load_state_dict(ref.state_dict())
    assert ours.fused is None
    for step in range(3):
        x = (torch.randn(4, 5, 6, 6) * (step + 1) + step).requires_grad_()
        y, r = ours(x), ref(x)
        assert (y - r).abs().max().item() < 1e-5
        w = torch.randn_like(y)
        gy = torch.autograd.grad((y * w).sum(), [x, ours.weight, ours.bias])
        gr = torch.autograd.grad((r * w).sum(), [x, ref.weight, ref.bias])
        for u, v in zip(gy, gr):
            assert (u - v).abs().max().item() < 1e-4
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(ours, k).float(), getattr(ref, k).float(), atol=1e-6), k
    ours.eval(), ref.eval()
    x = torch.randn(3, 5, 6, 6)
    assert (ours(x) - ref(x)).abs().max().item() < 1e-5


def test_compiled_function_rejects_bad_input():
    spec = make_norm("ln", 4).spec
    with pytest.raises(ValueError, match="input"):
        compiled_divisive_norm(spec, 2)(torch.randn(2, 4, 3, 3, 3), 1e-5)


def test_cifar_step_with_compile_equals_uncompiled():
    """Two training steps of the DN* CNN: compiled normalizers (the graph trainer's step, eager on CPU) against
    the uncompiled eager trainer, via the same check the GPU script runs."""
    from dnlib.experiments import cifar
    data = cifar.load_data("cifar10", subset=(200, 100), device="cpu")
    r = cifar.check_graph("dn-star", data, steps=2, impl="compile")
    assert r["impl"] == "compile" and r["param_moved"] > 0
    assert r["ok"], r
    assert r["loss_rel_diff"] < 1e-5


def test_compiled_ten_shapes_eval_and_recompile_limit():
    """Ten input sizes in training (issue 12: the 9th hard-failed with dynamic=False, fullgraph=True) compile at
    most twice and equal the general path; eval() runs the general path without compiling; past the recompile
    limit an input runs the general path with one warning; double backward raises instead of being wrong."""
    from torch._dynamo.utils import counters

    a, b = _pair("dn", 4, window=3, sigma=0.5, alpha=0.01, border="zeros")
    graphs0 = counters["stats"]["unique_graphs"]
    g = torch.Generator().manual_seed(2)
    shapes = [(2, 4, 5, 6), (3, 4, 6, 7)] + [(2 + i % 3, 4, 5 + i, 6 + i // 2) for i in range(2, 10)]
    assert len(set(shapes)) == 10
    for shape in shapes:
        x = torch.randn(shape, generator=g).requires_grad_()
        w = torch.randn(shape, generator=g)
        ya, la, ga = _grads(a, x, w)
        yb, lb, gb = _grads(b, x, w)
        assert (ya - yb).abs().max().item() < 1e-5, shape
        assert abs(la.item() - lb.item()) < 1e-4 * max(1.0, abs(la.item())), shape
        assert (ga[0] - gb[0]).abs().max().item() < 1e-4, shape
    assert counters["stats"]["unique_graphs"] - graphs0 <= 2
    graphs = counters["stats"]["unique_graphs"]
    a.eval(), b.eval()
    for shape in ((3, 4, 9, 11), (1, 4, 4, 4)):
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            assert (a(x) - b(x)).abs().max().item() < 1e-6
        assert (a(x) - b(x)).abs().max().item() < 1e-6
    assert counters["stats"]["unique_graphs"] == graphs  # eval compiled nothing
    a.train(), b.train()
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)  # a new dtype needs a new graph
    with torch._dynamo.config.patch(recompile_limit=1), \
            pytest.warns(RuntimeWarning, match="recompile limit") as rec:
            yb = b.double()(x)
            b(x)
    assert sum(issubclass(r.category, RuntimeWarning) for r in rec) == 1
    assert (a.double()(x) - yb).abs().max().item() < 1e-12
    b.float()
    x = torch.randn(3, 4, 8, 8, generator=g).requires_grad_()  # float32: the compiled graph runs
    with pytest.raises(RuntimeError):
        (gx,) = torch.autograd.grad(b(x).square().sum(), x, create_graph=True)
        torch.autograd.grad(gx.square().sum(), x)


# --- torch.compile of a model with DivisiveNorm sites (issue 23 item 3) ----------------------------------------
def _two_site_dn(alpha):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), make_norm("dn", 8, window=3, sigma=0.5, alpha=alpha),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         make_norm("dn", 8, window=3, sigma=0.5, alpha=alpha)).train()


@pytest.mark.parametrize("alpha, backend", [(0.0, "aot_eager"), (0.01, "inductor")])
def test_two_site_dn_model_compiles_whole(alpha, backend):
    """torch.compile(model, fullgraph=True) traces the modules in one graph (before: 6 graph breaks at alpha = 0 and
    10 at alpha > 0 (a lock, a generator expression, the tap's grad_fn), and Dynamo warned that the lru_cache'd
    helpers might be silently wrong); forward, the L1 terms and backward equal eager mode, also with two forwards
    collected together; a no-grad forward records no term."""
    import warnings

    from torch._dynamo.utils import counters

    eager, model = _two_site_dn(alpha), _two_site_dn(alpha)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    graphs = counters["stats"]["unique_graphs"]
    xs = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x in xs[:2]:                                   # an ordinary step, twice
            le = eager(x).square().mean() + sparse_penalty(eager)
            lc = compiled(x).square().mean() + sparse_penalty(compiled)
            assert abs(le.item() - lc.item()) < 1e-5 * max(1.0, abs(le.item()))
            for a, b in zip(torch.autograd.grad(le, list(eager.parameters())),
                            torch.autograd.grad(lc, list(model.parameters()))):
                assert (a - b).abs().max().item() < 1e-5
        le = sum(eager(x).square().mean() for x in xs) + sparse_penalty(eager)     # accumulation
        lc = sum(compiled(x).square().mean() for x in xs) + sparse_penalty(compiled)
        assert abs(le.item() - lc.item()) < 1e-5 * max(1.0, abs(le.item()))
        with torch.no_grad():
            compiled(xs[0])
        assert sparse_penalty(compiled).item() == 0.0
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert counters["stats"]["unique_graphs"] - graphs <= 3    # (grad on/off; a pending term or none)
    torch._dynamo.reset()
    assert torch._dynamo.explain(_two_site_dn(alpha))(xs[0]).graph_break_count == 0
