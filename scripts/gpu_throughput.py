#!/usr/bin/env python3
"""GPU throughput of divisive normalization and of the CIFAR runs, with the Table 7 estimate: one prepared script
for any GPU machine (it also rehearses on a CPU).

    python scripts/gpu_throughput.py                                  # CUDA: results/<card-slug>/throughput.{json,md}
    python scripts/gpu_throughput.py --device cpu --tiny --out /tmp/t # the CPU rehearsal (well under a minute)
    TRITON_INTERPRET=1 python scripts/gpu_throughput.py --device cpu --tiny --out /tmp/t   # + the Triton check

1. **check**: ``DivisiveNorm(impl="triton")`` against ``impl="general"`` on the device (outputs, input gradients
   with the L1 term) at the DN* layer shapes, when ``dnlib.norms.triton_dn`` exists and ``available()``;
2. **layer**: forward+backward time of the DN* layer (``triton`` / ``compile`` / ``general``) and of the BN*
   layer through ``DivisiveNorm`` (``fused``: ``F.batch_norm``) as ratios to torch's ``nn.BatchNorm2d`` (cuDNN on a
   GPU) measured in the same run, interleaved round-robin, medians, the load average printed before and after; at
   the CIFAR CNN's three normalized shapes at batch 100 (windows 5, 3, 3) and at 256x64x32x32 (window 3); on CUDA
   both eagerly and replayed as a CUDA graph;
3. **training**: images/s of Baseline, BN*, DN* (on CUDA also DN* with ``impl="triton"`` when available; any
   ``NAME:IMPL`` with ``--configs``) as one ordinary run (the recipe's trainer: a CUDA graph on CUDA) and as K = 1,
   3, 4, 8 copies stacked in one model (:mod:`dnlib.experiments.stacked`, one CUDA graph), all of a configuration
   timed interleaved round-robin (each round one step of every candidate; medians over the rounds), so that "K
   stacked vs K separate runs one after another" is a ratio measured in the same rounds; the load average printed
   before and after;
4. **estimate**: Table 7 (13 configurations x CIFAR-10/100) x 3 seeds at the paper's full schedule from those
   rates (training steps only: no evaluation, data loading or capture; LN rows at the BN* rate, their proxy).

Every section catches its own failure (the error is recorded, the rest runs). The JSON and Markdown are rewritten
atomically after each section, so an interrupted trip leaves what it measured. Timing decides nothing here.
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dnlib import cli
from dnlib.analysis.rnn_bench import load_line
from dnlib.experiments import bench as benches
from dnlib.experiments import recipe as recipes
from dnlib.experiments import records, runner, stacked
from dnlib.experiments.cifar import RECIPE, load_data  # noqa: E402
from dnlib.experiments.cifar_configs import DATASETS, get_config, list_configs  # noqa: E402
from dnlib.io import atomic_write_json, atomic_write_text  # noqa: E402
from dnlib.norms.norm import IMPLS  # noqa: E402
from dnlib.norms.presets import make_norm  # noqa: E402
from dnlib.norms.sparse import sparse_penalty  # noqa: E402
from dnlib.training.graphs import GraphTrainer  # noqa: E402
from dnlib.training.precision import float32_arithmetic  # noqa: E402

#: The DN* layers of the paper's CIFAR CNN at batch 100 (conv1-3 outputs; windows 5, 3, 3), and the large shape.
PAPER_SHAPES = [((100, 32, 32, 32), 5), ((100, 32, 16, 16), 3), ((100, 64, 8, 8), 3)]
LARGE_SHAPE = ((256, 64, 32, 32), 3)
TINY_SHAPES = [((4, 8, 16, 16), 5), ((4, 8, 8, 8), 3), ((8, 16, 8, 8), 3)]
TRAIN_CONFIGS = ("base", "bn-star", "dn-star")
SEEDS_PER_CONFIG = 3


def slug(text: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``: the results folder of a card."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def dn_star(c: int, window: int, impl: str, alpha: float = 0.0, device=None) -> nn.Module:
    """The paper's DN* site (all channels x a k x k window, sigma 0.5, eps 0, the reference border)."""
    return make_norm("dn", c, window=window, sigma=0.5, eps=0.0, border="reference", alpha=alpha, impl=impl,
                     device=device)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {cli.one_line(e)[:300]}"


