"""``python -m dnlib.bench --quick`` (issue 25 item 4): the command runs end to end at tiny sizes and writes the report
and the figure in their format. Timing decides nothing here (the numbers of a quick run mean nothing)."""
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dnlib import bench

pytestmark = pytest.mark.usefixtures("one_thread")

RATIO = r"\d+\.\d\dx"


def test_quick_bench_writes_every_section_with_ratios_and_load_averages(tmp_path, capsys):
    out, fig = tmp_path / "bench.txt", tmp_path / "hidden.png"
    assert bench.main(["--quick", "--device", "cpu", "--out", str(out), "--figure", str(fig),
                       "--sections", "layers,train,cells,ptb,hidden"]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out            # the report is what was printed
    lines = text.splitlines()
    assert lines[0].startswith("torch ") and lines[0].endswith("--quick")
    assert sum(line.strip().startswith("load average ") for line in lines) >= 10  # before and after each section
    layer_rows = [line for line in lines if line.startswith("cpu ")]
    # the rows of dnlib.norms.bench_layers.layers (the one layer benchmark): dn2d 3x3/5x5, dn1d 3/5, six presets at
    # two shapes; auto and general on every row, native_path where the preset has a fused kernel
    assert [r.split()[1] for r in layer_rows] == ["dn2d"] * 2 + ["dn1d"] * 2 + ["presets"] * 12
    assert all(re.search(rf"auto .* \({RATIO}\) \| general .* \({RATIO}\)", r) and "load " in r for r in layer_rows)
    train = [line for line in lines if line.startswith("train step, batch (2, 3, 32, 32)")]
    assert len(train) == 1 and all(f"{m} " in train[0] for m in ("bn-star", "dn-star", "base"))
    assert re.search(rf"bn-star +[\d.]+ img/s \(1\.00x\) \| dn-star +[\d.]+ img/s \({RATIO}\)", train[0])
    rows = [line.strip() for line in lines if "tokens/s (fwd" in line]
    cells = {name: [r for r in rows if r.startswith(name + " ")]
             for name in ("nn.LSTM", "peer: TorchScript LN-LSTM", "peer: lower bound", *bench.CELL_CONFIGS)}
    assert all(len(found) == 1 for found in cells.values()), cells
    cells = {name: found[0] for name, found in cells.items()}
    for name, row in cells.items():
        assert re.search(rf"forward .* ms .* tokens/s \(fwd(\+bwd| only)\)  {RATIO}$", row), name
    assert cells["nn.LSTM"].endswith(" 1.00x")
    assert "backward        -" in cells["peer: lower bound"] and "(fwd only)" in cells["peer: lower bound"]
    ptb = [line for line in lines if " step " in line and "tokens/s  time" in line]
    assert [line.split()[0] for line in ptb] == ["base-lstm", "ln-star-lstm", "dn-star-lstm"]
    assert ptb[0].endswith("time 1.00x")
    assert [line.split()[0] for line in lines if line.startswith("  H=")] == ["H=", "H="]
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--sections", "layers,gpu"], "--sections: unknown section 'gpu'; known are layers, train, cells, ptb, hidden"),
    (["--sections", ","], "--sections: ',' names no section; known are layers, train, cells, ptb, hidden"),
    (["--groups", ","], "--groups: ',' names no group; known are dn2d, dn1d, presets"),
    (["--groups", "dn2d,dn3d"], "--groups: unknown group 'dn3d'; known are dn2d, dn1d, presets"),
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
])
def test_bad_arguments_are_one_line_on_stderr_and_exit_2(args, message, tmp_path, capsys):
    """Refused before anything runs or is written (pinned for issue 24's split of main)."""
    out = tmp_path / "bench.txt"
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--out", str(out), *args])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"python -m dnlib.bench: error: {message}\n"
    assert not out.exists()


