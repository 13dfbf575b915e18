"""What SR runs show, beside the paper's Tables 5 and 6 and its Figures 3 and 4: PSNR/SSIM tables of runs or models
(:func:`results_table`), the mean grey-level shift per image (:func:`shift_table`), the numbers
a notebook saves (:func:`summary`), the report of a folder of run folders (:func:`report`; ``python -m dnlib sr
report runs/sr/sweep``: sr_results.json), the training curves (:func:`plot_curves`) and crops of the predictions
(:func:`compare_crops`, the ipywidgets picker :func:`crop_explorer`)::

    from dnlib.experiments import sr, sr_report
    runs = sr.run_many(["none", "dn*"], "smoke", steps=300)
    table = sr_report.results_table(runs, ("Set5", "Set14"))     # Markdown; its dicts: table.rows
    sr_report.plot_curves(runs, "Set5")
    sr_report.compare_crops(sr.models_of(runs), "Set5", "butterfly_GT")
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .. import cli
from ..analysis.curves import run_curves
from ..analysis.figures import MarkdownTable, cell, markdown_table
from ..io import atomic_write_json
from ..training.metrics import psnr
from . import pooling, records
from .recipe import RunResult
from .runner import recipe_runs
from .sr import (
    HEADLINE_SETS,
    RECIPE,
    bicubic_grey,
    check_sets,
    evaluate_bicubic,
    evaluate_sr,
    headline_key,
    intensity_shift,
    load_model,
    models_of,
    predict,
    run_label,
    test_pairs,
)
from .sr_configs import paper_numbers

__all__ = ["ResultsTable", "results_table", "shift_table", "summary", "report", "plot_curves", "compare_crops",
           "crop_explorer"]


class ResultsTable(MarkdownTable):
    """A Markdown table (rendered by Jupyter) that keeps the dicts of its lines in ``rows``."""
    rows: list


def results_table(runs: Sequence[RunResult] | Mapping[str, nn.Module], sets: Sequence[str] = ("Set5", "Set14"),
                  scale: int = 3, root=None, bicubic: bool = True, title: str = "") -> ResultsTable:
    """Bicubic and each run (or ``{label: model}``) on each set, beside Table 5 (Set14) / Table 6 (BSD200) at
    ``scale``: a Markdown table whose ``rows`` are ``{"model", "set", "psnr", "ssim", "shift", "paper_psnr",
    "paper_ssim", "n", "run_as"}`` (the paper's None where it has no number; ``n`` runs and ``run as``
    (:func:`dnlib.experiments.pooling.run_as`) as every experiment's results table, None for a bare model)."""
    models = dict(runs) if isinstance(runs, Mapping) else models_of(runs)      # one entry per run, in order
    what = {} if isinstance(runs, Mapping) else {label: run for label, run in zip(models, runs)}
    if len(what) != (0 if isinstance(runs, Mapping) else len(runs)):
        raise ValueError(f"runs: {len(runs)} runs gave {len(what)} labels; each run needs its own row")
    rows = []
    for s in sets:
        paper = paper_numbers(s, scale)
        entries = ([("Bicubic", evaluate_bicubic(s, scale, root=root))] if bicubic else [])
        entries += [(label, evaluate_sr(m, s, scale, root=root)) for label, m in models.items()]
        for label, r in entries:
            run = what.get(label)
            p = paper.get(run_label(run) if run is not None else label, (None, None))
            rec = getattr(run, "record", None)
            rows.append({"model": label, "set": s, "psnr": round(r["psnr"], 2), "ssim": round(r["ssim"], 4),
                         "shift": round(r["shift"], 2), "paper_psnr": p[0], "paper_ssim": p[1],
                         "n": 1 if run is not None else None,
                         "run_as": pooling.run_as(pooling.defining(rec)) if rec else None})
    cols = ["set", "model", "psnr", "paper_psnr", "ssim", "paper_ssim", "shift", "n", "run_as"]
    table = ResultsTable(markdown_table(["set", "model", "PSNR", "paper PSNR", "SSIM", "paper SSIM",
                                         "mean shift (grey levels)", "n", "run as"],
                                        [[r.get(c) for c in cols] for r in rows], title))
    table.rows = rows
    return table


def shift_table(runs: Sequence[RunResult], set_name: str = "Set5", scale: int = 3, root=None) -> str:
    """Markdown: per test image, its mean HR grey level and each model's mean error (prediction - HR)."""
    cols = {label: {r["name"]: r for r in intensity_shift(m, set_name, scale, root)}
            for label, m in models_of(runs).items()}
    names = [it["name"] for it in test_pairs(set_name, scale, root)]
    first = next(iter(cols.values()))
    return markdown_table(["image", "HR mean"] + [f"{label} shift (PSNR)" for label in cols],
                          [[n, cell(first[n]["hr_mean"], ".1f")] + [f"{c[n]['shift']:+.1f} ({c[n]['psnr']:.2f})"
                                                                      for c in cols.values()] for n in names])


def summary(runs: Sequence[RunResult], rows: Sequence[Mapping]) -> dict:
    """The numbers a notebook saves (:func:`dnlib.notebook.suite.save_results`): each run and the :func:`results_table`
    ``rows`` (a run's own numbers are its record's ``headline``)."""
    return {"runs": {label: {"config": run.config.name, "kind": run.config.kind, "steps": run.steps,
                             "stopped": run.stopped, "train_seconds": round(run.train_seconds, 1),
                             "scale": run.config.scale, "train_set": run.config.train_set,
                             "run_dir": None if run.run_dir is None else str(run.run_dir)}
                     for label, run in zip(models_of(runs), runs)},
            "table": list(rows)}


def report(path, sets: Sequence[str] = HEADLINE_SETS, root=None, device="auto", scale: int | None = None) -> dict:
    """The SR table of the run folders at or under ``path``: per set, Bicubic and every run (PSNR, SSIM; the
    record's final scores, else its checkpoint scored now) beside the paper's Tables 5/6; written to
    ``path/sr_results.json`` and returned. Absent test sets are listed under ``"missing"``. ``scale``: report the
    runs of that upscaling factor only (default: the runs' one scale; runs at several scales are a ValueError
    naming them, as a table holds one scale's numbers and the paper's for that scale)."""
    sets, recs = check_sets(sets), recipe_runs(RECIPE, path)
    scales = sorted({rec["config"]["scale"] for rec in recs.values()})
    if scale is None and len(scales) > 1:
        raise ValueError(f"{path}: runs at scales {scales}; one table holds one scale: give scale= one of them")
    if scale is not None:
        recs = {d: rec for d, rec in recs.items() if rec["config"]["scale"] == scale}
        if not recs:
            raise ValueError(f"scale: no runs at x{scale} under {path} (its runs: scales {scales})")
    labels = {d: rec["config"]["setup"].get("label") or rec["name"] for d, rec in recs.items()}
    keys = {d: lab if list(labels.values()).count(lab) == 1 else f"{lab} ({recs[d]['name']} s{recs[d]['seed']})"
            for d, lab in labels.items()}
    first = next(iter(recs.values()))
    scale, table = first["config"]["scale"], {}
    for s in sets:
        try:
            b = evaluate_bicubic(s, scale, root=root)
        except FileNotFoundError as e:
            table[s] = {"missing": cli.one_line(e)}
            continue
        rows = table[s] = {"Bicubic": {"psnr": b["psnr"], "ssim": b["ssim"], "images": len(b["per_image"])}}
        for d, rec in recs.items():
            if rec["headline"].get(f"{headline_key(s)}_ssim") is not None:
                rows[keys[d]] = {m: rec["headline"][f"{headline_key(s)}_{m}"] for m in ("psnr", "ssim")}
            elif (d / "checkpoint.pt").is_file() and not str(rec["stopped"]).startswith("diverged"):
                r = evaluate_sr(load_model(d, device)[0], s, scale, root=root)
                rows[keys[d]] = {"psnr": r["psnr"], "ssim": r["ssim"], "shift": r["shift"], "scored": "checkpoint"}
        row_of = {keys[d]: labels[d] for d in recs}      # the run's row: its label before " (name sN)" was added
        for label, row in rows.items():                  # ("DN* (code)", the authors' code's, has no paper number)
            row.update(zip(("paper_psnr", "paper_ssim"), paper_numbers(s, scale).get(row_of.get(label, label), ())))
    out = {"scale": scale, "card": first["config"]["setup"].get("card"), "torch": first["versions"].get("torch"),
           "runs": {keys[d]: {"name": r["name"], "seed": r["seed"], "steps": r["steps_done"], "stopped": r["stopped"],
                              "train_seconds": r["headline"].get("train_seconds"),
                              "train_set": r["config"].get("train_set"), "run": str(d)} for d, r in recs.items()},
           "table": table,
           "note": "PSNR/SSIM on Y, 8-px border, prediction clipped not rounded; sets that are absent are "
                   "listed under 'missing'. Paper: Table 5 = Set14, Table 6 = BSD200; no Set5 numbers."}
    atomic_write_json(Path(path) / "sr_results.json", records.jsonable(out), indent=1)
    return out


def plot_curves(runs: Sequence[RunResult], set_name: str = "Set5", bicubic_psnr: float | None = None):
    """Training loss (MSE/2, log scale) and test PSNR on ``set_name`` against the step, one line per run."""
    fig, (_, ax1) = run_curves([(label, run.history) for label, run in zip(models_of(runs), runs)], [
        {"key": "train_loss", "ylabel": "training loss (MSE / 2)", "yscale": "log", "title": "training loss"},
        {"key": f"{set_name}/psnr", "marker": "o", "ylabel": "PSNR (dB)",
         "title": f"{set_name} PSNR (Y, 8-px border)"}],
        pyplot=True)
    if bicubic_psnr is not None:
        ax1.axhline(bicubic_psnr, color="k", ls="--", lw=1, label="Bicubic")
    ax1.legend(fontsize=8)
    return fig


def _full_prediction(model: nn.Module, item: dict) -> np.ndarray:
    """The prediction pasted into the bicubic image (the outer shave px stay bicubic), float grey levels."""
    full = bicubic_grey(item["up"])
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
                  top: int = 100, left: int = 100, size: int = 96, root=None, cache: dict | None = None):
    """Figure 3/4 style: the HR image with the crop marked, then the same crop from Bicubic and each model,
    each titled with the PSNR (Y) of that crop. ``image`` is an index or a name. The crop is kept inside the
    8-px frame that the paper's metric excludes. Returns ``(fig, {label: crop PSNR})``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    items = test_pairs(set_name, scale, root)
    item = items[image] if isinstance(image, int) else next(it for it in items if it["name"] == image)
    top, left, size = _check_crop(item, top, left, size)
    cache = {} if cache is None else cache
    preds = {"Bicubic": bicubic_grey(item["up"])}
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
