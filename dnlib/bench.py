"""Benchmark on this machine: normalization layers, normalized LSTM cells and whole PTB training steps.

    python -m dnlib.bench [--quick] [--sections layers,train,cells,ptb,hidden] [--out FILE] [--figure FILE]
                          [--figure results/figures/bench_rnn_hidden.png] [--threads N]
                          [--device cpu|cuda|all] [--repeat N] [--groups dn2d,dn1d,presets] [--json out.json]

Every figure is a ratio to a baseline measured in the same run, candidates interleaved round-robin so that machine
load hits all alike, with the machine's load average printed before and after each section:

- layers: :func:`dnlib.norms.bench_layers.layers` (the groups of ``--groups``): windowed DN 3x3/5x5 at the CIFAR
  shapes against ``nn.BatchNorm2d`` (the layer it replaces), 1-D DN at the sequence shape against
  ``nn.BatchNorm1d``, and every preset torch has, its default (``auto``), general and native paths, against torch's
  own layer; forward + backward, medians;
- train: whole CIFAR training steps of BN*, DN* and the baseline CNN (cross-entropy + L1, SGD, batch 100), images/s
  and the ratio to BN*'s (:func:`dnlib.norms.bench_layers.train_step_ratio`);
- cells: recurrent stacks (the PTB shape, 2 layers x 200 units, batch 20 x 20 steps; fastrnns' defaults, 1 layer
  x 512, batch 64 x 100 steps) of ``nn.LSTM``, two fastrnns-style peers (:mod:`dnlib.analysis.rnn_bench`) and our
  cells, forward and backward timed separately (median +- std), tokens/s as a ratio to ``nn.LSTM``;
- ptb: whole PTB training steps (softmax over 10,000 words, L1 penalty, SGD) of LN*/DN* against base-lstm;
- hidden: tokens/s against the hidden size (100-1000), also drawn to ``--figure``.

Every section runs on each device of ``--device`` (``all``: the CPU, then CUDA where it is available): models and
inputs are made there, and on CUDA every timed pass is synchronized before and after
(:func:`dnlib.norms.bench_layers.synchronizer`, the one timing rule of the benchmarks). Each section's header (or
row) names the device and every ``--json`` row carries ``"device"``. A candidate of the cells, ptb or hidden sections
that cannot run on CUDA (it raises when built or on a first trial pass) is printed as "not run on cuda" with the
error, never timed on the CPU in its place. The hidden-size figure is drawn per device, titled with it (``CPU (N
threads)`` or the card's name): ``--figure`` for the first device, ``<stem>_cuda.png`` beside it for CUDA.

``--repeat N``: the timed rounds of every candidate in every section (the medians' sample; ``train``: timed steps).
Without it each section takes its own default (:data:`REPEATS`): layers 20, train 10, cells 15 at the PTB shape and 3
at fastrnns' (larger) one, ptb 10, hidden 3; with ``--quick`` 1, 1, 2, 2, 1. A ``--repeat`` given holds with
``--quick`` too: asked for, it is used.

``--quick``: tiny sizes and few repeats, a smoke check of the command and the file's format (its numbers mean
nothing). The text goes to stdout and to ``--out``. Only a full bench (every section and layer group, not
``--quick``) on the CPU alone writes the committed ``results/bench_cpu.txt`` and
``results/figures/bench_rnn_hidden.png`` of the repository by default, whatever the working folder; a quick, partial
or GPU one (CUDA among ``--device``'s, as ``all`` on a GPU machine) prints only, unless ``--out`` / ``--figure`` name
files. This is a command, not a test: timing never decides whether a test passes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from . import cli
from .analysis import rnn_bench as rb
from .experiments.ptb_configs import get_config
from .io import atomic_write, atomic_write_json, atomic_write_text
from .norms import bench_layers as bl
from .training.precision import float32_arithmetic

SECTIONS = ("layers", "train", "cells", "ptb", "hidden")
#: each section's timed rounds per candidate where ``--repeat`` is not given: (full bench, ``--quick``); cells: per
#: table (the PTB shape, fastrnns' defaults)
REPEATS = {"layers": (20, 1), "train": (10, 1), "cells": ((15, 3), 2), "ptb": (10, 2), "hidden": (3, 1)}
#: the repository's committed results: a full bench's default report and figure go here
RESULTS = Path(__file__).resolve().parent.parent / "results"
#: our cells in the cell tables: PTB configurations (their model kwargs at the table's size)
CELL_CONFIGS = {"LN* (ln-star-lstm)": "ln-star-lstm", "DN* (dn-star-lstm)": "dn-star-lstm",
                "base-lstm (our cell, no norm)": "base-lstm", "LN (Ba et al., ln-lstm)": "ln-lstm",
                "BN (Cooijmans, bn-lstm)": "bn-lstm"}


def _rounds(section: str, quick: bool, repeat: int | None):
    """``repeat`` where given (``--repeat``), else the section's default of :data:`REPEATS`."""
    return REPEATS[section][quick] if repeat is None else repeat


