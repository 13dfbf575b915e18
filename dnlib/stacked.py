"""Several seeds of one CIFAR configuration trained as ONE stacked model: K copies of the paper's CNN per step.

At batch 100 the CIFAR CNN is bound by kernel launches, not by the GPU's arithmetic (PAPER.md §3.1; the H100
figures in ``results/h100``): a step of K copies packed into the same kernels costs about as many launches
as a step of one. This module packs K runs of one configuration, each with its own seed, into one model::

    from dnlib import stacked
    from dnlib.cifar import RECIPE
    results = stacked.run(RECIPE, "dn-star", seeds=[0, 1, 2, 3], steps=300, out="runs/cifar/stack",
                          options={"subset": (2000, 1000)})      # four ordinary run folders, one per seed
    [r.record["headline"]["final_acc"] for r in results]

    python -m dnlib.cifar stack dn-star --seeds 0 1 2 3 --steps 300 --subset 2000,1000 --out runs/cifar/stack

(the ``stack`` verb is :func:`commands`; a recipe offers it by adding ``**stacked.commands(self)`` to its
``commands()``.)

**What each copy is.** Copy k *is* the separate run with seed ``seeds[k]``, computed in other kernels:

* its model is built by the recipe exactly as that run builds it (seeded, then ``recipe.build``), and the K
  models' parameters and buffers are packed into :class:`StackedCifarCNN`: convolutions become grouped
  convolutions (``groups=K``: channel block k is copy k), the FC layers batched matrix products
  (:class:`StackedLinear`, weights ``(K, out, in)``);
* its data order is its own batch source (the run's :class:`~dnlib.train.TensorBatches` with its seed), and
  its data too (a stratified subset is drawn from the seed, as in the separate run); a step's input is
  ``(N, K*3, 32, 32)``, channel block k holding copy k's batch (:class:`StackedData`);
* its normalizers see only its own channels: a field that pools ``channel`` (LN, DN) gets ``groups=K`` (the
  general path's grouped view; LN becomes ``F.group_norm`` with K groups), or, for ``impl="triton"`` (whose
  kernels take no groups), the K copies are folded into the batch (:class:`FoldedNorm`); fields that pool the
  batch per channel (BN) are per channel already; the L1 term of a site is ``alpha * K * mean|v|`` over the K
  copies' equally sized blocks, i.e. the sum of the K copies' own terms;
* the loss is the SUM of the K per-copy mean losses, so each copy's gradient is its separate run's; SGD with
  momentum and weight decay is elementwise, so the packed optimizer state keeps the copies independent (the
  weight-decay/no-decay parameter groups are the recipe's, mapped by name);
* it is evaluated on its own (per-copy accuracy and loss) and recorded as an ordinary run record
  (:mod:`dnlib.records`, the experiment's keys and headline) in its own run folder ``<out>/<config>-s<seed>-<UTC>``,
  with ``config.setup.stacked = K`` and the group's seeds noted.

On the CPU in float64, K stacked steps equal K separate runs to rounding (``tests/test_stacked.py``). Not
covered: dropout (the ``base-wd-drop`` row) draws one mask over the stacked tensor, so its masks are not those of
the separate runs (the same distribution, other draws); a learned sigma (a scalar per site) cannot be packed and
is refused. A stacked group writes no checkpoint and cannot be resumed: rerun it (new folders).

**Speed.** ``mode="auto"`` trains with :class:`~dnlib.train.GraphTrainer` on CUDA (the whole stacked step one CUDA
graph) and with :class:`~dnlib.train.Trainer` on the CPU, as the recipe. ``images_per_s`` in a copy's headline is
that copy's own progress (the group's aggregate divided by K).

This module sits between the runner (:mod:`dnlib.experiment`) and the recipes: it takes a recipe whose
``build`` returns a :class:`~dnlib.models.CifarCNN` and CIFAR data (``dnlib.cifar.RECIPE``) and imports none.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import cli, experiment, records
from .experiment import COMPLETED, RUNNING, RunResult
from .models.cnn import CifarCNN
from .norm import DivisiveNorm
from .sparse import clear_penalties
from .train import GraphTrainer, Trainer, set_seed

__all__ = ["StackedCifarCNN", "StackedLinear", "stack_norm", "FoldedNorm", "StackedData", "StackedBatches", "StackedLoss",
           "evaluate", "StackedRun", "prepare", "run", "commands", "MODES"]

MODES = ("auto", "graph", "eager")


# ------------------------------------------------------------------------------------------------ model
class StackedLinear(nn.Module):
    """K independent ``nn.Linear(in_features, out_features)`` layers: ``weight (K, out, in)``, ``bias (K, out)``;
    input ``(K, N, in)`` -> ``(K, N, out)`` (one batched matrix product)."""

    def __init__(self, copies: int, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.copies, self.in_features, self.out_features = copies, in_features, out_features
        self.weight = nn.Parameter(torch.zeros(copies, out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(copies, out_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"copies={self.copies}, in_features={self.in_features}, out_features={self.out_features}"


def _same(values, what: str) -> None:
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"models: the copies differ in {what} ({values[0]!r} vs another); stacked copies must be "
                         f"the same configuration")


class FoldedNorm(nn.Module):
    """A per-example normalizer ``norm`` of C channels applied to each copy's channel block of a ``(N, K*C, ...)``
    input by folding the K copies into the batch: ``(N, K*C, H, W)`` -> ``(N*K, C, H, W)`` -> back (a copy of a
    channels-last input). For implementations that take no channel groups (``impl="triton"``)."""

    def __init__(self, norm: DivisiveNorm, copies: int):
        super().__init__()
        self.norm, self.copies = norm, copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.reshape(x.shape[0] * self.copies, x.shape[1] // self.copies, *x.shape[2:]))
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"copies={self.copies}"


def stack_norm(norms: Sequence[nn.Module], fold: Optional[bool] = None) -> nn.Module:
    """One module over ``K * C`` channels computing the K normalizers ``norms`` (equal :class:`DivisiveNorm` s of C
    channels) on their own channel blocks: a :class:`DivisiveNorm` whose fields that pool ``channel`` get
    ``groups`` times K and whose ``alpha`` is times K (the L1 term is the mean over the K equally sized blocks:
    times K it is the sum of the K copies' terms). Parameters and buffers are not copied (see
    :meth:`StackedCifarCNN.load_copies`).

    ``fold``: instead, a :class:`FoldedNorm` (the copies folded into the batch; per-example fields without
    parameters or running statistics only, e.g. DN*); ``None``: fold when the impl takes no groups (``"triton"``).
    """
    k, m0 = len(norms), norms[0]
    if not all(isinstance(m, DivisiveNorm) for m in norms):
        raise ValueError(f"norms: stacking needs DivisiveNorm layers, got {type(m0).__name__}")
    _same([(m.spec, m.num_features, m.alpha, m.affine, m.bias is None, m.momentum, m.track_running_stats, m.impl)
           for m in norms], "their normalizers")
    spec = m0.spec
    if spec.learn_sigma:
        raise ValueError(f"norms: a learned sigma (one scalar per site) cannot be stacked, got {spec}")
    ref = next(iter(m0.parameters()), None)
    ref = ref if ref is not None else next((b for b in m0.buffers() if b.is_floating_point()), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    if fold is None:
        fold = m0.impl == "triton"
    if fold:
        if m0.affine or m0.track_running_stats or spec.pools_batch:
            raise ValueError(f"fold: folding the copies into the batch needs a per-example normalizer without "
                             f"parameters or running statistics, got {m0}")
        return FoldedNorm(DivisiveNorm(m0.num_features, spec, affine=False, track_running_stats=False,
                                       alpha=m0.alpha * k, impl=m0.impl, **factory), k)
    if "channel" in spec.sum_axes | spec.sup_axes:
        spec = spec.replace(groups=spec.groups * k)
    return DivisiveNorm(k * m0.num_features, spec, affine=m0.affine, bias=not m0.affine or m0.bias is not None,
                        momentum=m0.momentum, track_running_stats=m0.track_running_stats, alpha=m0.alpha * k,
                        impl=m0.impl, **factory)


class StackedCifarCNN(nn.Module):
    """K copies of :class:`~dnlib.models.CifarCNN` (one configuration, any weights) as one module.

    Input ``(N, K*3, 32, 32)`` (channel block k: copy k's images), output ``(K, N, num_classes)``. Parameter and
    buffer names are those of the copies (``convs.0.weight``, ``norms.1.running_mean``, ``fc1.weight``...); each
    packs the K copies' tensors: along dim 0 for conv and normalizer tensors (grouped convolutions, ``groups=K``),
    stacked on a new dim 0 for the FC layers. :meth:`copy_state_dict` unpacks copy k (a ``CifarCNN`` state dict).
    ``fold``: how the normalizers keep the copies apart (:func:`stack_norm`).
    """

    def __init__(self, models: Sequence[CifarCNN], fold: Optional[bool] = None):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("models: need at least one CifarCNN")
        bad = [type(m).__name__ for m in models if not isinstance(m, CifarCNN)]
        if bad:
            raise ValueError(f"models: stacking needs CifarCNN models, got {bad[0]}")
        m0 = models[0]
        _same([m.extra_repr() for m in models], "num_classes, norm or dropout")
        _same([[tuple(c.weight.shape) for c in m.convs] for m in models], "conv widths")
        _same([[(p.kind, p.kernel, p.stride) for p in m.pools] for m in models], "pooling")
        k = self.copies = len(models)
        ref = m0.fc1.weight
        factory = {"device": ref.device, "dtype": ref.dtype}
        self.convs = nn.ModuleList(
            nn.Conv2d(k * c.in_channels, k * c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                      groups=k, bias=c.bias is not None, **factory) for c in m0.convs)
        self.norms = nn.ModuleList(stack_norm([m.norms[i] for m in models], fold) for i in range(len(m0.norms)))
        self.pools = copy.deepcopy(m0.pools)
        self.fc1 = StackedLinear(k, m0.fc1.in_features, m0.fc1.out_features, **factory)
        self.fc2 = StackedLinear(k, m0.fc2.in_features, m0.fc2.out_features, **factory)
        self.dropout, self.num_classes, self.norm_name = m0.dropout, m0.num_classes, m0.norm_name
        self._copy_shapes = {name: tuple(t.shape) for name, t in m0.state_dict().items()}
        if set(self._copy_shapes) != set(self.state_dict()):
            raise ValueError(f"models: the CifarCNN's tensors {sorted(set(self._copy_shapes) ^ set(self.state_dict()))} "
                             f"have no place in the stacked model")
        self.load_copies(models)

    def _pack_rule(self, name: str, stacked_shape: tuple) -> str:
        shape = self._copy_shapes[name]
        if stacked_shape == (self.copies,) + shape:
            return "stack"
        if shape and stacked_shape == (self.copies * shape[0],) + shape[1:]:
            return "cat"
        return "shared"   # a scalar every copy has alike (num_batches_tracked)

    @torch.no_grad()
    def load_copies(self, models: Sequence[nn.Module]) -> None:
        """Pack the parameters and buffers of K ``CifarCNN`` models (copy k = ``models[k]``) into this module."""
        if len(models) != self.copies:
            raise ValueError(f"models: need {self.copies} models, got {len(models)}")
        states = [m.state_dict() for m in models]
        for name, t in self.state_dict().items():
            parts = [s[name] for s in states]
            rule = self._pack_rule(name, tuple(t.shape))
            if rule == "shared":
                if any(not torch.equal(p, parts[0]) for p in parts[1:]):
                    raise ValueError(f"models: {name} differs between the copies; it cannot be shared")
                t.copy_(parts[0])
            else:
                t.copy_(torch.stack(parts) if rule == "stack" else torch.cat(parts))

    def copy_state_dict(self, k: int) -> dict:
        """Copy ``k``'s tensors as a ``CifarCNN`` state dict (views of this module's tensors, detached)."""
        if not 0 <= k < self.copies:
            raise ValueError(f"k: must be in [0, {self.copies}), got {k!r}")
        out = {}
        for name, t in self.state_dict().items():
            rule, shape = self._pack_rule(name, tuple(t.shape)), self._copy_shapes[name]
            out[name] = t[k] if rule == "stack" else t[k * shape[0]:(k + 1) * shape[0]] if rule == "cat" else t
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, pool in zip(self.convs, self.norms, self.pools):
            x = pool(F.relu(norm(conv(x))))
        n = x.shape[0]
        x = x.reshape(n, self.copies, -1).transpose(0, 1)        # (K, N, C*H*W): copy k's flattened features
        x = F.dropout(self.fc1(x), self.dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def extra_repr(self) -> str:
        return f"copies={self.copies}, num_classes={self.num_classes}, norm={self.norm_name!r}, dropout={self.dropout:g}"


# ------------------------------------------------------------------------------------------------- data
class StackedData:
    """The K copies' data (:class:`dnlib.cifar.CifarData` s, of equal sizes; the same object K times shares its
    tensors without copying them) as one batch maker: :meth:`images` of ``(K, N)`` indices is the stacked input,
    each copy's block what ``data.images`` gives its own run."""

    def __init__(self, datas: Sequence):
        datas = list(datas)
        self.copies = k = len(datas)
        first = datas[0]
        shared = all(d is first for d in datas)
        if not shared:
            for attr in ("x_train", "x_eval", "mean"):
                _same([tuple(getattr(d, attr).shape) for d in datas], f"data ({attr} shapes)")
            _same([d.eval_split for d in datas], "data (evaluation split)")

        def stack(attr):
            t = getattr(first, attr)
            return t.unsqueeze(0).expand(k, *t.shape) if shared else torch.stack([getattr(d, attr) for d in datas])

        self.x_train, self.y_train, self.x_eval, self.y_eval, self.mean = (
            stack(a) for a in ("x_train", "y_train", "x_eval", "y_eval", "mean"))
        self.eval_split, self.copies_data = first.eval_split, datas
        self._rows = torch.arange(k, device=first.x_train.device).view(k, 1)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def images(self, idx: torch.Tensor, split: str = "train") -> torch.Tensor:
        """Float ``(N, K*3, 32, 32)`` channels-last input: block k is ``x_k[idx[k]] - mean_k``."""
        x = self.x_train if split == "train" else self.x_eval
        g = x[self._rows, idx].float() - self.mean.unsqueeze(1)       # (K, N, H, W, 3)
        k, n, h, w, c = g.shape
        return g.permute(1, 2, 3, 0, 4).reshape(n, h, w, k * c).permute(0, 3, 1, 2)

    def labels(self, idx: torch.Tensor, split: str = "train") -> torch.Tensor:
        """``(K, N)`` labels of ``idx`` (``(K, N)``)."""
        return (self.y_train if split == "train" else self.y_eval)[self._rows, idx]


