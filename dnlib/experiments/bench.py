"""Outside the runner: configurations' training throughput (:func:`bench_many`, :func:`bench`), graph steps against
eager ones (:func:`check_graph`), the one timing loop (:func:`round_robin_steps`) and the ``bench``/``check-graph``
verbs a recipe offers (:func:`steps_command`).

Speed is measured as the project's rule says: the configurations of one ``bench`` are timed interleaved round-robin
(each round times one training step of every configuration; medians over the rounds), each one's throughput also a
ratio to the first configuration's in the same run (``vs_first``), the load average recorded before and after
(``load_before``, ``load_after``; the verb prints them on stderr). A bench of one configuration has no baseline: its
figure is absolute (its row says so in ``note``), comparable with another run's only with care."""
from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import cli
from ..analysis.rnn_bench import load_line
from ..training import precision
from .recipe import Command, Recipe, card, check_config, check_int, replace, share_data
from .runner import build_setup

__all__ = ["round_robin_steps", "check_graph", "graph_not_applicable", "bench", "bench_many", "steps_command",
           "ABSOLUTE"]

#: the ``note`` of a bench row measured without a baseline in the same run
ABSOLUTE = ("absolute figure (one configuration, no baseline timed in the same run, not a ratio): comparable with "
            "another run's only with care (load, clocks, threads)")


def round_robin_steps(steps: Mapping[Any, Callable[[], Any]], rounds: int, warmup: int = 0, device="cpu") -> tuple:
    """``(times, last, errors)``: ``times[name]`` the seconds of each of ``rounds`` timed calls of ``steps[name]``
    after ``warmup`` untimed rounds, every round calling each candidate once in turn (interleaved round-robin, so
    that machine load hits all alike; CUDA synchronized before and after each timed call when ``device`` is a CUDA
    device); ``last[name]`` its last value. A candidate that raises is dropped from the later rounds, its exception
    in ``errors[name]``. The benchmarks' one timing loop: take medians over the rounds."""
    check_int("rounds", rounds)
    check_int("warmup", warmup, 0)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times, last, errors = {k: [] for k in steps}, {}, {}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            if name in errors:
                continue
            try:
                sync()
                t0 = time.perf_counter()
                last[name] = step()
                sync()
                if r >= warmup:
                    times[name].append(time.perf_counter() - t0)
            except Exception as e:   # noqa: BLE001  the others still run; the caller reports it
                errors[name] = e
    return {k: v for k, v in times.items() if k not in errors}, last, errors


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
        share_data(options, setup)
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
    """Training throughput of one configuration outside the runner (every recipe's ``bench`` function): the row of
    :func:`bench_many` for it alone, an exception raised. With no baseline in the run its figure is absolute (the
    row's ``note``: :data:`ABSOLUTE`), comparable with another run's only with care; to compare configurations,
    bench them together (:func:`bench_many`, the ``bench`` verb with several names)."""
    return bench_many(recipe, [config], steps=steps, warmup=warmup, seed=seed, device=device, options=options,
                      catch=False, **overrides)[0]


