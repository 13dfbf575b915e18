"""Single-image super-resolution experiments (PAPER.md §3.4; Tables 5, 6; Figures 3, 4).

* **Data.** :func:`training_pairs` turns a training set into SRCNN pairs once per process (luma, ``modcrop``,
  MATLAB bicubic down and up: :class:`dnlib.data.SRCNNPatches` does the work) and keeps them in memory;
  :class:`PatchSampler` holds them on the training device and draws 33 x 33 inputs with their centre 17 x 17
  HR targets there, so a GPU step never waits for Python. :func:`test_pairs` does the same for test sets.
* **Training.** :func:`train_sr` builds :class:`~dnlib.models.srcnn.SRCNN` with ``norm=`` and trains it with
  :class:`dnlib.train.Trainer` under a named :mod:`dnlib.configs.sr` configuration (loss MSE / 2 plus the L1
  terms of the DN* sites), for a number of steps or until a wall-clock limit.
* **Evaluation.** :func:`evaluate_sr` feeds each whole bicubic-upsampled Y image, multiplies the prediction by
  255 and clips it to [0, 255] (not rounded, as the authors' code). The valid convolutions return the image
  without its outer 8 px, so PSNR and SSIM are computed on ``HR[8:-8, 8:-8]``: exactly the region the paper's
  8-px border crop keeps. The bicubic row is scored on the same region, from ``uint8(up * 255)`` as MATLAB
  (:func:`dnlib.data.sr.bicubic_baseline`).
* **Figures.** :func:`plot_curves`, :func:`compare_crops` (Figure 3/4 style), :func:`crop_explorer` (an
  ipywidgets picker of image and crop) and :func:`results_table` (beside the paper's Tables 5/6).

``python -m dnlib.sr train ...`` / ``python -m dnlib.sr report ...`` are the entry points of
``scripts/gpu_sr.sh``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .configs.sr import (ROW_NAMES, SR_MODELS, TRAIN_SETS, SRConfig, get_sr_config,
                         paper_numbers, sr_norm_name)
from .metrics import psnr, ssim
from . import cli
from .io import atomic_write_json
from .train import Trainer, TrainingDiverged, resolve_device, set_seed

__all__ = ["training_pairs", "test_pairs", "PatchSampler", "srcnn_loss", "SRRun", "train_sr", "predict",
           "evaluate_sr", "evaluate_bicubic", "make_evaluator", "results_table", "format_table", "plot_curves",
           "train_many", "models_of", "shift_table", "summary",
           "compare_crops", "crop_explorer", "intensity_shift", "main"]

_TRAIN_CACHE: dict = {}
_TEST_CACHE: dict = {}


# --------------------------------------------------------------------------------------------------- data
def training_pairs(train_set: str = "T91", scale: int = 3, root=None) -> tuple[list, list]:
    """``(inputs, labels)``: float32 ``HxW`` bicubic-upsampled Y and HR Y in [0, 1], one pair per image.

    ``train_set``: ``"T91"`` or ``"291"`` (T91 + BSD200-train). Computed once per process and cached.
    """
    from .data import SRCNNPatches, load_sr
    if train_set not in TRAIN_SETS:
        raise ValueError(f"train_set: got {train_set!r}; allowed {list(TRAIN_SETS)}")
    key = (train_set, scale, str(root))
    if key not in _TRAIN_CACHE:
        images = [im for name in TRAIN_SETS[train_set] for im in load_sr(name, root).images]
        src = SRCNNPatches(images, scale, batch_size=1)
        _TRAIN_CACHE[key] = (src.inputs, src.labels)
    return _TRAIN_CACHE[key]


def test_pairs(set_name: str, scale: int = 3, root=None) -> list[dict]:
    """One dict per image of a test set: ``name``, ``rgb`` (uint8, modcropped), ``up`` (float32 bicubic Y in
    [0, 1]) and ``hr`` (uint8 Y). Cached per process."""
    from .data import load_sr, modcrop, sr_test_pair
    key = (set_name, scale, str(root))
    if key not in _TEST_CACHE:
        s = load_sr(set_name, root)
        _TEST_CACHE[key] = [dict(name=n, rgb=modcrop(im, scale), **dict(zip(("up", "hr"), sr_test_pair(im, scale))))
                            for n, im in zip(s.names, s.images)]
    return _TEST_CACHE[key]


class PatchSampler:
    """Endless SRCNN batches drawn on ``device``: ``x`` ``(B, 1, 33, 33)`` bicubic Y, ``y`` ``(B, 1, 17, 17)`` HR Y.

    The pairs are padded into one tensor on the device; each step draws an image (one per batch with
    ``per_image=True``, as the authors' code; else one per patch) and a uniformly random top-left corner on the
    stride-1 grid, all with a seeded ``torch.Generator`` on the CPU (so the stream is the same on every
    device), ``block`` batches at a time so that a GPU step needs no host-to-device copy.
    ``state_dict()`` / ``load_state_dict()`` resume it exactly.
    """

    def __init__(self, inputs: Sequence[np.ndarray], labels: Sequence[np.ndarray], batch_size: int = 128, *,
                 per_image: bool = True, input_size: int = 33, label_size: int = 17, seed: int = 0, device="cpu",
                 block: int = 256):
        if not inputs or len(inputs) != len(labels):
            raise ValueError("PatchSampler: need as many inputs as labels, at least one")
        if (input_size - label_size) % 2 or label_size > input_size:
            raise ValueError(f"PatchSampler: need label_size <= input_size with an even difference, got "
                             f"{input_size}, {label_size}")
        keep = [i for i, a in enumerate(inputs) if min(a.shape) >= input_size]
        if not keep:
            raise ValueError(f"PatchSampler: no image is at least {input_size} x {input_size}")
        self.device = torch.device(device)
        self.batch_size, self.per_image = batch_size, per_image
        self.input_size, self.label_size = input_size, label_size
        hmax = max(inputs[i].shape[0] for i in keep)
        wmax = max(inputs[i].shape[1] for i in keep)
        x = torch.zeros(len(keep), hmax, wmax)
        y = torch.zeros(len(keep), hmax, wmax)
        for k, i in enumerate(keep):
            h, w = inputs[i].shape
            x[k, :h, :w] = torch.from_numpy(np.asarray(inputs[i], np.float32))
            y[k, :h, :w] = torch.from_numpy(np.asarray(labels[i], np.float32))
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.sizes = torch.tensor([inputs[i].shape for i in keep], dtype=torch.long)  # (n, 2), CPU
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        p, q = input_size, label_size
        off = (p - q) // 2
        self._ar_in = torch.arange(p, device=self.device)
        self._ar_lab = torch.arange(off, off + q, device=self.device)
        self.block = block
        self._draw_block()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __iter__(self):
        return self

    def _draw_block(self) -> None:
        """Draw the images and corners of the next ``block`` batches on the CPU and move them in one copy."""
        k, b, p, n = self.block, self.batch_size, self.input_size, len(self)
        self._block_state = self.gen.get_state()
        if self.per_image:
            img = torch.randint(n, (k, 1), generator=self.gen).expand(k, b)
        else:
            img = torch.randint(n, (k, b), generator=self.gen)
        room = self.sizes[img] - p + 1                                   # (k, b, 2) valid corner counts
        corner = (torch.rand(k, b, 2, generator=self.gen) * room).long().clamp_max(room - 1)
        self._block = torch.cat([img.unsqueeze(-1), corner], -1).to(self.device)   # (k, b, 3)
        self._pos = 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos >= self.block:
            self._draw_block()
        draw = self._block[self._pos]
        self._pos += 1
        b = self.batch_size
        i, rows, cols = (draw[:, j].view(b, 1, 1) for j in range(3))
        x = self.x[i, rows + self._ar_in.view(1, -1, 1), cols + self._ar_in.view(1, 1, -1)]
        y = self.y[i, rows + self._ar_lab.view(1, -1, 1), cols + self._ar_lab.view(1, 1, -1)]
        return x.unsqueeze(1), y.unsqueeze(1)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "block_state": self._block_state, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self.gen.set_state(state["block_state"])
        self._draw_block()
        self._pos = state["pos"]


def srcnn_loss(model: nn.Module, batch) -> torch.Tensor:
    """The authors' loss: mean squared error / 2 between the prediction and the HR centre."""
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


def _bicubic_grey(up: np.ndarray) -> np.ndarray:
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
        up, hr = _bicubic_grey(item["up"]), item["hr"].astype(np.float64)
        rows.append({"name": item["name"], "psnr": psnr(up, hr, border=border), "ssim": ssim(up, hr, border=border),
                     "shift": float((_shave(up, border) - _shave(hr, border)).mean())})
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "shift")}
    out["per_image"] = rows
    return out


