"""PTB language modelling (PAPER.md §1.3-1.4, §2.2-2.3, §3.3): cells against hand-written references, the 1-D DN
window against a naive loop, BN's per-step statistics, configs against §2.3, and a CPU smoke run on real PTB."""
import os

import pytest
import torch
import torch.nn.functional as F

from dnlib import make_norm, sparse_penalty
from dnlib.experiments.ptb_configs import CELL_TYPES, ROWS, TABLE4, TABLE9, get_config, list_configs
from dnlib.models.rnn import BNLSTMCell, BNRNNCell, LNLSTMCell, NormLSTMCell, NormRNNCell
from dnlib.models.rnn_lm import LanguageModel

N, H, I = 3, 8, 5  # noqa: E741  I: the input size, as in the papers


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed=0, hidden=H):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, I, generator=g, dtype=torch.float64)
    h = torch.randn(N, hidden, generator=g, dtype=torch.float64)
    c = torch.randn(N, hidden, generator=g, dtype=torch.float64)
    return x, h, c


def _lstm_ref(z, c, norm=lambda a: a, cnorm=lambda a: a):
    """The LSTM of PAPER.md §1.4 written out: gates i, j, f, o; each block normalized before its nonlinearity."""
    Hh = c.shape[1]
    zi, zj, zf, zo = (norm(z[:, k * Hh:(k + 1) * Hh]) for k in range(4))
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj)
    h_new = torch.sigmoid(zo) * torch.tanh(cnorm(c_new))
    return h_new, c_new


