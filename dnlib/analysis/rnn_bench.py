"""Speed of the normalized LSTM cells against ``nn.LSTM`` and two peers, as PyTorch's RNN benchmark does.

PyTorch's ``benchmarks/fastrnns`` (``bench.py``, ``custom_lstms.py``, ``factory.py``) defines the protocol and the
two reference points built here (our own code, written from that description):

- :class:`PeerLNLSTM`: a TorchScript layer-normalized LSTM as ``custom_lstms.LayerNormLSTMCell``: per step
  ``LN(W_ih x) + LN(W_hh h)`` over the 4H gate units, no biases (the LayerNorms carry them), the gates, and
  ``c' = LN(f c + i g)`` (the normalized cell is the state), ``h' = o tanh(c')``;
- :class:`LowerBound`: fastrnns' "lower bound" of a layer-normalized LSTM: ``nn.LSTM`` plus ``seq_len x 3``
  LayerNorm calls of the same sizes, forward only (on CPU ``nn.LSTM`` runs oneDNN's fused LSTM).

:func:`time_round_robin` times forward and backward separately, after warm-up, every candidate once per round
(round-robin, so that machine load hits all alike); the tables report each candidate's median (cells: +- the
standard deviation; ptb: the mean +- the standard deviation beside it; the rows hold all three), and its tokens/s
as a ratio to the baseline of the same run. Every table runs on the ``device`` it is given (models and inputs made
there; on CUDA each timed pass is synchronized before and after, by
:func:`dnlib.norms.bench_layers.synchronizer`, as the layer benchmark does), and its rows carry ``"device"``. A
candidate that cannot run on a device other than the CPU (construction or a first trial pass raises) is not timed:
its row says ``"skipped"`` and why, and the tables print it as not run there. On the CPU an error is raised as any
other. The command is ``python -m dnlib.bench`` (``make bench``).
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..models.rnn_lm import LanguageModel
from ..norms.bench_layers import synchronizer
from ..norms.sparse import sparse_penalty

__all__ = ["PeerLNLSTM", "LowerBound", "CellStack", "time_round_robin", "load_line", "cell_rows", "ptb_step_rows",
           "hidden_size_rows", "hidden_size_figure", "format_rows"]


class _PeerLNLSTMCell(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) / input_size ** 0.5)
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) / hidden_size ** 0.5)
        self.layernorm_i = nn.LayerNorm(4 * hidden_size)
        self.layernorm_h = nn.LayerNorm(4 * hidden_size)
        self.layernorm_c = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        hx, cx = state
        gates = self.layernorm_i(torch.mm(x, self.weight_ih.t())) + self.layernorm_h(torch.mm(hx, self.weight_hh.t()))
        i, f, g, o = gates.chunk(4, 1)
        cy = self.layernorm_c(torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g))
        hy = torch.sigmoid(o) * torch.tanh(cy)
        return hy, (hy, cy)


class _PeerLNLSTMLayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.cell = _PeerLNLSTMCell(input_size, hidden_size)
        self.hidden_size = hidden_size

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.size(1), self.hidden_size)
        state = (h, h)
        outs: list[Tensor] = []
        for xt in x.unbind(0):
            out, state = self.cell(xt, state)
            outs.append(out)
        return torch.stack(outs)


class PeerLNLSTM(nn.Module):
    """fastrnns' TorchScript ``LayerNormLSTMCell`` in a stack of ``num_layers`` layers (time-major input)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(torch.jit.script(_PeerLNLSTMLayer(i, hidden_size)) for i in sizes)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class LowerBound(nn.Module):
    """fastrnns' lower bound of a layer-normalized LSTM: ``nn.LSTM`` plus ``seq_len x 3`` LayerNorm calls per
    layer (two over 4H gate units, one over H), forward only."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers)
        self.ln4, self.ln1 = nn.LayerNorm(4 * hidden_size), nn.LayerNorm(hidden_size)
        self.num_layers = num_layers

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        a = x.new_ones(x.shape[1], 4 * self.ln1.normalized_shape[0])
        b = a[:, : self.ln1.normalized_shape[0]]
        for _ in range(x.shape[0] * self.num_layers):
            self.ln4(a), self.ln4(a), self.ln1(b)
        return out


class CellStack(nn.Module):
    """``num_layers`` of this library's recurrent cells, built as :class:`~dnlib.models.rnn_lm.LanguageModel` builds
    them from ``kwargs`` (a PTB config's ``model_kwargs()``): ``forward(x)`` returns the last layer's output."""

    def __init__(self, kwargs: dict, hidden_size: int, num_layers: int):
        super().__init__()
        kwargs = {**kwargs, "hidden_size": hidden_size, "num_layers": num_layers}
        self.layers = LanguageModel(2, **kwargs).layers

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x, _ = layer(x)
        return x


def load_line() -> str:
    """The machine's load average and torch's threads, one line."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min), {torch.get_num_threads()} torch threads"


def time_round_robin(cands: dict[str, tuple[Callable, Callable | None]], repeat: int, warmup: int = 2,
                     device="cpu") -> dict:
    """``{name: (forward times, backward times)}`` (seconds) of ``cands`` = ``{name: (forward, backward)}``:
    ``forward()`` returns what ``backward(it)`` backpropagates (``backward`` None: forward only). ``warmup``
    untimed rounds, then ``repeat`` rounds, each running every candidate once in turn; on a CUDA ``device`` the
    device is synchronized before the forward and after the forward and the backward."""
    sync = synchronizer(device)
    times = {k: ([], []) for k in cands}
    for r in range(warmup + repeat):
        for name, (fwd, bwd) in cands.items():
            sync()
            t0 = time.perf_counter()
            out = fwd()
            sync()
            t1 = time.perf_counter()
            if bwd is not None:
                bwd(out)
                sync()
            t2 = time.perf_counter()
            del out
            if r >= warmup:
                times[name][0].append(t1 - t0)
                if bwd is not None:
                    times[name][1].append(t2 - t1)
    return times


def _stat(ts: list) -> tuple[float, float, float]:
    if not ts:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(ts), statistics.fmean(ts), statistics.pstdev(ts)


def _runnable(build: Callable, name: str, device, skipped: dict):
    """``build()``, or None where it raises on a device other than the CPU (then ``skipped[name]`` says why)."""
    if torch.device(device).type == "cpu":
        return build()
    try:
        return build()
    except Exception as e:  # noqa: BLE001 (any failure of a candidate there: reported, not timed)
        skipped[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return None


def _tried(cands: dict, device, skipped: dict) -> dict:
    """``cands`` less those whose first (untimed) pass raises on a device other than the CPU (``skipped``)."""
    def trial(fwd, bwd):
        out = fwd()
        if bwd is not None:
            bwd(out)
        synchronizer(device)()
        return True
    return {k: c for k, c in cands.items() if _runnable(lambda c=c: trial(*c), k, device, skipped)}


def _skipped_rows(skipped: dict, device, **shape) -> list[dict]:
    return [{"name": k, "device": torch.device(device).type, **shape, "skipped": why} for k, why in skipped.items()]


def _cell_cands(factories: dict, hidden: int, steps: int, batch: int, layers: int, forward_only: bool = False,
                device="cpu", skipped: dict | None = None):
    """The candidates (``{name: (forward, backward)}``) of the recurrent stacks, each ``layers`` deep, on one
    shared input, models and input on ``device``; those that cannot run there go to ``skipped``."""
    skipped = {} if skipped is None else skipped
    x = torch.randn(steps, batch, hidden, device=device)
    cands = {}
    for name, factory in factories.items():
        m = _runnable(lambda f=factory: f(hidden, layers).to(device).train(), name, device, skipped)
        if m is None:
            continue

        def fwd(m=m):
            m.zero_grad(set_to_none=True)
            out = m(x)
            out = out[0] if isinstance(out, tuple) else out
            return out.sum() + sparse_penalty(m)

        bwd = None if (forward_only or isinstance(m, LowerBound)) else (lambda loss: loss.backward())
        cands[name] = (fwd, bwd)
    return _tried(cands, device, skipped)


def _need_baseline(baseline: str, skipped: dict, device) -> None:
    if baseline in skipped:
        raise RuntimeError(f"the baseline {baseline!r} cannot run on {device}: {skipped[baseline]}")


def cell_rows(factories: dict, hidden: int, steps: int, batch: int, layers: int, repeat: int,
              baseline: str = "nn.LSTM", device="cpu") -> list[dict]:
    """One row per candidate stack, timed on ``device``: forward and backward ms (median, mean, std), tokens/s
    (forward + backward; forward only for the lower bound) and its ratio to ``baseline``'s tokens/s (forward-only
    candidates against the baseline's forward); a candidate that cannot run on the device: a ``"skipped"`` row."""
    skipped = {}
    cands = _cell_cands(factories, hidden, steps, batch, layers, device=device, skipped=skipped)
    _need_baseline(baseline, skipped, device)
    times = time_round_robin(cands, repeat, device=device)
    tokens = steps * batch
    base_f, base_b = (statistics.median(t) for t in times[baseline])
    rows = []
    for name, (tf, tb) in times.items():
        f, b = _stat(tf), _stat(tb)
        total = f[0] + (b[0] if tb else 0.0)
        ref = base_f + (base_b if tb else 0.0)
        rows.append({"name": name, "device": torch.device(device).type, "hidden": hidden, "steps": steps,
                     "batch": batch, "layers": layers,
                     "fwd_ms": f[0] * 1e3, "fwd_mean_ms": f[1] * 1e3, "fwd_std_ms": f[2] * 1e3,
                     # a forward-only candidate has no backward: None (JSON null; NaN made --json refuse the rows)
                     **{k: v * 1e3 if tb else None for k, v in zip(("bwd_ms", "bwd_mean_ms", "bwd_std_ms"), b)},
                     "tokens_per_s": tokens / total, "ratio": ref / total, "forward_only": not tb})
    return rows + _skipped_rows(skipped, device, hidden=hidden, steps=steps, batch=batch, layers=layers)


def ptb_step_rows(configs: dict[str, dict], vocab: int, batch: int, steps: int, repeat: int,
                  baseline: str, device="cpu") -> list[dict]:
    """Whole PTB training steps (embedding, the recurrent stack, softmax over ``vocab``, loss + L1 penalty,
    backward, SGD step) of each ``{name: LanguageModel kwargs}`` on ``device``, interleaved; ratio = time /
    baseline's; a model that cannot run on the device: a ``"skipped"`` row."""
    ids = torch.randint(0, vocab, (batch, steps + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    cands, skipped = {}, {}
    for name, kwargs in configs.items():
        model = _runnable(lambda kw=kwargs: LanguageModel(vocab, **kw).to(device).train(), name, device, skipped)
        if model is None:
            continue
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.t().reshape(-1))
            (loss + sparse_penalty(model)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()

        cands[name] = (step, None)
    cands = _tried(cands, device, skipped)
    _need_baseline(baseline, skipped, device)
    times = time_round_robin(cands, repeat, device=device)
    base = statistics.median(times[baseline][0])
    rows = []
    for name, (ts, _) in times.items():
        med, mean, std = _stat(ts)
        rows.append({"name": name, "device": torch.device(device).type,
                     "step_ms": med * 1e3, "step_mean_ms": mean * 1e3, "step_std_ms": std * 1e3,
                     "tokens_per_s": batch * steps / med, "time_ratio": med / base})
    return rows + _skipped_rows(skipped, device)


def hidden_size_rows(factories: dict, hiddens, steps: int, batch: int, repeat: int, device="cpu") -> list[dict]:
    """:func:`cell_rows` (one layer, on ``device``) at each hidden size: the data of :func:`hidden_size_figure`."""
    rows = []
    for hidden in hiddens:
        rows += cell_rows(factories, hidden, steps, batch, 1, repeat, device=device)
    return rows


def hidden_size_figure(rows: list[dict], title: str = ""):
    """Tokens/s against the hidden size, one line per candidate: forward + backward (left) and forward only
    (right; the lower bound has only this one). Rows of candidates not run (``"skipped"``) are left out."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "skipped" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r["name"] for r in rows))
    for i, name in enumerate(names):   # one colour per candidate in both panels (the legend is the right one's)
        rs = [r for r in rows if r["name"] == name]
        hs = [r["hidden"] for r in rs]
        if not rs[0]["forward_only"]:
            axes[0].plot(hs, [r["tokens_per_s"] for r in rs], marker="o", label=name, color=f"C{i % 10}")
        fwd = [r["steps"] * r["batch"] / (r["fwd_ms"] / 1e3) for r in rs]
        axes[1].plot(hs, fwd, marker="o", label=name, color=f"C{i % 10}")
    for ax, what in zip(axes, ("forward + backward", "forward only"), strict=True):
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("tokens / s")
        ax.set_yscale("log")
        ax.set_title(what)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def format_rows(rows: list[dict], kind: str) -> list[str]:
    """The text lines of a table of :func:`cell_rows` (``kind="cells"``) or :func:`ptb_step_rows` (``"ptb"``); a
    candidate not run (``"skipped"``) says so and why."""
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"  {r['name']:28s} not run on {r['device']}: {r['skipped']}")
        elif kind == "ptb":
            lines.append(f"  {r['name']:28s} step {r['step_ms']:8.2f} ms (mean {r['step_mean_ms']:8.2f} +- "
                         f"{r['step_std_ms']:6.2f})  {r['tokens_per_s']:9.0f} tokens/s  time {r['time_ratio']:.2f}x")
        else:
            lines.append(_cell_line(r))
    return lines


def _cell_line(r: dict) -> str:
    bwd = ("  backward        -        " if r["forward_only"] else
           f"  backward {r['bwd_ms']:8.2f} ms (+- {r['bwd_std_ms']:6.2f})")
    what = "fwd only" if r["forward_only"] else "fwd+bwd"
    return (f"  {r['name']:28s} forward {r['fwd_ms']:8.2f} ms (+- {r['fwd_std_ms']:6.2f}){bwd}  "
            f"{r['tokens_per_s']:9.0f} tokens/s ({what})  {r['ratio']:.2f}x")
