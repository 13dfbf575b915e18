"""Where the time of a normalized LSTM goes on the CPU: ``torch.profiler`` tables of forward + backward passes of the
recurrent stack at the PTB shape (2 x 200, batch 20 x 20 steps; issue 25's cell targets), per cell.

    .venv/bin/python scripts/profile_cells.py                          # LN*, DN*, base-lstm and nn.LSTM, 1 thread
    .venv/bin/python scripts/profile_cells.py --cells dn-star-lstm --rows 25 --out results/cpu/profile_cells.txt

Each table lists the operators by their own CPU time (``self_cpu_time_total``) over ``--repeat`` profiled passes
after two warm-up passes, with their call counts summed over those passes (divide by ``--repeat`` for the operators
one forward + backward calls). The figures are a profile (with the profiler's overhead), not a benchmark: ``make
bench`` gives the ratios.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dnlib import cli, sparse_penalty  # noqa: E402
from dnlib.analysis import rnn_bench as rb  # noqa: E402
from dnlib.experiments.ptb_configs import get_config, list_configs  # noqa: E402
from dnlib.io import atomic_write_text  # noqa: E402

CELLS = ("ln-star-lstm", "dn-star-lstm", "base-lstm", "nn.LSTM")


def _model(name: str, hidden: int, layers: int) -> nn.Module:
    if name == "nn.LSTM":
        return nn.LSTM(hidden, hidden, layers)
    return rb.CellStack(get_config(name).model_kwargs(), hidden, layers)


def profile(name: str, hidden: int = 200, layers: int = 2, steps: int = 20, batch: int = 20, repeat: int = 5,
            rows: int = 15) -> str:
    """The profiler's table of ``repeat`` forward + backward passes of the cell stack ``name``."""
    torch.manual_seed(0)
    model = _model(name, hidden, layers)
    x = torch.randn(steps, batch, hidden, requires_grad=True)

    # the loss of the bench's cell rows (dnlib.analysis.rnn_bench): the output plus the L1 terms; unlike those rows,
    # the input x also gets its gradient and the parameters' gradients accumulate over the passes (no zero_grad)
    def run():
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        (out.sum() + sparse_penalty(model)).backward()
    for _ in range(2):
        run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            run()
    head = (f"{name}: {layers} x {hidden}, batch {batch} x {steps} steps, {repeat} passes (forward + backward), "
            f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    return head + "\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="profile_cells.py", description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, from {', '.join(CELLS)} and the "
                    "PTB configurations (default: the four)")
    ap.add_argument("--rows", type=cli.positive_int, default=15, help="operators per table (default 15)")
    ap.add_argument("--repeat", type=cli.positive_int, default=5, help="profiled passes (default 5)")
    ap.add_argument("--threads", type=cli.positive_int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", type=cli.out_file, default=None, help="also write the tables to this file")
    a = ap.parse_args(argv)
    cells = [c for c in a.cells.split(",") if c]
    known = set(list_configs()) | {"nn.LSTM"}
    for c in cells:
        if c not in known:
            ap.error(f"--cells: unknown cell {c!r}; known are nn.LSTM and the PTB configurations ({', '.join(CELLS)}, "
                     "...)")
    torch.set_num_threads(a.threads)
    text = "\n\n".join(profile(c, repeat=a.repeat, rows=a.rows) for c in cells)
    if a.out:       # first: the file is written even when the reader of stdout stops early
        atomic_write_text(a.out, text + "\n")
    try:
        print(text, flush=True)
    except BrokenPipeError:     # `| head`: stop quietly (Python's recipe: no second error when stdout is closed)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
