r"""Relatives of batch norm as Table-1 rows with one extra each: Batch Renorm, Switchable Norm, Batch-Channel Norm.

Each is a :class:`~dnlib.norms.norm.DivisiveNorm` whose ``spec`` is its batch field (``batch + space``, the BN row
of Table 1), so it keeps BN's ``weight``/``bias``/``running_mean``/``running_var``/``num_batches_tracked``,
:func:`~dnlib.norms.norm.convert_sync_norm` synchronizes it under DDP, :func:`~dnlib.convert_norms` converts to and
from it, and ``forward(x, mask=...)`` restricts its statistics to the kept units (:mod:`dnlib.norms.masked`).
What each adds to the two fields:

* :class:`BatchRenorm` (``brn``; Ioffe, NeurIPS 2017, arXiv:1702.03275): BN whose training output is corrected
  towards the running statistics, ``y = gamma (r v / d_B + d) + beta`` with ``v = x - mu_B``, ``d_B`` the batch
  divisor (``sqrt(var_B + eps)``), ``r = clip(d_B / d_run, 1/rmax, rmax)`` and ``d = clip((mu_B - mu_run) / d_run,
  -dmax, dmax)`` treated as constants (stop-gradient), ``d_run`` the running divisor (``sqrt(running_var + eps)``),
  both taken *before* this batch updates them. ``rmax = 1, dmax = 0`` is BN exactly; unclipped it is the running
  statistics' output with BN's gradient. Checked against chainer's ``F.batch_renormalization`` (which keeps the
  moving average of the unbiased variance, not the paper's of sigma; so does this module).
* :class:`SwitchNorm` (``sn``; Luo et al., ICLR 2019, arXiv:1806.10779): the mean and the variance are learned
  softmax mixtures of the IN, LN and BN fields' moments, ``mu = sum_k w_k mu_k``, ``var = sum_k w'_k var_k``,
  ``y = gamma (x - mu) / sqrt(var + eps) + beta``: a learned mixture of three fields.
* :class:`BatchChannelNorm` (``bcn``; Qiao et al. 2019, arXiv:1903.10520): two specs in sequence, BN with the
  running statistics (updated with this batch first, no gradient through them) and its per-channel affine, then
  the GN field with a per-*group* affine.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import masked as M
from .functional import under_transform
from .norm import DivisiveNorm
from .spec import NormSpec, is_real

BS, CS = "batch,space", "channel,space"
#: Ioffe 2017 §4's schedule of the clips: BN for 5000 batches, then rmax reaches 3 at 40000 and dmax 5 at 25000.
IOFFE_RELAX = (5000, 40000, 25000)
#: The fields :class:`SwitchNorm` mixes (the presets of those names), in the order of its ``mean_weight``/
#: ``var_weight`` (the reference's).
SN_FIELDS = ("in", "ln", "bn")
_NO_GRADGRAD = ("SwitchNorm: double backward (create_graph=True) is not supported with synchronized batch "
                "statistics (a process group in training mode); run it without the process group or in eval mode")


def _number(name: str, value, low: float, strict: bool = False) -> float:
    if not is_real(value) or not math.isfinite(value) or (value <= low if strict else value < low):
        raise ValueError(f"{name}: must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def _impl(impl: str, cls: str) -> None:
    if impl not in ("auto", "general"):
        raise ValueError(f"impl: got {impl!r}; {cls} has one path, allowed values are ['auto', 'general']")


def _view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel ``(C,)`` tensor as ``(1, C, 1, ...)`` for an input of ``ndim`` dims."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def _load_aliases(state_dict: dict, prefix: str, aliases: dict, module: DivisiveNorm) -> None:
    """Rename a reference's keys to ours in place (``load_state_dict`` hands each module its own copy), reshape
    its per-channel tensors to ``(C,)`` and add ``num_batches_tracked`` where it has none (as torch's BN loads
    a state dict of its version 1)."""
    for theirs, ours in aliases.items():
        if prefix + theirs in state_dict and prefix + ours not in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + theirs)
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = state_dict.get(prefix + key)
        if torch.is_tensor(t) and t.dim() > 1 and t.numel() == module.num_features:
            state_dict[prefix + key] = t.reshape(module.num_features)
    nbt = prefix + "num_batches_tracked"
    if module.num_batches_tracked is not None and nbt not in state_dict and prefix + "running_mean" in state_dict:
        state_dict[nbt] = torch.tensor(0, dtype=torch.long)


# ------------------------------------------------------------------------------------------- Batch Renorm
class BatchRenorm(DivisiveNorm):
    r"""Batch renormalization (Ioffe 2017): BN whose training output uses the running statistics through the
    clipped, stop-gradient corrections ``r`` and ``d`` (module docstring; Algorithm 1 of the paper).

    .. math::

        y = \gamma\left(\frac{x - \mu_B}{d_B}\, r + d\right) + \beta, \quad
        r = \left[\frac{d_B}{d_{run}}\right]_{1/r_{max}}^{r_{max}}, \quad
        d = \left[\frac{\mu_B - \mu_{run}}{d_{run}}\right]_{-d_{max}}^{d_{max}}

    with ``d_B = (sigma^2 + eps + var_B)^(1/2)`` (``var_B`` biased, over batch and space), ``d_run`` the same with
    ``running_var``, ``r``/``d`` constants for the gradient. Evaluation is BN with the running statistics. The
    running statistics are torch's (``momentum`` = weight of the new batch; ``running_var`` unbiased), updated after
    ``r``/``d`` are taken. The clips follow Ioffe's schedule (§4): BN (1, 0) for the first ``relax[0]`` training
    batches (counted by ``num_batches_tracked``), then linearly up to ``rmax`` at batch ``relax[1]`` and ``dmax`` at
    batch ``relax[2]`` (his 5000, 40000, 25000, the default); ``relax=None`` clips at ``rmax``/``dmax`` from the
    first batch (chainer's function). Corrections at the full clips from the start, while the running statistics
    are still far from the batch's, can make a network diverge (a ResNet-20 at lr 0.1 does in a few steps).

    Args:
        num_features: C.
        rmax: the clip of ``r`` (>= 1; 1 = no variance correction).
        dmax: the clip of ``d`` (>= 0; 0 = no mean correction).
        relax: ``(start, r_end, d_end)`` batches of the schedule above (``0 <= start < r_end, d_end``), or None.
        eps, sigma: as the ``bn`` preset (the divisor is ``sqrt(sigma^2 + eps + var)``).
        momentum, affine, alpha, device, dtype, process_group: as :class:`DivisiveNorm`.
        impl: ``"auto"`` or ``"general"`` (training takes the general path, evaluation ``F.batch_norm``).
        track_running_stats: must be True (batch renorm needs them).

    State dict: BN's names. chainer's ``BatchRenormalization`` link maps as ``gamma`` -> ``weight``, ``beta`` ->
    ``bias``, ``avg_mean`` -> ``running_mean``, ``avg_var`` -> ``running_var`` (its ``decay`` = 1 - momentum,
    its default eps 2e-5); :meth:`load_state_dict` takes those names too. chainer keeps no batch count that maps to
    ``num_batches_tracked`` (it starts at 0), so a loaded chainer model trained on with the default ``relax``
    starts Ioffe's schedule again (BN's clips for 5000 batches); ``relax=None`` clips at ``rmax``/``dmax`` at once,
    as chainer does.
    """

    def __init__(self, num_features: int, rmax: float = 3.0, dmax: float = 5.0, eps: float = 1e-5,
                 sigma: float = 0.0, momentum: float | None = 0.1, affine: bool = True, alpha: float = 0.0,
                 impl: str = "auto", track_running_stats: bool | None = True, relax: tuple | None = IOFFE_RELAX,
                 device=None, dtype=None, process_group=None):
        rmax, dmax = _number("rmax", rmax, 1.0), _number("dmax", dmax, 0.0)
        if relax is not None:
            ok = isinstance(relax, (tuple, list)) and len(relax) == 3 and all(isinstance(v, int) for v in relax)
            if not ok or not 0 <= relax[0] < min(relax[1], relax[2]):
                raise ValueError(f"relax: expected None or (start, r_end, d_end) batches with 0 <= start < r_end, "
                                 f"d_end, got {relax!r}")
            relax = tuple(relax)
        _impl(impl, "BatchRenorm")
        if track_running_stats is False:
            raise ValueError("track_running_stats: batch renorm corrects towards the running statistics, so it needs "
                             "them; got False (use the 'bn' preset for batch statistics in evaluation too)")
        super().__init__(num_features, NormSpec(BS, BS, sigma=sigma, eps=eps), affine=affine, momentum=momentum,
                         track_running_stats=True, alpha=alpha, impl=impl, device=device, dtype=dtype,
                         process_group=process_group)
        self.rmax, self.dmax, self.relax = rmax, dmax, relax
        self._rd = None  # this forward's (r, d), set when the batch statistics are folded in (_update_running)

    @property
    def fused(self) -> str | None:
        return None if self.training else super().fused  # training: the general path, whose hooks add r and d

    def _update_running(self, x, mu, s, batch=None, count=None) -> None:
        if self.training and mu is not None and s is not None and mu.numel() and s.numel():
            with torch.no_grad():
                self._rd = self._correction(mu.reshape(-1), s.reshape(-1))
        super()._update_running(x, mu, s, batch, count)

    def clips(self) -> tuple:
        """``(rmax, dmax)`` at this point of the schedule (``relax``): in training mode those of the batch just
        counted (``num_batches_tracked`` includes it), in evaluation mode those of the next one."""
        r, d = self._clips(torch.zeros((), dtype=torch.float64))
        return float(r), float(d)

    def _clips(self, like: torch.Tensor) -> tuple:
        """The clips as numbers or, on the schedule, tensors (no ``.item()``: per copy under ``torch.func.vmap``)."""
        if self.relax is None:
            return self.rmax, self.dmax
        seen = self.num_batches_tracked.to(like.dtype)
        done = (seen - 1).clamp_min(0) if self.training else seen
        start, r_end, d_end = self.relax
        ramp = lambda end: ((done - start) / (end - start)).clamp(0.0, 1.0)  # noqa: E731
        return 1.0 + (self.rmax - 1.0) * ramp(r_end), self.dmax * ramp(d_end)

    def _correction(self, mu: torch.Tensor, s: torch.Tensor) -> tuple:
        """``(r, d)`` of the batch statistics ``mu``, ``s`` (per channel) against the running ones, clipped."""
        spec = self.spec
        rmax, dmax = self._clips(mu)
        sig = self.spec.sigma if self.sigma is None else self.sigma.detach()
        base = sig * sig + spec.eps_for(mu.dtype)
        d_run = (base + spec.sup_scale * self.running_var.to(mu.dtype)) ** spec.power
        r = torch.clamp((base + spec.sup_scale * s) ** spec.power / d_run, 1.0 / rmax, rmax)
        d = torch.clamp((mu - self.running_mean.to(mu.dtype)) / d_run, -dmax, dmax)
        return r, d

    def _affine(self, y: torch.Tensor, dtype) -> torch.Tensor:
        rd, self._rd = self._rd, None
        if rd is not None:
            y = torch.addcmul(_view(rd[1].to(dtype), y.dim()), y, _view(rd[0].to(dtype), y.dim()))
        return super()._affine(y, dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        _load_aliases(state_dict, prefix, {"gamma": "weight", "beta": "bias", "avg_mean": "running_mean",
                                           "avg_var": "running_var"}, self)
        state_dict.pop(prefix + "N", None)  # chainer's fine-tuning counter
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _where(self) -> str:
        return f"BatchRenorm({self.num_features}, alpha={self.alpha:g})"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax:g}, dmax={self.dmax:g}, relax={self.relax}"


# ------------------------------------------------------------------------------------------- Switchable Norm
class _BatchSumFn(torch.autograd.Function):
    """Sums over the batch axis (keepdim) of every process's examples; backward: the all-reduced gradients."""

    @staticmethod
    def forward(ctx, sync, *parts):
        ctx.sync, ctx.shapes = sync, [p.shape for p in parts]
        return tuple(t.clone() for t in sync.all_reduce([p.sum(0, keepdim=True) for p in parts]))

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_GRADGRAD)
        grads = ctx.sync.all_reduce([g.contiguous() for g in grads])
        return (None, *[g.expand(shape) for g, shape in zip(grads, ctx.shapes)])


