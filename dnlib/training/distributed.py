"""Training under ``torch.distributed`` (``torchrun``): DDP, synchronized normalizers, sharded batches.

``torchrun --nproc_per_node=2 -m dnlib.experiments.cifar run bn-star --device cpu --mode eager --steps 20`` trains one
model in two processes: every process draws the same global batch from the resident data (same seed) and keeps its
contiguous share (:func:`shard`, a distributed sampler without a copy of the data), the model is wrapped in
``DistributedDataParallel`` (gradients averaged) and its batch-pooling normalizers are synchronized
(:func:`dnlib.convert_sync_norm`). A step's gradient is then one process's on the global batch, float rounding apart,
whether or not the batch divides evenly (tests/test_distributed.py: fp64, shares 3 + 2, every parameter to 1e-12, with
synchronized BN and bn-s, per-example DN and LN sites with L1 terms, and PTB's LSTMs dn*, ln*, bn*). For this the loss's
share of the examples is weighted (:class:`_DDPLoss`). By default (``loss_fn.reduction`` absent or ``"mean"``,
:func:`loss_reduction`) the loss is the mean over the process's examples, as the recipes' are (CIFAR's cross-entropy,
PTB's NLL per sequence, SR's MSE): process ``r`` with ``n_r`` of the ``N`` examples backpropagates it times
``W n_r / N`` (``W`` processes; exactly 1 for even shares), so that DDP's average weights every example ``1 / N``; a
loss that sums them (``reduction = "sum"``) is multiplied by ``W``. The L1 terms (:mod:`dnlib.norms.sparse`, always
means): a synchronized site's is the whole batch's on every process and DDP's average of its gradients is already the
whole batch's, so it is left to the trainer; a site that pools only its examples (DN, LN, any per-example field) gives
the mean over the process's share, and its gradient is weighted ``W n_r / N`` too. The logged training loss is the
global batch's (mean, or sum), without the L1 terms as in one process. Rank 0 alone writes checkpoints and the run
record. gloo on CPU (NCCL is chosen on CUDA, untested here). Resuming a run under torchrun and CUDA graphs are not
supported yet.

:class:`CollectiveLog` is a process group that forwards every collective to a real one and logs it (name and
bytes), for measuring the communication of a training step (:func:`step_communication`).
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..norms.norm import DivisiveNorm, convert_sync_norm

# DDP's switch for the buffer broadcast before each forward (renamed in recent torch; the old name warns there)
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...);
    True when running in a group of two or more processes (already joined or joined now), False otherwise
    (a plain single-process run: nothing is done). ``backend``: default ``"nccl"`` when CUDA is available,
    else ``"gloo"``."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not dist.is_available():
        return False
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group; torchrun's ``RANK`` before it is joined)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes records (rank 0, or no process group)."""
    return rank() == 0


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous share of process ``rank`` among ``world`` of a global batch of ``n`` examples: sizes differ
    by at most one, the first ``n % world`` processes take the larger ones, the shares tile ``range(n)``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank, world: need 0 <= rank < world, got rank={rank}, world={world}")
    base, extra = divmod(int(n), world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class ShardedBatches:
    """A batch stream (``next()`` gives a tuple of tensors, ``state_dict``/``load_state_dict``) of which this
    process keeps its :func:`shard` of every batch. Every process must hold the same stream (same seed)."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        n = batch[0].shape[0]
        if n < self.world:     # every process sees the same n: all of them stop here, none waits for the others
            raise ValueError(f"batch_size: a batch of {n} cannot be shared by {self.world} processes (a process "
                             f"with an empty share has no loss); use a batch size >= {self.world}")
        s = shard(n, self.rank, self.world)
        # tensors with the batch's leading size are sharded; anything else (a PTB stream's reset flag) is shared
        return tuple(t[s] if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == n else t for t in batch)

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


class _DDP(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped model's own attributes and methods (e.g. the
    language model's ``init_state``), so a loss function written for the model works unchanged on the wrapper."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


REDUCTIONS = ("mean", "sum")


def loss_reduction(loss_fn: Callable) -> str:
    """How ``loss_fn(model, batch)`` reduces its batch's examples: its ``reduction`` attribute (as torch's loss
    modules), ``"mean"`` when it has none (the trainer's losses are means over the batch's examples); ValueError for
    anything but :data:`REDUCTIONS`."""
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss_fn.reduction: got {reduction!r}; allowed values are {list(REDUCTIONS)} (how the "
                         f"loss reduces its batch's examples, which sets each process's weight under torchrun)")
    return reduction


def _synchronized(m: DivisiveNorm) -> bool:
    """Whether site ``m``'s training forward pools the batch over the process group (:func:`convert_sync_norm`):
    then its L1 term is the global batch's mean and DDP's average of its gradients is already the global one."""
    return m.process_group is not None and m.spec.pools_batch


class _DDPLoss:
    """``loss_fn(model, batch)`` run through the DDP wrapper (so its gradient hooks fire), with this process's
    gradient weighted so that DDP's average is the global batch's (``W n / N`` for a mean loss over ``n`` of the
    ``N`` examples, ``W`` for a sum; see the module), and the global batch's value (mean or sum) for the log. The L1
    terms of the sites that pool only this process's examples (not synchronized: a mean over its share) are
    collected here and their gradient weighted ``W n / N`` too (the value returned is the task loss's alone, as the
    trainer's; the synchronized sites' terms stay pending for the trainer). One all-reduce of two scalars, no host
    sync."""

    def __init__(self, loss_fn: Callable, ddp: nn.Module):
        self.loss_fn, self.ddp = loss_fn, ddp
        self.mean = loss_reduction(loss_fn) == "mean"

    def __call__(self, model, batch):
        out = self.loss_fn(self.ddp, batch)
        loss, extra = out if isinstance(out, tuple) else (out, None)
        n, world = batch[0].shape[0], dist.get_world_size()
        with torch.no_grad():
            t = torch.stack([loss.detach() * (n if self.mean else 1), loss.new_tensor(float(n))])
            dist.all_reduce(t)
            value = t[0] / t[1] if self.mean else t[0]
            share = (n * world) / t[1]                   # W n / N: exactly 1 for even shares
        loss = loss * (share if self.mean else loss.new_tensor(float(world)))
        terms = [p for m in self.ddp.module.modules() if isinstance(m, DivisiveNorm) and not _synchronized(m)
                 for p in [m.pop_penalty()] if p is not None]
        if terms:   # their gradient, weighted; no value (the trainer logs the task loss)
            local = sum(terms) * share.to(terms[0].dtype)
            loss = loss + (local - local.detach())
        loss = loss + (value - loss.detach())
        return loss if extra is None else (loss, extra)


def check_trainer(cls: type) -> None:
    """Under torchrun (two processes or more), refuse a trainer class that cannot train data-parallel yet, with a
    ValueError saying what to pass: every graph trainer (:class:`~dnlib.training.graphs.GraphTrainer`, and the
    truncated-BPTT ones, :class:`~dnlib.training.graphs.CarriedStateGraph`: PTB's ``SequenceGraphTrainer``, which
    ``--mode auto`` picks on CUDA). A runner calls it before it makes the run's folder; :func:`prepare` calls it."""
    if world_size() < 2:
        return
    from .graphs import CarriedStateGraph, GraphTrainer  # imported only under torchrun
    if issubclass(cls, (GraphTrainer, CarriedStateGraph)):
        raise ValueError(f"mode: CUDA-graph training ({cls.__name__}) under torchrun is not supported; "
                         f"pass --mode eager")


