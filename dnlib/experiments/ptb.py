"""Penn Treebank language modelling (PAPER.md §3.3; Tables 4 and 9): the recipe of :mod:`dnlib.experiments.runner`
(data, model, and the run built from them) and its commands; the loss, clipping and perplexity it trains and
evaluates with are :mod:`dnlib.experiments.ptb_loss`, the tables, figures and report of runs
:mod:`dnlib.experiments.ptb_report`, the gate statistics :mod:`dnlib.experiments.ptb_cells`.

A run is a named configuration (:mod:`dnlib.experiments.ptb_configs`, ``<row>-<cell>``) trained by the runner
(:mod:`dnlib.experiments.runner`: the loop, the time limit, resume, the run record)::

    from dnlib.experiments.ptb import run
    r = run("dn-star-lstm", max_tokens=16000, vocab=500, epochs=2, hidden_size=32, batch_size=4)
    r.headline["valid_ppl"], r.history, r.model, r.record

    python -m dnlib ptb run dn-star-lstm --out runs/ptb            # runs/ptb/dn-star-lstm-s0-<UTC>, 13 epochs
    python -m dnlib ptb run --resume runs/ptb/dn-star-lstm-s0-<UTC> # continue it
    python -m dnlib ptb sweep base-lstm ln-star-lstm dn-star-lstm --jobs 3 --out runs/ptb/sweep
    python -m dnlib ptb report runs/ptb/sweep                       # table.md, curves.png, summary.json
    python -m dnlib ptb bench ; ... check-graph dn-star-lstm ; ... list ; ... configs

**Steps and epochs.** One runner step is one minibatch (20 streams x 20 words); an epoch is
``len(PTBBatches)`` steps (2,323 on all of PTB at batch 20), and the run plans ``epochs x`` that many. A chunk of
the runner (evaluation, checkpoint, record, time-limit check) is one epoch, or ``eval_every`` steps. The learning
rate is a function of the epoch of the schedule, ``lr_e = lr0 * 0.5^max(e - 4, 0)``. ``--steps N`` shortens the
schedule to N minibatches, as it does in every experiment: the per-epoch decay is scaled to them (an epoch of the
schedule is N / epochs minibatches; the data's epochs, which reset the state, stay what they are); ``--stop-after
N`` stops at minibatch N with the schedule unchanged; ``--epochs`` changes the number of epochs.

Training is the paper's: truncated BPTT over contiguous streams (:class:`~dnlib.data.PTBBatches`) with the hidden
state carried from one minibatch to the next (detached between them) and reset to zero at the start of each epoch;
plain SGD; gradients clipped at global norm 5 (``source="code"``: the norm TF measures,
:class:`~dnlib.experiments.ptb_loss.SliceClip`); loss = NLL summed over the 20 steps and averaged over the batch,
plus the L1 terms. On CUDA the whole step (forward over 20 steps, backward, clipping, SGD update, state carry) is one
CUDA graph (:class:`dnlib.training.graphs.SequenceGraphTrainer`; ``mode="auto"``), which removes the per-step launch
overhead that dominates at batch 20.

Evaluation (every chunk) runs in eval mode (BN cells use their per-step running statistics) with the state carried
over the whole split: validation and test perplexity ``exp(mean per-word NLL)`` in the training layout (20 streams);
at the end of the schedule also the test set as ``final_test_batch_size`` streams (1: one stream, the authors' test
batch; None: skip), ``final_test_ppl``, which is what the paper's Table 9 number is compared with. That pass still
unrolls ``num_steps`` (20) per step, where the authors' test model unrolls 1 (PAPER.md §3.3) and scores all 82,429
predictable targets of PTB's test set: at batch 1 and 20 steps it scores 4,121 x 20 = 82,420 of them and drops the
last 9 (as :func:`~dnlib.experiments.ptb_loss.evaluate_perplexity` says; numerically negligible). BN cells use the
step-0 statistics there when the configuration's ``bn_test_step0`` says so, as the authors' 1-step test model does.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence

import torch

from .. import cli
from ..analysis.figures import MarkdownTable, cell, markdown_table
from ..data import PTBBatches
from ..data.ptb import PTB_SIZES
from ..models.rnn_lm import LanguageModel
from ..training.graphs import SequenceGraphTrainer
from ..training.trainer import TrainConfig, Trainer, resolve_device
from . import bench as benches
from . import commands, registry, stacked_ptb
from .bench import steps_command
from .ptb_configs import SOURCES, PTBConfig, PTBRunConfig, get_config, list_configs
from .ptb_loss import LMLoss, SliceClip, evaluate_perplexity, lm_step
from .recipe import Command, Recipe, RunResult, Setup, card, check_int, replace, trainer_mode
from .runner import call, call_many

__all__ = ["PTBRunConfig", "PTBRecipe", "RECIPE", "PTBSplits", "load_data", "build_model", "unigram_perplexity", "run",
           "run_many", "bench", "check_graph", "config_table", "set_threads", "MODES", "main"]

MODES = ("auto", "graph", "eager")
_GRAPH = {"eager": {"mode": "eager"}, "graph": {"mode": "graph"}}   # check-graph's build options
_BENCH = ("base-lstm", "ln-star-lstm", "dn-star-lstm")               # bench's default configurations


# ------------------------------------------------------------------------------------------------------- data
def load_data(max_tokens: int | None = None, vocab: int | None = None, root=None):
    """PTB id streams ``{"train", "valid", "test"}`` and the vocabulary size.

    ``max_tokens`` keeps the first ``max_tokens`` tokens of train and ``max(max_tokens // 5, 1000)`` of valid and
    test (a smoke subset: fewer than PTB's training tokens, else a ValueError, as the run would be recorded as a
    subset). ``vocab`` keeps the ``vocab - 1`` most frequent words of the full training set and maps all others
    to one shared "rare word" id ``vocab - 1`` (a smaller softmax for CPU smoke runs; the paper's runs use the full
    10,000 words). The ids are frequency-ranked (:func:`dnlib.data.load_ptb`), so
    this is ``min(id, vocab - 1)``.
    """
    from ..data import load_ptb
    if max_tokens is not None and not max_tokens >= 1:
        raise ValueError(f"max_tokens: must be an integer >= 1 (or None: all), got {max_tokens!r}")
    if vocab is not None and not vocab >= 2:
        raise ValueError(f"vocab: must be an integer >= 2 (kept words + the rare-word id), got {vocab!r}")
    ptb = load_ptb(root, download=False, progress=False)
    if vocab is not None and vocab > ptb.vocab_size:
        raise ValueError(f"vocab: {vocab} is more than the {ptb.vocab_size} words of PTB")
    if max_tokens is not None and max_tokens >= len(ptb.train):
        raise ValueError(f"max_tokens: {max_tokens:,} is not fewer than PTB's {len(ptb.train):,} training tokens: the "
                         f"run would use all of them and be recorded as a smoke subset; leave max_tokens out (None) "
                         f"for the full data")
    splits = {"train": ptb.train, "valid": ptb.valid, "test": ptb.test}
    if max_tokens is not None:
        n_eval = max(max_tokens // 5, 1000)
        splits = {"train": ptb.train[:max_tokens], "valid": ptb.valid[:n_eval], "test": ptb.test[:n_eval]}
    size = ptb.vocab_size
    if vocab is not None and vocab < size:
        splits = {k: v.clamp(max=vocab - 1) for k, v in splits.items()}
        size = vocab
    return PTBSplits(splits, canonical=ptb.canonical), size


class PTBSplits(dict):
    """``{"train", "valid", "test"}`` id streams of :func:`load_data`; ``canonical``: read from the canonical PTB
    files (:attr:`dnlib.data.PTB.canonical`), which a run's record states (None: streams made elsewhere)."""

    def __init__(self, splits: dict, canonical: bool | None = None) -> None:
        super().__init__(splits)
        self.canonical = canonical


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of ``eval_ids`` under the (add-one smoothed) unigram distribution of ``train_ids``: the bar a
    language model must clear."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[eval_ids].mean().item())


# ------------------------------------------------------------------------------------------------- model
def build_model(cfg: PTBConfig, vocab_size: int | None = None) -> LanguageModel:
    """The language model of a config (seeded by the caller)."""
    return LanguageModel(vocab_size or cfg.vocab_size, **cfg.model_kwargs())


# ---------------------------------------------------------------------------------------------- recipe
#: config fields added after runs were recorded, with their defaults (left out of a run's identity at these)
_LATER_FIELDS = {"clip_mode": "dense", "running_stats": "torch"}


def _final_test_streams(value: str):
    """``--final-test-batch-size``: an integer >= 1, or ``none`` (:meth:`PTBRecipe.from_args` makes it None)."""
    if value.strip().lower() == "none":
        return "none"
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed: the streams of the final test pass, an integer "
                                         ">= 1, or none to skip the pass")
    return int(value)


