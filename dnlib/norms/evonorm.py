r"""EvoNorm-S0 (and S0a) and EvoNorm-B0 (Liu, Brock, Simonyan, Le, NeurIPS 2020, arXiv:2004.02967), as timm's.

.. math::

    \text{S0:}\quad y = \frac{x\,\mathrm{sigmoid}(v x)}{d_{GN}(x)}\,\gamma + \beta, \qquad
    \text{B0:}\quad y = \frac{x}{\max\left(d_{BN}(x),\ v x + d_{IN}(x)\right)}\,\gamma + \beta

with ``d_F(x) = sqrt(E_F[(x - E_F[x])^2] + eps)`` the divisor of a Table-1 row whose summation and suppression
fields are both ``F``: GN's (channel groups x space, one example), BN's (batch x space, one channel; the running
variance in evaluation) and IN's (space, one channel of one example). Each divisor here is computed by
:func:`field_divisor` from a :class:`~dnlib.norms.spec.NormSpec`: ``EVONORM_S0_SPEC`` is ``gn`` (groups 32),
``EVONORM_B0_SPEC`` is ``bn``, ``EVONORM_B0_INSTANCE`` is ``in``.

What is *extra* beyond one (A, B, sigma) row:

- the numerator is ``x``, not the centred ``x - E_A[x]``: the centring happens inside the divisor only (separate
  centring for A and B: an empty A for the numerator, the field's own mean inside B);
- S0: a numerator nonlinearity ``x * sigmoid(v x)`` (SiLU with a learned per-channel slope ``v``);
- B0: the divisor is the max of two divisors (a generalised :attr:`NormSpec.floor`: ``lcn`` floors a local divisor
  at its mean, B0 floors ``v x + d_IN`` at ``d_BN``); B0 keeps BN's running variance (``running_var``, unbiased,
  ``momentum`` the weight of the new batch, as torch) and uses it in evaluation.

S0a (timm's ``EvoNorm2dS0a``) is S0 with eps 1e-3 that divides by ``d_GN`` also without ``v`` (``apply_act=False``).
``apply_act=False`` on S0 and B0 leaves only the affine, as timm's classes.

State dicts: ``weight``, ``bias``, ``v`` (S0, S0a, B0) and ``running_var`` (B0), the names and shapes of timm's
``EvoNorm2dS0``/``EvoNorm2dS0a``/``EvoNorm2dB0`` (``timm/layers/evo_norm.py``), so theirs load (strict). timm computes
the statistics in float32 also for float64 inputs (``x.float().var(...)``); these modules compute them in the
input's dtype (float32 for half inputs).

Under ``torch.distributed`` (:func:`~dnlib.norms.norm.convert_sync_norm`), B0's batch variance in training is that of
all the group's examples, forward and backward (the running variance too), as ``nn.SyncBatchNorm``; S0 pools
within an example and never communicates.
"""
from __future__ import annotations

import torch
from torch import nn

from . import functional as DF
from .norm import DivisiveNorm
from .spec import NormSpec, is_int, is_real

__all__ = ["EvoNorm2dS0", "EvoNorm2dB0", "field_divisor", "EVONORM_S0_SPEC", "EVONORM_B0_SPEC",
           "EVONORM_B0_INSTANCE"]

#: S0's divisor: GN's fields (32 groups, timm's eps 1e-5; S0a's 1e-3).
EVONORM_S0_SPEC = NormSpec("channel,space", "channel,space", groups=32, eps=1e-5)
#: B0's first divisor: BN's fields (its running variance in evaluation), timm's eps 1e-3.
EVONORM_B0_SPEC = NormSpec("batch,space", "batch,space", eps=1e-3)
#: B0's second divisor (beside ``v x``): IN's fields, the same eps.
EVONORM_B0_INSTANCE = NormSpec("space", "space", eps=1e-3)


def field_divisor(x: torch.Tensor, spec: NormSpec, sigma=None) -> torch.Tensor:
    r"""The divisor of eq. 4, ``d = (sigma^2 + eps + s E_B[v^2])^p`` with ``v = x - E_A[x]``, of the same shape as
    ``x``; plain differentiable ops (:func:`~dnlib.norms.functional.field_mean` twice), any spec without a floor.
    ``divisive_norm(x, spec) == (x - field_mean(x, spec)) / field_divisor(x, spec)``."""
    if spec.floor is not None or not spec.divide:
        raise ValueError(f"spec: field_divisor needs a suppression field and no floor, got {spec}")
    v = x - DF.field_mean(x, spec)
    b = spec.replace(sum_axes=spec.sup_axes, sum_window=dict(spec.sup_window), sum_weights=dict(spec.sup_weights),
                     sigma=0.0, learn_sigma=False, floor=None)
    sig = spec.sigma if sigma is None else sigma
    t = DF.field_mean(v * v, b) * spec.sup_scale + (spec.eps_for(x.dtype) + (sig * sig if torch.is_tensor(sig)
                                                                              else float(sig) ** 2))
    return t.sqrt() if spec.power == 0.5 else t.pow(spec.power)