class StackedBatches:
    """K batch sources (one per copy) as one: ``next()`` is ``((K, N) indices,)``; resumable as each of them."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)

    def __iter__(self):
        return self

    def __next__(self):
        return (torch.stack([next(s)[0] for s in self.sources]),)

    def state_dict(self) -> dict:
        return {"copies": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("copies") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.sources):
            raise ValueError(f"state: needs 'copies', one state per source ({len(self.sources)})")
        for s, p in zip(self.sources, parts):
            s.load_state_dict(p)


class StackedLoss:
    """``loss_fn(model, (idx,))`` for the trainer: the SUM over copies of each copy's mean cross-entropy, so
    copy k's gradient is that of its own run's loss. :attr:`last` holds the step's per-copy losses ``(K,)``
    (detached; inside a CUDA graph the captured tensor that every replay overwrites)."""

    def __init__(self, data: StackedData):
        self.data, self.last = data, None

    def per_copy(self, model: nn.Module, idx: torch.Tensor, split: str = "train", reduce: str = "mean"):
        logits = model(self.data.images(idx, split))                          # (K, N, classes)
        loss = F.cross_entropy(logits.flatten(0, 1), self.data.labels(idx, split).flatten(), reduction="none")
        loss = loss.view(idx.shape)
        return logits, (loss.mean(1) if reduce == "mean" else loss.sum(1))

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        (idx,) = batch
        _, per = self.per_copy(model, idx)
        self.last = per.detach()
        return per.sum()


def evaluate(model: StackedCifarCNN, data: StackedData, batch_size: int = 1000) -> list:
    """Each copy's accuracy and mean cross-entropy on its evaluation split, as ``dnlib.cifar.evaluate`` of its run
    (keys ``test_acc``/``test_loss`` or ``val_*``): a list of K dicts."""
    k, n = data.y_eval.shape
    correct = torch.zeros(k, device=data.device)
    total = torch.zeros(k, device=data.device, dtype=torch.float64)
    loss_fn = StackedLoss(data)
    was = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n), device=data.device).expand(k, -1)
            logits, loss = loss_fn.per_copy(model, idx, "eval", reduce="sum")
            correct += (logits.argmax(-1) == data.labels(idx, "eval")).sum(1)
            total += loss.double()
    clear_penalties(model)
    model.train(was)
    split = data.eval_split
    return [{f"{split}_acc": float(correct[i]) / n, f"{split}_loss": float(total[i]) / n} for i in range(k)]


# ---------------------------------------------------------------------------------------------- the run
def _check_seeds(seeds) -> list:
    seeds = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
    if not isinstance(seeds, list) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds: must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: each copy needs its own seed, got duplicates in {seeds}")
    return seeds


class StackedRun:
    """K runs of one configuration (one per seed) prepared as one stacked model and trainer (made by
    :func:`prepare`): ``go()`` trains them with the runner's chunks, evaluation and time-limit rule and writes
    one ordinary run folder per copy; ``step()`` is one stacked training step (returns the ``(K,)`` losses).

    Attributes: ``setups`` (each copy's :class:`~dnlib.experiment.Setup`, as its separate run builds it),
    ``model`` (:class:`StackedCifarCNN`), ``data`` (:class:`StackedData`), ``loss_fn``, ``trainer``,
    ``run_dirs`` (None without ``out``)."""

    def __init__(self, recipe: experiment.Recipe, config, seeds: Sequence[int], *, steps: Optional[int] = None,
                 device: str = "auto", out=None, overrides: Optional[Mapping] = None,
                 options: Optional[Mapping] = None, time_limit: Optional[float] = None,
                 stop_after: Optional[int] = None, progress: bool = False, parameters: Optional[Mapping] = None,
                 argv: Optional[Sequence[str]] = None):
        self.t0, self.started = time.perf_counter(), time.time()
        self.seeds = _check_seeds(seeds)
        experiment.check_time_limit(time_limit)
        experiment.check_int("stop_after", stop_after, 0, none_ok=True)
        options = dict(options or {})
        mode = options.pop("mode", None) or "auto"
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
        self.recipe, self.time_limit, self.stop_after, self.progress = recipe, time_limit, stop_after, progress
        self.parameters, self.argv = parameters, argv
        self.cfg = cfg = recipe.config(config, steps=steps, **dict(overrides or {}))
        self.config_name = getattr(cfg, "name", str(config))
        # each copy as its separate run builds it (the runner seeds every RNG just before build); the data is
        # loaded once when it does not depend on the seed (no subset), else per seed (a subset is drawn from it)
        self.setups = []
        for seed in self.seeds:
            set_seed(seed)
            s = recipe.build(cfg, seed, device, **options, mode="eager")
            self.setups.append(s)
            if "data" not in options and options.get("subset") is None:
                options["data"] = s.data
        models = [s.model for s in self.setups]
        self.model = StackedCifarCNN(models).to(memory_format=torch.channels_last)   # as the recipe's models
        self.data = StackedData([s.data for s in self.setups])
        self.loss_fn = StackedLoss(self.data)
        self.batches = StackedBatches([s.batches for s in self.setups])
        s0 = self.setups[0]
        groups = s0.trainer_kwargs.get("param_groups")
        if groups is None:
            groups = [{"params": list(models[0].parameters())}]
        names = {id(p): n for n, p in models[0].named_parameters()}
        groups = [{**g, "params": [self.model.get_parameter(names[id(p)]) for p in g["params"]]} for g in groups]
        dev = self.data.device
        graph = mode == "graph" or (mode == "auto" and dev.type == "cuda")
        self.mode = experiment.trainer_mode(graph, dev)
        tcfg = dataclasses.replace(s0.train, progress=False, device=str(dev))
        self.trainer = (GraphTrainer if graph else Trainer)(self.model, self.loss_fn, self.batches, tcfg,
                                                            param_groups=groups)
        self.planned = int(s0.train.steps)
        self.chunk = int(s0.chunk or s0.train.eval_every or self.planned or 1)
        self.log_every = max(1, int(s0.train.log_every))
        self.eval_every = int(s0.train.eval_every)
        self.elapsed = 0.0
        self.histories = [[] for _ in self.seeds]
        self.stopped = [None] * len(self.seeds)       # per copy: None while training, then why it stopped
        self.stopped_step = [None] * len(self.seeds)
        self._pending, self._prov = [], None
        self.run_dirs = None
        if out is not None:
            self.run_dirs = [records.new_run_dir(out, records.run_name(self.config_name, s)) for s in self.seeds]

    @property
    def copies(self) -> int:
        return len(self.seeds)

    # -- steps
    def step(self) -> torch.Tensor:
        """One stacked optimizer step; returns the K copies' task losses (without the L1 terms), on the device."""
        tr = self.trainer
        tr.train_step(next(self.batches))
        tr.step += 1
        return self.loss_fn.last.clone()

    def _log(self, do_eval: bool) -> None:
        tr = self.trainer
        losses = torch.stack(self._pending).float().cpu() if self._pending else None
        n = 0 if losses is None else len(losses)
        self._pending = []
        metrics = evaluate(self.model, self.data) if do_eval else [{} for _ in self.seeds]
        lr = tr.opt.param_groups[0]["lr"]
        for k in range(self.copies):
            if self.stopped[k] is not None:
                continue
            row = {"step": tr.step, "lr": lr, "time": round(self.elapsed, 3)}
            if losses is not None:
                bad = (~torch.isfinite(losses[:, k])).nonzero()
                if len(bad):
                    i = int(bad[0])
                    self._diverge(k, tr.step - n + i + 1, f"the training loss is {float(losses[i, k])}")
                    continue
                row["train_loss"] = float(losses[:, k].mean())
            bad = {m: v for m, v in metrics[k].items() if not math.isfinite(v)}
            if bad:
                self._diverge(k, tr.step, "evaluation " + ", ".join(f"{m} = {v}" for m, v in bad.items()))
                continue
            row.update(metrics[k])
            self.histories[k].append(row)

    def _diverge(self, k: int, step: int, what: str) -> None:
        tr = self.trainer
        self.stopped[k] = f"diverged at step {int(step)}"
        self.stopped_step[k] = tr.step
        self.histories[k].append({"step": tr.step, "lr": tr.opt.param_groups[0]["lr"], "time": round(self.elapsed, 3),
                                  "stopped": self.stopped[k], "reason": what})

    def _check_weights(self) -> None:
        for k in range(self.copies):
            if self.stopped[k] is None and not all(torch.isfinite(t).all() for t in
                                                   self.model.copy_state_dict(k).values() if t.is_floating_point()):
                self._diverge(k, self.trainer.step, "a weight or buffer of the model is not finite")

    def train_until(self, target: int) -> None:
        """Train on to step ``target`` (logging every ``log_every`` steps, evaluating every ``eval_every`` steps and
        at ``target``), as the trainer's ``run_until`` does for one run."""
        tr = self.trainer
        bar = tqdm(total=target, initial=tr.step, disable=not self.progress, desc=f"train x{self.copies}", leave=False)
        while tr.step < target and any(s is None for s in self.stopped):
            t0 = time.perf_counter()
            self._pending.append(self.step())
            if tr.device.type == "cuda" and tr.step % self.log_every == 0:
                torch.cuda.synchronize()
            self.elapsed += time.perf_counter() - t0
            bar.update(1)
            do_eval = tr.step == target or bool(self.eval_every and tr.step % self.eval_every == 0)
            if do_eval or tr.step % self.log_every == 0:
                self._log(do_eval)
        bar.close()
        if self._pending:
            self._log(False)
        self._check_weights()

    # -- the records
    def result(self, k: int, running: bool = False) -> RunResult:
        """Copy ``k``'s :class:`~dnlib.experiment.RunResult` (its record as :mod:`dnlib.records` writes it; its
        ``model`` is its separate run's model object holding copy k's current weights)."""
        tr, setup, seed = self.trainer, self.setups[k], self.seeds[k]
        stopped = self.stopped[k] or (RUNNING if running else COMPLETED if tr.step >= self.planned
                                      else f"stop_after at step {tr.step}")
        steps = self.stopped_step[k] if self.stopped_step[k] is not None else tr.step
        with torch.no_grad():
            setup.model.load_state_dict(self.model.copy_state_dict(k))
        res = RunResult(None, self.histories[k], setup.model, self.cfg,
                        self.run_dirs[k] if self.run_dirs else None, steps, self.elapsed, setup)
        headline = dict(self.recipe.headline(res))
        if stopped.startswith("diverged"):
            headline = {key: None for key in headline}
        info = {**setup.info, "mode": self.mode, "stacked": self.copies, "stacked_seeds": list(self.seeds),
                "stacked_index": k}
        config = {**self.recipe.config_dict(self.cfg), "setup": info}
        if self._prov is None:
            self._prov = records.provenance(tr.device)
        res.record = records.make_record(
            self.recipe.name, config, seed, name=self.config_name, parameters=self.parameters, started=self.started,
            ended=None if stopped == RUNNING else time.time(), steps_planned=self.planned, steps_done=steps,
            stopped=stopped, headline=headline, paper=self.recipe.paper(self.cfg), device=tr.device, argv=self.argv,
            prov=self._prov)
        return res

    def write(self, running: bool = False) -> list:
        """Every copy's result; with run folders, their ``record.json`` and ``curves.csv`` (atomically)."""
        out = []
        for k in range(self.copies):
            res = self.result(k, running)
            if self.run_dirs is not None:
                records.write_curves(self.run_dirs[k], [r for r in self.histories[k] if "step" in r])
                records.write_record(self.run_dirs[k], res.record)
            out.append(res)
        return out

    def go(self) -> list:
        """Train in chunks to the end of the schedule (or ``stop_after``, or the time limit: the runner's rule);
        returns the K copies' :class:`~dnlib.experiment.RunResult` s, in the order of ``seeds``. A copy that
        diverges stops (its record says ``diverged at step N``, no headline numbers); the others train on."""
        tr = self.trainer
        target = self.planned if self.stop_after is None else min(self.stop_after, self.planned)
        last = None
        try:
            while tr.step < target and any(s is None for s in self.stopped):
                spent = time.perf_counter() - self.t0
                if experiment.past_time_limit(spent, last, self.time_limit):
                    for k in range(self.copies):
                        if self.stopped[k] is None:
                            self.stopped[k] = f"time limit at step {tr.step}"
                    break
                c0 = time.perf_counter()
                self.train_until(min(target, (tr.step // self.chunk + 1) * self.chunk))
                last = time.perf_counter() - c0
                if tr.step < target:
                    self.write(running=True)
            return self.write()
        except KeyboardInterrupt:
            for k in range(self.copies):
                if self.stopped[k] is None:
                    self.stopped[k] = f"interrupted at step {tr.step}"
            self.write()
            raise


def prepare(recipe: experiment.Recipe, config, seeds: Sequence[int], **kwargs) -> StackedRun:
    """A :class:`StackedRun`, prepared but not trained; arguments as :func:`run`."""
    return StackedRun(recipe, config, seeds, **kwargs)


def run(recipe: experiment.Recipe, config, seeds: Sequence[int], *, steps: Optional[int] = None,
        device: str = "auto", out=None, overrides: Optional[Mapping] = None, options: Optional[Mapping] = None,
        time_limit: Optional[float] = None, stop_after: Optional[int] = None, progress: bool = False,
        parameters: Optional[Mapping] = None, argv: Optional[Sequence[str]] = None) -> list:
    """Train configuration ``config`` of ``recipe`` once per seed, the K runs stacked into one model (module
    doc); returns their :class:`~dnlib.experiment.RunResult` s in the order of ``seeds``.

    Args:
        recipe: a recipe whose ``build`` gives a :class:`~dnlib.models.CifarCNN` on CIFAR data (``dnlib.cifar.RECIPE``).
        config: a configuration name or object; ``overrides``: fields to change; ``steps``: shorten the schedule.
        seeds: one distinct seed per copy.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``.
        out: a base folder: each copy gets a new run folder ``out/<config>-s<seed>-<UTC time>`` (None: nothing is
            written; the records are on the results).
        options: keyword arguments of the recipe's ``build`` (``data``, ``subset``, ``eval_every``...); ``mode``
            (``"auto"``, ``"graph"``, ``"eager"``) is the stacked trainer's.
        time_limit, stop_after: as :func:`dnlib.experiment.run` (the whole group stops).
        parameters, argv: recorded in each record.
    """
    return StackedRun(recipe, config, seeds, steps=steps, device=device, out=out, overrides=overrides,
                      options=options, time_limit=time_limit, stop_after=stop_after, progress=progress,
                      parameters=parameters, argv=argv).go()


# -------------------------------------------------------------------------------------------------- CLI
def _add_arguments(recipe: experiment.Recipe, q: argparse.ArgumentParser) -> None:
    q.add_argument("config", help="configuration name (see `list`)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", required=True, help="one distinct seed per copy")
    q.add_argument("--steps", type=cli.positive_int, default=None, help="shorten the schedule")
    q.add_argument("--time-limit", dest="time_limit", type=cli.positive_float, default=None,
                   help="seconds: stop at the first chunk boundary where the next chunk would not fit")
    q.add_argument("--out", type=cli.out_dir, default=None,
                   help=f"base folder: each copy gets a new run folder in it (default runs/{recipe.name})")
    q.add_argument("--device", type=cli.device, default="auto", help="auto, cpu, cuda[:N] (default auto)")
    recipe.add_arguments(q, "run")


def _handler(recipe: experiment.Recipe):
    def handle(args, q) -> int:
        overrides, options = recipe.from_args(args)
        out = args.out if args.out is not None else str(Path("runs") / recipe.name)
        with cli.user_errors(q):
            _check_seeds(args.seeds)
            recipe.config(args.config, steps=args.steps, **overrides)     # a bad name or field: before any data
            prepared = prepare(recipe, args.config, args.seeds, steps=args.steps, device=args.device, out=out,
                               overrides=overrides, options=options, time_limit=args.time_limit)
        results = prepared.go()
        for res in results:
            rec = res.record
            print(json.dumps({"run": str(res.run_dir) if res.run_dir else None, "name": rec["name"],
                              "seed": rec["seed"], "stacked": prepared.copies, "steps": rec["steps_done"],
                              "planned": rec["steps_planned"], "stopped": rec["stopped"], **rec["headline"],
                              **{f"paper_{k}": v for k, v in rec["paper"].items()}}), flush=True)
        return 1 if any(str(r.stopped).startswith("diverged") for r in results) else 0
    return handle


def commands(recipe: experiment.Recipe) -> dict:
    """``{"stack": Command}``: the ``stack`` verb of ``recipe``'s CLI (register it in ``Recipe.commands``)::

        python -m dnlib.cifar stack dn-star --seeds 0 1 2 3 [--steps N] [--out DIR] [the run verb's recipe flags]

    One ordinary run folder per seed; one JSON line per copy; exit 1 when a copy diverged, 2 on bad arguments."""
    return {"stack": experiment.Command("train several seeds of one configuration as one stacked model",
                                        lambda q: _add_arguments(recipe, q), _handler(recipe))}