def _vocab_size(value: str) -> int:
    v = cli.positive_int(value)
    if v < 2:
        raise argparse.ArgumentTypeError(f"{value} is too small: the vocabulary needs at least 2 ids "
                                         "(the kept words and the shared rare-word id)")
    return v


class PTBRecipe(Recipe):
    """The PTB recipe: Table 9's 36 configurations (:mod:`dnlib.experiments.ptb_configs`).

    Config fields (overrides): every :class:`PTBRunConfig` field; ``source`` (``"paper"``/``"code"``) rebuilds the
    named config on that side of PAPER.md §5.4. Options: ``data`` (``load_data``'s ``(splits, vocab_size)``, shared
    between runs) or ``max_tokens``, ``vocab``, ``root`` to load it; ``mode`` (:data:`MODES`: ``graph``, the CUDA-graph
    step, on CUDA with ``auto``; ``graph`` on CPU runs its body eagerly); ``eval_every`` (steps per evaluation and
    checkpoint = chunk; None: one epoch; 0: only at the end); ``final_test_batch_size`` (streams of the test pass at
    the end of the schedule, default 1; None skips it; 0, which skipped it before, is refused); ``threads`` (torch
    CPU threads)."""

    name = "ptb"
    module = "dnlib.experiments.ptb"
    description = "PTB language modelling (Tables 4, 9): run, sweep, gather, report, list, bench, check-graph, configs."
    unit = "tokens"

    def items_per_step(self, cfg: PTBRunConfig) -> int:
        return cfg.batch_size * cfg.num_steps

    def configs(self) -> list:
        return list_configs()

    def groups(self) -> dict:
        return {"all": list_configs(), "lstm": list_configs("lstm")}

    def config(self, config, steps: int | None = None, **overrides) -> PTBRunConfig:
        source = overrides.pop("source", None)
        if isinstance(config, PTBConfig):
            base = get_config(config.name, source) if source is not None and source != config.source else config
        else:
            base = get_config(config, source or "paper")
        if steps:
            overrides["steps"] = steps
        cfg = PTBRunConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
        cfg = replace(cfg, **overrides)
        check_int("epochs", cfg.epochs)
        check_int("steps", cfg.steps, none_ok=True)
        return cfg

    def from_args(self, args) -> tuple[dict, dict]:
        overrides, options = super().from_args(args)
        if options.get("final_test_batch_size") == "none":      # --final-test-batch-size none: skip the pass
            options["final_test_batch_size"] = None
        return overrides, options

    def check_options(self, *, mode: str = "auto", eval_every: int | None = None,
                      final_test_batch_size: int | None = 1, threads: int | None = None, **_) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
        check_int("eval_every", eval_every, 0, none_ok=True)
        if final_test_batch_size == 0 and not isinstance(final_test_batch_size, bool):    # before issue 24: skip
            raise ValueError("final_test_batch_size: got 0, which no longer skips the final test pass: give None (also "
                             "to resume a run folder whose run.json stored 0), or an integer >= 1")
        check_int("final_test_batch_size", final_test_batch_size, 1, none_ok=True)
        check_int("threads", threads, none_ok=True)

    def data_key(self, cfg: PTBRunConfig, seed: int, device: str = "auto", *, max_tokens: int | None = None,
                 vocab: int | None = None, root=None):
        return ("ptb", max_tokens, vocab, None if root is None else str(root))    # one stream for every run

    def load(self, cfg: PTBRunConfig, seed: int, device: str = "auto", *, max_tokens: int | None = None,
             vocab: int | None = None, root=None):
        return load_data(max_tokens, vocab, root)

    def build(self, cfg: PTBRunConfig, data, seed: int, device: str = "auto", *, max_tokens: int | None = None,
              vocab: int | None = None, mode: str = "auto", eval_every: int | None = None,
              final_test_batch_size: int | None = 1, threads: int | None = None) -> Setup:
        self.check_options(mode=mode, eval_every=eval_every, final_test_batch_size=final_test_batch_size,
                           threads=threads)
        if threads:
            set_threads(threads)
        splits, vocab_size = data
        dev = resolve_device(device)
        layouts = [(s, cfg.batch_size) for s in ("train", "valid", "test")] + [("test", final_test_batch_size)]
        for split, bs in layouts:
            if bs is not None:
                try:
                    PTBBatches(splits[split], bs, cfg.num_steps)
                except ValueError as e:
                    raise ValueError(f"max_tokens: {max_tokens}: {split}: {e}" if max_tokens else f"{split}: {e}") \
                        from None
        model = build_model(cfg, vocab_size)
        batches = PTBBatches(splits["train"], cfg.batch_size, cfg.num_steps, dev)
        E = len(batches)
        planned = cfg.epochs * E if cfg.steps is None else cfg.steps
        chunk = planned if eval_every == 0 else min(E if eval_every is None else eval_every, planned)

        def evaluate(m):
            ns, bs = cfg.num_steps, cfg.batch_size
            out = {"valid_ppl": evaluate_perplexity(m, splits["valid"], bs, ns),
                   "test_ppl": evaluate_perplexity(m, splits["test"], bs, ns, cfg.bn_test_step0)}
            if final_test_batch_size is not None and batches.steps_done >= planned:   # the end of the schedule
                out["final_test_ppl"] = evaluate_perplexity(m, splits["test"], final_test_batch_size, ns,
                                                            cfg.bn_test_step0)
            return out

        tcfg = TrainConfig(steps=planned, lr=cfg.lr, optimizer="sgd", momentum=0.0, clip_norm=cfg.clip_norm,
                           eval_every=chunk, checkpoint_every=chunk, log_every=min(max(E // 10, 1), chunk),
                           seed=seed, device=str(dev), progress=False)
        lr_lambda = lambda step: cfg.lr_at_step(step, E) / cfg.lr   # noqa: E731  halved per epoch (of the schedule)
        if mode == "graph" or (mode == "auto" and dev.type == "cuda"):
            cls, loss_fn, kw = SequenceGraphTrainer, lm_step, {"lr_lambda": lr_lambda, "init_state": model.init_state}
        else:
            cls, loss_fn, kw = Trainer, LMLoss(), {"lr_lambda": lr_lambda}
        if cfg.clip_norm and cfg.clip_mode == "slices":
            kw["clip_fn"] = SliceClip(model)
        # the run's identity in the checkpoint: every field but the length of a schedule of whole epochs (more
        # epochs extend the run; a schedule scaled to `steps` changes with its length and epochs, so both stay in);
        # fields added later are left out at their defaults, so that older checkpoints still resume
        length = ("epochs", "steps") if cfg.steps is None else ()
        run_info = {"config": cfg.name, **{k: v for k, v in dataclasses.asdict(cfg).items()
                                           if k not in ("name", "notes", *length)
                                           and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])},
                    "vocab_size": int(vocab_size), "train_tokens": int(splits["train"].numel())}
        n = int(splits["train"].numel())
        canonical = getattr(splits, "canonical", None)
        # a subset only when it is one: vocab=10000 is the full vocabulary (load_data refuses max_tokens >= all)
        subset = ((max_tokens is not None and max_tokens < PTB_SIZES["train tokens"])
                  or (vocab is not None and vocab < PTB_SIZES["vocabulary"]))
        info = {"data": (f"PTB (Mikolov), {n:,} training tokens, {vocab_size:,} words" +
                         (" (smoke subset)" if subset else "") +
                         {True: "", False: " (NOT the canonical PTB files: not comparable with the paper)",
                          None: " (streams given by the caller)"}[canonical]),
                "canonical_data": canonical, "train_tokens": n, "valid_tokens": int(splits["valid"].numel()),
                "test_tokens": int(splits["test"].numel()), "vocab_size": int(vocab_size), "batches_per_epoch": E,
                "eval_every": chunk,
                "final_test_batch_size": final_test_batch_size,
                "mode": trainer_mode(cls is SequenceGraphTrainer, dev), "card": card(dev)}
        return Setup(model, loss_fn, batches, tcfg, evaluate=evaluate, run_info=run_info, trainer=cls,
                                trainer_kwargs=kw, chunk=chunk, info=info, data=data)

    def headline(self, result: RunResult) -> dict:
        ev = [r for r in result.history if "valid_ppl" in r]
        last = ev[-1] if ev else {}
        cfg = result.config
        return {"valid_ppl": last.get("valid_ppl"), "test_ppl": last.get("test_ppl"),
                "final_test_ppl": last.get("final_test_ppl"),
                "epochs": result.steps / result.setup.info["batches_per_epoch"],
                "tokens_per_s": (result.steps * cfg.batch_size * cfg.num_steps / result.train_seconds
                                 if result.train_seconds else 0.0),
                "train_seconds": result.train_seconds}

    def paper_schedule(self, name: str, what) -> int:
        return get_config(name, what.get("source") or "paper").epochs

    def paper_tables(self, **_) -> dict:
        """Tables 4 and 9 (one line per (row, cell) configuration, cell by cell;
        :func:`dnlib.experiments.registry.paper_table`'s
        layout)."""
        from . import ptb_configs as P
        cells = {"lstm": "LSTM", "tanh-rnn": "tanh RNN", "relu-rnn": "ReLU RNN"}
        out = {}
        for name, table in (("table4", P.TABLE4), ("table9", P.TABLE9)):
            out[name] = {"title": f"Table {name[5:]}: PTB test perplexity",
                         "where": {"experiment": "ptb", "config.source": "paper"},
                         "keys": {"final_test_ppl": "test ppl"},
                         "order": [f"{P.ROW_NAMES[row]}-{c}" for c in P.CELL_TYPES for row in table],
                         "labels": {f"{P.ROW_NAMES[row]}-{c}": f"{row} {cells[c]}" for c in P.CELL_TYPES
                                    for row in table},
                         "paper": {f"{P.ROW_NAMES[row]}-{c}": {"final_test_ppl": table[row][k]}
                                   for k, c in enumerate(P.CELL_TYPES) for row in table}, "fmt": ".2f"}
        return out

    def paper(self, cfg: PTBConfig) -> dict:
        return {"final_test_ppl": cfg.paper_perplexity}

    flags = {"--source": ("field", dict(choices=SOURCES, help="side of PAPER.md §5.4 (default paper)")),
             "--epochs": ("field", dict(type=cli.positive_int, help="default the paper's 13")),
             "--lr": ("field", dict(type=cli.positive_float, help="initial learning rate")),
             "--hidden-size": ("field", dict(type=cli.positive_int)),
             "--batch-size": ("field", dict(type=cli.positive_int, help="streams (default 20)")),
             "--max-tokens": ("option", dict(type=cli.positive_int, help="train on the first N tokens (smoke)")),
             "--vocab": ("option", dict(type=_vocab_size, help="keep the N-1 most frequent words (smoke)")),
             "--threads": ("option", dict(type=cli.positive_int, help="torch CPU threads")),
             "--mode": ("option", dict(choices=MODES,
                                       help="graph: the CUDA-graph step; eager; auto (default): graph on CUDA")),
             "--eval-every": ("option", dict(type=cli.nonnegative_int, help="steps per evaluation and checkpoint "
                                                                            "(0: only at the end; default one epoch)")),
             "--final-test-batch-size": ("option", dict(type=_final_test_streams, metavar="N|none",
                                                        help="streams of the test pass at the end (default 1; "
                                                             "none: skip it)"))}

    def add_arguments(self, q, verb: str) -> None:
        super().add_arguments(q, verb)
        if verb == "report":
            q.add_argument("--out", type=cli.out_dir, default=None,
                           help="where table.md, curves.png and summary.json go (default PATH)")

    def report(self, path, args=None) -> dict:
        from .ptb_report import report
        return report(path, getattr(args, "out", None))

    def commands(self) -> dict:
        return {"bench": steps_command(self, "bench", steps=20, warmup=2, configs=_BENCH,
                                       flags=("--source", "--max-tokens", "--vocab", "--mode", "--hidden-size",
                                              "--batch-size", "--threads"), options={"final_test_batch_size": None}),
                "check-graph": steps_command(self, "check-graph", steps=3, defaults={"max_tokens": 20000}, **_GRAPH,
                                             flags=("--source", "--max-tokens", "--vocab"),
                                             options={"final_test_batch_size": None}),
                "configs": Command("the configurations with the paper's perplexities",
                                   lambda q: q.add_argument("--source", default="paper", choices=SOURCES),
                                   lambda args, q: print(config_table(list_configs(), args.source)) or 0),
                **stacked_ptb.commands(self)}