def layers_section(say, quick: bool, devices, groups, repeat: int | None = None) -> list:
    """:func:`dnlib.norms.bench_layers.layers` on each device (the one layer benchmark of the project)."""
    repeat = _rounds("layers", quick, repeat)
    say(f"layers: forward + backward, median of {repeat} interleaved rounds, time as a ratio to torch's own layer "
        f"(auto: DivisiveNorm's default path; general: the hand-written Functions; native_path: torch's kernel "
        f"called by DivisiveNorm)")
    say("  " + rb.load_line())
    rows = []
    for dev in devices:
        rows += bl.layers(groups, repeat, size="tiny" if quick else "full", device=dev, say=say)
    say("  " + rb.load_line())
    return rows


def train_section(say, quick: bool, devices, repeat: int | None = None) -> list:
    """Whole CIFAR training steps (the paper's CNN: forward, cross-entropy + L1 penalty, backward, SGD) of BN*, DN*
    and the baseline, by :func:`dnlib.norms.bench_layers.train_step_ratio`: images/s and the ratio to BN*'s."""
    from .experiments.cifar_configs import get_config
    from .norms.sparse import sparse_penalty

    def loss(model, x, y):
        return nn.functional.cross_entropy(model(x), y) + sparse_penalty(model)
    batch = 2 if quick else 100
    steps = _rounds("train", quick, repeat)
    rows = []
    for dev in devices:
        say(f"train: CIFAR CNN training step on {dev} (batch {batch} x 3 x 32 x 32, cross-entropy + L1, SGD), "
            f"median of {steps} interleaved rounds, images/s and the ratio to BN*'s")
        say("  " + rb.load_line())
        torch.manual_seed(0)
        models = {name: get_config(name).build_model().to(dev) for name in ("bn-star", "dn-star", "base")}
        x = torch.randn(batch, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (batch,), device=dev)
        out = bl.train_step_ratio(models, (x, y), loss, steps=steps, warmup=1 if quick else 3, say=say)
        rows += [{"device": dev, "model": k, "images_per_s": ips, "ratio_to_bn_star": r} for k, (ips, r) in out.items()]
        say("  " + rb.load_line())
    return rows


def _factories(loop: bool = True) -> dict:
    """``{name: factory(hidden, layers)}`` of the cell tables: nn.LSTM (the baseline), the two peers, our cells."""
    def ours(cfg):
        return lambda h, n: rb.CellStack(get_config(cfg).model_kwargs(), h, n)

    f = {"nn.LSTM": lambda h, n: nn.LSTM(h, h, n),
         "peer: TorchScript LN-LSTM": lambda h, n: rb.PeerLNLSTM(h, h, n),
         "peer: lower bound": lambda h, n: rb.LowerBound(h, h, n)}
    f.update({name: ours(cfg) for name, cfg in CELL_CONFIGS.items()})
    if loop:   # the per-step reference path of the same LN* cell (what the fused path replaced)
        f["LN* per-step path (impl=loop)"] = lambda h, n: _looped(rb.CellStack(get_config("ln-star-lstm")
                                                                              .model_kwargs(), h, n))
    return f


def _looped(stack):
    for layer in stack.layers:
        layer.impl = "loop"
    return stack


def device_label(dev) -> str:
    """The device in a title: ``CPU (N threads)``, the CUDA card's name, or the device's own name."""
    dev = torch.device(dev)
    if dev.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (cuda)"
    return str(dev)


def cells_section(say, quick: bool, devices=("cpu",), repeat: int | None = None) -> list:
    """The cell tables (:func:`dnlib.analysis.rnn_bench.cell_rows`) on each device of ``devices``."""
    (ptb_shape, fastrnns), tiny = REPEATS["cells"]
    shapes = ([("tiny", 8, 4, 4, 2, tiny)] if quick else
              [("PTB shape (2 x 200, batch 20 x 20 steps)", 200, 20, 20, 2, ptb_shape),
               ("fastrnns defaults (1 x 512, batch 64 x 100 steps)", 512, 100, 64, 1, fastrnns)])
    shapes = [(*shape[:-1], shape[-1] if repeat is None else repeat) for shape in shapes]
    rows = []
    for dev in devices:
        for title, hidden, steps, batch, layers, repeat in shapes:
            say(f"cells on {dev}: {title}; forward and backward ms (median, +- std over {repeat} interleaved "
                f"rounds), tokens/s, ratio to nn.LSTM's tokens/s (the lower bound: forward only, against nn.LSTM's "
                f"forward)")
            say("  " + rb.load_line())
            r = rb.cell_rows(_factories(loop=not title.startswith("fastrnns")), hidden, steps, batch, layers, repeat,
                             device=dev)
            for line in rb.format_rows(r, "cells"):
                say(line)
            say("  " + rb.load_line())
            rows += [{**x, "table": title} for x in r]
    return rows