def _naive_v(z, k):
    """The centred activation of eq. 6 (window of k units, zeros counted at the border)."""
    L = z.shape[1]
    return torch.stack([z[:, j] - sum(z[:, i] for i in range(j - k // 2, j + k // 2 + 1) if 0 <= i < L) / k
                        for j in range(L)], 1)


def _naive_dn(z, k, sigma, border):
    """PAPER.md eqs. 6-7 unit by unit: window of k units (centred, or TF SAME for border="reference")."""
    n, L = z.shape
    before, after = ((k - 1) // 2, k // 2) if border == "reference" else (k // 2, k // 2)

    def window_mean(a, j):
        idx = [j + r for r in range(-before, after + 1)]
        real = [i for i in idx if 0 <= i < L]
        total = sum(a[:, i] for i in real)
        return total / (len(real) if border == "valid" else k)

    v = torch.stack([z[:, j] - window_mean(z, j) for j in range(L)], 1)
    s = torch.stack([window_mean(v * v, j) for j in range(L)], 1)
    return v / torch.sqrt(sigma ** 2 + s)


# ------------------------------------------------------------------------------------------ single steps
def test_baseline_lstm_step_matches_hand_written():
    cell = NormLSTMCell(I, H).double()
    x, h, c = _inputs()
    with torch.no_grad():
        cell.bias.uniform_(-0.5, 0.5)
    z = x @ cell.weight_ih.t() + cell.bias + h @ cell.weight_hh.t()      # one linear map of [x; h] + bias
    h_ref, c_ref = _lstm_ref(z, c)
    out, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(h1, h_ref)
    torch.testing.assert_close(c1, c_ref)
    torch.testing.assert_close(out, h1)


def test_forget_bias_is_added_before_normalization():
    cell = NormLSTMCell(I, H, norm="ln-s", norm_kwargs=dict(sigma=1.0, eps=0.0), forget_bias=1.0).double()
    x, h, c = _inputs(1)
    z = x @ cell.weight_ih.t() + h @ cell.weight_hh.t()
    z[:, 2 * H:3 * H] += 1.0
    ln = lambda a: F.layer_norm(a, (H,), eps=1.0)   # noqa: E731
    h_ref, c_ref = _lstm_ref(z, c, ln, ln)
    _, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(h1, h_ref)
    torch.testing.assert_close(c1, c_ref)


@pytest.mark.parametrize("sigma,alpha", [(1.0, 0.0), (0.01, 1e-2)])
def test_per_nonlinearity_ln_cell_equals_layer_norm_of_each_gate(sigma, alpha):
    cell = NormLSTMCell(I, H, norm="ln-s", norm_kwargs=dict(sigma=sigma, eps=0.0, alpha=alpha)).double()
    x, h, c = _inputs(2)
    z = x @ cell.weight_ih.t() + h @ cell.weight_hh.t()
    ln = lambda a: F.layer_norm(a, (H,), eps=sigma ** 2)   # noqa: E731  one LN per gate block, no affine
    h_ref, c_ref = _lstm_ref(z, c, ln, ln)
    _, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(h1, h_ref)
    torch.testing.assert_close(c1, c_ref, msg="the un-normalized c is the state")
    if alpha:   # L1 sites i, j, f, o and c: alpha * mean|v| each (PAPER.md §2.2)
        blocks = [z[:, k * H:(k + 1) * H] for k in range(4)] + [c_ref]
        ref = sum(alpha * (b - b.mean(1, keepdim=True)).abs().mean() for b in blocks)
        torch.testing.assert_close(sparse_penalty(cell), ref)


@pytest.mark.parametrize("k,border", [(61, "zeros"), (5, "zeros"), (5, "valid"), (30, "reference"),
                                      (6, "reference"), (7, "reference")])
def test_dn_1d_window_matches_naive_loop(k, border):
    """Paper: radius R, window 2R+1, divided by 2R+1 (zeros counted); code: k units, TF SAME (asymmetric)."""
    L = 40 if k > 10 else 12
    z = torch.randn(4, L, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    ref = _naive_dn(z, k, 1.0, border)
    general = make_norm("dn-1d-s", L, window=k, border=border, sigma=1.0, eps=0.0, impl="general").double()
    band = make_norm("dn-1d-s", L, window=k, border=border, sigma=1.0, eps=0.0, impl="band").double()
    torch.testing.assert_close(general(z), ref)
    torch.testing.assert_close(band(z), ref)


def test_per_nonlinearity_dn_cell_matches_naive_loop():
    Hd = 12
    cell = NormLSTMCell(I, Hd, norm="dn-1d-s", norm_kwargs=dict(sigma=1.0, eps=0.0, window=5, border="zeros"))
    cell = cell.double()
    assert cell.gate_norm.impl == "auto"     # a plain DivisiveNorm (it picks its band path for these inputs)
    x, h, c = _inputs(3, Hd)
    z = x @ cell.weight_ih.t() + h @ cell.weight_hh.t()
    dn = lambda a: _naive_dn(a, 5, 1.0, "zeros")   # noqa: E731
    h_ref, c_ref = _lstm_ref(z, c, dn, dn)
    _, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(h1, h_ref)
    torch.testing.assert_close(c1, c_ref)


def test_ln_lstm_is_ba_et_al():
    cell = LNLSTMCell(I, H, norm_kwargs=dict(sigma=0.01, eps=0.0)).double()
    with torch.no_grad():
        for m in (cell.norm_ih, cell.norm_hh, cell.norm_c):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    x, h, c = _inputs(4)

    def ln(a, m):   # joint over all of a's units (4H for the transforms), own gain and bias
        return F.layer_norm(a, a.shape[1:], m.weight, m.bias, eps=1e-4)

    z = ln(x @ cell.weight_ih.t(), cell.norm_ih) + ln(h @ cell.weight_hh.t(), cell.norm_hh)
    zi, zj, zf, zo = z.chunk(4, 1)
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj)
    cn = ln(c_new, cell.norm_c)
    _, (h1, c1) = cell.step(cell.input_transform(x[None])[0], (h, c))
    torch.testing.assert_close(h1, torch.sigmoid(zo) * torch.tanh(cn))
    torch.testing.assert_close(c1, cn, msg="the code passes the normalized c on")
    cell.state_norm_c = False
    torch.testing.assert_close(cell.step(cell.input_transform(x[None])[0], (h, c))[1][1], c_new)


def _bn(a, eps, weight=None, bias=None):
    y = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + eps)
    return y if weight is None else y * weight + bias


def test_bn_lstm_per_step_statistics_in_training_running_ones_in_eval():
    T = 3
    cell = BNLSTMCell(I, H, norm_kwargs=dict(sigma=1.0, eps=0.0), max_steps=T).double()
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(T, N, I, generator=g, dtype=torch.float64)
    # training: step t uses the batch statistics of step t, and updates only step t's running averages
    h = c = torch.zeros(N, H, dtype=torch.float64)
    refs = []
    for t in range(T):
        z = _bn(xs[t] @ cell.weight_ih.t(), 1.0) + _bn(h @ cell.weight_hh.t(), 1.0)
        zi, zj, zf, zo = z.chunk(4, 1)
        c_raw = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj)
        cn = _bn(c_raw, 1.0)
        h, c = torch.sigmoid(zo) * torch.tanh(cn), cn
        refs.append(h)
    out, _ = cell(xs)
    torch.testing.assert_close(out, torch.stack(refs))
    means = torch.stack([m.running_mean for m in cell.norm_ih.steps])
    assert means.shape == (T, 4 * H) and not torch.allclose(means[0], means[1])
    torch.testing.assert_close(means[1], 0.1 * (xs[1] @ cell.weight_ih.t()).mean(0))   # momentum 0.1 = TF decay 0.9
    # eval: running statistics of each step
    cell.eval()
    h = c = torch.zeros(N, H, dtype=torch.float64)
    refs = []
    for t in range(T):
        def rn(a, m):
            return (a - m.running_mean) / torch.sqrt(m.running_var + 1.0)
        z = rn(xs[t] @ cell.weight_ih.t(), cell.norm_ih.steps[t]) + rn(h @ cell.weight_hh.t(), cell.norm_hh.steps[t])
        zi, zj, zf, zo = z.chunk(4, 1)
        c_raw = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj)
        cn = rn(c_raw, cell.norm_c.steps[t])
        h, c = torch.sigmoid(zo) * torch.tanh(cn), cn
        refs.append(h)
    out, _ = cell(xs)
    torch.testing.assert_close(out, torch.stack(refs))
    cell.norm_ih.eval_step = cell.norm_hh.eval_step = cell.norm_c.eval_step = 0   # the code's test pass
    out0, _ = cell(xs)
    assert not torch.allclose(out0[1:], out[1:])


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("norm", ["none", "ln", "dn-1d-s"])
def test_vanilla_rnn_step(nl, norm):
    kw = dict(sigma=1.0, eps=0.0) if norm != "none" else {}
    if norm == "dn-1d-s":
        kw.update(window=3, border="zeros")
    cell = NormRNNCell(I, H, nl, norm, kw).double()
    x, h, _ = _inputs(6)
    z = x @ cell.weight_ih.t() + h @ cell.weight_hh.t()      # W [x; h] + b, b = 0
    if norm == "ln":
        z = F.layer_norm(z, (H,), eps=1.0)
    elif norm == "dn-1d-s":
        z = _naive_dn(z, 3, 1.0, "zeros")
    g = torch.tanh if nl == "tanh" else torch.relu
    h1, _ = cell.step(cell.input_transform(x[None])[0], (h,))
    torch.testing.assert_close(h1, g(z), rtol=1e-6, atol=1e-6)


