"""Recurrent cells against naive references written in this file (issue 12, items 2, 5 and 6).

- The LN-LSTM (Ba et al.; the authors' ``LSTMLNCell``) has trainable biases on ``W_x x`` and ``W_h h`` *before* its
  two joint LayerNorms (the code's ``_linear(..., bias=True)``, init 0); LN over the 4H units does not cancel a
  per-unit bias, so they train.
- The BN vanilla RNNs, like the BN-LSTM, are tested with step-0 statistics under ``source="code"`` (the authors'
  test model is unrolled one step).
- The 1-D DN inside the cells is :class:`dnlib.DivisiveNorm` itself (every spec field honoured, e.g.
  ``sup_scale``), whichever path it takes.
"""
import math

import pytest
import torch

from dnlib import DivisiveNorm, NormSpec, sparse_penalty
from dnlib.experiments.ptb_configs import CELL_TYPES, get_config
from dnlib.experiments.ptb_loss import evaluate_perplexity
from dnlib.models.rnn import LNLSTMCell, NormLSTMCell, NormRNNCell
from dnlib.models.rnn_lm import LanguageModel

I, H, N, T = 5, 8, 3, 4  # noqa: E741  I: the input size, as in the papers


pytestmark = pytest.mark.usefixtures("one_thread")


def _naive_ln(a, gain, beta, eps):
    """LayerNorm over all units of each row, written out (biased variance), then gain and bias."""
    mu = sum(a[:, k] for k in range(a.shape[1]))[:, None] / a.shape[1]
    var = sum((a[:, k] - mu[:, 0]) ** 2 for k in range(a.shape[1]))[:, None] / a.shape[1]
    return (a - mu) / torch.sqrt(var + eps) * gain + beta


