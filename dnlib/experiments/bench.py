"""Outside the runner: a configuration's training throughput (:func:`bench`), graph steps against eager ones
(:func:`check_graph`), the one timing loop (:func:`time_steps`) and the ``bench``/``check-graph`` verbs a recipe
offers (:func:`steps_command`)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import cli
from ..training import precision
from .recipe import Command, Recipe, card, check_config, check_int, replace
from .runner import build_setup, share_data

__all__ = ["time_steps", "check_graph", "graph_not_applicable", "bench", "steps_command"]


def time_steps(step: Callable[[], Any], steps: int, warmup: int = 0, device="cpu") -> tuple:
    """``(seconds, last value)``: the wall time of ``steps`` calls of ``step`` after ``warmup`` untimed ones (CUDA
    synchronized before and after when ``device`` is a CUDA device); the benchmarks' one timing loop."""
    check_int("steps", steps)
    check_int("warmup", warmup, 0)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    sync()
    return time.perf_counter() - t0, last


def _trainer(recipe: Recipe, cfg, seed: int, device, options: dict, log_every: int | None = None):
    """``(trainer, setup)`` of ``cfg``, seeded, without evaluation, outside the runner (checks, benchmarks)."""
    setup = build_setup(recipe, cfg, seed, device, options)
    if log_every:
        setup.train.log_every = log_every
    return setup.make_trainer(evaluate=None), setup


def _row(row: dict) -> dict:
    """A row without the facts a recipe does not have (None: no ``impl``, no trainer ``mode``, no error)."""
    return {k: v for k, v in row.items() if v is not None}


def check_graph(recipe: Recipe, config, *, eager: Mapping, graph: Mapping, steps: int = 5, seed: int = 0,
                device="auto", rtol: float = 1e-2, options: dict | None = None, **overrides) -> dict:
    """Train ``steps`` steps of a configuration with the eager step and with the graph step (the build options
    ``eager`` and ``graph``, over ``options``) from the same initialisation on the same batches. ``ok`` when every
    floating parameter and buffer agrees to ``rtol`` of how far training moved it, the losses agree to ``rtol``
    and the capture did not fall back. On a CPU this checks the graph step's code without a capture. A config with
    an ``impl`` is compared with the plain eager step (``impl="auto"``: e.g. a compiled graph step against it).
    ``options`` (a dict) keeps the data loaded here for the next call (:func:`share_data`). A comparison that cannot
    fail (:func:`graph_not_applicable`: the graph build runs the eager step's own code) is not made: ``ok`` None and
    ``why`` say so."""
    check_int("steps", steps)
    cfg = recipe.config(config, steps=steps, **overrides)
    options = {} if options is None else options
    tf32 = precision.check_tf32(options.get("tf32", False))
    with precision.float32_arithmetic(tf32):          # a run's arithmetic (float32 unless tf32), as runner.Run's
        return _check_graph(recipe, cfg, eager, graph, steps, seed, device, rtol, options)


def _check_graph(recipe, cfg, eager, graph, steps, seed, device, rtol, options) -> dict:
    out, built = {}, {}
    for mode, opts in (("eager", eager), ("graph", graph)):
        c = replace(cfg, impl="auto") if mode == "eager" and hasattr(cfg, "impl") else cfg
        build = {k: v for k, v in options.items() if k != "tf32"}    # (the runner's option, not the recipe's)
        tr, setup = _trainer(recipe, c, seed, device, {**build, **opts}, log_every=1)
        share_data(recipe, options, setup)
        built[mode] = (tr, c)
        if mode == "graph" and built["eager"][1] == c:        # the same model: is the step another code?
            why = graph_not_applicable(built["eager"][0], tr, setup.info.get("mode"))
            if why:
                return {**_row({"config": cfg.name, "mode": setup.info.get("mode"),
                                "impl": getattr(cfg, "impl", None), "steps": 0}), "ok": None, "why": why}
        init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        losses = [r["train_loss"] for r in tr.run_until(steps) if "train_loss" in r]
        out[mode] = (init, tr.model.state_dict(), losses, setup.info.get("mode"), getattr(tr, "fell_back", False))
    (init, eager_sd, le, _, _), (_, graph_sd, lg, gmode, fell) = out["eager"], out["graph"]
    floats = [k for k, v in eager_sd.items() if v.is_floating_point()]
    moved = max((eager_sd[k].double() - init[k].double()).abs().max().item() for k in floats)
    diff = max((eager_sd[k].double() - graph_sd[k].double()).abs().max().item() for k in floats)
    loss_diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(le, lg))
    ok = diff <= rtol * moved and loss_diff <= rtol and moved > 0 and all(map(math.isfinite, lg)) and not fell
    return _row({"config": cfg.name, "mode": gmode, "impl": getattr(cfg, "impl", None), "steps": steps,
                 "param_diff": diff, "param_moved": moved, "loss_rel_diff": loss_diff, "eager_losses": le,
                 "graph_losses": lg, "ok": bool(ok), "error": "the CUDA-graph capture failed" if fell else None})


