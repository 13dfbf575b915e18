"""Bad command lines (issue 11 §5): every ``python -m dnlib.*`` command answers a bad argument or output location
with ONE line on stderr and exit status 2, before any work starts and without creating any output.

The probes run in-process through each module's ``main(argv)``. The functions that do a command's work (training,
benchmarking, executing notebooks) are replaced by a tripwire for these probes: none of them may be reached, so a
probe whose bad value slips through fails at once instead of training for hours or spinning forever (``cifar run
--eval-every -1`` did); an alarm is the backstop.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from dnlib import bench
from dnlib.experiments import bench as benches
from dnlib.experiments import cifar, engines, ptb, records, runner, sr
from dnlib.norms import bench_layers
from dnlib.notebook import suite

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
MAINS = {"cifar": cifar.main, "ptb": ptb.main, "sr": sr.main, "bench": bench.main, "suite": suite.main}
# the work each command would start; reaching one of them in a probe is a failure
# a sweep's work starts at its engine (sweeps.sweep itself validates every run first, a0b45b5)
WORK = [(cifar, "run"), (cifar, "sweep"), (cifar, "bench"), (cifar, "check_graph"), (runner.Run, "go"),
        (engines, "make_engine"), (benches, "bench"), (benches, "check_graph"), (ptb, "bench"),
        (ptb, "check_graph"), (sr, "run"), (sr, "bench"), (bench, "layers_section"), (bench, "train_section"),
        (bench, "cells_section"), (bench, "ptb_section"), (bench, "hidden_section"), (suite, "execute")]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="probes the error when CUDA is absent")

# (command, argv, a fragment the one-line message must contain); {T} is a scratch folder holding `file` (a file),
# `empty/` (an empty folder), `bad.ipynb` and `bad.json` (not JSON) and `other.json` (JSON, not a result);
# {NB} is the suite's first notebook.
PROBES = [
    # -------------------------------------------------------------------------------------- cifar run
    ("cifar", ["run", "bn", "--eval-every", "-1"], "--eval-every"),    # spun forever
    ("cifar", ["run", "bn", "--steps", "0"], "--steps"),
    ("cifar", ["run", "bn", "--steps", "-3"], "--steps"),
    ("cifar", ["run", "bn", "--subset", "abc"], "--subset"),           # ValueError traceback
    ("cifar", ["run", "bn", "--subset", "0"], "--subset"),
    ("cifar", ["run", "bn", "--subset", "10,20,30"], "--subset"),
    ("cifar", ["run", "bn", "--subset", "-5,10"], "--subset"),
    ("cifar", ["run", "bn", "--time-limit", "-1"], "--time-limit"),
    ("cifar", ["run", "bn", "--lr", "-0.1"], "--lr"),
    ("cifar", ["run", "bn", "--lr", "nan"], "--lr"),
    ("cifar", ["run", "bn", "--seeds", "-1"], "--seeds"),
    ("cifar", ["run", "bn", "--seeds", "0", "0"], "--seeds"),
    ("cifar", ["run", "--resume", "{T}/empty", "--seeds", "0", "1"], "--seeds"),   # resumes one run
    ("cifar", ["run", "nosuch", "--subset", "200,100"], "nosuch"),
    ("cifar", ["run", "bn", "--subset", "50,20", "--batch-size", "100"], "give a larger --subset"),   # named batch_size
    ("cifar", ["run", "bn", "--device", "bogus"], "--device"),
    pytest.param("cifar", ["run", "bn", "--device", "cuda"], "cuda", marks=no_cuda),
    ("cifar", ["run", "bn", "--out", "{T}/file/run"], "--out"),        # crashed after eval_every steps
    ("cifar", ["run", "bn", "--out", "{T}/file"], "--out"),
    ("cifar", ["run", "bn", "--dataset", "cifar1000"], "--dataset"),
    ("cifar", ["run", "bn", "--bogus"], "--bogus"),
    ("cifar", [], "required"),
    # -------------------------------------------------------------------------------------- cifar sweep
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--jobs", "0"], "--jobs"),
    ("cifar", ["sweep", "bn", "--out", "{T}/file/sw"], "--out"),
    ("cifar", ["sweep", "nosuch", "--out", "{T}/sw"], "nosuch"),
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--seeds", "-1"], "--seeds"),
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--time-limit", "-5"], "--time-limit"),
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--status-every", "0"], "--status-every"),
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--eval-every", "-1"], "--eval-every"),  # passed on to each run
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--bogus"], "--bogus"),
    # a clash in the second configuration (trained the first, then failed in the second's process, exit 1)
    ("cifar", ["sweep", "base", "dn", "--out", "{T}/sw", "--impl", "fused"], "dn: impl: 'fused'"),
    ("cifar", ["sweep", "base", "bn", "--out", "{T}/sw", "--impl", "band", "--steps", "2"], "bn: impl: 'band'"),
    # ------------------------------------------------------------------------------- cifar gather/report
    ("cifar", ["gather", "{T}/missing"], "missing"),
    ("cifar", ["gather", "{T}/file"], "not a folder"),
    ("cifar", ["report", "{T}/missing"], "missing"),                   # wrote an empty summary
    ("cifar", ["report", "{T}/empty"], "bench.json"),
    # --------------------------------------------------------------------------- cifar bench/check-graph
    ("cifar", ["bench", "bn", "--steps", "0"], "--steps"),
    ("cifar", ["bench", "bn", "--warmup", "-1"], "--warmup"),
    ("cifar", ["bench", "bn", "--json", "{T}/file/b.json"], "--json"),
    ("cifar", ["bench", "nosuch"], "nosuch"),
    ("cifar", ["check-graph", "bn", "--steps", "0"], "--steps"),
    ("cifar", ["check-graph", "bn", "--subset", "1,2,x"], "--subset"),
    ("cifar", ["check-graph", "bn", "--json", "{T}/empty"], "--json"),
    # ------------------------------------------------------------------------------------------- ptb run
    ("ptb", ["run", "base-lstm", "--max-tokens", "-5"], "--max-tokens"),  # trained on all of PTB
    ("ptb", ["run", "base-lstm", "--epochs", "0"], "--epochs"),           # reported "completed"
    ("ptb", ["run", "base-lstm", "--epochs", "-1"], "--epochs"),
    ("ptb", ["run", "base-lstm", "--vocab", "1"], "--vocab"),             # trained
    ("ptb", ["run", "base-lstm", "--vocab", "20000"], "20000"),             # more than PTB's words
    ("ptb", ["run", "nosuch"], "nosuch"),
    ("ptb", ["run", "base-lstm", "--lr", "0"], "--lr"),
    ("ptb", ["run", "base-lstm", "--threads", "0"], "--threads"),
    ("ptb", ["run", "base-lstm", "--final-test-batch-size", "-1"], "--final-test-batch-size"),
    ("ptb", ["run", "base-lstm", "--final-test-batch-size", "0"], "--final-test-batch-size"),  # was: skip (none)
    ("ptb", ["run", "base-lstm", "--eval-every", "-1"], "--eval-every"),
    ("ptb", ["run", "base-lstm", "--mode", "maybe"], "--mode"),
    ("ptb", ["run", "base-lstm", "--graph", "off"], "unrecognized arguments: --graph"),   # retired
    ("ptb", ["run", "base-lstm", "--source", "book"], "--source"),
    ("ptb", ["run", "base-lstm", "--steps", "0"], "--steps"),
    ("ptb", ["run", "base-lstm", "--time-limit", "-5"], "--time-limit"),
    ("ptb", ["run", "base-lstm", "--out", "{T}/file/o"], "--out"),           # crashed after an epoch
    ("ptb", ["run", "base-lstm", "--max-tokens", "100", "--vocab", "50"], "max_tokens"),
    ("ptb", ["run", "base-lstm", "--device", "bogus"], "--device"),
    ("ptb", ["run", "base-lstm", "--seeds", "-1"], "--seeds"),
    ("ptb", ["run", "base-lstm", "--check-graph", "3"], "--check-graph"),   # now the check-graph command
    # ----------------------------------------------------------------------- ptb bench/check-graph/report
    ("ptb", ["bench", "--steps", "0"], "--steps"),
    ("ptb", ["bench", "nosuch"], "nosuch"),
    ("ptb", ["bench", "--json", "{T}/file/b.json"], "--json"),
    ("ptb", ["bench", "--threads", "-1"], "--threads"),
    ("ptb", ["check-graph", "base-lstm", "--steps", "0"], "--steps"),
    ("ptb", ["check-graph", "nosuch"], "nosuch"),
    ("ptb", ["check-graph", "base-lstm", "--json", "{T}/empty"], "--json"),
    ("ptb", ["sweep", "nosuch", "--out", "{T}/sw"], "nosuch"),
    ("ptb", ["sweep", "base-lstm", "--out", "{T}/sw", "--max-tokens", "-1"], "--max-tokens"),  # passed on to runs
    ("ptb", ["report", "{T}/missing"], "missing"),
    ("ptb", ["report", "{T}/empty"], "no run folders"),
    ("ptb", ["report", "{T}/empty", "--out", "{T}/file/rep"], "--out"),
    # ---------------------------------------------------------------------------------------------- sr
    ("sr", ["run", "--time-limit", "-5", "--out", "{T}/o"], "--time-limit"),  # ended with 0 steps
    ("sr", ["run", "--steps", "0", "--out", "{T}/o"], "--steps"),
    ("sr", ["run", "--eval-every", "-1", "--out", "{T}/o"], "--eval-every"),
    ("sr", ["run", "--scale", "5", "--out", "{T}/o"], "--scale"),
    ("sr", ["run", "fast", "--norm", "bogus", "--out", "{T}/o"], "bogus"),
    ("sr", ["run", "bogus", "--out", "{T}/o"], "bogus"),
    ("sr", ["run", "--train-set", "bogus", "--out", "{T}/o"], "bogus"),
    ("sr", ["run", "fast", "--root", "{T}/empty", "--out", "{T}/o"], "T91"),
    ("sr", ["run", "--out", "{T}/file/o"], "--out"),
    ("sr", ["run", "--sets", "Set99", "--out", "{T}/o"], "Set99"),
    ("sr", ["run", "--curve-sets", "Set99", "--out", "{T}/o"], "Set99"),
    ("sr", ["run", "--seeds", "-1", "--out", "{T}/o"], "--seeds"),
    ("sr", ["run"], "config"),
    # ----------------------------------------------- old spellings, retired (issue 24 item 3): argparse's own error
    ("cifar", ["train", "bn"], "invalid choice: 'train'"),
    ("ptb", ["train", "base-lstm"], "invalid choice: 'train'"),
    ("cifar", ["run", "bn", "--max-seconds", "60"], "unrecognized arguments: --max-seconds"),
    ("cifar", ["sweep", "bn", "--out", "{T}/sw", "--max-seconds", "60"], "--max-seconds"),
    ("ptb", ["run", "base-lstm", "--json", "{T}/r.json"], "unrecognized arguments: --json"),
    ("sr", ["run", "--config", "fast-bn"], "unrecognized arguments: --config"),
    ("cifar", ["sweep", "--config", "bn", "--out", "{T}/sw"], "--config"),
    ("cifar", ["sweep", "bn", "--seed", "1", "--out", "{T}/sw"], "--seed"),
    ("cifar", ["run", "bn", "--seed", "1"], "unrecognized arguments: --seed"),
    ("sr", ["run", "fast-bogus"], "bogus"),
    ("sr", ["run", "fast-dn*", "--lr", "0"], "--lr"),
    ("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--sets", "Set99"], "Set99"),
    ("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--engine", "bogus"], "--engine"),          # sweep engines
    ("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--gpus-per-run", "-1"], "--gpus-per-run"),
    ("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--gpus-per-run", "1.5"], "--gpus-per-run"),
    ("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--cpus-per-run", "0"], "--cpus-per-run"),
    ("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--address", "auto"], "--address"),       # without ray
    pytest.param("sr", ["sweep", "fast-dn*", "--out", "{T}/sw", "--gpus-per-run", "0.25"], "--gpus-per-run",
                 marks=no_cuda),
    # ------------------------------------- duplicates, devices torch parses but dnlib does not run, misnamed commands
    ("cifar", ["sweep", "bn-star", "--out", "{T}/sw", "--seeds", "0", "0"], "cifar sweep: error: seeds: 0 twice"),
    ("cifar", ["sweep", "bn-star", "bn-star", "--out", "{T}/sw"], "cifar sweep: error: configs: bn-star twice"),
    ("sr", ["sweep", "smoke-bn", "smoke-none", "--norm", "dn*", "--out", "{T}/sw"], "smoke-bn, smoke-none: both"),
    ("cifar", ["run", "bn", "--device", "mps"], "--device: 'mps' is not a device dnlib runs on"),
    ("cifar", ["run", "bn", "--device", "xpu"], "--device: 'xpu'"),
    ("cifar", ["run", "bn", "--device", "meta"], "--device: 'meta'"),
    ("cifar", ["run", "bn", "--device", "cpu:0"], "--device: 'cpu:0'"),
    ("cifar", ["sweep", "bn-star", "--out", "{T}/sw", "--lr", "nan"], "cifar sweep: error: --lr: nan"),
    ("cifar", ["run", "bn", "--seed", "0"], "cifar run: error: unrecognized arguments: --seed"),
    ("ptb", ["run", "nosuch"], "error: config: unknown PTB config 'nosuch'"),
    ("sr", ["bench", "nosuch"], "nosuch"),
    ("sr", ["report", "{T}/missing"], "missing"),
    ("sr", ["report", "{T}/empty"], "run folders"),
    # ------------------------------------------------------------------------------------------- bench
    ("bench", ["--repeat", "0"], "--repeat"),                                # StatisticsError
    ("bench", ["--repeat", "-3"], "--repeat"),
    ("bench", ["--groups", "foo"], "foo"),
    ("bench", ["--groups", ","], "--groups"),
    ("bench", ["--json", "{T}/file/b.json"], "--json"),                      # crashed after the benchmark
    pytest.param("bench", ["--device", "cuda"], "cuda", marks=no_cuda),
    ("bench", ["--sections", "cells,nosuch"], "nosuch"),
    ("bench", ["--sections", ","], "--sections"),
    ("bench", ["--out", "{T}/file/b.txt"], "--out"),
    ("bench", ["--figure", "{T}/file/f.png"], "--figure"),
    ("bench", ["--threads", "0"], "--threads"),
    # ------------------------------------------------------------------------------------------- suite
    ("suite", ["run", "--out", "{T}/o", "{T}/bad.ipynb"], "bad.ipynb"),      # JSONDecodeError, no file name
    ("suite", ["list", "{T}/bad.ipynb"], "bad.ipynb"),
    ("suite", ["run", "--out", "{T}/o", "nosuch-notebook"], "nosuch-notebook"),
    ("suite", ["run", "--out", "{T}/o", "--cell-timeout", "-5", "{NB}"], "--cell-timeout"),
    ("suite", ["run", "--out", "{T}/o", "--profile", "nosuch", "{NB}"], "nosuch"),
    ("suite", ["run", "--out", "{T}/file/o", "{NB}"], "--out"),
    ("suite", ["run", "--out", "{T}/o", "-p", "nosuch", "1", "{NB}"], "nosuch"),
]


class WorkStarted(BaseException):
    """Raised by the tripwires (a BaseException, so that no ``except Exception`` in a command hides it)."""


def _tree(root):
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_mtime_ns) for p in root.rglob("*")}


def _probe(command, argv, tmp_path, monkeypatch, capsys):
    """Run ``command``'s main on ``argv``; return (exit status, stderr lines, tree before, tree after)."""
    for module, name in WORK:
        def tripwire(*a, _name=f"{module.__name__}.{name}", **k):
            raise WorkStarted(_name)
        monkeypatch.setattr(module, name, tripwire)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.ipynb").write_text("{not json")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    first_nb = str(suite.discover()[0])
    argv = [a.replace("{T}", str(tmp_path)).replace("{NB}", first_nb) for a in argv]
    before = _tree(tmp_path)
    capsys.readouterr()

    def alarm(*_):
        raise WorkStarted("still running after 60 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        code = MAINS[command](argv)
    except SystemExit as e:
        code = e.code
    except WorkStarted as e:
        code = f"work started: {e}"
    except Exception as e:  # noqa: BLE001 - a traceback is what the probe reports
        code = f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err, before, _tree(tmp_path)


@pytest.mark.parametrize("command,argv,fragment", PROBES)
def test_bad_command_line_is_one_line_exit_2_and_writes_nothing(command, argv, fragment, tmp_path, monkeypatch,
                                                                capsys):
    code, err, before, after = _probe(command, argv, tmp_path, monkeypatch, capsys)
    assert code == 2, f"exit {code!r}; stderr: {err}"
    assert len(err) == 1, err
    assert fragment in err[0], err
    assert "error:" in err[0]
    assert after == before, "the command created or changed files"


# ----------------------------------------------------------------------------------------- the helpers
def test_one_line_keeps_every_line_of_a_message():
    from dnlib import cli
    assert cli.one_line("dataset X not found. Looked in:\n  /a\n  /b\nData root: /r") == \
        "dataset X not found. Looked in: /a; /b; Data root: /r"


@pytest.mark.parametrize("kind,value,ok", [
    ("positive_int", "3", 3), ("positive_int", "0", None), ("positive_int", "1.5", None),
    ("nonnegative_int", "0", 0), ("nonnegative_int", "-1", None),
    ("positive_float", "0.5", 0.5), ("positive_float", "0", None), ("positive_float", "inf", None),
    ("nonnegative_float", "0", 0.0), ("nonnegative_float", "-0.1", None), ("nonnegative_float", "nan", None),
    ("subset", "200", 200), ("subset", "200,50", (200, 50)), ("subset", "200,", None), ("subset", "a", None),
])
def test_argument_types(kind, value, ok):
    import argparse

    from dnlib import cli
    fn = getattr(cli, kind)
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match=value.replace("+", r"\+") or "empty"):
            fn(value)
    else:
        assert fn(value) == ok


def test_output_locations_are_checked_without_creating_anything(tmp_path):
    import argparse

    from dnlib import cli
    (tmp_path / "f").write_text("x")
    assert cli.out_dir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert cli.out_file(str(tmp_path / "a" / "r.json")) == str(tmp_path / "a" / "r.json")
    assert not (tmp_path / "a").exists()
    for fn, bad in ((cli.out_dir, tmp_path / "f"), (cli.out_dir, tmp_path / "f" / "x"), (cli.out_file, tmp_path),
                    (cli.out_file, tmp_path / "f" / "r.json"), (cli.in_dir, tmp_path / "nope"),
                    (cli.in_dir, tmp_path / "f"), (cli.in_file, tmp_path)):
        with pytest.raises(argparse.ArgumentTypeError, match=str(tmp_path)):
            fn(str(bad))


# ------------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_json_is_strict_json_and_leaves_no_temporary(tmp_path):
    from dnlib import io
    path = tmp_path / "sub" / "r.json"
    io.atomic_write_json(path, {"a": [1, 2.5]})
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}
    with pytest.raises(ValueError, match="r.json"):
        io.atomic_write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}   # the old file is untouched
    io.atomic_write_text(path.with_suffix(".md"), "| a |\n")
    assert path.with_suffix(".md").read_text() == "| a |\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json", "r.md"]


