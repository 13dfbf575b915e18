"""What PTB runs show, beside the paper's Table 9: the perplexity table (:func:`results_table`), the curves per
epoch (:func:`perplexity_curves`), the numbers a notebook saves (:func:`summary`) and the report of a folder of
run folders (:func:`report`; ``python -m dnlib ptb report runs/ptb/sweep``: table.md, curves.png, summary.json)::

    from dnlib.experiments import ptb, ptb_report
    results = ptb.run_many(["base-lstm", "dn-star-lstm"], max_tokens=16000, vocab=500, epochs=1, hidden_size=32)
    ptb_report.results_table(results), ptb_report.perplexity_curves(results)
    ptb_report.report("results/records/ptb", out="/tmp/ptb-report")

Each takes RunResults or run folders (:func:`dnlib.experiments.sweep.load_runs`).
"""
from __future__ import annotations

from pathlib import Path

from ..analysis.curves import run_curves
from ..analysis.figures import MarkdownTable, cell, markdown_table
from ..io import atomic_write, atomic_write_json, atomic_write_text
from . import aggregate, records, tables
from .ptb import RECIPE
from .ptb_configs import get_config, list_configs
from .recipe import row_label
from .runner import recipe_runs
from .sweep import load_runs

__all__ = ["results_table", "perplexity_curves", "summary", "report"]


def _runs(results) -> list:
    """``[(key, record, rows)]`` of RunResults or run folders (:func:`dnlib.experiments.sweep.load_runs`); the key is
    the
    configuration's name, with the seed where two runs share it."""
    out = load_runs(results)
    names = [rec["name"] for rec, _ in out]
    return [(n if names.count(n) == 1 else f"{n}-s{rec['seed']}", rec, rows) for n, (rec, rows) in zip(names, out)]


def _epochs(rec: dict, rows: list) -> list:
    """The evaluation rows with ``epoch`` (steps / batches per epoch) and ``seconds`` of training since the last."""
    per_epoch = rec["config"]["setup"]["batches_per_epoch"]
    out, prev = [], 0.0
    for r in rows:
        if r.get("valid_ppl") is not None:
            out.append({**r, "epoch": r["step"] / per_epoch, "seconds": r["time"] - prev})
            prev = r["time"]
    return out


def _streams(batch_sizes) -> str:
    """How the per-epoch test perplexity was laid out: ``"20 streams"`` when every run used one batch size (its
    training streams), else ``"training streams"``."""
    sizes = set(batch_sizes)
    return f"{sizes.pop()} streams" if len(sizes) == 1 and None not in sizes else "training streams"


_FMT = {"epochs": ".2f", "valid_ppl": ".1f", "test_ppl": ".1f", "final_test_ppl": ".1f", "tokens_per_s": ".0f"}


def results_table(results, unigram: float | None = None) -> MarkdownTable:
    """Our perplexities (mean ± std over completed runs, :func:`dnlib.experiments.aggregate.summarize`; runs that
    stopped early counted in n and named, not averaged: theirs are the numbers of a shorter schedule) beside the
    paper's Table 9 (the paper's: 13 epochs on all of PTB, one-stream test), tokens/s, ``n`` (runs)
    and ``run as`` (:func:`dnlib.experiments.pooling.run_as`), the columns of every experiment's results table; the
    unigram bar last."""
    rows_of, out = {n: get_config(n).row for n in list_configs()}, []
    summary = aggregate.summarize(results, list(_FMT), finished=True)
    for s in summary:
        ours = [tables.format_mean_std(s[k], s[f"{k}_std"], s[f"{k}_n"], f) for k, f in _FMT.items()]
        out.append([row_label(s, s["name"]) + (f" [{s['split']}]" if s.get("split") else ""), rows_of.get(s["name"]),
                    *ours[:4],
                    cell(s["paper_final_test_ppl"], ".3f"), ours[4], s["n"], s.get("run_as") or None])
    if unigram is not None:
        out.append(["unigram (train counts)", None, None, f"{unigram:.1f}"] + [None] * 6)
    streams = _streams(s.get("what", {}).get("batch_size") for s in summary)
    return markdown_table(["name", "Table 9 row", "epochs", "valid ppl", f"test ppl ({streams})",
                           "test ppl (one stream)", "paper test ppl", "tokens/s", "n", "run as"], out)


