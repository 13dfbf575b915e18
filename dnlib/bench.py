"""Benchmark on this machine: normalization layers, normalized LSTM cells and whole PTB training steps.

    python -m dnlib.bench [--quick] [--sections layers,cells,ptb,hidden] [--out results/bench_cpu.txt]
                          [--figure results/figures/bench_rnn_hidden.png] [--threads N]
                          [--device cpu|cuda|all] [--repeat 20] [--shapes cifar,seq] [--json out.json]

Every figure is a ratio to a baseline measured in the same run, candidates interleaved round-robin so that machine
load hits all alike, with the machine's load average printed before and after each section:

- layers: forward + backward of every preset, general and fused paths, against torch's own layer (medians of
  ``--repeat``; ``DN`` against ``nn.BatchNorm2d``, the layer it replaces);
- cells: recurrent stacks (the PTB shape, 2 layers x 200 units, batch 20 x 20 steps; fastrnns' defaults, 1 layer
  x 512, batch 64 x 100 steps) of ``nn.LSTM``, two fastrnns-style peers (:mod:`dnlib.analysis.rnn_bench`) and our
  cells, forward and backward timed separately (median, mean +- std), tokens/s as a ratio to ``nn.LSTM``;
- ptb: whole PTB training steps (softmax over 10,000 words, L1 penalty, SGD) of LN*/DN* against base-lstm;
- hidden: tokens/s against the hidden size (100-1000), also drawn to ``--figure``.

``--quick``: tiny sizes and few repeats, a smoke check of the command and the file's format (its numbers mean
nothing). The text goes to stdout and to ``--out``. This is a command, not a test: timing never decides whether a
test passes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from . import cli
from .analysis import rnn_bench as rb
from .experiments.ptb_configs import get_config
from .io import atomic_write, atomic_write_json, atomic_write_text
from .norms.presets import make_norm

SHAPES = {"cifar": (128, 32, 32, 32), "seq": (64, 256, 100), "tiny": (4, 8, 6, 6), "tiny-seq": (4, 16, 10)}
SECTIONS = ("layers", "cells", "ptb", "hidden")
#: our cells in the cell tables: PTB configurations (their model kwargs at the table's size)
CELL_CONFIGS = {"LN* (ln-star-lstm)": "ln-star-lstm", "DN* (dn-star-lstm)": "dn-star-lstm",
                "base-lstm (our cell, no norm)": "base-lstm", "LN (Ba et al., ln-lstm)": "ln-lstm",
                "BN (Cooijmans, bn-lstm)": "bn-lstm"}


def _natives(shape):
    C, rank = shape[1], len(shape)
    bn = nn.BatchNorm2d(C) if rank == 4 else nn.BatchNorm1d(C)
    inorm = nn.InstanceNorm2d(C, affine=True) if rank == 4 else nn.InstanceNorm1d(C, affine=True)
    return {
        "bn": (dict(), bn),
        "ln": (dict(), nn.LayerNorm(shape[1:])),
        "in": (dict(affine=True), inorm),
        "gn": (dict(groups=8), nn.GroupNorm(8, C)),
        "rms": (dict(), nn.RMSNorm(shape[1:], eps=1e-5)),
        "lrn": (dict(), nn.LocalResponseNorm(5)),
        "dn": (dict(window=3, sigma=0.5), bn),
        "dn5": (dict(window=5, sigma=0.5), bn),
    }


def _step(layer, x, gy):
    y = layer(x)
    y.backward(gy)


def _time_all(cands: dict, x, gy, repeat: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for layer in cands.values():  # warm-up
        for _ in range(3):
            _step(layer, x, gy)
    times = {k: [] for k in cands}
    for _ in range(repeat):
        for k, layer in cands.items():
            x.grad = None
            sync()
            t0 = time.perf_counter()
            _step(layer, x, gy)
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run(devices, repeat: int = 20, shapes=("cifar", "seq"), verbose: bool = True, say=print) -> list:
    if not repeat >= 1:
        raise ValueError(f"repeat: must be an integer >= 1, got {repeat!r}")
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for sname in shapes:
            shape = SHAPES[sname]
            x = torch.randn(shape, device=device, requires_grad=True)
            gy = torch.randn(shape, device=device)
            for name, (kw, native) in _natives(shape).items():
                preset = "dn" if name.startswith("dn") else name
                if preset == "dn" and len(shape) != 4:
                    preset, kw = "dn-1d", dict(window=kw["window"], sigma=0.5)
                cands = {"native": native.to(device)}
                for impl in ("auto", "general"):  # the fused path right after native: same memory state
                    m = make_norm(preset, shape[1], impl=impl, **kw).to(device)
                    if impl == "auto" and m.fused is None:
                        continue
                    cands[impl] = m
                t = _time_all(cands, x, gy, repeat, device)
                row = {"device": dev, "shape": sname, "preset": name, "native_ms": t["native"] * 1e3,
                       "general_ms": t["general"] * 1e3, "general_ratio": t["general"] / t["native"]}
                if "auto" in t:
                    row.update(fused_ms=t["auto"] * 1e3, fused_ratio=t["auto"] / t["native"])
                rows.append(row)
                if verbose:
                    fused = f"fused {row['fused_ms']:8.2f} ms ({row['fused_ratio']:.2f}x)" if "auto" in t else ""
                    say(f"{dev:5s} {sname:5s} {name:4s} native {row['native_ms']:8.2f} ms | general "
                        f"{row['general_ms']:8.2f} ms ({row['general_ratio']:.2f}x) | {fused}")
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


def cells_section(say, quick: bool) -> list:
    shapes = ([("tiny", 8, 4, 4, 2, 2)] if quick else
              [("PTB shape (2 x 200, batch 20 x 20 steps)", 200, 20, 20, 2, 15),
               ("fastrnns defaults (1 x 512, batch 64 x 100 steps)", 512, 100, 64, 1, 3)])
    rows = []
    for title, hidden, steps, batch, layers, repeat in shapes:
        say(f"cells: {title}; forward and backward ms (median, +- std over {repeat} interleaved rounds), tokens/s, "
            f"ratio to nn.LSTM's tokens/s (the lower bound: forward only, against nn.LSTM's forward)")
        say("  " + rb.load_line())
        r = rb.cell_rows(_factories(loop=not title.startswith("fastrnns")), hidden, steps, batch, layers, repeat)
        for line in rb.format_rows(r, "cells"):
            say(line)
        say("  " + rb.load_line())
        rows += [{**x, "table": title} for x in r]
    return rows


def ptb_section(say, quick: bool) -> list:
    vocab, repeat = (50, 2) if quick else (10000, 10)
    size = dict(hidden_size=8, num_layers=1) if quick else {}
    names = ["base-lstm", "ln-star-lstm", "dn-star-lstm"]
    say(f"ptb: whole training step (batch 20 x 20 steps, vocabulary {vocab}, softmax, L1, SGD), median of {repeat} "
        f"interleaved rounds, time as a ratio to base-lstm's")
    say("  " + rb.load_line())
    rows = rb.ptb_step_rows({n: get_config(n, **size).model_kwargs() for n in names}, vocab, 20, 20, repeat,
                            "base-lstm")
    for line in rb.format_rows(rows, "ptb"):
        say(line)
    say("  " + rb.load_line())
    return rows


def hidden_section(say, quick: bool, figure: str | None) -> list:
    hiddens, steps, batch, repeat = ([4, 8], 3, 2, 1) if quick else ([100, 200, 400, 700, 1000], 20, 20, 3)
    f = _factories(loop=False)
    f = {k: f[k] for k in ("nn.LSTM", "peer: TorchScript LN-LSTM", "peer: lower bound", "LN* (ln-star-lstm)",
                           "DN* (dn-star-lstm)")}
    say(f"hidden: tokens/s against the hidden size (1 layer, batch {batch} x {steps} steps, median of {repeat})")
    say("  " + rb.load_line())
    rows = rb.hidden_size_rows(f, hiddens, steps, batch, repeat)
    for h in hiddens:
        say(f"  H={h:5d}  " + "  ".join(f"{r['name'].split(' (')[0]} {r['tokens_per_s']:.0f}"
                                          for r in rows if r["hidden"] == h))
    say("  " + rb.load_line())
    if figure:
        fig = rb.hidden_size_figure(rows, f"tokens/s vs hidden size, CPU ({torch.get_num_threads()} threads)")
        atomic_write(figure, lambda fh: fig.savefig(fh, format="png", dpi=110))
        say(f"  figure: {figure}")
    return rows


def _parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m dnlib.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--repeat", type=cli.positive_int, default=20, help="timed passes per candidate (median)")
    ap.add_argument("--shapes", default="cifar,seq", help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--json", type=cli.out_file, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--threads", type=cli.positive_int, default=None,
                    help="torch's intra-op threads for the whole run (default: torch's own choice)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: a smoke check of the format")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=cli.out_file, default="results/bench_cpu.txt", help="the text report")
    ap.add_argument("--figure", type=cli.out_file, default="results/figures/bench_rnn_hidden.png",
                    help="the tokens/s vs hidden size figure (section hidden)")
    return ap


def _check_args(ap: cli.ArgumentParser, a: argparse.Namespace) -> tuple[list, list, list]:
    """The sections, devices and shapes that ``a`` asks for; a bad one ends the command (``ap.error``: exit 2)."""
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
    shapes = [s for s in a.shapes.split(",") if s]
    if not shapes:
        ap.error(f"--shapes: {a.shapes!r} names no shape; known are {', '.join(SHAPES)}")
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r}; known are {', '.join(SHAPES)}")
    return sections, devices, shapes


def main(argv=None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    sections, devices, shapes = _check_args(ap, a)
    if a.threads:
        torch.set_num_threads(a.threads)
    lines = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "") + (", --quick" if a.quick else ""))
    say(rb.load_line())
    out = {}
    if "layers" in sections:
        out["layers"] = run(devices, 1 if a.quick else a.repeat, ["tiny", "tiny-seq"] if a.quick else shapes, say=say)
    torch.manual_seed(0)
    if "cells" in sections:
        out["cells"] = cells_section(say, a.quick)
    if "ptb" in sections:
        out["ptb"] = ptb_section(say, a.quick)
    if "hidden" in sections:
        out["hidden"] = hidden_section(say, a.quick, a.figure)
    say(rb.load_line())
    atomic_write_text(a.out, "\n".join(lines) + "\n")
    if a.json:
        atomic_write_json(a.json, out if len(out) > 1 or "layers" not in out else out["layers"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