def test_bn_rnn_step():
    cell = BNRNNCell(I, H, "relu", norm_kwargs=dict(sigma=0.01, eps=0.0)).double()
    x, h, _ = _inputs(7)
    ref = torch.relu(_bn(x @ cell.weight_ih.t(), 1e-4) + _bn(h @ cell.weight_hh.t(), 1e-4))
    h1, _ = cell.step(cell.input_transform(x[None])[0], (h,), t=0)
    torch.testing.assert_close(h1, ref)


@pytest.mark.parametrize("name", ["base-lstm", "bn-star-lstm", "ln-lstm", "ln-star-lstm", "dn-star-lstm",
                                  "dn-star-tanh-rnn", "bn-relu-rnn"])
def test_gradients_flow_through_time(name):
    cfg = get_config(name, hidden_size=16, window=5 if "dn" in name else None, num_steps=6)
    torch.manual_seed(0)
    model = LanguageModel(30, **cfg.model_kwargs())
    ids = torch.randint(0, 30, (4, 6))
    emb = model.embedding(ids.t()).detach().requires_grad_()
    x = emb
    for layer in model.layers:
        x, _ = layer(x)
    x[-1].sum().backward()                    # the last step's output ...
    assert emb.grad[0].abs().sum() > 0        # ... depends on the first step's input
    sparse_penalty(model)