# ------------------------------------------------------------------------------------------------ 1. check
def triton_check(device: torch.device, shapes) -> dict:
    """Triton kernels vs the general path: max |difference| / max |reference| of y and of dL/dx (L = <y, gy> + the
    L1 term, alpha 0.005), per shape; ``ok`` below 1e-4 (float32)."""
    try:
        from dnlib.norms import triton_dn
    except ImportError as e:
        return {"skipped": f"dnlib.norms.triton_dn is not importable ({_error(e)})"}
    if not triton_dn.available():
        return {"skipped": "triton_dn.available() is False (no triton, or no CUDA device and TRITON_INTERPRET unset)"}
    if device.type == "cpu" and not triton_dn.interpreted():
        return {"skipped": "the kernels need a CUDA device (or TRITON_INTERPRET=1) for CPU tensors"}
    rows = []
    for shape, window in shapes:
        row = {"shape": list(shape), "window": window}
        try:
            if not triton_dn.supported(dn_star(shape[1], window, "general").spec):
                row["skipped"] = "spec not supported"
                rows.append(row)
                continue
            gen = torch.Generator(device="cpu").manual_seed(0)
            x0 = (torch.randn(shape, generator=gen) * 3 + 1).to(device)
            gy = torch.randn(shape, generator=gen).to(device)
            out = {}
            for impl in ("general", "triton"):
                m = dn_star(shape[1], window, impl, alpha=0.005, device=device)
                x = x0.clone().requires_grad_()
                y = m(x)
                ((y * gy).sum() + sparse_penalty(m)).backward()
                out[impl] = (y.detach(), x.grad)
            rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))  # noqa: E731
            row.update(y_rel_err=rel(out["triton"][0], out["general"][0]),
                       grad_rel_err=rel(out["triton"][1], out["general"][1]))
            row["ok"] = bool(row["y_rel_err"] < 1e-4 and row["grad_rel_err"] < 1e-4)
        except Exception as e:   # noqa: BLE001  recorded: the rest of the trip still runs
            row.update(ok=False, error=_error(e))
        rows.append(row)
        print(f"[check] triton vs general {row}", flush=True)
    return {"interpreted": triton_dn.interpreted(), "rows": rows, "ok": all(r.get("ok", True) for r in rows)}


# ------------------------------------------------------------------------------------------------ 2. layer
def _candidates(c: int, window: int, device: torch.device, compile_: bool) -> dict:
    """name -> (impl label, a module factory)."""
    cands = {"batchnorm2d": lambda: nn.BatchNorm2d(c).to(device),
             "bn* fused": lambda: make_norm("bn", c, sigma=1.0, eps=0.0, impl="fused", device=device),
             "dn* general": lambda: dn_star(c, window, "general", device=device)}
    if compile_:
        cands["dn* compile"] = lambda: dn_star(c, window, "compile", device=device)
    try:
        from dnlib.norms import triton_dn
        if device.type == "cuda" and triton_dn.available():     # (the CPU interpreter is for correctness only)
            cands["dn* triton"] = lambda: dn_star(c, window, "triton", device=device)
    except ImportError:
        pass
    return cands


def _eager_step(layer, x, gy):
    def step():
        x.grad = None
        layer(x).backward(gy)
    return step