class _SyncSumFn(torch.autograd.Function):
    """A per-channel sum (``keepdim``, over dims that include the batch) summed over the processes of a
    :class:`~dnlib.norms.functional.BatchSync`; backward: the gradient all-reduced the same way (every process's loss
    depends on the one global sum)."""

    @staticmethod
    def forward(ctx, local, sync):
        ctx.sync = sync
        return sync.all_reduce([local])[0]

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError(DF._NO_GRADGRAD)
        return ctx.sync.all_reduce([g.contiguous()])[0], None


def _batch_moments(x: torch.Tensor, sync) -> tuple:
    """Per-channel batch mean and biased variance over (N, *spatial), shapes ``(1, C, 1, ...)``, and the number of
    values each pools; with ``sync`` over all processes' examples (differentiable)."""
    dims = (0,) + tuple(range(2, x.dim()))
    if sync is None:
        n = x.numel() // x.shape[1]
        mu = x.mean(dims, keepdim=True)
        return mu, (x - mu).square().mean(dims, keepdim=True), n
    s1 = _SyncSumFn.apply(x.sum(dims, keepdim=True), sync)
    n = sync.numel(x, dims)
    if n < 2:
        raise ValueError(f"input: expected more than 1 value per channel when training with batch statistics, "
                         f"got {n} over the process group")
    mu = s1 / n
    return mu, _SyncSumFn.apply((x - mu).square().sum(dims, keepdim=True), sync) / n, n


class _EvoNorm(DivisiveNorm):
    """Shared parts: per-channel ``weight``, ``bias`` and ``v``; the half-precision cast; input checks."""

    def __init__(self, num_features: int, spec: NormSpec, apply_act: bool, impl: str, device, dtype, **kwargs):
        if impl not in ("auto", "general"):
            raise ValueError(f"impl: got {impl!r}; EvoNorm has one path, allowed values are ['auto', 'general']")
        if not isinstance(apply_act, bool):
            raise ValueError(f"apply_act: must be True or False, got {apply_act!r}")
        super().__init__(num_features, spec, affine=True, impl="general", device=device, dtype=dtype, **kwargs)
        self.impl = impl
        self.apply_act = apply_act
        if apply_act:
            self.v = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("v", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "v", None) is not None:  # (DivisiveNorm.__init__ calls this before v exists)
            nn.init.ones_(self.v)

    def _shape(self, x: torch.Tensor) -> tuple:
        return (1, -1) + (1,) * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        in_dtype = x.dtype
        if in_dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        sync = self._sync(x)  # (B0 in training under a process group; every process joins, even with no examples)
        y = self._normalize(x, sync) if x.numel() or sync is not None else x.clone()
        y = self._affine(y, x.dtype)
        return y if y.dtype == in_dtype else y.to(in_dtype)


