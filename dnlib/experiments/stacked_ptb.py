"""Several PTB runs trained as ONE stacked model: K seeds of one configuration, or K configurations of one cell type
(each with its seeds), per step one forward over all K copies (Table 9 x 3 seeds is 36 x 3 runs of 30k sequential
steps each: only many runs per launch can hide the per-step launch cost).

    from dnlib.experiments import stacked_ptb
    from dnlib.experiments.ptb import RECIPE
    results = stacked_ptb.run(RECIPE, ["base-lstm", "ln-star-lstm", "dn-star-lstm"], seeds=[0, 1, 2],
                              out="runs/ptb/stack")            # 9 copies; an ordinary run folder per copy
    stacked_ptb.run(RECIPE, resume=results[0].run_dir.parent)  # continue it

    python -m dnlib ptb stack base-lstm ln-star-lstm dn-star-lstm --seeds 0 1 2 --out runs/ptb/stack
    python -m dnlib ptb stack --resume runs/ptb/stack/base-lstm-s0+1+2+0+1+2+0+1+2-<UTC>

The copies are every configuration with every seed, configuration-major. The configurations must share the cell
class (``arch``), the sizes, the batch layout, the schedule length and the clipping mode; they may differ in
normalizer, sigma, alpha, learning rate (and its decay), clipping norm.

**What each copy is.** Copy k is the separate run of ``(configs[k], seeds[k])``:

* its model is built by the recipe exactly as that run builds it (seeded, ``recipe.build``), packed into
  :class:`~dnlib.models.stacked_rnn.StackedLanguageModel` (batched matrix products, per-copy normalizer statistics
  and L1 terms);
* its data is the run's (PTB's batches do not depend on the seed: every copy reads the same ids);
* its loss is its own NLL (summed over the steps, averaged over the streams); the trainer minimizes the SUM of the
  K losses and the L1 terms, so copy k's gradient is its run's;
* its gradient is clipped by its own global norm (``clip_mode="dense"``: as ``torch.nn.utils.clip_grad_norm_``;
  ``"slices"``: as :class:`dnlib.experiments.ptb.SliceClip`, TF's norm over the embedding's per-token rows), and it
  steps with its own learning rate (its configuration's per-epoch schedule): plain SGD ``p -= lr_k * g_k``;
* its state is carried and reset as the run's, it is evaluated on its own (valid/test perplexity with the state
  carried, the final one-stream test at the end) and checked on its own (a copy that diverges stops alone);
* it is recorded as an ordinary run (its own folder ``<config>-s<seed>`` in the group's folder, its configuration's
  record: ``gather``/``report`` read it as any other), ``config.setup.stacked = K``.

On the CPU in float64 every copy equals its separate run to rounding over steps with clipping, a learning-rate decay
and evaluation (``tests/test_stacked_ptb.py``). On CUDA (``mode="auto"``) the whole stacked step (forward over the
unrolled steps, backward, per-copy clipping, the per-copy SGD update, the state carry) is one CUDA graph, as
:class:`~dnlib.training.graphs.SequenceGraphTrainer` does for one model: the trainer is
:class:`~dnlib.training.stacked_sequence.StackedSequenceTrainer`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import cli
from ..data import PTBBatches
from ..models.stacked_rnn import StackedLanguageModel, set_stacked_eval_step
from ..norms.sparse import clear_penalties
from ..training.checkpoints import CheckpointError
from ..training.stacked_sequence import StackedSequenceTrainer
from . import records
from .recipe import RUN_FILE, Command, Recipe, Setup, share_data, trainer_mode
from .runner import Run, build_setup, read_run_file
from .stacked import check_seeds, group_flags, group_options, group_out, train_group

__all__ = ["evaluate_perplexity", "build", "GroupRun", "prepare", "run", "copies_of",
           "commands", "SHARED_FIELDS", "OVERRIDDEN"]

#: the build option (stored in the group's run.json) that names the fields the group's overrides set: every copy's
OVERRIDDEN = "overridden"
#: what the K configurations of one stacked model must share
SHARED_FIELDS = ("arch", "hidden_size", "num_layers", "batch_size", "num_steps", "epochs", "steps", "clip_mode",
                 "bn_test_step0", "forget_bias", "state_norm_c")


# ------------------------------------------------------------------------------------ the loss, the evaluation
class _StackedLMLoss:
    """The per-copy language-model loss of one window (``step``: ``(losses (K,), new_state)``); the trainer carries
    the state."""

    def step(self, model: StackedLanguageModel, x: torch.Tensor, y: torch.Tensor, state):
        logits, new_state = model(x, state)
        k, v = logits.shape[0], logits.shape[-1]
        target = y.t().reshape(1, -1).expand(k, -1).reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, v), target, reduction="none").view(k, -1).sum(1)
        return nll / y.shape[0], new_state

    def __call__(self, model, batch):
        raise RuntimeError("the stacked PTB loss is called by StackedSequenceTrainer (step)")


@torch.no_grad()
def evaluate_perplexity(model: StackedLanguageModel, ids: torch.Tensor, batch_size: int = 20, num_steps: int = 20,
                        bn_step0: bool = False) -> list:
    """Each copy's :func:`dnlib.experiments.ptb.evaluate_perplexity` of ``ids`` (``batch_size`` streams, the state
    carried over the split, eval mode), in one pass: a list of K perplexities."""
    was = model.training
    model.eval()
    set_stacked_eval_step(model, 0 if bn_step0 else None)
    device = model.embedding.device
    batches = PTBBatches(ids, batch_size, num_steps, device)
    state = model.init_state(batch_size, device)
    k = model.copies
    total = torch.zeros(k, dtype=torch.float64, device=device)
    for x, y in batches:
        logits, state = model(x, state)
        target = y.t().reshape(1, -1).expand(k, -1).reshape(-1)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target,
                                 reduction="none").view(k, -1).sum(1).double()
    set_stacked_eval_step(model, None)
    clear_penalties(model)
    model.train(was)
    nll = (total / (len(batches) * batch_size * num_steps)).tolist()
    return [math.exp(v) if v < 709.0 else float("inf") for v in nll]


# ---------------------------------------------------------------------------------------------- the build
def _copy_configs(recipe, cfg, names, overridden: Sequence[str] | None = None) -> list:
    """Every copy's configuration: ``names`` resolved with the group's overrides, whose values ``cfg`` (copy 0's)
    holds: the fields named in ``overridden`` (the build option :data:`OVERRIDDEN`), each set in every copy (also
    one whose value is copy 0's own default), ``steps``, and every field where ``cfg`` differs from its named
    configuration (all a group made before the option existed stored)."""
    base = recipe.config(cfg.name, source=cfg.source)
    fields = [f.name for f in dataclasses.fields(cfg)]
    if overridden is not None and (not isinstance(overridden, (list, tuple))
                                   or any(f not in fields for f in overridden)):
        raise ValueError(f"{OVERRIDDEN}: must list fields of {type(cfg).__name__}, got {overridden!r}")
    skip = {"name", "row", "cell", "notes", "source"}
    keep = {f for f in fields if getattr(cfg, f) != getattr(base, f)} | set(overridden or ()) | {"steps"}
    changes = {f: getattr(cfg, f) for f in fields if f in keep and f not in skip}
    return [cfg if n == cfg.name else recipe.config(n, source=cfg.source, **changes) for n in names]


def copies_of(configs: Sequence, seeds: Sequence[int]) -> tuple[list, list]:
    """The copies of a group: every configuration with every seed, configuration-major: ``(names, seeds)``."""
    names = [c if isinstance(c, str) else c.name for c in configs]
    if not names:
        raise ValueError("configs: name at least one configuration")
    seeds = check_seeds(list(seeds))
    pairs = [(n, s) for n in names for s in seeds]
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"configs, seeds: each copy must be its own (configuration, seed), got duplicates in "
                         f"{names} x {seeds}")
    return [n for n, _ in pairs], [s for _, s in pairs]


def build(recipe: Recipe, cfg, seeds: Sequence[int], device: str = "auto",
          options: dict | None = None) -> Setup:
    """The :class:`~dnlib.experiments.recipe.Setup` of the K copies (the ``build`` of a :class:`GroupRun`):
    ``options["configs"]`` names each copy's configuration (default: ``cfg`` for every seed); each copy is built as
    its separate run (:func:`~dnlib.experiments.runner.build_setup`), then packed. ``options["overridden"]``
    (:data:`OVERRIDDEN`) names the fields of ``cfg`` that the group's overrides set: they are every copy's
    (:class:`GroupRun` fills it in)."""
    options, mode = group_options(options)
    names = list(options.pop("configs", None) or [cfg.name] * len(seeds))
    if len(names) != len(seeds):
        raise ValueError(f"configs: one per copy ({len(seeds)} seeds), got {len(names)}")
    cfgs = _copy_configs(recipe, cfg, names, options.pop(OVERRIDDEN, None))
    for f in SHARED_FIELDS:
        vals = [getattr(c, f) for c in cfgs]
        if any(v != vals[0] for v in vals[1:]):
            raise ValueError(f"configs: stacked copies must share {f}, got {dict(zip(names, vals))}")
    setups = []
    for c, seed in zip(cfgs, seeds):
        setups.append(build_setup(recipe, c, seed, device, {**options, "mode": "eager"}))
        share_data(options, setups[-1])
    s0 = setups[0]
    model = StackedLanguageModel([s.model for s in setups])
    splits, _ = s0.data
    batches, E = s0.batches, s0.info["batches_per_epoch"]
    planned, final_bs = int(s0.train.steps), s0.info["final_test_batch_size"]
    ns, bs, step0 = cfgs[0].num_steps, cfgs[0].batch_size, cfgs[0].bn_test_step0

    def evaluate(m):
        valid = evaluate_perplexity(m, splits["valid"], bs, ns)
        test = evaluate_perplexity(m, splits["test"], bs, ns, step0)
        out = [{"valid_ppl": v, "test_ppl": t} for v, t in zip(valid, test)]
        if final_bs is not None and batches.steps_done >= planned:
            for row, f in zip(out, evaluate_perplexity(m, splits["test"], final_bs, ns, step0)):
                row["final_test_ppl"] = f
        return out

    dev = next(model.parameters()).device
    graph = mode == "graph" or (mode == "auto" and dev.type == "cuda")
    info = {"mode": trainer_mode(graph, dev), "stacked": len(seeds), "stacked_seeds": list(seeds),
            "stacked_configs": names}
    for s in setups:
        s.info.update(info)
    kwargs = {"lr_fns": [lambda step, c=c: c.lr_at_step(step, E) for c in cfgs],
              "clip_norms": [c.clip_norm for c in cfgs], "clip_mode": cfgs[0].clip_mode,
              "capture": graph and dev.type == "cuda"}
    run_info = {"copies": [{**s.run_info, "seed": seed} for s, seed in zip(setups, seeds)]}
    return Setup(model, _StackedLMLoss(), batches, dataclasses.replace(s0.train, progress=False),
                            evaluate=evaluate, run_info=run_info, trainer=StackedSequenceTrainer,
                            trainer_kwargs=kwargs, chunk=s0.chunk, info={**s0.info, **info}, data=s0.data,
                            copies=setups)


def _check_resumed_overrides(recipe, stored: dict, overrides: dict, overridden: set, names, resume) -> None:
    """Refuse to resume the stacked group in ``resume`` (``stored``: its ``run.json``) with other overrides than it was
    started with (the fields named in its :data:`OVERRIDDEN`, each every copy's), naming each field that differs, the
    group's value and the one given (a field not overridden: each configuration's own)."""
    fields = stored.get("fields") or {}
    source = fields.get("source")
    started = set(stored["options"][OVERRIDDEN])
    listed = stored["options"].get("configs")
    stored_names = list(dict.fromkeys(listed if isinstance(listed, list) and listed else [stored.get("config")]))
    given_names = list(dict.fromkeys(names)) if names else stored_names

    def own(field: str, configs: list) -> str:
        try:
            values = [f"{n} {getattr(recipe.config(n, source=source), field)!r}" for n in configs]
        except (ValueError, TypeError, KeyError, AttributeError):  # (a name or source this dnlib no longer has)
            return "each configuration's own"
        return f"each configuration's own {field}: " + ", ".join(values)

    diffs = []
    for f in sorted(started | overridden):
        was = fields.get(f)
        now = overrides.get(f, was)     # (a field of the group's that a resume by the folder alone leaves out)
        if f in started and f in overridden and records.jsonable(now) == records.jsonable(was):
            continue
        group = f"the group has {f}={was!r} (every copy's)" if f in started else \
            f"the group has no {f} override ({own(f, stored_names)})"
        given = f"this resume gives {f}={now!r}" if f in overridden else \
            f"this resume gives none ({own(f, given_names)})"
        diffs.append(f"{f}: {group}, {given}")
    if not diffs:
        return
    raise ValueError(f"overrides: the stacked group in {resume} was started with other overrides than this resume "
                     f"gives: {'; '.join(diffs)}. A stacked group resumes only with the overrides it was started with "
                     f"(every copy trained with them): give the same ones, or resume it by its folder alone "
                     f"(--resume DIR without configurations, which applies them), or start a new group in another "
                     f"folder (--out, out=)")


class GroupRun(Run):
    """A :class:`~dnlib.experiments.runner.Run` of K PTB copies (module doc): copy k's record is that of its own
    configuration and seed, in its own folder ``<config>-s<seed>`` inside the group's. ``configs`` x ``seeds``
    (configuration-major) are the copies; with ``resume`` (a group's folder) both may be left out. The
    ``overrides`` are every copy's (their names are stored with the options, :data:`OVERRIDDEN`, so a resume
    from the folder alone applies them too); a resume that gives other overrides (another value, a field more or
    less) is refused, naming each such field, the group's value and the one given.

    ``budget``: a campaign's time budget (:mod:`dnlib.experiments.campaign`) rather than the run's own time limit:
    a copy stopped by ``time_limit`` (or ``stop_after``) is recorded ``time budget at step N``."""

    def __init__(self, recipe: Recipe, configs: Sequence | None = None, seeds: Sequence[int] | None = None,
                 *, options: dict | None = None, budget: bool = False, **kwargs):
        options = dict(options or {})
        if configs is not None:
            if seeds is None:
                raise ValueError("seeds: one or more seeds for each configuration")
            names, seeds = copies_of(configs, seeds)
            first = configs[0]
            options["configs"] = names
        else:
            first, names = None, None
        overrides, resume = dict(kwargs.get("overrides") or {}), kwargs.get("resume")
        stored = read_run_file(resume) if resume is not None and (Path(resume) / RUN_FILE).exists() else {}
        kept = stored.get("options", {}).get(OVERRIDDEN) if stored.get("experiment") == recipe.name else None
        overridden = set(overrides)
        if configs is None and overridden and kept:     # the stored ones stay the group's too
            overridden |= set(kept)
        if configs is not None or overridden:      # (a resume by the folder alone: the stored list)
            options[OVERRIDDEN] = sorted(overridden)
            if isinstance(kept, list) and all(isinstance(f, str) for f in kept):   # (else refused as a bad list)
                _check_resumed_overrides(recipe, stored, overrides, overridden, names, resume)
        self.budget = budget
        super().__init__(recipe, first, seeds=seeds, build=build, options=options, **kwargs)
        self.copy_cfgs = _copy_configs(recipe, self.cfg, self.setup.info["stacked_configs"],
                                       self.options.get(OVERRIDDEN))
        if self.run_dir is not None:       # the runner named the copies' folders by copy 0's configuration
            wrong = set(self.copy_dirs)
            self.copy_dirs = [self.run_dir / records.run_name(c.name, s) for c, s in zip(self.copy_cfgs, self.seeds)]
            for d in wrong - set(self.copy_dirs):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            for d in self.copy_dirs:
                d.mkdir(exist_ok=True)

    def result(self, stopped: str, k: int = 0):
        cfg, name = self.cfg, self.config_name
        self.cfg, self.config_name = self.copy_cfgs[k], self.copy_cfgs[k].name
        try:
            return super().result(stopped, k)
        finally:
            self.cfg, self.config_name = cfg, name

    def write(self, stopped: str) -> list:
        if self.budget and stopped.startswith(("time limit at", "stop_after at")):
            stopped = "time budget at " + stopped.split(" at ", 1)[1]
        return super().write(stopped)


def prepare(recipe: Recipe, configs: Sequence | None = None, seeds: Sequence[int] | None = None,
            **kwargs) -> GroupRun:
    """A :class:`GroupRun`, prepared but not trained; arguments as :func:`run`."""
    return GroupRun(recipe, configs, seeds, **kwargs)


def run(recipe: Recipe, configs: Sequence | None = None, seeds: Sequence[int] | None = None,
        **kwargs) -> list:
    """Train every configuration of ``configs`` (names of one cell type) with every seed of ``seeds`` as one stacked
    model, by the runner; returns the copies' :class:`~dnlib.experiments.runner.RunResult` s (configuration-major).
    ``kwargs``: :func:`dnlib.experiments.runner.run`'s (``steps``, ``device``, ``out``, ``resume``, ``overrides``,
    ``options``: the recipe's build options and ``mode``, ``time_limit``, ``stop_after``, ``progress``...)."""
    return prepare(recipe, configs, seeds, **kwargs).go()


# -------------------------------------------------------------------------------------------------- CLI
def _add_arguments(recipe: Recipe, q: argparse.ArgumentParser) -> None:
    q.add_argument("configs", nargs="*", default=None, help="configuration names of one cell type (none with --resume)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=None, help="the seeds of every configuration")
    group_flags(recipe, q)


def _handler(recipe: Recipe):
    def handle(args, q) -> int:
        out = group_out(recipe, args, q)
        if args.resume is None and (not args.configs or args.seeds is None):
            q.error("configs, --seeds: both are required (or --resume DIR)")
        overrides, options = recipe.from_args(args)
        with cli.user_errors(q, CheckpointError):
            configs = args.configs or None
            if configs:
                copies_of(configs, args.seeds)
                for name in configs:
                    recipe.config(name, steps=args.steps, **overrides)     # a bad name or field: before any data
            prepared = prepare(recipe, configs, args.seeds if configs else None, steps=args.steps,
                               stop_after=args.stop_after, device=args.device, out=out, resume=args.resume,
                               overrides=overrides, options=options, time_limit=args.time_limit,
                               progress=sys.stderr.isatty(), argv=sys.argv[1:])
        return train_group(prepared, q)
    return handle


def commands(recipe: Recipe) -> dict:
    """``{"stack": Command}``: the PTB recipe's ``stack`` verb::

        python -m dnlib ptb stack base-lstm dn-star-lstm --seeds 0 1 2 [--steps N] [--out DIR] [run's flags]
        python -m dnlib ptb stack --resume DIR
    """
    return {"stack": Command("train several configurations of one cell type x seeds as one stacked model",
                                        lambda q: _add_arguments(recipe, q), _handler(recipe))}