def make_evaluator(sets: Sequence[str] = ("Set5",), scale: int = 3, root=None, metrics=("psnr",)):
    """``evaluate(model) -> {"Set5/psnr": ...}`` for :class:`dnlib.train.Trainer` (test pairs cached)."""
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
    means = {it["name"]: float(_shave(it["hr"].astype(np.float64), 8).mean()) for it in test_pairs(set_name, scale, root)}
    return [{"name": row["name"], "hr_mean": means[row["name"]], "shift": row["shift"], "psnr": row["psnr"]}
            for row in r["per_image"]]


# --------------------------------------------------------------------------------------------- training
@dataclass
class SRRun:
    """One trained SRCNN: its ``norm``, configuration, model, training history and how long it took."""
    norm: str
    config: SRConfig
    model: nn.Module
    history: list = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "steps"     # "steps" or "time"

    @property
    def label(self) -> str:
        return ROW_NAMES.get(self.norm, self.norm)


def train_sr(norm: str = "none", config="fast", *, steps: Optional[int] = None, scale: Optional[int] = None,
             train_set: Optional[str] = None, device: str = "auto", seed: int = 0,
             eval_sets: Sequence[str] = ("Set5",), eval_every: Optional[int] = None,
             time_limit: Optional[float] = None, out_dir=None, root=None, progress: bool = True,
             norm_kwargs: Optional[Mapping] = None) -> SRRun:
    """Train SRCNN with ``norm`` under a named configuration (``"paper"``, ``"fast"``, ``"smoke"`` or an
    :class:`~dnlib.configs.sr.SRConfig`); ``steps``/``scale``/``train_set`` override the configuration's.

    ``eval_sets`` are scored (PSNR) every ``eval_every`` steps and at the end, into ``run.history``.
    ``time_limit`` (seconds of wall clock, including evaluation) stops the run early: after a calibration
    stretch the step count is set to what fits (the milestone fractions follow it), and training proceeds in
    chunks until it is reached or time is up. ``out_dir`` keeps the trainer's ``history.json`` and
    checkpoint (an unfinished step-limited run resumes from it; a checkpoint of another norm, configuration,
    seed or step count raises :class:`~dnlib.train.CheckpointError`). A NaN/inf loss or PSNR raises
    :class:`~dnlib.train.TrainingDiverged` (``history.json`` ends with ``"stopped": "diverged at step N"``).
    """
    t_start = time.perf_counter()
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit: must be a number of seconds > 0 (or None), got {time_limit!r}")
    cfg = get_sr_config(config)
    changes = {k: v for k, v in dict(scale=scale, train_set=train_set).items() if v is not None}
    cfg = cfg.replace(**changes) if changes else cfg
    steps = cfg.steps if steps is None else int(steps)
    eval_every = cfg.eval_every if eval_every is None else int(eval_every)
    dev = resolve_device(device)
    set_seed(seed)
    model = cfg.build_model(norm, norm_kwargs)
    inputs, labels = training_pairs(cfg.train_set, cfg.scale, root)
    batches = PatchSampler(inputs, labels, cfg.batch_size, per_image=cfg.per_image, seed=seed, device=dev)
    evaluate = make_evaluator(eval_sets, cfg.scale, root) if eval_sets else None
    tcfg = cfg.train_config(steps, eval_every=eval_every, device=str(dev), seed=seed, progress=progress,
                            checkpoint_every=0 if out_dir is None else max(eval_every, 1000))
    run_info = {"norm": norm, "config": cfg.name, "steps": steps, "norm_kwargs": dict(norm_kwargs or {}),
                **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("name", "description", "steps",
                                                                             "eval_every")}}
    trainer = Trainer(model, srcnn_loss, batches, tcfg, evaluate=evaluate, out_dir=out_dir, run_info=run_info)
    stopped = "steps"
    if time_limit is None:
        trainer.fit()
    else:
        if out_dir is not None:   # the milestones of a time-limited run follow the steps that fit: not compared
            trainer.try_resume(ignore=("milestones",))
        deadline = t_start + float(time_limit)
        chunk = max(1, eval_every) if eval_every else 1000
        # Calibrate the step time on short chunks (at most ~10% of the budget), then fix the step count that
        # fits and with it the milestones; train on in eval-sized chunks until done or out of time.
        target, t0, s0 = steps, time.perf_counter(), trainer.step
        trainer.evaluate = None                                                  # no evaluation while timing
        calib_end = t0 + 0.1 * max(0.0, deadline - t0)
        while trainer.step < target and time.perf_counter() < calib_end:
            trainer.cfg = cfg.train_config(min(target, trainer.step + 10), **_keep(tcfg))
            trainer.cfg.milestones = cfg.milestone_steps(target)
            trainer.fit(resume=False)
        rate = (time.perf_counter() - t0) / max(trainer.step - s0, 1)           # seconds per step
        trainer.evaluate = evaluate
        if evaluate is not None:                                                 # plus one evaluation per chunk
            e0 = time.perf_counter()
            trainer.log_evaluation()
            rate += (time.perf_counter() - e0) / chunk
        target = min(steps, trainer.step + int(max(0.0, deadline - time.perf_counter()) * 0.9 / rate))
        while trainer.step < target:
            if time.perf_counter() > deadline:
                stopped = "time"
                break
            trainer.cfg = cfg.train_config(min(target, trainer.step + chunk), **_keep(tcfg))
            trainer.cfg.milestones = cfg.milestone_steps(target)
            trainer.fit(resume=False)
        steps = target
    seconds = time.perf_counter() - t_start
    return SRRun(norm=sr_norm_name(norm), config=cfg, model=model, history=trainer.history, steps=trainer.step,
                 seconds=seconds, stopped_by=stopped)


