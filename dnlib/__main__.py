"""``dnlib EXPERIMENT VERB ...`` (the console script) and ``python -m dnlib EXPERIMENT VERB ...``: one entry point
for the three experiments of the paper. ``dnlib cifar run bn-star --seeds 0`` is ``python -m dnlib cifar run
bn-star --seeds 0``: the experiment's one command line (:func:`dnlib.experiments.commands.main`), named ``dnlib cifar``
in its messages. ``dnlib --help`` lists the experiments, ``dnlib cifar --help`` the verbs.

Layer: command line (the top floor, beside the recipes); it imports the named experiment only.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import cli

#: experiment name -> (its module, what it is)
EXPERIMENTS = {
    "cifar": ("dnlib.experiments.cifar", "CIFAR-10/100 image classification (the paper's Tables 3, 7, 10)"),
    "ptb": ("dnlib.experiments.ptb", "Penn Treebank language modelling (Tables 4, 9)"),
    "sr": ("dnlib.experiments.sr", "super-resolution with SRCNN (Tables 5, 6)"),
    "analysis": ("dnlib.experiments.analysis", "why normalizers work: batch size, smoothness, stable LR, depth, "
                                               "invariance (notebook 08)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``EXPERIMENT VERB ...`` to that experiment's command line; a bad experiment name is one line on
    stderr, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = cli.ArgumentParser(prog="dnlib", usage="dnlib {" + ",".join(EXPERIMENTS) + "} VERB ...",
                           description="One entry point for the paper's three experiments: `dnlib cifar run bn-star "
                                       "--seeds 0` is `python -m dnlib cifar run bn-star --seeds 0`.",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="experiments:\n"
                                  + "\n".join(f"  {k:<8} {what}" for k, (_, what) in EXPERIMENTS.items())
                                  + "\n\n`dnlib EXPERIMENT --help` lists its verbs (run, sweep, gather, report, list, "
                                    "bench, ...).")
    p.add_argument("experiment", choices=list(EXPERIMENTS), help="the experiment")
    args = p.parse_args(argv[:1])           # the rest goes to the experiment untouched (its own --help included)
    from .experiments import commands
    module = importlib.import_module(EXPERIMENTS[args.experiment][0])
    return commands.main(module.RECIPE, argv[1:], prog=f"dnlib {args.experiment}")


if __name__ == "__main__":
    sys.exit(main())
