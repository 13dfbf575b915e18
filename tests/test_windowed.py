"""``impl="auto"``'s compiled CPU path for windowed DN (:mod:`dnlib.norms.windowed`) against the general path, and
the dispatch table.

The compiled path is taken for large inputs only; here ``windowed.LARGE`` is lowered to 0 so that small fp64
inputs take it (the same code). Each case compiles a forward and a backward (30-60 s on a busy 2-core machine), so
the cases are few and each checks several things: outputs, input / gain / bias / learned-sigma gradients and the L1
term against the general path (fp64, 1e-12), gradcheck (the compiled backward) and gradgradcheck (the double
backward's plain-op VJP), under every border rule, on the shared-field kernels (spatial windows, all channels) and
windows-only kernels (channel windows: 1-D DN, LRN) and the generic ones (the VJP of the general path's
composition).
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from dnlib import DivisiveNorm, NormSpec, get_spec, make_norm, sparse_penalty
from dnlib.norms import windowed
from dnlib.norms.functional import _plan, _shared

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("compiled_path")]
CS = "channel,space"

CASES = [
    # shared fields (the paper's conv DN), unequal windows, each border rule; a learned sigma; channels-last input
    pytest.param(NormSpec(CS, CS, {"space": 3}, {"space": 5}, sigma=0.5, border="valid"), (2, 3, 6, 5), False,
                 id="space3x5-valid"),
    pytest.param(NormSpec(CS, CS, {"space": 5}, {"space": 3}, sigma=0.5, border="reference", learn_sigma=True),
                 (2, 3, 5, 4), True, id="space5x3-reference-learned-sigma-channels-last"),
    pytest.param(NormSpec(CS, CS, {"space": 2}, {"space": 4}, sigma=0.5, border="reference"), (2, 3, 5, 4), False,
                 id="space2x4-reference-even"),
    pytest.param(NormSpec(CS, CS, {"space": 3}, {"space": 5}, sum_weights={"space": 1.0}, sup_weights={"space": 1.5},
                          border="zeros", floor="mean"), (2, 3, 5, 6), False, id="gauss3x5-zeros-floor"),
    # generic kernels: channel windows (1-D DN on (N, C, L)), each border rule
    pytest.param(NormSpec("channel", "channel", {"channel": 3}, {"channel": 5}, sigma=1.0, border="zeros"),
                 (3, 7, 4), False, id="channel3x5-zeros-1d"),
    pytest.param(NormSpec("channel", "channel", {"channel": 4}, {"channel": 3}, sigma=1.0, border="reference",
                          learn_sigma=True), (3, 7, 2), False, id="channel4x3-reference-learned-sigma"),
    pytest.param(NormSpec("channel", "channel", {"channel": 5}, {"channel": 3}, sigma=0.5, border="valid"),
                 (3, 8, 3), False, id="channel5x3-valid"),
    # LRN-like (no centring, power 3/4, sup_scale): window kernels; a global mean beside a local B: generic kernels
    pytest.param(NormSpec(None, "channel", None, {"channel": 3}, sigma=1.0, power=0.75, sup_scale=0.5,
                          border="zeros"), (2, 5, 3), False, id="lrn-like-power0.75"),
    pytest.param(NormSpec("channel", "channel", None, {"channel": 3}, sigma=0.5), (3, 6, 4), False,
                 id="global-mean-local-sup-generic"),
]


@pytest.fixture
def everything_large(monkeypatch):
    monkeypatch.setattr(windowed, "LARGE", 0)


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()


def _pair(spec, c):
    ref = DivisiveNorm(c, spec, affine=True, alpha=0.1, impl="general").double()
    ours = DivisiveNorm(c, spec, affine=True, alpha=0.1).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.slow
@pytest.mark.parametrize("spec,shape,channels_last", CASES)
def test_compiled_path_equals_general_path(spec, shape, channels_last, everything_large, monkeypatch):
    calls = []
    real = windowed.compiled_norm
    monkeypatch.setattr(windowed, "compiled_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    ours, ref = _pair(spec, shape[1])
    x = _x(shape)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs = {}
    for name, m in (("ours", ours), ("ref", ref)):
        y = m(x)
        pen = sparse_penalty(m)
        loss = (y * w).sum() + 3.0 * pen
        outs[name] = (y.detach(), pen.detach(), torch.autograd.grad(loss, [x, *m.parameters()]))
    assert calls, "the compiled path did not run"
    assert spec not in windowed._broken
    assert (outs["ours"][0] - outs["ref"][0]).abs().max() < 1e-12
    assert abs(outs["ours"][1] - outs["ref"][1]) < 1e-12
    for a, b in zip(outs["ours"][2], outs["ref"][2]):
        assert (a - b).abs().max() < 1e-12
    # first derivatives through the compiled backward, second through the plain-op VJP
    names = [n for n, _ in ours.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in ours.named_parameters()]

    def fn(t, *ps):
        y = torch.func.functional_call(ours, dict(zip(names, ps)), (t,))
        return y, sparse_penalty(ours)
    assert gradcheck(fn, (x, *params), fast_mode=True)
    assert gradgradcheck(fn, (x, *params), fast_mode=True)


def test_dispatch_table():
    """impl="auto" by the table: the compiled path for windowed specs on large CPU inputs only; rms on the CPU takes
    the general path on large inputs (measured faster than torch's F.rms_norm; small ones unmeasured: the native
    kernel); the other native kernels stay."""
    big, small = torch.empty(windowed.LARGE, 1, 1, 1), torch.empty(4, 1, 1, 1)
    dn, rms, bn = get_spec("dn"), get_spec("rms"), get_spec("bn")
    assert windowed.choice(dn, None, big) == "compiled" and windowed.choice(dn, None, small) == "general"
    assert windowed.choice(rms, "rms", big) == "general" and windowed.choice(rms, "rms", small) == "native"
    assert windowed.choice(bn, "bn", big) == "native"
    assert windowed.choice(get_spec("ln"), None, big) == "general"   # no window, no kernel
    assert _shared(_plan(dn, 2), None, None) and not _shared(_plan(get_spec("dn-1d"), 1), None, None)
    assert windowed._windows_only(get_spec("dn-1d"), _plan(get_spec("dn-1d"), 1))
    assert windowed._windows_only(get_spec("lrn"), _plan(get_spec("lrn"), 2))


def test_dnlib_compile_0_keeps_auto_off_the_compiled_path(everything_large, monkeypatch):
    """``DNLIB_COMPILE=0`` (the test suite's setting, tests/conftest.py): impl="auto" takes the general path for
    windowed specs on large inputs, bit for bit, and compiles nothing; unset, 1 or anything else: the table."""
    spec = NormSpec(("channel", "space"), ("channel", "space"), {"space": 3}, {"space": 3}, sigma=0.5)
    x = _x((2, 3, 4, 4))
    for value, expected in (("0", "general"), ("off", "general"), (" No ", "general"), ("false", "general"),
                            ("1", "compiled"), ("", "compiled"), (None, "compiled")):
        if value is None:
            monkeypatch.delenv("DNLIB_COMPILE", raising=False)
        else:
            monkeypatch.setenv("DNLIB_COMPILE", value)
        assert windowed.choice(spec, None, x) == expected, value
    monkeypatch.setenv("DNLIB_COMPILE", "0")
    m = DivisiveNorm(3, spec).double()
    calls = []
    monkeypatch.setattr(windowed, "compiled_norm", lambda *a, **k: calls.append(a) or None)
    torch.testing.assert_close(m(x), DivisiveNorm(3, spec, impl="general").double()(x), rtol=0, atol=0)
    assert calls == []


def test_grad_free_calls_compile_once_the_compile_has_paid_for_itself(everything_large, monkeypatch):
    """Evaluation (``no_grad``) of a spec that training has not compiled takes the general path until its grad-free
    inputs add up to ``INFERENCE_REPAY`` elements, then the compiled path (before: the first large grad-free call
    compiled, so a smoke run compiled for its evaluation alone); a spec whose kernels training compiled uses them at
    once; with gradients on, the first large call compiles, as before."""
    spec = NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.7)
    x = _x((2, 3, 4, 4)).detach()
    monkeypatch.setattr(windowed, "INFERENCE_REPAY", 3 * x.numel())
    monkeypatch.setattr(windowed, "_inference_seen", {})
    monkeypatch.setattr(windowed, "_compiled", {})
    calls = []
    monkeypatch.setattr(windowed, "compiled_norm", lambda *a, **k: calls.append(1) or None)   # None: general path
    m, ref = DivisiveNorm(3, spec).double().eval(), DivisiveNorm(3, spec, impl="general").double().eval()
    with torch.no_grad():
        for i in range(4):
            torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)
            assert len(calls) == max(0, i - 1), i               # the third call reaches 3 x numel: it compiles
    assert windowed.choice(spec, None, x) == "compiled"          # (grad on: the training rule)
    other = NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.9)
    with torch.no_grad():
        assert windowed.choice(other, None, x) == "general"
        windowed._kernels(other, 2)                               # as a training step does (compiled lazily)
        assert windowed.choice(other, None, x) == "compiled"
    assert windowed.choice(NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=1.1), None, x) == "compiled"


def test_rms_auto_is_the_general_path(everything_large, monkeypatch):
    """The rms preset's auto path on large CPU inputs is the general path (bit for bit), not F.rms_norm."""
    calls = []
    real = torch.nn.functional.rms_norm
    monkeypatch.setattr(torch.nn.functional, "rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _x((3, 4, 5, 5)).detach().float()
    outs = {}
    for impl in ("fused", "general", "auto"):
        outs[impl] = make_norm("rms", 4, impl=impl)(x)
        outs[impl + " calls"] = len(calls)
    assert outs["fused calls"] == 1 and outs["auto calls"] == 1    # (fused called it; general and auto did not)
    assert torch.equal(outs["auto"], outs["general"])


def test_compile_failure_falls_back_to_the_general_path(everything_large, monkeypatch):
    """Where Inductor cannot compile (no C++ compiler, ...) the module warns once and computes the general path."""
    def broken(*args, **kwargs):
        raise RuntimeError("no working C++ compiler found")
    monkeypatch.setattr(windowed, "_kernels", lambda spec, nsp: (broken, broken))
    spec = NormSpec(CS, CS, {"space": 3}, {"space": 3}, sigma=0.7)
    monkeypatch.setattr(windowed, "_broken", {})
    ours = DivisiveNorm(3, spec, affine=False).double()
    ref = DivisiveNorm(3, spec, affine=False, impl="general").double()
    x = _x((2, 3, 5, 5))
    with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler"):
        y = ours(x)
    assert spec in windowed._broken and torch.equal(y, ref(x))
    assert windowed.choice(spec, None, x) == "general"


@pytest.mark.parametrize("border", ["valid", "zeros"])
def test_wide_window_running_sums_keep_fp32_digits(border):
    """Wide windows (k > 5) are running sums (cumulative sums); of the activations minus their row mean, so that in
    fp32 they do not cancel the digits of a large common mean: 800 units of mean 5, the paper's 61-unit window,
    max error against fp64 below the shifted adds' (3e-6; plain running sums: 1.1e-5)."""
    from dnlib.norms.functional import _box1d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, 800, generator=g, dtype=torch.float64) * 3 + 5
    ref = _box1d(x, 2, 61, border)
    assert (_box1d(x.float(), 2, 61, border).double() - ref).abs().max() < 1.5e-6


def test_bench_table_keeps_the_faster_path_and_refuses_bad_groups():
    """``bench_layers.table`` (what regenerates AUTO): the general path where it beat torch's kernel, torch's kernel
    otherwise (not listed: the default), the compiled path where it beat the general one."""
    from dnlib.norms import bench_layers
    row = dict(load_before=1.0, threads=1)
    rows = [dict(row, group="presets", name="rms", shape=[64, 256, 100], auto_ratio=1.0, general_ratio=0.7,
                 native_path_ratio=1.0),
            dict(row, group="presets", name="bn", shape=[64, 256, 100], auto_ratio=1.0, general_ratio=3.0,
                 native_path_ratio=1.0),
            dict(row, group="dn2d", name="dn3", shape=[100, 32, 32, 32], auto_ratio=1.0, general_ratio=2.0,
                 auto_path="compiled")]
    text = bench_layers.table(rows)
    assert "('cpu', 'rms', 'large'): 'general'" in text and "'bn'" not in text.split("MEASURED")[0]
    assert "('cpu', 'windowed', 'large'): 'compiled'" in text and "presets rms 64x256x100" in text
    with pytest.raises(ValueError, match="groups: unknown group 'dn3d'"):
        bench_layers.layers(["dn3d"])


def _table_row(group, name, shape, auto, general, path="compiled", device="cpu"):
    return {"group": group, "name": name, "shape": list(shape), "device": device, "load_before": 0.5, "threads": 1,
            "auto_path": path, "auto_ratio": auto, "general_ratio": general}


def _windowed_entries(text):
    auto = text.split("MEASURED")[0]
    return {line.split(":")[0].strip(): line.split(":")[1].split(",")[0].strip() for line in auto.splitlines()
            if "'windowed'" in line}


def test_bench_table_decides_the_windowed_choice_from_all_rows_of_a_class_whatever_their_order():
    """Before, each windowed row overwrote its size class and the last one decided: 4 of 6 large rows timed the
    compiled path slower than the general one, the last 2 (dn1d) faster, and the table wrote 'compiled' (benchmark
    review). Now the median of compiled / general time over the class's rows decides (here 1.21: general)."""
    from dnlib.norms import bench_layers
    c32, c64, seq = (100, 32, 32, 32), (100, 64, 32, 32), (64, 256, 100)
    rows = [_table_row("dn2d", "dn3", c32, 2.0, 1.6), _table_row("dn2d", "dn5", c32, 2.1, 1.7),
            _table_row("dn2d", "dn3", c64, 2.2, 1.8), _table_row("dn2d", "dn5", c64, 2.3, 1.9),
            _table_row("dn1d", "dn3", seq, 1.9, 7.7), _table_row("dn1d", "dn5", seq, 1.8, 10.0)]
    for order in (rows, rows[::-1], rows[4:] + rows[:4]):
        assert _windowed_entries(bench_layers.table(order)) == {
            "('cpu', 'windowed', 'large')": "'general'", "('cpu', 'windowed', 'small')": "'general'"}
    faster = [_table_row("dn2d", "dn3", c32, 0.9, 1.6), *rows[1:3], *rows[4:]]   # 3 of 5 faster
    assert _windowed_entries(bench_layers.table(faster))["('cpu', 'windowed', 'large')"] == "'compiled'"
    # a class per device: a CUDA row does not decide the CPU's entry
    cuda = [*rows[:4], _table_row("dn2d", "dn3", c32, 0.5, 1.6, device="cuda")]
    entries = _windowed_entries(bench_layers.table(cuda))
    assert entries["('cpu', 'windowed', 'large')"] == "'general'"
    assert entries["('cuda', 'windowed', 'large')"] == "'compiled'"


def test_bench_table_never_chooses_a_compiled_path_no_row_timed():
    """Where ``auto`` ran the general path (the table in force said so), "auto" against "general" timed one path
    twice, and noise (1.70x against 1.71x) wrote 'compiled', a path never timed (benchmark review)."""
    from dnlib.norms import bench_layers
    text = bench_layers.table([_table_row("dn2d", "dn3", (100, 32, 32, 32), 1.70, 1.71, path="general")])
    assert _windowed_entries(text)["('cpu', 'windowed', 'large')"] == "'general'"
    assert "compiled path not timed: auto ran general" in text and "auto ran general)" in text