def _graph_step(layer, x, gy):
    """The layer's forward+backward captured as one CUDA graph (warm-up on a side stream first, as torch's docs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x).backward(gy)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    layer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layer(x).backward(gy)
    return graph.replay


def layer_bench(device: torch.device, shapes, repeat: int, compile_: bool) -> list:
    """Medians of ``repeat`` interleaved forward+backward passes per candidate; ratios to ``nn.BatchNorm2d``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    modes = ("eager", "cuda-graph") if device.type == "cuda" else ("eager",)
    for shape, window in shapes:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        gy = torch.randn(shape, generator=gen).to(device)
        for mode in modes:
            steps, errors = {}, {}
            for name, make in _candidates(shape[1], window, device, compile_).items():
                try:
                    layer = make()
                    step = _eager_step(layer, x, gy)
                    for _ in range(3):                       # warm-up (compilation, cuDNN's choice)
                        step()
                    steps[name] = _graph_step(layer, x, gy) if mode == "cuda-graph" else step
                except Exception as e:   # noqa: BLE001
                    errors[name] = _error(e)
            times = {k: [] for k in steps}
            before = load_line()
            for _ in range(repeat):
                for name, step in steps.items():
                    sync()
                    t0 = time.perf_counter()
                    step()
                    sync()
                    times[name].append(time.perf_counter() - t0)
            after = load_line()
            print(f"[layer] {tuple(shape)} k={window} {mode}: before {before}; after {after}", flush=True)
            base = statistics.median(times["batchnorm2d"]) if times.get("batchnorm2d") else None
            for name in list(steps) + list(errors):
                row = {"shape": list(shape), "window": window, "mode": mode, "layer": name,
                       "impl": name.split()[-1], "load_before": before, "load_after": after}
                if name in errors:
                    row["error"] = errors[name]
                else:
                    ms = statistics.median(times[name]) * 1e3
                    row.update(ms=ms, ratio_vs_bn=ms / (base * 1e3) if base else None)
                rows.append(row)
                print(f"[layer] {tuple(shape)} k={window} {mode:10s} {name:12s} "
                      + (f"{row['ms']:8.3f} ms  {row['ratio_vs_bn']:.2f}x BN" if "ms" in row else row["error"]),
                      flush=True)
    return rows


# --------------------------------------------------------------------------------------------- 3. training
def _training_candidates(device: torch.device, cfg, stacks, data) -> tuple:
    """``(candidates, errors)`` of one configuration: ``candidates[(kind, K)] = (step, mode)`` for the ordinary run
    (``("separate", 1)``) and each stack of K copies; ``errors[(kind, K)]`` the build that failed."""
    cands, errors = {}, {}
    for kind, k in [("separate", 1)] + [("stacked", k) for k in stacks]:
        try:
            if kind == "separate":
                setup = runner.build_setup(RECIPE, cfg, 0, str(device), {"data": data, "mode": "auto", "eval_every": 0})
                tr = setup.make_trainer(evaluate=None)
                mode = recipes.trainer_mode(isinstance(tr, GraphTrainer), device)
            else:
                run = stacked.prepare(RECIPE, cfg, list(range(k)), device=str(device), progress=False,
                                      options={"data": data, "eval_every": 0, "mode": "auto"})
                tr, mode = run.trainer, run.setup.info["mode"]
            cands[(kind, k)] = ((lambda tr=tr: tr.train_step(next(tr.batches))), mode)
        except Exception as e:   # noqa: BLE001
            errors[(kind, k)] = e
            traceback.print_exc()
    return cands, errors


def training(device: torch.device, configs, stacks, data, steps: int, warmup: int, batch_size=None) -> list:
    """images/s of one ordinary run and of K stacked copies per configuration (the same data, seeds 0..K-1). The
    candidates of a configuration are timed interleaved round-robin (:func:`dnlib.experiments.bench.round_robin_steps`:
    ``warmup`` untimed rounds, then ``steps`` rounds, each one training step of every candidate in turn), images/s
    from the median step; ``vs_separate`` (K stacked copies vs the same K runs one after another) is the ratio to the
    ordinary run timed in the same rounds; the load average is printed before and after (``load_before``,
    ``load_after`` in each row)."""
    rows = []
    changes = {} if batch_size is None else {"batch_size": batch_size}
    for entry in configs:
        name, _, impl = entry.partition(":")
        cfg = RECIPE.config(name, dataset=data.name, **changes, **({"impl": impl} if impl else {}))
        cands, errors = _training_candidates(device, cfg, stacks, data)
        before = load_line()
        print(f"[train] {entry}: {before} before timing {len(cands)} candidates interleaved", flush=True)
        times, _, failed = benches.round_robin_steps({key: step for key, (step, _) in cands.items()}, steps, warmup,
                                                     device)
        after = load_line()
        print(f"[train] {entry}: {after} after", flush=True)
        errors.update(failed)
        separate = None
        for kind, k in [("separate", 1)] + [("stacked", k) for k in stacks]:
            row = {"config": name, "impl": cfg.impl, "kind": kind, "copies": k, "batch_size": cfg.batch_size,
                   "steps": steps, "load_before": before, "load_after": after}
            if (kind, k) in errors:
                row["error"] = _error(errors[(kind, k)])
            else:
                med = statistics.median(times[(kind, k)])
                ips = cfg.batch_size * k / med
                row.update(mode=cands[(kind, k)][1], median_step_s=med, images_per_s=ips,
                           per_copy_images_per_s=ips / k)
                if kind == "separate":
                    separate = ips
                elif separate:
                    row["vs_separate"] = ips / separate    # K stacked copies vs the same K runs one after another
            rows.append(row)
            print(f"[train] {entry:14s} {kind:8s} K={k}: " + (f"{row['images_per_s']:,.0f} img/s"
                  + (f" ({row['vs_separate']:.2f}x separate)" if "vs_separate" in row else "")
                  if "images_per_s" in row else row["error"]), flush=True)
        del cands, times
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------- 4. estimate
def _family(name: str) -> str:
    return "base" if name.startswith("base") else "dn-star" if name.startswith("dn") else "bn-star"


