"""The command-line grammar of ``run`` and ``sweep`` (their flags), shared by the command line
(:mod:`.commands`) and by :func:`dnlib.experiments.sweep.check_runs`, which checks a sweep's runs as ``run`` would;
:func:`from_args` reads a parsed ``run`` line's configuration fields and options (the recipe's and the runner's)."""
from __future__ import annotations

import argparse

from .. import cli
from . import engines
from .recipe import Recipe

__all__ = ["Refusing", "run_flags", "schedule_flags", "passed_on_flags", "passed_on_help", "sweep_flags",
           "from_args"]


class Refusing(cli.ArgumentParser):
    """``run``'s parser for checking a sweep's run arguments: an error is a ValueError, not an exit."""

    def error(self, message):  # noqa: D401 - argparse's signature
        message = cli.one_line(message)
        raise ValueError(message[len("argument "):] if message.startswith("argument ") else message)


# ------------------------------------------------------------------------------------------------- CLI
def run_flags(q: argparse.ArgumentParser, recipe: Recipe) -> None:
    q.add_argument("config", nargs="?", default=None, help="configuration name (see `list`)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=None, metavar="S",
                   help="one run per seed, one after another, each in its own folder (default 0, or the resumed "
                        "run's; --resume: at most one)")
    q.add_argument("--time-limit", type=cli.positive_float, default=None,
                   help="seconds: stop at the first chunk boundary where the next chunk would not fit")
    q.add_argument("--out", type=cli.out_dir, default=None,
                   help=f"base folder: the run gets a new folder in it (default runs/{recipe.name})")
    q.add_argument("--resume", type=cli.out_dir, default=None, metavar="DIR",
                   help="a run folder: continue its checkpoint (or start there)")
    passed_on_flags(q, recipe)


def schedule_flags(q) -> None:
    """``--steps`` and ``--stop-after``, one meaning each in every experiment (``run``, ``sweep``, ``stack``):
    ``--steps`` shortens (or lengthens) the schedule, its learning-rate decay scaled; ``--stop-after`` interrupts it."""
    q.add_argument("--steps", type=cli.positive_int, default=None, metavar="N",
                   help="the schedule's length: shortened (or lengthened) to N steps, its learning-rate decay scaled "
                        "to them (CIFAR, SR: the milestones; PTB: the per-epoch halving)")
    q.add_argument("--stop-after", type=cli.positive_int, default=None, metavar="N",
                   help="stop at step N with the schedule unchanged (an interruption: --resume continues it)")


def passed_on_flags(q, recipe: Recipe) -> None:
    """The ``run`` flags that ``sweep`` passes on to every run (listed in ``sweep --help``)."""
    schedule_flags(q)
    q.add_argument("--device", type=cli.device, default=None, help="auto, cpu, cuda[:N] (default auto)")
    q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (periodic lines when stderr is not a terminal); "
                        "default: on when stderr is a terminal")
    q.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="let CUDA convolutions and matrix products use TF32 (faster on A100/H100, a different "
                        "arithmetic: a different experiment); default off: float32, the paper's arithmetic (torch's "
                        "own default, TF32 convolutions, is turned off for the run); a resume keeps the run's")
    recipe.add_arguments(q, "run")


def from_args(recipe: Recipe, args: argparse.Namespace) -> tuple[dict, dict]:
    """``(overrides, options)`` of a parsed ``run`` line: the recipe's (:meth:`Recipe.from_args`) and the runner's own
    options that were given (``--tf32``: ``tf32``, :data:`dnlib.experiments.resume.RUNNER_OPTIONS`)."""
    overrides, options = recipe.from_args(args)
    if getattr(args, "tf32", None) is not None:
        options["tf32"] = args.tf32
    return overrides, options


def passed_on_help(recipe: Recipe) -> str:
    """``sweep --help``'s list of the run flags it passes on."""
    hp = cli.ArgumentParser(add_help=False, usage=argparse.SUPPRESS)
    passed_on_flags(hp.add_argument_group("run options, passed on to every run (see run --help)"), recipe)
    return hp.format_help()


def sweep_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("configs", nargs="*", help="configuration names ('all': every one)")
    q.add_argument("--seeds", type=cli.seed, nargs="+", default=[0])
    q.add_argument("--engine", choices=engines.ENGINES, default="local",
                   help="local: processes on this machine (default); ray: Ray tasks on a cluster (dnlib[ray])")
    q.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="the Ray cluster to join (--engine ray; default: start a Ray instance here for the sweep)")
    q.add_argument("--jobs", type=cli.positive_int, default=None,
                   help="runs at a time (local: default 1; ray: at most this many in flight, default no cap)")
    q.add_argument("--cpus-per-run", type=cli.positive_float, default=None,
                   help="CPUs (threads) of each run (ray: its num_cpus, default 1; local: default cores // jobs "
                        "for CPU runs of 2+ jobs unless OMP_NUM_THREADS is set, else unchanged)")
    q.add_argument("--gpus-per-run", type=engines.gpu_share, default=None,
                   help="GPUs of each run: a fraction packs runs on one GPU (0.25: four), or a whole number")
    q.add_argument("--out", type=cli.out_dir, required=True, help="the sweep's folder (a rerun resumes it)")
    q.add_argument("--time-limit", type=cli.positive_float, default=None, help="seconds per run")
    q.add_argument("--status-every", type=cli.positive_float, default=30.0, help="seconds between status lines")
