"""Why normalizers work (notebook 08; issue 27): the analyses the field cites, as one recipe of the shared runner.

Each point of each analysis is a named configuration (:mod:`dnlib.experiments.analysis_configs`: batch-size
dependence, smoothness, largest stable learning rate, signal growth with depth, weight-scale invariance and detached
statistics) trained on a CIFAR subset by the runner (:mod:`dnlib.experiments.runner`: run records, resume, time
limit, divergence); the probes of :mod:`dnlib.analysis.probes` run at each evaluation (checkpoint)::

    python -m dnlib analysis run batch-bn-b2 --size cpu --out runs/analysis            # one point
    python -m dnlib analysis sweep batch --seeds 0 1 2 --size smoke --out runs/analysis/smoke   # a process per run
    python -m dnlib analysis points all --seeds 0 1 2 --size cpu --out runs/analysis/cpu      # in this process
    python -m dnlib analysis report runs/analysis/cpu      # tables, and figures with --figures DIR

``points`` runs configurations x seeds one after another in this process (the data loaded once: on a CPU most of a
short run is the start of a process), each with :func:`dnlib.experiments.runner.run` in the folder
``out/<name>-s<seed>`` a sweep would use; a rerun skips the points whose record says completed or diverged
(deterministic: it would diverge again) and resumes the others. The folder names do not say the size: give each
size its own ``--out``.

**What a run records.** Every evaluation logs ``test_err``/``test_loss`` (evaluation mode, running statistics)
and, per analysis: ``batch_err``/``gap`` (the error with the statistics of batches of the training batch size
minus the error with running statistics: 0 exactly without a batch field) for ``batch``, ``smooth`` and ``inv``;
``loss_range``, ``grad_change``, ``beta``, ``grad_norm`` (:func:`dnlib.analysis.probes.gradient_predictiveness`
on a fixed batch of training images, step sizes ``probe_steps x lr``, training mode) for ``smooth``; ``act_<i>``
and ``grad_<i>`` (per-layer RMS) for ``depth``. At initialization (``record["config"]["setup"]``): the
per-layer profile ``init_act``/``init_grad`` and ``scale_change`` (relative change of the logits when the second
conv's weights are scaled by 10). The headline has the same keys for every point (None where not measured).
The probes use the cross-entropy alone (DN*'s L1 term is the training loss's, not the landscape's).

**Data.** The CIFAR-10 subset of the size (:data:`~dnlib.experiments.analysis_configs.SIZES`), drawn with seed 0
for every run: the seeds change the initialization and the batch order, not the images.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import cli
from ..analysis import probes
from ..data.loader import TensorBatches
from ..training.trainer import TrainConfig, Trainer, TrainingDiverged, progress_bar
from . import commands, records, registry
from .analysis_configs import ANALYSES, SIZES, AnalysisConfig, get_config, list_configs
from .bench import steps_command
from .cifar import CifarData, CifarLoss, load_data
from .recipe import (
    COMPLETED,
    Command,
    Recipe,
    RunResult,
    Setup,
    card,
    check_config,
    check_int,
    replace,
    share_data,
    trainer_mode,
)
from .runner import run
from .sweep import check_folder, gather, gather_table

__all__ = ["RECIPE", "AnalysisRecipe", "AnalysisData", "HEADLINE", "run_points", "main"]

#: The headline keys of every point (None where the analysis does not measure it).
HEADLINE = ("test_err", "train_loss", "gap", "loss_range", "grad_change", "beta", "stable", "scale_change",
            "act_growth", "grad_growth", "init_act_growth", "init_grad_growth", "train_seconds")
_GAP = ("batch", "smooth", "inv")
#: A run is stable when its losses stay finite and its last logged training loss is at most its loss before any step
#: (``init_loss``: the initial model's mean loss on the batches of the first logged loss, in training mode) + this
#: (nats): a run that does not move at a tiny learning rate is not unstable. (Runs recorded before ``init_loss``
#: compared with their first logged loss, a mean over the first steps, already after updates at the rate tested: a
#: loss that jumped from 2.3 to 16 there and ended at 4.1 counted as stable.)
STABLE_TOL = 0.1


@dataclass
class AnalysisData:
    """The CIFAR subset and the fixed tensors of the probes: the evaluation images as one float tensor, and the
    probe batch (the first ``probe_batch`` training images)."""
    cifar: CifarData
    x_eval: torch.Tensor
    y_eval: torch.Tensor

    @property
    def eval_split(self) -> str:
        return self.cifar.eval_split

    def probe(self, n: int) -> tuple:
        idx = torch.arange(min(n, len(self.cifar.y_train)), device=self.cifar.device)
        return self.cifar.images(idx), self.cifar.y_train[idx]


def _watched(model) -> list:
    """The modules whose outputs the depth probes watch: each block's normalizer output (pre-ReLU)."""
    return list(model.norms)