def perplexity_curves(results):
    """Validation and test perplexity per epoch, one line per run (log scale); the paper's test perplexity dashed."""
    from matplotlib.ticker import ScalarFormatter
    runs = _runs(results)
    streams = _streams(rec["config"].get("batch_size") for _, rec, _ in runs)
    fig, axes = run_curves([(key, _epochs(rec, rows), {"test_ppl": rec["paper"].get("final_test_ppl")})
                            for key, rec, rows in runs],
                           [{"key": "valid_ppl", "marker": "o", "title": "validation", "yscale": "log"},
                            {"key": "test_ppl", "marker": "o", "title": f"test ({streams}); dashed: the paper's",
                             "yscale": "log", "paper": "test_ppl"}], x="epoch", figsize=(9, 3.4), sharey=True)
    for ax in axes:
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("perplexity")
    axes[1].legend(fontsize=8)
    return fig


def summary(results) -> dict:
    """The numbers a notebook saves (:func:`dnlib.notebook.suite.save_results`): the summaries of
    :func:`results_table`."""
    return {"runs": aggregate.summarize(results, list(_FMT), finished=True)}


def report(path, out=None) -> dict:
    """The runs under ``path`` (run folders) into ``out`` (default ``path``): ``table.md`` (:func:`results_table`
    and the card and seconds per epoch), ``curves.png`` (:func:`perplexity_curves`), ``summary.json``
    (per run: its headline numbers, the paper's, card, lr, epochs planned, seconds per epoch, tokens/s and the
    per-epoch perplexities). Returns the summary."""
    dirs = list(recipe_runs(RECIPE, path))
    out, summary = Path(out if out is not None else path), {}
    runs = _runs(dirs)
    keys = [key for key, _, _ in runs]
    for d, (key, rec, rows) in zip(dirs, runs):
        key = key if keys.count(key) == 1 else Path(d).name     # one seed run twice (a CPU and a GPU run): by folder
        setup, ev, head = rec["config"]["setup"], _epochs(rec, rows), rec["headline"]
        chunks = [e["seconds"] for e in ev if e["seconds"] > 0]
        # runs converted from older results (results/records) did not record eval_every: no seconds per epoch
        every = setup.get("eval_every")
        per_epoch = sum(chunks) / len(chunks) * setup["batches_per_epoch"] / every if chunks and every else None
        summary[key] = {**{k: head.get(k) for k in ("epochs", "valid_ppl", "test_ppl", "final_test_ppl")},
                        "paper_test_ppl": rec["paper"].get("final_test_ppl"), "config": rec["name"],
                        "source": rec["config"]["source"], "stopped": rec["stopped"], "run": str(d),
                        "card": setup.get("card"), "torch": (rec.get("versions") or {}).get("torch"),
                        "lr": rec["config"]["lr"], "epochs_planned": rec["config"]["epochs"],
                        "seconds_per_epoch": per_epoch, "tokens_per_s": head.get("tokens_per_s"),
                        "valid_ppl_per_epoch": [e["valid_ppl"] for e in ev],
                        "test_ppl_per_epoch": [e["test_ppl"] for e in ev]}
    table = markdown_table(["name", "card", "s / epoch (training)", "lr"], [
        [n, v["card"], cell(v["seconds_per_epoch"], ".0f"), f"{v['lr']:g}"] for n, v in summary.items()])
    atomic_write_text(out / "table.md", f"{results_table(dirs)}\n\n{table}\n")
    fig = perplexity_curves(dirs)
    atomic_write(out / "curves.png", lambda f: fig.savefig(f, format="png", dpi=110))
    atomic_write_json(out / "summary.json", records.jsonable(summary), indent=1)
    return summary
