"""Single-image super-resolution (PAPER.md §3.4; Tables 5, 6; Figures 3, 4): the recipe of
:mod:`dnlib.experiments.runner`, evaluation and the commands; the tables, figures and report of runs are
:mod:`dnlib.experiments.sr_report`.

A run is SRCNN 9-5-5 with one SR normalizer row under one training schedule of :mod:`dnlib.experiments.sr_configs`; its
configuration is named ``<schedule>-<row>`` (``fast-dn*``, ``paper-bn``, ``smoke-none``...: ``list``). The runner
(:mod:`dnlib.experiments.runner`) owns the loop, the time limit, resume and the run record::

    from dnlib.experiments import sr
    r = sr.run("dn*", "smoke", steps=300)        # a RunResult: r.model, r.history, r.record["headline"]

    python -m dnlib sr run fast-dn* --steps 20000 --out runs/sr            # runs/sr/fast-dn-s0-<UTC>
    python -m dnlib sr run --resume runs/sr/fast-dn-s0-<UTC>                # continue it
    python -m dnlib sr sweep fast-none fast-bn fast-dn* --jobs 3 --out runs/sr/sweep   # rerun: skips finished runs
    python -m dnlib sr report runs/sr/sweep      # Bicubic + every run beside Tables 5/6 -> sr_results.json
    python -m dnlib sr bench fast-none fast-dn* ; python -m dnlib sr list

* **Data.** :func:`training_pairs` turns a training set into SRCNN pairs once per process (luma, ``modcrop``,
  MATLAB bicubic down and up: :func:`dnlib.data.sr.srcnn_pairs`); :class:`dnlib.data.SRCNNPatches` holds them
  on the training device and draws 33 x 33 inputs with their centre 17 x 17 HR targets there (resumable).
* **Training.** Loss MSE / 2 (:func:`srcnn_loss`) plus the L1 terms of the DN* sites (added by the trainer).
  The schedule's milestones are fractions of ``steps``: ``--steps`` shortens a schedule to a budget.
* **Evaluation.** :func:`evaluate_sr` feeds each whole bicubic-upsampled Y image, multiplies the prediction by
  255 and clips it to [0, 255] (not rounded, as the authors' code). The valid convolutions return the image
  without its outer 8 px, so PSNR and SSIM are computed on ``HR[8:-8, 8:-8]``: exactly the region the paper's
  8-px border crop keeps for PSNR (PAPER.md §3.4). The Bicubic row (:func:`evaluate_bicubic`) is scored on the
  same region, from ``uint8(up * 255)`` as MATLAB. It matches the paper's Bicubic PSNR to 0.01 dB (Set14 x3/x4,
  BSD200 x3/x4), but its SSIM is 0.0007-0.0021 below the paper's (BSD200 x3: 0.7620 vs 0.7636; x4: 0.6931 vs
  0.6952; Set14: 0.7726/0.7009 vs 0.7733/0.7018). A border of ``scale`` px gives the paper's SSIM within 0.0003
  but PSNR 0.05-0.07 dB above it: the paper's SSIM was probably taken on another region than its PSNR, which it
  does not state. Read SSIM gaps smaller than ~0.002 against the paper's with that in mind. During training the
  ``curve_sets`` (PSNR) are logged at every chunk; a completed run is scored on ``sets`` (PSNR, SSIM) for its
  headline, beside the paper's Tables 5/6.
* **Figures.** :mod:`dnlib.experiments.sr_report`: ``plot_curves``, ``compare_crops`` (Figure 3/4 style),
  ``crop_explorer`` (an ipywidgets picker of image and crop) and ``results_table`` (beside the paper's Tables 5/6).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import cli
from ..training.checkpoints import load_checkpoint
from ..training.metrics import psnr, ssim
from ..training.trainer import TrainConfig, resolve_device
from . import bench as benches
from . import commands, registry, stacked, stacked_sr
from .bench import steps_command
from .recipe import RUN_FILE, Recipe, RunResult, Setup, card, check_int, replace
from .runner import call, read_run_file
from .sr_configs import (
    ROW_NAMES,
    SR_CONFIGS,
    SR_MODELS,
    SR_NORM_ROWS,
    TRAIN_SETS,
    SRConfig,
    get_config,
    paper_numbers,
    sr_norm,
    sr_norm_name,
)

__all__ = ["train_config", "training_pairs", "test_pairs", "srcnn_loss", "predict", "evaluate_sr", "evaluate_bicubic",
           "make_evaluator", "intensity_shift", "SRRecipe", "RECIPE", "run", "run_many", "models_of", "load_model",
           "bench", "run_label", "check_sets", "headline_key", "bicubic_grey", "HEADLINE_SETS", "main"]

#: The test sets of a run's headline (Set5; Set14: Table 5; BSD200: Table 6) and their record keys.
HEADLINE_SETS = ("Set5", "Set14", "BSD200")
_TRAIN_CACHE: dict = {}
_TEST_CACHE: dict = {}


# --------------------------------------------------------------------------------------------------- data
def training_pairs(train_set: str = "T91", scale: int = 3, root=None) -> tuple[list, list]:
    """``(inputs, labels)``: float32 ``HxW`` bicubic-upsampled Y and HR Y in [0, 1], one pair per image.

    ``train_set``: ``"T91"`` or ``"291"`` (T91 + BSD200-train). Computed once per process and cached.
    """
    from ..data import data_root, load_sr
    from ..data.sr import srcnn_pairs
    if train_set not in TRAIN_SETS:
        raise ValueError(f"train_set: got {train_set!r}; allowed {list(TRAIN_SETS)}")
    key = (train_set, scale, str(data_root(root).resolve()))     # the root in use (DNLIB_DATA may change)
    if key not in _TRAIN_CACHE:
        images = [im for name in TRAIN_SETS[train_set] for im in load_sr(name, root).images]
        _TRAIN_CACHE[key] = srcnn_pairs(images, scale)
    return _TRAIN_CACHE[key]


def test_pairs(set_name: str, scale: int = 3, root=None) -> list[dict]:
    """One dict per image of a test set: ``name``, ``rgb`` (uint8, modcropped), ``up`` (float32 bicubic Y in
    [0, 1]) and ``hr`` (uint8 Y). Cached per process."""
    from ..data import data_root, load_sr, modcrop, sr_test_pair
    key = (set_name, scale, str(data_root(root).resolve()))
    if key not in _TEST_CACHE:
        s = load_sr(set_name, root)
        _TEST_CACHE[key] = [dict(name=n, rgb=modcrop(im, scale), **dict(zip(("up", "hr"), sr_test_pair(im, scale))))
                            for n, im in zip(s.names, s.images)]
    return _TEST_CACHE[key]


def srcnn_loss(model: nn.Module, batch) -> torch.Tensor:
    """The authors' loss: mean squared error / 2 between the prediction and the HR centre (the trainer adds the
    L1 terms of the normalizers)."""
    x, y = batch
    return F.mse_loss(model(x), y) / 2


# ------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def predict(model: nn.Module, up: np.ndarray, device=None) -> np.ndarray:
    """The model's prediction for one whole bicubic Y image ``up`` (float in [0, 1]): float64 grey levels,
    ``clip(255 * out, 0, 255)``, of size ``(H - 2 shave, W - 2 shave)``."""
    was = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    out = model(torch.as_tensor(np.asarray(up, np.float32), device=dev)[None, None])[0, 0]
    model.train(was)
    return (out.double() * 255.0).clamp_(0, 255).cpu().numpy()


def _shave(a: np.ndarray, s: int) -> np.ndarray:
    return a[s:a.shape[0] - s, s:a.shape[1] - s]


def bicubic_grey(up: np.ndarray) -> np.ndarray:
    """The Bicubic row's image: a bicubic-upsampled Y image ``up`` (float in [0, 1]) as MATLAB's ``uint8(up * 255)``,
    float64 grey levels."""
    return np.clip(np.round(np.asarray(up, np.float64) * 255.0), 0, 255)


def evaluate_sr(model: nn.Module, set_name: str = "Set5", scale: int = 3, *, root=None, metrics=("psnr", "ssim"),
                border: int = 8) -> dict:
    """Mean PSNR / SSIM (Y channel) of ``model`` on a test set, the paper's way (module docstring).

    The prediction covers ``HR[shave:-shave]``; ``border`` (8, the paper's crop) must be at least the model's
    shave, and any extra is cropped from the prediction too. Returns ``{"psnr", "ssim", "shift",
    "per_image": [{"name", "psnr", "ssim", "shift"}]}``, ``shift`` being the mean of prediction - HR in grey levels.
    """
    shave = getattr(model, "shave", 8)
    if border < shave:
        raise ValueError(f"border={border} is smaller than the model's shave {shave}: the prediction does not "
                         f"cover that region")
    rows = []
    for item in test_pairs(set_name, scale, root):
        pred = _shave(predict(model, item["up"]), border - shave)
        hr = _shave(item["hr"].astype(np.float64), border)
        row = {"name": item["name"], "shift": float((pred - hr).mean())}
        if "psnr" in metrics:
            row["psnr"] = psnr(pred, hr, border=0)
        if "ssim" in metrics:
            row["ssim"] = ssim(pred, hr, border=0)
        rows.append(row)
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "shift") if k in rows[0]}
    out["per_image"] = rows
    return out


def evaluate_bicubic(set_name: str = "Set5", scale: int = 3, *, root=None, border: int = 8) -> dict:
    """The Bicubic row: ``uint8(up * 255)`` against HR with the same ``border`` crop (same keys as evaluate_sr)."""
    rows = []
    for item in test_pairs(set_name, scale, root):
        up, hr = bicubic_grey(item["up"]), item["hr"].astype(np.float64)
        rows.append({"name": item["name"], "psnr": psnr(up, hr, border=border), "ssim": ssim(up, hr, border=border),
                     "shift": float((_shave(up, border) - _shave(hr, border)).mean())})
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "shift")}
    out["per_image"] = rows
    return out


def make_evaluator(sets: Sequence[str] = ("Set5",), scale: int = 3, root=None, metrics=("psnr",)):
    """``evaluate(model) -> {"Set5/psnr": ...}`` for :class:`dnlib.training.trainer.Trainer` (test pairs cached; None
    without sets)."""
    if not sets:
        return None
    for s in sets:
        test_pairs(s, scale, root)

    def evaluate(model):
        res = {}
        for s in sets:
            r = evaluate_sr(model, s, scale, root=root, metrics=metrics)
            res.update({f"{s}/{m}": r[m] for m in metrics})
        return res
    return evaluate


def intensity_shift(model: nn.Module, set_name: str = "Set5", scale: int = 3, root=None) -> list[dict]:
    """Per image: mean HR grey level and the model's mean error (prediction - HR), in grey levels: BN's
    failure in Tables 5/6 is a per-image intensity offset ("the same statistics for all patches of one image")."""
    r = evaluate_sr(model, set_name, scale, root=root, metrics=("psnr",))
    means = {it["name"]: float(_shave(it["hr"].astype(np.float64), 8).mean())
             for it in test_pairs(set_name, scale, root)}
    return [{"name": row["name"], "hr_mean": means[row["name"]], "shift": row["shift"], "psnr": row["psnr"]}
            for row in r["per_image"]]


# ---------------------------------------------------------------------------------------------- recipe
def _split(name: str) -> tuple[str, str]:
    """``"fast-dn*"`` -> ``("fast", "dn*")``; a bare schedule name has the row ``"none"``."""
    for sched in SR_CONFIGS:
        if name == sched or name.startswith(sched + "-"):
            return sched, sr_norm_name(name[len(sched) + 1:] or "none")
    raise ValueError(f"config: unknown SR configuration {name!r}; names are <schedule>-<normalizer> with a "
                     f"schedule of {list(SR_CONFIGS)} and a normalizer of {list(SR_NORM_ROWS)} (e.g. 'fast-dn*')")


def check_sets(sets) -> tuple:
    """``sets`` (a name or names of SR test sets) as a tuple; a ValueError naming an unknown set and the known ones."""
    from ..data.sr import SR_SETS
    sets = (sets,) if isinstance(sets, str) else tuple(sets or ())
    for s in sets:
        if not isinstance(s, str) or s.lower() not in SR_SETS:
            known = [v.name.split(" ")[0] for v in SR_SETS.values()]
            raise ValueError(f"sets: unknown SR set {s!r}; known are {known}")
    return sets


def headline_key(set_name: str) -> str:
    """The prefix of a set's fields in a run's headline: ``Set5`` -> ``set5`` (``set5_psnr``, ``set5_ssim``)."""
    return set_name.lower().replace("-", "_")


def run_label(run: RunResult) -> str:
    """The name a run is shown under in tables and figures: its normalizer's row of Tables 5/6 (``DN*``, ``BN``...)."""
    return ROW_NAMES.get(run.config.norm, run.config.norm)


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _set_name(value: str) -> str:
    try:
        return check_sets([value])[0]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


#: steps per evaluation and checkpoint when ``eval_every`` is None: the authors' code's 2,500, at most a third of
#: the run (three points of a curve: the smoke schedule's 300 steps evaluate every 100)
EVAL_EVERY = 2500


def eval_every_of(cfg: SRConfig, eval_every: int | None = None) -> int:
    """The steps per evaluation and checkpoint of a run of ``cfg``: ``eval_every``, or when None
    ``min(EVAL_EVERY, steps // 3)`` (0: only at the end)."""
    return max(1, min(EVAL_EVERY, cfg.steps // 3)) if eval_every is None else eval_every


def train_config(cfg: SRConfig, steps: int | None = None, **changes) -> TrainConfig:
    """The :class:`dnlib.training.trainer.TrainConfig` of an SR configuration (``steps``: its schedule scaled to this
    length;
    ``changes``: e.g. device, eval_every)."""
    steps = cfg.steps if steps is None else int(steps)
    kw = dict(steps=steps, lr=cfg.lr, optimizer=cfg.optimizer, momentum=cfg.momentum,
              milestones=cfg.milestone_steps(steps), gamma=cfg.gamma, eval_every=eval_every_of(cfg),
              checkpoint_every=0, log_every=50)
    kw.update(changes)
    return TrainConfig(**kw)


class SRRecipe(Recipe):
    """The SR recipe: SRCNN with an SR normalizer row under a :mod:`dnlib.experiments.sr_configs` schedule.

    Configuration names are ``<schedule>-<row>`` (:meth:`configs`); every :class:`SRConfig` field is an override
    (``norm`` renames the configuration). ``steps`` shortens the schedule (milestones are fractions of it).
    Options (of ``load`` and ``build``): ``sets`` (scored for the headline when the run completes; absent sets
    are skipped and named in the record), ``curve_sets`` (PSNR logged at every chunk, default Set5), ``root``
    (data root); of ``build`` also ``eval_every`` (steps per evaluation and checkpoint = chunk; None:
    :func:`eval_every_of`; 0: only at the end). The runner shows the progress (``progress=``)."""

    name = "sr"
    module = "dnlib.experiments.sr"
    unit = "patches"
    description = ("Super-resolution, SRCNN with BN / DN* (Tables 5, 6): run, sweep, gather, report, list, bench. "
                   "Configurations: <schedule>-<normalizer>, e.g. fast-dn*.")

    def configs(self) -> list:
        return [f"{s}-{n}" for s in SR_CONFIGS for n in SR_NORM_ROWS]

    def config(self, config, steps: int | None = None, **overrides) -> SRConfig:
        norm = overrides.pop("norm", None)
        overrides.pop("name", None)                     # the name follows the schedule and the row
        if isinstance(config, str):
            base, row = _split(config)
            cfg = get_config(base)
        elif isinstance(config, SRConfig):
            cfg, row = config, config.norm
            suffix = f"-{config.norm}"
            base = config.name[:-len(suffix)] if config.name.endswith(suffix) else config.name
        else:
            raise ValueError(f"config: expected a name or an SRConfig, got {type(config).__name__}")
        row = sr_norm_name(row if norm is None else norm)
        sr_norm(row)
        if steps:
            overrides["steps"] = int(steps)
        return replace(cfg, **overrides, norm=row, name=f"{base}-{row}")

    def check_options(self, *, eval_every: int | None = None, **_) -> None:
        check_int("eval_every", eval_every, 0, none_ok=True)

    def from_dict(self, fields: Mapping) -> SRConfig:
        fields = dict(fields)
        fields.pop("eval_every", None)       # a field of older run folders' configurations; now a build option
        return self.config(fields.pop("name"), **fields)

    def load(self, cfg: SRConfig, seed: int, device: str = "auto", *, sets=HEADLINE_SETS, curve_sets=("Set5",),
             root=None) -> dict:
        """The training pairs (``inputs``, ``labels``) and which test sets are ``present`` (``missing``: why)."""
        sets, curve_sets = check_sets(sets), check_sets(curve_sets)
        inputs, labels = training_pairs(cfg.train_set, cfg.scale, root)
        present, missing = [], {}
        for s in dict.fromkeys(sets + curve_sets):
            try:
                test_pairs(s, cfg.scale, root)
                present.append(s)
            except FileNotFoundError as e:              # an absent test set is named in the record, not fatal
                missing[s] = cli.one_line(e)
        return {"inputs": inputs, "labels": labels, "present": present, "missing": missing}

    def build(self, cfg: SRConfig, data: dict, seed: int, device: str = "auto", *, sets=HEADLINE_SETS,
              curve_sets=("Set5",), root=None, eval_every: int | None = None) -> Setup:
        from ..data import SRCNNPatches
        self.check_options(eval_every=eval_every)
        every = eval_every_of(cfg, eval_every)
        sets, curve_sets = check_sets(sets), check_sets(curve_sets)
        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True       # fixed patch shapes
        inputs, labels, present, missing = data["inputs"], data["labels"], data["present"], data["missing"]
        model = cfg.build_model()
        batches = SRCNNPatches.from_pairs(inputs, labels, cfg.batch_size, per_image=cfg.per_image, seed=seed,
                                          device=dev)
        tcfg = train_config(cfg, device=str(dev), seed=seed, progress=False, eval_every=every, checkpoint_every=every)
        run_info = {k: v for k, v in self.config_dict(cfg).items() if k != "description"}
        info = {"data": f"{cfg.train_set} x{cfg.scale} ({len(inputs)} images)", "label": ROW_NAMES.get(cfg.norm),
                "sets": [s for s in sets if s in present], "curve_sets": [s for s in curve_sets if s in present],
                "missing_sets": missing, "root": None if root is None else str(root),
                "eval_every": every, "card": card(dev)}
        return Setup(model, srcnn_loss, batches, tcfg,
                                evaluate=make_evaluator(info["curve_sets"], cfg.scale, root), run_info=run_info,
                                chunk=every or None, info=info, data={"root": root})

    def headline(self, result: RunResult) -> dict:
        """PSNR/SSIM per headline set: of the final model on ``sets`` when the run completed (computed once),
        else the last logged PSNR of the curve sets; and the training seconds."""
        out = {f"{headline_key(s)}_{m}": None for s in HEADLINE_SETS for m in ("psnr", "ssim")}
        for s in HEADLINE_SETS:
            logged = [r[f"{s}/psnr"] for r in result.history if f"{s}/psnr" in r]
            out[f"{headline_key(s)}_psnr"] = logged[-1] if logged else None
        setup = result.setup
        if result.steps >= result.config.steps and setup.info["sets"] and _finite(result.model):
            cache = setup.data
            if cache.get("final_step") != result.steps:
                cache["final"] = {s: evaluate_sr(result.model, s, result.config.scale, root=cache["root"])
                                  for s in setup.info["sets"]}
                cache["final_step"] = result.steps
            for s, r in cache["final"].items():
                if s in HEADLINE_SETS:
                    out[f"{headline_key(s)}_psnr"], out[f"{headline_key(s)}_ssim"] = r["psnr"], r["ssim"]
        out["train_seconds"] = result.train_seconds
        return out

    def paper_tables(self, scale: int = 3, **_) -> dict:
        """Tables 5 and 6, their x``scale`` columns (:func:`dnlib.experiments.registry.paper_table`'s layout). Our runs
        are named ``<schedule>-<row>``: the paper's schedule ``paper-*`` and the short Adam schedule ``fast-*``, which
        is not
        the paper's; ``bicubic`` and ``A+`` are not networks trained here."""
        rows = [("bicubic", "Bicubic"), ("a+", "A+")] + [(f"{sched}-{m}", f"{ROW_NAMES[m]}" + (
            "" if sched == "paper" else " (fast schedule)")) for sched in ("paper", "fast") for m in SR_MODELS]
        rows.append(("fast-dn*-code", "DN* (authors' code, fast schedule)"))
        out = {}
        for name, sset in (("table5", "Set14"), ("table6", "BSD200")):
            key, paper = sset.lower(), paper_numbers(sset, scale)
            out[name] = {"title": f"Table {name[5:]}: {sset} x{scale}, PSNR (dB) / SSIM",
                         "where": {"experiment": "sr", "config.scale": scale},
                         "keys": {f"{key}_psnr": "PSNR", f"{key}_ssim": "SSIM"}, "order": [n for n, _ in rows],
                         "labels": dict(rows),
                         "paper": {n: dict(zip((f"{key}_psnr", f"{key}_ssim"), paper[label.split(" (")[0]]))
                                   for n, label in rows if "code" not in n and label.split(" (")[0] in paper},
                         "fmt": {f"{key}_psnr": ".2f", f"{key}_ssim": ".4f"}}
        return out

    def paper(self, cfg: SRConfig) -> dict:
        label, out = ROW_NAMES.get(cfg.norm), {}
        for s in ("Set14", "BSD200"):
            p = paper_numbers(s, cfg.scale).get(label, (None, None))
            out[f"{headline_key(s)}_psnr"], out[f"{headline_key(s)}_ssim"] = p
        return out

    flags = {"--sets": ("option", dict(type=_set_name, nargs="*", help="test sets (default Set5 "
                                       "Set14 BSD200; absent ones are skipped and named)")),
             "--root": ("option", dict(type=cli.in_dir, help="data root (default $DNLIB_DATA)")),
             "--norm": ("field", dict(help=f"normalizer row (renames the configuration): {list(SR_NORM_ROWS)}")),
             "--curve-sets": ("option", dict(type=_set_name, nargs="*",
                                             help="sets whose PSNR is logged at every chunk (default Set5)")),
             "--scale": ("field", dict(type=int, choices=(2, 3, 4))),
             "--train-set": ("field", dict(choices=list(TRAIN_SETS))),
             "--eval-every": ("option", dict(type=cli.nonnegative_int, help="steps per evaluation and checkpoint "
                                             "(0: only at the end; default 2500, at most a third of the run)")),
             "--lr": ("field", dict(type=cli.positive_float)),
             "--batch-size": ("field", dict(type=cli.positive_int))}

    def add_arguments(self, q, verb: str) -> None:
        super().add_arguments(q, verb)
        if verb == "report":
            for flag in ("--sets", "--root"):
                q.add_argument(flag, default=None, **self.flags[flag][1])
            q.add_argument("--device", type=cli.device, default="auto", help="for scoring checkpoints")
            q.add_argument("--scale", type=int, choices=(2, 3, 4), default=None,
                           help="report the runs of this upscaling factor (needed when the folder holds several)")

    def report(self, path, args=None) -> dict:
        from .sr_report import report
        return report(path, sets=getattr(args, "sets", None) or HEADLINE_SETS, root=getattr(args, "root", None),
                      device=getattr(args, "device", "auto"), scale=getattr(args, "scale", None))

    def commands(self) -> dict:
        return {"bench": steps_command(self, "bench", steps=50, warmup=5,
                                                  configs=("fast-none", "fast-bn", "fast-dn*"),
                                                  options={"sets": (), "curve_sets": ()}),
                **stacked.commands(self, stacked_sr.prepare)}   # `stack`: several seeds of one SRCNN as one model


RECIPE = SRRecipe()
registry.register(RECIPE)


# ------------------------------------------------------------------------------------- the library API
def run(norm: str = "none", config: str | SRConfig = "fast", *, eval_sets: Sequence[str] = ("Set5",),
             sets: Sequence[str] | None = None, **kwargs) -> RunResult:
    """Train SRCNN with the SR row ``norm`` under a schedule (``"paper"``, ``"fast"``, ``"smoke"`` or an
    :class:`~dnlib.experiments.sr_configs.SRConfig`) with :func:`dnlib.experiments.runner.run`; returns its
    :class:`~dnlib.experiments.recipe.RunResult` (``.model``, ``.history``, ``.record``).

    ``eval_sets`` (PSNR) are logged every ``eval_every`` steps; ``sets`` (default ``eval_sets``) are scored for
    the headline when the run completes. Other keywords (:func:`dnlib.experiments.runner.call`; None: the default): the
    runner's (``steps`` shortens the schedule; ``seed``; ``out``: a base folder for a new run folder; ``resume``:
    a run folder to continue or start in; ``time_limit``; ``stop_after``; ``device``;
    ``progress``: a bar, default on), ``root`` and configuration fields (``scale=4``, ``train_set="291"``,
    ``lr``...), ``eval_every`` (steps per evaluation and checkpoint: a build option, as in CIFAR and PTB). A
    NaN/inf loss raises :class:`~dnlib.training.trainer.TrainingDiverged` after the record says so."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return call(RECIPE, config, norm=norm, sets=tuple(eval_sets if sets is None else sets),
                           curve_sets=tuple(eval_sets), **kwargs)


def run_many(models: Sequence[str] = SR_MODELS, config="fast", **kwargs) -> list[RunResult]:
    """:func:`run` for each ``norm`` name in ``models`` with the same arguments (same seed, same batches)."""
    return [run(m, config, **kwargs) for m in models]


def models_of(runs: Sequence[RunResult]) -> dict:
    """``{label: model}`` of trained runs, one entry per run in their order (for
    :func:`dnlib.experiments.sr_report.compare_crops`); runs of one label (seeds of one row) are told apart by their
    seed, ``DN* (seed 1)``."""
    labels = [run_label(run) for run in runs]
    return {(lab if labels.count(lab) == 1 else f"{lab} (seed {(run.record or {}).get('seed')})"): run.model
            for lab, run in zip(labels, runs)}


def load_model(run_dir, device="cpu") -> tuple[nn.Module, SRConfig]:
    """The model of a run folder's checkpoint (built from its ``run.json``) and its configuration."""
    run_dir = Path(run_dir)
    stored = read_run_file(run_dir)      # a broken or foreign run.json: a ValueError naming it
    if not stored.get("fields"):
        raise ValueError(f"{run_dir / RUN_FILE}: holds no configuration fields to build the model from")
    cfg = RECIPE.from_dict(stored["fields"])
    model = cfg.build_model()
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    return model.to(resolve_device(device)).eval(), cfg


# ------------------------------------------------------------------------------------------------- bench
def bench(config: str | SRConfig, *, steps: int = 50, warmup: int = 5, seed: int = 0, device="auto",
          root=None, **changes) -> dict:
    """Training patches/s of one configuration (:func:`dnlib.experiments.bench.bench`, as every recipe's ``bench``:
    ``steps`` timed steps after ``warmup``; no evaluation, no test set); ``changes``: config fields."""
    return benches.bench(RECIPE, config, steps=steps, warmup=warmup, seed=seed, device=device,
                         options={"sets": (), "curve_sets": (), "root": root}, **changes)


# --------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dnlib sr {run,sweep,gather,report,list,bench}`` (:func:`dnlib.experiments.commands.main`); the old
    ``train --norm dn* --config fast ...`` is ``run`` with the same flags."""
    return commands.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
