"""Layer benchmarks: our normalizers' forward + backward time as ratios to torch's own layer, measured in one run.

    python -m dnlib.norms.bench_layers [--groups dn2d,dn1d,presets] [--repeat 20] [--threads N] [--table]

Every figure is the median of ``repeat`` forward + backward passes after warm-up, the candidates of one row timed
interleaved round-robin (so machine load hits them alike), divided by torch's layer timed in the same rounds; the
load average (``os.getloadavg()``) is printed before and after each row. Groups:

* ``dn2d``: windowed DN (all channels x a 3 x 3 / 5 x 5 window, sigma 0.5) at the CIFAR shape (100, C, 32, 32), C = 32
  and 64, against ``nn.BatchNorm2d``, the layer it replaces;
* ``dn1d``: 1-D DN (a window of 3 / 5 units) at the sequence shape (64, 256, 100) against ``nn.BatchNorm1d``;
* ``presets``: each preset that torch has (bn, ln, in, gn, rms, lrn) at the CIFAR (128, 32, 32, 32) and sequence
  shapes against torch's layer: the default (``impl="auto"``) and, where different, the general and native paths.

``--table`` prints :data:`dnlib.norms.windowed.AUTO` as measured now, with the figures it came from, to paste into
``windowed.py``: one entry per (device, preset or windowed DN, shape class), decided from all the rows of that class
(:func:`table`): per preset, the general path where every row timed it faster than the native kernel; for windowed
DN, the compiled path where the median of its time over the general path's, across the class's rows that ran it
(``auto_path``), is below 1. :func:`layers` and :func:`train_step_ratio` are what ``dnlib.bench``
(``make bench``) calls for its "layers" and "train" sections: one implementation of each measurement. This is a
command, not a test: timing never decides whether a test passes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .. import cli
from . import windowed
from .presets import make_norm

CIFAR, SEQ = (128, 32, 32, 32), (64, 256, 100)
GROUPS = ("dn2d", "dn1d", "presets")
#: the shapes of each group: the benchmark's ("full") and tiny ones that check the command's format in seconds
SIZES = {"full": {"dn2d": [(100, 32, 32, 32), (100, 64, 32, 32)], "dn1d": SEQ, "presets": [CIFAR, SEQ]},
         "tiny": {"dn2d": [(4, 8, 6, 6)], "dn1d": (4, 16, 10), "presets": [(4, 8, 6, 6), (4, 16, 10)]}}


def load() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def synchronizer(device) -> Callable[[], None]:
    """What to call before and after a timed pass on ``device`` (a torch.device or its name): CUDA runs
    asynchronously, so there ``torch.cuda.synchronize``; elsewhere nothing. Shared by every timing of the project's
    benchmarks (:mod:`dnlib.analysis.rnn_bench` too)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def round_robin(cands: dict, x: torch.Tensor, gy: torch.Tensor, repeat: int = 20, warmup: int = 3) -> dict:
    """Median seconds of ``layer(x).backward(gy)`` per candidate, timed interleaved round-robin after ``warmup``
    calls each (the first call of a compiled layer compiles: it is part of the warm-up); on CUDA each pass is
    synchronized before and after."""
    sync = synchronizer(x.device)
    for layer in cands.values():
        for _ in range(warmup):
            x.grad = None
            layer(x).backward(gy)
    times = {k: [] for k in cands}
    for _ in range(repeat):
        for k, layer in cands.items():
            x.grad = None
            sync()
            t0 = time.perf_counter()
            layer(x).backward(gy)
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _row(group: str, name: str, shape: tuple, cands: dict, repeat: int, verbose: bool, device: torch.device,
         say) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device).requires_grad_()
    gy = torch.randn(shape, generator=g).to(device)
    cands = {k: m.to(device) for k, m in cands.items()}
    before = load()
    t = round_robin(cands, x, gy, repeat)
    auto = cands["auto"]   # the path "auto" ran, asked after the timing (a compiled path that failed fell back)
    row = {"group": group, "name": name, "shape": list(shape), "device": device.type, "load_before": before,
           "load_after": load(), "threads": torch.get_num_threads(),
           "auto_path": windowed.choice(auto.spec, auto.fused, x), "native_ms": t["native"] * 1e3,
           **{f"{k}_ms": v * 1e3 for k, v in t.items() if k != "native"},
           **{f"{k}_ratio": v / t["native"] for k, v in t.items() if k != "native"}}
    if verbose:
        parts = " | ".join(f"{k} {v * 1e3:8.2f} ms ({v / t['native']:.2f}x)" for k, v in t.items() if k != "native")
        say(f"{device.type:4s} {group:7s} {name:5s} {'x'.join(map(str, shape)):14s} native {t['native'] * 1e3:8.2f} ms"
            f" | {parts}   load {before:.2f} -> {row['load_after']:.2f}")
    return row