def graph_not_applicable(eager, graph, mode: str | None) -> str | None:
    """Why comparing the trainer ``graph`` (of the graph build, its setup ``mode``) with ``eager`` (of the eager
    build, the same configuration) cannot fail, starting "not applicable"; None when it can. It cannot when the graph
    build made the eager build's trainer and captures nothing: both steps run the same code. That is a build without
    a graph step (setup mode ``eager``: e.g. a stacked SR launch with Adam) or, without CUDA, a trainer whose graph
    step is its eager step's own body (the stacked PTB trainer; the CIFAR graph step's hand-written SGD, by contrast,
    is another code than torch's and is checked on a CPU too)."""
    if type(graph) is not type(eager) or getattr(graph, "capture", False):
        return None
    name = type(graph).__name__
    if mode == "eager":
        return (f"not applicable: the graph build trains eagerly ({name}, setup mode 'eager': no graph step for this "
                "configuration, e.g. Adam), so the check would compare the eager step with itself")
    return (f"not applicable: without a CUDA capture the graph step is the eager step's own code ({name}), so the "
            "check would compare it with itself; it is meaningful on CUDA only")


def bench(recipe: Recipe, config, *, steps: int = 200, warmup: int = 20, seed: int = 0, device="auto",
          options: dict | None = None, **overrides) -> dict:
    """Training throughput of a configuration outside the runner, the one implementation behind every recipe's
    ``bench`` (function and verb): ``steps`` timed steps after ``warmup`` untimed ones (a graph capture or a
    compilation among them), no evaluation; ``<unit>_per_s`` counts the recipe's :attr:`~Recipe.unit` s
    (:meth:`~Recipe.items_per_step` per step: CIFAR images, SR patches, PTB tokens). ``options``: build options (a
    dict keeps the data loaded here for the next call; ``tf32``: a run's, float32 by default, as
    :class:`~dnlib.experiments.runner.Run` computes)."""
    check_int("steps", steps)
    check_int("warmup", warmup, 0)
    cfg = recipe.config(config, **overrides)
    opts = dict(options or {})
    with precision.float32_arithmetic(precision.check_tf32(opts.pop("tf32", False))):    # a run's arithmetic
        tr, setup = _trainer(recipe, cfg, seed, device, opts)
        share_data(recipe, options, setup)
        sec, loss = time_steps(lambda: tr.train_step(next(tr.batches)), steps, warmup, tr.device)
    return _row({"config": cfg.name, "mode": setup.info.get("mode"), "impl": getattr(cfg, "impl", None),
                 "device": card(tr.device), "steps": steps, "batch_size": cfg.batch_size, "steps_per_s": steps / sec,
                 f"{recipe.unit}_per_s": steps * recipe.items_per_step(cfg) / sec, "loss": float(loss)})


def steps_command(recipe: Recipe, verb: str, *, steps: int, warmup: int = 0, flags: Sequence[str] = (),
                  configs: Sequence[str] = (), defaults: Mapping | None = None, options: Mapping | None = None,
                  **kwargs) -> Command:
    """A recipe's ``bench`` (``verb="bench"``: :func:`bench`) or ``check-graph``
    (:func:`check_graph`, ``kwargs`` its ``eager`` and ``graph`` options) command: configuration names (groups
    expanded; default ``configs``), ``--steps``, ``--warmup`` (bench), ``--device`` and the recipe's run ``flags``
    named (``defaults``: their values when not given; ``options``: fixed build options); one JSON row per
    configuration, data loaded once; each configuration checked first as ``run`` checks it (:func:`check_config`: a
    bad one is one line, exit 2, before any data); a configuration that fails is a row with ``ok: false``."""
    def add(q):
        q.add_argument("configs", nargs="*" if configs else "+", default=list(configs),
                       help=f"configuration names (groups: {', '.join(recipe.groups())})")
        q.add_argument("--steps", type=cli.positive_int, default=steps,
                       help=f"steps per configuration (default {steps})")
        if verb == "bench":
            q.add_argument("--warmup", type=cli.nonnegative_int, default=warmup,
                           help="untimed steps first (a capture or compilation among them)")
        q.add_argument("--device", type=cli.device, default="auto", help="auto, cpu, cuda[:N] (default auto)")
        for flag in flags:
            q.add_argument(flag, default=None, **recipe.flags[flag][1])
        q.set_defaults(**(defaults or {}))

    def handler(args, q):
        overrides, opts = recipe.from_args(args)
        opts = {**opts, **(options or {})}
        with cli.user_errors(q):    # run's checks (a bad field, --impl triton on a CPU, ...): before any data
            names = recipe.expand(args.configs)
            for n in names:
                check_config(recipe, recipe.config(n, **overrides), args.device)
        fn = bench if verb == "bench" else check_graph
        extra = {"warmup": args.warmup} if verb == "bench" else {}
        for n in names:
            try:
                yield fn(recipe, n, steps=args.steps, device=args.device, options=opts, **extra, **kwargs, **overrides)
            except Exception as e:  # noqa: BLE001  (e.g. no capture or compiler here: the row says so, exit 1)
                yield {"config": n, "ok": False, "error": f"{type(e).__name__}: {cli.one_line(e)}"}

    what = "training throughput per configuration" if verb == "bench" else "compare graph steps with eager steps"
    return Command(what, add, handler, rows=True)
