"""The recurrent cells of the paper's PTB experiments (PAPER.md §1.3-1.4, §3.3; models layer); the word-level
language model that stacks them is :class:`dnlib.models.rnn_lm.LanguageModel`.

Every cell here is a *layer*: ``forward(x, state)`` runs a whole sequence ``x`` of shape ``(T, N, input_size)``
(time-major) and returns ``(out, state)`` with ``out`` of shape ``(T, N, hidden_size)``. The input transform of
all T steps is one matrix product before the loop; each step then does one ``(N, H) x (H, G)`` product for the
recurrent transform plus the gate math (:meth:`step`, public so that a single step can be checked by hand).

LSTM gates are ordered ``i, j, f, o`` as the authors' TensorFlow code (input gate, candidate, forget gate,
output gate), and

.. math::

    c_t = \\sigma(f) \\odot c_{t-1} + \\sigma(i) \\odot \\tanh(j), \\qquad h_t = \\sigma(o) \\odot \\tanh(c_t)

where the cells differ only in *where* normalization sits:

=====================  ==========================================================================================
:class:`NormLSTMCell`  the paper's "normalization at each non-linearity" (LN-s, LN+L1, LN*, DN, DN*): one linear
                       map of ``[x; h]`` plus one bias, split into ``i, j, f, o``; each block normalized on its own
                       (LN over its H units, or 1-D DN with a window along the unit axis) before its
                       nonlinearity; ``c_t`` normalized before its tanh; the *un-normalized* ``c_t`` is the state.
                       With ``norm="none"`` it is the plain baseline LSTM (and with ``alpha`` the Baseline +L1).
:class:`BNLSTMCell`    Cooijmans et al. (2017): BN of ``W_x x`` and of ``W_h h`` and of ``c_t``, each with
                       *separate statistics for every time step* (separate running averages per step) and a gain
                       and bias shared over time. Passes the normalized ``c_t`` on as state (the code's quirk,
                       PAPER.md §5.4 item 8; ``state_norm_c=False`` keeps the raw one).
:class:`LNLSTMCell`    Ba et al. (2016): LN of the full 4H-unit ``W_x x + b_x`` and of ``W_h h + b_h`` (statistics
                       jointly over the four gates, each with its own 4H gain and bias; the biases b_x, b_h train,
                       as in the code), and LN of ``c_t`` (H gain and bias); normalized ``c_t`` passed on (same
                       quirk and option).
:class:`NormRNNCell`   vanilla RNN, eqs. 10-11: ``h' = g(Norm(W [x; h] + b))``, g = tanh or ReLU (LN, DN, none).
:class:`BNRNNCell`     vanilla RNN, eqs. 8-9: ``h' = g(BN(W_x x) + BN(W_h h))``, per-step statistics
                       (both BN cells: :class:`~dnlib.models.step_norm.StepNorm`).
=====================  ==========================================================================================

Every cell takes its normalizer as every model of :mod:`dnlib.models` does: ``norm=`` a preset name or a
:class:`~dnlib.norms.spec.NormSpec` (defaults: ``"none"`` for the per-nonlinearity and vanilla cells, ``"bn"`` for the
BN cells, ``"ln"`` for the LN-LSTM), ``norm_kwargs=`` its :func:`dnlib.make_norm` overrides (``sigma``, ``alpha``,
``window``, ``border``, ``eps``, ``affine``), resolved once by :func:`dnlib.norms.presets.get_norm_layer`. The sparse L1
penalty (PAPER.md §2.2) is accumulated at every normalized quantity, every layer and every time step, as the authors'
code sums it: ``alpha * mean|v|`` at each of ``i, j, f, o`` and ``c`` (per-nonlinearity cells), or at ``W_x x``, ``W_h
h`` and ``c`` (BN/LN cells), or at the one pre-activation (vanilla RNNs). The per-nonlinearity cell normalizes the four
gate blocks in one call on an ``(4N, H)`` view, with ``alpha`` times 4: the same sum, since each block has the same
number of elements.

**1-D DN window (PAPER.md §1.3, §5.4 item 2).** The paper's eqs. 6-7 use a radius R (R = 30 for the LSTM, 60 for
the RNN: windows of 2R + 1 = 61 and 121 units) and always divide by 2R + 1, i.e. units beyond the border count as
zeros: ``window=61, border="zeros"`` (the default of :mod:`dnlib.experiments.ptb_configs`). The authors' code uses
windows of 30 and 60 *units* with TensorFlow SAME zero padding (asymmetric for even sizes): ``window=30,
border="reference"``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.norm import DivisiveNorm
from ..norms.presets import NormLike, get_norm_layer, get_spec, norm_name
from ..norms.spec import NormSpec
from . import rnn_fused
from .step_norm import StepNorm, step_layer

__all__ = ["NormLSTMCell", "BNLSTMCell", "LNLSTMCell", "NormRNNCell", "BNRNNCell", "GATES", "CELLS", "make_cell"]

GATES = ("i", "j", "f", "o")
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def _site(layer, num_features: int, alpha_scale: float = 1.0, **extra) -> DivisiveNorm | None:
    """A normalizer for one site from a resolved :func:`~dnlib.norms.presets.get_norm_layer`, or None when there is
    nothing to do ("none" without L1). With ``"none"`` and an L1 weight only ``alpha`` (and ``device``/``dtype``)
    apply: the identity plus the L1 term; ``affine=True`` there is refused (there is no normalizer to carry a
    gain). A 1-D DN site is a plain :class:`~dnlib.DivisiveNorm`; for the cells' ``(N, H)`` inputs with H <= 256
    it takes its band path itself (``impl="auto"``; the same operator, faster). ``extra``: further overrides."""
    kwargs = dict(layer.keywords)
    alpha = float(kwargs.pop("alpha", 0.0))
    norm = layer.args[0]
    if isinstance(norm, str) and norm == "none":
        if kwargs.get("affine"):
            raise ValueError("norm_kwargs: affine=True needs a normalizer, but norm='none' has none (no gain or "
                             "bias to learn); drop affine or choose a norm")
        if not alpha:
            return None
        kwargs = {k: v for k, v in kwargs.items() if k in ("device", "dtype")}
    return get_norm_layer(norm, kwargs)(num_features, alpha=alpha * alpha_scale, **extra)


def _refuse_instance_norm(layer, norm: NormLike) -> None:
    """Refuse, when a cell is built, a normalizer whose summation field pools ``'space'`` alone (instance norm,
    ``"in"``): the cells feed their normalizers ``(N, H)`` inputs, one value per (example, unit), which it would
    centre to 0 (the layer refuses such inputs at the first forward). ``layer``: the resolved ``get_norm_layer``."""
    name, kwargs = layer.args[0], layer.keywords
    spec = name if isinstance(name, NormSpec) else get_spec(name)
    if "sum_axes" in kwargs:
        try:
            spec = spec.replace(sum_axes=kwargs["sum_axes"])
        except ValueError:  # (the layer says what is wrong when it is built)
            return
    if spec.sum_axes == {"space"}:
        raise ValueError(f"norm: {norm_name(norm)!r} centres each unit over 'space' alone (instance norm), and a "
                         f"recurrent cell's normalizers see (N, H) inputs, one value per (example, unit): every "
                         f"output would be 0; use 'ln'/'ln-s' or 'dn-1d'/'dn-1d-s' (per-nonlinearity and vanilla "
                         f"cells), 'ln' (ln-lstm) or 'bn'/'bn-s' (the BN cells)")


class _Recurrent(nn.Module):
    """Shared plumbing: input transform of the whole sequence at once, then a Python loop over :meth:`step`.

    ``trace``: set to a list to record each step's activations (dicts of tensors) for inspection; None (default)
    records nothing.
    """

    num_gates = 1
    state_size = 1        # number of (N, H) state tensors

    def __init__(self, input_size: int, hidden_size: int, input_bias: bool = True):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        g = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias = nn.Parameter(torch.empty(g)) if input_bias else None
        self.trace: list | None = None

    def reset_parameters(self, init_scale: float = 0.1) -> None:
        """Weights uniform(-init_scale, init_scale), biases 0 (PAPER.md §3.3); normalizer gains stay 1."""
        nn.init.uniform_(self.weight_ih, -init_scale, init_scale)
        nn.init.uniform_(self.weight_hh, -init_scale, init_scale)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple:
        """The zero state: a tuple of ``state_size`` tensors of shape ``(N, H)``."""
        dtype = dtype or self.weight_hh.dtype
        device = device or self.weight_hh.device
        return tuple(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
                     for _ in range(self.state_size))

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """``W_x x + b`` for every time step at once: ``(T, N, I) -> (T, N, G*H)``."""
        return F.linear(x, self.weight_ih, self.bias)

    def step(self, xw: torch.Tensor, state: tuple, t: int = 0):
        """One time step from the transformed input ``xw`` (N, G*H); returns ``(h, new_state)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: Sequence[torch.Tensor] | None = None):
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected shape (T, N, {self.input_size}), got {tuple(x.shape)}")
        state = tuple(state) if state is not None else self.init_state(x.shape[1], x.device, x.dtype)
        fused = self._sequence(x, state)
        if fused is not None:
            return fused
        xw = self.input_transform(x)
        outs = []
        for t in range(x.shape[0]):
            h, state = self.step(xw[t], state, t)
            outs.append(h)
        return torch.stack(outs), state

    def _sequence(self, x: torch.Tensor, state: tuple):
        """The whole sequence from the inputs ``x`` (T, N, I) by a fused path, or None: the loop over :meth:`step`
        (the reference)."""
        return None

    def _record(self, **acts) -> None:
        if self.trace is not None:
            self.trace.append({k: v.detach() for k, v in acts.items()})

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


