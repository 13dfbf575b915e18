"""K copies of the PTB language model packed into ONE module (models layer; the stacked runs are
:mod:`dnlib.experiments.stacked_ptb`).

:class:`StackedLanguageModel` holds K :class:`~dnlib.models.rnn_lm.LanguageModel` s of one cell class (``arch``), of
equal sizes, with any weights and, where the cell allows it, *different normalizers*: K seeds of one configuration,
or K configurations of one cell type (Table 9's Baseline, Baseline +L1, LN-s, LN +L1, LN*, DN and DN* rows are all
the ``lstm`` cell, with ``norm`` ``none``/``ln-s``/``dn-1d-s`` and their own ``alpha``). Every weight gets a leading
copy dimension and every matrix product becomes one batched product (``torch.baddbmm``); the embedding lookup of
the K tables is one lookup in the ``(K*V, H)`` table. Input: the token ids ``(N, T)`` that every copy reads (PTB's
batches do not depend on the seed); output: logits ``(K, T, N, V)`` and the state, one tuple of ``(K, N, H)`` per
layer.

**Normalizer sites** (:class:`StackedSite`): the K copies' normalizers of one site are split into *segments*, runs of
consecutive copies whose normalizers are identical (spec, sigma, alpha, affine, running statistics); each segment is
ONE :class:`~dnlib.norms.norm.DivisiveNorm` call:

* a per-example normalizer (LN, 1-D DN, ``none`` with an L1 term) folds its copies into the batch, ``(k, M, C) ->
  (k*M, C)``;
* a batch-pooling one (the BN cells' per-step BN) puts its copies side by side as channels, ``(k, M, C) -> (M, k*C)``
  (statistics per channel: per copy; running statistics ``(k*C,)``, copy j's block j);

in both cases with ``alpha`` times k: the site's L1 term is then the sum of the k copies' own terms (each the mean
over a block of equal size). The gains and biases (``affine``) are applied per copy after the call, with ``(k, C)``
tensors, as :class:`~dnlib.norms.norm.DivisiveNorm` applies its own (``addcmul``). A copy without a normalizer at a
site (``none`` without L1) is a segment that passes its block through. K seeds of one configuration are one segment
per site: the same number of normalizer calls as one model.

:meth:`StackedLanguageModel.copy_state_dict` gives copy k's tensors under the ``LanguageModel``'s own names (views);
:meth:`~StackedLanguageModel.load_copies` packs K models. Built on the cells' public attributes (``weight_ih``,
``weight_hh``, ``bias``, ``bias_hh``, ``gate_norm``, ``cell_norm``, ``gate_weight``, ``gate_bias``, ``norm``,
``norm_ih``/``norm_hh``/``norm_c`` and their ``steps``, ``forget_bias``, ``state_norm_c``, ``nonlinearity``): the
math of each cell's ``step`` is written here once more in batched form, and ``tests/test_stacked_ptb.py`` holds the
two to equality in float64.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.norm import DivisiveNorm
from .rnn import BNLSTMCell, BNRNNCell, LNLSTMCell, NormLSTMCell, NormRNNCell
from .rnn_lm import LanguageModel

__all__ = ["StackedLanguageModel", "StackedCell", "StackedSite", "StackedStepNorm", "set_stacked_eval_step"]

_KINDS = {NormLSTMCell: "norm-lstm", BNLSTMCell: "bn-lstm", LNLSTMCell: "ln-lstm", NormRNNCell: "norm-rnn",
          BNRNNCell: "bn-rnn"}
_G = {"tanh": torch.tanh, "relu": torch.relu}


def _same(values, what: str) -> None:
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"models: the copies differ in {what} ({values[0]!r} vs another); stacked copies must share "
                         f"it")


def _stack(tensors) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).clone())


def _signature(m) -> tuple | None:
    if m is None:
        return None
    if not isinstance(m, DivisiveNorm):
        raise ValueError(f"models: stacking needs DivisiveNorm sites, got {type(m).__name__}")
    if m.spec.learn_sigma:
        raise ValueError(f"models: a learned sigma (one scalar per site) cannot be stacked, got {m.spec}")
    if m.process_group is not None:
        raise ValueError("models: a site with a process group (synchronized BN) cannot be stacked")
    return (m.spec, m.num_features, m.alpha, m.affine, m.bias is not None, m.momentum, m.track_running_stats,
            m.impl, m.running_stats)


class _Segment(nn.Module):
    """Copies ``start..stop-1``, whose sites are equal to ``site`` (None: no normalizer), as one call."""

    def __init__(self, site: DivisiveNorm | None, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop
        k = stop - start
        self.norm, self.concat, self.width = None, False, 0
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if site is None:
            return
        spec, c = site.spec, site.num_features
        self.width = c
        self.concat = spec.pools_batch
        if self.concat and "channel" in spec.sum_axes | spec.sup_axes:
            raise ValueError(f"models: a site that pools both the batch and the channels cannot be stacked, got {spec}")
        ref = next((t for t in list(site.parameters()) + list(site.buffers()) if t.is_floating_point()), None)
        factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.norm = DivisiveNorm(k * c if self.concat else c, spec, affine=False, momentum=site.momentum,
                                 track_running_stats=site.track_running_stats, alpha=site.alpha * k, impl=site.impl,
                                 running_stats=site.running_stats, **factory)
        if site.affine:
            self.weight = nn.Parameter(torch.ones(k, c, **factory))
            if site.bias is not None:
                self.bias = nn.Parameter(torch.zeros(k, c, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return x
        k, m, c = x.shape
        if self.concat:                       # copies side by side as channels: per-copy batch statistics
            y = self.norm(x.transpose(0, 1).reshape(m, k * c)).view(m, k, c).transpose(0, 1)
        else:                                 # copies folded into the batch: per-example statistics
            y = self.norm(x.reshape(k * m, c)).view(k, m, c)
        if self.weight is None:
            return y
        if self.bias is None:
            return y * self.weight.unsqueeze(1)
        return torch.addcmul(self.bias.unsqueeze(1), y, self.weight.unsqueeze(1))

    def copy_tensors(self, j: int, state: dict, prefix: str) -> dict:
        """Copy ``start + j``'s tensors under its site's own names (views of ``state``, this module's)."""
        out = {}
        if self.norm is None:
            return out
        c, k = self.width, self.stop - self.start
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            t = state.get(f"{prefix}norm.{name}")
            if t is not None:
                out[name] = t if name == "num_batches_tracked" else t.view(k, c)[j]
        for name in ("weight", "bias"):
            if f"{prefix}{name}" in state:
                out[name] = state[f"{prefix}{name}"][j]
        return out


class StackedSite(nn.Module):
    """One normalizer site of K copies (``sites``: their :class:`~dnlib.norms.norm.DivisiveNorm` s, None where a copy
    has none) on ``(K, M, C)`` inputs: consecutive equal sites are one segment, one call (module doc)."""

    def __init__(self, sites: Sequence[DivisiveNorm | None]):
        super().__init__()
        sites = list(sites)
        sigs = [_signature(s) for s in sites]
        bounds, start = [], 0
        for i in range(1, len(sites) + 1):
            if i == len(sites) or sigs[i] != sigs[start]:
                bounds.append((start, i))
                start = i
        self.copies = len(sites)
        self.segments = nn.ModuleList(_Segment(sites[a], a, b) for a, b in bounds)
        self._where = [(n, k - seg.start) for n, seg in enumerate(self.segments) for k in range(seg.start, seg.stop)]

    @property
    def identity(self) -> bool:
        return all(seg.norm is None for seg in self.segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.segments) == 1:
            return self.segments[0](x)
        return torch.cat([seg(x[seg.start:seg.stop]) for seg in self.segments])

    def copy_tensors(self, k: int, state: dict, prefix: str) -> dict:
        n, j = self._where[k]
        return self.segments[n].copy_tensors(j, state, f"{prefix}segments.{n}.")

    def extra_repr(self) -> str:
        return f"copies={self.copies}, segments={[(s.start, s.stop) for s in self.segments]}"


class StackedStepNorm(nn.Module):
    """The BN cells' per-time-step normalizer (statistics per step, gain and bias shared over time) of K copies:
    one :class:`StackedSite` per step, ``(K, C)`` gains and biases; ``eval_step`` as the cells'."""

    def __init__(self, step_norms: Sequence[nn.Module]):
        super().__init__()
        _same([(len(s.steps), s.num_features, s.weight is None, s.bias is None) for s in step_norms],
              "their per-step normalizers")
        s0 = step_norms[0]
        self.max_steps, self.num_features = s0.max_steps, s0.num_features
        self.steps = nn.ModuleList(StackedSite([s.steps[t] for s in step_norms]) for t in range(s0.max_steps))
        self.weight = None if s0.weight is None else _stack([s.weight for s in step_norms])
        self.bias = None if s0.bias is None else _stack([s.bias for s in step_norms])
        self.eval_step: int | None = None

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        if not self.training and self.eval_step is not None:
            t = self.eval_step
        y = self.steps[min(t, self.max_steps - 1)](x)
        return y if self.weight is None else torch.addcmul(self.bias.unsqueeze(1), y, self.weight.unsqueeze(1))

    def copy_tensors(self, k: int, state: dict, prefix: str) -> dict:
        out = {f"steps.{t}.{n}": v for t, site in enumerate(self.steps)
               for n, v in site.copy_tensors(k, state, f"{prefix}steps.{t}.").items()}
        for name in ("weight", "bias"):
            if f"{prefix}{name}" in state:
                out[name] = state[f"{prefix}{name}"][k]
        return out


def _site(sites) -> StackedSite | None:
    s = StackedSite(sites)
    return None if s.identity else s


class StackedCell(nn.Module):
    """K recurrent layers of one cell class (:data:`dnlib.models.rnn.CELLS`) as one: weights ``(K, G*H, I)``,
    input ``(K, T, N, I)``, state a tuple of ``(K, N, H)``; each cell's ``step`` math, batched over the copies."""

    def __init__(self, cells: Sequence[nn.Module]):
        super().__init__()
        cells = list(cells)
        bad = [type(c).__name__ for c in cells if type(c) not in _KINDS]
        if bad:
            raise ValueError(f"models: cannot stack a {bad[0]} layer; stackable cells: "
                             f"{[c.__name__ for c in _KINDS]}")
        _same([type(c).__name__ for c in cells], "cell class")
        c0 = cells[0]
        self.kind = _KINDS[type(c0)]
        fields = ("input_size", "hidden_size", "num_gates", "state_size", "forget_bias", "state_norm_c",
                  "nonlinearity", "max_steps")
        _same([tuple(getattr(c, f, None) for f in fields) for c in cells], "sizes or cell options (" +
              ", ".join(fields) + ")")
        for f in ("input_size", "hidden_size", "num_gates", "state_size"):
            setattr(self, f, getattr(c0, f))
        self.forget_bias = float(getattr(c0, "forget_bias", 0.0))
        self.state_norm_c = bool(getattr(c0, "state_norm_c", False))
        self.nonlinearity = getattr(c0, "nonlinearity", None)
        self.copies = len(cells)
        self.weight_ih = _stack([c.weight_ih for c in cells])
        self.weight_hh = _stack([c.weight_hh for c in cells])
        self.bias = None if c0.bias is None else _stack([c.bias for c in cells])
        self.bias_hh = _stack([c.bias_hh for c in cells]) if self.kind == "ln-lstm" else None
        self.gate_weight = self.gate_bias = self.gate_norm = self.cell_norm = self.norm = None
        self.norm_ih = self.norm_hh = self.norm_c = None
        if self.kind == "norm-lstm":
            _same([(c.gate_weight is None, c.gate_bias is None) for c in cells], "per-gate gains and biases (affine)")
            self.gate_weight = None if c0.gate_weight is None else _stack([c.gate_weight for c in cells])
            self.gate_bias = None if c0.gate_bias is None else _stack([c.gate_bias for c in cells])
            self.gate_norm = _site([c.gate_norm for c in cells])
            self.cell_norm = _site([c.cell_norm for c in cells])
        elif self.kind == "norm-rnn":
            self.norm = _site([c.norm for c in cells])
        elif self.kind == "ln-lstm":
            self.norm_ih, self.norm_hh, self.norm_c = (StackedSite([getattr(c, n) for c in cells])
                                                       for n in ("norm_ih", "norm_hh", "norm_c"))
        else:                                             # the BN cells: per-step statistics
            names = ("norm_ih", "norm_hh", "norm_c") if self.kind == "bn-lstm" else ("norm_ih", "norm_hh")
            for n in names:
                setattr(self, n, StackedStepNorm([getattr(c, n) for c in cells]))
        self._g = _G.get(self.nonlinearity)

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple:
        dtype, device = dtype or self.weight_hh.dtype, device or self.weight_hh.device
        return tuple(torch.zeros(self.copies, batch_size, self.hidden_size, device=device, dtype=dtype)
                     for _ in range(self.state_size))

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """``W_x x + b`` of every copy and time step: ``(K, T, N, I) -> (K, T, N, G*H)``."""
        k, t, n, i = x.shape
        w = self.weight_ih.transpose(1, 2)
        flat = x.reshape(k, t * n, i)
        xw = torch.bmm(flat, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), flat, w)
        xw = xw.view(k, t, n, -1)
        if self.kind == "norm-lstm" and self.forget_bias:
            H = self.hidden_size
            xw = torch.cat([xw[..., :2 * H], xw[..., 2 * H:3 * H] + self.forget_bias, xw[..., 3 * H:]], -1)
        return xw

    def _lstm_update(self, z, c, norm_c):
        H = self.hidden_size
        if self.forget_bias and self.kind != "norm-lstm":
            z = torch.cat([z[..., :2 * H], z[..., 2 * H:3 * H] + self.forget_bias, z[..., 3 * H:]], -1)
        s = torch.sigmoid(z)
        i, f, o = s[..., :H], s[..., 2 * H:3 * H], s[..., 3 * H:]
        j = torch.tanh(z[..., H:2 * H])
        c = torch.addcmul(f * c, i, j)
        cn = norm_c(c) if norm_c is not None else c
        h = o * torch.tanh(cn)
        keep = cn if (self.kind != "norm-lstm" and self.state_norm_c) else c
        return h, (h, keep)

    def step(self, xw: torch.Tensor, state: tuple, t: int = 0):
        """One time step of every copy from ``xw`` ``(K, N, G*H)``; returns ``(h, new_state)``."""
        wt = self.weight_hh.transpose(1, 2)
        if self.kind == "norm-lstm":
            h, c = state
            k, n, H = h.shape
            z = torch.baddbmm(xw, h, wt)
            if self.gate_norm is not None:
                z = self.gate_norm(z.view(k, n * 4, H)).view(k, n, 4 * H)
            if self.gate_weight is not None:
                gw = self.gate_weight.unsqueeze(1)
                z = z * gw if self.gate_bias is None else torch.addcmul(self.gate_bias.unsqueeze(1), z, gw)
            return self._lstm_update(z, c, self.cell_norm)
        if self.kind == "ln-lstm":
            h, c = state
            z = self.norm_ih(xw) + self.norm_hh(torch.baddbmm(self.bias_hh.unsqueeze(1), h, wt))
            return self._lstm_update(z, c, self.norm_c)
        if self.kind == "bn-lstm":
            h, c = state
            z = self.norm_ih(xw, t) + self.norm_hh(torch.bmm(h, wt), t)
            return self._lstm_update(z, c, lambda v: self.norm_c(v, t))
        (h,) = state
        if self.kind == "norm-rnn":
            z = torch.baddbmm(xw, h, wt)
            h = self._g(self.norm(z) if self.norm is not None else z)
        else:
            h = self._g(self.norm_ih(xw, t) + self.norm_hh(torch.bmm(h, wt), t))
        return h, (h,)

    def forward(self, x: torch.Tensor, state: Sequence[torch.Tensor] | None = None):
        state = tuple(state) if state is not None else self.init_state(x.shape[2], x.device, x.dtype)
        xw = self.input_transform(x)
        outs = []
        for t in range(x.shape[1]):
            h, state = self.step(xw[:, t], state, t)
            outs.append(h)
        return torch.stack(outs, 1), state

    def copy_tensors(self, k: int, state: dict, prefix: str) -> dict:
        out = {}
        for name in ("weight_ih", "weight_hh", "bias", "bias_hh", "gate_weight", "gate_bias"):
            if f"{prefix}{name}" in state:
                out[name] = state[f"{prefix}{name}"][k]
        for name in ("gate_norm", "cell_norm", "norm", "norm_ih", "norm_hh", "norm_c"):
            site = getattr(self, name)
            if site is not None:
                out.update({f"{name}.{n}": v for n, v in site.copy_tensors(k, state, f"{prefix}{name}.").items()})
        return out

    def extra_repr(self) -> str:
        return f"{self.kind}, copies={self.copies}, {self.input_size}, {self.hidden_size}"