def test_hidden_size_figure_gives_each_candidate_one_colour_in_both_panels():
    """The legend is drawn on the right panel only; the left (forward + backward) has no line for the forward-only
    lower bound. Before, the colours came from each panel's own cycle, so on the left every candidate after the
    lower bound took the next one's colour (LN* drawn in the lower bound's green, DN* in LN*'s red)."""
    import matplotlib
    matplotlib.use("agg")
    from dnlib.analysis import rnn_bench as rb

    rows = [{"name": n, "hidden": h, "tokens_per_s": t * h, "forward_only": n == "lower bound", "steps": 2,
             "batch": 2, "fwd_ms": 1.0 + t} for t, n in enumerate(("nn.LSTM", "lower bound", "LN*", "DN*"))
            for h in (100, 200)]
    fig = rb.hidden_size_figure(rows)
    left, right = ({line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes[:2])
    assert sorted(left) == ["DN*", "LN*", "nn.LSTM"] and len(right) == 4
    assert all(left[n] == right[n] for n in left), (left, right)
    assert len(set(right.values())) == 4


def test_a_quick_or_partial_bench_never_writes_the_committed_report(tmp_path, monkeypatch, capsys):
    """``--quick --sections cells`` replaced ./results/bench_cpu.txt (the default --out, relative to the working
    folder) with a one-section smoke report: a quick or partial bench prints only unless --out names a file."""
    committed = Path(bench.__file__).resolve().parent.parent / "results" / "bench_cpu.txt"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench_cpu.txt").write_text("FULL REPORT\n")
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--quick", "--device", "cpu", "--sections", "cells"]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "results" / "bench_cpu.txt").read_text() == "FULL REPORT\n"
    assert captured.out.startswith("torch ") and "printed only" in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bench_cpu.txt", "results"]
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before


@pytest.mark.parametrize("args, full", [([], True), (["--quick"], False), (["--sections", "cells"], False),
                                        (["--groups", "dn2d"], False),
                                        (["--sections", "hidden,ptb,cells,train,layers"], True)])
def test_only_a_full_bench_defaults_to_the_repositorys_results_from_any_folder(args, full, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ap = bench._parser()
    a = ap.parse_args(args)
    sections, _, groups = bench._check_args(ap, a)
    out, figure = bench.outputs(ap, a, sections, groups)
    root = bench.RESULTS
    assert root == Path(bench.__file__).resolve().parent.parent / "results"
    if full:
        assert (out, figure) == (str(root / "bench_cpu.txt"), str(root / "figures" / "bench_rnn_hidden.png"))
    else:
        assert (out, figure) == (None, None)
    a = ap.parse_args([*args, "--out", "x.txt", "--figure", "x.png"])
    assert bench.outputs(ap, a, sections, groups) == ("x.txt", "x.png")      # named files are always written


def test_a_gpu_bench_never_replaces_the_committed_cpu_results(tmp_path, monkeypatch):
    """``--device all`` (the default) on a GPU machine is a full bench whose CPU sections are the GPU host's: it
    wrote them over results/bench_cpu.txt and the hidden-size figure, measured on the project's 2-core machine."""
    monkeypatch.chdir(tmp_path)
    ap = bench._parser()
    a = ap.parse_args([])
    sections, _, groups = bench._check_args(ap, a)
    for devices in (["cpu", "cuda"], ["cuda"]):
        assert bench.outputs(ap, a, sections, groups, devices) == (None, None)
    assert bench.outputs(ap, a, sections, groups, ["cpu"])[0] == str(bench.RESULTS / "bench_cpu.txt")
    a = ap.parse_args(["--out", "gpu.txt"])
    assert bench.outputs(ap, a, sections, groups, ["cpu", "cuda"]) == ("gpu.txt", None)


def test_make_bench_runs_with_one_thread_as_the_readme_says():
    root = bench.RESULTS.parent
    recipe = (root / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "-m dnlib.bench --threads 1" in recipe, recipe
    assert "what `make bench` runs with one thread" in (root / "README.md").read_text()


def test_the_benches_time_in_float32_the_runs_arithmetic(monkeypatch, capsys):
    """Before: ``dnlib.bench`` and ``scripts/gpu_throughput.py`` timed under torch's defaults, where cuDNN
    convolutions use TF32, while the runs they stand for compute in float32 (dnlib.training.precision): GPU figures
    of a faster arithmetic. Every section now times in float32, and the process's switches are restored after."""
    import importlib.util

    from dnlib.training import precision
    float32 = {"cudnn_tf32": False, "matmul_tf32": False, "float32_matmul_precision": "highest"}
    with precision.float32_arithmetic(True):           # a process whose switches allow TF32 (restored after)
        before, seen = precision.switches(), []

        def section(*args, **kw):
            seen.append(precision.switches())
            return []
        monkeypatch.setattr(bench, "layers_section", section)
        monkeypatch.setattr(bench, "cells_section", section)
        assert bench.main(["--quick", "--device", "cpu", "--sections", "layers,cells"]) == 0
        assert seen == [float32, float32] and precision.switches() == before
        path = Path(bench.__file__).resolve().parent.parent / "scripts" / "gpu_throughput.py"
        spec = importlib.util.spec_from_file_location("_gpu_throughput_for_test", path)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        monkeypatch.setattr(script, "_main", lambda argv=None: seen.append(precision.switches()) or 0)
        assert script.main([]) == 0 and seen[-1] == float32 and precision.switches() == before
    capsys.readouterr()


def test_the_rnn_sections_run_on_the_device_they_are_given(tmp_path, monkeypatch):
    """``--device cuda``: the cells, ptb and hidden sections timed the CPU under a header naming the GPU, and their
    rows had no device (benchmark review). On ``meta`` (a device with no data, so no CPU tensor can pass for it)
    every module called by the real section code sees its input and parameters there, the headers and the rows say
    the device, and the hidden-size figure's title names it (not "CPU")."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from dnlib.analysis import rnn_bench as rb
    seen, titles = set(), []

    def hook(module, args):
        seen.update(t.device.type for t in (*args, *module.parameters(recurse=False)) if torch.is_tensor(t))
    figure = rb.hidden_size_figure
    monkeypatch.setattr(rb, "hidden_size_figure", lambda rows, title="": titles.append(title) or figure(rows, title))
    lines, handle = [], register_module_forward_pre_hook(hook)
    try:
        rows = {"cells": bench.cells_section(lines.append, True, ["meta"]),
                "ptb": bench.ptb_section(lines.append, True, ["meta"]),
                "hidden": bench.hidden_section(lines.append, True, str(tmp_path / "h.png"), ["meta"])}
    finally:
        handle.remove()
    assert seen == {"meta"}
    assert [line.split(":")[0] for line in lines if not line.startswith(" ")] == ["cells on meta", "ptb on meta",
                                                                                  "hidden on meta"]
    assert len(rows["cells"]) == 9 and len(rows["ptb"]) == 3 and len(rows["hidden"]) == 2 * 5
    assert all(r["device"] == "meta" and "skipped" not in r for rs in rows.values() for r in rs)
    assert titles == ["tokens/s vs hidden size, meta"] and (tmp_path / "h.png").exists()
    assert bench.device_label("cpu").startswith("CPU (")
    assert bench.figure_path("f/h.png", "cuda", ["cpu", "cuda"]) == "f/h_cuda.png"
    assert bench.figure_path("f/h.png", "cpu", ["cpu", "cuda"]) == "f/h.png"


def test_the_rnn_sections_json_rows_carry_the_device(tmp_path, capsys):
    """Also: a forward-only candidate's backward figures are null; they were NaN, and --json with the cells or
    hidden section refused to write the rows (JSON has no NaN) after the whole benchmark had run."""
    out = tmp_path / "rows.json"
    assert bench.main(["--quick", "--device", "cpu", "--sections", "train,ptb,hidden", "--json", str(out)]) == 0
    capsys.readouterr()
    rows = json.loads(out.read_text())
    assert sorted(rows) == ["hidden", "ptb", "train"] and len(rows["ptb"]) == 3 and len(rows["hidden"]) == 2 * 5
    assert all(r["device"] == "cpu" for rs in rows.values() for r in rs)
    assert [r["bwd_ms"] is None for r in rows["hidden"]] == [r["name"] == "peer: lower bound" for r in rows["hidden"]]


class _CPUOnly(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.w = nn.Parameter(torch.ones(hidden))

    def forward(self, x):
        if x.device.type != "cpu":
            raise RuntimeError("no kernel for this device\nsecond line")
        return x * self.w


def test_a_candidate_that_cannot_run_on_the_device_is_reported_not_timed_elsewhere():
    """A candidate failing on a device other than the CPU is printed as not run there (with why), never timed on
    the CPU in its place; on the CPU an error is an error."""
    from dnlib.analysis import rnn_bench as rb
    factories = {"nn.LSTM": lambda h, n: nn.LSTM(h, h, n), "cpu only": lambda h, n: _CPUOnly(h)}
    rows = rb.cell_rows(factories, 4, 2, 2, 1, 1, device="meta")
    assert [(r["name"], r["device"], r.get("skipped")) for r in rows] == [
        ("nn.LSTM", "meta", None), ("cpu only", "meta", "RuntimeError: no kernel for this device")]
    assert rb.format_rows(rows, "cells")[1].split() == ["cpu", "only", "not", "run", "on", "meta:", "RuntimeError:",
                                                        "no", "kernel", "for", "this", "device"]
    with pytest.raises(RuntimeError, match="baseline 'cpu only' cannot run on meta"):
        rb.cell_rows(factories, 4, 2, 2, 1, 1, baseline="cpu only", device="meta")
    assert len(rb.cell_rows(factories, 4, 2, 2, 1, 1, device="cpu")) == 2


@pytest.mark.parametrize("repeat", [None, 3])
def test_repeat_reaches_every_section_and_without_it_each_takes_its_default(repeat, monkeypatch, capsys):
    """``--repeat`` was ignored by the cells, ptb and hidden sections (fixed 15/3, 10, 3; benchmark review) and by
    every section under ``--quick``. Now given, it is every section's count of timed rounds (train: steps);
    not given, each section's default (:data:`dnlib.bench.REPEATS`). The real sections run; the timing functions
    are wrapped only to see the counts they are given."""
    from dnlib.analysis import rnn_bench as rb
    from dnlib.norms import bench_layers as bl
    seen = {}

    def spy(section, f, count):
        def wrapped(*args, **kw):
            seen.setdefault(section, set()).add(count(*args, **kw))
            return f(*args, **kw)
        return wrapped
    monkeypatch.setattr(bl, "round_robin", spy("layers", bl.round_robin, lambda cands, x, gy, repeat: repeat))
    monkeypatch.setattr(bl, "train_step_ratio", spy("train", bl.train_step_ratio, lambda *a, steps, **kw: steps))

    def rnn(cands, n, **kw):   # rnn_bench.time_round_robin serves three sections: told apart by their candidates
        return ("ptb" if "base-lstm" in cands else "cells" if "LN* per-step path (impl=loop)" in cands
                else "hidden" if len(cands) == 5 else "?"), n
    monkeypatch.setattr(rb, "time_round_robin", spy("rnn", rb.time_round_robin, rnn))
    assert bench.main(["--quick", "--device", "cpu", "--groups", "dn1d",
                       *([] if repeat is None else ["--repeat", str(repeat)])]) == 0
    capsys.readouterr()
    quick = {"layers": 1, "train": 1, "cells": 2, "ptb": 2, "hidden": 1}
    want = quick if repeat is None else dict.fromkeys(quick, repeat)
    assert seen == {"layers": {want["layers"]}, "train": {want["train"]},
                    "rnn": {("cells", want["cells"]), ("ptb", want["ptb"]), ("hidden", want["hidden"])}}
    assert {k: v[1] for k, v in bench.REPEATS.items()} == quick


def test_repeat_defaults_are_each_sections_own_and_said_in_help(capsys):
    ap = bench._parser()
    assert ap.parse_args([]).repeat is None
    assert bench.REPEATS == {"layers": (20, 1), "train": (10, 1), "cells": ((15, 3), 2), "ptb": (10, 2),
                             "hidden": (3, 1)}
    help_text = " ".join(ap.format_help().split())
    assert ("layers 20, train 10, cells 15 at the PTB shape and 3 at fastrnns', ptb 10, hidden 3; with --quick 1, 1, "
            "2, 2, 1") in help_text