# ------------------------------------------------------------------------------------------------------ LSTMs
class NormLSTMCell(_Recurrent):
    """LSTM with normalization at each nonlinearity (PAPER.md §1.4 "LN-s / LN+L1 / LN* and DN / DN*").

    .. math::

        [z_i; z_j; z_f; z_o] = W [x; h_{t-1}] + b + [0; 0; b_f; 0] \\qquad
        c_t = \\sigma(N(z_f)) c_{t-1} + \\sigma(N(z_i)) \\tanh(N(z_j)) \\qquad
        h_t = \\sigma(N(z_o)) \\tanh(N(c_t))

    N normalizes each H-unit block on its own (``norm``: ``"ln-s"`` for LN over the block, ``"dn-1d-s"``/
    ``"dn-1d"`` for a window along the unit axis, ``"none"`` for the baseline LSTM). ``norm_kwargs`` go to
    :func:`dnlib.make_norm` (the presets used here have ``affine=False``, as the paper's). The forget bias is added
    before normalization; the state is ``(h_t, c_t)`` with the un-normalized ``c_t``.

    With ``affine`` (``norm_kwargs={"affine": True}``, or a preset that has it) each of the five normalized blocks
    has its own gain and bias, ``N(z_g) * gamma_g + beta_g``, as the authors' per-nonlinearity LSTM (one
    ``gamma``/``beta`` per gate scope): ``gate_weight``/``gate_bias`` of 4H units (``i, j, f, o``) and
    ``cell_norm``'s H, 10H parameters per layer (2,000 at H = 200).

    ``impl="auto"`` (default) runs a whole sequence as one fused autograd Function (:mod:`dnlib.models.rnn_fused`:
    TorchScript loops forward and backward, one recurrent product per step, the four gate blocks normalized in one
    op, exact to the second derivative) wherever it covers the normalizers (LN, 1-D DN, none: every PTB row of
    this cell); ``impl="loop"`` always runs :meth:`step` per time step through the normalizer modules (the
    reference; also taken while ``trace`` records, or under ``torch.compile``).
    """

    num_gates, state_size = 4, 2
    IMPLS = ("auto", "loop")

    def __init__(self, input_size: int, hidden_size: int, norm: NormLike = "none",
                 norm_kwargs: Mapping | None = None, forget_bias: float = 0.0, impl: str = "auto"):
        super().__init__(input_size, hidden_size)
        if impl not in self.IMPLS:
            raise ValueError(f"impl: got {impl!r}; allowed values are {list(self.IMPLS)}")
        self.impl = impl
        layer = get_norm_layer(norm, norm_kwargs)
        _refuse_instance_norm(layer, norm)
        self.norm_name = norm_name(norm)
        self.forget_bias = float(forget_bias)
        self.cell_norm = _site(layer, hidden_size)
        affine = bool(getattr(self.cell_norm, "affine", False))
        # i, j, f, o: 4 sites in one call; their gains and biases (one per gate) are the cell's
        self.gate_norm = _site(layer, hidden_size, alpha_scale=4.0, **({"affine": False} if affine else {}))
        g = 4 * hidden_size
        self.register_parameter("gate_weight", nn.Parameter(torch.ones(g)) if affine else None)
        has_bias = affine and self.cell_norm.bias is not None
        self.register_parameter("gate_bias", nn.Parameter(torch.zeros(g)) if has_bias else None)
        self.reset_parameters()

    def reset_parameters(self, init_scale: float = 0.1) -> None:
        super().reset_parameters(init_scale)
        if self.gate_weight is not None:
            nn.init.ones_(self.gate_weight)
        if self.gate_bias is not None:
            nn.init.zeros_(self.gate_bias)

    def input_bias(self) -> torch.Tensor | None:
        """The bias of :meth:`input_transform`: ``b`` with the forget bias added to the f block (None when both
        are absent). The fused path folds its DN centring into it (:mod:`dnlib.models.rnn_fused`)."""
        if not self.forget_bias:
            return self.bias
        H = self.hidden_size
        dev, dt = self.weight_ih.device, self.weight_ih.dtype
        fb = torch.cat([torch.zeros(2 * H, device=dev, dtype=dt), torch.full((H,), self.forget_bias, device=dev,
                        dtype=dt), torch.zeros(H, device=dev, dtype=dt)])
        return fb if self.bias is None else self.bias + fb

    def input_transform(self, x):
        return F.linear(x, self.weight_ih, self.input_bias())

    def step(self, xw, state, t=0):
        h, c = state
        n, H = h.shape
        z = torch.addmm(xw, h, self.weight_hh.t())
        if self.gate_norm is not None:
            z = self.gate_norm(z.view(n * 4, H)).view(n, 4 * H)
        if self.gate_weight is not None:
            z = z * self.gate_weight if self.gate_bias is None else torch.addcmul(self.gate_bias, z, self.gate_weight)
        s = torch.sigmoid(z)                      # i, f, o use it; the j block is recomputed as tanh below
        i, f, o = s[:, :H], s[:, 2 * H:3 * H], s[:, 3 * H:]
        j = torch.tanh(z[:, H:2 * H])
        c = torch.addcmul(f * c, i, j)
        cn = self.cell_norm(c) if self.cell_norm is not None else c
        tc = torch.tanh(cn)
        h = o * tc
        if self.trace is not None:
            self._record(i=i, j=j, f=f, o=o, c=c, tanh_c=tc, h=h)
        return h, (h, c)

    def _sequence(self, x, state):
        return rnn_fused.norm_lstm_sequence(self, x, state) if self.impl == "auto" else None

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, norm={self.norm_name!r}" + (
            f", impl={self.impl!r}" if self.impl != "auto" else "")


