"""``DivisiveNorm``: the one normalization module; BN, LN, IN, GN, LRN, RMSNorm and DN are its presets."""
from __future__ import annotations

import math
import sys
import threading
import warnings
import weakref

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import functional as DF
from . import windowed
from .spec import NormSpec, is_int, is_real

IMPLS = ("auto", "general", "fused", "compile", "band", "triton")
#: Conventions of the running statistics (see DivisiveNorm's ``running_stats``).
RUNNING_STATS = ("torch", "tf")
#: ``impl="auto"`` takes the band path for 2-D inputs of at most this many channels (see DivisiveNorm). Measured on
#: CPU (one thread), forward + backward at N = 20 / 80 with a 61-unit window: the band path is 2.3x / 1.4x faster
#: than the general path at C = 200, even / 1.7x slower at C = 400, 4x / 6x slower at C = 1000.
BAND_MAX_FEATURES = 256


class _Pending:
    """One training forward's L1 term, waiting for :func:`dnlib.sparse_penalty`.

    ``output`` is a weak reference to the forward's output: its :class:`_OutputTap` node when the output requires
    grad, else the output tensor (None for a term recorded by a compiled graph, whose outputs share one node).
    Once it is dead, nothing refers to the forward's output any more."""

    __slots__ = ("term", "n", "group", "index", "output", "tapped", "level")

    def __init__(self, term: torch.Tensor, n: int, group=None, index: int = 0, output=None, tapped: bool = False,
                 level: tuple | None = None):
        self.term, self.n, self.group, self.index, self.output, self.tapped = term, n, group, index, output, tapped
        self.level = level  # _transform_token() of the forward: None outside every torch.func transform

    def orphaned(self) -> bool:
        """Whether the forward's output is gone (only the term itself could still be backpropagated)."""
        return self.output is not None and self.output() is None

    def backpropagated(self) -> bool:
        """Whether a backward has run through this forward (and freed its graph): the term can give no gradient."""
        node = self.term.grad_fn if self.output is None else self.output() if self.tapped else None
        if node is None:
            return False
        try:
            # raises once the graph is freed; unlike saved_tensors it unpacks nothing: a saved-tensor hook's unpack
            # (non-reentrant activation checkpointing: a recompute of the forward, which re-entered the site's lock
            # without early stop; save_on_cpu: a copy) would run
            node._raw_saved_tensors  # noqa: B018
        except RuntimeError:
            return True
        except AttributeError:  # a node without saved tensors (not one of ours or a compiled graph's)
            return False
        return False


class _OutputTap(torch.autograd.Function):
    """Identity on a site's output whose node tells what became of the forward: it lives as long as anything
    refers to the output (or to what was computed from it), and its saved (empty) tensor is freed by a backward
    through the output. Returns an alias, not a view, so in-place ops on the output (``ReLU(inplace=True)``) work
    as without the tap."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y.new_empty(0))
        return y.detach()

    @staticmethod
    def backward(ctx, g):
        return g

    @staticmethod
    def jvp(ctx, g):  # forward-mode AD (torch.autograd.forward_ad); under torch.func transforms no tap is made
        return g


class _ReplicaGroup:
    """The replicas of one site made by one ``torch.nn.parallel.replicate`` call (one ``nn.DataParallel``
    forward): their terms are averaged weighted by each replica's batch size, which is the one-device penalty."""

    def __init__(self):
        self.count, self.started, self.sizes = 0, False, {}


class _Link:
    """A term recorded by a forward that ``torch.compile`` traced, in a linked list from the site's store: Dynamo
    replays the store of a new object after the graph without a graph break (appending to a list would recompile
    the graph for every length of the list). ``replica``: the DataParallel ``(group, index)`` or None."""

    __slots__ = ("term", "n", "replica", "prev")

    def __init__(self, term: torch.Tensor, n: int, replica, prev):
        self.term, self.n, self.replica, self.prev = term, n, replica, prev