def prepare(trainer, out_dir=None):
    """Make ``trainer`` (a :class:`dnlib.training.trainer.Trainer`) train data-parallel when run under torchrun;
    returned unchanged otherwise. In place: the model's batch-pooling normalizers are synchronized, its forward in the
    loss goes through ``DistributedDataParallel``, the batches are sharded, and only rank 0 keeps ``out_dir``
    (checkpoints). Raises ValueError for what is not supported yet (a checkpoint to resume in ``out_dir``, a
    graph trainer: :class:`~dnlib.training.graphs.GraphTrainer` and the truncated-BPTT ones,
    :class:`~dnlib.training.graphs.CarriedStateGraph`, whose step calls its loss with other arguments), for a batch
    smaller than the number of processes (an empty share has no loss) and for a ``loss_fn.reduction`` other than
    ``"mean"`` (the default) or ``"sum"`` (:func:`loss_reduction`; it sets each process's weight, see the module).

    A runner joins the group (:func:`init_from_env`) before it builds the model, so that on CUDA each rank builds on
    its own device (``LOCAL_RANK``); this call joins it when that has not been done."""
    if not init_from_env():
        return trainer
    check_trainer(type(trainer))
    loss_reduction(trainer.loss_fn)
    if out_dir is not None and os.path.exists(os.path.join(out_dir, "checkpoint.pt")):
        raise ValueError(f"out_dir: {out_dir} holds a checkpoint, and resuming under torchrun is not supported; "
                         f"use a new --out folder")
    world, batch = dist.get_world_size(), getattr(trainer.batches, "batch_size", None)
    if isinstance(batch, int) and batch < world:
        raise ValueError(f"batch_size (--batch-size): {batch} is smaller than the {world} processes: each trains on "
                         f"its share of a batch, and a process with an empty share has no loss; use a batch size "
                         f">= {world}")
    model = convert_sync_norm(trainer.model)
    device = next(model.parameters()).device
    ddp = _DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              **_NO_BUFFER_SYNC)  # synchronized norms' buffers agree already
    trainer.loss_fn = _DDPLoss(trainer.loss_fn, ddp)
    trainer.batches = ShardedBatches(trainer.batches, dist.get_rank(), dist.get_world_size())
    trainer.ddp = ddp
    if not is_main():
        trainer.out_dir = None
    return trainer


