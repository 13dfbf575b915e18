"""Penn Treebank language modelling (PAPER.md §3.3; Tables 4 and 9): training, evaluation, a look inside the
cells, and a speed benchmark.

``python -m dnlib.ptb train dn-star-lstm [--epochs 13] [--source paper|code] [--out DIR] [--graph auto]``
``python -m dnlib.ptb bench``        tokens/s of the cells against ``nn.LSTM`` (forward + backward)
``python -m dnlib.ptb list``         the named configs with the paper's perplexities

Training is the paper's: truncated BPTT over contiguous streams (batch 20 x 20 steps) with the hidden state
carried from one minibatch to the next (detached between them) and reset to zero at the start of each epoch;
plain SGD; gradients clipped at global norm 5; 13 epochs, ``lr_e = lr0 * 0.5^max(e - 4, 0)``; loss = NLL summed
over the 20 steps and averaged over the batch, plus the L1 terms. Validation and test perplexity
(``exp(mean per-word NLL)``) after every epoch. The loop is :class:`dnlib.train.Trainer` (one step = one
minibatch; checkpoints and exact resume through it); on CUDA the whole training step (forward over 20 steps,
backward, clipping, SGD update, state carry) can be captured in one CUDA graph (:class:`GraphTrainer`), which
removes the per-step launch overhead that dominates at batch 20.

Evaluation runs in eval mode (BN cells use their per-step running statistics) with the state carried over the
whole split. Validation and the per-epoch test use the training layout (20 streams x 20 steps); the final test
pass can use one stream (``final_test_batch_size=1``), as the authors' code, which evaluates the whole test set
as one stream.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configs.ptb import PTBConfig, get_config, list_configs
from .models.rnn import LanguageModel
from .sparse import clear_penalties, sparse_penalty
from . import cli
from .io import atomic_write, atomic_write_json, atomic_write_text
from .train import CheckpointError, Trainer, TrainConfig, TrainingDiverged, resolve_device, set_seed

__all__ = ["PTBStream", "LMLoss", "GraphTrainer", "build_model", "evaluate_perplexity", "unigram_perplexity",
           "load_data", "train", "gate_statistics", "bench", "check_graph", "config_table", "run_many",
           "results_table", "perplexity_curves", "gate_table", "report", "headline", "set_threads", "main"]


# ------------------------------------------------------------------------------------------------------- data
def load_data(max_tokens: Optional[int] = None, vocab: Optional[int] = None, root=None):
    """PTB id streams ``{"train", "valid", "test"}`` and the vocabulary size.

    ``max_tokens`` keeps the first ``max_tokens`` tokens of train and ``max(max_tokens // 5, 1000)`` of valid and
    test (a smoke subset). ``vocab`` keeps the ``vocab - 1`` most frequent words of the full training set and
    maps all others to one shared "rare word" id ``vocab - 1`` (a smaller softmax for CPU smoke runs; the
    paper's runs use the full 10,000 words). The ids are frequency-ranked (:func:`dnlib.data.load_ptb`), so
    this is ``min(id, vocab - 1)``.
    """
    from .data import load_ptb
    if max_tokens is not None and not max_tokens >= 1:
        raise ValueError(f"max_tokens: must be an integer >= 1 (or None: all), got {max_tokens!r}")
    if vocab is not None and not vocab >= 2:
        raise ValueError(f"vocab: must be an integer >= 2 (kept words + the rare-word id), got {vocab!r}")
    ptb = load_ptb(root, download=False, progress=False)
    splits = {"train": ptb.train, "valid": ptb.valid, "test": ptb.test}
    if max_tokens is not None:
        n_eval = max(max_tokens // 5, 1000)
        splits = {"train": ptb.train[:max_tokens], "valid": ptb.valid[:n_eval], "test": ptb.test[:n_eval]}
    size = ptb.vocab_size
    if vocab is not None and vocab < size:
        splits = {k: v.clamp(max=vocab - 1) for k, v in splits.items()}
        size = vocab
    return splits, size


def _layout(ids: torch.Tensor, batch_size: int, num_steps: int):
    """``ids`` as ``batch_size`` contiguous rows (TF ptb_producer); returns (data, batches per epoch)."""
    from .data import ptb_batches
    b = ptb_batches(ids, batch_size, num_steps)
    return b.data, len(b)


class PTBStream:
    """A resumable batch source for :class:`dnlib.train.Trainer`: contiguous ``(x, y, reset)`` minibatches
    forever, epoch after epoch; ``reset`` is True on the first minibatch of an epoch (the model's state is zeroed
    there). ``state_dict`` = ``{"epoch", "pos"}``."""

    def __init__(self, ids: torch.Tensor, batch_size: int = 20, num_steps: int = 20, device=None):
        data, self.epoch_size = _layout(ids, batch_size, num_steps)
        self.data = data.to(device)
        self.batch_size, self.num_steps = batch_size, num_steps
        self.epoch, self.pos = 0, 0

    def __len__(self) -> int:
        return self.epoch_size

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos >= self.epoch_size:
            self.epoch, self.pos = self.epoch + 1, 0
        i, n = self.pos, self.num_steps
        self.pos += 1
        return self.data[:, i * n:(i + 1) * n], self.data[:, i * n + 1:(i + 1) * n + 1], i == 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]


class LMLoss:
    """The training loss, carrying the recurrent state across minibatches (a stateful ``loss_fn`` for
    :class:`dnlib.train.Trainer`): ``NLL summed over the steps / batch size``; the state is detached after each
    minibatch and zeroed when the batch says ``reset``. ``state_dict`` holds the state, so resume is exact."""

    def __init__(self):
        self.state = None

    def __call__(self, model: LanguageModel, batch):
        x, y, reset = batch
        if reset or self.state is None:
            self.state = model.init_state(x.shape[0], x.device)
        logits, state = model(x, self.state)
        self.state = [tuple(s.detach() for s in layer) for layer in state]
        return lm_loss(logits, y)

    def state_dict(self) -> dict:
        return {"state": None if self.state is None else [tuple(s.cpu() for s in layer) for layer in self.state]}

    def load_state_dict(self, d: dict) -> None:
        st = d["state"]
        self.state = None if st is None else st   # moved to the device on first use (see _to_device)

    def to(self, device):
        if self.state is not None:
            self.state = [tuple(s.to(device) for s in layer) for layer in self.state]
        return self


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NLL summed over time steps, averaged over the batch; ``logits`` time-major ``(T, N, V)``, ``y`` ``(N, T)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum") / y.shape[0]


# ------------------------------------------------------------------------------------------------- model
def build_model(cfg: PTBConfig, vocab_size: Optional[int] = None) -> LanguageModel:
    """The language model of a config (seeded by the caller)."""
    return LanguageModel(vocab_size or cfg.vocab_size, **cfg.model_kwargs())


def _set_bn_eval_step(model: nn.Module, step: Optional[int]) -> None:
    from .models.rnn import _StepNorm
    for m in model.modules():
        if isinstance(m, _StepNorm):
            m.eval_step = step


@torch.no_grad()
def evaluate_perplexity(model: LanguageModel, ids: torch.Tensor, batch_size: int = 20, num_steps: int = 20,
                        bn_step0: bool = False) -> float:
    """Perplexity ``exp(mean per-word NLL)`` of ``ids`` laid out as ``batch_size`` contiguous streams, the state
    carried over the whole split (eval mode; BN cells use running statistics, of step 0 only if ``bn_step0``)."""
    was = model.training
    model.eval()
    _set_bn_eval_step(model, 0 if bn_step0 else None)
    device = next(model.parameters()).device
    data, n = _layout(ids, batch_size, num_steps)
    data = data.to(device)
    state = model.init_state(batch_size, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(n):
        x = data[:, i * num_steps:(i + 1) * num_steps]
        y = data[:, i * num_steps + 1:(i + 1) * num_steps + 1]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.t().reshape(-1), reduction="sum").double()
    _set_bn_eval_step(model, None)
    clear_penalties(model)
    model.train(was)
    nll = total.item() / (n * batch_size * num_steps)
    return math.exp(nll) if nll < 709.0 else float("inf")   # inf (or nan) marks a diverged model, not a crash


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of ``eval_ids`` under the (add-one smoothed) unigram distribution of ``train_ids``: the bar a
    language model must clear."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[eval_ids].mean().item())


# ------------------------------------------------------------------------------------------- CUDA graphs
class GraphTrainer(Trainer):
    """:class:`dnlib.train.Trainer` whose training step is one CUDA-graph replay (CUDA only; plain SGD).

    The captured step: forward over the 20 steps from static state tensors, ``NLL + L1``, backward, global-norm
    clipping, ``p -= lr * g`` with the learning rate read from a device tensor (so the schedule needs no
    re-capture), and the copy of the final state into the static state. The trainer's own optimizer (momentum 0,
    no weight decay) is never stepped: its update is the same, so checkpoints stay interchangeable. Capture
    happens on the first step, after a short warm-up on a side stream whose effects are undone. On CPU the same
    step body runs eagerly (no capture), so its code is tested without a GPU.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.optimizer != "sgd" or self.cfg.momentum or self.cfg.weight_decay:
            raise ValueError("GraphTrainer: only plain SGD (momentum 0, weight decay 0) is captured")
        self.graph = None
        self.fell_back = False     # True when capture failed and the step runs eagerly

    def _body(self):
        model, params = self.model, self._params
        logits, state = model(self._x, self._state)
        loss = lm_loss(logits, self._y)
        (loss + sparse_penalty(model)).backward()
        if self.cfg.clip_norm:
            nn.utils.clip_grad_norm_(params, self.cfg.clip_norm, foreach=True)
        with torch.no_grad():
            grads = [p.grad for p in params]
            torch._foreach_add_(params, torch._foreach_mul(grads, self._neg_lr))
            for dst, src in zip(self._flat_state, [s for layer in state for s in layer]):
                dst.copy_(src)
        return loss.detach()

    def _setup(self, x, y):
        model = self.model
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._x, self._y = x.clone(), y.clone()
        self._state = model.init_state(x.shape[0], x.device)
        self._flat_state = [s for layer in self._state for s in layer]
        self._neg_lr = torch.zeros((), device=x.device)

    def _capture(self, x, y):
        model = self.model
        self._setup(x, y)
        snapshot = copy.deepcopy(model.state_dict())
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    for p in self._params:
                        p.grad = None
                    self._body()
            torch.cuda.current_stream().wait_stream(side)
            model.load_state_dict(snapshot)
            for p in self._params:
                p.grad = None
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._loss = self._body()
        finally:
            torch.cuda.synchronize()
            model.load_state_dict(snapshot)     # undo the warm-up (capture itself computes nothing)
            clear_penalties(model)
            for s in self._flat_state:
                s.zero_()

    def train_step(self, batch) -> torch.Tensor:
        x, y, reset = batch
        self.model.train()
        self._set_lr()
        cpu = self.device.type != "cuda"
        if cpu and not hasattr(self, "_x"):
            self._setup(x, y)
        if self.graph is None and not self.fell_back and not cpu:
            try:
                self._capture(x, y)
            except Exception as e:   # noqa: BLE001  an op that cannot be captured: keep training, eagerly
                warnings.warn(f"GraphTrainer: capture failed ({type(e).__name__}: {e}); training eagerly")
                self.fell_back, self.graph = True, None
                for p in self._params:
                    p.grad = None
        if self.fell_back:
            return super().train_step(batch)
        self._x.copy_(x)
        self._y.copy_(y)
        self._neg_lr.fill_(-self.opt.param_groups[0]["lr"])
        lf = self.loss_fn
        if reset or lf.state is None:
            for s in self._flat_state:
                s.zero_()
        elif lf.state is not self._state:
            for dst, src in zip(self._flat_state, [s for layer in lf.state for s in layer]):
                dst.copy_(src)
        if cpu:
            for p in self._params:
                p.grad = None
            self._loss = self._body()
        else:
            self.graph.replay()
        lf.state = self._state
        return self._loss.clone()


def check_graph(cfg: PTBConfig, ids: torch.Tensor, vocab_size: int, steps: int = 3, seed: int = 0,
                device="cuda") -> dict:
    """Train ``steps`` minibatches eagerly and with :class:`GraphTrainer` from the same initialisation; returns
    both loss sequences and the largest parameter difference (graph == eager up to float rounding)."""
    out = {}
    device = resolve_device(device)
    for mode in ("eager", "graph"):
        set_seed(seed)
        model = build_model(cfg, vocab_size)
        tc = TrainConfig(steps=steps, lr=cfg.lr, momentum=0.0, clip_norm=cfg.clip_norm, eval_every=0,
                         checkpoint_every=0, log_every=1, device=str(device), progress=False)
        cls = GraphTrainer if mode == "graph" else Trainer
        tr = cls(model, LMLoss(), PTBStream(ids, cfg.batch_size, cfg.num_steps, device), tc)
        losses = [float(tr.train_step(next(tr.batches))) for _ in range(steps)]
        if mode == "graph" and tr.fell_back:
            raise RuntimeError("CUDA-graph capture failed (see the warning)")
        out[mode] = {"losses": losses, "params": [p.detach().clone() for p in model.parameters()]}
    diff = max((a - b).abs().max().item() for a, b in zip(out["eager"]["params"], out["graph"]["params"]))
    rel = max(abs(a - b) / abs(a) for a, b in zip(out["eager"]["losses"], out["graph"]["losses"]))
    return {"eager_losses": out["eager"]["losses"], "graph_losses": out["graph"]["losses"],
            "max_param_diff": diff, "max_loss_rel_diff": rel, "ok": bool(rel < 1e-3 and diff < 1e-3)}


# ------------------------------------------------------------------------------------------------- train
def train(cfg: PTBConfig, data: Optional[dict] = None, vocab_size: Optional[int] = None, out_dir=None,
          device: str = "auto", epochs: Optional[int] = None, max_tokens: Optional[int] = None, seed: int = 0,
          graph: str = "auto", final_test_batch_size: Optional[int] = 1, progress: bool = True,
          resume: bool = True, time_limit: Optional[float] = None, results_path=None,
          extra: Optional[dict] = None) -> dict:
    """Train ``cfg`` on PTB and return the results: per epoch ``valid_ppl``, ``test_ppl``, ``lr``, ``epoch_time``
    (training seconds), ``eval_time`` and ``tokens_per_s``; ``final_test_ppl`` (the test set as
    ``final_test_batch_size`` streams, 1 = the code's single stream; None skips it), the paper's number, the
    config, the device and card, and the trained ``model``.

    ``data``/``vocab_size`` default to :func:`load_data` (``max_tokens`` for a subset). ``graph``: ``"auto"``
    (CUDA graph on CUDA), ``"on"``, ``"off"``. ``out_dir``: checkpoints and ``history.json`` (an interrupted run
    resumes from there; a checkpoint of another configuration, seed or data raises
    :class:`~dnlib.train.CheckpointError`, while more ``epochs`` extend the same run). ``time_limit`` (seconds from
    the call): stop after the last epoch whose successor would not fit, and run the final test only if its
    estimated time fits (``results["stopped"]`` says what happened). ``results_path``: JSON rewritten after every
    epoch (partial results survive a kill). A NaN/inf loss or perplexity raises
    :class:`~dnlib.train.TrainingDiverged` after ``results["stopped"] = "diverged at step N"`` is written.
    """
    t_start = time.perf_counter()
    deadline = t_start + time_limit if time_limit else None
    if data is None:
        data, vocab_size = load_data(max_tokens)
    vocab_size = vocab_size or cfg.vocab_size
    epochs = epochs if epochs is not None else cfg.epochs
    if not epochs >= 1:
        raise ValueError(f"epochs: must be an integer >= 1, got {epochs!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit: must be a number of seconds > 0 (or None), got {time_limit!r}")
    dev = resolve_device(device)
    set_seed(seed)
    model = build_model(cfg, vocab_size)
    stream = PTBStream(data["train"], cfg.batch_size, cfg.num_steps, dev)
    E = len(stream)
    use_graph = graph == "on" or (graph == "auto" and dev.type == "cuda")
    eval_times = {}

    def evaluate(m):
        t = time.perf_counter()
        valid = evaluate_perplexity(m, data["valid"], cfg.batch_size, cfg.num_steps)
        t1 = time.perf_counter()
        test = evaluate_perplexity(m, data["test"], cfg.batch_size, cfg.num_steps, cfg.bn_test_step0)
        eval_times[tr.step // E] = (t1 - t, time.perf_counter() - t1)
        return {"valid_ppl": valid, "test_ppl": test}

    tc = TrainConfig(steps=E, lr=cfg.lr, optimizer="sgd", momentum=0.0, clip_norm=cfg.clip_norm,
                     eval_every=E, checkpoint_every=E if out_dir is not None else 0, log_every=max(E // 10, 1),
                     seed=seed, device=str(dev), progress=progress)
    cls = GraphTrainer if use_graph else Trainer
    loss_fn = LMLoss()
    # the run's identity in the checkpoint: every field but the epoch count (more epochs extend the same run)
    run_info = {"config": cfg.name, **{k: v for k, v in asdict(cfg).items() if k not in ("name", "epochs", "notes")},
                "vocab_size": int(vocab_size), "train_tokens": int(data["train"].numel())}
    tr = cls(model, loss_fn, stream, tc, evaluate=evaluate, out_dir=out_dir,
             lr_lambda=lambda step: cfg.lr_at_epoch(step // E + 1) / cfg.lr, run_info=run_info)
    if resume and tr.try_resume():
        loss_fn.to(dev)
    res = {"config": asdict(cfg), "epochs_planned": epochs, "epochs": [], "final_test_ppl": None,
           "final_test_batch_size": final_test_batch_size, "paper_test_ppl": cfg.paper_perplexity,
           "graph": use_graph, "device": str(dev), "train_tokens": int(data["train"].numel()),
           "batches_per_epoch": E, "card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "stopped": "completed", **(extra or {})}

    def summarize():
        rows = [r for r in tr.history if "valid_ppl" in r]
        res["epochs"], prev = [], 0.0
        for e, r in enumerate(rows, 1):
            dt = r["time"] - prev
            prev = r["time"]
            ev = eval_times.get(e, (None, None))
            res["epochs"].append({
                "epoch": e, "lr": cfg.lr_at_epoch(e), "valid_ppl": r["valid_ppl"], "test_ppl": r["test_ppl"],
                "epoch_time": dt, "eval_time": None if ev[0] is None else ev[0] + ev[1],
                "tokens_per_s": E * cfg.batch_size * cfg.num_steps / dt if dt else None,
                "train_nll_per_word": r["train_loss"] / cfg.num_steps if "train_loss" in r else None})
        res["graph"] = use_graph and not getattr(tr, "fell_back", False)
        res["wall_s"] = time.perf_counter() - t_start
        if results_path is not None:
            atomic_write_json(res, results_path)

    while tr.step < epochs * E:
        t_ep = time.perf_counter()
        try:
            tr.run_until((tr.step // E + 1) * E)
        except TrainingDiverged as e:
            res["stopped"] = e.status
            summarize()
            raise
        ep_wall = time.perf_counter() - t_ep
        summarize()
        if deadline is not None and tr.step < epochs * E and time.perf_counter() + 1.05 * ep_wall > deadline:
            res["stopped"] = f"time limit: {tr.step // E} of {epochs} epochs fit in {time_limit:.0f} s"
            break
    if final_test_batch_size:
        est = None
        last = eval_times.get(tr.step // E)
        if last is not None:   # launch-bound: a 1-stream chunk costs about what a 20-stream chunk does
            est = 1.2 * last[1] * cfg.batch_size / final_test_batch_size
        if deadline is not None and est is not None and time.perf_counter() + est > deadline:
            res["final_test_skipped"] = f"estimated {est:.0f} s does not fit the time limit"
        else:
            t = time.perf_counter()
            res["final_test_ppl"] = evaluate_perplexity(model, data["test"], final_test_batch_size, cfg.num_steps,
                                                        cfg.bn_test_step0)
            res["final_test_time"] = time.perf_counter() - t
    summarize()
    res["model"] = model
    return res


# ---------------------------------------------------------------------------------------- inside the cells
@torch.no_grad()
def gate_statistics(model: LanguageModel, ids: torch.Tensor, batch_size: int = 20, num_steps: int = 20,
                    max_batches: int = 10, sat: float = 0.05, zero: float = 0.05) -> list:
    """How often each gate saturates and how sparse the activations are, per layer, over ``max_batches``
    minibatches of ``ids`` (eval mode, state carried).

    For the sigmoid gates ``i, f, o``: the fraction of values below ``sat`` or above ``1 - sat``; for the
    candidate ``j`` and ``tanh(c)``: the fraction with ``|value| > 1 - sat``; ``h_sparsity``: the fraction of
    hidden outputs with ``|h| < zero`` (for a ReLU RNN, also the exact zeros ``h_zeros``). Returns one dict per
    layer.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    data, n = _layout(ids, batch_size, num_steps)
    data = data.to(device)
    model.set_trace(True)
    state = model.init_state(batch_size, device)
    for b in range(min(n, max_batches)):
        _, state = model(data[:, b * num_steps:(b + 1) * num_steps], state)
    rows = []
    for k, layer in enumerate(model.layers):
        acts = {name: torch.stack([step[name] for step in layer.trace]) for name in layer.trace[0]}
        row = {"layer": k + 1}
        for g in ("i", "f", "o"):
            if g in acts:
                a = acts[g]
                row[f"{g}_saturated"] = ((a < sat) | (a > 1 - sat)).double().mean().item()
        for g in ("j", "tanh_c"):
            if g in acts:
                row[f"{g}_saturated"] = (acts[g].abs() > 1 - sat).double().mean().item()
        h = acts["h"]
        row["h_sparsity"] = (h.abs() < zero).double().mean().item()
        row["h_zeros"] = (h == 0).double().mean().item()
        rows.append(row)
    model.set_trace(False)
    clear_penalties(model)
    model.train(was)
    return rows


# ------------------------------------------------------------------------------------- notebook helpers
def set_threads(threads: int) -> int:
    """``torch.set_num_threads(threads)`` when ``threads > 0``; returns the number in use. On a shared 2-core
    machine one intra-op thread is several times faster than two oversubscribed ones."""
    if threads and threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _changes(hidden_size=0, batch_size=0, decay_after=-1, lr=0.0) -> dict:
    ch = {}
    if hidden_size:
        ch["hidden_size"] = hidden_size
    if batch_size:
        ch["batch_size"] = batch_size
    if decay_after >= 0:
        ch["decay_after"] = decay_after
    if lr:
        ch["lr"] = lr
    return ch


def _scaled(cfg: PTBConfig) -> PTBConfig:
    """A DN window scaled with a smaller hidden size (same fraction of the units)."""
    if cfg.window is None or cfg.hidden_size >= (200 if cfg.cell == "lstm" else 400) or cfg.source == "code":
        return cfg
    full = 200 if cfg.cell == "lstm" else 400
    k = max(3, round(cfg.window * cfg.hidden_size / full) | 1)
    return cfg.replace(window=k)


def config_table(names, source: str = "paper", **changes):
    """The configurations as a Markdown table (PAPER.md §2.3 values, the side of §5.4 chosen, and why)."""
    from .figures import MarkdownTable
    lines = ["| name | Table 9 row | cell | norm | sigma | alpha | affine | DN window | lr | H | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        c = _scaled(get_config(n, source, **_changes(**changes)))
        win = "—" if c.window is None else f"{c.window} ({c.border})"
        lines.append(f"| {c.name} | {c.row} | {c.arch} | {c.norm} | {'—' if c.sigma is None else f'{c.sigma:g}'} | "
                     f"{c.alpha:g} | {c.affine} | {win} | {c.lr:g} | {c.hidden_size} | {'; '.join(c.notes) or '—'} |")
    return MarkdownTable("\n".join(lines))


def run_many(names, *, data=None, vocab_size=None, source: str = "paper", epochs: int = 13, device: str = "auto",
             progress: bool = True, final_test_batch_size: Optional[int] = None, seed: int = 0, **changes) -> dict:
    """Train each named config (``changes``: ``hidden_size``, ``batch_size``, ``decay_after``, ``lr``; 0 or -1 =
    the config's) and return ``{name: results}`` (see :func:`train`)."""
    if data is None:
        data, vocab_size = load_data()
    out = {}
    for n in names:
        cfg = _scaled(get_config(n, source, **_changes(**changes)))
        out[n] = train(cfg, data, vocab_size, device=device, epochs=epochs, progress=progress, seed=seed,
                       final_test_batch_size=final_test_batch_size)
    return out


def results_table(results: dict, unigram: Optional[float] = None):
    """Our perplexities beside the paper's Table 9 (the paper's are 13 epochs on all of PTB)."""
    from .figures import MarkdownTable
    lines = ["| name | Table 9 row | epochs | valid ppl | test ppl | one-stream test ppl | paper test ppl | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        last = r["epochs"][-1] if r["epochs"] else {}
        f = r.get("final_test_ppl")
        tps = [e["tokens_per_s"] for e in r["epochs"] if e["tokens_per_s"]]
        lines.append(f"| {n} | {r['config']['row']} | {len(r['epochs'])} | {last.get('valid_ppl', float('nan')):.1f} | "
                     f"{last.get('test_ppl', float('nan')):.1f} | {'—' if f is None else f'{f:.1f}'} | "
                     f"{r['paper_test_ppl']:.3f} | {sum(tps) / max(len(tps), 1):.0f} |")
    if unigram is not None:
        lines.append(f"| unigram (train counts) | — | — | {unigram:.1f} | — | — | — | — |")
    return MarkdownTable("\n".join(lines))


def perplexity_curves(results: dict):
    """Validation and test perplexity per epoch, one line per config (log scale)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2, sharey=True)
    for n, r in results.items():
        ep = [e["epoch"] for e in r["epochs"]]
        for ax, key in zip(axes, ("valid_ppl", "test_ppl")):
            line, = ax.plot(ep, [e[key] for e in r["epochs"]], marker="o", label=n)
        if r.get("paper_test_ppl"):  # the paper's final test perplexity, dashed in the run's colour
            axes[1].axhline(r["paper_test_ppl"], color=line.get_color(), ls="--", lw=1,
                            label=f"{r['config'].get('row', n)} paper: {r['paper_test_ppl']:.1f}")
    for ax, title in zip(axes, ("validation", "test (20 streams); dashed: the paper's")):
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("perplexity")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    plt.close("all")
    return fig


def gate_table(results: dict, ids: torch.Tensor, **kwargs):
    """:func:`gate_statistics` of every trained model on ``ids``, as a Markdown table (percentages)."""
    from .figures import MarkdownTable
    cols = ["i_saturated", "j_saturated", "f_saturated", "o_saturated", "tanh_c_saturated", "h_sparsity", "h_zeros"]
    lines = ["| name | layer | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for n, r in results.items():
        for row in gate_statistics(r["model"], ids, **kwargs):
            lines.append(f"| {n} | {row['layer']} | " + " | ".join(
                f"{100 * row[c]:.1f}%" if c in row else "—" for c in cols) + " |")
    return MarkdownTable("\n".join(lines))


def _read_results(paths) -> dict:
    """``{name: results}`` of the results JSONs of ``python -m dnlib.ptb train --json`` at ``paths``."""
    results = {}
    for path in paths:
        try:
            r = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"paths: {path} is not JSON ({e})") from None
        if not isinstance(r, dict) or "epochs" not in r or "config" not in r:
            raise ValueError(f"paths: {path} is not a results JSON of `python -m dnlib.ptb train --json`")
        results[r["config"]["name"]] = r
    if not results:
        raise ValueError("paths: no results JSON given")
    return results


def report(paths, out_dir) -> dict:
    """Gather the results JSONs of ``python -m dnlib.ptb train ... --json`` runs into ``out_dir``: ``table.md``
    (:func:`results_table`, with the seconds per epoch), ``curves.png`` (:func:`perplexity_curves`) and
    ``summary.json`` (:func:`headline` plus the card, epoch times and tokens/s). Returns the summary."""
    results = _read_results(paths)
    out = Path(out_dir)
    summary = headline(results)
    for n, r in results.items():
        times = [e["epoch_time"] for e in r["epochs"] if e.get("epoch_time")]
        summary[n].update(card=r.get("card"), torch=r.get("torch"), lr=r["config"]["lr"], stopped=r.get("stopped"),
                          epochs_planned=r.get("epochs_planned"), seconds_per_epoch=(
                              sum(times) / len(times) if times else None),
                          tokens_per_s=(sum(e["tokens_per_s"] for e in r["epochs"] if e.get("tokens_per_s"))
                                        / max(len(times), 1)),
                          valid_ppl_per_epoch=[e["valid_ppl"] for e in r["epochs"]],
                          test_ppl_per_epoch=[e["test_ppl"] for e in r["epochs"]],
                          final_test_time=r.get("final_test_time"))
    table = str(results_table(results))
    table += "\n\n| name | card | s / epoch (training) | lr |\n|---|---|---|---|\n" + "\n".join(
        f"| {n} | {v['card']} | {v['seconds_per_epoch'] or float('nan'):.0f} | {v['lr']:g} |"
        for n, v in summary.items())
    atomic_write_text(out / "table.md", table + "\n")
    fig = perplexity_curves(results)
    atomic_write(out / "curves.png", lambda f: fig.savefig(f, format="png", dpi=110))
    atomic_write_json(summary, out / "summary.json")
    return summary


def headline(results: dict) -> dict:
    """The numbers a notebook run saves (:func:`dnlib.suite.save_results`)."""
    return {n: {"epochs": len(r["epochs"]), "valid_ppl": r["epochs"][-1]["valid_ppl"] if r["epochs"] else None,
                "test_ppl": r["epochs"][-1]["test_ppl"] if r["epochs"] else None,
                "final_test_ppl": r.get("final_test_ppl"), "paper_test_ppl": r["paper_test_ppl"],
                "config": r["config"]["name"], "source": r["config"]["source"]} for n, r in results.items()}


# ------------------------------------------------------------------------------------------------- bench
def _time(fn, warmup: int, reps: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def bench(names=("base-lstm", "ln-star-lstm", "dn-star-lstm"), device: str = "cpu", batch_size: int = 20,
          num_steps: int = 20, hidden_size: int = 200, num_layers: int = 2, reps: int = 5, threads=None) -> list:
    """Training-step throughput (forward + backward, tokens/s) of the recurrent stack (``num_layers`` layers,
    batch x steps) of each named config's cell, against ``nn.LSTM`` of the same size in the same run."""
    if not reps >= 1:
        raise ValueError(f"reps: must be an integer >= 1, got {reps!r}")
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(num_steps, batch_size, hidden_size, device=dev)
    tokens = batch_size * num_steps
    rows = []

    ref = nn.LSTM(hidden_size, hidden_size, num_layers).to(dev)

    def step_ref():
        out, _ = ref(x)
        out.sum().backward()

    t = _time(step_ref, 2, reps, sync)
    rows.append({"cell": "nn.LSTM", "ms_per_batch": 1e3 * t, "tokens_per_s": tokens / t})
    for name in names:
        cfg = get_config(name, hidden_size=hidden_size, num_layers=num_layers)
        layers = nn.ModuleList(build_model(cfg, 10).layers).to(dev).train()

        def step():
            h = x
            for layer in layers:
                h, _ = layer(h)
            (h.sum() + sparse_penalty(layers)).backward()

        t = _time(step, 2, reps, sync)
        rows.append({"cell": name, "ms_per_batch": 1e3 * t, "tokens_per_s": tokens / t})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_nn_lstm"] = r["tokens_per_s"] / base
    return rows


# --------------------------------------------------------------------------------------------------- CLI
def _print_rows(rows):
    keys = list(rows[0])
    print("  ".join(f"{k:>14}" for k in keys))
    for r in rows:
        print("  ".join(f"{v:>14.4g}" if isinstance(v, float) else f"{str(v):>14}" for v in r.values()))


def _vocab_size(value: str) -> int:
    v = cli.positive_int(value)
    if v < 2:
        raise argparse.ArgumentTypeError(f"{value} is too small: the vocabulary needs at least 2 ids "
                                         "(the kept words and the shared rare-word id)")
    return v


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="python -m dnlib.ptb", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one named config")
    t.add_argument("config", help="e.g. dn-star-lstm (see `list`)")
    t.add_argument("--source", default="paper", choices=("paper", "code"))
    t.add_argument("--epochs", type=cli.positive_int, default=None)
    t.add_argument("--max-tokens", type=cli.positive_int, default=None, help="train on the first N tokens (smoke)")
    t.add_argument("--vocab", type=_vocab_size, default=None, help="keep the N-1 most frequent words (smoke)")
    t.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads")
    t.add_argument("--device", type=cli.device, default="auto")
    t.add_argument("--graph", default="auto", choices=("auto", "on", "off"))
    t.add_argument("--lr", type=cli.positive_float, default=None, help="override the config's initial learning rate")
    t.add_argument("--final-test-batch-size", type=cli.nonnegative_int, default=1,
                   help="0: skip the one-stream test pass")
    t.add_argument("--check-graph", type=cli.nonnegative_int, default=0, help="first compare N graph and eager steps")
    t.add_argument("--out", type=cli.out_dir, default=None, help="checkpoints and history.json (resume from there)")
    t.add_argument("--json", type=cli.out_file, default=None, help="results JSON, rewritten after every epoch")
    t.add_argument("--time-limit", type=cli.positive_float, default=None,
                   help="seconds: stop after the last epoch that fits")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--seed", type=cli.seed, default=0)
    t.add_argument("--quiet", action="store_true")
    b = sub.add_parser("bench", help="tokens/s of the cells against nn.LSTM")
    b.add_argument("--device", type=cli.device, default="cpu")
    b.add_argument("--configs", nargs="+", default=["base-lstm", "ln-star-lstm", "dn-star-lstm"])
    b.add_argument("--reps", type=cli.positive_int, default=5)
    b.add_argument("--threads", type=cli.positive_int, default=None)
    b.add_argument("--json", type=cli.out_file, default=None)
    sub.add_parser("list", help="the named configs and the paper's perplexities")
    r = sub.add_parser("report", help="gather results JSONs of `train --json` into a table, a figure and a summary")
    r.add_argument("paths", nargs="+", type=cli.in_file)
    r.add_argument("--out", type=cli.out_dir, required=True)
    a = p.parse_args(argv)
    cmd_p = sub.choices[a.cmd]  # errors name the sub-command

    if a.cmd == "report":
        with cli.user_errors(cmd_p):
            _read_results(a.paths)   # every file is a results JSON, before anything is written
        report(a.paths, a.out)
        print((Path(a.out) / "table.md").read_text())
        return 0

    if a.cmd == "list":
        for name in list_configs():
            cfg = get_config(name)
            print(f"{name:>18}  {cfg.row:>12}  arch={cfg.arch:<8} norm={cfg.norm:<8} sigma={cfg.sigma!s:<5} "
                  f"alpha={cfg.alpha:<7g} lr={cfg.lr:<4g} H={cfg.hidden_size:<4} paper={cfg.paper_perplexity}")
        return 0
    if a.cmd == "bench":
        with cli.user_errors(cmd_p):
            for name in a.configs:
                get_config(name)
        rows = bench(a.configs, a.device, reps=a.reps, threads=a.threads)
        _print_rows(rows)
        if a.json:
            atomic_write_json(rows, a.json)
        return 0
    if a.check_graph and a.graph == "off":
        cmd_p.error(f"--check-graph {a.check_graph}: compares the graph step with the eager one, but --graph is off")
    with cli.user_errors(cmd_p):
        cfg = get_config(a.config, a.source, **({"lr": a.lr} if a.lr is not None else {}))
    if a.threads:
        torch.set_num_threads(a.threads)
    with cli.user_errors(cmd_p):
        data, vocab = load_data(a.max_tokens, a.vocab)
    if a.vocab is not None and a.vocab > vocab:
        cmd_p.error(f"--vocab: {a.vocab} is more than the {vocab} words of PTB")
    batches = {"train": cfg.batch_size, "valid": cfg.batch_size, "test": cfg.batch_size}
    for split, bs in list(batches.items()) + [("test", a.final_test_batch_size)]:
        if bs:
            try:
                _layout(data[split], bs, cfg.num_steps)
            except ValueError as e:
                cmd_p.error(f"--max-tokens {a.max_tokens}: {split}: {e}" if a.max_tokens else f"{split}: {e}")
    info = {}
    if a.check_graph:
        try:
            info["graph_check"] = check_graph(cfg, data["train"], vocab, a.check_graph, a.seed, a.device)
        except Exception as e:   # capture unsupported here: train eagerly, and say so
            info["graph_check"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps({"graph_check": info["graph_check"]}), flush=True)
        if not info["graph_check"]["ok"]:
            print("graph != eager (or capture failed): training eagerly", flush=True)
            a.graph = "off"
    try:
        res = train(cfg, data, vocab, out_dir=a.out, device=a.device, epochs=a.epochs, seed=a.seed, graph=a.graph,
                    final_test_batch_size=a.final_test_batch_size or None, progress=not a.quiet,
                    resume=not a.no_resume, time_limit=a.time_limit, results_path=a.json, extra=info)
    except CheckpointError as e:      # another run's (or an unreadable) checkpoint in --out: before any work
        print(f"{cmd_p.prog}: error: {cli.one_line(e)}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:     # --json says "stopped": "diverged at step N"; exit 1, one line
        print(f"{p.prog} train: {e}", file=sys.stderr)
        return 1
    res.pop("model")
    for r in res["epochs"]:
        print(f"epoch {r['epoch']:2d}  lr {r['lr']:.4g}  valid {r['valid_ppl']:.2f}  test {r['test_ppl']:.2f}  "
              f"train {r['epoch_time']:.1f}s  eval {r['eval_time'] or 0:.1f}s  {r['tokens_per_s']:.0f} tok/s", flush=True)
    print(f"{cfg.name}: {res['stopped']}; final test ppl {res['final_test_ppl']} (paper {res['paper_test_ppl']})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