def _naive_dn_1d(z, ks, kb, sigma, eps, border="valid", sup_scale=1.0, power=0.5):
    """PAPER.md eqs. 6-7 unit by unit, with the spec's eps, sup_scale and power: window of ks (kb) units
    around unit j (centred; TF SAME for even sizes), divided by the real units in it ("valid") or by k."""
    n, L = z.shape

    def window_mean(a, j, k):
        idx = [i for i in range(j - (k - 1) // 2, j + k // 2 + 1) if 0 <= i < L]
        return sum(a[:, i] for i in idx) / (len(idx) if border == "valid" else k)

    v = torch.stack([z[:, j] - window_mean(z, j, ks) for j in range(L)], 1)
    s = torch.stack([window_mean(v * v, j, kb) for j in range(L)], 1)
    return v / (sigma ** 2 + eps + sup_scale * s) ** power


# ------------------------------------------------------------------------------ item 2: LN-LSTM biases
def test_ln_lstm_has_the_codes_parameters():
    """The authors' LSTMLNCell variables: LinearI/{Matrix, Bias}, LinearH/{Matrix, Bias} (4H biases, init 0),
    gamma/beta of i2h and h2h (4H each) and of c (H)."""
    cell = LNLSTMCell(I, H, norm_kwargs=dict(sigma=0.01, eps=0.0))
    shapes = sorted(tuple(p.shape) for p in cell.parameters())
    code = sorted([(4 * H, I), (4 * H,), (4 * H, H), (4 * H,)] + [(4 * H,)] * 4 + [(H,)] * 2)
    assert shapes == code
    for name in ("bias", "bias_hh"):
        p = getattr(cell, name)
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad and p.shape == (4 * H,)
        assert torch.all(p == 0)   # init 0: the forward at init is unchanged


def test_ln_lstm_biases_receive_gradient():
    torch.manual_seed(0)
    cell = LNLSTMCell(I, H, norm_kwargs=dict(sigma=0.01, eps=0.0))
    x = torch.randn(T, N, I)
    out, _ = cell(x)
    (out * torch.randn_like(out)).sum().backward()
    for name in ("bias", "bias_hh"):
        g = getattr(cell, name).grad
        assert g is not None and torch.isfinite(g).all()
        # LN over the 4H units cancels only the mean of a bias, not the bias itself
        assert g.abs().max() > 1e-3, (name, g.abs().max())
        assert (g - g.mean()).abs().max() > 1e-3


@pytest.mark.parametrize("state_norm_c", [True, False])
def test_ln_lstm_equals_naive_ln_lstm_with_nonzero_biases(state_norm_c):
    sigma, alpha, fb = 0.3, 0.01, 0.5
    cell = LNLSTMCell(I, H, norm_kwargs=dict(sigma=sigma, eps=0.0, alpha=alpha), forget_bias=fb,
                      state_norm_c=state_norm_c).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.endswith("weight") and p.dim() == 1:      # LN gains
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
            else:                                            # weights, LN betas and the two pre-LN biases
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.5)
    assert cell.bias.abs().min() > 0 and cell.bias_hh.abs().min() > 0
    xs = torch.randn(T, N, I, generator=g, dtype=torch.float64)
    out, (h_last, c_last) = cell(xs)
    pen = sparse_penalty(cell)

    eps = sigma ** 2
    h = c = torch.zeros(N, H, dtype=torch.float64)
    ref_out, ref_pen = [], 0.0
    for t in range(T):
        i2h = xs[t] @ cell.weight_ih.t() + cell.bias
        h2h = h @ cell.weight_hh.t() + cell.bias_hh
        z = (_naive_ln(i2h, cell.norm_ih.weight, cell.norm_ih.bias, eps)
             + _naive_ln(h2h, cell.norm_hh.weight, cell.norm_hh.bias, eps))
        zi, zj, zf, zo = z.chunk(4, 1)
        c_new = torch.sigmoid(zf + fb) * c + torch.sigmoid(zi) * torch.tanh(zj)
        cn = _naive_ln(c_new, cell.norm_c.weight, cell.norm_c.bias, eps)
        h = torch.sigmoid(zo) * torch.tanh(cn)
        c = cn if state_norm_c else c_new
        ref_out.append(h)
        for a in (i2h, h2h, c_new):   # the code's L1 on i2h - mean_i, h2h - mean_h, new_c - mean_c
            ref_pen = ref_pen + alpha * (a - a.mean(1, keepdim=True)).abs().mean()
    torch.testing.assert_close(out, torch.stack(ref_out))
    torch.testing.assert_close(h_last, h)
    torch.testing.assert_close(c_last, c)
    torch.testing.assert_close(pen, ref_pen)


# ------------------------------------------------------------------ item 5: BN vanilla RNNs, step-0 tests
@pytest.mark.parametrize("cell", CELL_TYPES)
@pytest.mark.parametrize("row", ["bn", "bn-l1", "bn-s", "bn-star"])
def test_code_source_tests_every_bn_cell_with_step0_statistics(row, cell):
    assert get_config(f"{row}-{cell}", source="code").bn_test_step0 is True
    assert get_config(f"{row}-{cell}", source="paper").bn_test_step0 is False


def test_step0_evaluation_equals_the_codes_one_step_test_model_for_bn_rnn():
    """The authors' test model unrolls 1 step, so every step of its test pass uses the step-0 BN statistics;
    ``evaluate_perplexity(..., bn_step0=True)`` over 4-step chunks gives the same perplexity."""
    torch.manual_seed(0)
    V, B = 11, 2
    model = LanguageModel(V, hidden_size=6, arch="bn-rnn", nonlinearity="tanh", max_steps=T, init_scale=1.0,
                          norm_kwargs=dict(sigma=0.1, eps=0.0)).double()
    model.train()
    with torch.no_grad():   # a few training forwards: running statistics that differ from step to step
        for _s in range(5):
            model(torch.randint(0, V, (8, T)))
    per_step = torch.stack([m.running_var for m in model.layers[0].norm_hh.steps])
    assert (per_step[1:] - per_step[0]).abs().min() > 1e-2
    ids = torch.randint(0, V, (B * (3 * T + 1),))      # rows of 3T + 1 ids: the same targets for T and 1
    one_step = evaluate_perplexity(model, ids, B, num_steps=1)
    step0 = evaluate_perplexity(model, ids, B, num_steps=T, bn_step0=True)
    per_step_ppl = evaluate_perplexity(model, ids, B, num_steps=T)
    assert math.isclose(step0, one_step, rel_tol=1e-12)
    assert not math.isclose(per_step_ppl, one_step, rel_tol=1e-6)


# ---------------------------------------------------- item 6: the cells' 1-D DN is DivisiveNorm, exactly
SUP_SCALE = NormSpec("channel", "channel", {"channel": 5}, {"channel": 5}, sigma=0.5, sup_scale=2.0)


@pytest.mark.parametrize("hidden", [12, 300])   # 2-D inputs of <= 256 units take the band path, wider ones not
def test_lstm_cell_dn_honours_sup_scale(hidden):
    cell = NormLSTMCell(I, hidden, norm=SUP_SCALE).double()
    assert isinstance(cell.gate_norm, DivisiveNorm) and type(cell.gate_norm) is DivisiveNorm
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, I, generator=g, dtype=torch.float64)
    h = torch.randn(N, hidden, generator=g, dtype=torch.float64)
    c = torch.randn(N, hidden, generator=g, dtype=torch.float64)
    z = x @ cell.weight_ih.t() + h @ cell.weight_hh.t()
    dn = lambda a: _naive_dn_1d(a, 5, 5, 0.5, 1e-5, "valid", sup_scale=2.0)   # noqa: E731
    zi, zj, zf, zo = (dn(b) for b in z.chunk(4, 1))
    c_ref = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj)
    h_ref = torch.sigmoid(zo) * torch.tanh(dn(c_ref))
    _, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(c1, c_ref)
    torch.testing.assert_close(h1, h_ref)