def set_stacked_eval_step(model: nn.Module, step: int | None) -> None:
    """:func:`dnlib.models.step_norm.set_bn_eval_step` for a stacked model (every copy's BN cells)."""
    for m in model.modules():
        if isinstance(m, StackedStepNorm):
            m.eval_step = step


class StackedLanguageModel(nn.Module):
    """K :class:`~dnlib.models.rnn_lm.LanguageModel` s of one cell class and equal sizes as one module (module doc).

    ``forward(ids, state)``: ids ``(N, T)`` shared by the copies -> logits ``(K, T, N, V)`` and the new state (a
    list, one tuple of ``(K, N, H)`` tensors per layer). :meth:`copy_state_dict` unpacks copy k (a
    ``LanguageModel`` state dict), :meth:`load_copies` packs K models."""

    def __init__(self, models: Sequence[LanguageModel]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("models: need at least one LanguageModel")
        bad = [type(m).__name__ for m in models if not isinstance(m, LanguageModel)]
        if bad:
            raise ValueError(f"models: stacking needs LanguageModel models, got {bad[0]}")
        _same([(m.vocab_size, m.hidden_size, m.arch, m.num_layers) for m in models],
              "vocab_size, hidden_size, arch or num_layers")
        m0 = models[0]
        self.copies = len(models)
        self.vocab_size, self.hidden_size, self.arch, self.num_layers = m0.vocab_size, m0.hidden_size, m0.arch, \
            m0.num_layers
        self.embedding = _stack([m.embedding.weight for m in models])            # (K, V, H)
        self.decoder_weight = _stack([m.decoder.weight for m in models])         # (K, V, H)
        self.decoder_bias = _stack([m.decoder.bias for m in models])             # (K, V)
        self.layers = nn.ModuleList(StackedCell([m.layers[i] for m in models]) for i in range(m0.num_layers))
        self.embedding_hook = None      # called with the gradient of the embedding output (K, T, N, H), if set
        self._copy_keys = [sorted(m.state_dict()) for m in models]
        for k in range(self.copies):
            got = sorted(self.copy_state_dict(k))
            if got != self._copy_keys[k]:
                raise ValueError(f"models: copy {k}'s tensors {sorted(set(got) ^ set(self._copy_keys[k]))} have no "
                                 f"place in the stacked model")
        self.load_copies(models)

    def init_state(self, batch_size: int, device=None) -> list:
        return [layer.init_state(batch_size, device) for layer in self.layers]

    def forward(self, ids: torch.Tensor, state: list | None = None):
        k, v, h = self.embedding.shape
        offsets = torch.arange(k, device=ids.device).view(k, 1, 1) * v
        x = F.embedding(ids.t().unsqueeze(0) + offsets, self.embedding.view(k * v, h))     # (K, T, N, H)
        if self.embedding_hook is not None and x.requires_grad:
            x.register_hook(self.embedding_hook)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, state[i] if state is not None else None)
            new_state.append(s)
        _, t, n, _ = x.shape
        logits = torch.baddbmm(self.decoder_bias.unsqueeze(1), x.reshape(k, t * n, h),
                               self.decoder_weight.transpose(1, 2))
        return logits.view(k, t, n, v), new_state

    def copy_blocks(self) -> list:
        """``[(parameter, start)]``: every parameter, whose dim 0 holds copies ``start, start + 1, ...`` (0, or
        the first copy of its normalizer segment): what per-copy gradient norms and updates need."""
        starts = {id(p): seg.start for seg in self.modules() if isinstance(seg, _Segment)
                  for p in seg.parameters(recurse=False)}
        return [(p, starts.get(id(p), 0)) for p in self.parameters()]

    def copy_state_dict(self, k: int) -> dict:
        """Copy ``k``'s tensors as a ``LanguageModel`` state dict (views of this module's tensors, detached)."""
        if not 0 <= k < self.copies:
            raise ValueError(f"k: must be in [0, {self.copies}), got {k!r}")
        state = self.state_dict()
        out = {"embedding.weight": state["embedding"][k], "decoder.weight": state["decoder_weight"][k],
               "decoder.bias": state["decoder_bias"][k]}
        for i, layer in enumerate(self.layers):
            out.update({f"layers.{i}.{n}": v for n, v in layer.copy_tensors(k, state, f"layers.{i}.").items()})
        return out

    @torch.no_grad()
    def load_copies(self, models: Sequence[nn.Module]) -> None:
        """Pack the parameters and buffers of K ``LanguageModel`` s (copy k = ``models[k]``) into this module."""
        if len(models) != self.copies:
            raise ValueError(f"models: need {self.copies} models, got {len(models)}")
        for k, m in enumerate(models):
            mine = self.copy_state_dict(k)
            for name, t in m.state_dict().items():
                if name not in mine:
                    raise ValueError(f"models: copy {k}'s {name} has no place in the stacked model")
                mine[name].copy_(t)

    def extra_repr(self) -> str:
        return f"copies={self.copies}, vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, arch={self.arch!r}"