def stable_run(losses: list, init_loss: float | None) -> float | None:
    """1.0 when the run was stable (:data:`STABLE_TOL`): finite losses, the last no higher than the loss before any
    step (a record without ``init_loss``: than the first logged one), else 0.0; None without logged losses."""
    if not losses:
        return None
    first = [init_loss] if init_loss is not None else losses[:1]
    return float(probes.is_stable(first + losses, tol=STABLE_TOL))


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else float(a / b)


class AnalysisRecipe(Recipe):
    """The analyses of notebook 08 (:mod:`dnlib.experiments.analysis_configs`). The CIFAR subset is the
    configuration's ``subset`` field (the size's unless changed: ``--subset``, ``subset=``), so the record's config
    names the images a run trained on. Option: ``eval_every`` (build: steps per evaluation and checkpoint; None:
    ``steps / evals``; 0: only at the end)."""

    name = "analysis"
    module = "dnlib.experiments.analysis"
    unit = "images"
    description = ("Why normalizers work (notebook 08): batch-size dependence, smoothness, largest stable learning "
                   "rate, signal growth with depth, weight-scale invariance and detached statistics.")

    def configs(self) -> list:
        return list_configs()

    def groups(self) -> dict:
        return {"all": list_configs(), **{a: list_configs(a) for a in ANALYSES}}

    def config(self, config, steps: int | None = None, **overrides) -> AnalysisConfig:
        size = overrides.pop("size", None)
        if isinstance(config, AnalysisConfig):
            if size is not None and size != config.size:
                config = get_config(config.name, size)
        else:
            config = get_config(config, size or "cpu")
        cfg = replace(config, **overrides)
        return cfg.scaled(steps) if steps and steps != cfg.steps else cfg

    def config_dict(self, cfg: AnalysisConfig) -> dict:
        return cfg.as_dict()

    def check_options(self, *, eval_every: int | None = None, **_) -> None:
        check_int("eval_every", eval_every, 0, none_ok=True)

    def data_key(self, cfg: AnalysisConfig, seed: int, device: str = "auto"):
        return (cfg.dataset, _subset(cfg.subset), device or "auto")    # drawn with seed 0 for every run

    def load(self, cfg: AnalysisConfig, seed: int, device: str = "auto") -> AnalysisData:
        cifar = load_data(cfg.dataset, subset=_subset(cfg.subset), device=device or "auto", seed=0)
        idx = torch.arange(len(cifar.y_eval), device=cifar.device)
        return AnalysisData(cifar, cifar.images(idx, "eval"), cifar.y_eval)

    def build(self, cfg: AnalysisConfig, data: AnalysisData, seed: int, device: str = "auto", *,
              eval_every: int | None = None) -> Setup:
        self.check_options(eval_every=eval_every)
        if (cfg.dataset, _subset(cfg.subset)) != (data.cifar.name, data.cifar.subset):
            raise ValueError(f"data: loaded as {data.cifar.name} subset={data.cifar.subset!r}, but {cfg.name} trains "
                             f"on {cfg.dataset} subset={_subset(cfg.subset)!r}: give data loaded for it, or none")
        dev = data.cifar.device
        model = cfg.build_model().to(dev)
        if cfg.detach:
            probes.detach_statistics(model)
        every = cfg.eval_every if eval_every is None else eval_every or cfg.steps   # 0: only at the end
        tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, momentum=cfg.momentum, eval_every=every,
                           checkpoint_every=every, log_every=_log_every(cfg.steps, every), seed=seed,
                           device=str(dev), progress=False)
        batches = TensorBatches(torch.arange(len(data.cifar.y_train), device=dev), batch_size=cfg.batch_size,
                                seed=seed)
        px, py = data.probe(cfg.probe_batch)
        probe_loss = probes.cross_entropy_loss(px, py)
        info = {"data": data.cifar.description, "eval_split": data.eval_split,
                "train_images": int(len(data.cifar.y_train)), "eval_images": int(len(data.y_eval)),
                "eval_every": every, "mode": trainer_mode(False, dev), "card": card(dev)}
        with probes.preserved(model):      # at initialization, in training mode (the statistics of the probe batch)
            model.train()
            prof = probes.layer_norms(model, probe_loss, None, _watched(model))
            first = TensorBatches(torch.arange(len(data.cifar.y_train), device=dev), batch_size=cfg.batch_size,
                                  seed=seed)      # the batches of the first logged loss, drawn as training will
            with torch.no_grad():
                loss_fn = CifarLoss(data.cifar)
                init_loss = sum(float(loss_fn(model, next(first))) for _ in range(tcfg.log_every)) / tcfg.log_every
            info.update(init_act=prof["act"], init_grad=prof["grad"], init_loss=init_loss,
                        scale_change=probes.scale_change(model, px, model.convs[1], 10.0))
        run_info = {"config": cfg.name, **{k: v for k, v in cfg.as_dict().items() if k != "name"},
                    **{k: info[k] for k in ("data", "eval_split", "train_images", "eval_images")}}
        return Setup(model, CifarLoss(data.cifar), batches, tcfg,
                                evaluate=lambda m: _evaluate(m, cfg, data, probe_loss), run_info=run_info,
                                trainer=Trainer, chunk=every, info=info, data=data)

    def headline(self, result: RunResult) -> dict:
        cfg, hist, info = result.config, result.history, result.setup.info
        evals = [r for r in hist if "test_err" in r]
        last = evals[-1] if evals else {}
        losses = [r["train_loss"] for r in hist if "train_loss" in r]
        mean = lambda k: (sum(r[k] for r in evals) / len(evals)) if evals and k in last else None  # noqa: E731
        d = cfg.depth if cfg.arch == "plain" else 3
        acts = [last.get(f"act_{i}") for i in range(d)]
        grads = [last.get(f"grad_{i}") for i in range(d)]
        init_a, init_g = info.get("init_act") or [None], info.get("init_grad") or [None]
        return {"test_err": last.get("test_err"), "train_loss": losses[-1] if losses else None,
                "gap": last.get("gap"), "loss_range": mean("loss_range"), "grad_change": mean("grad_change"),
                "beta": mean("beta"),
                "stable": stable_run(losses, info.get("init_loss")),
                "scale_change": info.get("scale_change"),
                "act_growth": _ratio(acts[-1], acts[0]) if cfg.analysis == "depth" else None,
                "grad_growth": _ratio(grads[0], grads[-1]) if cfg.analysis == "depth" else None,
                "init_act_growth": _ratio(init_a[-1], init_a[0]), "init_grad_growth": _ratio(init_g[0], init_g[-1]),
                "train_seconds": result.train_seconds}

    def label(self, name: str, options) -> str:
        return name

    flags = {"--size": ("field", dict(choices=tuple(SIZES), help="smoke, cpu (default) or full")),
             "--subset": ("field", dict(type=cli.subset, help="stratified subset: N or N_TRAIN,N_EVAL "
                                                               "(default: the size's)")),
             "--eval-every": ("option", dict(type=cli.nonnegative_int,
                                             help="steps per evaluation and checkpoint (0: only at the end; default "
                                                  "steps / evals)")),
             "--batch-size": ("field", dict(type=cli.positive_int, help="examples per step")),
             "--lr": ("field", dict(type=cli.positive_float, help="learning rate"))}

    def report(self, path, args=None) -> dict:
        from .analysis_report import report
        return report(path, figures=getattr(args, "figures", None))

    def add_arguments(self, parser, verb: str) -> None:
        super().add_arguments(parser, verb)
        if verb == "report":
            parser.add_argument("--figures", type=cli.out_dir, default=None, help="write the figures (PNG) here")

    def commands(self) -> dict:
        return {"bench": steps_command(self, "bench", steps=20, warmup=2, flags=("--size", "--subset"),
                                                  configs=("batch-bn-b32",)),
                "points": Command("configurations x seeds in this process, resumable (a sweep's folders)",
                                             _points_arguments, _points_handler)}


