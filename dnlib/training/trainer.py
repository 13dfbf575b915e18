"""A generic trainer that knows no model (minGPT-style): SGD/Adam, step schedules, periodic evaluation,
a JSON history, atomic checkpoints and exact resume.

The trainer needs three things:

* ``model``: any ``nn.Module``;
* ``loss_fn(model, batch) -> loss`` (a scalar tensor; or ``(loss, {name: float})`` to log more). The sparse
  L1 terms that the model's normalizers accumulated (:func:`dnlib.sparse_penalty`) are added to it here, so a
  loss function never has to remember them. A stateful loss function (e.g. one carrying an RNN's hidden state
  across minibatches) may define ``state_dict()``/``load_state_dict()``: they are checkpointed too;
* ``batches``: a *batch source*: ``next(batches)`` gives the next batch forever, and ``state_dict()`` /
  ``load_state_dict()`` save and restore its position (see :class:`dnlib.data.loader.TensorBatches`, the data
  layer's, also importable from here).

Resuming from the checkpoint restores the model, optimizer, schedule, batch position, loss-function state
and every RNG, so on CPU a resumed run equals the uninterrupted one exactly. The checkpoint is read with
``torch.load(weights_only=True)`` (it holds tensors and plain Python values only, so a crafted file cannot run
code), and the run identity stored in it (seed, optimizer, schedule and the caller's ``run_info``) must equal the
requested one: anything else raises :class:`CheckpointError` naming both values.

Divergence: the per-step losses stay on the device until a log or evaluation point (no per-step host sync); there
a non-finite loss (or a non-finite evaluation metric, or non-finite weights before a checkpoint) stops the run
with :class:`TrainingDiverged`: ``history`` (and ``history.json``) end with a row ``{"stopped": "diverged at
step N"}``, the last checkpoint (written before the divergence) is kept, and no JSON ever holds a bare NaN.

Progress: ``cfg.progress`` shows a bar (:func:`progress_bar`): a widget in JupyterLab, a bar on a terminal,
periodic lines in a log, a text bar redrawn every few seconds under the notebook runner (``DNLIB_PROGRESS``).
A caller that trains in several :meth:`Trainer.fit` calls (the experiment runner) sets :attr:`Trainer.bar` to one
bar of its own instead.
"""
from __future__ import annotations

import math
import os
import pickle
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.loader import TensorBatches  # noqa: F401  the data layer's batch stream, also named here (re-export)
from ..io import atomic_save, atomic_write_json
from ..norms.sparse import clear_penalties, sparse_penalty

OPTIMIZERS = ("sgd", "adam")
# the TrainConfig fields that define a run's trajectory (steps, cadences, device and progress do not: a run may be
# extended, evaluated more often or moved to another device and still be the same run)
IDENTITY_FIELDS = ("seed", "optimizer", "lr", "momentum", "weight_decay", "milestones", "gamma", "clip_norm")
_CHECKPOINT_KEYS = ("step", "model", "optimizer", "history", "elapsed", "config", "batches", "rng", "identity")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: unreadable, not a dnlib checkpoint, or written by another run."""


class TrainingDiverged(RuntimeError):
    """The training loss (or an evaluation metric, or a weight) became NaN or infinite.

    ``step`` is the first optimizer step that saw it, ``status`` the record ``"diverged at step N"``, ``history``
    the trainer's history (ending with that record)."""

    def __init__(self, step: int, what: str, lr: float, history: list | None = None):
        self.step, self.what, self.status = int(step), what, f"diverged at step {int(step)}"
        self.history = history if history is not None else []
        super().__init__(f"training {self.status}: {what} (learning rate {lr:g}); the run is stopped and no result "
                         f"is reported, lower the learning rate (or raise sigma / clip the gradients)")


#: How :func:`progress_bar` shows progress: ``auto`` (default), ``widget``, ``text``, ``lines`` or ``off``.
PROGRESS_ENV = "DNLIB_PROGRESS"
PROGRESS_MODES = ("auto", "widget", "text", "lines", "off")
#: Seconds between two redraws of a ``text`` bar (the notebook runner's) and between two ``lines``.
PROGRESS_INTERVAL = {"text": 10.0, "lines": 30.0}