RECIPE = PTBRecipe()
registry.register(RECIPE)


# ------------------------------------------------------------------------------------- the library API
def run(config: str | PTBConfig, **kwargs) -> RunResult:
    """Train one configuration with :func:`dnlib.experiments.runner.run`; returns its
    :class:`~dnlib.experiments.recipe.RunResult`.

    Keywords (:func:`dnlib.experiments.runner.call`): the runner's (``seed``, ``steps``, ``out``: a base folder for a
    new run folder, ``resume``: a run folder to continue, ``time_limit``, ``stop_after``, ``device``), the build options
    of :class:`PTBRecipe` (``data``: ``load_data``'s ``(splits, vocab_size)``, else ``max_tokens``, ``vocab``; ``mode``,
    ``eval_every``, ``final_test_batch_size``, ``threads``) and config fields (``epochs``,
    ``lr``, ``hidden_size``, ``source``...)."""
    return call(RECIPE, config, **kwargs)


def _configs(names, source: str = "paper", hidden_size: int | None = None, batch_size: int | None = None,
             decay_after: int | None = None, lr: float | None = None) -> list:
    """The named configs with notebook parameters (None: the config's); a DN window scales with a smaller hidden
    size (the same fraction of the units; not on the code's side, which keeps its window)."""
    check_int("hidden_size", hidden_size, none_ok=True)
    check_int("batch_size", batch_size, none_ok=True)
    check_int("decay_after", decay_after, 0, none_ok=True)
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: must be a number > 0 (or None: the config's), got {lr!r}")
    ch = {k: v for k, v in dict(hidden_size=hidden_size, batch_size=batch_size, decay_after=decay_after,
                                lr=lr).items() if v is not None}
    out = []
    for c in (get_config(n, source, **ch) for n in names):
        full = 200 if c.cell == "lstm" else 400
        if c.window is not None and c.hidden_size < full and c.source != "code":
            w = max(3, round(c.window * c.hidden_size / full) | 1)
            c = c.replace(window=w, notes=(*c.notes, f"DN window {w}: {c.window} of {full} units at {c.hidden_size}"))
        out.append(c)
    return out


def run_many(names: Sequence[str], *, source: str = "paper", epochs: int = 13, seeds: Sequence[int] = (0,),
             hidden_size: int | None = None, batch_size: int | None = None, decay_after: int | None = None,
             lr: float | None = None, **kwargs) -> list:
    """:func:`run` for each named config and seed in this process, all on the data the first run loaded (the same
    for every run: :func:`~dnlib.experiments.recipe.share_data`; or ``data=``) (notebooks, CPU); ``hidden_size``,
    ``batch_size``, ``decay_after``, ``lr``: None = the config's (a DN window scales with a smaller hidden size).
    ``kwargs``: :func:`run`'s."""
    return call_many(RECIPE, _configs(names, source, hidden_size, batch_size, decay_after, lr), seeds,
                                epochs=epochs, **kwargs)


def bench(config: str | PTBConfig = "dn-star-lstm", data=None, *, steps: int = 20, warmup: int = 2, seed: int = 0,
          device="auto", mode: str = "auto", **kwargs) -> dict:
    """Training tokens/s of one configuration (:func:`dnlib.experiments.bench.bench`, as every recipe's ``bench``:
    ``steps`` timed minibatches after ``warmup``, the capture among them; no evaluation) on ``data``
    (:func:`load_data`'s, or loaded here: ``max_tokens``, ``vocab``); ``kwargs``: those and config fields. The
    cells alone against ``nn.LSTM`` and its peers: ``make bench`` (:mod:`dnlib.bench`)."""
    options = {"data": data, "mode": mode, "final_test_batch_size": None,
               **{k: kwargs.pop(k) for k in ("max_tokens", "vocab", "root", "threads") if k in kwargs}}
    return benches.bench(RECIPE, config, steps=steps, warmup=warmup, seed=seed, device=device, options=options,
                         **kwargs)


def check_graph(cfg: PTBConfig, ids: torch.Tensor, vocab_size: int, steps: int = 3, seed: int = 0,
                device="cuda") -> dict:
    """:func:`dnlib.experiments.bench.check_graph` on the training ids ``ids``: ``steps`` minibatches of the eager
    :class:`~dnlib.training.trainer.Trainer` and of :class:`~dnlib.training.graphs.SequenceGraphTrainer` from the same
    initialisation
    (graph == eager up to float rounding; on CPU the graph step's body runs eagerly)."""
    data = ({"train": ids, "valid": ids, "test": ids}, vocab_size)
    return benches.check_graph(RECIPE, cfg, **_GRAPH, steps=steps, seed=seed, device=device,
                                  options={"data": data, "final_test_batch_size": None})


# ------------------------------------------------------------------------------------------ threads, configs
def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` (None: torch's default, unchanged); returns the number in use. On a shared
    2-core machine one intra-op thread is several times faster than two oversubscribed ones."""
    check_int("threads", threads, none_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def config_table(names=None, source: str = "paper", **changes) -> MarkdownTable:
    """The configurations as a Markdown table (PAPER.md §2.3 values, the side of §5.4 chosen and why, the paper's
    test perplexity); ``changes`` as :func:`run_many`'s."""
    cfgs = _configs(names or list_configs(), source, **changes)
    return markdown_table(["name", "Table 9 row", "cell", "norm", "sigma", "alpha", "affine", "DN window", "lr", "H",
                           "paper ppl", "notes"],
                          [[c.name, c.row, c.arch, c.norm, cell(c.sigma, "g"), f"{c.alpha:g}", c.affine,
                            None if c.window is None else f"{c.window} ({c.border})", f"{c.lr:g}", c.hidden_size,
                            c.paper_perplexity, "; ".join(c.notes) or None] for c in cfgs])


# --------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dnlib ptb ...``: :func:`dnlib.experiments.commands.main` of :data:`RECIPE`."""
    return commands.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
