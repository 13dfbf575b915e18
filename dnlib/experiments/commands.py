"""One command-line grammar for every experiment, one handler per verb: ``dnlib <experiment> {run, sweep, gather,
report, list}`` plus the recipe's own commands (``bench``, ``check-graph``, ``stack``, ...). Bad arguments: one
line on stderr, exit 2, before any work; a diverged run: one line, exit 1."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import cli
from ..io import atomic_write_json
from ..training import distributed
from ..training.checkpoints import CheckpointError
from ..training.trainer import TrainingDiverged
from . import engines, records
from .claim import RunInUse
from .flags import from_args, passed_on_help, run_flags, sweep_flags
from .recipe import Recipe, check_config
from .runner import Terminated, prepare, sigterm_as_interrupt
from .sweep import gather, gather_table, sweep

__all__ = ["main"]


def _run_command(recipe: Recipe, args, q, argv) -> int:
    name, seeds = args.config, args.seeds or [None]
    if args.out is not None and args.resume is not None:
        q.error("--out, --resume: give one (--out: a base folder for a new run; --resume: the run's folder)")
    if name is None and args.resume is None:
        q.error("config: the following arguments are required: config (or --resume DIR)")
    if args.resume is not None and len(seeds) > 1:
        q.error(f"--seeds: --resume continues one run; give one seed, not {len(seeds)}")
    if len(set(seeds)) < len(seeds):
        q.error(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    overrides, options = from_args(recipe, args)
    with cli.user_errors(q):    # a bad name or field, an impl or batch this machine cannot run: before any data
        if name is not None:
            check_config(recipe, recipe.config(name, steps=args.steps, **overrides), args.device)
    code = 0
    for seed in seeds:          # one after another, each in its own folder; a diverged run does not stop the rest
        one, go_on = _run_one(recipe, args, q, argv, seed, overrides, options)
        code = max(code, one)
        if not go_on:
            break
    return code


def _run_one(recipe: Recipe, args, q, argv, seed, overrides, options) -> tuple[int, bool]:
    """One run of ``run``: its exit status (0; 1: diverged or a full disk, one line; 2: a foreign or unreadable
    checkpoint, one line; 130 / 143: interrupted by Ctrl-C / SIGTERM, one line) and whether the next seed may start
    (not after a full disk, a bad checkpoint or an interrupt)."""
    out = args.out if args.resume is not None or args.out is not None else str(Path("runs") / recipe.name)
    try:
        with cli.user_errors(q, RunInUse):     # (a folder another run trains in: refused before the build)
            progress = sys.stderr.isatty() if args.progress is None else args.progress
            prepared = prepare(recipe, args.config, seed=seed, steps=args.steps, stop_after=args.stop_after,
                               time_limit=args.time_limit,
                               out=None if args.resume else out, resume=args.resume, device=args.device,
                               overrides=overrides, options=options, argv=argv, progress=progress)
    except CheckpointError as e:        # another run's (or an unreadable) checkpoint: nothing trained
        print(f"{q.prog}: error: {cli.one_line(e)}", file=sys.stderr)
        return 2, False
    try:
        res = prepared.go()
    except KeyboardInterrupt as e:     # Ctrl-C or SIGTERM: the record says "interrupted at step N"; one line
        if distributed.is_main() and prepared.run_dir is not None:
            try:
                said = f"{records.read_record(prepared.copy_dirs[0])['stopped']}; {records.RECORD_FILE} says so"
            except (OSError, ValueError):       # (stopped before its record was first written)
                said = "interrupted"
            print(f"{q.prog}: {said}; --resume {prepared.run_dir} continues it", file=sys.stderr)
        return (143 if isinstance(e, Terminated) else 130), False
    except TrainingDiverged as e:      # the record says "diverged at step N"; exit 1, one line
        print(f"{q.prog}: {cli.one_line(e)}", file=sys.stderr)
        return 1, True
    except OSError as e:               # a full disk: "No space left on device: <file>" (dnlib.io), exit 1, one line
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{q.prog}: error: {e.strerror}", file=sys.stderr)
        return 1, False
    if not distributed.is_main():       # under torchrun: rank 0 alone reports
        return 0, True
    rec = res.record
    print(json.dumps({"run": str(res.run_dir) if res.run_dir else None, "name": rec["name"], "seed": rec["seed"],
                      "steps": rec["steps_done"], "planned": rec["steps_planned"], "stopped": rec["stopped"],
                      **rec["headline"], **{f"paper_{k}": v for k, v in rec["paper"].items()}}), flush=True)
    return 0, True


@contextlib.contextmanager
def _warnings_as_lines(prog: str):
    """Each run folder skipped inside (:class:`dnlib.experiments.records.RecordWarning`) as one line ``<prog>: warning:
    <message>`` on stderr; other warnings are shown as usual."""
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", records.RecordWarning)
            yield
    finally:
        for w in caught:
            if issubclass(w.category, records.RecordWarning):
                print(f"{prog}: warning: {cli.one_line(w.message)}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


@dataclass
class _Call:
    """One command line, parsed: what a verb's handler gets (``q``: the verb's own parser, for its errors;
    ``rest``: the flags ``sweep`` passes on to each run)."""
    recipe: Recipe
    args: argparse.Namespace
    q: argparse.ArgumentParser
    argv: list
    rest: list
    run_parser: argparse.ArgumentParser
    commands: dict


def _parser(recipe: Recipe, prog: str | None):
    """The experiment's parser: (it, its sub-parsers' action, the ``run`` parser, the recipe's own commands)."""
    p = cli.ArgumentParser(prog=prog or f"python -m dnlib {recipe.name}", description=recipe.description)
    sub = p.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="train one configuration")
    run_flags(run_p, recipe)
    sweep_flags(sub.add_parser(
        "sweep", help="configurations x seeds as concurrent runs in one resumable folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=passed_on_help(recipe) + "\nExit status: the number of failed runs (0: every run completed or "
                                         "reached its time limit);\n2 also for a bad argument (one line, nothing "
                                         "started)."))
    q = sub.add_parser("gather", help="one table of the run folders at or under PATHs")
    q.add_argument("paths", nargs="+", type=cli.in_dir)
    q.add_argument("--out", type=cli.out_file, default=None, help="also write the rows here (JSON)")
    q = sub.add_parser("report", help="the experiment's tables and figures of the runs under PATH")
    q.add_argument("path", type=cli.in_dir)
    recipe.add_arguments(q, "report")
    sub.add_parser("list", help="the configuration names")
    commands = recipe.commands()
    for cname, command in commands.items():
        q = sub.add_parser(cname, help=command.help)
        command.add_arguments(q)
        if command.rows:
            q.add_argument("--json", type=cli.out_file, default=None, help="also write the rows here (JSON)")
    return p, sub, run_p, commands


def _sweep_verb(c: _Call) -> int:
    names = list(c.args.configs)
    if not names:
        c.q.error("configs: the following arguments are required: configs")
    with cli.user_errors(c.q):
        names = c.recipe.expand(names)
    c.run_parser.prog = c.q.prog        # its refusals are this sweep's (not "... run: error:")
    run_args = c.run_parser.parse_args([names[0], *map(str, c.rest)])   # the flags passed on to each run, checked
    if run_args.out or run_args.resume or run_args.seeds is not None:
        c.q.error("--out/--resume: sweep places each run itself; use --out and --seeds of sweep")
    overrides, options = from_args(c.recipe, run_args)
    a = c.args
    # sweep checks, once and before any run: the engine's arguments (EngineError: named as the flag), each run's
    # options as `run` checks them and the folders a rerun resumes (ValueError: one line)
    with cli.user_errors(c.q):
        try:
            with sigterm_as_interrupt():      # SIGTERM as Ctrl-C: the runs in flight are stopped and record where
                rows = sweep(c.recipe, names, a.seeds, out=a.out, jobs=a.jobs, engine=a.engine, address=a.address,
                             cpus_per_run=a.cpus_per_run, gpus_per_run=a.gpus_per_run, time_limit=a.time_limit,
                             status_every=a.status_every, run_args=c.rest, options={**overrides, **options})
        except engines.EngineError as e:     # a bad engine argument, no Ray cluster there, too few GPUs
            key, _, what = str(e).partition(":")   # named as the flag: "gpus_per_run: ..." -> "--gpus-per-run: ..."
            c.q.error(f"--{key.replace('_', '-')}:{what}")
        except KeyboardInterrupt as e:
            print(f"{c.q.prog}: interrupted: the runs in flight were stopped and their records say where; a rerun "
                  f"resumes them and keeps the finished ones", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
    print(gather_table(rows))
    return min(len(rows.failed), 125) if rows else 1


def _run_verb(c: _Call) -> int:
    return _run_command(c.recipe, c.args, c.q, c.argv)


def _gather_verb(c: _Call) -> int:
    with cli.user_errors(c.q), _warnings_as_lines(c.q.prog):   # a skipped run folder: one line each
        rows = gather(c.args.paths)
    if not rows:
        c.q.error(f"{' '.join(c.args.paths)}: no run folders (with {records.RECORD_FILE}) to gather")
    if c.args.out:
        atomic_write_json(c.args.out, rows)
    from . import tables  # figures and matplotlib only when a table is printed
    text, notes = tables.gather_printout(rows)
    for note in notes:          # runs not pooled, seeds counted once: one line each
        print(f"{c.q.prog}: warning: {note}", file=sys.stderr)
    print(text)
    return 0


def _report_verb(c: _Call) -> int:
    with cli.user_errors(c.q, CheckpointError), _warnings_as_lines(c.q.prog):  # a crafted checkpoint
        rep = c.recipe.report(c.args.path, c.args)
    print(json.dumps(records.jsonable(rep), indent=1))
    return 0


def _list_verb(c: _Call) -> int:
    print("\n".join(c.recipe.configs()))
    return 0


def _command_verb(c: _Call) -> int:
    """A recipe's own command (``bench``, ``check-graph``, ``stack``, ...); one JSON line per row it yields."""
    command = c.commands[c.args.cmd]
    if not command.rows:
        return command.handler(c.args, c.q)
    out = []
    for row in command.handler(c.args, c.q):
        print(json.dumps(row), flush=True)
        out.append(row)
    if c.args.json:
        atomic_write_json(c.args.json, out)
    return 1 if any(r.get("ok") is False for r in out) else 0     # (ok None: a check not applicable, its why)


_VERBS: dict[str, Callable[[_Call], int]] = {"run": _run_verb, "sweep": _sweep_verb, "gather": _gather_verb,
                                             "report": _report_verb, "list": _list_verb}


def main(recipe: Recipe, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``dnlib <experiment> {run,sweep,gather,report,list,bench,...}`` (or ``python -m <recipe.module> ...``; ``prog``
    names the command in messages, default ``python -m dnlib <recipe.name>``): the one grammar of every experiment, one
    handler per verb (``_VERBS``; the recipe's own commands: ``_command_verb``).
    Bad arguments: one line on stderr, exit 2, before any work; a diverged run: one line, exit 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p, sub, run_p, commands = _parser(recipe, prog)
    args, rest = p.parse_known_args(argv)
    if rest and args.cmd != "sweep":        # sweep passes the rest on to its runs (checked there)
        sub.choices[args.cmd].error(f"unrecognized arguments: {' '.join(rest)}")   # named as the verb's
    call = _Call(recipe, args, sub.choices[args.cmd], argv, rest, run_p, commands)
    return _VERBS.get(args.cmd, _command_verb)(call)