def train_many(models: Sequence[str] = SR_MODELS, config="fast", **kwargs) -> list[SRRun]:
    """:func:`train_sr` for each ``norm`` name in ``models`` with the same arguments (same seed, same batches)."""
    return [train_sr(m, config, **kwargs) for m in models]


def models_of(runs: Sequence[SRRun]) -> dict:
    """``{label: model}`` of trained runs, in the paper's column order (for :func:`compare_crops`)."""
    return {run.label: run.model for run in runs}


def _keep(tcfg) -> dict:
    return dict(eval_every=tcfg.eval_every, device=tcfg.device, seed=tcfg.seed, progress=tcfg.progress,
                checkpoint_every=tcfg.checkpoint_every)


# ------------------------------------------------------------------------------------------------ tables
def results_table(runs: Sequence[SRRun], sets: Sequence[str] = ("Set5", "Set14"), scale: int = 3, root=None,
                  bicubic: bool = True) -> list[dict]:
    """Rows ``{"model", "set", "psnr", "ssim", "shift", "paper_psnr", "paper_ssim"}``: Bicubic and each run on
    each set, beside Table 5 (Set14) / Table 6 (BSD200) at ``scale`` (None where the paper has no number)."""
    rows = []
    for s in sets:
        paper = paper_numbers(s, scale)
        entries = ([("Bicubic", evaluate_bicubic(s, scale, root=root))] if bicubic else [])
        entries += [(run.label, evaluate_sr(run.model, s, scale, root=root)) for run in runs]
        for label, r in entries:
            p = paper.get(label, (None, None))
            rows.append({"model": label, "set": s, "psnr": round(r["psnr"], 2), "ssim": round(r["ssim"], 4),
                         "shift": round(r["shift"], 2), "paper_psnr": p[0], "paper_ssim": p[1]})
    return rows