def _say(line: str) -> None:
    print(line, flush=True)


def _natives(shape: tuple) -> dict:
    c, rank = shape[1], len(shape)
    return {
        "bn": ({}, nn.BatchNorm2d(c) if rank == 4 else nn.BatchNorm1d(c)),
        "ln": ({}, nn.LayerNorm(shape[1:])),
        "in": ({"affine": True}, nn.InstanceNorm2d(c, affine=True) if rank == 4 else nn.InstanceNorm1d(c, affine=True)),
        "gn": ({"groups": 8}, nn.GroupNorm(8, c)),
        "rms": ({}, nn.RMSNorm(shape[1:], eps=1e-5)),
        "lrn": ({}, nn.LocalResponseNorm(5)),
    }


def layers(groups=GROUPS, repeat: int = 20, verbose: bool = True, *, size: str = "full", device="cpu",
           say=_say) -> list:
    """The rows of the groups named (see the module doc): dicts with the shape, each candidate's ms and ratio to
    torch's layer (``auto_ratio``, ``general_ratio``, ``native_path_ratio``), the device, the thread count and the
    load average before and after the row. ``size="tiny"``: the shapes of :data:`SIZES` that check the format in
    seconds (their numbers mean nothing); ``say`` receives each printed line (``verbose``)."""
    if not (isinstance(repeat, int) and repeat >= 1):
        raise ValueError(f"repeat: must be an integer >= 1, got {repeat!r}")
    bad = sorted(set(groups) - set(GROUPS))
    if bad:
        raise ValueError(f"groups: unknown group {bad[0]!r}; known are {', '.join(GROUPS)}")
    if size not in SIZES:
        raise ValueError(f"size: must be one of {', '.join(SIZES)}, got {size!r}")
    device, shapes, rows = torch.device(device), SIZES[size], []
    if "dn2d" in groups:
        for shape in shapes["dn2d"]:
            c = shape[1]
            for k in (3, 5):
                cands = {"native": nn.BatchNorm2d(c), "auto": make_norm("dn", c, window=k, sigma=0.5),
                         "general": make_norm("dn", c, window=k, sigma=0.5, impl="general")}
                rows.append(_row("dn2d", f"dn{k}", shape, cands, repeat, verbose, device, say))
    if "dn1d" in groups:
        shape = shapes["dn1d"]
        for k in (3, 5):
            cands = {"native": nn.BatchNorm1d(shape[1]), "auto": make_norm("dn-1d", shape[1], window=k, sigma=0.5),
                     "general": make_norm("dn-1d", shape[1], window=k, sigma=0.5, impl="general")}
            rows.append(_row("dn1d", f"dn{k}", shape, cands, repeat, verbose, device, say))
    if "presets" in groups:
        for shape in shapes["presets"]:
            for name, (kw, native) in _natives(shape).items():
                cands = {"native": native, "auto": make_norm(name, shape[1], **kw),
                         "general": make_norm(name, shape[1], impl="general", **kw)}
                if cands["auto"].fused is not None:
                    cands["native_path"] = make_norm(name, shape[1], impl="fused", **kw)
                rows.append(_row("presets", name, shape, cands, repeat, verbose, device, say))
    return rows


def train_step_ratio(models: dict, batch: tuple, loss_fn, steps: int = 20, warmup: int = 3, lr: float = 1e-3,
                     verbose: bool = True, say=_say) -> dict:
    """Images (examples) per second of one SGD training step (forward, loss, backward, update) of each model,
    interleaved round-robin over ``steps`` rounds after ``warmup``; ``models`` maps a name to a module (the first
    is the baseline), ``batch`` is ``(inputs, targets)``, ``loss_fn(model, inputs, targets)`` returns the loss (add
    :func:`dnlib.sparse_penalty` there for the starred models). Returns ``{name: (images_per_s, ratio)}`` and
    prints them with the load average."""
    inputs, targets = batch
    opts = {k: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for k, m in models.items()}

    def step(k):
        opts[k].zero_grad(set_to_none=True)
        loss_fn(models[k], inputs, targets).backward()
        opts[k].step()
    for k in models:
        models[k].train()
        for _ in range(warmup):
            step(k)
    times = {k: [] for k in models}
    sync = synchronizer(inputs.device)
    before = load()
    for _ in range(steps):
        for k in models:
            sync()
            t0 = time.perf_counter()
            step(k)
            sync()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times[next(iter(models))])
    out = {k: (inputs.shape[0] / statistics.median(v), base / statistics.median(v)) for k, v in times.items()}
    if verbose:
        say(f"train step, batch {tuple(inputs.shape)}, {torch.get_num_threads()} threads: "
            + " | ".join(f"{k} {ips:8.1f} img/s ({r:.2f}x)" for k, (ips, r) in out.items())
            + f"   load {before:.2f} -> {load():.2f}")
    return out