class _Lines:
    """A file for tqdm that turns each redraw (``"\\r" + bar``) into one line (for logs: no carriage returns)."""

    def __init__(self, file):
        self.file = file

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.file.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.file.flush()


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), whatever the frontend."""
    return "ipykernel.zmqshell" in sys.modules and "IPython" in sys.modules and \
        type(sys.modules["IPython"].get_ipython()).__name__ == "ZMQInteractiveShell"


def progress_mode(mode: str | None = None) -> str:
    """The mode :func:`progress_bar` uses: ``mode``, else ``$DNLIB_PROGRESS``, else ``auto`` resolved: ``widget``
    in a Jupyter kernel (with ipywidgets), ``text`` when stderr is a terminal, ``lines`` otherwise."""
    mode = mode or os.environ.get(PROGRESS_ENV) or "auto"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"{PROGRESS_ENV}: got {mode!r}; allowed values are {list(PROGRESS_MODES)}")
    if mode == "auto":
        if _in_kernel():
            try:
                import ipywidgets  # noqa: F401
                return "widget"
            except ImportError:
                return "text"
        return "text" if getattr(sys.stderr, "isatty", lambda: False)() else "lines"
    return mode


def progress_bar(total: int, *, initial: int = 0, desc: str = "train", enabled: bool = True,
                 mode: str | None = None) -> tqdm:
    """A tqdm bar over ``total`` steps, shown as :func:`progress_mode` says (``enabled=False`` or mode ``off``:
    a disabled bar, same methods).

    * ``widget``: ``tqdm.notebook`` (JupyterLab);
    * ``text``: a text bar on stderr; outside a terminal (papermill, whose executed copy keeps the last redraw once
      the runner merges the carriage returns) it is redrawn every ``PROGRESS_INTERVAL["text"]`` seconds;
    * ``lines``: one line on stderr every ``PROGRESS_INTERVAL["lines"]`` seconds and at the end (logs, ``--progress``
      without a terminal).

    The bar stays when closed (its last state: how far the run got)."""
    mode = progress_mode(mode) if enabled else "off"
    kw = dict(total=total, initial=initial, desc=desc, leave=True, disable=mode == "off")
    if mode == "widget":
        from tqdm.notebook import tqdm as notebook_tqdm
        return notebook_tqdm(**kw)
    if mode == "lines":
        every = PROGRESS_INTERVAL["lines"]
        return tqdm(**kw, file=_Lines(sys.stderr), mininterval=every, maxinterval=every, ascii=True)
    if mode == "text" and not getattr(sys.stderr, "isatty", lambda: False)():
        every = PROGRESS_INTERVAL["text"]
        return tqdm(**kw, file=sys.stderr, mininterval=every, maxinterval=every, ascii=True)  # full width
    try:                                    # a terminal that says it is 0 x 0 (a fresh pty): tqdm would draw nothing
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        size = None
    shape = {} if size and size.columns and size.lines else {"ncols": 100, "nrows": 20}
    return tqdm(**kw, file=sys.stderr, **shape)


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a device; use 'auto', 'cpu' or 'cuda[:N]'") from e


@dataclass
class TrainConfig:
    """Hyperparameters of one run (steps, not epochs, as the paper's CIFAR schedule)."""
    steps: int = 1000                 # optimizer steps in all
    lr: float = 1e-3                  # initial learning rate
    optimizer: str = "sgd"            # "sgd" (with momentum, no dampening, as TF's MomentumOptimizer) or "adam"
    momentum: float = 0.9             # SGD momentum
    weight_decay: float = 0.0         # L2: adds wd * w to the gradient (= TF's wd * sum(w^2) / 2 in the loss)
    milestones: tuple = ()            # steps at which the learning rate is multiplied by gamma
    gamma: float = 0.1                # factor at each milestone
    clip_norm: float | None = None  # clip the global gradient norm (PTB: 5)
    eval_every: int = 500             # evaluate every K steps (and at the end); 0: only at the end
    checkpoint_every: int = 500       # write the checkpoint every K steps (and at the end)
    log_every: int = 50               # average the training loss over this many steps in the history
    seed: int = 0                     # seeds model init (when the trainer builds it) and every RNG
    device: str = "auto"              # "auto", "cpu", "cuda"
    progress: bool = True             # show a progress bar (progress_bar)

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: must be an integer >= 0, got {self.steps!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: got {self.optimizer!r}; allowed values are {list(OPTIMIZERS)}")
        if not (self.lr > 0):
            raise ValueError(f"lr: must be > 0, got {self.lr!r}")
        self.milestones = tuple(int(m) for m in self.milestones)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones: must be increasing, got {self.milestones!r}")


class Trainer:
    """Train ``model`` on ``batches`` with ``loss_fn``; evaluate with ``evaluate(model) -> dict`` every
    ``cfg.eval_every`` steps; keep ``history`` (a list of dicts) and, when ``out_dir`` is given, write
    ``history.json`` and an atomic ``checkpoint.pt`` there, from which :meth:`fit` resumes.

    ``lr_lambda(step) -> factor`` replaces the milestone schedule when given (e.g. PTB's per-epoch halving).
    ``run_info`` (a dict of plain values: the configuration name and fields, the data, ...) is stored in the
    checkpoint with the :data:`IDENTITY_FIELDS` of ``cfg``; resuming a checkpoint whose identity differs raises
    :class:`CheckpointError`. A non-finite loss or metric raises :class:`TrainingDiverged` (see the module).
    ``clip_fn(params, max_norm)`` replaces ``nn.utils.clip_grad_norm_`` when ``cfg.clip_norm`` is set: it scales
    the gradients in place after backward (e.g. :class:`dnlib.experiments.ptb.SliceClip`, TensorFlow's global norm).

    A trainer of K independent copies in one model (:class:`dnlib.experiments.stacked.StackedTrainer`) uses the same loop: its
    ``loss_fn`` returns the ``(K,)`` copies' losses (their sum is minimized), ``evaluate`` a list of K metric dicts;
    losses and metrics are checked and logged per copy (:meth:`live_copies`, :meth:`copy_history`).
    """

    copies = 1          #: the independent copies this trainer trains at once (one here)

    def __init__(self, model: nn.Module, loss_fn: Callable, batches, cfg: TrainConfig,
                 evaluate: Callable[[nn.Module], dict] | None = None, out_dir=None,
                 lr_lambda: Callable[[int], float] | None = None, param_groups=None,
                 run_info: dict | None = None, clip_fn: Callable | None = None):
        self.cfg = cfg
        self.clip_fn = clip_fn or nn.utils.clip_grad_norm_
        self.run_info = dict(run_info or {})
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.loss_fn, self.batches, self.evaluate = loss_fn, batches, evaluate
        self.out_dir = Path(out_dir) if out_dir is not None else None
        params = param_groups if param_groups is not None else self.model.parameters()
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self._lr_lambda = lr_lambda
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.step = 0
        self.history: list = []
        self.elapsed = 0.0
        self._loss_acc: list = []
        self.stopped: str | None = None    # "diverged at step N" once a run diverged
        self.bar = None                       # a progress bar the caller owns (see the module); None: fit's own

    # --- schedule -------------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        if self._lr_lambda is not None:
            return float(self._lr_lambda(step))
        return self.cfg.gamma ** sum(step >= m for m in self.cfg.milestones)

    def _set_lr(self):
        f = self.lr_factor(self.step)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * f

    # --- checkpoint -----------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir is not None else None

    def identity(self) -> dict:
        """What makes a checkpoint this run's: ``{"train": IDENTITY_FIELDS of cfg, "run": run_info}``."""
        train = {k: getattr(self.cfg, k) for k in IDENTITY_FIELDS}
        train["milestones"] = tuple(train["milestones"])
        return {"train": train, "run": dict(self.run_info)}

    def state_dict(self) -> dict:
        """Everything a resume needs, as tensors and plain Python values (``torch.load(weights_only=True)``)."""
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "history": self.history, "elapsed": self.elapsed, "loss_acc": self._loss_acc,
            "config": asdict(self.cfg), "batches": self.batches.state_dict(), "identity": self.identity(),
            "rng": {"python": random.getstate(),
                    "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                              "has_gauss": int(has_gauss), "gauss": float(gauss)},
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        if hasattr(self.loss_fn, "state_dict"):
            state["loss_fn"] = self.loss_fn.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.history, self.elapsed = state["step"], state["history"], state["elapsed"]
        self._loss_acc = [t.to(self.device) if torch.is_tensor(t) else t for t in state.get("loss_acc", [])]
        self.batches.load_state_dict(state["batches"])
        if "loss_fn" in state and hasattr(self.loss_fn, "load_state_dict"):
            self.loss_fn.load_state_dict(state["loss_fn"])
        rng = state["rng"]
        random.setstate(rng["python"])
        npr = rng["numpy"]
        np.random.set_state((npr["name"], npr["keys"].numpy().astype(np.uint32), npr["pos"], npr["has_gauss"],
                             npr["gauss"]))
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        atomic_save(self.state_dict(), self.checkpoint_path)
        atomic_write_json(self.history, self.out_dir / "history.json")

    def try_resume(self, ignore=()) -> bool:
        """Load ``out_dir/checkpoint.pt`` when it exists; True if resumed.

        The file is read with ``weights_only=True``; an unreadable file, one that is not a dnlib checkpoint and
        one whose identity (:meth:`identity`; keys in ``ignore`` are not compared) differs from this run's raise
        :class:`CheckpointError` naming the file (and, for a mismatch, what is stored and what was asked)."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        state = load_checkpoint(path)
        self._check_identity(state["identity"], path, ignore)
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit this run ({type(e).__name__}: "
                                  f"{_first_line(e)}); delete it to start fresh, or use another output folder") from e
        return True

    def _check_identity(self, stored: dict, path: Path, ignore=()) -> None:
        asked, diffs = self.identity(), []
        for section in ("train", "run"):
            a, b = stored.get(section, {}), asked[section]
            for key in sorted(set(a) | set(b), key=lambda k: (k not in b, str(k))):
                if key in ignore:
                    continue
                sa, sb = _plain(a.get(key, "<missing>")), _plain(b.get(key, "<missing>"))
                line = f"{key}: stored {sa!r}, requested {sb!r}"
                if sa != sb and line not in diffs:
                    diffs.append(line)
        if diffs:
            raise CheckpointError(f"checkpoint {path} belongs to another run ({'; '.join(diffs)}); resume it with "
                                  f"the stored settings, or start fresh in another output folder (or delete it)")

    # --- divergence -----------------------------------------------------------------------------------
    def _diverge(self, step: int, what: str, copy: int = 0) -> None:
        """Record ``stopped: diverged at step N`` in (copy ``copy``'s) history (and history.json), then raise
        (a trainer of several copies stops that copy, and raises when none is left: :meth:`_stop_copy`)."""
        status, lr = f"diverged at step {int(step)}", self.opt.param_groups[0]["lr"]
        self._append({"step": self.step, "lr": lr, "time": round(self.elapsed, 3), "stopped": status, "reason": what},
                     copy)
        if not self._stop_copy(copy, status):
            return
        if self.out_dir is not None:
            atomic_write_json(self.history, self.out_dir / "history.json")
        raise TrainingDiverged(step, what, lr, self.history)

    def _pending_losses(self) -> torch.Tensor | None:
        """The losses since the last log point, ``(n, copies)`` on the host (the one sync per log point); diverges
        on a non-finite one, naming the first step that had it."""
        if not self._loss_acc:
            return None
        if torch.is_tensor(self._loss_acc[0]):
            values = torch.stack([t.detach().float().reshape(-1) for t in self._loss_acc]).cpu()
        else:
            values = torch.tensor([[float(v)] for v in self._loss_acc])
        for k in self.live_copies():
            bad = (~torch.isfinite(values[:, k])).nonzero()
            if len(bad):
                i = int(bad[0])
                self._diverge(self.step - len(values) + i + 1, f"the training loss is {float(values[i, k])}", k)
        return values

    def _check_metrics(self, metrics) -> None:
        metrics = self._per_copy(metrics)
        for k in self.live_copies():
            bad = {name: v for name, v in metrics[k].items() if not math.isfinite(v)}
            if bad:
                self._diverge(self.step, "evaluation " + ", ".join(f"{n} = {v}" for n, v in bad.items()), k)

    def _check_weights(self) -> None:
        for k in self.live_copies():
            floats = [t for t in self.copy_state_dict(k).values() if t.is_floating_point() and t.numel()]
            if floats and not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
                self._diverge(self.step, "a weight or buffer of the model is not finite", k)

    # --- copies (one here; dnlib.experiments.stacked.StackedTrainer holds K) --------------------------------------
    def live_copies(self) -> list:
        """The copies still training (those that have not diverged)."""
        return [] if self.stopped else [0]

    def copy_history(self, k: int = 0) -> list:
        """Copy ``k``'s history (here: :attr:`history`)."""
        return self.history

    def copy_state_dict(self, k: int = 0) -> dict:
        """Copy ``k``'s parameters and buffers (here: the model's state dict)."""
        return self.model.state_dict()

    def _append(self, row: dict, copy: int) -> None:
        self.history.append(row)

    def _stop_copy(self, copy: int, status: str) -> bool:
        """Copy ``copy`` stopped with ``status``; True when the trainer stops (here: always)."""
        self.stopped = status
        return True

    def _per_copy(self, metrics) -> list:
        """Metrics as a list of one dict per copy (a dict is every copy's)."""
        return [metrics] * self.copies if isinstance(metrics, dict) else list(metrics)

    # --- loop -----------------------------------------------------------------------------------------
    def train_step(self, batch) -> float:
        """One optimizer step on ``batch``; returns the task loss (without the L1 terms)."""
        self.model.train()
        self._set_lr()
        out = self.loss_fn(self.model, batch)
        loss, _ = out if isinstance(out, tuple) else (out, None)
        total = (loss.sum() if loss.dim() else loss) + sparse_penalty(self.model)    # (K,): the copies' losses
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.clip_norm:
            self.clip_fn(list(self.model.parameters()), self.cfg.clip_norm)
        self.opt.step()
        return loss.detach()

    def _evaluate(self) -> dict:
        if self.evaluate is None:
            return {}
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(self.model)
        clear_penalties(self.model)
        self.model.train(was)
        if isinstance(metrics, dict):
            return {k: float(v) for k, v in metrics.items()}
        return [{k: float(v) for k, v in m.items()} for m in metrics]      # one dict per copy

    def _log(self, extra, losses: torch.Tensor | None = None) -> None:
        if losses is None:
            losses = self._pending_losses()
        if losses is not None:
            self._loss_acc = []
        extra = self._per_copy(extra)
        for k in self.live_copies():
            row = {"step": self.step, "lr": self.opt.param_groups[0]["lr"], "time": round(self.elapsed, 3)}
            if losses is not None:
                row["train_loss"] = float(losses[:, k].mean())
            row.update(extra[k])
            self._append(row, k)

    def log_evaluation(self) -> dict:
        """Evaluate now and append the row to the history (e.g. before a timed stretch); returns the metrics."""
        losses = self._pending_losses()
        metrics = self._evaluate()
        self._check_metrics(metrics)
        self._log(metrics, losses)
        return metrics

    def run_until(self, step: int) -> list:
        """Train on to optimizer step ``step`` (sets ``cfg.steps``): the building block of time-capped runs,
        which advance one evaluation interval or one epoch at a time and stop when the next would not fit."""
        self.cfg.steps = int(step)
        return self.fit(resume=False)

    def fit(self, resume: bool = True) -> list:
        """Train to ``cfg.steps`` (resuming from the checkpoint when ``resume``); returns the history."""
        cfg = self.cfg
        if resume:
            self.try_resume()
        own = self.bar is None
        bar = progress_bar(cfg.steps, initial=self.step, enabled=cfg.progress) if own else self.bar
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step(next(self.batches))
            self.step += 1
            self._loss_acc.append(loss)
            if self.device.type == "cuda" and (self.step % cfg.log_every == 0):
                torch.cuda.synchronize()
            self.elapsed += time.perf_counter() - t0
            bar.update(1)
            last = self.step == cfg.steps
            do_eval = last or (cfg.eval_every and self.step % cfg.eval_every == 0)
            if do_eval or self.step % cfg.log_every == 0:
                losses = self._pending_losses()            # checked before evaluating a diverged model
                metrics = self._evaluate() if do_eval else {}
                self._check_metrics(metrics)
                self._log(metrics, losses)
                bar.set_postfix({k: f"{v:.4g}" for k, v in self.history[-1].items() if k not in ("step", "time")},
                                refresh=False)                 # drawn at the next redraw (mininterval)
            save = self.out_dir is not None and (last or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
            if save or last:
                self._pending_losses()                     # a checkpoint or a final model never holds NaN weights
                self._check_weights()
            if save:
                self.save_checkpoint()
        if own:
            bar.close()
        return self.history


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def _plain(v):
    """Tuples and lists compare (and print) alike: a stored ``(6,)`` equals a requested ``[6]``."""
    if isinstance(v, (list, tuple)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def load_checkpoint(path) -> dict:
    """Read a :class:`Trainer` checkpoint safely (``torch.load(weights_only=True)``, on the CPU).

    Raises :class:`CheckpointError` naming ``path`` when the file is empty, truncated or garbage, holds objects
    other than tensors and plain values (a crafted pickle is refused before any of it runs), or lacks a
    checkpoint's keys."""
    path = Path(path)
    what_to_do = "delete it to start fresh, or use another output folder"
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; an interrupted copy?); {what_to_do}")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle that torch.save did not write (a crafted one)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"checkpoint {path} refused: it holds objects that are not tensors or plain Python values, so it "
                f"was not written by this dnlib (a crafted file, or one from before checkpoints were weights-only) "
                f"and was not loaded; {what_to_do}") from e
        raise CheckpointError(f"checkpoint {path} cannot be read (UnpicklingError: {_first_line(e)}): it is "
                              f"truncated or not a checkpoint; {what_to_do}") from e
    except Exception as e:   # noqa: BLE001  torch raises RuntimeError, EOFError, ValueError, ... on a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {_first_line(e)}): it is "
                              f"truncated or not a checkpoint; {what_to_do}") from e
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a dnlib checkpoint (no {', '.join(missing)}); {what_to_do}")
    return state


class GraphTrainer(Trainer):
    """A :class:`Trainer` whose whole training step is one CUDA graph (``torch.cuda.graph``).

    At batch sizes where a model is bound by kernel launches (the paper's CIFAR CNN at batch 100), replaying
    forward, loss (with the sparse L1 terms), backward and the SGD update as one captured graph is several times
    faster than eager execution. The step reads its batch from *static* tensors that each step fills with
    ``copy_``, so batches must keep their shapes (``drop_last``). The SGD update (momentum, no dampening, decoupled
    weight decay per parameter group exactly as ``torch.optim.SGD``) is written with ``torch._foreach`` ops and
    reads the learning rate from a device tensor per group, filled when the schedule changes it; its momentum
    buffers are the optimizer's own ``state[p]["momentum_buffer"]``, so checkpoints are interchangeable with
    :class:`Trainer`'s.

    Capture happens at the first step (after a resume): a few warm-up steps on a side stream (as the CUDA graph
    docs require), then the capture, then model, buffers and momentum are restored *in place* to their values
    before the warm-up, so the warm-up leaves no trace in the run.

    ``capture=False`` runs exactly the same step (static batch, hand-written SGD) eagerly, without a graph: that
    is what runs on CPU, and how the step is checked against :class:`Trainer` without a GPU. ``capture=None``
    (default) captures on CUDA only. Only ``optimizer="sgd"`` without ``clip_norm`` is supported.
    """

    def __init__(self, *args, capture: bool | None = None, warmup: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.optimizer != "sgd" or self.cfg.clip_norm:
            raise ValueError("GraphTrainer: supports optimizer='sgd' without clip_norm; use Trainer otherwise")
        if any(g.get("nesterov") or g.get("dampening") for g in self.opt.param_groups):
            raise ValueError("GraphTrainer: nesterov and dampening are not supported")
        if capture is None:
            capture = self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            raise ValueError(f"capture: CUDA graphs need a CUDA device, got {self.device}")
        self.capture, self.warmup = bool(capture), int(warmup)
        self.graph = None
        self._static = None
        self._static_loss = None
        self._lr_tensors = None
        self._lr_values = None

    # --- the step, as captured ---------------------------------------------------------------------------
    def _momentum_buffers(self, group) -> list:
        bufs = []
        for p in group["params"]:
            state = self.opt.state[p]
            if state.get("momentum_buffer") is None:
                # torch's first SGD step sets buf = grad; buf = momentum * 0 + grad is the same.
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs

    def _sgd_update(self) -> None:
        with torch.no_grad():
            for group, lr in zip(self.opt.param_groups, self._lr_tensors):
                pairs = [(p, b) for p, b in zip(group["params"], self._momentum_buffers(group)) if p.grad is not None]
                if not pairs:
                    continue
                params, bufs = [p for p, _ in pairs], [b for _, b in pairs]
                grads = [p.grad for p in params]
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                if group["momentum"]:
                    torch._foreach_mul_(bufs, group["momentum"])
                    torch._foreach_add_(bufs, grads)
                    grads = bufs
                torch._foreach_sub_(params, torch._foreach_mul(grads, lr))

    def _body(self) -> torch.Tensor:
        out = self.loss_fn(self.model, self._static)
        loss = out[0] if isinstance(out, tuple) else out
        ((loss.sum() if loss.dim() else loss) + sparse_penalty(self.model)).backward()
        self._sgd_update()
        return loss.detach()

    def _sync_lr(self) -> None:
        values = [g["lr"] for g in self.opt.param_groups]
        if self._lr_tensors is None:
            ref = next(self.model.parameters())
            self._lr_tensors = [torch.tensor(v, dtype=ref.dtype, device=ref.device) for v in values]
        elif values != self._lr_values:
            for t, v in zip(self._lr_tensors, values):
                t.fill_(v)
        self._lr_values = values

    def _snapshot(self) -> list:
        tensors = list(self.model.state_dict(keep_vars=False).values())
        for group in self.opt.param_groups:
            tensors += self._momentum_buffers(group)
        return [(t, t.detach().clone()) for t in tensors]

    def _capture_graph(self) -> None:
        saved = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(self.warmup, 1)):
                self.opt.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_loss = self._body()
        with torch.no_grad():
            for t, v in saved:
                t.copy_(v)
        clear_penalties(self.model)
        self.graph = graph

    def train_step(self, batch) -> torch.Tensor:
        """One step: fill the static batch, then replay the graph (or run the same step eagerly)."""
        self.model.train()
        self._set_lr()
        self._sync_lr()
        if self._static is None:
            self._static = tuple(t.detach().clone() for t in batch)
        else:
            for s, t in zip(self._static, batch):
                s.copy_(t)
        if self.capture:
            if self.graph is None:
                self._capture_graph()
            self.graph.replay()
            return self._static_loss.clone()
        self.opt.zero_grad(set_to_none=True)
        return self._body()


class SequenceGraphTrainer(Trainer):
    """A :class:`Trainer` for truncated BPTT whose whole training step is one CUDA graph: forward over the
    unrolled steps from a carried recurrent state, loss + the sparse L1 terms, backward, global-norm clipping,
    plain SGD ``p -= lr * g`` (the learning rate read from a device tensor, so the schedule needs no re-capture),
    and the copy of the final state into the carried one.

    Its contract differs from :class:`GraphTrainer` (whose batch is the whole step input): a batch is ``(x, y,
    reset)`` (``reset``: zero the carried state first, e.g. at the start of an epoch), and what the step needs is
    passed explicitly:

    * ``step_fn(model, x, y, state) -> (loss, new_state)``: the task loss (no L1 terms) of one window from
      ``state``; a pure function (it keeps nothing between calls). It is the trainer's ``loss_fn``.
    * ``init_state(batch_size, device) -> state``: the zero state, a list of tuples of tensors (one tuple per
      layer), as ``dnlib.models.rnn.LanguageModel.init_state``.

    The carried state belongs to the trainer (:attr:`state`) and is checkpointed as ``{"loss_fn": {"state":
    [...]}}``, the layout of a stateful loss's ``state_dict`` (``dnlib.experiments.ptb.LMLoss``), so checkpoints are
    interchangeable with those of the eager :class:`Trainer` on the same loss; the optimizer (momentum 0, no
    weight decay) is never stepped, its update being the same. Capture happens at the first step, after
    ``warmup`` steps on a side stream whose effects are undone. ``capture=False`` (what runs on CPU, the default
    there) runs the same step body eagerly: that is how it is tested without a GPU; a capture that fails falls
    back to it with one warning (:attr:`fell_back`).
    """

    def __init__(self, model: nn.Module, step_fn: Callable, batches, cfg: TrainConfig, *,
                 init_state: Callable, capture: bool | None = None, warmup: int = 3, **kwargs):
        super().__init__(model, step_fn, batches, cfg, **kwargs)
        if self.cfg.optimizer != "sgd" or self.cfg.momentum or self.cfg.weight_decay:
            raise ValueError("SequenceGraphTrainer: only plain SGD (momentum 0, weight decay 0) is captured; "
                             f"got optimizer={self.cfg.optimizer!r}, momentum={self.cfg.momentum}, "
                             f"weight_decay={self.cfg.weight_decay}")
        if capture is None:
            capture = self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            raise ValueError(f"capture: CUDA graphs need a CUDA device, got {self.device}")
        self.init_state, self.capture, self.warmup = init_state, bool(capture), int(warmup)
        self.graph = None
        self.fell_back = False          # True when the capture failed and the step runs eagerly
        self.state = None               # the carried state (static tensors once the step is set up)
        self._stored = None             # a resumed checkpoint's state, copied in at the next step

    # --- the carried state in checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        carried = self._stored if self._stored is not None else self.state
        state["loss_fn"] = {"state": None if carried is None else
                            [tuple(s.detach().cpu().clone() for s in layer) for layer in carried]}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._stored = (state.get("loss_fn") or {}).get("state")

    # --- the step -------------------------------------------------------------------------------------------
    def _flat(self, state) -> list:
        return [s for layer in state for s in layer]

    def _body(self) -> torch.Tensor:
        loss, new_state = self.loss_fn(self.model, self._x, self._y, self.state)
        (loss + sparse_penalty(self.model)).backward()
        if self.cfg.clip_norm:
            if self.clip_fn is nn.utils.clip_grad_norm_:
                nn.utils.clip_grad_norm_(self._params, self.cfg.clip_norm, foreach=True)
            else:
                self.clip_fn(self._params, self.cfg.clip_norm)
        with torch.no_grad():
            grads = [p.grad for p in self._params]
            torch._foreach_add_(self._params, torch._foreach_mul(grads, self._neg_lr))
            for dst, src in zip(self._flat(self.state), self._flat(new_state)):
                dst.copy_(src)
        return loss.detach()

    def _setup(self, x, y) -> None:
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._x, self._y = x.detach().clone(), y.detach().clone()
        self.state = [tuple(s.clone() for s in layer) for layer in self.init_state(x.shape[0], x.device)]
        self._neg_lr = torch.zeros((), device=x.device)

    def _capture(self) -> None:
        saved = [(t, t.detach().clone()) for t in self.model.state_dict().values()]
        carried = [s.clone() for s in self._flat(self.state)]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(self.warmup, 1)):
                    for p in self._params:
                        p.grad = None
                    self._body()
            torch.cuda.current_stream().wait_stream(side)
            for p in self._params:
                p.grad = None
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._loss = self._body()
            self.graph = graph
        finally:
            torch.cuda.synchronize()
            with torch.no_grad():           # undo the warm-up (the capture itself computes nothing)
                for t, v in saved:
                    t.copy_(v)
                for dst, src in zip(self._flat(self.state), carried):
                    dst.copy_(src)
            clear_penalties(self.model)

    def train_step(self, batch) -> torch.Tensor:
        """One step on ``(x, y, reset)``: fill the static inputs, then replay the graph (or run the body)."""
        x, y, reset = batch
        self.model.train()
        self._set_lr()
        if self.state is None:
            self._setup(x, y)
        else:
            self._x.copy_(x)
            self._y.copy_(y)
        self._neg_lr.fill_(-self.opt.param_groups[0]["lr"])
        with torch.no_grad():
            if reset:
                fresh = self.init_state(x.shape[0], x.device)
                for dst, src in zip(self._flat(self.state), self._flat(fresh)):
                    dst.copy_(src)
            elif self._stored is not None:
                for dst, src in zip(self._flat(self.state), self._flat(self._stored)):
                    dst.copy_(src)
        self._stored = None
        if self.capture and self.graph is None and not self.fell_back:
            try:
                self._capture()
            except Exception as e:   # noqa: BLE001  an op that cannot be captured: keep training, eagerly
                warnings.warn(f"SequenceGraphTrainer: capture failed ({type(e).__name__}: {e}); training eagerly")
                self.fell_back, self.graph = True, None
        if self.graph is not None:
            self.graph.replay()
            return self._loss.clone()
        for p in self._params:
            p.grad = None
        return self._body()