def test_l1_sums_over_sites_and_steps():
    """alpha * mean|v| at each of i, j, f, o and c, at every time step, summed (PAPER.md §2.2)."""
    Hd, T, alpha = 12, 3, 0.5
    cell = NormLSTMCell(I, Hd, norm="dn-1d-s", norm_kwargs=dict(sigma=1.0, eps=0.0, window=5, border="zeros",
                                                                     alpha=alpha)).double()
    xs = torch.randn(T, N, I, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    cell(xs)
    total = sparse_penalty(cell)
    ref, h, c = 0.0, torch.zeros(N, Hd, dtype=torch.float64), torch.zeros(N, Hd, dtype=torch.float64)
    dn = lambda a: _naive_dn(a, 5, 1.0, "zeros")   # noqa: E731
    for t in range(T):
        z = xs[t] @ cell.weight_ih.t() + h @ cell.weight_hh.t()
        h, c_new = _lstm_ref(z, c, dn, dn)
        for block in [z[:, k * Hd:(k + 1) * Hd] for k in range(4)] + [c_new]:
            ref = ref + alpha * _naive_v(block, 5).abs().mean()
        c = c_new
    torch.testing.assert_close(total, ref, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------- configs
def test_configs_match_section_2_3():
    assert len(list_configs()) == 36 and len(ROWS) == 12
    expect = {  # name: (sigma, alpha, lr) from PAPER.md §2.3 (paper side of §5.4)
        "bn-lstm": (0.01, 0, 1.0), "bn-l1-lstm": (0.01, 1e-2, 1.0), "bn-s-lstm": (1.0, 0, 1.0),
        "bn-star-lstm": (1.0, 1e-1, 1.0), "ln-lstm": (0.01, 0, 1.0), "ln-l1-lstm": (0.01, 1e-2, 1.0),
        "ln-s-lstm": (1.0, 0, 1.0), "ln-star-lstm": (1.0, 1e-3, 1.0), "dn-lstm": (1.0, 0, 1.0),
        "dn-star-lstm": (1.0, 1e-4, 1.0), "bn-l1-tanh-rnn": (0.01, 1e-1, 1.0), "bn-star-tanh-rnn": (1.0, 1e-4, 1.0),
        "bn-l1-relu-rnn": (0.01, 1e-4, 1.0), "bn-star-relu-rnn": (1.0, 1e-1, 1.0), "bn-relu-rnn": (0.01, 0, 0.1),
        "ln-star-tanh-rnn": (1.0, 1e-2, 1.0), "dn-star-relu-rnn": (1.0, 1e-2, 1.0), "base-tanh-rnn": (None, 0, 0.1),
        "base-relu-rnn": (None, 0, 0.1), "base-lstm": (None, 0, 0.1),
    }
    for name, (sigma, alpha, lr) in expect.items():
        cfg = get_config(name)
        assert (cfg.sigma, cfg.alpha, cfg.lr) == (sigma, alpha, lr), name
    assert get_config("base-lstm", source="code").lr == 1.0                      # §5.4 item 4
    assert get_config("ln-tanh-rnn").alpha == 0 and get_config("ln-tanh-rnn", source="code").alpha == 1e-2  # item 5
    assert get_config("ln-s-relu-rnn", source="code").alpha == 1e-2
    assert get_config("dn-tanh-rnn").hidden_size == 400 and get_config("dn-tanh-rnn", source="code").hidden_size == 200
    d = get_config("dn-star-lstm")
    assert (d.window, d.border, d.norm) == (61, "zeros", "dn-1d-s")                # §5.4 item 2, paper
    d = get_config("dn-star-relu-rnn", source="code")
    assert (d.window, d.border) == (60, "reference")
    assert get_config("ln-lstm").arch == "ln-lstm" and get_config("ln-l1-lstm").arch == "lstm"
    assert not get_config("ln-star-lstm").affine and get_config("bn-star-lstm").affine
    for name in list_configs():   # every config builds, and shares the §3.3 schedule
        cfg = get_config(name)
        assert (cfg.epochs, cfg.batch_size, cfg.num_steps, cfg.clip_norm, cfg.init_scale) == (13, 20, 20, 5.0, 0.1)
        assert [cfg.lr_at_epoch(e) / cfg.lr for e in (1, 4, 5, 13)] == [1, 1, 0.5, 0.5 ** 9]
    assert TABLE4["DN*"] == TABLE9["DN*"] == (102.238, 123.652, 117.868) and len(CELL_TYPES) == 3
    assert get_config("ln-star-lstm").paper_perplexity == 101.725


def test_model_init_follows_section_3_3():
    torch.manual_seed(0)
    model = LanguageModel(100, **get_config("bn-star-lstm", hidden_size=16).model_kwargs())
    for name, p in model.named_parameters():
        if name.endswith("norm_ih.weight") or name.endswith("norm_c.weight") or name.endswith("norm_hh.weight"):
            assert torch.all(p == 1), name
        elif "bias" in name:
            assert torch.all(p == 0), name
        else:
            assert p.abs().max() <= 0.1 and p.abs().max() > 0.09, name
    assert model.decoder.weight.data_ptr() != model.embedding.weight.data_ptr()     # untied


# --------------------------------------------------------------------------------------------------- data
ptb_dir = os.path.join(os.environ.get("DNLIB_DATA", "data"), "ptb")
needs_ptb = pytest.mark.skipif(not os.path.exists(os.path.join(ptb_dir, "ptb.train.txt")), reason="PTB not found")


def _strict_json(path):
    import json

    def refuse(token):
        raise ValueError(f"{path}: bare {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_max_tokens_not_below_the_training_tokens_is_refused_not_recorded_as_a_subset(monkeypatch):
    """--max-tokens 99999999 trained on all 929,589 tokens, recorded as "(smoke subset)": refused, naming both."""
    import types

    import dnlib.data
    from dnlib.experiments.ptb import load_data
    ids = torch.arange(2000) % 50
    monkeypatch.setattr(dnlib.data, "load_ptb", lambda *a, **k: types.SimpleNamespace(
        train=ids, valid=ids[:1500], test=ids[:1500], vocab_size=50, canonical=True))
    for max_tokens in (99_999_999, 2000):
        with pytest.raises(ValueError, match=rf"^max_tokens: {max_tokens:,} is not fewer than PTB's 2,000 training "):
            load_data(max_tokens)
    assert len(load_data(1999)[0]["train"]) == 1999


@pytest.mark.slow
@needs_ptb
def test_smoke_training_beats_unigram_and_resumes_exactly(tmp_path):
    from dnlib.experiments.ptb import load_data, run, unigram_perplexity
    data = load_data(30000, 1000)
    unigram = unigram_perplexity(data[0]["train"], data[0]["valid"], data[1])
    kw = dict(data=data, epochs=2, device="cpu", final_test_batch_size=None, hidden_size=64, lr=1.0, decay_after=1,
              batch_size=4)
    res = run("base-lstm", **kw)
    evals = [r for r in res.history if "valid_ppl" in r]
    E = res.record["config"]["setup"]["batches_per_epoch"]
    assert [r["step"] for r in evals] == [E, 2 * E] and res.record["steps_planned"] == 2 * E
    assert evals[-1]["valid_ppl"] < 0.85 * unigram, (evals[-1]["valid_ppl"], unigram)
    lrs = {r["step"]: r["lr"] for r in res.history}
    assert lrs[E] == 1.0 and lrs[2 * E] == 0.5                              # halved after epoch decay_after = 1
    assert res.headline["valid_ppl"] == evals[-1]["valid_ppl"] and res.headline["epochs"] == 2.0
    # resume: one epoch, stop, then the second from the checkpoint == the uninterrupted run (state carried too)
    small = ({k: v[:4000] for k, v in data[0].items()}, data[1])
    kw = {**kw, "data": small, "hidden_size": 16, "eval_every": 10}
    full = run("base-lstm", **kw)
    E = full.record["config"]["setup"]["batches_per_epoch"]
    stop = 10 * (E // 10 + 1)                 # a chunk boundary inside epoch 2: the carried state matters
    assert E % 10 and E < stop < 2 * E
    part = run("base-lstm", resume=tmp_path, stop_after=stop, **kw)
    assert part.stopped == f"stop_after at step {stop}"
    resumed = run("base-lstm", resume=tmp_path, **kw)
    assert resumed.stopped == "completed"
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


@pytest.mark.slow
@needs_ptb
def test_cli_entry_of_the_gpu_script_runs_on_cpu(tmp_path, capsys):
    import json

    from dnlib.experiments import records
    from dnlib.experiments.ptb import main
    out = tmp_path / "runs"
    assert main(["run", "dn-star-lstm", "--max-tokens", "3000", "--vocab", "200", "--epochs", "1",
                 "--device", "cpu", "--out", str(out), "--final-test-batch-size", "1", "--time-limit", "300"]) == 0
    (run_dir,) = out.iterdir()
    rec = records.read_record(run_dir)
    assert rec == json.loads((run_dir / "record.json").read_text())
    assert rec["stopped"] == "completed" and (run_dir / "checkpoint.pt").exists()
    h = rec["headline"]
    assert h["valid_ppl"] > 0 and h["final_test_ppl"] > 0 and h["epochs"] == 1.0
    assert rec["paper"] == {"final_test_ppl": 102.238} and rec["config"]["window"] == 61
    # report: the run folders become a table beside the paper's, a figure and a summary
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "| dn-star-lstm | DN* | 1.00 |" in table and "102.238" in table
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())["dn-star-lstm"]
    assert summary["test_ppl_per_epoch"] == [h["test_ppl"]] and summary["card"] == "cpu"
    assert summary["final_test_ppl"] == h["final_test_ppl"] and summary["seconds_per_epoch"] > 0
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 10_000
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:   # one line, exit 2, nothing written
        main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep2")])
    assert e.value.code == 2 and "no run folders" in capsys.readouterr().err
    assert not (tmp_path / "rep2").exists()


@pytest.mark.slow
@needs_ptb
def test_graph_step_body_equals_eager_trainer_on_cpu():
    """The CUDA-graph step's body (SequenceGraphTrainer: static state, manual SGD with a tensor learning rate,
    clipping, state carry) run eagerly on CPU gives the same losses and parameters as the generic Trainer."""
    from dnlib.experiments.ptb import check_graph, load_data
    data, V = load_data(4000, 200)
    for name in ("bn-star-lstm", "dn-star-lstm"):
        cfg = get_config(name, hidden_size=16, window=5 if "dn" in name else None)
        r = check_graph(cfg, data["train"], V, steps=3, device="cpu")
        assert r["ok"] and r["eager_losses"] == r["graph_losses"] and r["param_diff"] == 0.0, r


@pytest.mark.slow
@needs_ptb
def test_graph_step_resumes_exactly_and_its_checkpoints_are_the_eager_ones(tmp_path):
    """Stopped mid-epoch by the graph step (body run eagerly on CPU), resumed eagerly: the uninterrupted eager run."""
    from dnlib.experiments.ptb import load_data, run
    kw = dict(data=load_data(3000, 200), epochs=1, device="cpu", final_test_batch_size=None, hidden_size=16,
              batch_size=4, eval_every=5)
    full = run("dn-star-lstm", mode="eager", **kw)
    part = run("dn-star-lstm", mode="graph", resume=tmp_path, stop_after=10, **kw)
    setup = part.record["config"]["setup"]
    assert setup["mode"] == "graph-step (eager)"
    # the record says the streams came from the canonical PTB files, and the sizes of the evaluated splits
    assert setup["canonical_data"] is True and "NOT" not in setup["data"]
    assert (setup["valid_tokens"], setup["test_tokens"]) == (1000, 1000)
    given = run("dn-star-lstm", mode="eager", stop_after=1, **{**kw, "data": (dict(kw["data"][0]), 200)})
    assert given.record["config"]["setup"]["canonical_data"] is None
    resumed = run("dn-star-lstm", mode="eager", resume=tmp_path, **kw)
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


@needs_ptb
@pytest.mark.parametrize("mode", ["eager", "graph"])    # "graph" on CPU runs the graph step's body eagerly
def test_diverged_run_raises_and_writes_a_valid_record(tmp_path, mode):
    from dnlib.experiments import records
    from dnlib.experiments.ptb import load_data, run
    from dnlib.training.trainer import TrainingDiverged
    with pytest.raises(TrainingDiverged) as e:
        run("base-lstm", data=load_data(3000, 200), epochs=2, device="cpu", mode=mode, final_test_batch_size=None,
            resume=tmp_path, hidden_size=16, lr=1e6, batch_size=4, clip_norm=None)
    rec = _strict_json(tmp_path / "record.json")
    assert rec == records.read_record(tmp_path) and rec["stopped"] == f"diverged at step {e.value.step}"
    assert all(v is None for v in rec["headline"].values())
    _strict_json(tmp_path / "history.json")


@pytest.mark.slow
@needs_ptb
def test_cli_diverged_run_exits_1(tmp_path, capsys):
    from dnlib.experiments.ptb import main
    code = main(["run", "base-lstm", "--max-tokens", "3000", "--vocab", "200", "--epochs", "1", "--lr", "1e6",
                 "--device", "cpu", "--resume", str(tmp_path), "--final-test-batch-size", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "diverged at step" in err, err
    assert _strict_json(tmp_path / "record.json")["stopped"].startswith("diverged at step")


def test_notebook_has_profiles_and_typed_parameters():
    from dnlib.notebook import parameters
    path = os.path.join(os.path.dirname(__file__), "..", "notebooks", "04_language_model.ipynb")
    parameters.check_parameter_cell(path)
    assert set(parameters.notebook_profiles(path)) == {"smoke", "full"}


# ------------------------------------------------------------- the authors' conventions under source="code" (issue 22)
def _tiny_lm(name="bn-lstm", V=7, Hd=6, T=5, source="code", seed=0):
    cfg = get_config(name, source, hidden_size=Hd, num_steps=T, window=5 if "dn" in name else None)
    torch.manual_seed(seed)
    return LanguageModel(V, **cfg.model_kwargs()).double()


def _naive_tf_clip(model, ids, y, max_norm):
    """tf.clip_by_global_norm as the authors' graph sees the gradients, written out: every parameter but the
    embedding as a dense gradient, the embedding as one slice per token occurrence (the gradient of the row looked
    up at position (n, t), each its own leaf here); returns the norm and the clipped dense gradients (TF scales
    the slices, which then sum into the rows: the same as scaling the dense gradient)."""
    import copy
    m = copy.deepcopy(model)
    logits, _ = m(ids)
    lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum") / y.shape[0]
    lm_loss.backward()
    dense = {n: p.grad.clone() for n, p in m.named_parameters()}
    m = copy.deepcopy(model)
    n_, t_ = ids.shape
    rows = {(n, t): m.embedding.weight[ids[n, t]].detach().clone().requires_grad_() for n in range(n_)
            for t in range(t_)}
    h = torch.stack([torch.stack([rows[n, t] for n in range(n_)]) for t in range(t_)])     # (T, N, E)
    for layer in m.layers:
        h, _ = layer(h)
    logits = m.decoder(h)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum") / y.shape[0]
    slices = dict(zip(rows, torch.autograd.grad(loss, list(rows.values()))))
    summed = torch.zeros_like(dense["embedding.weight"])
    for (n, t), g in slices.items():
        summed[ids[n, t]] += g
    torch.testing.assert_close(summed, dense["embedding.weight"])        # the dense row = the sum of its slices
    sq = sum(float((g ** 2).sum()) for k, g in dense.items() if k != "embedding.weight")
    sq += sum(float((g ** 2).sum()) for g in slices.values())
    norm = sq ** 0.5
    factor = min(1.0, max_norm / norm)
    return norm, {k: g * factor for k, g in dense.items()}


def _clipped(model, ids, y, max_norm, clip):
    import copy
    m = copy.deepcopy(model)
    c = clip(m) if clip is not None else None
    logits, _ = m(ids)
    lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum") / y.shape[0]
    lm_loss.backward()
    params = list(m.parameters())
    norm = c(params, max_norm) if c is not None else torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm), {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("name", ["bn-lstm", "dn-star-lstm", "ln-tanh-rnn"])
def test_slice_clip_is_tfs_global_norm_over_token_occurrences(name):
    from dnlib.experiments.ptb_loss import SliceClip
    V, T, Nb = 7, 5, 4
    model = _tiny_lm(name, V=V, T=T)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 3, (Nb, T), generator=g)          # 20 positions over 3 words: heavy repetition
    y = torch.randint(0, V, (Nb, T), generator=g)
    ref_norm, ref_grads = _naive_tf_clip(model, ids, y, 0.05)
    assert ref_norm > 0.05                                    # clipping is active
    norm, grads = _clipped(model, ids, y, 0.05, SliceClip)
    assert norm == pytest.approx(ref_norm, rel=1e-12)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-10, atol=1e-14)
    # torch's clip_grad_norm_ measures the summed rows: another norm, another clip factor, whenever words repeat
    # (here 86% for bn-lstm: BN makes the gradients of a batch sum to ~0; 0.14% ln-tanh-rnn; 8e-9 dn-star-lstm)
    dense_norm, dense_grads = _clipped(model, ids, y, 0.05, None)
    assert abs(dense_norm - ref_norm) / ref_norm > 1e-10, (dense_norm, ref_norm)
    ratio = dense_grads["decoder.weight"] / grads["decoder.weight"]
    torch.testing.assert_close(ratio, torch.full_like(ratio, (ref_norm / (dense_norm + 1e-6))))
    # all tokens distinct: one slice per row, the two norms are one
    model = _tiny_lm(name, V=Nb * T, T=T)
    ids = torch.randperm(Nb * T, generator=g).view(Nb, T)
    y = torch.randint(0, Nb * T, (Nb, T), generator=g)
    norm, grads = _clipped(model, ids, y, 0.05, SliceClip)
    dense_norm, dense_grads = _clipped(model, ids, y, 0.05, None)
    assert norm == pytest.approx(dense_norm, rel=1e-12) and norm > 0.05
    for k in grads:      # clip_grad_norm_ divides by norm + 1e-6
        torch.testing.assert_close(grads[k], dense_grads[k], rtol=1e-6 / norm * 2, atol=1e-14)


def test_slice_clip_without_a_backward_says_so():
    from dnlib.experiments.ptb_loss import SliceClip
    model = _tiny_lm()
    clip = SliceClip(model)
    with torch.no_grad():
        model(torch.zeros(2, 5, dtype=torch.long))            # no graph: nothing captured
    with pytest.raises(RuntimeError, match="SliceClip: no gradient of the embedding output"):
        clip(list(model.parameters()), 5.0)
    clip.remove()


def test_code_source_run_steps_with_tfs_clipping_and_moving_averages():
    """A code-side run: the trainer clips with SliceClip (one step equals the naive TF step) and the BN cells keep
    TensorFlow's moving averages; the paper side keeps torch's clip_grad_norm_ and BN statistics."""
    import copy

    from dnlib.experiments.ptb import RECIPE
    from dnlib.experiments.ptb_loss import SliceClip
    from dnlib.training.trainer import Trainer
    V = 9
    ids = torch.randint(0, 4, (600,), generator=torch.Generator().manual_seed(1)).remainder(V)
    data = ({"train": ids, "valid": ids[:200], "test": ids[:200]}, V)
    steps = {}
    for source in ("code", "paper"):
        cfg = RECIPE.config("bn-lstm", source=source, hidden_size=6, batch_size=4, num_steps=5, clip_norm=0.05)
        setup = RECIPE.build(cfg, data, 0, "cpu", mode="eager", final_test_batch_size=None)
        tr = setup.make_trainer(evaluate=None)
        assert isinstance(tr, Trainer) and isinstance(tr.clip_fn, SliceClip) == (source == "code")
        # the run identity names the new fields only off their defaults: checkpoints from before still resume
        assert setup.run_info.get("clip_mode") == ("slices" if source == "code" else None)
        x, y, reset = batch = next(setup.batches)
        before = copy.deepcopy(tr.model)
        tr.train_step(batch)
        steps[source] = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        if source == "code":
            _, ref = _naive_tf_clip(before, x, y, 0.05)
            for n, p in before.named_parameters():        # plain SGD, lr 1.0 in epoch 1
                torch.testing.assert_close(steps[source][n], p.detach() - cfg.lr * ref[n], rtol=1e-5, atol=1e-7)
        bn = tr.model.layers[0].norm_ih.steps[0]
        z = x.t()[0].to(before.embedding.weight.device)
        xw = before.embedding(z) @ before.layers[0].weight_ih.t()        # step 0's W_x x, before the update
        expect = 0.1 * xw.var(0, unbiased=source != "code") + (0.0 if source == "code" else 0.9)
        torch.testing.assert_close(bn.running_var, expect.detach().float(), rtol=1e-5, atol=1e-7)
        assert bn.running_stats == ("tf" if source == "code" else "torch")
    assert not torch.allclose(steps["code"]["decoder.weight"], steps["paper"]["decoder.weight"])


@needs_ptb
def test_code_source_graph_step_body_clips_as_the_eager_trainer():
    """The graph step (SequenceGraphTrainer, its body run eagerly on CPU) calls the same SliceClip."""
    from dnlib.experiments.ptb import check_graph, load_data
    data, V = load_data(4000, 200)
    cfg = get_config("bn-lstm", source="code", hidden_size=16)
    r = check_graph(cfg, data["train"], V, steps=3, device="cpu")
    assert r["ok"] and r["eager_losses"] == r["graph_losses"] and r["param_diff"] == 0.0, r


def test_bn_lstm_tf_moving_averages_give_the_codes_eval_outputs():
    """Several training forwards of a BN-LSTM with running_stats="tf", then eval, against the TF formula written
    here: per step and site, ema = 0.9 ema + 0.1 x from 0, x the batch mean and biased variance."""
    T, K, eps = 3, 4, 1e-4
    cell = BNLSTMCell(I, H, norm_kwargs=dict(sigma=0.01, eps=0.0, running_stats="tf"), max_steps=T).double()
    with torch.no_grad():
        for m in (cell.norm_ih, cell.norm_hh, cell.norm_c):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(11)
    ema = {(site, t): [0.0, 0.0] for site in ("ih", "hh", "c") for t in range(T)}

    def bn(a, site, t, train):
        m = {"ih": cell.norm_ih, "hh": cell.norm_hh, "c": cell.norm_c}[site]
        if train:
            mu, var = a.mean(0), ((a - a.mean(0)) ** 2).mean(0)
            e = ema[site, t]
            e[0], e[1] = 0.9 * e[0] + 0.1 * mu, 0.9 * e[1] + 0.1 * var
        else:
            mu, var = ema[site, t]
        return (a - mu) / torch.sqrt(var + eps) * m.weight + m.bias

    def naive(xs, train):
        h = c = torch.zeros(N, H, dtype=torch.float64)
        outs = []
        for t in range(T):
            z = bn(xs[t] @ cell.weight_ih.t(), "ih", t, train) + bn(h @ cell.weight_hh.t(), "hh", t, train)
            zi, zj, zf, zo = z.chunk(4, 1)
            c = bn(torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zj), "c", t, train)
            h = torch.sigmoid(zo) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs)

    with torch.no_grad():
        for _ in range(K):
            xs = torch.randn(T, N, I, generator=g, dtype=torch.float64)
            torch.testing.assert_close(cell(xs)[0], naive(xs, True))
        for t in range(T):
            torch.testing.assert_close(cell.norm_hh.steps[t].running_var, ema["hh", t][1], rtol=1e-12, atol=1e-14)
        cell.eval()
        xs = torch.randn(T, N, I, generator=g, dtype=torch.float64)
        torch.testing.assert_close(cell(xs)[0], naive(xs, False), rtol=1e-10, atol=1e-12)
        default = BNLSTMCell(I, H, norm_kwargs=dict(sigma=0.01, eps=0.0), max_steps=T).double()
        assert default.norm_c.steps[0].running_stats == "torch"
        assert torch.equal(default.norm_c.steps[0].running_var, torch.ones(H, dtype=torch.float64))


def test_code_source_config_fields_and_refusals():
    for name in list_configs():
        paper, code = get_config(name), get_config(name, source="code")
        assert (paper.clip_mode, paper.running_stats) == ("dense", "torch"), name
        bn = name.startswith("bn")
        assert (code.clip_mode, code.running_stats) == ("slices", "tf" if bn else "torch"), name
        assert code.model_kwargs()["norm_kwargs"].get("running_stats", "torch") == code.running_stats
    with pytest.raises(ValueError, match=r"clip_mode: got 'sparse'; allowed values are \['dense', 'slices'\]"):
        get_config("bn-lstm", clip_mode="sparse")
    with pytest.raises(ValueError, match=r"running_stats: 'tf' .* 'ln-star-lstm' \(arch 'lstm'\) keeps none"):
        get_config("ln-star-lstm", running_stats="tf")
    with pytest.raises(ValueError, match=r"affine: True needs a normalizer, but 'base-lstm' has norm='none'"):
        get_config("base-lstm").replace(affine=True)


def test_final_test_batch_size_none_skips_the_pass_and_0_is_refused(tmp_path, capsys):
    """``final_test_batch_size=None`` (``--final-test-batch-size none``) skips the test pass at the end of the
    schedule; 0 (which skipped it before) and negatives are refused by name and value before any work (the CLI: one
    line, exit 2); a run folder whose run.json stored 0 resumes with None given."""
    import argparse
    import json

    from dnlib.experiments import ptb
    V = 9
    ids = torch.randint(0, V, (600,), generator=torch.Generator().manual_seed(1))
    data = ({"train": ids, "valid": ids[:200], "test": ids[:200]}, V)
    kw = dict(data=data, steps=3, hidden_size=6, batch_size=4, num_steps=5, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"final_test_batch_size: got 0, which no longer skips .*give None"):
        ptb.run("base-lstm", final_test_batch_size=0, **kw)
    for value in (-1, 2.0, True, "1"):
        with pytest.raises(ValueError, match=rf"final_test_batch_size: must be an integer >= 1 \(or None\), "
                                             rf"got {value!r}"):
            ptb.run("base-lstm", final_test_batch_size=value, **kw)
    skipped, one = (ptb.run("base-lstm", final_test_batch_size=v, **kw).record for v in (None, 1))
    assert skipped["headline"]["final_test_ppl"] is None and skipped["config"]["setup"]["final_test_batch_size"] is None
    assert one["headline"]["final_test_ppl"] > 1 and one["config"]["setup"]["final_test_batch_size"] == 1
    assert skipped["headline"]["test_ppl"] == one["headline"]["test_ppl"]
    with pytest.raises(SystemExit) as e:
        ptb.main(["run", "base-lstm", "--final-test-batch-size", "0", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "--final-test-batch-size" in err and "'0'" in err and "none" in err, err
    _, options = ptb.RECIPE.from_args(argparse.Namespace(final_test_batch_size="none"))
    assert options == {"final_test_batch_size": None}
    part = ptb.run("base-lstm", final_test_batch_size=None, out=tmp_path, stop_after=2, **kw)
    run_file = part.run_dir / "run.json"
    stored = json.loads(run_file.read_text())
    assert stored["options"]["final_test_batch_size"] is None
    stored["options"]["final_test_batch_size"] = 0                   # a folder written before issue 24
    run_file.write_text(json.dumps(stored))
    resume = dict(data=data, device="cpu", progress=False, resume=part.run_dir)
    with pytest.raises(ValueError, match=r"got 0, .*give None \(also to resume a run folder whose run.json stored"):
        ptb.run(None, **resume)
    done = ptb.run(None, final_test_batch_size=None, **resume).record
    assert done["steps_done"] == 3 and done["headline"]["final_test_ppl"] is None


def test_the_per_epoch_test_perplexity_is_labelled_with_the_runs_streams(tmp_path):
    """The table's and the curves' test perplexity was captioned "20 streams" whatever the runs' batch size
    (notebook 04's smoke runs use 4): it is evaluated in the training layout, ``batch_size`` streams."""
    import json
    import shutil
    from pathlib import Path

    import matplotlib.pyplot as plt

    from dnlib.experiments import ptb_report
    from dnlib.experiments.records import find_runs
    committed = Path(__file__).resolve().parents[1] / "results" / "records" / "ptb"
    runs = tmp_path / "ptb"
    shutil.copytree(committed, runs)
    assert "| test ppl (20 streams) |" in str(ptb_report.results_table(find_runs([runs])))   # the committed: 20
    folders = sorted(d for d in runs.iterdir() if (d / "record.json").is_file())
    for i, d in enumerate(folders):
        rec = json.loads((d / "record.json").read_text())
        rec["config"]["batch_size"] = 4 if i else 8
        (d / "record.json").write_text(json.dumps(rec))
    from dnlib.experiments.aggregate import PoolingWarning
    with pytest.warns(PoolingWarning, match="batch_size"):        # the two base-lstm runs now differ: one row each
        assert "| test ppl (training streams) |" in str(ptb_report.results_table(find_runs([runs])))
    rec = json.loads((folders[0] / "record.json").read_text())
    rec["config"]["batch_size"] = 4
    (folders[0] / "record.json").write_text(json.dumps(rec))
    assert "| test ppl (4 streams) |" in str(ptb_report.results_table(find_runs([runs])))
    fig = ptb_report.perplexity_curves(find_runs([runs]))
    assert any(ax.get_title().startswith("test (4 streams)") for ax in fig.axes)
    plt.close(fig)


def test_config_table_says_the_scaled_dn_window():
    """A smaller hidden size scales DN's window (61 of 200 units -> 11 of 32); the notes, written for the full size,
    say so in the same row (before: the column said 11 and the notes only 2R+1 = 61; notebook 04's table)."""
    from dnlib.experiments import ptb
    row = next(r for r in str(ptb.config_table(["dn-star-lstm"], hidden_size=32)).splitlines()
               if r.startswith("| dn-star-lstm"))
    assert "| 11 (zeros) |" in row and "DN window 11: 61 of 200 units at 32" in row, row
    assert "units at" not in str(ptb.config_table(["dn-star-lstm"]))


@needs_ptb
def test_a_failed_capture_is_in_the_record(tmp_path, monkeypatch):
    """A graph run whose CUDA-graph capture fails trains eagerly (one warning, trainer.fell_back) but its record said
    the graph mode it was built with, so its timings were the graph's. Simulated on the CPU: build records the mode it
    records on CUDA, and the trainer is told to capture, which fails here as a failed capture would."""
    import dnlib.experiments.ptb as P
    from dnlib.experiments import runner
    monkeypatch.setattr(P, "trainer_mode", lambda graph, dev: "cuda-graph" if graph else "eager")
    run = runner.prepare(P.RECIPE, "base-lstm", seed=0, out=tmp_path, progress=False, stop_after=2,
                         overrides={"hidden_size": 8, "epochs": 1},
                         options={"data": P.load_data(max_tokens=3000, vocab=100), "mode": "graph",
                                  "final_test_batch_size": None, "threads": 1})
    run.trainer.capture = True
    with pytest.warns(UserWarning, match="capture failed"):
        res = run.go()
    assert run.trainer.fell_back
    setup = res.record["config"]["setup"]
    assert setup["mode"] == "cuda-graph (capture failed: eager steps)" and setup["fell_back"] is True