@pytest.mark.parametrize("spec", [
    SUP_SCALE,
    NormSpec("channel", "channel", {"channel": 5}, {"channel": 3}, sigma=1.0, eps=0.0, border="zeros"),
    NormSpec("channel", "channel", {"channel": 7}, {"channel": 7}, sigma=0.7, power=0.75, border="valid"),
])
def test_rnn_cell_dn_equals_naive_formula(spec):
    cell = NormRNNCell(I, 10, "relu", spec).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, I, generator=g, dtype=torch.float64)
    h = torch.randn(N, 10, generator=g, dtype=torch.float64)
    z = x @ cell.weight_ih.t() + h @ cell.weight_hh.t()
    ks, kb = dict(spec.sum_window)["channel"], dict(spec.sup_window)["channel"]
    ref = torch.relu(_naive_dn_1d(z, ks, kb, spec.sigma, spec.eps, spec.border, spec.sup_scale, spec.power))
    h1, _ = cell.step(cell.input_transform(x[None])[0], (h,))
    torch.testing.assert_close(h1, ref)


def test_learned_sigma_in_a_cell_trains():
    spec = NormSpec("channel", "channel", {"channel": 5}, {"channel": 5}, sigma=0.5, learn_sigma=True)
    cell = NormRNNCell(I, 10, "tanh", spec)
    out, _ = cell(torch.randn(T, N, I))
    out.sum().backward()
    assert cell.norm.sigma.grad is not None and cell.norm.sigma.grad.abs() > 0


# -------------------------------------------- issue 22 item 6: per-gate affine of the per-nonlinearity cells
def _norm_params(layer) -> int:
    """The normalizer gains and biases of one layer (everything but its W_x, W_h and bias)."""
    return sum(p.numel() for n, p in layer.named_parameters() if n not in ("weight_ih", "weight_hh", "bias"))


@pytest.mark.parametrize("source", ["paper", "code"])
@pytest.mark.parametrize("name,per_layer", [("ln-star-lstm", 2000), ("ln-s-lstm", 2000), ("dn-star-lstm", 2000),
                                            ("ln-l1-lstm", 2000), ("dn-star-tanh-rnn", None),
                                            ("ln-star-relu-rnn", None)])
def test_affine_override_is_one_gain_and_bias_per_gate(name, per_layer, source):
    """The authors' per-nonlinearity LSTM with norm_affine: a gamma and beta of H units in each of the scopes
    gate_i, gate_f, state_z, state_c, gate_o: 5 x 2 x 200 = 2,000 per layer at H = 200 (their vanilla RNN: one,
    2H). affine=False (the rows' own setting) keeps none."""
    cfg = get_config(name, source)
    per_layer = per_layer or 2 * cfg.hidden_size
    model = LanguageModel(50, **cfg.replace(affine=True).model_kwargs())
    assert [_norm_params(layer) for layer in model.layers] == [per_layer] * cfg.num_layers
    plain = LanguageModel(50, **cfg.model_kwargs())
    assert [_norm_params(layer) for layer in plain.layers] == [0] * cfg.num_layers
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == \
        per_layer * cfg.num_layers


@pytest.mark.parametrize("norm,kw", [("ln-s", dict(sigma=1.0, eps=0.0)),
                                     ("dn-1d-s", dict(sigma=1.0, eps=0.0, window=5, border="zeros"))])
def test_per_gate_affine_equals_naive_per_gate_reference(norm, kw):
    cell = NormLSTMCell(I, H, norm, dict(kw, affine=True)).double()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in (cell.gate_weight, cell.cell_norm.weight):
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)
        for p in (cell.gate_bias, cell.cell_norm.bias, cell.bias):
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.5)
    x = torch.randn(N, I, generator=g, dtype=torch.float64)
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    c = torch.randn(N, H, generator=g, dtype=torch.float64)
    if norm == "ln-s":
        nz = lambda a: _naive_ln(a, 1.0, 0.0, 1.0)                           # noqa: E731
    else:
        nz = lambda a: _naive_dn_1d(a, 5, 5, 1.0, 0.0, "zeros")               # noqa: E731
    z = x @ cell.weight_ih.t() + cell.bias + h @ cell.weight_hh.t()
    gw, gb = cell.gate_weight.view(4, H), cell.gate_bias.view(4, H)
    zi, zj, zf, zo = (nz(z[:, k * H:(k + 1) * H]) * gw[k] + gb[k] for k in range(4))   # each gate its own
    c_ref = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj)
    h_ref = torch.sigmoid(zo) * torch.tanh(nz(c_ref) * cell.cell_norm.weight + cell.cell_norm.bias)
    _, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(c1, c_ref)
    torch.testing.assert_close(h1, h_ref)
    h1.sum().backward()
    assert all(cell.gate_weight.grad.view(4, H)[k].abs().sum() > 0 for k in range(4))


def test_affine_without_a_normalizer_is_refused():
    with pytest.raises(ValueError, match=r"affine: True needs a normalizer, but 'base-tanh-rnn' has norm='none'"):
        get_config("base-tanh-rnn", affine=True)
    with pytest.raises(ValueError, match=r"norm_kwargs: affine=True needs a normalizer, but norm='none'"):
        NormLSTMCell(I, H, "none", {"affine": True})