def ptb_section(say, quick: bool, devices=("cpu",), repeat: int | None = None) -> list:
    """Whole PTB training steps (:func:`dnlib.analysis.rnn_bench.ptb_step_rows`) on each device of ``devices``."""
    vocab, repeat = (50 if quick else 10000), _rounds("ptb", quick, repeat)
    size = dict(hidden_size=8, num_layers=1) if quick else {}
    names = ["base-lstm", "ln-star-lstm", "dn-star-lstm"]
    rows = []
    for dev in devices:
        say(f"ptb on {dev}: whole training step (batch 20 x 20 steps, vocabulary {vocab}, softmax, L1, SGD), median "
            f"of {repeat} interleaved rounds, time as a ratio to base-lstm's")
        say("  " + rb.load_line())
        r = rb.ptb_step_rows({n: get_config(n, **size).model_kwargs() for n in names}, vocab, 20, 20, repeat,
                             "base-lstm", device=dev)
        for line in rb.format_rows(r, "ptb"):
            say(line)
        say("  " + rb.load_line())
        rows += r
    return rows


def figure_path(figure: str, dev, devices) -> str:
    """The hidden-size figure of ``dev``: ``figure`` for the first device of the run, ``figure`` with ``_<device>``
    before its suffix for the others (``--device all`` on a GPU machine: ``..._cuda.png`` beside the CPU's)."""
    if dev == devices[0]:
        return figure
    p = Path(figure)
    return str(p.with_name(f"{p.stem}_{torch.device(dev).type}{p.suffix}"))


def hidden_section(say, quick: bool, figure: str | None, devices=("cpu",), repeat: int | None = None) -> list:
    """Tokens/s against the hidden size (:func:`dnlib.analysis.rnn_bench.hidden_size_rows`) on each device, with a
    figure per device (:func:`figure_path`) titled with the device."""
    hiddens, steps, batch = ([4, 8], 3, 2) if quick else ([100, 200, 400, 700, 1000], 20, 20)
    repeat = _rounds("hidden", quick, repeat)
    f = _factories(loop=False)
    f = {k: f[k] for k in ("nn.LSTM", "peer: TorchScript LN-LSTM", "peer: lower bound", "LN* (ln-star-lstm)",
                           "DN* (dn-star-lstm)")}
    rows = []
    for dev in devices:
        say(f"hidden on {dev}: tokens/s against the hidden size (1 layer, batch {batch} x {steps} steps, median of "
            f"{repeat})")
        say("  " + rb.load_line())
        r = rb.hidden_size_rows(f, hiddens, steps, batch, repeat, device=dev)
        for h in hiddens:
            say(f"  H={h:5d}  " + "  ".join(f"{x['name'].split(' (')[0]} {x['tokens_per_s']:.0f}"
                                              for x in r if x["hidden"] == h and "skipped" not in x))
        for line in rb.format_rows([x for x in r if "skipped" in x], "cells"):
            say(line)
        say("  " + rb.load_line())
        if figure:
            path = figure_path(figure, dev, devices)
            fig = rb.hidden_size_figure(r, f"tokens/s vs hidden size, {device_label(dev)}")
            atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=110))
            say(f"  figure: {path}")
        rows += r
    return rows


def _parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m dnlib.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--repeat", type=cli.positive_int, default=None,
                    help="timed rounds per candidate (median) in every section, with --quick too (default: each "
                         "section's own: layers 20, train 10, cells 15 at the PTB shape and 3 at fastrnns', ptb 10, "
                         "hidden 3; with --quick 1, 1, 2, 2, 1)")
    ap.add_argument("--groups", default=",".join(bl.GROUPS),
                    help=f"layer groups (section layers), comma-separated, from {', '.join(bl.GROUPS)}")
    ap.add_argument("--json", type=cli.out_file, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--threads", type=cli.positive_int, default=None,
                    help="torch's intra-op threads for the whole run (default: torch's own choice)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, few repeats (unless --repeat is given): a smoke check of the format")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=cli.out_file, default=None,
                    help="the text report (default: a full bench on the CPU alone writes results/bench_cpu.txt of the "
                         "repository; a quick, partial or GPU one only prints)")
    ap.add_argument("--figure", type=cli.out_file, default=None,
                    help="the tokens/s vs hidden size figure, section hidden (default: a full bench on the CPU alone "
                         "writes results/figures/bench_rnn_hidden.png of the repository; a quick, partial or GPU "
                         "one none)")
    return ap


