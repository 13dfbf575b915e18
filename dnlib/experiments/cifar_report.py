"""What CIFAR runs show, beside the paper's Tables 3, 7 and 10: the accuracy table (:func:`results_table`), the
learning curves (:func:`learning_curves`), Table 10's filter-pair statistics (:func:`table10`, :func:`table10_figure`),
the numbers a notebook saves (:func:`summary`) and the report of a folder of run folders or of a GPU trip
(:func:`report`; ``python -m dnlib cifar report runs/cifar/sweep``: summary.json, table.md), as
:mod:`dnlib.experiments.ptb_report` and :mod:`dnlib.experiments.sr_report` for the other experiments::

    from dnlib.experiments import cifar, cifar_report
    results = cifar.run_many(["bn", "dn-star"], steps=300, subset=(2000, 1000))
    cifar_report.results_table(results), cifar_report.learning_curves(results)
    cifar_report.report("results/records/cifar")

The tables take RunResults, records or run folders (:func:`dnlib.experiments.sweep.load_runs`); Table 10 needs
trained models (RunResults) and the loaded data.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..analysis.curves import run_curves
from ..analysis.figures import MarkdownTable, cell, markdown_table, new_figure
from . import aggregate, records, tables
from .cifar import RECIPE, CifarData, estimate_seconds
from .cifar_configs import TABLE3_ROWS, TABLE10, get_config, list_configs
from .recipe import row_label
from .runner import recipe_runs
from .sweep import load_runs

__all__ = ["summarize", "results_table", "summary", "learning_curves", "first_layer_responses", "table10",
           "table10_figure", "report"]

_CONFIGS = {n: get_config(n) for n in list_configs()}   # Table 7 (CIFAR-10 values; the rows are the same)


def summarize(results) -> list:
    """Per configuration and data (:func:`dnlib.experiments.aggregate.summarize` of RunResults, records or run folders):
    mean, std and n over runs of the final and best accuracy and images/s, the paper's beside (a diverged run, or one
    stopped early: time limit, interrupted, still running, counts in ``n`` and ``stopped``, not in a mean: its numbers
    are those of a shorter schedule)."""
    return aggregate.summarize(results, ("final_acc", "best_acc", "images_per_s"), by=("name", "data"),
                               finished=True)


def results_table(results) -> MarkdownTable:
    """:func:`summarize` beside the paper's Table 7: per data set and configuration (Table 3 rows in bold, runs that
    stopped early named) our final accuracy (mean ± std over runs), the paper's, images/s, ``n`` (runs) and ``run as``
    (:func:`dnlib.experiments.pooling.run_as`: steps of the paper's schedule, subset, batch), the columns of every
    experiment's results table."""
    def label(name):
        row = _CONFIGS[name].paper if name in _CONFIGS else name
        return f"**{row}**" if name in TABLE3_ROWS else row
    return markdown_table(["data", "model", "accuracy (ours)", "accuracy (paper)", "img/s", "n", "run as"], [
        [", ".join(s["data"]), row_label(s, label(s["name"])) + (f" [{s['split']}]" if s.get("split") else ""),
         tables.format_mean_std(s["final_acc"], s["final_acc_std"], s["final_acc_n"], ".4f"),
         cell(s["paper_final_acc"], ".4f"), cell(s["images_per_s"], ".0f"), s["n"], s.get("run_as") or None]
        for s in summarize(results)])


def summary(results) -> dict:
    """The numbers a notebook saves (:func:`dnlib.notebook.suite.save_results`): :func:`summarize`'s rows."""
    return {"runs": summarize(results)}


# ---------------------------------------------------------------------------------------------- figures
def learning_curves(results, metric: str | None = None):
    """Evaluation accuracy against step for every run (RunResults or run folders; the paper's final accuracy dashed
    in the run's colour), on one figure (left), and the training loss (right)."""
    runs = load_runs(results)
    key = metric or (f"{runs[0][0]['config']['setup']['eval_split']}_acc" if runs else "test_acc")
    fig, (ax_acc, _) = run_curves(
        [(f"{rec['config'].get('paper')} (seed {rec['seed']})", rows, {key: (rec.get("paper") or {}).get("final_acc")})
         for rec, rows in runs],
        [{"key": key, "marker": ".", "paper": key, "ylabel": metric or "evaluation accuracy",
          "title": "evaluation accuracy"},
         {"key": "train_loss", "ylabel": "cross-entropy", "title": "training loss (no L1 term)"}], figsize=(11, 4))
    ax_acc.legend(fontsize=9)
    return fig


def first_layer_responses(model: nn.Module, data: CifarData, n_images: int = 500) -> torch.Tensor:
    """First-layer pre-normalization responses (conv1 + bias) of the first ``n_images`` evaluation images,
    ``(n, 32, 32, 32)`` on the CPU: what Table 10 histograms."""
    was = model.training
    model.eval()
    with torch.no_grad():
        idx = torch.arange(min(n_images, len(data.y_eval)), device=data.device)
        z = model.features(data.images(idx, "eval"), 1, pre_norm=True).float().cpu().contiguous()
    model.train(was)
    return z


def table10(results, data: CifarData, *, n_images: int = 500, bins: int = 20,
            max_samples: int = 20000) -> MarkdownTable:
    """Mean pairwise |correlation| and MI (nats) of first-layer pre-normalization responses per trained model
    (:func:`dnlib.analysis.stats.pairwise_corr_mi`, all filter pairs), beside the paper's Table 10 (whose
    "average pairwise correlation" is read as the mean |r|). A model with dead filters says over how many pairs its
    mean |r| is (a constant filter has no r)."""
    from ..analysis.stats import pairwise_corr_mi
    rows = []
    for r in results:
        st = pairwise_corr_mi(first_layer_responses(r.model, data, n_images), bins=bins, max_samples=max_samples)
        pc, pm = TABLE10.get(r.config.name, (None, None))
        ours = cell(st.corr, ".4f") + (f" ({st.corr_pairs} of {len(st.pairs)} pairs)"
                                       if st.corr_pairs < len(st.pairs) else "")
        rows.append([r.config.paper, ours] + [cell(v, ".4f") for v in (pc, st.mi, pm)])
    return markdown_table(["model", "mean abs r (ours)", "corr (paper)", "MI (ours)", "MI (paper)"], rows)


def table10_figure(results, data: CifarData, *, n_pairs: int = 3, n_images: int = 500, bins: int = 40,
                   seed: int = 0):
    """Table 10's joint histograms: one row per model, ``n_pairs`` random first-layer filter pairs (the same
    pairs for every model), each titled with its r and MI (nats); the row's first title names the model and the
    paper's mean |corr| and MI over all pairs."""
    from ..analysis.figures import joint_histogram
    from ..analysis.stats import as_samples, pairwise_corr_mi
    fig = new_figure(figsize=(2.4 * n_pairs, 2.3 * len(results)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(results), n_pairs, squeeze=False))
    for row, r in zip(axes, results):
        z = first_layer_responses(r.model, data, n_images)
        shown = pairwise_corr_mi(z, n_pairs=n_pairs, seed=seed)
        zc = as_samples(z, max_samples=20000, seed=seed)
        paper = TABLE10.get(r.config.name)
        for k, (ax, (i, j)) in enumerate(zip(row, shown.pairs.tolist())):
            joint_histogram(zc[i], zc[j], bins=bins, ax=ax, labels=(f"filter {i}", f"filter {j}"),
                            title=f"r={shown.corr_per_pair[k]:.2f} MI={shown.mi_per_pair[k]:.2f}")
        row[0].set_title("")   # (its pair's numbers go into the row's left title)
        row[0].set_title(f"{r.config.paper}" + (f" (paper, all pairs: |corr| {paper[0]:.2f}, MI {paper[1]:.2f} nats)"
                                                 if paper else "")
                         + f"\nr={shown.corr_per_pair[0]:.2f} MI={shown.mi_per_pair[0]:.2f}", loc="left", fontsize=9)
    return fig


def _dataset(rec: dict) -> str:
    """The data set a CIFAR record ran on (``config.dataset``; records from before the key were CIFAR-10's)."""
    return (rec.get("config") or {}).get("dataset") or "cifar10"


_REPORT_INPUTS = ("bench.json", "bench_compile.json", "graph_check.json", "sweep/")


def report(out_dir, dataset: str | None = None) -> dict:
    """Summarize a folder of CIFAR run folders (a sweep's ``--out``, as ``ptb report`` and ``sr report`` take
    one), or a GPU trip's folder (``graph_check.json``, ``bench.json``, optional ``bench_compile.json`` (the same
    bench with ``impl="compile"``), ``sweep/``), into one dict: the runs (accuracy, steps, images/s), ``table``
    (:func:`results_table`: mean ± std per configuration beside the paper); for a trip also the card, single-run
    images/s per configuration and impl, where those come from (``bench_files``: each file's rows and recorded load
    averages, which configuration took which file's figure, and that the two were not measured interleaved), the gain
    of running the sweep's runs concurrently (``concurrent``: training seconds against training seconds,
    ``gain_compares`` says how; with the wall-time lower bound beside it), and the estimated training time of the
    whole Table 7 at that gain with the faster impl of each configuration. A folder with neither is a ValueError
    naming it.

    ``dataset`` (``"cifar10"`` or ``"cifar100"``) selects the runs reported (a record's ``config.dataset``; records
    without it are CIFAR-10's) and is the Table 7 estimate's; ``dataset`` names it in the result. A folder whose runs
    are all on other datasets is a ValueError naming the ones it has. ``None``: the dataset of the folder's runs
    (CIFAR-10 when it has none); a folder with runs on both must name one."""
    out_dir = Path(out_dir)
    trip = any((out_dir / f).exists() for f in _REPORT_INPUTS)
    if not trip:                 # a sweep's folder (or any folder of run folders): its CIFAR runs
        try:
            recipe_runs(RECIPE, out_dir)             # none: "<dir>: no run folders of cifar ... to report"
        except ValueError as e:
            raise ValueError(f"{e} (or give a GPU trip folder: {', '.join(_REPORT_INPUTS)})") from None
    read = lambda p: json.loads(p.read_text()) if p.exists() else None  # noqa: E731
    bench, check = read(out_dir / "bench.json") or [], read(out_dir / "graph_check.json")
    bench_c = read(out_dir / "bench_compile.json") or []
    sweep_dir = out_dir / "sweep" if trip else out_dir
    recs = [rec for _, rec in records.read_records([sweep_dir])] if sweep_dir.is_dir() else []
    recs = [r for r in recs if r.get("experiment") == RECIPE.name]
    have = sorted({_dataset(r) for r in recs})
    if dataset is None and len(have) > 1:
        raise ValueError(f"dataset: {sweep_dir} holds runs on {', '.join(have)}: name the one to report (--dataset)")
    dataset = dataset or (have[0] if have else "cifar10")
    if recs and dataset not in have:
        raise ValueError(f"dataset: {dataset}: no run in {sweep_dir} is on it; its runs are on {', '.join(have)}")
    recs = [r for r in recs if _dataset(r) == dataset]
    rows = [{"config": r["name"], "seed": r["seed"], "steps": r["steps_done"], "planned_steps": r["steps_planned"],
             "stopped": r["stopped"], "final_acc": r["headline"].get("final_acc"),
             "paper_acc": r["paper"].get("final_acc"), "images_per_s": r["headline"].get("images_per_s") or 0.0,
             "impl": r["config"].get("impl", "auto"), "batch_size": r["config"].get("batch_size", 100),
             **{k: r["config"].get("setup", {}).get(k) for k in ("mode", "data")}} for r in recs]
    meta = read(sweep_dir / "sweep.json") or {}
    single = {b["config"]: b["images_per_s"] for b in bench}
    single_c = {b["config"]: b["images_per_s"] for b in bench_c}
    best = {k: max(v, single_c.get(k, 0.0)) for k, v in single.items()}
    rep = {"dataset": dataset,
           "device": (bench[0]["device"] if bench else (recs[0].get("device") or {}).get("name") if recs else None),
           "torch": torch.__version__, "graph_check": check, "single_run_images_per_s": single, "runs": rows,
           "table": str(results_table(recs)) if recs else None}
    if single_c:
        rep["single_run_images_per_s_compile"] = single_c
        rep["best_images_per_s"] = best
    if single:
        rep["bench_files"] = _bench_files(bench, bench_c)
    if rows and meta.get("wall_seconds") and not meta.get("skipped"):   # a resumed sweep's wall time is partial
        images = sum(r["steps"] * r["batch_size"] for r in rows)
        rep["concurrent"] = {"jobs": meta.get("jobs"), "wall_seconds": meta["wall_seconds"],
                             "aggregate_images_per_s": images / meta["wall_seconds"]}
        # each run's single-process figure with the impl it ran (configs without a normalizer have no compiled one)
        used = {r["config"]: single_c.get(r["config"]) if r["impl"] == "compile" and r["config"] in single_c
                else single.get(r["config"]) for r in rows}
        if all(v for v in used.values()) and all(r["images_per_s"] for r in rows):
            rep["concurrent"].update(_gain(rows, used, meta["wall_seconds"]))
            gain = rep["concurrent"]["gain_vs_sequential"]
            if all(n in best for n in list_configs()):
                rep["table7_estimate_seconds"] = {
                    "sequential": estimate_seconds(best, dataset),
                    f"concurrent_{meta.get('jobs')}": estimate_seconds(best, dataset, speedup=gain)}
    return rep


_GAIN_TEXT = ("training seconds only, on both sides: the sequential runs' timed training steps at the single-run "
              "bench rates (bench.json/bench_compile.json: timed steps after the warm-up, no start-up, data decode, "
              "capture or evaluation) against the concurrent runs' timed training (each record's images/s: the same "
              "steps, timed while sharing the card), the longest of which stands for the sweep's training time. "
              "The sweep's training lasted at least that long (its runs did not all start training at once), so "
              "gain_vs_sequential is an upper bound; gain_vs_sequential_wall_bound (the same sequential seconds over "
              "the sweep's wall time, whose start-up, decode, capture and evaluations the numerator leaves out) is a "
              "lower bound. No whole-run wall time of a run alone is measured, so no wall-against-wall gain is given")


def _gain(rows: list, used: dict, wall: float) -> dict:
    """The concurrency gain of a sweep's ``rows`` (:data:`_GAIN_TEXT`): ``used`` is each run's single-run images/s
    (the impl it ran), ``wall`` the sweep's wall seconds."""
    sequential = sum(r["steps"] * r["batch_size"] / used[r["config"]] for r in rows)
    training = max(r["steps"] * r["batch_size"] / r["images_per_s"] for r in rows)
    return {"sequential_training_seconds": sequential, "concurrent_training_seconds": training,
            "gain_vs_sequential": sequential / training, "gain_vs_sequential_wall_bound": sequential / wall,
            "gain_compares": _GAIN_TEXT}


def _bench_files(bench: list, bench_c: list) -> dict:
    """Where the single-run figures come from: per bench file its rows and the load averages its rows recorded
    (``load_before``/``load_after`` of a bench that records them; None: not recorded; the rows record no time, and a
    file's modification time is its copy's, e.g. a clone's, so none is given); for every configuration in both files
    which one ``best_images_per_s`` took, with a note that the two files were measured in separate invocations (not
    interleaved), so their ratio may include a change of load or clocks between them."""
    out = {}
    for name, rows in (("bench.json", bench), ("bench_compile.json", bench_c)):
        if rows:
            loads = list(dict.fromkeys(r[k] for r in rows for k in ("load_before", "load_after") if r.get(k)))
            out[name] = {"rows": len(rows), "load_average": loads or None}
    auto = {b["config"]: b["images_per_s"] for b in bench}
    comp = {b["config"]: b["images_per_s"] for b in bench_c}
    both = [n for n in auto if n in comp]
    if both:
        out["picked"] = {n: {"file": "bench_compile.json" if comp[n] > auto[n] else "bench.json",
                             "compile_over_auto": comp[n] / auto[n]} for n in both}
        out["note"] = ("best_images_per_s takes per configuration the faster of bench.json and bench_compile.json: "
                       "two separate invocations, not interleaved"
                       + ("" if all(out[f]["load_average"] for f in ("bench.json", "bench_compile.json"))
                          else ", with no load average recorded")
                       + ", so compile_over_auto is not a like-for-like ratio: it may include a change of load or "
                         "clocks between the two")
    return out


