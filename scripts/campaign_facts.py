"""CPU-side facts for the campaign's plan (results/h100/campaign_plan.md): per training step of one run and of one
stacked launch, the ATen operations that launch device kernels (torch.profiler on the CPU; views, reshapes and
allocations are not counted) and the FLOPs of the matrix products and convolutions (the profiler's ``with_flops``),
at the paper's sizes.

    .venv/bin/python scripts/campaign_facts.py --out results/h100/campaign_facts.json      # ~1-3 min on a CPU

Each row: ``kernels`` (device-kernel operations per step), ``flops`` (per step), ``copies`` (runs in the step),
``kernels_per_run``, ``flops_per_run``. The step is the trainer's ``train_step`` (forward, loss, L1 terms, backward,
clipping, optimizer update), eager: the CUDA graph replays the same kernels.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dnlib import cli  # noqa: E402
from dnlib.io import atomic_write_json  # noqa: E402

#: ATen operations that launch no device kernel (metadata, views, allocation)
NO_KERNEL = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::t", "aten::transpose",
             "aten::permute", "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
             "aten::detach", "aten::detach_", "aten::alias", "aten::empty", "aten::empty_strided", "aten::empty_like",
             "aten::unbind", "aten::split", "aten::chunk", "aten::narrow", "aten::lift_fresh", "aten::resolve_conj",
             "aten::resolve_neg", "aten::_unsafe_view", "aten::numpy_T", "aten::flatten", "aten::contiguous",
             "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::result_type", "aten::to",
             "aten::_to_copy_", "aten::set_", "aten::view_as", "aten::expand_as", "aten::size", "aten::stride",
             "aten::unflatten", "aten::movedim", "aten::swapaxes", "aten::zeros_like_meta", "aten::resize_",
             "aten::_has_compatible_shallow_copy_type", "aten::requires_grad_", "aten::is_same_size",
             "aten::_nested_tensor_from_mask_left_aligned", "aten::align_tensors", "aten::lift",
             "aten::matmul", "aten::linear", "aten::conv2d", "aten::convolution", "aten::_convolution"}


def _leaves(prof) -> list:
    out = []
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in NO_KERNEL:
            continue
        if any(c.name.startswith("aten::") and c.name not in NO_KERNEL for c in e.cpu_children):
            continue                     # a composite: its children are counted
        out.append(e)
    return out


def measure(trainer, steps: int = 2) -> dict:
    """Kernel-launching operations and FLOPs per ``train_step`` of ``trainer`` (after one warm-up step)."""
    def step():
        trainer.train_step(next(trainer.batches))
        trainer.step += 1
    step()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            step()
    ev = _leaves(prof)
    flops = sum(e.flops or 0 for e in prof.events() if e.flops)
    return {"kernels": len(ev) / steps, "flops": flops / steps}


def _cifar(name, k):
    from dnlib.experiments import stacked
    from dnlib.experiments.cifar import RECIPE, load_data
    from dnlib.experiments.runner import build_setup
    data = load_data("cifar10", subset=(1000, 100), device="cpu", download=False)
    opts = {"data": data, "eval_every": 0, "mode": "graph"}
    if k == 1:
        return build_setup(RECIPE, RECIPE.config(name), 0, "cpu", opts).make_trainer(evaluate=None)
    return stacked.prepare(RECIPE, name, list(range(k)), device="cpu", options=opts, progress=False).trainer


def _sr(name, k):
    from dnlib.experiments import stacked_sr
    from dnlib.experiments.runner import build_setup
    from dnlib.experiments.sr import RECIPE
    opts = {"sets": (), "curve_sets": ()}
    if k == 1:
        return build_setup(RECIPE, RECIPE.config(name), 0, "cpu", opts).make_trainer(evaluate=None)
    return stacked_sr.prepare(RECIPE, name, list(range(k)), device="cpu", options=opts, progress=False).trainer


def _ptb(names, k_seeds):
    from dnlib.experiments import stacked_ptb
    from dnlib.experiments.ptb import RECIPE
    from dnlib.experiments.runner import build_setup
    opts = {"max_tokens": 20000, "final_test_batch_size": None, "mode": "graph"}
    if len(names) == 1 and k_seeds == 1:
        return build_setup(RECIPE, RECIPE.config(names[0]), 0, "cpu", opts).make_trainer(evaluate=None)
    return stacked_ptb.prepare(RECIPE, names, list(range(k_seeds)), device="cpu", options=opts,
                               progress=False).trainer


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="campaign_facts.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=cli.out_file, default="results/h100/campaign_facts.json")
    p.add_argument("--threads", type=cli.positive_int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dnlib.experiments.ptb import RECIPE as PTB
    from dnlib.experiments.ptb_configs import list_configs
    lstm = [n for n in list_configs("lstm") if PTB.config(n).arch == "lstm"]
    cases = [("cifar base", lambda: _cifar("base", 1), 1), ("cifar bn-star", lambda: _cifar("bn-star", 1), 1),
             ("cifar dn-star", lambda: _cifar("dn-star", 1), 1), ("cifar base K=3", lambda: _cifar("base", 3), 3),
             ("cifar dn-star K=3", lambda: _cifar("dn-star", 3), 3),
             ("sr fast-none", lambda: _sr("fast-none", 1), 1), ("sr fast-dn*", lambda: _sr("fast-dn*", 1), 1),
             ("sr fast-dn* K=3", lambda: _sr("fast-dn*", 3), 3),
             ("ptb base-lstm", lambda: _ptb(["base-lstm"], 1), 1),
             ("ptb dn-star-lstm", lambda: _ptb(["dn-star-lstm"], 1), 1),
             ("ptb dn-star-lstm K=3", lambda: _ptb(["dn-star-lstm"], 3), 3),
             (f"ptb lstm-arch group K={3 * len(lstm)}", lambda: _ptb(lstm, 3), 3 * len(lstm))]
    rows = []
    for name, make, k in cases:
        t0 = time.perf_counter()
        r = measure(make())
        rows.append({"case": name, "copies": k, **r, "kernels_per_run": r["kernels"] / k,
                     "flops_per_run": r["flops"] / k, "cpu_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(Path(args.out), {"torch": torch.__version__, "threads": args.threads, "load": os.getloadavg(),
                                       "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
