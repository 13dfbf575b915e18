"""Which L1 terms :func:`dnlib.sparse_penalty` returns, and what pending terms keep alive (issue 22 item 2,
issue 23 item 3).

The rule: a forward records a term only when it can be backpropagated (training mode, gradients on); a term is
pending until it is collected, until a backward has run through its forward without it (warned), or until the
site's next forward finds that nothing refers to its forward's output any more. So the penalty is the penalty of
the forwards the loss is built from, several of them when they are (gradient accumulation, siamese networks,
RNN time steps), and uncollected terms never hold more than the graphs the caller holds, plus one forward's.
Memory is measured on the autograd graph: the bytes of the tensors saved for backward that are still alive.
"""
import weakref

import pytest
import torch
from torch import nn

from dnlib import make_norm, sparse_penalty

ALPHA = 0.01


class _SavedBytes:
    """Tensors saved for backward (through ``saved_tensors_hooks``) that are still alive: count and bytes. The box
    holds a detached alias: the tensor itself, when it is its node's output, would keep its node alive."""

    class _Box:
        def __init__(self, t):
            self.t = t

    def __init__(self):
        self.refs = []

    def pack(self, t):
        box = self._Box(t.detach())
        self.refs.append((weakref.ref(box), t.numel() * t.element_size()))
        return box

    @staticmethod
    def unpack(box):
        return box.t

    def alive(self) -> tuple:
        live = [n for r, n in self.refs if r() is not None]
        return len(live), sum(live)


def _model(impl="auto"):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                         make_norm("dn", 16, window=3, sigma=0.5, alpha=ALPHA, impl=impl),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         make_norm("ln", 16, alpha=ALPHA, impl=impl)).train()


def _x(seed):
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("impl", ["auto", "general"])
def test_forwards_never_backpropagated_hold_at_most_one_forward(impl):
    """60 training forwards with alpha > 0, outputs dropped, no backward and no sparse_penalty call (issue 22: max
    RSS +539 MiB): before, every forward's term held its graph (the conv activations and the L1 branch), so the
    saved bytes grew linearly; now a forward's term goes when its output does (at the site's next forward)."""
    model = _model(impl)
    counter = _SavedBytes()
    held = []
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        for step in range(60):
            model(_x(step))                   # e.g. a training-mode logging forward, output dropped
            held.append(counter.alive())
    one = held[0]
    assert one[1] > 0
    assert max(n for _, n in held) <= 2 * one[1], (one, held[-1])   # before: held[-1] == 60 * one
    # the last forward's term is still there for the demo pattern `model(x); sparse_penalty(model)`
    assert sparse_penalty(model).item() > 0
    assert counter.alive() == (0, 0)          # collected and dropped: nothing is held


def test_accumulated_forwards_sum_and_match_collecting_each():
    """Gradient accumulation: k forwards whose losses are kept, one collection, one backward give the value and the
    gradients of collecting each forward's terms right after it (a siamese pair is k = 2 without a loop)."""
    model, ref = _model(), _model()
    xs = [_x(s) for s in range(3)]
    losses = [model(x).square().mean() for x in xs]
    total = sum(losses) + sparse_penalty(model)
    total.backward()
    expected = sum(ref(x).square().mean() + sparse_penalty(ref) for x in xs)
    expected.backward()
    torch.testing.assert_close(total, expected)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert all(sparse_penalty(m).item() == 0.0 for m in (model, ref))


def test_no_grad_and_inference_and_eval_forwards_record_no_term():
    """Issue 23: one forward gave 0.002293, a no-grad logging forward followed by a normal one 0.004586, with no
    warning. A forward that cannot be backpropagated records nothing; two grad forwards (siamese) still sum."""
    model = _model()
    x, x2 = _x(0), _x(1)
    out = model(x)
    one = sparse_penalty(model)
    assert one.requires_grad and one.item() > 0
    del out
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            model(x)                          # a logging forward in training mode
        out = model(x)
        torch.testing.assert_close(sparse_penalty(model), one)
        del out
    model.eval()
    model(x)
    model.train()
    out = model(x)
    torch.testing.assert_close(sparse_penalty(model), one)
    # siamese: two forwards before one loss both count
    a, b = model(x), model(x2)
    pair = sparse_penalty(model)
    b_alone = model(x2)
    torch.testing.assert_close(pair, one + sparse_penalty(model))
    assert a.shape == b.shape == b_alone.shape == out.shape