def _log_every(steps: int, every: int) -> int:
    """Steps per logged training loss: a tenth of the run (the lr points read stability from the first and last),
    never more than an evaluation interval; short intervals (under 10 steps) log once per interval."""
    return every if every < 10 else max(1, min(every, steps // 10 or 1))


def _evaluate(model, cfg: AnalysisConfig, data: AnalysisData, probe_loss) -> dict:
    """The metrics of one evaluation (the trainer calls it in evaluation mode under no_grad; probes restore all)."""
    out = {}
    with torch.no_grad():
        logits = torch.cat([model(data.x_eval[i:i + 1000]) for i in range(0, len(data.y_eval), 1000)])
    out["test_err"] = probes.classification_error(logits, data.y_eval)
    out["test_loss"] = float(torch.nn.functional.cross_entropy(logits, data.y_eval))
    if cfg.analysis in _GAP:
        gap = probes.train_eval_gap(model, data.x_eval, data.y_eval, cfg.batch_size)
        out.update(batch_err=gap["batch_err"], gap=gap["gap"])
    if cfg.analysis == "smooth" and math.isfinite(out["test_loss"]):
        with probes.preserved(model):
            model.train()
            sm = probes.gradient_predictiveness(model, probe_loss, None, [cfg.lr * t for t in cfg.probe_steps])
        out.update(sm.as_dict())
    if cfg.analysis == "depth":
        with probes.preserved(model):
            model.train()
            prof = probes.layer_norms(model, probe_loss, None, _watched(model))
        out.update({f"act_{i}": v for i, v in enumerate(prof["act"])})
        out.update({f"grad_{i}": v for i, v in enumerate(prof["grad"])})
    return {k: v if math.isfinite(v) else float("nan") for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- points
def _done(d: Path) -> bool:
    try:
        stopped = records.read_record(d).get("stopped") or ""
    except (FileNotFoundError, ValueError):
        return False
    return stopped == COMPLETED or stopped.startswith("diverged")


def run_points(configs: Sequence[str], seeds: Sequence[int] = (0,), *, out, size: str = "cpu", subset=None,
               device="cpu", time_limit: float | None = None, progress: bool = True, verbose: bool = True,
               **options) -> list:
    """Run every (configuration, seed) of the analysis recipe in this process, one after another, in
    ``out/<name>-s<seed>`` (the folders :func:`dnlib.experiments.sweep.sweep` uses): finished points (completed
    or diverged) are kept, the others resumed or started; the data are loaded once. Returns :func:`gather`'s rows
    of ``out``. ``subset``: the CIFAR subset (None: the size's); ``options``: the run options (``eval_every``)."""
    names = _check_points(configs, seeds, out, size, device, options, subset)
    out = Path(out)
    todo = [(n, s) for n in names for s in seeds if not _done(out / records.run_name(n, s))]
    if verbose:
        print(f"[points] {len(names) * len(seeds) - len(todo)} finished kept, {len(todo)} to run", flush=True)
    opts = dict(options)
    bar = progress_bar(len(todo), desc="analysis points", enabled=progress)
    for n, s in todo:
        try:
            res = run(RECIPE, n, seed=s, resume=out / records.run_name(n, s), device=device,
                      overrides=_changes(size, subset), options=opts, time_limit=time_limit, progress=False)
            share_data(opts, res.setup)
            line = f"{n} s{s}: {res.stopped} test_err {res.headline.get('test_err')}"
        except TrainingDiverged as e:
            line = f"{n} s{s}: {e.status}"
        bar.update(1)
        if verbose:
            print(f"[points] {line}", flush=True)
    bar.close()
    return gather([out]) if out.exists() else []


def _changes(size: str, subset) -> dict:
    """The configuration fields a point changes: its size, and the subset when one is given."""
    return {"size": size, **({} if subset is None else {"subset": subset})}


def _check_points(configs, seeds, out, size: str, device, options, subset=None) -> list:
    """:func:`run_points`'s checks, before any work: each name and seed once, every configuration as ``run`` checks
    it, and a folder in ``out`` holding a run of other settings (size, subset...) refused, named (a rerun would keep
    or resume it: :func:`dnlib.experiments.sweep.check_folder`). Returns the names, groups expanded."""
    names = RECIPE.expand(configs)
    cli.check_distinct("configs", names)
    cli.check_distinct("seeds", seeds)
    for s in seeds:
        check_int("seeds", s, 0)
    for n in names:
        cfg = RECIPE.config(n, **_changes(size, subset))
        check_config(RECIPE, cfg, device)
        for s in seeds:
            check_folder(RECIPE, Path(out) / records.run_name(n, s), n, cfg, options, what="points")
    return names


def _points_arguments(q) -> None:
    q.add_argument("configs", nargs="+", help="configuration names or groups (all, " + ", ".join(ANALYSES) + ")")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=[0])
    q.add_argument("--size", choices=tuple(SIZES), default="cpu")
    q.add_argument("--out", type=cli.out_dir, required=True, help="the points' folder (a rerun resumes it)")
    q.add_argument("--subset", type=cli.subset, default=None)
    q.add_argument("--device", type=cli.device, default="cpu")
    q.add_argument("--time-limit", type=cli.positive_float, default=None, help="seconds per run")


def _points_handler(args, q) -> int:
    with cli.user_errors(q):   # a bad name, an impl this machine cannot run, a folder of other settings: one line
        _check_points(args.configs, [*args.seeds], args.out, args.size, args.device, {}, args.subset)
    rows = run_points(args.configs, args.seeds, out=args.out, size=args.size, subset=args.subset,
                      device=args.device, time_limit=args.time_limit)
    print(gather_table(rows))
    return 0


def _subset(value):
    """``N`` or ``(N_TRAIN, N_EVAL)`` (a list read back from JSON as a tuple); None: the size's."""
    if isinstance(value, str):
        value = [int(v) for v in value.split(",")]
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) and len(value) > 1 else \
        (int(value[0]) if isinstance(value, (list, tuple)) else value)


RECIPE = AnalysisRecipe()
registry.register(RECIPE)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dnlib analysis ...``: :func:`dnlib.experiments.commands.main` of :data:`RECIPE`."""
    return commands.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