def test_atomic_writes_fsync_before_replace(tmp_path, monkeypatch):
    import os

    from dnlib import io
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    io.atomic_write_json(tmp_path / "a.json", [1])
    io.atomic_write_text(tmp_path / "a.md", "x")
    io.atomic_save(tmp_path / "a.pt", {"w": torch.ones(2)})
    replaced = [i for i, c in enumerate(calls) if c == "replace"]
    assert len(replaced) == 3 and all(calls[i - 1] == "fsync" for i in replaced), calls
    assert torch.load(tmp_path / "a.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------ the library behind the commands
@pytest.mark.parametrize("call,name", [
    (lambda: bench_layers.layers(repeat=0, verbose=False), "repeat"),
    (lambda: bench_layers.layers(size="huge", verbose=False), "size"),
    (lambda: cifar.bench("bn", None, steps=0), "steps"),
    (lambda: cifar.check_graph("bn", None, steps=0), "steps"),
    (lambda: ptb.bench("base-lstm", steps=0), "steps"),
    (lambda: sr.bench("fast-bn", warmup=-1), "warmup"),
    (lambda: cifar.run("bn", eval_every=-1), "eval_every"),   # spun forever
    (lambda: sr.run("none", "smoke", time_limit=-5), "time_limit"),  # ended with 0 steps
    (lambda: ptb.load_data(max_tokens=-5), "max_tokens"),  # trained on all of PTB
    (lambda: ptb.load_data(vocab=1), "vocab"),
])
def test_library_rejects_what_the_commands_reject(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------- progress (issue 23 item 2)
PTB_TINY = ["run", "ln-star-lstm", "--steps", "4", "--eval-every", "2", "--max-tokens", "3000", "--vocab", "200",
            "--hidden-size", "16", "--batch-size", "4", "--final-test-batch-size", "none", "--device", "cpu"]
needs_ptb = pytest.mark.skipif(not (MIRROR / "ptb" / "ptb.train.txt").is_file(), reason="no PTB in DNLIB_DATA")


@pytest.mark.parametrize("main, own", [(cifar.main, "--subset"), (ptb.main, "--max-tokens"), (sr.main, "--sets")])
def test_sweep_help_lists_the_run_options_it_passes_on(main, own, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    passed = out[out.index("run options, passed on to every run"):]
    for flag in ("--steps", "--eval-every", "--device", "--progress, --no-progress", own):
        assert flag in passed, flag


@pytest.mark.slow
@needs_ptb
@pytest.mark.parametrize("flag, shown", [("--progress", True), ("--no-progress", False), (None, False)])
def test_run_progress_flag(flag, shown, tmp_path, capfd, monkeypatch):
    """``--progress`` without a terminal (here): periodic lines on stderr, the last at the end; the default there
    and ``--no-progress``: none."""
    monkeypatch.delenv("DNLIB_PROGRESS", raising=False)
    assert ptb.main(PTB_TINY + ["--out", str(tmp_path)] + ([flag] if flag else [])) == 0
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ln-star-lstm s0:")]
    assert bool(lines) == shown, err[-2000:]
    if shown:
        assert "4/4" in lines[-1] and "\r" not in err


@pytest.mark.slow
@needs_ptb
def test_run_seeds_runs_each_seed_in_its_own_folder(tmp_path, capsys):
    """``run CONFIG --seeds 0 1`` (the issue's ``dnlib cifar run bn-star --seeds 0 1 2``): one run per seed, one
    after another, one folder and one printed line each."""
    assert ptb.main(PTB_TINY + ["--out", str(tmp_path), "--seeds", "1", "0"]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["seed"] for r in lines] == [1, 0] and all(r["stopped"] == "completed" for r in lines)
    folders = sorted(tmp_path.iterdir())
    assert len(folders) == 2 and sorted(records.read_record(d)["seed"] for d in folders) == [0, 1]


@pytest.mark.slow
@needs_ptb
def test_run_shows_a_bar_on_a_terminal_by_default(tmp_path):
    """With stderr on a terminal (a pty) and no flag, ``run`` draws a bar (carriage-return redraws)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # 24 x 100, as a terminal says
    env = {k: v for k, v in os.environ.items() if k != "DNLIB_PROGRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "dnlib.experiments.ptb", *PTB_TINY, "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:          # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=300)
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, tty[-2000:]
    assert "ln-star-lstm s0:" in tty and "4/4" in tty and "\r" in tty, tty[-2000:]
    assert json.loads(out.decode().strip().splitlines()[-1])["steps"] == 4


# ------------------------------------------------------------------------------- refused at argument time
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="probes a machine without CUDA")
@pytest.mark.parametrize("verb", ["run", "sweep"])
def test_impl_triton_on_a_cpu_without_the_interpreter_is_one_line_exit_2(verb, tmp_path):
    """`--impl triton` without CUDA and without TRITON_INTERPRET was a 56-64 line traceback at the first training
    step (the run folder made); it is refused with the arguments. A process of its own: the tests' conftest sets
    TRITON_INTERPRET=1 in this one."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "dnlib.experiments.cifar", verb, "dn-star", "--impl", "triton",
                        "--steps", "2", "--subset", "200,100", "--out", str(out)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(err) == 1 and "impl: 'triton'" in err[0] and "TRITON_INTERPRET=1" in err[0], err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["bench", "check-graph"])
def test_bench_and_check_graph_refuse_triton_on_the_cpu_before_loading_data(verb, tmp_path):
    """`bench`/`check-graph` make `run`'s checks before any data: `--impl triton --device cpu` without
    TRITON_INTERPRET was an `ok: false` row (exit 1) after the data load. The data root does not exist, so a
    command that loaded data first would fail on it instead."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["DNLIB_DATA"] = str(tmp_path / "no-data-here")
    r = subprocess.run([sys.executable, "-m", "dnlib.experiments.cifar", verb, "dn-star", "--impl", "triton",
                        "--device", "cpu", "--steps", "2", "--subset", "200,100"], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-3000:])
    assert len(err) == 1 and f"{verb}: error: impl: 'triton'" in err[0], err
    assert "device 'cpu'" in err[0] and "--impl auto or general" in err[0], err
    assert not r.stdout.strip() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ one entry point (issue 24 item 3)
def _dnlib_script() -> Path:
    """The console script that ``pip install -e .`` (``make setup``) puts beside this Python."""
    import sys
    return Path(sys.executable).parent / "dnlib"


_OWN: dict = {}   # experiment -> ``python -m dnlib.experiments.<experiment> list``, run once


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python -m dnlib", "dnlib"])
@pytest.mark.parametrize("experiment", ["cifar", "ptb", "sr"])
def test_one_entry_point_runs_each_experiment_like_its_module(how, experiment):
    """``dnlib EXPERIMENT VERB`` and ``python -m dnlib EXPERIMENT VERB`` are ``python -m dnlib.EXPERIMENT VERB``."""
    import subprocess
    import sys
    script = _dnlib_script()
    assert script.is_file(), f"{script}: no console script; run `make setup` (pip install -e .)"
    front = [sys.executable, "-m", "dnlib"] if how == "python -m dnlib" else [str(script)]
    if experiment not in _OWN:      # the module's own output, once per experiment for both fronts
        _OWN[experiment] = subprocess.run([sys.executable, "-m", f"dnlib.experiments.{experiment}", "list"],
                                          capture_output=True, text=True, timeout=300)
    own = _OWN[experiment]
    got = subprocess.run([*front, experiment, "list"], capture_output=True, text=True, timeout=300)
    assert got.returncode == own.returncode == 0, got.stderr[-2000:] + own.stderr[-2000:]
    assert got.stdout == own.stdout and len(got.stdout.splitlines()) > 3


@pytest.mark.parametrize("argv, fragment", [
    ([], "experiment"),
    (["nosuch", "run"], "nosuch"),
    (["cifar", "run", "bn", "--bogus"], "dnlib cifar run: error: unrecognized arguments: --bogus"),
    (["ptb", "run", "base-lstm", "--epochs", "0"], "dnlib ptb run: error: --epochs"),
])
def test_one_entry_point_bad_command_line_is_one_line_exit_2(argv, fragment, capsys):
    """Errors name the command as it was typed (``dnlib cifar``), one line, exit 2."""
    from dnlib.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and fragment in err[0], err


def test_dnlib_help_lists_the_experiments(capsys):
    from dnlib.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"  {k} " in out for k in ("cifar", "ptb", "sr"))