def format_table(rows: Sequence[Mapping], title: str = "") -> str:
    """A Markdown table of :func:`results_table` rows."""
    cols = ["set", "model", "psnr", "paper_psnr", "ssim", "paper_ssim", "shift"]
    head = ["set", "model", "PSNR", "paper PSNR", "SSIM", "paper SSIM", "mean shift (grey levels)"]
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(head) + " |",
                                                      "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join("—" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def shift_table(runs: Sequence[SRRun], set_name: str = "Set5", scale: int = 3, root=None) -> str:
    """Markdown: per test image, its mean HR grey level and each model's mean error (prediction - HR)."""
    cols = {run.label: {r["name"]: r for r in intensity_shift(run.model, set_name, scale, root)} for run in runs}
    names = [it["name"] for it in test_pairs(set_name, scale, root)]
    first = next(iter(cols.values()))
    head = ["image", "HR mean"] + [f"{label} shift (PSNR)" for label in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [n, f"{first[n]['hr_mean']:.1f}"] + [f"{c[n]['shift']:+.1f} ({c[n]['psnr']:.2f})" for c in cols.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(runs: Sequence[SRRun], rows: Sequence[Mapping]) -> dict:
    """The headline numbers of a notebook run (for :func:`dnlib.suite.save_results`)."""
    return {"runs": {run.label: {"config": run.config.name, "kind": run.config.kind, "steps": run.steps,
                                 "seconds": round(run.seconds, 1), "scale": run.config.scale,
                                 "train_set": run.config.train_set} for run in runs},
            "table": list(rows)}


# ----------------------------------------------------------------------------------------------- figures
def plot_curves(runs: Sequence[SRRun], set_name: str = "Set5", bicubic_psnr: Optional[float] = None):
    """Training loss (MSE/2, log scale) and test PSNR on ``set_name`` against the step, one line per run."""
    import matplotlib.pyplot as plt
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
    key = f"{set_name}/psnr"
    for run in runs:
        h = [r for r in run.history if "train_loss" in r]
        ax0.plot([r["step"] for r in h], [r["train_loss"] for r in h], label=run.label)
        e = [r for r in run.history if key in r]
        ax1.plot([r["step"] for r in e], [r[key] for r in e], marker="o", ms=3, label=run.label)
    if bicubic_psnr is not None:
        ax1.axhline(bicubic_psnr, color="k", ls="--", lw=1, label="Bicubic")
    ax0.set(xlabel="step", ylabel="training loss (MSE / 2)", yscale="log", title="training loss")
    ax1.set(xlabel="step", ylabel="PSNR (dB)", title=f"{set_name} PSNR (Y, 8-px border)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _full_prediction(model: nn.Module, item: dict) -> np.ndarray:
    """The prediction pasted into the bicubic image (the outer shave px stay bicubic), float grey levels."""
    full = _bicubic_grey(item["up"])
    s = getattr(model, "shave", 8)
    full[s:full.shape[0] - s, s:full.shape[1] - s] = predict(model, item["up"])
    return full


def _check_crop(item: dict, top: int, left: int, size: int, margin: int = 8) -> tuple[int, int, int]:
    h, w = item["hr"].shape
    size = int(min(size, h - 2 * margin, w - 2 * margin))
    top = int(min(max(top, margin), h - margin - size))
    left = int(min(max(left, margin), w - margin - size))
    return top, left, size


def compare_crops(models: Mapping[str, nn.Module], set_name: str = "Set5", image=0, scale: int = 3, *,
                  top: int = 100, left: int = 100, size: int = 96, root=None, cache: Optional[dict] = None):
    """Figure 3/4 style: the HR image with the crop marked, then the same crop from Bicubic and each model,
    each titled with the PSNR (Y) of that crop. ``image`` is an index or a name. The crop is kept inside the
    8-px frame that the paper's metric excludes. Returns ``(fig, {label: crop PSNR})``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    items = test_pairs(set_name, scale, root)
    item = items[image] if isinstance(image, int) else next(it for it in items if it["name"] == image)
    top, left, size = _check_crop(item, top, left, size)
    cache = {} if cache is None else cache
    preds = {"Bicubic": _bicubic_grey(item["up"])}
    for label, m in models.items():
        key = (id(m), set_name, item["name"], scale)
        if key not in cache:
            cache[key] = _full_prediction(m, item)
        preds[label] = cache[key]
    hr = item["hr"].astype(np.float64)
    sl = (slice(top, top + size), slice(left, left + size))
    scores = {label: psnr(p[sl], hr[sl], border=0) for label, p in preds.items()}
    n = len(preds) + 2
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.9))
    rgb = item["rgb"] if item["rgb"].ndim == 3 else np.repeat(item["rgb"][..., None], 3, 2)
    axes[0].imshow(rgb)
    axes[0].add_patch(Rectangle((left, top), size, size, fill=False, ec="r", lw=1.5))
    axes[0].set_title(f"{item['name']} (x{scale})", fontsize=9)
    axes[1].imshow(hr[sl], cmap="gray", vmin=0, vmax=255)
    axes[1].set_title("HR (Y)", fontsize=9)
    for ax, (label, p) in zip(axes[2:], preds.items()):
        ax.imshow(p[sl], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label}\n{scores[label]:.2f} dB", fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig, scores


def crop_explorer(models: Mapping[str, nn.Module], sets: Sequence[str] = ("Set5", "Set14"), scale: int = 3,
                  root=None, size: int = 96):
    """An ``ipywidgets.interactive`` picker: test set, image, crop top/left (fractions of the image) and crop
    size; shows :func:`compare_crops` and holds its crop PSNRs in ``.result``. Predictions are cached per image."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    cache: dict = {}
    names = {s: [it["name"] for it in test_pairs(s, scale, root)] for s in sets}
    set_w = W.Dropdown(options=list(sets), value=sets[0], description="set")
    img_w = W.Dropdown(options=names[sets[0]], value=names[sets[0]][0], description="image")

    def _on_set(change):
        img_w.options = names[change["new"]]
        img_w.value = names[change["new"]][0]
    set_w.observe(_on_set, names="value")

    def show(set_name, image, top, left, size):
        if image not in names[set_name]:
            return None
        item = next(it for it in test_pairs(set_name, scale, root) if it["name"] == image)
        h, w = item["hr"].shape
        fig, scores = compare_crops(models, set_name, image, scale, top=int(top * h), left=int(left * w),
                                    size=size, root=root, cache=cache)
        plt.show()
        plt.close(fig)
        return scores

    return W.interactive(show, set_name=set_w, image=img_w,
                         top=W.FloatSlider(value=0.4, min=0.0, max=1.0, step=0.05, description="top"),
                         left=W.FloatSlider(value=0.4, min=0.0, max=1.0, step=0.05, description="left"),
                         size=W.IntSlider(value=size, min=32, max=256, step=16, description="size"))


# --------------------------------------------------------------------------------------------------- CLI
def _cmd_train(a) -> int:
    if a.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    out = Path(a.out)
    try:
        run = train_sr(a.norm, a.config, steps=a.steps, scale=a.scale, train_set=a.train_set, device=a.device,
                       seed=a.seed, eval_sets=tuple(a.curve_sets), eval_every=a.eval_every,
                       time_limit=a.time_limit, root=a.root, progress=False)
    except TrainingDiverged as e:   # a record that says so (no PSNR), one line on stderr, exit 1
        cfg, dev = get_sr_config(a.config), resolve_device(a.device)
        record = {"norm": a.norm, "label": ROW_NAMES.get(a.norm, a.norm), "config": cfg.name, "kind": cfg.kind,
                  "scale": a.scale or cfg.scale, "train_set": a.train_set or cfg.train_set, "steps": e.step,
                  "stopped_by": e.status, "train_seconds": None, "eval_seconds": None, "device": str(dev),
                  "card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                  "torch": torch.__version__, "results": {}, "history": e.history}
        atomic_write_json(record, Path(a.out) / f"run_{_safe(a.norm)}.json")
        print(f"python -m dnlib.sr train: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    res = {}
    for s in a.sets:
        try:
            r = evaluate_sr(run.model, s, run.config.scale, root=a.root)
        except Exception as e:  # noqa: BLE001 - a missing test set is reported, not fatal
            res[s] = {"error": f"{type(e).__name__}: {e}"}
            continue
        res[s] = {k: r[k] for k in ("psnr", "ssim", "shift")} | {"images": len(r["per_image"])}
    dev = resolve_device(a.device)
    record = {"norm": run.norm, "label": run.label, "config": run.config.name, "kind": run.config.kind,
              "scale": run.config.scale, "train_set": run.config.train_set, "steps": run.steps,
              "stopped_by": run.stopped_by, "train_seconds": round(run.seconds, 1),
              "eval_seconds": round(time.perf_counter() - t0, 1), "device": str(dev),
              "card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "results": res, "history": run.history}
    atomic_write_json(record, out / f"run_{_safe(run.norm)}.json")
    print(json.dumps({k: v for k, v in record.items() if k != "history"}))
    return 0


def _safe(name: str) -> str:
    return name.replace("*", "star").replace("/", "_")


def _read_runs(out: Path) -> list:
    runs = []
    for p in sorted(out.glob("run_*.json")):
        try:
            runs.append(json.loads(p.read_text()))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p} is not JSON ({e})") from None
    if not runs:
        raise ValueError(f"--out: no run_*.json in {out} (write them with `python -m dnlib.sr train --out {out}`)")
    return runs


def _cmd_report(a) -> int:
    out = Path(a.out)
    runs = _read_runs(out)
    scale = runs[0]["scale"]
    table = {}
    for s in a.sets:
        try:
            b = evaluate_bicubic(s, scale, root=a.root)
            rows = {"Bicubic": {"psnr": b["psnr"], "ssim": b["ssim"], "images": len(b["per_image"])}}
        except Exception as e:  # noqa: BLE001
            table[s] = {"missing": f"{type(e).__name__}: {e}"}
            continue
        for r in runs:
            if "psnr" in r["results"].get(s, {}):
                rows[r["label"]] = r["results"][s]
        paper = paper_numbers(s, scale)
        for label, row in rows.items():
            if label in paper:
                row["paper_psnr"], row["paper_ssim"] = paper[label]
        table[s] = rows
    summary = {"scale": scale, "card": runs[0]["card"], "torch": runs[0]["torch"],
               "runs": {r["label"]: {k: r[k] for k in ("config", "kind", "steps", "stopped_by", "train_seconds",
                                                      "train_set")} for r in runs},
               "table": table,
               "note": "PSNR/SSIM on Y, 8-px border, prediction clipped not rounded; sets that are absent are "
                       "listed under 'missing'. Paper: Table 5 = Set14, Table 6 = BSD200; no Set5 numbers."}
    atomic_write_json(summary, out / "sr_results.json")
    print(json.dumps(summary, indent=1))
    return 0


def _set_name(value: str) -> str:
    from .data.sr import SR_SETS
    if value.lower() not in SR_SETS:
        known = ", ".join(src.name.split(" ")[0] for src in SR_SETS.values())
        raise argparse.ArgumentTypeError(f"unknown SR set {value!r}; known are {known}")
    return value


def _check_train(p, a) -> None:
    """Everything ``train`` needs, before it starts: configuration, normalizer, data (loaded once, cached)."""
    with cli.user_errors(p):
        cfg = get_sr_config(a.config)
        changes = {k: v for k, v in dict(scale=a.scale, train_set=a.train_set).items() if v is not None}
        cfg = cfg.replace(**changes) if changes else cfg
        cfg.build_model(a.norm)
        training_pairs(cfg.train_set, cfg.scale, a.root)
        for s in a.curve_sets:
            test_pairs(s, cfg.scale, a.root)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dnlib.sr train --norm dn* --config fast --time-limit 240 --out DIR`` trains one model and writes
    ``DIR/run_<norm>.json``; ``python -m dnlib.sr report --out DIR`` adds the Bicubic rows and the paper's
    numbers into ``DIR/sr_results.json``."""
    p = cli.ArgumentParser(prog="python -m dnlib.sr", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--norm", default="none")
    t.add_argument("--config", default="fast")
    t.add_argument("--steps", type=cli.positive_int, default=None)
    t.add_argument("--scale", type=int, default=None, choices=(2, 3, 4))
    t.add_argument("--train-set", default=None, choices=list(TRAIN_SETS))
    t.add_argument("--device", type=cli.device, default="auto")
    t.add_argument("--seed", type=cli.seed, default=0)
    t.add_argument("--time-limit", type=cli.positive_float, default=None)
    t.add_argument("--eval-every", type=cli.nonnegative_int, default=None)
    t.add_argument("--curve-sets", type=_set_name, nargs="*", default=["Set5"])
    t.add_argument("--sets", type=_set_name, nargs="*", default=["Set5", "Set14", "BSD200"])
    t.add_argument("--root", type=cli.in_dir, default=None)
    t.add_argument("--out", type=cli.out_dir, required=True)
    r = sub.add_parser("report")
    r.add_argument("--out", type=lambda v: cli.out_dir(cli.in_dir(v)), required=True)
    r.add_argument("--sets", type=_set_name, nargs="*", default=["Set5", "Set14", "BSD200"])
    r.add_argument("--root", type=cli.in_dir, default=None)
    a = p.parse_args(argv)
    cmd_p = sub.choices[a.cmd]  # errors name the sub-command
    if a.cmd == "train":
        _check_train(cmd_p, a)
        return _cmd_train(a)
    with cli.user_errors(cmd_p):
        _read_runs(Path(a.out))
    return _cmd_report(a)

if __name__ == "__main__":
    sys.exit(main())