class _L1Terms:
    """The pending L1 terms of one site. A replica made by ``nn.DataParallel`` is a shallow copy of the module's
    ``__dict__``, so the module and all its replicas hold this same object: terms added on replicas are collected
    from the module (the replica itself is discarded after the forward)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []        # [_Pending]
        self.compiled = None   # the last _Link recorded by a compiled forward since the last prune
        self.warned = False
        self.reentrant_warned = False   # (reentrant activation checkpointing: see DivisiveNorm._record)

    def __deepcopy__(self, memo):  # a copied module starts without pending terms (they hold another graph)
        return _L1Terms()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def _prune(self, where: str, orphans: bool) -> list:
        """Drop the terms that no loss can use any more (call with the lock held) and return the others: a forward
        that has been backpropagated without its term (it gave no gradient: warned once; its graph is freed now),
        and with ``orphans`` (at the site's next forward) a forward whose output nothing refers to any more."""
        links, head = [], self.compiled
        self.compiled = None
        while head is not None:
            links.append(head)
            head = head.prev
        for link in reversed(links):
            group, index = link.replica if link.replica is not None else (None, 0)
            self._track(group, index, link.n)
            self.items.append(_Pending(link.term, link.n, group, index))
        keep, stale = [], 0
        for p in self.items:
            if p.backpropagated():
                p.term = None
                stale += 1
            elif not (orphans and p.orphaned()):
                keep.append(p)
        self.items = keep
        if stale and not self.warned:
            self.warned = True
            warnings.warn(f"{where}: the L1 term (alpha > 0) of a training forward was not part of the loss that was "
                          f"backpropagated through that forward, so it added no gradient, and it is dropped. Add "
                          f"dnlib.sparse_penalty(model) to the loss before backward.", stacklevel=5)
        return keep

    @staticmethod
    def _track(group, index: int, n: int) -> None:
        if group is not None:
            group.started = True
            group.sizes.setdefault(index, n)

    def add(self, p: _Pending, where: str) -> None:
        with self.lock:
            self._prune(where, orphans=True)
            self._track(p.group, p.index, p.n)
            self.items.append(p)

    def clear(self) -> None:
        with self.lock:
            self.items, self.compiled = [], None

    def pop(self, where: str) -> torch.Tensor | None:
        with self.lock:
            live = self._prune(where, orphans=False)
            self.items = []
        _check_levels(live, where)
        parts, groups = [], {}
        for p in live:
            if p.group is None:
                parts.append(p.term)
            else:
                groups.setdefault(id(p.group), (p.group, []))[1].append((p.term, p.n))
        for group, terms in groups.values():
            total_n = sum(group.sizes.values())
            parts.extend(t * (n / total_n) for t, n in terms)
        if not parts:
            return None
        device = parts[0].device
        total = parts[0]
        for t in parts[1:]:
            total = total + t.to(device)
        return total


def _reentrant_checkpoint() -> bool:
    """Whether this code runs inside the backward of torch's reentrant activation checkpointing
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)``, ``checkpoint_sequential``), which recomputes
    the forward there."""
    import torch.utils.checkpoint as ckpt
    code = getattr(getattr(getattr(ckpt, "CheckpointFunction", None), "backward", None), "__code__", None)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _transform_token() -> tuple | None:
    """``(level, probe)`` for the ``torch.func`` transform call running now (None outside every transform): the
    probe, an empty tensor wrapped at that level, is dead once that very call has returned (a later call at the
    same level gets a new one), which the level number alone cannot tell."""
    level = DF.transform_level()
    return None if level is None else (level, torch._C._functorch._wrap_for_grad(_PROBE, level))


_PROBE = torch.empty(0)  # (made here, outside every transform: a grad transform wraps the tensors made inside it)


def _check_levels(terms: list, where: str) -> None:
    """Refuse L1 terms recorded under a ``torch.func`` transform call other than the one running now (a term that
    escaped its transform: a dead wrapper, or another call's batch, with no valid value or gradient here)."""
    if not terms:
        return
    now = DF.transform_level()
    for p in terms:
        if (p.level[0] if p.level is not None else None) != now or (
                p.level is not None and torch._C._functorch.is_dead_tensor_wrapper(p.level[1])):
            inside = "inside a torch.func transform" if p.level is not None else "outside torch.func transforms"
            here = "outside them" if now is None else "inside another transform (or another call of it)"
            raise RuntimeError(
                f"{where}: an L1 term (alpha > 0) was recorded {inside} and is collected {here}, where it has no "
                f"valid value or gradient; the pending terms are dropped. Under vmap/grad/jvp/jacrev/hessian call "
                f"dnlib.sparse_penalty(model) inside the transformed function, after its forward, and use it there "
                f"(e.g. add it to the loss: vmap then gives each copy its own term); or set alpha=0.")


@DF.compile_safe_cache(maxsize=256)
def fused_kind(spec: NormSpec) -> str | None:
    """The native torch kernel whose fields coincide with ``spec`` (sigma folded into eps), or None.

    ``"bn"`` (A = B = batch+space), ``"ln"`` (channel+space), ``"gn"`` (channel+space in groups),
    ``"in"`` (space), ``"rms"`` (no centring, B = channel+space).
    """
    if spec.windowed or spec.learn_sigma or spec.power != 0.5 or spec.sup_scale != 1.0 or spec.floor is not None:
        return None
    A, B = spec.sum_axes, spec.sup_axes
    if spec.groups > 1:
        return "gn" if A == B == {"channel", "space"} else None
    if A == B == {"batch", "space"}:
        return "bn"
    if A == B == {"channel", "space"}:
        return "ln"
    if A == B == {"space"}:
        return "in"
    if not A and {"channel", "space"} == B:
        return "rms"
    return None


def _check_args(num_features, spec, momentum, alpha, impl: str, running_stats: str, process_group) -> int:
    """DivisiveNorm's argument checks (all but track_running_stats'): returns num_features as an int."""
    if not is_int(num_features) or num_features < 1:
        raise ValueError(f"num_features: must be an integer >= 1, got {_show(num_features)}")
    num_features = int(num_features)
    if not isinstance(spec, NormSpec):
        raise ValueError(f"spec: expected a NormSpec, got {type(spec).__name__}; use dnlib.make_norm for names")
    if num_features % spec.groups:
        raise ValueError(f"num_features: {num_features} is not divisible by groups={spec.groups}")
    if momentum is not None and not (is_real(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum: must be a number in [0, 1] or None, got {_show(momentum)}")
    if not is_real(alpha) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha: the L1 weight must be a finite number >= 0, got {_show(alpha)}")
    if impl not in IMPLS:
        raise ValueError(f"impl: got {impl!r}; allowed values are {list(IMPLS)}")
    if running_stats not in RUNNING_STATS:
        raise ValueError(f"running_stats: got {running_stats!r}; allowed values are {list(RUNNING_STATS)}")
    if impl == "fused" and running_stats == "tf" and fused_kind(spec) == "bn":
        raise ValueError("impl: 'fused' (F.batch_norm) stores torch's running statistics, not "
                         "running_stats='tf'; use impl='auto' or 'general'")
    if impl == "fused" and fused_kind(spec) is None:
        raise ValueError(f"impl: 'fused' needs a spec with a native kernel, and {spec} has none")
    if impl == "band" and not DF.band_supported(spec):
        raise ValueError(f"impl: 'band' needs fields that pool only 'channel', with a channel window, and {spec} "
                         f"has other fields or no window")
    if impl == "triton":
        from . import triton_dn
        triton_dn.check(spec)
    _check_group(process_group)
    return num_features


def _check_track_running_stats(track_running_stats: bool | None, spec: NormSpec) -> bool:
    """Resolve DivisiveNorm's ``track_running_stats`` (``None``: iff a field pools the batch) and check it fits spec."""
    if track_running_stats is None:
        track_running_stats = spec.pools_batch
    elif track_running_stats and not spec.pools_batch:
        raise ValueError(f"track_running_stats: running statistics need a field that pools 'batch', but "
                         f"{spec} pools none; pass track_running_stats=False or None")
    if track_running_stats and spec.groups > 1:
        raise ValueError(f"track_running_stats: not supported with groups={spec.groups}; pass False")
    if track_running_stats:
        for name, axes in (("sum_axes", spec.sum_axes), ("sup_axes", spec.sup_axes)):
            if "batch" in axes and ("channel" in axes or dict(spec.window(name[:3]))):
                raise ValueError(f"track_running_stats: running statistics are per channel, so a field that "
                                 f"pools 'batch' must not pool 'channel' or carry windows; {name}="
                                 f"{sorted(axes)} does; pass track_running_stats=False")
    return bool(track_running_stats)


class DivisiveNorm(nn.Module):
    r"""Divisive normalization (Ren et al., *Normalizing the Normalizers*, ICLR 2017, arXiv:1611.04520).

    .. math::

        v = x - \mathbb{E}_{A}[x], \qquad
        y = \frac{v}{\left(\sigma^2 + \epsilon + s\,\mathbb{E}_{B}[v^2]\right)^{p}} * \gamma + \beta

    The summation field ``A`` and the suppression field ``B`` are given by ``spec`` (a :class:`NormSpec`): the
    axes each pools (``batch``, ``channel``, ``space``), optional local windows, ``sigma``, ``eps``, the
    exponent ``p`` and the scale ``s``. Means over a field are biased (divide by the number of elements).
    ``gamma``/``beta`` are per-channel (``weight``/``bias``, shape ``(C,)``), as in ``nn.BatchNorm``.

    When a field pools the batch and ``track_running_stats`` is on, the module keeps ``running_mean`` (of
    E_A[x]) and ``running_var`` (of E_B[v^2], stored *unbiased*, i.e. times n/(n-1) with n the field size) and
    uses them in eval mode, exactly as ``nn.BatchNorm``: ``momentum`` is the weight of the new batch
    (``None``: cumulative average), ``num_batches_tracked`` counts the updates. This needs a per-channel field
    (the batch field must not pool ``channel``, and pools ``space`` when the input has spatial dims).
    ``running_stats="tf"`` keeps them as TensorFlow's ``ExponentialMovingAverage`` of ``tf.nn.moments`` does
    (the authors' ``batch_norm``): both start at 0 and ``running_var`` averages the *biased* variance,
    ``ema = (1 - momentum) * ema + momentum * x`` (momentum 0.1 = their decay 0.9); such a module takes the
    general path (``F.batch_norm`` would store the unbiased variance).

    Where the spec coincides with a native kernel (``F.batch_norm``, ``F.group_norm`` (also for LN: one group),
    ``F.instance_norm``, ``F.rms_norm``) the module dispatches to it with ``eps = sigma^2 + eps``
    (``impl="auto"``); ``impl="general"`` forces the general path, which handles every spec.
    ``impl="compile"`` runs the general path's math as plain ops through ``torch.compile`` (one compiled
    function per spec and input rank; Inductor fuses forward and backward into a few kernels: for GPU steps
    bound by kernel launches, e.g. inside a CUDA graph). The first call compiles (seconds to a minute); a
    later input size recompiles once with dynamic sizes; past Dynamo's recompile limit, inputs run the general
    path (one warning). Evaluation (``eval()``) uses the uncompiled general path. The compiled backward is not
    differentiable (AOTAutograd raises on double backward): use the general path for gradient penalties.
    ``impl="band"`` computes specs whose fields pool only ``channel`` with a channel window (1-D DN, LRN) as
    plain ops with each window mean one product with a banded ``(C, C)`` matrix
    (:func:`dnlib.norms.functional.band_divisive_norm`, the same operator); ``impl="auto"`` takes it for such specs on
    ``(N, C)`` inputs with ``C <= BAND_MAX_FEATURES`` (256), where it is the faster path (the RNN cells).
    ``impl="triton"`` runs fused Triton kernels, forward and backward (:mod:`dnlib.norms.triton_dn`; ``pip install
    dnlib[triton]``), for 4-D inputs and the specs of :func:`dnlib.norms.triton_dn.supported` (per-example fields over
    all channels or a channel window x a k x k window: the CIFAR/SR DN layers, sigma fixed or learned, the L1
    term); on CPU only in Triton's interpreter (``TRITON_INTERPRET=1``, for tests). Double backward raises.
    ``impl="auto"`` never takes it: its GPU speed has not been measured against the general path yet.
    On the CPU ``impl="auto"`` follows the measured table :data:`dnlib.norms.windowed.AUTO`: windowed specs on
    inputs of at least ``windowed.LARGE`` (2^20) elements run Inductor-compiled forward and backward kernels (the
    general path's math, equal to it; exact double backward; the first call compiles, 10-60 s per spec; a failure
    to compile warns once and takes the general path; a grad-free call (evaluation) compiles a spec only once the
    compile has paid for itself, ``windowed.INFERENCE_REPAY``; ``DNLIB_COMPILE=0`` in the environment turns
    compiling off, for short runs and tests), and ``rms`` takes the general path (faster than ``F.rms_norm`` there).

    ``alpha > 0`` adds the sparse (L1) regularizer of PAPER.md §2 at this site: each forward that can be
    backpropagated (training mode, gradients on: not under ``no_grad`` or ``inference_mode``; not a recompute
    inside a backward, as activation checkpointing's) records
    ``alpha * mean|x - E_A[x]|`` (gradients flow through the mean); :func:`dnlib.sparse_penalty` collects and
    clears the terms. Costs nothing when ``alpha == 0``. A term is dropped when no loss can use it any more: its
    forward was backpropagated without it (a warning), or at the next forward nothing refers to its forward's
    output, so pending terms hold at most the caller's graphs and the last forward's (see :mod:`dnlib.norms.sparse`).
    ``nn.DataParallel`` replicas add their terms to this module (weighted by their share of the batch).

    ``torch.compile`` of a model with these modules traces them without graph breaks (``fullgraph=True``), also
    with ``alpha > 0``: while traced, the general path runs as plain ops (the math of ``impl="compile"``) and
    the L1 term is linked to the module for :func:`dnlib.sparse_penalty` (collect it every step). Exceptions: a
    process group in training mode (its collectives) and ``momentum=None`` (a Python float of
    ``num_batches_tracked``, as in torch's BN) break the graph; ``impl="triton"`` is untested there.

    Half-precision inputs are normalized in float32 and returned in their own dtype; a module cast to half
    precision (``.half()``) keeps working, its running statistics updated in float32 and stored in its dtype.
    The running statistics are made in ``dtype`` (``None``: torch's default dtype, as ``nn.BatchNorm``'s buffers),
    in float32 when ``dtype`` is a half-precision one.
    ``spec.eps=None`` means ``torch.finfo`` of the computation's dtype (``nn.RMSNorm``'s default; the ``rms``
    preset). Empty batches give empty outputs; complex and integer inputs are refused; a summation field over
    ``space`` alone (instance norm, ``in``) refuses inputs with one position per (sample, channel), ``(N, C)`` or
    ``1 x 1``, in training and eval, as torch's InstanceNorm does (its output would be all zeros).

    Under ``torch.distributed`` (DDP), ``process_group`` synchronizes the fields that pool the batch in training
    mode: their statistics are those of all the group's examples (the processes' batch sizes may differ), the
    backward all-reduces the matching gradient sums, the L1 term is the whole-batch value on every process, and
    the running statistics are those of one process seeing the whole batch. ``bn`` then leaves ``F.batch_norm``
    for the general path; the compiled path is not used. Evaluation mode, fields that pool only within an
    example, and an uninitialized or one-process group communicate nothing (exactly the unsynchronized module).
    Double backward raises under synchronization. See :func:`convert_sync_norm`.

    TorchScript: ``torch.jit.script`` raises a clear error (the spec is a Python dataclass and the general path
    a Python ``autograd.Function``, which TorchScript cannot compile); ``torch.jit.trace`` of a model in
    evaluation mode works.

    Args:
        num_features: C, the number of channels (units) of the input.
        spec: the fields; see :class:`NormSpec`. Use :func:`dnlib.make_norm` for named presets.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0).
        bias: with ``affine``, whether to learn the bias too (``nn.RMSNorm`` has none).
        momentum: weight of the new batch in the running statistics (``None``: cumulative average).
        track_running_stats: ``None`` (default) tracks them iff a field pools the batch.
        alpha: weight of the sparse L1 penalty at this site.
        impl: ``"auto"``, ``"general"``, ``"fused"``, ``"compile"``, ``"band"`` or ``"triton"``.
        process_group: ``None`` (default: no synchronization), a ``torch.distributed`` process group, or
            ``"world"`` (the default group, looked up at each forward) over which batch statistics are pooled.
        running_stats: ``"torch"`` (default: ``running_var`` starts at 1 and stores the unbiased variance) or
            ``"tf"`` (both start at 0, biased variance: TensorFlow's moving averages, the authors' code).

    Shape:
        - Input: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``.
        - Output: same shape as the input.

    Examples::

        >>> dn = DivisiveNorm(32, NormSpec(sum_axes="channel,space", sup_axes="channel,space",
        ...                                 sum_window={"space": 3}, sup_window={"space": 3}, sigma=0.5),
        ...                   affine=False)
        >>> y = dn(torch.randn(8, 32, 16, 16))
    """

    def __init__(self, num_features: int, spec: NormSpec, affine: bool = True, momentum: float | None = 0.1,
                 track_running_stats: bool | None = None, alpha: float = 0.0, impl: str = "auto",
                 bias: bool = True, device=None, dtype=None, process_group=None, running_stats: str = "torch"):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        num_features = _check_args(num_features, spec, momentum, alpha, impl, running_stats, process_group)
        track_running_stats = _check_track_running_stats(track_running_stats, spec)
        self.num_features = num_features
        self.spec = spec
        self.affine = affine
        self.momentum = None if momentum is None else float(momentum)
        self.track_running_stats = bool(track_running_stats)
        self.alpha = float(alpha)
        self.impl = impl
        self.running_stats = running_stats
        self.process_group = process_group
        self._l1 = _L1Terms()           # shared with nn.DataParallel replicas (see _replicate_for_data_parallel)
        self._replica_of: tuple | None = None   # (group, index) on a replica
        self._replicas: _ReplicaGroup | None = None
        self._l1_want = False           # whether this forward records an L1 term (see forward)
        self._l1_slot = None            # this forward's (term, batch size), recorded at the end of forward
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if spec.learn_sigma:
            self.sigma = nn.Parameter(torch.empty((), **factory))
        else:
            self.register_parameter("sigma", None)
        if self.track_running_stats:
            # the parameters' dtype (None: torch's default, as nn.BatchNorm's buffers), float32 for a half-precision one
            stat_dtype = torch.get_default_dtype() if dtype is None else dtype
            stat = {"device": device,
                    "dtype": stat_dtype if stat_dtype in (torch.float32, torch.float64) else torch.float32}
            self.register_buffer("running_mean", torch.zeros(num_features, **stat)
                                 if "batch" in spec.sum_axes else None)
            self.register_buffer("running_var", torch.ones(num_features, **stat)
                                 if "batch" in spec.sup_axes else None)
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    # --- state ----------------------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            if self.running_mean is not None:
                self.running_mean.zero_()
            if self.running_var is not None:
                self.running_var.fill_(0 if self.running_stats == "tf" else 1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        if self.sigma is not None:
            with torch.no_grad():
                self.sigma.fill_(self.spec.sigma)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, {self.spec!r}, affine={self.affine}"
        if self.track_running_stats:
            s += f", momentum={self.momentum}, track_running_stats=True"
        if self.alpha:
            s += f", alpha={self.alpha:g}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        if self.running_stats != "torch":
            s += f", running_stats={self.running_stats!r}"
        if self.process_group is not None:
            s += ", process_group=" + (repr(self.process_group) if isinstance(self.process_group, str) else "<group>")
        return s

    @property
    def fused(self) -> str | None:
        """The native kernel this module dispatches to (None: the general or compiled path)."""
        if self.impl in ("general", "compile", "triton"):
            return None
        kind = fused_kind(self.spec)
        return None if kind == "bn" and self.running_stats == "tf" else kind

    def pop_penalty(self) -> torch.Tensor | None:
        """Return the sum of the pending L1 terms (None if none) and clear them.

        Pending are the terms of the training forwards since the last call that a backward can still use (see
        :mod:`dnlib.norms.sparse`): a forward whose output is gone, or that has been backpropagated without its term (a
        warning says so), has none. Terms added by ``nn.DataParallel`` replicas of this module are included, each
        replica's weighted by its share of the batch (the one-device value)."""
        return self._l1.pop(self._where())

    def record_penalty(self, y: torch.Tensor, term: torch.Tensor, n: int) -> torch.Tensor:
        """Make ``term``, this site's L1 term computed by a caller that fuses the site's math (the LSTM cells'
        fused sequence path, :mod:`dnlib.models.rnn_fused`), pending for :func:`dnlib.sparse_penalty` as a
        forward's own term, tied to that caller's output ``y``; returns ``y`` (tapped when it requires grad). ``n``:
        the rows the term pools (the weight of an ``nn.DataParallel`` replica's term). The caller checks that a
        term is wanted (``alpha``, training mode, gradients on)."""
        return self._record(y, term, n)

    def clear_penalty(self) -> None:
        """Drop the pending L1 terms (and their graphs) without looking at them."""
        self._l1.clear()

    def _where(self) -> str:
        return f"DivisiveNorm({self.num_features}, alpha={self.alpha:g})"

    def _add_penalty(self, centred: torch.Tensor, sync=None) -> None:
        self._add_term(self.alpha * DF.sync_mean(centred.abs(), sync), centred.shape[0])

    def _add_term(self, term: torch.Tensor, n: int) -> None:
        if self._l1_want:  # (a subclass's path may compute a term in any training forward)
            self._l1_slot = (term, n)

    def _record(self, y: torch.Tensor, term: torch.Tensor, n: int) -> torch.Tensor:
        """Make ``term`` pending for :func:`dnlib.sparse_penalty` and return ``y`` (tapped when it requires grad, so
        that the site can tell what became of the forward: :class:`_OutputTap`). While ``torch.compile`` traces, the
        term is linked to the store instead (:class:`_Link`), with no graph break."""
        if torch.compiler.is_compiling():
            self._l1.compiled = _Link(term, n, self._replica_of, self._l1.compiled)
            return y
        group, index = self._replica_of if self._replica_of is not None else (None, 0)
        token = _transform_token()
        if torch._C._current_graph_task_id() != -1:  # (as torch.utils.checkpoint tells a backward)
            return self._recomputed(y, token)
        if token is not None:  # a torch.func transform: no tap (its wrapped tensors keep no graph to watch)
            self._l1.add(_Pending(term, n, group, index, weakref.ref(y), False, token), self._where())
            return y
        if y.requires_grad:
            y = _OutputTap.apply(y)
            output, tapped = weakref.ref(y.grad_fn), True
        else:  # nothing to backpropagate (no input or parameter requires grad): the term is a value
            output, tapped = weakref.ref(y), False
        self._l1.add(_Pending(term, n, group, index, output, tapped), self._where())
        return y

    def _recomputed(self, y: torch.Tensor, token) -> torch.Tensor:
        """A forward run inside a backward: activation checkpointing recomputing it. Its term is not kept (no loss
        can add a term made during its own backward: it stayed pending and broke the next step's backward). Under
        ``use_reentrant=False`` the forward itself recorded the term, and the output is tapped as it was (the
        checkpoint compares the tensors the two runs save); under ``use_reentrant=True`` the forward ran under
        ``no_grad`` and recorded none, so the site's term is lost: said once per site."""
        if not self._l1.reentrant_warned and _reentrant_checkpoint():
            self._l1.reentrant_warned = True
            warnings.warn(
                f"{self._where()}: torch.utils.checkpoint with use_reentrant=True runs this site's forward under "
                f"no_grad and recomputes it inside the backward, so its L1 term (alpha > 0) cannot be collected: "
                f"dnlib.sparse_penalty(model) has no term from these forwards (the recomputed one is dropped). Use "
                f"checkpoint(..., use_reentrant=False), which records the term in the forward as without "
                f"checkpointing.", stacklevel=2)
        return _OutputTap.apply(y) if token is None and y.requires_grad else y

    def _replicate_for_data_parallel(self):
        # nn.DataParallel's replicate(): the replica shares self._l1; remember which replica set it belongs to
        replica = super()._replicate_for_data_parallel()
        if self._replicas is None or self._replicas.started:
            self._replicas = _ReplicaGroup()
        replica._replica_of = (self._replicas, self._replicas.count)
        self._replicas.count += 1
        return replica

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "DivisiveNorm cannot be compiled by torch.jit.script: its configuration is a NormSpec (a frozen Python "
            "dataclass), its general path a Python torch.autograd.Function and its L1 penalty Python state, none of "
            "which TorchScript can represent. For a TorchScript graph use torch.jit.trace(model.eval(), example) "
            "(evaluation mode; tested for the bn, dn and rms presets).")

    # --- forward --------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if not x.is_floating_point():  # complex, integer or bool
            raise TypeError(f"input: expected a real floating-point tensor, got dtype {x.dtype}")
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"input: expected shape (N, C), (N, C, L) or (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"input: has {x.shape[1]} channels at dim 1, but num_features={self.num_features}")
        if self.spec.sum_axes == {"space"} and x.shape[0] and math.prod(x.shape[2:]) == 1:
            # (as torch's InstanceNorm, in eval too: no running statistics; an empty batch passes, empty output)
            raise ValueError(f"input: instance norm ('in': a summation field over 'space' alone, {self.spec}) "
                             f"needs more than 1 spatial position per (sample, channel), and input of shape "
                             f"{tuple(x.shape)} has one, so every output would be 0 (torch's InstanceNorm raises "
                             f"'Expected more than 1 spatial element'); give it (N, C, L) or (N, C, H, W) inputs with "
                             f"more than one position, or normalize (N, C) features with 'ln' or 'bn'")
        if self.track_running_stats and x.dim() > 2:
            for axes in (self.spec.sum_axes, self.spec.sup_axes):
                if "batch" in axes and "space" not in axes:  # noqa: SIM102 (runs only when tracking)
                    raise ValueError(f"input: running statistics are per channel, but the field {sorted(axes)} "
                                     f"does not pool 'space' of input {tuple(x.shape)}; add 'space' to the field")

    def _check_transform_stats(self) -> None:
        """Under a ``torch.func`` transform, training with running statistics updates them in place: refuse (as
        torch's BatchNorm does) unless the buffers come from the running transform itself (stacked with
        ``torch.func.stack_module_state`` and passed through ``vmap(functional_call)``, as for torch's BN)."""
        level = DF.transform_level()
        bufs = [b for b in (self.running_mean, self.running_var, self.num_batches_tracked) if b is not None]
        if level is not None and all(torch._C._functorch.maybe_get_level(b) == level for b in bufs):
            return
        if level is None:  # forward-mode AD alone (dual tensors): the update below takes the primal values
            return
        raise RuntimeError(
            f"{self._where()}: training with running statistics (track_running_stats=True) updates them in place, "
            f"which a torch.func transform (vmap, grad, jvp, jacrev, hessian) cannot do to buffers it does not "
            f"transform; torch's BatchNorm refuses the same. Use eval mode (the running statistics are then "
            f"constants), pass the buffers through the transform (torch.func.stack_module_state + vmap over "
            f"functional_call), or turn tracking off with dnlib.replace_all_batch_norm_modules_(model) (brn and bcn "
            f"need them: eval mode or stacked buffers only).")

    def _momentum(self) -> float:
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalize ``x``; ``mask`` (optional, broadcastable to ``x`` with one size per dimension, e.g.
        ``(N, 1, L)``; True = keep) restricts every field's statistics to the kept units (padded sequences;
        :mod:`dnlib.norms.masked`)."""
        self._check_input(x)
        if mask is not None:
            mask = self._check_mask(x, mask)
        in_dtype = x.dtype
        if in_dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and self.track_running_stats:
            if not torch.compiler.is_compiling() and DF.under_transform():
                self._check_transform_stats()
            self.num_batches_tracked.add_(1)
        # An L1 term only for a forward that can be backpropagated: training mode, gradients on (not under no_grad
        # or inference_mode). It is recorded at the end (_record).
        self._l1_want = bool(self.alpha) and self.training and torch.is_grad_enabled()
        self._l1_slot = None
        sync = self._sync(x)
        kind, auto = self._paths(x, mask is None and sync is None)
        if mask is not None:  # masked statistics: plain ops (dnlib.norms.masked)
            y = self._forward_masked(x, mask, use_batch_stats)
        elif sync is not None:  # batch statistics over a process group: the general path (even for an empty batch)
            y = self._forward_general(x, use_batch_stats, sync)
        elif (self.impl == "compile" and self.training and x.numel() and not torch.compiler.is_compiling()
              and not DF.under_transform()):
            # (eval, inside a torch.compile'd model or under torch.func transforms: the general path, plain ops there)
            y = self._forward_compiled(x)
        elif self.impl == "triton" and x.numel() and not DF.under_transform():  # (transformed: the general path)
            y = self._forward_triton(x)
        elif kind is not None:
            y = self._forward_fused(x, kind, use_batch_stats)
        elif self._band(x) and not torch.compiler.is_compiling():  # (traced: the general path's plain ops)
            y = self._forward_band(x)
        elif auto == "compiled" and not self.track_running_stats:
            y = self._forward_windowed(x)
        elif x.numel() == 0:  # an empty batch: an empty output (as torch's layers), no statistics to compute
            y = self._affine(x.clone(), x.dtype)
        else:
            y = self._forward_general(x, use_batch_stats)
        y = y if y.dtype == in_dtype else y.to(in_dtype)
        slot, self._l1_slot, self._l1_want = self._l1_slot, None, False
        if slot is not None:
            y = self._record(y, *slot)
        return y

    def _affine(self, y: torch.Tensor, dtype) -> torch.Tensor:
        if not self.affine:
            return y
        shape = (1, -1) + (1,) * (y.dim() - 2)
        if self.bias is None:
            return y * self.weight.to(dtype).view(shape)
        return torch.addcmul(self.bias.to(dtype).view(shape), y, self.weight.to(dtype).view(shape))

    def _check_batch(self, x: torch.Tensor) -> None:
        """As torch's batch norm: a per-channel field that pools the batch needs more than one value whenever batch
        statistics are used (training, or no running statistics); an empty batch passes (empty output)."""
        if not (self.training or not self.track_running_stats):
            return
        for axes in (self.spec.sum_axes, self.spec.sup_axes):
            if "batch" in axes and "channel" not in axes:
                n = x.shape[0] * (math.prod(x.shape[2:]) if "space" in axes else 1)
                if n == 1:
                    raise ValueError(f"input: expected more than 1 value per channel when training with batch "
                                     f"statistics, got input of shape {tuple(x.shape)}")

    def _sync(self, x: torch.Tensor) -> DF.BatchSync | None:
        """The process group pooling this training forward's batch statistics, or None (no communication)."""
        pg = self.process_group
        if pg is None or not self.training or not self.spec.pools_batch:
            return None
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = None if isinstance(pg, str) else pg
        if (dist.get_world_size() if group is None else group.size()) < 2:
            return None
        if DF.under_transform():
            raise RuntimeError(f"{self._where()}: batch statistics synchronized over a process group cannot run "
                               f"under torch.func transforms or forward-mode AD (the collectives see no batched or "
                               f"dual tensors); run the transform in eval mode or without process_group")
        return DF.BatchSync(group, x.shape[0])

    def _update_running(self, x: torch.Tensor, mu: torch.Tensor | None, s: torch.Tensor | None,
                        batch: int | None = None, count: torch.Tensor | None = None) -> None:
        """Fold the batch statistics (grouped layout; None or empty when not computed) into the running ones.
        ``batch``: the number of examples they pool (all processes' under sync; default ``x.shape[0]``).
        ``count``: with a mask, the kept values per channel ``(C,)`` (the unbiased factor's n; a channel with
        none keeps its running statistics)."""
        batch = x.shape[0] if batch is None else batch
        if not (self.training and self.track_running_stats) or batch * math.prod(x.shape[1:]) == 0:
            return  # (an empty batch leaves them as they are, as torch's batch norm does)
        with torch.no_grad():
            m = self._momentum()
            keep = None if count is None else count > 0
            for buf, val in ((self.running_mean, mu), (self.running_var, s)):
                if buf is None or val is None or not val.numel():
                    continue
                val = val.reshape(-1)
                if buf is self.running_var and self.running_stats != "tf":  # tf: biased
                    n = batch * math.prod(x.shape[2:]) if count is None else count
                    val = val * (n / (n - 1) if count is None else torch.where(n > 1, n / (n - 1).clamp_min(1), 1))
                val = val.to(buf.dtype)
                buf.lerp_(val if keep is None else torch.where(keep, val, buf), m)

    def _check_mask(self, x: torch.Tensor, mask) -> torch.Tensor:
        from . import masked
        if self._sync(x) is not None:
            raise ValueError("mask: masked statistics are not synchronized over a process group; run the masked "
                             "layer without one (dnlib.convert_sync_norm) or in evaluation mode")
        if type(self)._forward_masked is DivisiveNorm._forward_masked \
                and type(self)._forward_general is not DivisiveNorm._forward_general:
            raise ValueError(f"mask: {type(self).__name__} does not take a mask")
        masked.check_spec(self.spec)
        return masked.check_mask(mask, x)

    def _forward_masked(self, x: torch.Tensor, m: torch.Tensor, use_batch_stats: bool) -> torch.Tensor:
        """The forward with masked field statistics (``m``: the 0/1 mask expanded to ``x``)."""
        from . import masked
        stat_shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        mean = sup = None
        if not use_batch_stats:
            if self.running_mean is not None:
                mean = self.running_mean.to(x.dtype).view(stat_shape)
            if self.running_var is not None:
                sup = self.running_var.to(x.dtype).view(stat_shape)
        y, v, mu, s = masked.masked_divisive_norm_stats(x, self.spec, m, self.sigma, mean, sup)
        if self.training and self.track_running_stats:  # (per-channel fields: the value at one unit each)
            one = (0, slice(None)) + (0,) * (x.dim() - 2)
            self._update_running(x, None if mean is not None or mu is None else mu.detach()[one],
                                 None if sup is not None or s is None else s.detach()[one],
                                 count=masked.field_count(m, self.spec.sup_axes if self.spec.divide
                                                          else self.spec.sum_axes))
        if self._l1_want:
            self._add_term(self.alpha * masked.masked_mean(v.abs(), m, tuple(range(x.dim()))).reshape(()),
                           x.shape[0])
        return self._affine(y, x.dtype)

    def _forward_general(self, x: torch.Tensor, use_batch_stats: bool, sync=None) -> torch.Tensor:
        spec = self.spec
        nsp = x.dim() - 2
        stat_shape = (1, 1, self.num_features) + (1,) * nsp  # grouped layout, G == 1 when tracking
        mean = sup = None
        if not use_batch_stats:
            if self.running_mean is not None:
                mean = self.running_mean.to(x.dtype).view(stat_shape)
            if self.running_var is not None:
                sup = self.running_var.to(x.dtype).view(stat_shape)
        if sync is None:
            self._check_batch(x)
        y, v, mu, s = DF.divisive_norm_stats(x, spec, self.sigma, mean, sup,
                                              need_v=self._l1_want, sync=sync)
        if sync is not None:  # the global batch size is known now (the same on every process)
            self._check_batch(torch.empty((sync.global_n,) + tuple(x.shape[1:]), device="meta"))
        self._update_running(x, mu, s, None if sync is None else sync.global_n)
        if self._l1_want:
            centred = v if v.numel() else (y if spec.centre else x)
            self._add_penalty(centred, sync)
        return self._affine(y, x.dtype)

    def _band(self, x: torch.Tensor) -> bool:
        """Whether this forward takes the band path (forced, or chosen for a small 2-D input)."""
        if self.impl == "band":
            return True
        return (self.impl == "auto" and x.dim() == 2 and self.num_features <= BAND_MAX_FEATURES
                and DF.band_supported(self.spec))

    def _forward_band(self, x: torch.Tensor) -> torch.Tensor:
        y, v = DF.band_divisive_norm(x, self.spec, self.sigma)
        if self._l1_want:
            self._add_penalty(v)
        return self._affine(y, x.dtype)

    def _paths(self, x: torch.Tensor, plain: bool) -> tuple:
        """``(kind, auto)``: the native kernel this forward may take (None: none) and ``impl="auto"``'s path by
        :data:`dnlib.norms.windowed.AUTO` (``"native"``, ``"general"``, ``"compiled"``), None for another impl, an
        empty input, a subclass with paths of its own (GDN, ...), or not ``plain`` (a mask or a process group)."""
        kind = self.fused
        if kind == "in" and not x.numel():
            kind = None  # F.instance_norm refuses an empty batch of single positions, and fails on one with weights
        cls = type(self)
        if (not plain or self.impl != "auto" or not x.numel()
                or cls._forward_general is not DivisiveNorm._forward_general
                or cls._forward_fused is not DivisiveNorm._forward_fused):
            return kind, None
        auto = windowed.choice(self.spec, kind, x)
        # (rms on the CPU: the table measured the general path faster than the native kernel)
        return (None if auto == "general" else kind), auto

    def _forward_windowed(self, x: torch.Tensor) -> torch.Tensor:
        """``impl="auto"``'s compiled CPU path (:mod:`dnlib.norms.windowed`); the general path if it cannot run."""
        self._check_batch(x)
        out = windowed.compiled_norm(x, self.spec, self.sigma, self.alpha if self._l1_want else 0.0)
        if out is None:
            return self._forward_general(x, True)
        y, penalty = out
        if penalty is not None:
            self._add_term(penalty, x.shape[0])
        return self._affine(y, x.dtype)

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        sig = self.sigma if self.sigma is not None else self.spec.sigma
        sig2 = sig * sig if torch.is_tensor(sig) else float(sig) ** 2
        alpha = self.alpha if self._l1_want else 0.0
        y, penalty, mu, s = DF.compiled_divisive_norm(self.spec, x.dim() - 2)(x, sig2, alpha)
        self._update_running(x, mu, s)
        if penalty is not None:
            self._add_term(penalty, x.shape[0])
        return self._affine(y, x.dtype)

    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        from . import triton_dn
        want = self._l1_want
        y, l1 = triton_dn.divisive_norm(x, self.spec, self.sigma, l1=want)
        if want:  # alpha * mean|x - E_A[x]|, gradients through the kernels' backward
            self._add_term(l1 * (self.alpha / x.numel()), x.shape[0])
        return self._affine(y, x.dtype)

    def _forward_fused(self, x: torch.Tensor, kind: str, use_batch_stats: bool) -> torch.Tensor:
        spec = self.spec
        eps = spec.sigma ** 2 + spec.eps_for(x.dtype)
        w = self.weight.to(x.dtype) if self.affine else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        if self._l1_want:
            self._add_penalty(x - DF.field_mean(x, spec))
        if kind == "bn":
            m = 0.0 if not (self.training and self.track_running_stats) else self._momentum()
            rm, rv = self.running_mean, self.running_var
            if rm is None or rm.dtype == x.dtype:
                return F.batch_norm(x, rm, rv, w, b, use_batch_stats, m, eps)
            # running statistics in half precision (a model cast with .half()): update float copies, write back
            rm, rv = rm.to(x.dtype), rv.to(x.dtype)
            y = F.batch_norm(x, rm, rv, w, b, use_batch_stats, m, eps)
            if self.training:
                with torch.no_grad():
                    self.running_mean.copy_(rm)
                    self.running_var.copy_(rv)
            return y
        if kind == "gn" or kind == "ln":
            # LN over (C, *spatial) with per-channel affine is group norm with one group: native per-channel
            # weights, no expanded elementwise copies (and faster than F.layer_norm on CPU).
            return F.group_norm(x, spec.groups if kind == "gn" else 1, w, b, eps)
        if kind == "in":
            return F.instance_norm(x, None, None, w, b, True, 0.0, eps)
        shape = x.shape[1:]
        bshape = (-1,) + (1,) * (x.dim() - 2)
        if w is not None:
            w = w.view(bshape).expand(shape)
        if b is not None:
            b = b.view(bshape).expand(shape)
        y = F.rms_norm(x, shape, w, None if spec.eps is None and not spec.sigma else eps)  # kind == "rms"
        return y if b is None else y + b


def _check_group(process_group) -> None:
    if process_group is None or (isinstance(process_group, str) and process_group == "world"):
        return
    if isinstance(process_group, str) or not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
        raise ValueError(f"process_group: expected None, 'world' or a torch.distributed.ProcessGroup, got "
                         f"{process_group!r}")


def convert_sync_norm(module: nn.Module, process_group=None) -> nn.Module:
    """Synchronize the batch statistics of every :class:`DivisiveNorm` in ``module`` whose fields pool the batch
    (``bn``, ``bn-s``, ``bn-ms``, any spec with ``"batch"`` in a field) over ``process_group`` (``None``: the
    default group, looked up at each forward), as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for BN.

    The modules are changed in place (their ``process_group`` attribute; parameters, buffers and the state dict
    stay as they are) and ``module`` is returned. Sites that pool only within an example (``ln``, ``dn``, ``in``,
    ``gn``, ``rms``, ``lrn``, windowed DN) are left alone: they need no communication. Without an initialized
    process group (or with one process) the converted model computes exactly what it did before.

    Example::

        >>> dist.init_process_group("gloo")                      # e.g. under torchrun
        >>> model = DDP(dnlib.convert_sync_norm(model))
    """
    _check_group(process_group)
    for m in module.modules():
        if isinstance(m, DivisiveNorm) and m.spec.pools_batch:
            m.process_group = "world" if process_group is None else process_group
    return module


def _show(value) -> str:
    """A value for an error message (numpy scalars as their Python value)."""
    return repr(value.item() if hasattr(value, "item") and not torch.is_tensor(value) else value)
