"""A generic trainer that knows no model (minGPT-style): SGD/Adam, step schedules, periodic evaluation,
a JSON history, atomic checkpoints and exact resume.

The trainer needs three things:

* ``model``: any ``nn.Module``;
* ``loss_fn(model, batch) -> loss`` (a scalar tensor; or ``(loss, {name: float})`` to log more). The sparse
  L1 terms that the model's normalizers recorded in that call's forward (:func:`dnlib.sparse_penalty`) are added to
  it here, so a loss function never has to remember them. Each step first drops the terms pending from before it
  (:func:`dnlib.clear_penalties`), e.g. those of a forward that raised midway: its sites that had run keep their
  terms while its traceback lives (IPython keeps the last one), and they would count in the next step. A stateful
  loss function (e.g. one carrying an RNN's hidden state across minibatches) may define ``state_dict()``/
  ``load_state_dict()``: they are checkpointed too;
* ``batches``: a *batch source*: ``next(batches)`` gives the next batch forever, and ``state_dict()`` /
  ``load_state_dict()`` save and restore its position (see :class:`dnlib.data.loader.TensorBatches`, the data
  layer's, also importable from here).

Resuming from the checkpoint restores the model, optimizer, schedule, batch position, loss-function state
and every RNG, so on CPU a resumed run equals the uninterrupted one exactly. The checkpoint is read with
``torch.load(weights_only=True)`` (it holds tensors and plain Python values only, so a crafted file cannot run
code; :mod:`dnlib.training.checkpoints` reads it), and the run identity stored in it (seed, optimizer, schedule and
the caller's ``run_info``) must equal the requested one: anything else raises :class:`CheckpointError` naming both
values.

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
import numbers
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import cli
from ..io import atomic_save, atomic_write_json
from ..norms.sparse import clear_penalties, sparse_penalty
from .checkpoints import CheckpointError, first_line, load_checkpoint
from .progress import progress_bar

OPTIMIZERS = ("sgd", "adam")
# the TrainConfig fields that define a run's trajectory (steps, cadences, device and progress do not: a run may be
# extended, evaluated more often or moved to another device and still be the same run)
IDENTITY_FIELDS = ("seed", "optimizer", "lr", "momentum", "weight_decay", "milestones", "gamma", "clip_norm")


class TrainingDiverged(RuntimeError):
    """The training loss (or an evaluation metric, or a weight) became NaN or infinite.

    ``step`` is the first optimizer step that saw it, ``status`` the record ``"diverged at step N"``, ``history``
    the trainer's history (ending with that record)."""

    def __init__(self, step: int, what: str, lr: float, history: list | None = None):
        self.step, self.what, self.status = int(step), what, f"diverged at step {int(step)}"
        self.history = history if history is not None else []
        super().__init__(f"training {self.status}: {what} (learning rate {lr:g}); the run is stopped and no result "
                         f"is reported, lower the learning rate (or raise sigma / clip the gradients)")


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
    momentum: float = 0.9             # SGD momentum, in [0, 1)
    weight_decay: float = 0.0         # L2: adds wd * w to the gradient (= TF's wd * sum(w^2) / 2 in the loss)
    milestones: tuple = ()            # steps (>= 1, in order) at which the learning rate is multiplied by gamma
    gamma: float = 0.1                # factor at each milestone (> 0)
    clip_norm: float | None = None    # clip the global gradient norm to this (> 0; PTB: 5); None: no clipping
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
        # values that would reverse the update (a negative clip_norm scales the gradient by a negative factor,
        # gamma <= 0 turns the learning rate <= 0 at a milestone) or stop it are refused here, where it is built
        cli.check_number("lr", self.lr, lambda v: v > 0, "a number > 0")
        cli.check_number("momentum", self.momentum, lambda v: 0 <= v < 1, "a number in [0, 1)")
        cli.check_number("weight_decay", self.weight_decay, lambda v: v >= 0, "a number >= 0")
        cli.check_number("gamma", self.gamma, lambda v: v > 0,
                         "a number > 0 (the learning rate's factor at each milestone)")
        cli.check_number("clip_norm", self.clip_norm, lambda v: v > 0, "None (no clipping) or a number > 0",
                         none_ok=True)
        for name, low in (("eval_every", 0), ("checkpoint_every", 0), ("log_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        ms = tuple(self.milestones)
        whole = all(not isinstance(m, bool) and isinstance(m, numbers.Real) and math.isfinite(m) and m == int(m)
                    and m >= 1 for m in ms)
        if not whole or list(ms) != sorted(ms):
            raise ValueError(f"milestones: must be integers >= 1 in order (a repeat applies gamma twice), got {ms!r}")
        self.milestones = tuple(int(m) for m in ms)


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

    A trainer of K independent copies in one model (:class:`dnlib.training.stacked.StackedTrainer`) uses the same loop:
    its ``loss_fn`` returns the ``(K,)`` copies' losses (their sum is minimized), ``evaluate`` a list of K metric dicts;
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
        self.saved_step: int | None = None    # the step of the checkpoint last written or loaded (None: none yet)
        self.bar = None                       # a progress bar the caller owns (see the module); None: fit's own

    # --- schedule -------------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        if self._lr_lambda is not None:
            return float(self._lr_lambda(step))
        return self.cfg.gamma ** sum(step >= m for m in self.cfg.milestones)

    def lr_at(self, step: int, copy: int = 0) -> float:
        """The learning rate that optimizer step ``step`` (1-based, as ``"diverged at step N"``) used (of the first
        parameter group; copy ``copy``'s in a trainer of several copies with rates of their own)."""
        return self.base_lrs[0] * self.lr_factor(max(int(step) - 1, 0))

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
        atomic_save(self.checkpoint_path, self.state_dict())
        atomic_write_json(self.out_dir / "history.json", self.history)
        self.saved_step = self.step

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
                                  f"{first_line(e)}); delete it to start fresh, or use another output folder") from e
        self.saved_step = self.step
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
        (a trainer of several copies stops that copy, and raises when none is left: :meth:`_stop_copy`), naming the
        learning rate step N used (:meth:`lr_at`: the optimizer's may have passed a milestone since)."""
        status = f"diverged at step {int(step)}"
        self._append({"step": self.step, "lr": self.lr_at(self.step, copy), "time": round(self.elapsed, 3),
                      "stopped": status, "reason": what}, copy)
        if not self._stop_copy(copy, status):
            return
        if self.out_dir is not None:
            atomic_write_json(self.out_dir / "history.json", self.history)
        raise TrainingDiverged(step, what, self.lr_at(step, copy), self.history)

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

    # --- copies (one here; dnlib.training.stacked.StackedTrainer holds K) --------------------------------------
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
        clear_penalties(self.model)     # the step's penalty is its own forward's alone (see the module)
        out = self.loss_fn(self.model, batch)
        loss, _ = out if isinstance(out, tuple) else (out, None)
        total = (loss.sum() if loss.dim() else loss) + sparse_penalty(self.model)    # (K,): the copies' losses
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.clip_norm is not None:
            self.clip_fn(list(self.model.parameters()), self.cfg.clip_norm)
        self.opt.step()
        return loss.detach()

    def eval_metrics(self) -> dict | list:
        """The model's metrics now, without training or logging: ``evaluate(model)`` in eval mode without gradients
        (the model's L1 terms cleared, its train/eval mode restored), each value a float; a dict, or one dict per
        copy for a stacked trainer; ``{}`` without ``evaluate``. :meth:`log_evaluation` also appends them to the
        history; ``fit`` calls this every ``eval_every`` steps."""
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
        metrics = self.eval_metrics()
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
                metrics = self.eval_metrics() if do_eval else {}
                self._check_metrics(metrics)
                self._log(metrics, losses)
                bar.set_postfix({k: f"{v:.4g}" for k, v in self.history[-1].items() if k not in ("step", "time")},
                                refresh=False)                 # drawn at the next redraw (mininterval)
            checkpoint = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            save = self.out_dir is not None and (last or checkpoint)
            if save or last:
                self._pending_losses()                     # a checkpoint or a final model never holds NaN weights
                self._check_weights()
            if save:
                self.save_checkpoint()
        if own:
            bar.close()
        return self.history


def _plain(v):
    """Tuples and lists compare (and print) alike: a stored ``(6,)`` equals a requested ``[6]``."""
    if isinstance(v, (list, tuple)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
