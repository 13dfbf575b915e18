"""Inside the recurrent cells of the PTB models (notebook 04): how often the gates saturate and how sparse the
hidden outputs are (:func:`gate_statistics`, :func:`gate_table`). How fast the cells train against ``nn.LSTM``:
``make bench`` (:mod:`dnlib.bench`); a configuration's training tokens/s: :func:`dnlib.experiments.ptb.bench`
(``python -m dnlib ptb bench``)::

    from dnlib.experiments import ptb, ptb_cells
    results = ptb.run_many(["base-lstm", "dn-star-lstm"], max_tokens=16000, vocab=500, epochs=1, hidden_size=32)
    ptb_cells.gate_table(results, ptb.load_data(16000, 500)[0]["valid"])
"""
from __future__ import annotations

import torch

from ..analysis.figures import MarkdownTable, markdown_table
from ..data import PTBBatches
from ..models.rnn_lm import LanguageModel
from ..norms.sparse import clear_penalties

__all__ = ["gate_statistics", "gate_table"]


@torch.no_grad()
def gate_statistics(model: LanguageModel, ids: torch.Tensor, batch_size: int = 20, num_steps: int = 20,
                    max_batches: int = 10, sat: float = 0.05, zero: float = 0.05) -> list:
    """How often each gate saturates and how sparse the activations are, per layer, over ``max_batches``
    minibatches of ``ids`` (eval mode, state carried).

    For the sigmoid gates ``i, f, o``: the fraction of values below ``sat`` or above ``1 - sat``; for the
    candidate ``j`` and ``tanh(c)``: the fraction with ``|value| > 1 - sat``; ``h_sparsity``: the fraction of
    hidden outputs with ``|h| < zero`` (for a ReLU RNN, also the exact zeros ``h_zeros``). Returns one dict per
    layer.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = PTBBatches(ids, batch_size, num_steps, device)
    model.set_trace(True)
    state = model.init_state(batch_size, device)
    for b, (x, _) in enumerate(batches):
        if b >= max_batches:
            break
        _, state = model(x, state)
    rows = []
    for k, layer in enumerate(model.layers):
        acts = {name: torch.stack([step[name] for step in layer.trace]) for name in layer.trace[0]}
        row = {"layer": k + 1}
        for g in ("i", "f", "o"):
            if g in acts:
                row[f"{g}_saturated"] = ((acts[g] < sat) | (acts[g] > 1 - sat)).double().mean().item()
        for g in ("j", "tanh_c"):
            if g in acts:
                row[f"{g}_saturated"] = (acts[g].abs() > 1 - sat).double().mean().item()
        row["h_sparsity"] = (acts["h"].abs() < zero).double().mean().item()
        row["h_zeros"] = (acts["h"] == 0).double().mean().item()
        rows.append(row)
    model.set_trace(False)
    clear_penalties(model)
    model.train(was)
    return rows


def gate_table(results, ids: torch.Tensor, batch_size: int | None = None, **kwargs) -> MarkdownTable:
    """:func:`gate_statistics` of every trained model (a list of RunResults) on ``ids``, as a Markdown table;
    ``batch_size``: the streams of the pass (None: each run's own); ``kwargs``: :func:`gate_statistics`'s."""
    cols = ["i_saturated", "j_saturated", "f_saturated", "o_saturated", "tanh_c_saturated", "h_sparsity", "h_zeros"]
    return markdown_table(["name", "layer"] + [c.replace("_", " ") for c in cols],
                          [[r.config.name, row["layer"]] + [f"{100 * row[c]:.1f}%" if c in row else None for c in cols]
                           for r in results for row in gate_statistics(
                               r.model, ids, r.config.batch_size if batch_size is None else batch_size, **kwargs)])