def table(rows: list) -> str:
    """:data:`dnlib.norms.windowed.AUTO` and ``MEASURED`` as measured by ``rows`` (of :func:`layers`, all groups), as
    Python source to paste into ``windowed.py``, one entry per (device, what, shape class) decided from all the rows
    of that class, whatever their order:

    * a preset with a native kernel: the general path where every row of the class timed it faster than the native
      one, the native kernel where every row did the reverse; where the rows disagree, the native kernel (torch's
      own, never slower than itself);
    * windowed DN: the compiled path where the median over the class's rows of (compiled time / general time) is
      below 1, else the general path. Only rows whose ``auto`` candidate ran the compiled path (``auto_path``) time
      it; where ``auto`` ran the general path (the table in force said so, or ``DNLIB_COMPILE=0``), "auto" against
      "general" is the same path twice, and a class with no row of the compiled path gets "general" and a comment
      saying the compiled path was not timed."""
    presets, ratios, untimed, lines = {}, {}, {}, []
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        cls = "large" if torch.Size(r["shape"]).numel() >= windowed.LARGE else "small"
        dev = r.get("device", "cpu")
        figures = ", ".join(f"{k[:-6]} {r[k]:.2f}x" for k in r if k.endswith("_ratio"))
        ran = f", auto ran {r['auto_path']}" if "auto_path" in r else ""
        lines.append(f"{r['group']} {r['name']} {shape}: {figures} (load {r['load_before']:.1f}, "
                     f"{r['threads']} threads{ran})")
        if r["group"] in ("dn2d", "dn1d"):
            key = (dev, "windowed", cls)
            if r.get("auto_path") == "compiled":
                ratios.setdefault(key, []).append(r["auto_ratio"] / r["general_ratio"])
            else:
                untimed.setdefault(key, r.get("auto_path", "an unrecorded path"))
        elif "native_path_ratio" in r:
            presets.setdefault((dev, r["name"], cls), set()).add(
                "general" if r["general_ratio"] < r["native_path_ratio"] else "native")
    auto = {key: best.pop() if len(best) == 1 else "native" for key, best in presets.items()}
    notes = {}
    for key, rs in ratios.items():
        auto[key] = "compiled" if statistics.median(rs) < 1 else "general"
        notes[key] = f"compiled / general time: median {statistics.median(rs):.2f} over {len(rs)} rows"
    for key, path in untimed.items():
        if key not in auto:
            auto[key] = "general"
            notes[key] = f"compiled path not timed: auto ran {path}"
    auto.setdefault(("cpu", "windowed", "small"), "general")
    body = "\n".join(f"    {k!r}: {v!r},{f'  # {notes[k]}' if k in notes else ''}" for k, v in sorted(auto.items())
                     if v != "native" or k[1] == "windowed")
    return (f"AUTO = {{\n{body}\n}}\n\nMEASURED = \"\"\"\\\ntorch {torch.__version__}\n"
            + "\n".join(lines) + "\n\"\"\"\n")


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dnlib.norms.bench_layers", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default="dn2d,dn1d,presets", help="comma-separated, from dn2d, dn1d, presets")
    ap.add_argument("--repeat", type=cli.positive_int, default=20, help="timed passes per candidate (median)")
    ap.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--table", action="store_true", help="print windowed.AUTO as measured now (all groups)")
    a = ap.parse_args(argv)
    groups = [g for g in a.groups.split(",") if g]
    for g in groups:
        if g not in GROUPS:
            ap.error(f"--groups: unknown group {g!r}; known are {', '.join(GROUPS)}")
    if a.table:
        groups = list(GROUPS)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load {load():.2f}", flush=True)
    rows = layers(groups, a.repeat)
    if a.table:
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
