"""The fused sequence path of NormLSTMCell (dnlib.models.rnn_fused, issue 25 item 1) against the per-step path.

The per-step path (``impl="loop"``: :meth:`NormLSTMCell.step` through the DivisiveNorm modules) is the reference that
tests/test_rnn_cells.py and tests/test_ptb.py check against the authors' code and naive formulas; here the fused
path must give the same outputs, states, L1 penalty and every gradient in float64, for every normalizer it covers
(LN, 1-D DN under each border rule, even windows, Gaussian windows, power / sup_scale, RMS, none; per-gate affine;
alpha), and be exact to the second derivative (gradcheck and gradgradcheck of the fused Function).
"""
import copy

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from dnlib import NormSpec, sparse_penalty
from dnlib.experiments.ptb_configs import get_config
from dnlib.models import rnn_fused, rnn_sites
from dnlib.models.rnn import NormLSTMCell
from dnlib.models.rnn_lm import LanguageModel
from dnlib.norms.functional import field_mean

I, H, N, T = 4, 12, 3, 5  # noqa: E741  I: the input size, as in the papers

pytestmark = pytest.mark.usefixtures("one_thread")

GAUSS = NormSpec("channel", "channel", {"channel": 5}, {"channel": 7}, sigma=0.5, sum_weights={"channel": 1.5},
                 sup_weights={"channel": 2.0})
POWER = NormSpec("channel", "channel", {"channel": 5}, {"channel": 3}, sigma=0.7, power=0.75, sup_scale=2.0,
                 border="valid")

CASES = [
    ("none", {}),
    ("none", dict(alpha=0.1)),
    ("ln-s", dict(sigma=1.0, eps=0.0, alpha=0.01)),
    ("ln-s", dict(sigma=0.5, eps=0.0, affine=True, alpha=0.1)),
    ("dn-1d-s", dict(sigma=1.0, eps=0.0, window=61, border="zeros", alpha=0.01)),     # window wider than H
    ("dn-1d-s", dict(sigma=1.0, eps=0.0, window=5, border="zeros", alpha=0.01)),
    ("dn-1d-s", dict(sigma=0.7, window=5, border="valid", alpha=0.1)),
    ("dn-1d-s", dict(sigma=0.7, eps=1e-3, window=4, border="reference", affine=True)),
    ("dn-1d-s", dict(sigma=1.0, window=6, border="reference", affine=True, alpha=0.1)),
    ("rms", {}),
    (GAUSS, {}),
    (POWER, dict(alpha=0.05)),
]


def _ids(case):
    norm, kw = case
    return f"{norm if isinstance(norm, str) else 'spec'}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"


def _pair(norm, kw, hidden=H):
    torch.manual_seed(0)
    fused = NormLSTMCell(I, hidden, norm, kw, forget_bias=0.5).double()
    with torch.no_grad():     # non-trivial biases and affine parameters
        for p in fused.parameters():
            p.add_(torch.rand_like(p) * 0.3)
    loop = copy.deepcopy(fused)
    loop.impl = "loop"
    return fused, loop