def _joint_lstm_update(cell, z, c, norm_c):
    """The LSTM update shared by the BN- and LN-LSTM cells, after their joint normalization of the 4H gate
    pre-activations ``z`` (the forget bias goes in after it): returns ``(h, (h, c_state))`` where the state keeps
    the normalized ``c`` when ``cell.state_norm_c`` (the authors' code) and the raw one otherwise."""
    H = cell.hidden_size
    if cell.forget_bias:
        z = torch.cat([z[:, :2 * H], z[:, 2 * H:3 * H] + cell.forget_bias, z[:, 3 * H:]], 1)
    s = torch.sigmoid(z)
    i, f, o = s[:, :H], s[:, 2 * H:3 * H], s[:, 3 * H:]
    j = torch.tanh(z[:, H:2 * H])
    c = torch.addcmul(f * c, i, j)
    cn = norm_c(c)
    tc = torch.tanh(cn)
    h = o * tc
    if cell.trace is not None:
        cell._record(i=i, j=j, f=f, o=o, c=c, tanh_c=tc, h=h)
    return h, (h, cn if cell.state_norm_c else c)


class BNLSTMCell(_Recurrent):
    """Batch-normalized LSTM of Cooijmans et al. (2017), as the paper's BN rows (PAPER.md §1.4 "BN (RNN/LSTM)").

    .. math::

        z = BN_t(W_x x_t; \\gamma_x, \\beta_x) + BN_t(W_h h_{t-1}; \\gamma_h, \\beta_h) \\qquad
        c_t = \\sigma(z_f) c_{t-1} + \\sigma(z_i) \\tanh(z_j) \\qquad
        h_t = \\sigma(z_o) \\tanh(BN_t(c_t; \\gamma_c, \\beta_c))

    ``BN_t`` uses the statistics of time step t over the batch (running averages per step in eval, momentum 0.1 =
    the code's EMA decay 0.9; torch's convention, or the code's with ``norm_kwargs={"running_stats": "tf"}``:
    averages starting at 0, biased variance); gains and biases are shared over time. Biases of ``W_x x`` and ``W_h h``
    would be cancelled by the mean subtraction, so the betas are the only biases. ``state_norm_c=True`` (the code)
    passes ``BN_t(c_t)`` on as the state, False the raw ``c_t``. ``max_steps`` = the BPTT length (20).

    ``norm`` (default ``"bn"``; e.g. ``"bn-s"``, or a batch-pooling :class:`~dnlib.norms.spec.NormSpec`) is the
    normalizer of each step, ``norm_kwargs`` its overrides; ``norm_kwargs["affine"]`` (default True) is the shared gain
    and bias.
    """

    num_gates, state_size = 4, 2

    def __init__(self, input_size: int, hidden_size: int, norm: NormLike = "bn", norm_kwargs: Mapping | None = None,
                 max_steps: int = 20, forget_bias: float = 0.0, state_norm_c: bool = True):
        super().__init__(input_size, hidden_size, input_bias=False)
        layer, affine = step_layer(norm, norm_kwargs)
        _refuse_instance_norm(layer, norm)
        self.norm_name = norm_name(norm)
        self.forget_bias, self.state_norm_c, self.max_steps = float(forget_bias), state_norm_c, max_steps
        self.norm_ih = StepNorm(layer, 4 * hidden_size, max_steps, affine)
        self.norm_hh = StepNorm(layer, 4 * hidden_size, max_steps, affine)
        self.norm_c = StepNorm(layer, hidden_size, max_steps, affine)
        self.reset_parameters()

    def step(self, xw, state, t=0):
        h, c = state
        z = self.norm_ih(xw, t) + self.norm_hh(h @ self.weight_hh.t(), t)
        return _joint_lstm_update(self, z, c, lambda c: self.norm_c(c, t))

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, norm={self.norm_name!r}, max_steps={self.max_steps}, "
                f"state_norm_c={self.state_norm_c}")


