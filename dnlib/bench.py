"""Benchmark: forward + backward time of every preset, general and fused paths, against torch's own layer.

    python -m dnlib.bench [--device cpu|cuda|all] [--repeat 20] [--shapes cifar,seq] [--json out.json]

Times are medians of ``--repeat`` forward+backward passes after warm-up, interleaved round-robin so that
machine load hits every candidate alike, and reported as ratios to the native torch layer measured in the
same run (``DN`` has no native layer: it is compared with ``nn.BatchNorm2d``, the layer it replaces).
This is a command, not a test: timing never decides whether a test passes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from . import cli
from .io import atomic_write_json
from .norms.presets import make_norm

SHAPES = {"cifar": (128, 32, 32, 32), "seq": (64, 256, 100)}


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


def run(devices, repeat: int = 20, shapes=("cifar", "seq"), verbose: bool = True) -> list:
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
                    print(f"{dev:5s} {sname:5s} {name:4s} native {row['native_ms']:8.2f} ms | general "
                          f"{row['general_ms']:8.2f} ms ({row['general_ratio']:.2f}x) | {fused}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dnlib.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--repeat", type=cli.positive_int, default=20, help="timed passes per candidate (median)")
    ap.add_argument("--shapes", default="cifar,seq", help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--json", type=cli.out_file, default=None, help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    rows = run(devices, a.repeat, shapes)
    if a.json:
        atomic_write_json(rows, a.json)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