class EvoNorm2dS0(_EvoNorm):
    r"""EvoNorm-S0: ``x * sigmoid(v x) / d_GN(x) * gamma + beta`` (see the module docstring); ``variant="s0a"``
    is timm's ``EvoNorm2dS0a`` (eps 1e-3 by default, divides without ``v`` too).

    Args:
        num_features: C.
        groups: GN's number of groups (timm's 32); ``group_size`` instead sets the channels per group.
        apply_act: the learned ``v`` and the nonlinearity; False: S0 is the affine only, S0a divides by ``d_GN``.
        eps: beside the group variance (None: 1e-5 for S0, 1e-3 for S0a, as timm).
        variant: ``"s0"`` or ``"s0a"``.
        impl: ``"auto"`` or ``"general"`` (one path).

    Shape: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` (timm's: 4-D); output the same.
    """

    def __init__(self, num_features: int, groups: int = 32, group_size: int | None = None, apply_act: bool = True,
                 eps: float | None = None, variant: str = "s0", impl: str = "auto", device=None, dtype=None):
        if variant not in ("s0", "s0a"):
            raise ValueError(f"variant: got {variant!r}; allowed values are ['s0', 's0a']")
        if group_size is not None:
            if not is_int(group_size) or group_size < 1 or num_features % group_size:
                raise ValueError(f"group_size: must be an integer >= 1 dividing num_features={num_features}, got "
                                 f"{group_size!r}")
            groups = num_features // group_size
        eps = (1e-5 if variant == "s0" else 1e-3) if eps is None else eps
        self.variant = variant
        super().__init__(num_features, EVONORM_S0_SPEC.replace(groups=groups, eps=eps), apply_act, impl, device,
                         dtype)

    @property
    def groups(self) -> int:
        return self.spec.groups

    @property
    def eps(self) -> float:
        return self.spec.eps

    def _normalize(self, x: torch.Tensor, sync=None) -> torch.Tensor:
        if self.v is None:
            return x if self.variant == "s0" else x / field_divisor(x, self.spec)
        v = self.v.to(x.dtype).view(self._shape(x))
        return x * (x * v).sigmoid() / field_divisor(x, self.spec)

    def _where(self) -> str:
        return f"EvoNorm2dS0({self.num_features})"

    def extra_repr(self) -> str:
        s = f"{self.num_features}, groups={self.groups}, eps={self.eps:g}"
        if self.variant != "s0":
            s += f", variant={self.variant!r}"
        return s + ("" if self.apply_act else ", apply_act=False")


class EvoNorm2dB0(_EvoNorm):
    r"""EvoNorm-B0: ``x / max(d_BN(x), v x + d_IN(x)) * gamma + beta`` (see the module docstring). In training
    ``d_BN`` is the batch's (gradients flow through it) and folds into ``running_var`` (unbiased); in evaluation
    it is ``sqrt(running_var + eps)``.

    Args:
        num_features: C.
        apply_act: the learned ``v`` and the normalization; False: the affine only (as timm's).
        momentum: weight of the new batch in ``running_var`` (timm's 0.1).
        eps: beside both variances (timm's 1e-3).
        impl: ``"auto"`` or ``"general"`` (one path).
        process_group: as :class:`~dnlib.norms.norm.DivisiveNorm` (see :func:`~dnlib.norms.norm.convert_sync_norm`).

    Buffers: ``running_var`` only (timm's: no ``running_mean``, no ``num_batches_tracked``).
    """

    def __init__(self, num_features: int, apply_act: bool = True, momentum: float = 0.1, eps: float = 1e-3,
                 impl: str = "auto", process_group=None, device=None, dtype=None):
        if momentum is None or not (is_real(momentum) and 0 <= momentum <= 1):   # (the base class would allow None)
            raise ValueError(f"momentum: must be a number in [0, 1] (EvoNorm-B0 keeps no batch count for a "
                             f"cumulative average, so not None), got {momentum!r}")
        super().__init__(num_features, EVONORM_B0_SPEC.replace(eps=eps), apply_act, impl, device, dtype,
                         momentum=momentum, track_running_stats=True, process_group=process_group)
        # timm's buffers: the BN field's running variance only (the numerator is not centred)
        self.register_buffer("running_mean", None)
        self.register_buffer("num_batches_tracked", None)
        self.instance = EVONORM_B0_INSTANCE.replace(eps=eps)

    @property
    def eps(self) -> float:
        return self.spec.eps

    def reset_running_stats(self) -> None:
        if getattr(self, "running_var", None) is not None:
            self.running_var.fill_(1)

    def _normalize(self, x: torch.Tensor, sync=None) -> torch.Tensor:
        if self.v is None:
            return x
        shape = self._shape(x)
        if self.training:
            _, var, n = _batch_moments(x, sync)
            if sync is None and n < 2:
                raise ValueError(f"input: expected more than 1 value per channel when training with batch "
                                 f"statistics, got input of shape {tuple(x.shape)}")
            with torch.no_grad():
                self.running_var.lerp_((var.detach().reshape(-1) * (n / (n - 1))).to(self.running_var.dtype),
                                       self.momentum)
        else:
            var = self.running_var.to(x.dtype).view(shape)
        left = (var + self.eps).sqrt()
        right = x * self.v.to(x.dtype).view(shape) + field_divisor(x, self.instance)
        return x / torch.maximum(left, right)

    def _where(self) -> str:
        return f"EvoNorm2dB0({self.num_features})"

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"
        if self.process_group is not None:
            s += ", process_group=" + (repr(self.process_group) if isinstance(self.process_group, str) else "<group>")
        return s + ("" if self.apply_act else ", apply_act=False")