class CollectiveLog(dist.ProcessGroup if dist.is_available() else object):
    """A process group that forwards every collective to ``inner`` and appends ``(name, bytes)`` to ``calls``
    (bytes: the tensors this process contributes). Give it to DDP (``process_group=``) and to
    :func:`dnlib.convert_sync_norm` to see every collective of a step, DDP's own (C++) calls included."""

    def __init__(self, inner):
        super().__init__(inner.rank(), inner.size())
        self.inner = inner
        self.calls = []

    def _log(self, name, tensors):
        self.calls.append((name, sum(t.numel() * t.element_size() for t in tensors)))

    def allreduce(self, tensors, opts=None):
        self._log("allreduce", tensors)
        return self.inner.allreduce(tensors) if opts is None else self.inner.allreduce(tensors, opts)

    def broadcast(self, tensors, opts):
        self._log("broadcast", tensors)
        return self.inner.broadcast(tensors, opts)

    def allgather(self, outs, ins, opts=None):
        self._log("allgather", ins)
        return self.inner.allgather(outs, ins, opts)

    def barrier(self, opts=None):
        self._log("barrier", [])
        return self.inner.barrier(opts)

    def getBackendName(self):
        return "logged-" + self.inner.name()


def _logged_step(model: nn.Module, x, y, loss_fn, sync: bool) -> list:
    from ..norms.sparse import sparse_penalty
    log = CollectiveLog(dist.group.WORLD)
    if sync:
        convert_sync_norm(model, process_group=log)
    ddp = nn.parallel.DistributedDataParallel(model, process_group=log, **_NO_BUFFER_SYNC)
    log.calls.clear()
    model.train()
    (loss_fn(ddp(x), y) + sparse_penalty(model)).backward()
    return list(log.calls)


def step_communication(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable | None = None) -> dict:
    """Collectives of one DDP training step of ``model`` on this process's ``(x, y)`` (call in every process of
    an initialized group), counted by :class:`CollectiveLog`: ``{"calls", "bytes"}`` with synchronized
    normalizers, ``{"ddp_calls", "ddp_bytes"}`` of the same step on a copy without synchronization (DDP's
    gradient all-reduce alone), and their differences ``norm_calls``/``norm_bytes``. ``model`` is converted."""
    import copy
    loss_fn = loss_fn or nn.functional.cross_entropy
    plain = _logged_step(copy.deepcopy(model), x, y, loss_fn, sync=False)
    synced = _logged_step(model, x, y, loss_fn, sync=True)
    out = {"calls": len(synced), "bytes": sum(b for _, b in synced),
           "ddp_calls": len(plain), "ddp_bytes": sum(b for _, b in plain)}
    out["norm_calls"], out["norm_bytes"] = out["calls"] - out["ddp_calls"], out["bytes"] - out["ddp_bytes"]
    return out