class LNLSTMCell(_Recurrent):
    """Layer-normalized LSTM of Ba et al. (2016), the paper's original "LN" row (PAPER.md §1.4 "LN (LSTM)").

    .. math::

        z = LN(W_x x_t + b_x; \\gamma_x, \\beta_x) + LN(W_h h_{t-1} + b_h; \\gamma_h, \\beta_h) \\qquad
        h_t = \\sigma(z_o) \\tanh(LN(c_t; \\gamma_c, \\beta_c))

    The first two LNs pool all 4H units of the four gates jointly, each with a 4H-unit gain and bias; the third
    pools the H units of ``c_t``. ``state_norm_c=True`` (the code's quirk) passes the normalized ``c_t`` on.

    ``W_x x_t`` and ``W_h h_{t-1}`` each carry a trainable 4H bias before their LN (``bias`` and ``bias_hh``,
    init 0), as the authors' ``LSTMLNCell`` (``_linear(..., bias=True)``): LN over the 4H units removes only the
    mean of a bias, so unlike BN's these train (and the L1 term sees them).

    ``norm`` (default ``"ln"``, affine) is the normalizer of the three sites, ``norm_kwargs`` its overrides.
    """

    num_gates, state_size = 4, 2

    def __init__(self, input_size: int, hidden_size: int, norm: NormLike = "ln", norm_kwargs: Mapping | None = None,
                 forget_bias: float = 0.0, state_norm_c: bool = True):
        super().__init__(input_size, hidden_size, input_bias=True)
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        layer = get_norm_layer(norm, norm_kwargs)
        _refuse_instance_norm(layer, norm)
        self.norm_name = norm_name(norm)
        self.forget_bias, self.state_norm_c = float(forget_bias), state_norm_c
        self.norm_ih = layer(4 * hidden_size)
        self.norm_hh = layer(4 * hidden_size)
        self.norm_c = layer(hidden_size)
        self.reset_parameters()

    def reset_parameters(self, init_scale: float = 0.1) -> None:
        super().reset_parameters(init_scale)
        nn.init.zeros_(self.bias_hh)

    def step(self, xw, state, t=0):
        h, c = state
        z = self.norm_ih(xw) + self.norm_hh(torch.addmm(self.bias_hh, h, self.weight_hh.t()))
        return _joint_lstm_update(self, z, c, self.norm_c)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, norm={self.norm_name!r}, state_norm_c={self.state_norm_c}"