def bench_many(recipe: Recipe, configs: Sequence, *, steps: int = 200, warmup: int = 20, seed: int = 0,
               device="auto", options: dict | None = None, catch: bool = True, say: Callable[[str], Any] | None = None,
               **overrides) -> list:
    """Training throughput of ``configs`` outside the runner, one row each, the one implementation behind every
    recipe's ``bench`` (function and verb): every configuration built first (seed ``seed``, no evaluation), then
    ``warmup`` untimed rounds (a graph capture or a compilation among them) and ``steps`` timed rounds, each round
    one training step of every configuration in turn (:func:`round_robin_steps`); ``steps_per_s`` and
    ``<unit>_per_s`` (the recipe's :attr:`~Recipe.unit` s, :meth:`~Recipe.items_per_step` per step: CIFAR images,
    SR patches, PTB tokens) from the median step. With several configurations ``vs_first`` is each one's throughput
    over the first's (``baseline``), measured in the same rounds; with one, ``note`` says the figure is absolute.
    ``load_before``/``load_after``: the load average around the timing (also given to ``say``, e.g. a print).
    ``options``: build options (a dict keeps the data loaded here for the next call; ``tf32``: a run's, float32 by
    default, as :class:`~dnlib.experiments.runner.Run` computes). ``catch``: a configuration that fails is a row
    ``ok: false`` with its error (else the exception is raised)."""
    check_int("steps", steps)
    check_int("warmup", warmup, 0)
    cfgs = [recipe.config(c, **overrides) for c in configs]
    opts = dict(options or {})
    tf32 = precision.check_tf32(opts.pop("tf32", False))
    built, failed = {}, {}
    with precision.float32_arithmetic(tf32):    # a run's arithmetic
        for i, cfg in enumerate(cfgs):
            try:
                tr, setup = _trainer(recipe, cfg, seed, device, opts)
            except Exception as e:   # noqa: BLE001
                if not catch:
                    raise
                failed[i] = e
                continue
            share_data(opts, setup)          # one load for all the configurations
            share_data(options, setup)       # and for the caller's next call
            built[i] = (tr, setup)
        step_of = {i: (lambda tr=tr: tr.train_step(next(tr.batches))) for i, (tr, _) in built.items()}
        before = load_line()
        if say:
            say(f"[bench] {before} before timing {len(built)} configuration(s) interleaved")
        times, last, errors = round_robin_steps(step_of, steps, warmup,
                                                next(iter(built.values()))[0].device if built else "cpu")
        after = load_line()
        if say:
            say(f"[bench] {after} after")
    if errors and not catch:
        raise next(iter(errors.values()))
    failed.update(errors)
    rows, first = [], None
    for i, cfg in enumerate(cfgs):
        if i in failed:
            e = failed[i]
            rows.append({"config": cfg.name, "ok": False, "error": f"{type(e).__name__}: {cli.one_line(e)}"})
            continue
        tr, setup = built[i]
        med = statistics.median(times[i])
        row = _row({"config": cfg.name, "mode": setup.info.get("mode"), "impl": getattr(cfg, "impl", None),
                    "device": card(tr.device), "steps": steps, "batch_size": cfg.batch_size, "steps_per_s": 1 / med,
                    f"{recipe.unit}_per_s": recipe.items_per_step(cfg) / med, "loss": float(last[i]),
                    "timing": f"median of {steps} interleaved rounds (one step of each of {len(cfgs)} "
                              f"configuration(s) per round) after {warmup}",
                    "load_before": before, "load_after": after})
        if len(cfgs) == 1:
            row["note"] = ABSOLUTE
        else:
            first = row if i == 0 else first      # (None when the first failed: no ratio)
            unit = f"{recipe.unit}_per_s"
            row.update(baseline=cfgs[0].name, vs_first=row[unit] / first[unit] if first else None)
        rows.append(row)
    return rows


def steps_command(recipe: Recipe, verb: str, *, steps: int, warmup: int = 0, flags: Sequence[str] = (),
                  configs: Sequence[str] = (), defaults: Mapping | None = None, options: Mapping | None = None,
                  **kwargs) -> Command:
    """A recipe's ``bench`` (``verb="bench"``: :func:`bench_many`, the configurations timed together, interleaved
    round-robin, the load average on stderr before and after) or ``check-graph`` (:func:`check_graph`, ``kwargs``
    its ``eager`` and ``graph`` options) command: configuration names (groups
    expanded; default ``configs``), ``--steps``, ``--warmup`` (bench), ``--device`` and the recipe's run ``flags``
    named (``defaults``: their values when not given; ``options``: fixed build options); one JSON row per
    configuration, data loaded once; each configuration checked first as ``run`` checks it (:func:`check_config`: a
    bad one is one line, exit 2, before any data); a configuration that fails is a row with ``ok: false``."""
    def add(q):
        q.add_argument("configs", nargs="*" if configs else "+", default=list(configs),
                       help=f"configuration names (groups: {', '.join(recipe.groups())})")
        q.add_argument("--steps", type=cli.positive_int, default=steps,
                       help=f"steps per configuration (default {steps}"
                       + ("; bench: timed rounds, one step of every configuration each)" if verb == "bench" else ")"))
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
        if verb == "bench":     # all timed together, interleaved; a configuration that fails is its row
            yield from bench_many(recipe, names, steps=args.steps, warmup=args.warmup, device=args.device,
                                  options=opts, say=lambda line: print(line, file=sys.stderr, flush=True),
                                  **kwargs, **overrides)
            return
        for n in names:
            try:
                yield check_graph(recipe, n, steps=args.steps, device=args.device, options=opts, **kwargs, **overrides)
            except Exception as e:  # noqa: BLE001  (e.g. no capture or compiler here: the row says so, exit 1)
                yield {"config": n, "ok": False, "error": f"{type(e).__name__}: {cli.one_line(e)}"}

    what = "training throughput per configuration" if verb == "bench" else "compare graph steps with eager steps"
    return Command(what, add, handler, rows=True)