def test_l1_mean_is_alpha_times_the_mean_absolute_value_with_its_gradient():
    """functional.l1_mean (one vector_norm reduction) against the naive alpha * mean|v|, values and gradients
    (fp64), zeros included (their subgradient is 0 in both); an empty tensor stays NaN as the naive mean."""
    from dnlib.norms.functional import l1_mean
    v = torch.randn(7, 5, 3, dtype=torch.float64)
    v[0, 0] = 0.0
    a = v.clone().requires_grad_()
    b = v.clone().requires_grad_()
    got, want = l1_mean(a, 0.3), 0.3 * b.abs().mean()
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
    got.backward()
    want.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-15, atol=0)
    assert (a.grad[0, 0] == 0).all()
    assert l1_mean(torch.empty(0), 0.1).isnan()


# --- activation checkpointing (torch.utils.checkpoint) --------------------------------------------------------------

def _ckpt_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), make_norm("ln", 8, alpha=0.1)).train()


def test_reentrant_checkpointing_warns_and_keeps_no_stale_term():
    """use_reentrant=True runs the forward under no_grad (no term) and again inside the backward. Before, the
    recompute's term stayed pending: step 0's penalty was 0 silently, step 1's sparse_penalty returned step 0's
    stale term and its backward raised 'Trying to backward through the graph a second time'. Now the term recorded
    inside a backward is dropped, and the lost term is said, once per site."""
    import warnings

    from torch.utils.checkpoint import checkpoint
    model = _ckpt_model()
    seen = []
    for _step in range(3):
        x = torch.randn(4, 8, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h = checkpoint(model, x, use_reentrant=True)
            pen = sparse_penalty(model)
            assert pen.item() == 0.0 and not pen.requires_grad   # nothing recorded under no_grad
            (h.sum() + pen).backward()                           # step 1 raised before
            assert sparse_penalty(model).item() == 0.0           # the recompute left nothing pending
        seen.append([str(w.message) for w in caught])
    assert len(seen[0]) == 1 and seen[1:] == [[], []], seen
    msg = seen[0][0]
    assert "use_reentrant=True" in msg and "use_reentrant=False" in msg and "L1 term" in msg


@pytest.mark.parametrize("early_stop", [True, False])
def test_non_reentrant_checkpointing_collects_the_term_once(early_stop):
    """use_reentrant=False: the forward records the term as without checkpointing (value and gradients equal), the
    recompute inside the backward records none, and collecting recomputes nothing. Before, sparse_penalty read the
    output tap's saved tensors, which ran the checkpoint's unpack hook: a recompute outside the backward (early stop:
    a second forward) or, without early stop, a deadlock (the recompute re-entered the site's lock)."""
    import threading
    import warnings

    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop
    model, ref = _ckpt_model(), _ckpt_model()
    x = torch.randn(4, 8)
    calls = []

    def run(t):
        calls.append(1)
        return model(t)

    out = {}

    def step():
        try:
            with set_checkpoint_early_stop(early_stop), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                h = checkpoint(run, x, use_reentrant=False)
                out["forwards"] = len(calls)
                out["pen"] = sparse_penalty(model)
                out["after_collect"] = len(calls)
                (h.sum() + out["pen"]).backward()
                out["left"] = sparse_penalty(model).item()
            out["warnings"] = [str(w.message) for w in caught]
        except Exception as e:  # noqa: BLE001 (reported by the assertions below)
            out["error"] = e

    worker = threading.Thread(target=step, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "sparse_penalty deadlocked under non-reentrant checkpointing"
    assert "error" not in out, out.get("error")
    assert out["forwards"] == 1 and out["after_collect"] == 1, calls   # collecting recomputed nothing
    assert out["left"] == 0.0 and out["warnings"] == []
    h_ref = ref(x)                                                     # the same step without checkpointing
    want = sparse_penalty(ref)
    (h_ref.sum() + want).backward()
    assert want.item() > 0
    torch.testing.assert_close(out["pen"], want)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