def _run(cell, x, h0, c0):
    out, (h, c) = cell(x, (h0, c0))
    pen = sparse_penalty(cell)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    loss = (out * w).sum() + (h * h).sum() + (c * c).sum() + pen
    grads = torch.autograd.grad(loss, [x, h0, c0, *cell.parameters()])
    return (out, h, c, pen, *grads)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_fused_path_equals_the_per_step_path(case):
    fused, loop = _pair(*case)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, I, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    got, ref = _run(fused, x, h0, c0), _run(loop, x, h0, c0)
    assert rnn_fused._PLANS[fused][(torch.float64, torch.device("cpu"))] is not None   # it did take the fused path
    assert rnn_fused._PLANS.get(loop) is None
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    with torch.no_grad():   # inference: the forward loop alone
        torch.testing.assert_close(fused(x, (h0, c0))[0], ref[0], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("backend", ["script", "eager"])
def test_both_loop_backends_compute_the_same(backend, monkeypatch):
    monkeypatch.setattr(rnn_fused, "BACKEND", backend)
    fused, loop = _pair("dn-1d-s", dict(sigma=1.0, eps=0.0, window=5, border="zeros", affine=True, alpha=0.1))
    x = torch.randn(T, N, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(N, H, dtype=torch.float64, requires_grad=True)
    for a, b in zip(_run(fused, x, h0, h0), _run(loop, x, h0, h0), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    if backend == "script":    # scripted here, not the eager fallback of a torch without TorchScript
        assert isinstance(rnn_fused._SCRIPTED["loops"][0], torch.jit.ScriptFunction)


def test_a_torch_without_torchscript_runs_the_eager_loops_with_one_warning(monkeypatch):
    """TorchScript is deprecated (torch 2.13): where torch.jit.script fails, the "script" backend falls back to the
    eager loops (one RuntimeWarning per process) and computes the same (before: the error ended the training)."""
    def gone(fn):
        raise RuntimeError("TorchScript is not available in this build")
    monkeypatch.setattr(rnn_fused, "_SCRIPTED", {})
    monkeypatch.setattr(torch.jit, "script", gone)
    monkeypatch.setattr(rnn_fused, "BACKEND", "script")
    fused, loop = _pair("dn-1d-s", dict(sigma=1.0, eps=0.0, window=5, border="zeros", affine=True, alpha=0.1))
    x = torch.randn(T, N, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(N, H, dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="run eagerly") as caught:
        got = _run(fused, x, h0, h0)
        _run(fused, x, h0, h0)
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 1
    assert rnn_fused._SCRIPTED["loops"] == (rnn_fused._forward_loop, rnn_fused._backward_loop)
    for a, b in zip(got, _run(loop, x, h0, h0), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("case", [CASES[3], CASES[6], CASES[8], CASES[11]], ids=_ids)
def test_fused_path_gradcheck_and_gradgradcheck(case):
    """First derivatives are the hand-written backward loop; second derivatives differentiate a recomputation."""
    fused, _ = _pair(*case, hidden=6)
    names = [n for n, _ in fused.named_parameters()]

    def f(x, h0, c0, *params):
        out, (h, c) = torch.func.functional_call(fused, dict(zip(names, params, strict=True)), (x, (h0, c0)))
        return out, h, c, sparse_penalty(fused)

    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(3, 2, I, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)]
    inputs += [p.detach().clone().requires_grad_() for p in fused.parameters()]
    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("name", ["base-lstm", "ln-s-lstm", "ln-star-lstm", "ln-l1-lstm", "dn-lstm", "dn-star-lstm"])
@pytest.mark.parametrize("source", ["paper", "code"])
def test_every_ptb_row_of_the_cell_takes_the_fused_path(name, source):
    cfg = get_config(name, source, hidden_size=16)
    model = LanguageModel(30, **cfg.model_kwargs()).train()
    model(torch.randint(0, 30, (2, 3)))
    for layer in model.layers:
        assert rnn_fused._PLANS[layer][(torch.float32, torch.device("cpu"))] is not None


def test_the_per_step_path_where_the_fused_one_does_not_apply():
    learned = NormSpec("channel", "channel", {"channel": 5}, {"channel": 5}, sigma=0.5, learn_sigma=True)
    for cell in (NormLSTMCell(I, H, learned), NormLSTMCell(I, H, "bn"), NormLSTMCell(I, H, "ln-s", impl="loop")):
        cell(torch.randn(T, N, I))
        plans = rnn_fused._PLANS.get(cell)
        assert plans is None or all(p is None for p in plans.values())
    traced = NormLSTMCell(I, H, "ln-s")
    traced.trace = []
    traced(torch.randn(T, N, I))
    assert len(traced.trace) == T      # the per-step path records every step
    with pytest.raises(ValueError, match=r"impl: got 'fast'; allowed values are \['auto', 'loop'\]"):
        NormLSTMCell(I, H, impl="fast")


@pytest.mark.parametrize("hidden", [12, 200])
def test_box_windows_run_as_cumulative_sums(hidden):
    """DN*'s cells (PTB: window 61, zeros border) are box windows: the fused path runs them as cumulative sums (mode
    3, O(H) per row), not as a product with the (H, H) matrix (mode 2). Before, the ~1e-18 that the general path's
    shifted sums leave far from the diagonal counted as the window's support (at H = 200: 28,730 entries, the
    largest 4.3e-18), every window spanned all H units and the DN* cells ran two dense (4N, H) x (H, H) products per
    step. A Gaussian window (weights not a box) keeps the matrix; each mode is checked against the matrix."""
    kw = get_config("dn-star-lstm").model_kwargs()["norm_kwargs"]
    cell = NormLSTMCell(I, hidden, "dn-1d-s", kw)
    for site in (cell.gate_norm, cell.cell_norm):
        for field in ("sum", "sup"):
            mode, _, left, right, post = rnn_sites.window(site.spec, field, hidden, torch.float64, "cpu")
            reach = min(30, hidden - 1)   # the window's half-width, cut by the H units
            assert (mode, left, right) == (3, reach, reach)
            eye = torch.eye(hidden, dtype=torch.float64)
            torch.testing.assert_close(rnn_sites.box(eye, left, right) * post, field_mean(eye, site.spec),
                                       rtol=0, atol=1e-15)
    assert rnn_sites.window(GAUSS, "sum", hidden, torch.float64, "cpu")[0] == 2


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_the_final_state_is_not_a_view_of_the_output(grad):
    """The loops write each step into the output tensor; h_T and c_T, which a language model keeps as the next
    batch's state, are their own tensors (before: views of ``out`` and C, holding a whole sequence's output alive and
    changed by an in-place op on ``out``)."""
    cell, _ = _pair("ln-s", dict(sigma=1.0, eps=0.0))
    x, h0, c0 = torch.randn(T, N, I, dtype=torch.float64), torch.zeros(N, H, dtype=torch.float64), \
        torch.zeros(N, H, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        out, (h, c) = cell(x, (h0, c0))
    assert torch.equal(h, out[-1])
    assert h.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
    kept = h.clone()
    with torch.no_grad():
        out.mul_(2.0)
    assert torch.equal(h, kept)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_dn_gate_centring_is_folded_into_the_inputs_and_weights(case):
    """Where the gate site has a DN sum field, its centring is applied once per sequence to ``xw`` and ``W_hh``
    (``rnn_fused.folds``; LN keeps its one native kernel): the Z returned is then ``v = z - E_A[z]``, with ``z`` the
    raw pre-activations of the cell's own steps, and the steps hold no centring."""
    fused, loop = _pair(*case)
    gp, cp = (rnn_fused.plan(m, H, torch.float64, torch.device("cpu")) for m in (fused.gate_norm, fused.cell_norm))
    assert rnn_fused.folds(gp) == (case[0] not in ("none", "ln-s", "rms")), gp[0][0]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, N, I, generator=g, dtype=torch.float64)
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    c = torch.randn(N, H, generator=g, dtype=torch.float64)
    xw = fused.input_transform(x)
    gw = fused.gate_weight.view(4, H) if fused.gate_weight is not None else None
    gb = fused.gate_bias.view(4, H) if fused.gate_bias is not None else None
    cn = fused.cell_norm
    cw = cn.weight if cn is not None and cn.affine else None
    with torch.no_grad():
        out, _, _, zs, _ = rnn_fused.lstm_sequence(xw, h, c, fused.weight_hh, gw, gb, cw, cn.bias if cw is not None
                                                   else None, gp, cp)
        state, raw = (h, c), []
        for t in range(T):                                   # the per-step path's raw pre-activations
            raw.append(torch.addmm(xw[t], state[0], loop.weight_hh.t()).view(N, 4, H))
            _, state = loop.step(xw[t], state, t)
    z = torch.stack(raw)
    want = z - field_mean(z.reshape(-1, H), fused.gate_norm.spec).reshape(z.shape) if rnn_fused.folds(gp) else z
    torch.testing.assert_close(zs, want, rtol=1e-12, atol=1e-12)


def _swap_sites(cell):
    cell.gate_norm = NormLSTMCell(I, H, "dn-1d-s", dict(sigma=0.3, window=5)).double().gate_norm
    cell.cell_norm = NormLSTMCell(I, H, "dn-1d-s", dict(sigma=0.3, window=5)).double().cell_norm


def _new_sigma(cell):
    cell.gate_norm.spec = cell.gate_norm.spec.replace(sigma=0.1)


def _convert(cell):
    from dnlib import DivisiveNorm, convert_norms
    convert_norms(cell, "dn-1d-s", types=DivisiveNorm, window=5, sigma=0.3)


def _general_impl(cell):        # a forced impl the fused path does not cover: the per-step path from then on
    cell.gate_norm.impl = "general"


@pytest.mark.parametrize("change", [_swap_sites, _new_sigma, _convert, _general_impl],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_site_replaced_or_respecified_after_the_first_forward_is_seen(change):
    """The fused plan (windows, eps, sigma^2 of each site) is cached per cell; a normalizer swapped (assignment,
    dnlib.convert_norms), given a new spec or an impl the fused path does not cover after the first forward must be
    what the cell computes. Before, the plan of the first forward was kept: the old normalizer, silently (max diff
    0.44 vs the per-step path), and a site switched to an uncovered impl still ran fused."""
    norm, kw = ("dn-1d-s", dict(sigma=1.0, window=5)) if change is _new_sigma else ("ln-s", dict(sigma=1.0, eps=0.0))
    fused, _ = _pair(norm, kw)
    x = torch.randn(T, N, I, dtype=torch.float64)
    fused(x)                                          # the first forward caches the plan
    change(fused)
    loop = copy.deepcopy(fused)
    loop.impl = "loop"
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0], loop(x)[0], rtol=1e-11, atol=1e-12)
    fused_path = rnn_fused._PLANS[fused][(torch.float64, torch.device("cpu"))] is not None
    assert fused_path == (change is not _general_impl)