def _check_args(ap: cli.ArgumentParser, a: argparse.Namespace) -> tuple[list, list, list]:
    """The sections, devices and layer groups that ``a`` asks for; a bad one ends the command (``ap.error``: exit 2)."""
    sections = [s for s in a.sections.split(",") if s]
    for s in sections:
        if s not in SECTIONS:
            ap.error(f"--sections: unknown section {s!r}; known are {', '.join(SECTIONS)}")
    if not sections:
        ap.error(f"--sections: {a.sections!r} names no section; known are {', '.join(SECTIONS)}")
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if a.device == "cuda":
            ap.error("--device cuda: CUDA is not available here")
        devices.remove("cuda")
    groups = [g for g in a.groups.split(",") if g]
    if not groups:
        ap.error(f"--groups: {a.groups!r} names no group; known are {', '.join(bl.GROUPS)}")
    for g in groups:
        if g not in bl.GROUPS:
            ap.error(f"--groups: unknown group {g!r}; known are {', '.join(bl.GROUPS)}")
    return sections, devices, groups


def outputs(ap: cli.ArgumentParser, a: argparse.Namespace, sections, groups,
            devices=("cpu",)) -> tuple[str | None, str | None]:
    """The report and figure files: ``--out``/``--figure`` where given; else, for a full bench (every section and
    layer group, not ``--quick``) on the CPU alone, the repository's committed ``results/bench_cpu.txt`` and
    ``results/figures/bench_rnn_hidden.png`` (whatever the working folder); else None (printed only). A bench with
    CUDA among its ``devices`` (``--device all``, the default, on a GPU machine) names its files itself: by default
    it replaced the committed CPU figures, measured on the project's 2-core machine, with the GPU host's."""
    full = (not a.quick and set(sections) == set(SECTIONS) and set(groups) == set(bl.GROUPS)
            and list(devices) == ["cpu"])
    out, figure = a.out, a.figure
    if full and out is None:
        out = str(RESULTS / "bench_cpu.txt")
    if full and figure is None:
        figure = str(RESULTS / "figures" / "bench_rnn_hidden.png")
    for flag, path in (("--out", out), ("--figure", figure)):
        if path is not None:
            try:
                cli.out_file(path)
            except argparse.ArgumentTypeError as e:
                ap.error(f"{flag}: {e}")
    return out, figure


def main(argv=None) -> int:
    """``python -m dnlib.bench``. Every section times in float32, the runs' arithmetic
    (:func:`dnlib.training.precision.float32_arithmetic`: torch's default lets cuDNN convolutions use TF32, which made
    GPU figures of a faster arithmetic than the runs they stand for); the process's switches are restored after."""
    ap = _parser()
    a = ap.parse_args(argv)
    sections, devices, groups = _check_args(ap, a)
    out_path, figure = outputs(ap, a, sections, groups, devices)
    if a.threads:
        torch.set_num_threads(a.threads)
    with float32_arithmetic():
        return _measure(a, sections, devices, groups, out_path, figure)


def _measure(a, sections, devices, groups, out_path, figure) -> int:
    lines = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "") + (", --quick" if a.quick else ""))
    say(rb.load_line())
    out = {}
    if "layers" in sections:
        out["layers"] = layers_section(say, a.quick, devices, groups, a.repeat)
    if "train" in sections:
        out["train"] = train_section(say, a.quick, devices, a.repeat)
    torch.manual_seed(0)
    if "cells" in sections:
        out["cells"] = cells_section(say, a.quick, devices, a.repeat)
    if "ptb" in sections:
        out["ptb"] = ptb_section(say, a.quick, devices, a.repeat)
    if "hidden" in sections:
        out["hidden"] = hidden_section(say, a.quick, figure, devices, a.repeat)
    say(rb.load_line())
    if out_path is None:
        what = "quick" if a.quick else "GPU" if "cuda" in devices else "partial"
        print(f"python -m dnlib.bench: a {what} bench is printed only, not written to "
              f"{RESULTS / 'bench_cpu.txt'}; --out FILE keeps it", file=sys.stderr)
    else:
        atomic_write_text(out_path, "\n".join(lines) + "\n")
    if a.json:
        atomic_write_json(a.json, out if len(out) > 1 or "layers" not in out else out["layers"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