# ----------------------------------------------------------------------------------------------- vanilla RNNs
def _nonlinearity(name: str):
    if name not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: got {name!r}; allowed values are {list(NONLINEARITIES)}")
    return NONLINEARITIES[name]


class NormRNNCell(_Recurrent):
    """Vanilla RNN with LN or DN (PAPER.md eqs. 10-11): ``h_t = g(N(W [x_t; h_{t-1}] + b))``.

    ``norm``: ``"none"`` (the baseline), ``"ln"``/``"ln-s"`` (LN over the H units), ``"dn-1d"``/``"dn-1d-s"``
    (window along the unit axis). ``nonlinearity``: ``"tanh"`` or ``"relu"``.
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", norm: NormLike = "none",
                 norm_kwargs: Mapping | None = None):
        super().__init__(input_size, hidden_size)
        self.nonlinearity = nonlinearity
        self._g = _nonlinearity(nonlinearity)
        self.norm_name = norm_name(norm)
        layer = get_norm_layer(norm, norm_kwargs)
        _refuse_instance_norm(layer, norm)
        self.norm = _site(layer, hidden_size)
        self.reset_parameters()

    def step(self, xw, state, t=0):
        (h,) = state
        z = torch.addmm(xw, h, self.weight_hh.t())
        if self.norm is not None:
            z = self.norm(z)
        h = self._g(z)
        if self.trace is not None:
            self._record(h=h)
        return h, (h,)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, norm={self.norm_name!r}"


class BNRNNCell(_Recurrent):
    """Vanilla RNN with batch normalization (PAPER.md eqs. 8-9): ``h_t = g(BN_t(W_x x_t) + BN_t(W_h h_{t-1}))``,
    statistics per time step, gains and biases shared over time (see :class:`BNLSTMCell`, also for ``norm``)."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", norm: NormLike = "bn",
                 norm_kwargs: Mapping | None = None, max_steps: int = 20):
        super().__init__(input_size, hidden_size, input_bias=False)
        layer, affine = step_layer(norm, norm_kwargs)
        _refuse_instance_norm(layer, norm)
        self.norm_name = norm_name(norm)
        self.nonlinearity, self.max_steps = nonlinearity, max_steps
        self._g = _nonlinearity(nonlinearity)
        self.norm_ih = StepNorm(layer, hidden_size, max_steps, affine)
        self.norm_hh = StepNorm(layer, hidden_size, max_steps, affine)
        self.reset_parameters()

    def step(self, xw, state, t=0):
        (h,) = state
        h = self._g(self.norm_ih(xw, t) + self.norm_hh(h @ self.weight_hh.t(), t))
        if self.trace is not None:
            self._record(h=h)
        return h, (h,)

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, norm={self.norm_name!r}, "
                f"max_steps={self.max_steps}")


CELLS = {"lstm": NormLSTMCell, "bn-lstm": BNLSTMCell, "ln-lstm": LNLSTMCell, "rnn": NormRNNCell,
         "bn-rnn": BNRNNCell}


def make_cell(arch: str, input_size: int, hidden_size: int, **kwargs) -> _Recurrent:
    """A cell by architecture name (:data:`CELLS`): ``"lstm"`` (per-nonlinearity; baseline with norm="none"),
    ``"bn-lstm"``, ``"ln-lstm"``, ``"rnn"`` (LN/DN/none), ``"bn-rnn"``; kwargs go to its constructor."""
    if arch not in CELLS:
        raise ValueError(f"arch: got {arch!r}; allowed values are {list(CELLS)}")
    return CELLS[arch](input_size, hidden_size, **kwargs)