def _batch_sum(sync, *parts):
    if sync is None:
        return tuple(p.sum(0, keepdim=True) for p in parts)
    return _BatchSumFn.apply(sync, *parts)


def _pool(cnt, mean_in, var_in, total):
    """The moments of a union of ``(n, c)`` slices from theirs: count-weighted mean, total variance (within +
    between), pooled by ``total`` (a sum over the union's dims, keepdim)."""
    n = total(cnt)
    mean = M._ratio(total(cnt * mean_in), n)
    return mean, M._ratio(total(cnt * (var_in + (mean_in - mean) ** 2)), n), n


class SwitchNorm(DivisiveNorm):
    r"""Switchable normalization (Luo et al. 2019): learned softmax mixtures of the moments of the IN, LN and BN
    fields.

    .. math::

        \hat x = \gamma\,\frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma_k^2 + \epsilon}} + \beta, \qquad
        w = \mathrm{softmax}(\lambda_\mu),\ w' = \mathrm{softmax}(\lambda_\sigma),\ k \in \text{fields}

    ``mu_in``/``var_in`` over the positions of one channel of one example, ``mu_ln``/``var_ln`` over all its units,
    ``mu_bn``/``var_bn`` over the batch and the positions of one channel (pooled from the IN moments: the LN/BN
    variance is the mean of the IN variances plus the variance of the IN means, the reference's
    ``E[var_in + mu_in^2] - mu^2``). Variances are biased (the paper's eq. 2); ``unbiased=True`` is the authors'
    code (switchablenorms/Switchable-Normalization ``devkit/ops/switchable_norm.py``): ``var_in`` unbiased (and
    for ``(N, C)`` inputs, ``SwitchNorm1d``, the LN and BN variances unbiased). ``running_mean``/``running_var``
    are moving averages of ``mu_bn``/``var_bn`` as used (no unbiased factor; as the reference), used in
    evaluation; ``running_var`` starts at 1 (the reference's at 0).

    Args:
        num_features: C.
        fields: the mixed fields, a subsequence of ``("in", "ln", "bn")`` (the reference's ``SwitchNorm2d``;
            ``using_bn=False`` is ``("in", "ln")``, ``SwitchNorm1d`` on ``(N, C)`` inputs ``("ln", "bn")``).
        eps: beside the variance. ``momentum``: weight of the new batch (the reference's 0.9 is 0.1 here; its
            ``SwitchNorm1d``'s 0.997 is 0.003).
        unbiased: the authors' code's variance estimator (above).
        affine, alpha, device, dtype, process_group: as :class:`DivisiveNorm` (alpha: the L1 term of ``x - mu``).
        track_running_stats: ``None``/True: keep BN's running statistics when ``"bn"`` is mixed.

    State dict: the reference's names (``weight``, ``bias``, ``mean_weight``, ``var_weight``, ``running_mean``,
    ``running_var``); its ``(1, C, 1, 1)``/``(1, C, 1)``/``(1, C)`` shapes load into ours ``(C,)``. Its
    ``using_moving_average=False`` (sums for a later batch average) is not offered.
    """

    def __init__(self, num_features: int, fields: tuple = ("in", "ln", "bn"), eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, unbiased: bool = False, alpha: float = 0.0,
                 impl: str = "auto", track_running_stats: bool | None = None, sigma: float = 0.0, device=None,
                 dtype=None, process_group=None):
        fields = tuple(fields) if isinstance(fields, (tuple, list)) else fields
        from .presets import get_spec  # (the registry imports this module)
        order = list(SN_FIELDS)
        if not isinstance(fields, tuple) or not fields or any(f not in SN_FIELDS for f in fields) \
                or list(fields) != sorted(set(fields), key=order.index):
            raise ValueError(f"fields: expected a subsequence of {tuple(order)} (in that order), got {fields!r}")
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased: must be True or False, got {unbiased!r}")
        _impl(impl, "SwitchNorm")
        spec = get_spec(fields[-1]).replace(eps=eps, sigma=sigma)  # the widest field: BN's when it is mixed
        super().__init__(num_features, spec, affine=affine, momentum=momentum, alpha=alpha, impl=impl,
                         track_running_stats=track_running_stats, device=device, dtype=dtype,
                         process_group=process_group)
        self.fields, self.unbiased = fields, unbiased
        self.mean_weight = nn.Parameter(torch.empty(len(fields), device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.empty(len(fields), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "var_weight", None) is not None:  # (DivisiveNorm.__init__ calls this before they exist)
            nn.init.ones_(self.mean_weight)
            nn.init.ones_(self.var_weight)

    @property
    def fused(self) -> str | None:
        return None

    def _forward_general(self, x, use_batch_stats, sync=None):
        return self._switch(x, use_batch_stats, sync, None)

    def _forward_masked(self, x, m, use_batch_stats):
        return self._switch(x, use_batch_stats, None, m)

    def _switch(self, x: torch.Tensor, use_batch_stats: bool, sync, m) -> torch.Tensor:
        n, c = x.shape[:2]
        if x.dim() == 2 and "in" in self.fields:
            raise ValueError(f"input: (N, C) = {tuple(x.shape)} has no positions for the 'in' field; build "
                             f"SwitchNorm with fields=('ln', 'bn') for such inputs (the reference's SwitchNorm1d)")
        if sync is None:
            self._check_batch(x)
        xf = x.reshape(n, c, math.prod(x.shape[2:]))
        mf = torch.ones_like(xf[:, :, :1]).expand(xf.shape) if m is None else m.reshape(xf.shape)
        cnt = mf.sum(2, keepdim=True)                                   # (N, C, 1): kept positions per slice
        mean_in = M.masked_mean(xf, mf, (2,))
        var_in = M.masked_mean((xf - mean_in) ** 2, mf, (2,))
        if self.unbiased and xf.shape[2] > 1:                           # the code's x.var(-1)
            var_in = var_in * torch.where(cnt > 1, cnt / (cnt - 1).clamp_min(1), 1)
        moments = {"in": (mean_in, var_in)}
        mean_ln, var_ln, tot = _pool(cnt, mean_in, var_in, lambda t: t.sum(1, keepdim=True))
        moments["ln"] = (mean_ln, self._unbias(var_ln, tot, xf.shape[2]))
        if "bn" in self.fields:
            moments["bn"] = self._batch_moments(x, cnt, mean_in, var_in, use_batch_stats, sync, xf.shape[2])
        wm, wv = torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)
        mean = sum(wm[i].to(x.dtype) * moments[f][0] for i, f in enumerate(self.fields))
        var = sum(wv[i].to(x.dtype) * moments[f][1] for i, f in enumerate(self.fields))
        sig = self.spec.sigma if self.sigma is None else self.sigma
        v = xf - mean
        y = v * (var + self.spec.eps_for(x.dtype) + sig * sig).rsqrt()
        if self._l1_want:
            if m is None:
                self._add_penalty(v, sync)
            else:
                self._add_term(self.alpha * M.masked_mean(v.abs(), mf, (0, 1, 2)).reshape(()), n)
        return self._affine(y.reshape(x.shape), x.dtype)

    def _unbias(self, var, total, positions: int):
        """The code's LN/BN variance of ``(N, C)`` inputs (``SwitchNorm1d``: ``x.var(1)``, ``x.var(0)``)."""
        if not (self.unbiased and positions == 1):
            return var
        return var * torch.where(total > 1, total / (total - 1).clamp_min(1), 1)

    def _batch_moments(self, x, cnt, mean_in, var_in, use_batch_stats, sync, positions):
        if not use_batch_stats:
            return self.running_mean.to(x.dtype).view(1, -1, 1), self.running_var.to(x.dtype).view(1, -1, 1)
        n, s1 = _batch_sum(sync, cnt, cnt * mean_in)                   # two passes: the mean, then about it
        mean = M._ratio(s1, n)
        (s2,) = _batch_sum(sync, cnt * (var_in + (mean_in - mean) ** 2))
        var = self._unbias(M._ratio(s2, n), n, positions)
        if sync is not None:  # the global batch size is known now
            self._check_batch(torch.empty((sync.global_n,) + tuple(x.shape[1:]), device="meta"))
        # (an all-empty batch leaves them as they are: skipped, or under torch.func transforms, where a tensor's truth
        # value is unknown, the where() below keeps every channel)
        if self.training and self.track_running_stats and (under_transform() or bool((n > 0).any())):
            with torch.no_grad():
                mom, keep = self._momentum(), n.reshape(-1) > 0
                for buf, val in ((self.running_mean, mean), (self.running_var, var)):
                    val = val.detach().reshape(-1).to(buf.dtype)
                    buf.lerp_(torch.where(keep, val, buf), mom)
        return mean, var

    def _load_from_state_dict(self, state_dict, prefix, *args):
        _load_aliases(state_dict, prefix, {}, self)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _where(self) -> str:
        return f"SwitchNorm({self.num_features}, alpha={self.alpha:g})"

    def extra_repr(self) -> str:
        s = f"{super().extra_repr()}, fields={self.fields}"
        return s + (", unbiased=True" if self.unbiased else "")


# ------------------------------------------------------------------------------------------- Batch-Channel Norm
class BatchChannelNorm(DivisiveNorm):
    r"""Batch-channel normalization (Qiao et al. 2019): BN with its running statistics, then a group field with a
    per-group affine. Two rows of Table 1 in sequence:

    .. math::

        \dot x = \gamma_c\,\frac{x - \hat\mu_c}{\sqrt{\hat\sigma^2_c + \epsilon}} + \beta_c, \qquad
        y = \gamma'_g\,\frac{\dot x - \mathbb{E}_g[\dot x]}{\sqrt{\mathrm{Var}_g[\dot x] + \epsilon}} + \beta'_g

    In training the running statistics ``mu_hat``, ``var_hat`` are first moved towards this batch's mean and
    *biased* variance (``momentum`` = weight of the new batch; no gradient through them) and then used, so the
    forward is the same in training and evaluation; ``g`` is a group of ``C / groups`` channels of one example
    (the ``gn`` field). This is the reference's ``estimate=True`` (labml
    ``labml_nn/normalization/batch_channel_norm``: ``EstimatedBatchNorm`` then ``ChannelNorm``); its
    ``estimate=False`` (batch statistics in the first stage) is not offered.

    Args:
        num_features: C. groups: channel groups of the second stage (must divide C).
        eps: both stages'. momentum, affine, device, dtype, process_group: as :class:`DivisiveNorm` (``affine``
            covers both stages' gains and biases).

    State dict: ``weight``/``bias`` (C,) and ``running_mean``/``running_var`` of the first stage,
    ``group_weight``/``group_bias`` (groups,) of the second. labml's keys load as ``batch_norm.scale`` ->
    ``weight``, ``batch_norm.shift`` -> ``bias``, ``batch_norm.exp_mean`` -> ``running_mean``,
    ``batch_norm.exp_var`` -> ``running_var``, ``channel_norm.scale`` -> ``group_weight``,
    ``channel_norm.shift`` -> ``group_bias``.
    """

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, impl: str = "auto", track_running_stats: bool | None = True, device=None,
                 dtype=None, process_group=None):
        _impl(impl, "BatchChannelNorm")
        if track_running_stats is False:
            raise ValueError("track_running_stats: batch-channel norm normalizes with its running statistics; got "
                             "False")
        channel_spec = NormSpec(CS, CS, groups=groups, eps=eps)  # (validates groups)
        if isinstance(num_features, int) and num_features % channel_spec.groups:
            raise ValueError(f"num_features: {num_features} is not divisible by groups={channel_spec.groups}")
        super().__init__(num_features, NormSpec(BS, BS, eps=eps), affine=affine, momentum=momentum,
                         track_running_stats=True, impl=impl, device=device, dtype=dtype,
                         process_group=process_group)
        self.groups, self.channel_spec = channel_spec.groups, channel_spec
        if affine:
            self.group_weight = nn.Parameter(torch.empty(self.groups, device=device, dtype=dtype))
            self.group_bias = nn.Parameter(torch.empty(self.groups, device=device, dtype=dtype))
        else:
            self.register_parameter("group_weight", None)
            self.register_parameter("group_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "group_weight", None) is not None:
            nn.init.ones_(self.group_weight)
            nn.init.zeros_(self.group_bias)

    @property
    def fused(self) -> str | None:
        return None

    def _forward_general(self, x, use_batch_stats, sync=None):
        return self._forward_bcn(x, sync, None)

    def _forward_masked(self, x, m, use_batch_stats):
        return self._forward_bcn(x, None, m)

    def _forward_bcn(self, x: torch.Tensor, sync, m) -> torch.Tensor:
        if self.training:
            self._estimate(x, sync, m)
        nd = x.dim()
        var = self.running_var.to(x.dtype)
        h = (x - _view(self.running_mean.to(x.dtype), nd)) * _view((var + self.spec.eps_for(x.dtype)).rsqrt(), nd)
        h = self._affine(h, x.dtype)
        if m is None:
            y = F.group_norm(h, self.groups, None, None, self.channel_spec.eps_for(x.dtype))
        else:
            y = M.masked_divisive_norm_stats(h, self.channel_spec, m)[0]
        if self.group_weight is None:
            return y
        k = self.num_features // self.groups
        gw = _view(self.group_weight.to(x.dtype).repeat_interleave(k), nd)
        return torch.addcmul(_view(self.group_bias.to(x.dtype).repeat_interleave(k), nd), y, gw)

    @torch.no_grad()
    def _estimate(self, x: torch.Tensor, sync, m) -> None:
        """Move the running statistics towards this batch's mean and biased variance (about the old running mean,
        one pass: ``var = E[(x - K)^2] - E[x - K]^2``, one all-reduce under a process group; labml's formula, whose
        shift is 0). The shift K helps once the running mean is near the batch's; before that, in float32, a mean
        above ~1000x the spread cancels (x = randn + 3000: running variances 2, 4, 1, 0 for a true 1)."""
        dims = (0,) + tuple(range(2, x.dim()))
        k = _view(self.running_mean.to(x.dtype), x.dim())
        d = x - k
        w = torch.ones_like(d) if m is None else m
        parts = [(w * d).sum(dims), (w * d * d).sum(dims), w.sum(dims)]
        if sync is not None:
            parts = sync.all_reduce(parts)
            self._check_batch(torch.empty((sync.global_n,) + tuple(x.shape[1:]), device="meta"))
        else:
            self._check_batch(x)
        s1, s2, n = parts
        keep = n > 0
        n = n.clamp_min(1)
        mean_d = s1 / n
        mean = (mean_d + k.reshape(-1)).to(self.running_mean.dtype)
        var = (s2 / n - mean_d * mean_d).clamp_min(0).to(self.running_var.dtype)
        mom = self._momentum()
        self.running_mean.lerp_(torch.where(keep, mean, self.running_mean), mom)
        self.running_var.lerp_(torch.where(keep, var, self.running_var), mom)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        _load_aliases(state_dict, prefix, {"batch_norm.scale": "weight", "batch_norm.shift": "bias",
                                           "batch_norm.exp_mean": "running_mean",
                                           "batch_norm.exp_var": "running_var",
                                           "channel_norm.scale": "group_weight",
                                           "channel_norm.shift": "group_bias"}, self)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _where(self) -> str:
        return f"BatchChannelNorm({self.num_features})"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"
