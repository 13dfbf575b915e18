"""The committed results' figures, drawn from run records (results/records by default).

    .venv/bin/python scripts/results_figures.py                  # -> results/figures/*.png
    .venv/bin/python scripts/results_figures.py --records runs/cifar/sweep --out runs/cifar/sweep/figures

- ``cifar_table7.png``: CIFAR-10 test accuracy per Table 7 row, ours (mean, ±std over seeds where n > 1) beside
  the paper's; rows not run are marked;
- ``cifar_table10.png``: Table 10's first-layer filter-pair correlation and MI, ours beside the paper's;
- ``sr_table5.png``, ``sr_table6.png``: Set14 / BSD200 x3 PSNR and SSIM beside Tables 5 and 6;
- ``ptb_curves.png``: validation and test perplexity per epoch, mean and ±std band over runs, one line per
  configuration and card (the CPU's full runs and the H100's capped ones are different runs, not seeds).

A --records that is missing or holds no run folder, or an --out that cannot be a folder, is refused in one line
(exit 2) before anything is drawn or written.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnlib import cli  # noqa: E402
from dnlib.analysis import curves, figures  # noqa: E402
from dnlib.experiments import aggregate, records, tables  # noqa: E402


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="results_figures.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=cli.in_dir, default=str(ROOT / "results/records"),
                   help="run folders (default results/records)")
    p.add_argument("--out", type=cli.out_dir, default=str(ROOT / "results/figures"), help="default results/figures")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not records.find_runs([args.records]):
        p.error(f"--records: {args.records} holds no run folder (record.json); {out} is left as it was")
    with cli.user_errors(p):            # a folder without the runs a figure needs: one line, nothing written
        made = _figures(args.records)
    out.mkdir(parents=True, exist_ok=True)
    for name, f in made.items():
        f.savefig(out / name, dpi=110)
        print(out / name)
    return 0


def _figures(runs: str) -> dict:
    """``{file name: figure}`` of the runs under ``runs``."""
    made = {"cifar_table7.png": tables.compare_figure(runs, "table7"),
            "cifar_table10.png": tables.compare_figure(runs, "table10"),
            "sr_table5.png": tables.compare_figure(runs, "table5"),
            "sr_table6.png": tables.compare_figure(runs, "table6")}
    fig = figures.new_figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    for ax, metric, title in ((left, "valid_ppl", "PTB validation perplexity"),
                              (right, "test_ppl", "PTB test perplexity (20 streams)")):
        bands = aggregate.curve_bands(runs, metric, x="epoch", by=("name", "device"))
        curves.band_curves(bands, ax, marker="o", xlabel="epoch", ylabel="perplexity", title=title)
    made["ptb_curves.png"] = fig
    return made


if __name__ == "__main__":
    sys.exit(main())