def estimate(rows: list, seeds: int = SEEDS_PER_CONFIG) -> dict:
    """Seconds for Table 7 x both datasets x ``seeds`` at the full schedule: one run after another at the ordinary
    run's rate, and with the seeds of each (configuration, dataset) stacked (K = seeds) when that K was measured."""
    rate = {}                     # the fastest impl measured for each (configuration, kind, K)
    for r in rows:
        if "images_per_s" in r:
            key = (r["config"], r["kind"], r["copies"])
            rate[key] = max(rate.get(key, 0.0), r["images_per_s"])
    out = {"runs": len(list_configs()) * len(DATASETS) * seeds, "seeds": seeds,
           "proxies": "Baseline rows at the base rate, BN and LN rows at the BN* rate, DN rows at the DN* rate "
                      "(each the fastest impl measured)",
           "excludes": "evaluation, data loading, graph capture"}
    plans = {"sequential_seconds": ("separate", 1), f"stacked_seeds_k{seeds}_seconds": ("stacked", seeds)}
    for key, (kind, k) in plans.items():
        total = 0.0
        for ds in DATASETS:
            for name in list_configs():
                cfg = get_config(name, ds)
                r = rate.get((_family(name), kind, k))
                if r is None:
                    total = None
                    break
                # a stack of K copies advances K runs at once at r images/s in all
                total += seeds * cfg.steps * cfg.batch_size / r
            if total is None:
                break
        out[key] = total
    return out


def default_configs(device: torch.device) -> list:
    """Baseline, BN*, DN*; on CUDA also DN* with the Triton kernels when they are available. (``dn-star:compile``
    is left to ``--configs``: every K is a new shape, a new compilation.)"""
    out = list(TRAIN_CONFIGS)
    if device.type == "cuda":
        try:
            from dnlib.norms import triton_dn
            if triton_dn.available():
                out.append("dn-star:triton")
        except ImportError:
            pass
    return out


