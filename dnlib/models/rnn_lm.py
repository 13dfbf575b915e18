"""The word-level language model of the paper's PTB experiments (PAPER.md §3.3; Zaremba et al.'s "small"
configuration; models layer): an embedding, ``num_layers`` stacked recurrent cells of :mod:`dnlib.models.rnn`
(:func:`~dnlib.models.rnn.make_cell`) and a softmax layer, the hidden state carried in and out of :meth:`forward`.
Its PTB configurations are :mod:`dnlib.experiments.ptb_configs` (``LanguageModel(vocab_size,
**PTBConfig.model_kwargs())``); K of them packed into one module: :mod:`dnlib.models.stacked_rnn`.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..norms.presets import NormLike
from .rnn import make_cell

__all__ = ["LanguageModel"]


class LanguageModel(nn.Module):
    """The PTB word-level model (PAPER.md §3.3; Zaremba et al.'s "small" config): embedding (dimension = hidden
    size), ``num_layers`` stacked recurrent layers, an untied softmax layer. No dropout.

    All weights, the embedding and the softmax are drawn uniform(-init_scale, init_scale); biases 0; normalizer
    gains 1 and biases 0.

    ``forward(ids, state)`` takes token ids ``(N, T)`` and returns time-major logits ``(T, N, vocab_size)`` and
    the new state (a list, one tuple of ``(N, H)`` tensors per layer).

    Args:
        vocab_size: V (10,000 for PTB).
        hidden_size: H of every layer (200 for the LSTM; the paper's vanilla RNN 400, the code's 200).
        arch: the cell (see :func:`~dnlib.models.rnn.make_cell`).
        num_layers: stacked layers (2).
        init_scale: half-width of the uniform initialisation (0.1).
        norm: every layer's normalizer, a preset name or a :class:`~dnlib.norms.spec.NormSpec`; None (default): the
            cell's own default (``"none"`` for ``lstm``/``rnn``, ``"bn"`` for the BN cells, ``"ln"`` for
            ``ln-lstm``).
        norm_kwargs: the :func:`dnlib.make_norm` overrides of every normalizer site.
        **cell_kwargs: passed to each cell (``nonlinearity``, ``max_steps``, ``forget_bias``, ...).
    """

    def __init__(self, vocab_size: int, hidden_size: int = 200, arch: str = "lstm", num_layers: int = 2,
                 init_scale: float = 0.1, norm: NormLike = None, norm_kwargs: Mapping | None = None,
                 **cell_kwargs):
        super().__init__()
        if norm is not None:
            cell_kwargs["norm"] = norm
        cell_kwargs["norm_kwargs"] = norm_kwargs
        self.vocab_size, self.hidden_size, self.arch, self.num_layers = vocab_size, hidden_size, arch, num_layers
        self.init_scale = init_scale
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList(make_cell(arch, hidden_size, hidden_size, **cell_kwargs)
                                    for _ in range(num_layers))
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        s = self.init_scale
        nn.init.uniform_(self.embedding.weight, -s, s)
        nn.init.uniform_(self.decoder.weight, -s, s)
        nn.init.zeros_(self.decoder.bias)
        for layer in self.layers:
            layer.reset_parameters(s)

    def init_state(self, batch_size: int, device=None) -> list:
        return [layer.init_state(batch_size, device) for layer in self.layers]

    def forward(self, ids: torch.Tensor, state: list | None = None):
        x = self.embedding(ids.t())                        # (T, N, H)
        new_state = []
        for k, layer in enumerate(self.layers):
            x, s = layer(x, state[k] if state is not None else None)
            new_state.append(s)
        return self.decoder(x), new_state

    def set_trace(self, on: bool = True) -> None:
        """Start (``on``) or stop recording every cell's per-step activations in ``layer.trace``."""
        for layer in self.layers:
            layer.trace = [] if on else None

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, arch={self.arch!r}"