# ------------------------------------------------------------------------------------------------- report
def markdown(rep: dict) -> str:
    sizes = "tiny CPU rehearsal: sizes shrunk, figures meaningless" if rep["tiny"] else "full sizes"
    lines = [f"# Throughput on {rep['card']} ({sizes})",
             "", f"torch {rep['torch']}, triton {rep['triton']}, {rep['when']}, commit {rep['commit']}. Made by "
             f"`scripts/gpu_throughput.py {' '.join(rep['argv'])}`.", ""]
    chk = rep.get("triton_check")
    if chk is not None:
        lines += ["## Triton kernels vs the general path", ""]
        if "skipped" in chk:
            lines += [f"Skipped: {chk['skipped']}.", ""]
        else:
            lines += ["| shape | window | y rel. err | grad rel. err | ok |", "|---|---|---|---|---|"]
            for r in chk["rows"]:
                lines.append(f"| {tuple(r['shape'])} | {r['window']} | {r.get('y_rel_err', '-')} | "
                             f"{r.get('grad_rel_err', '-')} | {r.get('ok', r.get('skipped', r.get('error')))} |")
            lines.append("")
    if rep.get("layer"):
        lines += ["## Layer forward+backward (ms, and x nn.BatchNorm2d in the same run)", "",
                  "| shape | window | mode | layer | ms | x BN |", "|---|---|---|---|---|---|"]
        for r in rep["layer"]:
            lines.append(f"| {tuple(r['shape'])} | {r['window']} | {r['mode']} | {r['layer']} | "
                         + (f"{r['ms']:.3f} | {r['ratio_vs_bn']:.2f} |" if "ms" in r else f"error | {r['error']} |"))
        lines.append("")
    if rep.get("training"):
        lines += ["## Training throughput (images/s; stacked: all K copies together)", "",
                  "| config | impl | kind | K | mode | img/s | per copy | x K separate runs |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rep["training"]:
            if "images_per_s" in r:
                lines.append(f"| {r['config']} | {r['impl']} | {r['kind']} | {r['copies']} | {r['mode']} | "
                             f"{r['images_per_s']:,.0f} | "
                             f"{r['per_copy_images_per_s']:,.0f} | "
                             + (f"{r['vs_separate']:.2f} |" if "vs_separate" in r else "- |"))
            else:
                lines.append(f"| {r['config']} | {r['impl']} | {r['kind']} | {r['copies']} | - | "
                             f"error: {r['error']} | | |")
        loads = {}
        for r in rep["training"]:
            loads.setdefault(r["config"] + (f":{r['impl']}" if r.get("impl") else ""),
                             (r.get("load_before"), r.get("load_after")))
        lines += ["Candidates of a configuration timed interleaved round-robin (medians over the rounds); "
                  "x K separate runs: the ratio to the ordinary run in the same rounds. Load average:", ""]
        lines += [f"- {c}: before {b}; after {a}" for c, (b, a) in loads.items()]
        lines.append("")
    if rep.get("training_error"):
        lines += ["## Training throughput", "", f"Not measured: {rep['training_error']}.", ""]
    est = rep.get("table7_estimate")
    if est:
        fmt = lambda s: "not measured" if s is None else f"{s:,.0f} s ({s / 60:.1f} min)"  # noqa: E731
        lines += ["## Table 7 estimate", "",
                  f"{est['runs']} runs (13 configurations x CIFAR-10/100 x {est['seeds']} seeds), full schedule; "
                  f"{est['proxies']}; excludes {est['excludes']}.", ""]
        for k, v in est.items():
            if k.endswith("_seconds"):
                lines.append(f"- {k[:-len('_seconds')].replace('_', ' ')}: {fmt(v)}")
        lines.append("")
    return "\n".join(lines)


def write(rep: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "throughput.json", records.jsonable(rep), indent=1)
    atomic_write_text(out / "throughput.md", markdown(rep))


def main(argv=None) -> int:
    """The script, timing in float32, the runs' arithmetic (torch's default lets cuDNN convolutions use TF32: the
    figures were of a faster arithmetic than the runs they predict); the process's switches are restored after."""
    with float32_arithmetic():
        return _main(argv)


def _main(argv=None) -> int:
    p = cli.ArgumentParser(prog="scripts/gpu_throughput.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=cli.device, default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    p.add_argument("--tiny", action="store_true", help="shrunk sizes and steps: a rehearsal, its figures meaningless")
    p.add_argument("--out", type=cli.out_dir, default=None,
                   help="folder of throughput.json/.md (default results/<card-slug>; --tiny: runs/throughput-tiny)")
    p.add_argument("--stacks", type=cli.positive_int, nargs="+", default=None, help="K (default 1 3 4 8; --tiny 1 2)")
    p.add_argument("--configs", nargs="+", default=None,
                   help="training configurations, NAME or NAME:IMPL (default base bn-star dn-star, and on CUDA "
                        "dn-star:triton when the kernels are available)")
    p.add_argument("--steps", type=cli.positive_int, default=None,
                   help="timed training rounds, one step of every candidate each (default 200; tiny 2)")
    p.add_argument("--warmup", type=cli.nonnegative_int, default=None, help="untimed steps first (default 20; tiny 1)")
    p.add_argument("--repeat", type=cli.positive_int, default=None, help="layer passes per candidate (default 50)")
    p.add_argument("--subset", type=cli.subset, default=None,
                   help="training data subset N or N_TRAIN,N_EVAL (default 10000,1000; throughput does not depend "
                        "on it: batches are gathered from the resident set)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip impl='compile' (slow to build)")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch CPU threads (default torch's; --tiny: 1, steadier on a shared machine)")
    p.add_argument("--skip", nargs="+", default=[], choices=["check", "layer", "training"], help="sections to skip")
    a = p.parse_args(argv)
    with cli.user_errors(p):
        device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                              "cpu" if a.device == "auto" else a.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device: {a.device!r} but CUDA is not available here")
        configs = a.configs or default_configs(device)
        for entry in configs:
            name, _, impl = entry.partition(":")
            if impl and impl not in IMPLS:
                raise ValueError(f"--configs: {entry!r} names impl {impl!r}; allowed are {list(IMPLS)}")
            RECIPE.config(name, **({"impl": impl} if impl else {}))
    tiny = a.tiny
    if a.threads or tiny:
        torch.set_num_threads(a.threads or 1)
    stacks = a.stacks or ([1, 2] if tiny else [1, SEEDS_PER_CONFIG, 4, 8])
    steps = a.steps or (2 if tiny else 200)
    warmup = a.warmup if a.warmup is not None else (1 if tiny else 20)
    repeat = a.repeat or (3 if tiny else 50)
    subset = a.subset or ((300, 100) if tiny else (10000, 1000))
    card = recipes.card(device)
    out = Path(a.out) if a.out else REPO / ("runs/throughput-tiny" if tiny else f"results/{slug(card)}")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    git = records.git_state() or {}
    rep = {"card": card, "slug": slug(card), "device": {"type": device.type, "name": card,
                                                         "host_cpu": platform.processor() or platform.machine()},
           "torch": torch.__version__, "triton": triton_version, "tiny": tiny, "argv": list(argv or sys.argv[1:]),
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "commit": (git.get("commit") or "")[:12] + ("+dirty" if git.get("dirty") else ""),
           "settings": {"stacks": stacks, "steps": steps, "warmup": warmup, "repeat": repeat,
                        "subset": list(subset) if isinstance(subset, tuple) else subset,
                        "threads": torch.get_num_threads()}}
    print(f"[throughput] {card}, torch {torch.__version__}, triton {triton_version}, out {out}", flush=True)
    t0 = time.perf_counter()
    layer_shapes = TINY_SHAPES if tiny else PAPER_SHAPES + [LARGE_SHAPE]
    if "check" not in a.skip:
        rep["triton_check"] = triton_check(device, TINY_SHAPES[1:2] if tiny else PAPER_SHAPES + [LARGE_SHAPE])
        write(rep, out)
    if "layer" not in a.skip:
        rep["layer"] = layer_bench(device, layer_shapes, repeat, a.compile and device.type == "cuda")
        write(rep, out)
    if "training" not in a.skip:
        try:
            data = load_data("cifar10", subset=subset, device=str(device))
        except Exception as e:   # noqa: BLE001  no data here (DNLIB_DATA): the other sections still count
            data, rep["training_error"] = None, f"CIFAR-10 not loaded: {_error(e)}"
            print(f"[train] skipped: {rep['training_error']}", flush=True)
        if data is not None:
            rep["data"] = data.description
            rep["training"] = training(device, configs, stacks, data, steps, warmup, batch_size=20 if tiny else None)
            rep["table7_estimate"] = estimate(rep["training"])
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    write(rep, out)
    print(markdown(rep), flush=True)
    failed = [r for r in rep.get("training", []) + rep.get("layer", []) if "error" in r]
    bad_check = rep.get("triton_check", {}).get("ok") is False
    return 1 if failed or bad_check or "training_error" in rep else 0


if __name__ == "__main__":
    sys.exit(main())
