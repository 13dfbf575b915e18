"""Resume trusts only a checkpoint it can read safely and that belongs to the requested run (issue 11, item 2).

A checkpoint is loaded with ``torch.load(weights_only=True)``: a crafted pickle never runs. The run identity stored in
it (seed, schedule, configuration) is compared with the requested one, and a mismatch stops with an error naming
both. An empty, truncated or garbage file gives an error that names the file and says what to do.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dnlib import make_norm
from dnlib.data.loader import TensorBatches
from dnlib.training.checkpoints import CheckpointError
from dnlib.training.graphs import GraphTrainer
from dnlib.training.trainer import TrainConfig, Trainer

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
needs_cifar = pytest.mark.skipif(
    not ((MIRROR / "cifar10-jpeg" / "train").is_dir() or (MIRROR / "cifar-10-batches-py").is_dir()),
    reason=f"CIFAR-10 not in DNLIB_DATA={MIRROR}")


def _problem(seed=0):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_norm("bn", 4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(4 * 36, 2))
    return model, TensorBatches(x, y, batch_size=16, seed=7)


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _cfg(steps, **kw):
    base = dict(steps=steps, lr=0.05, milestones=(6,), eval_every=4, checkpoint_every=4, log_every=2, device="cpu",
                progress=False)
    return TrainConfig(**{**base, **kw})


def _trainer(out, steps=4, cls=Trainer, **kw):
    model, data = _problem()
    return cls(model, _loss, data, _cfg(steps, **kw), out_dir=out)


# --------------------------------------------------------------------------------------- safe loading
class _Payload:
    """Unpickling this object calls ``open(marker, "w")``, i.e. creates a file: a stand-in for any payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return io.open, (self.marker, "w")


def test_a_crafted_pickle_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    torch.save({"step": 1, "payload": _Payload(marker)}, out / "checkpoint.pt")
    assert not marker.exists()
    tr = _trainer(out)
    with pytest.raises(CheckpointError) as e:
        tr.fit()
    assert not marker.exists(), "the checkpoint's payload ran"
    msg = str(e.value)
    assert str(out / "checkpoint.pt") in msg and "\n" not in msg
    assert tr.step == 0


def test_checkpoint_loads_with_weights_only_and_rng_state_is_plain(tmp_path):
    tr = _trainer(tmp_path)
    tr.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)   # raises if anything is not plain
    assert state["step"] == 4
    assert torch.is_tensor(state["rng"]["numpy"]["keys"])


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04trunc", b"this is not a checkpoint\n" * 10],
                         ids=["empty", "zip-header-only", "garbage"])
def test_unreadable_checkpoint_errors_name_the_file_and_what_to_do(tmp_path, content):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        _trainer(tmp_path).fit()
    msg = str(e.value)
    assert str(tmp_path / "checkpoint.pt") in msg and "delete" in msg.lower() and "\n" not in msg


def test_truncated_checkpoint_errors_name_the_file(tmp_path):
    _trainer(tmp_path).fit()
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint.pt") as e:
        _trainer(tmp_path, steps=8).fit()
    assert str(path) in str(e.value)


def test_a_checkpoint_that_is_not_a_dnlib_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "checkpoint.pt")   # loads safely, but is no checkpoint
    with pytest.raises(CheckpointError, match="not a dnlib checkpoint"):
        _trainer(tmp_path).fit()


# ----------------------------------------------------------------------------------------- run identity
@pytest.mark.parametrize("change, field, stored, asked", [
    ({"seed": 5}, "seed", "0", "5"),
    ({"milestones": (3,)}, "milestones", "(6,)", "(3,)"),
    ({"lr": 0.1}, "lr", "0.05", "0.1"),
    ({"gamma": 0.5}, "gamma", "0.1", "0.5"),
    ({"weight_decay": 1e-4}, "weight_decay", "0.0", "0.0001"),
])
def test_resume_of_another_run_stops_naming_both_values(tmp_path, change, field, stored, asked):
    _trainer(tmp_path).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    tr = _trainer(tmp_path, steps=8, **change)
    with pytest.raises(CheckpointError) as e:
        tr.fit()
    msg = str(e.value)
    assert f"{field}: stored {stored}, requested {asked}" in msg, msg
    assert str(tmp_path / "checkpoint.pt") in msg and "\n" not in msg
    assert tr.step == 0 and (tmp_path / "checkpoint.pt").read_bytes() == before   # nothing trained or overwritten


def test_run_info_is_part_of_the_identity(tmp_path):
    model, data = _problem()
    Trainer(model, _loss, data, _cfg(4), out_dir=tmp_path, run_info={"config": "bn"}).fit()
    model, data = _problem()
    tr = Trainer(model, _loss, data, _cfg(8), out_dir=tmp_path, run_info={"config": "bn-s"})
    with pytest.raises(CheckpointError, match="config: stored 'bn', requested 'bn-s'"):
        tr.fit()


def test_same_run_extended_still_resumes_exactly(tmp_path):
    """Extending ``steps`` (and changing the evaluation cadence) is the same run: it resumes, bit-identically."""
    full = _trainer(tmp_path / "a", steps=10)
    full.fit()
    _trainer(tmp_path / "b", steps=4).fit()
    resumed = _trainer(tmp_path / "b", steps=10, eval_every=2, log_every=1)
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # GraphTrainer's checkpoints are interchangeable with Trainer's (same step, up to float rounding of its SGD)
    graph = _trainer(tmp_path / "b", steps=12, cls=GraphTrainer)
    graph.try_resume()
    assert graph.step == 10


# ------------------------------------------------------------------------------------------------ CIFAR
@pytest.fixture(scope="module")
def cifar():
    from dnlib.experiments.cifar import load_data
    return load_data("cifar10", subset=(200, 100), device="cpu", download=False)


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize("first, second, message", [
    (dict(config="bn"), dict(config="bn-s"), "config: stored 'bn', requested 'bn-s'"),
    (dict(config="bn"), dict(config="bn", seed=5), "seed: stored 0, requested 5"),
    (dict(config="bn"), dict(config="bn", steps=8), "steps: stored 4, requested 8"),
])
def test_cifar_run_refuses_to_resume_another_run(cifar, tmp_path, first, second, message):
    from dnlib.experiments.cifar import run
    kw = dict(steps=4, eval_every=2, data=cifar, batch_size=20, resume=tmp_path)
    run(**{**kw, **first})
    with pytest.raises(CheckpointError, match=message):
        run(**{**kw, **second})


@pytest.mark.slow
@needs_cifar
def test_cifar_cli_resume_mismatch_is_one_line_and_exit_2(tmp_path, capsys):
    from dnlib.experiments.cifar import main
    args = ["--subset", "200,100", "--steps", "2", "--eval-every", "2", "--device", "cpu"]
    assert main(["run", "bn", *args, "--resume", str(tmp_path)]) == 0     # --resume DIR: run in that folder
    capsys.readouterr()
    try:
        code = main(["run", "bn-s", *args, "--resume", str(tmp_path)])
    except SystemExit as e:                # argparse's error(): also one line and exit 2
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bn'" in err and "'bn-s'" in err and str(tmp_path) in err, err


def _timeless(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.slow
@needs_cifar
def test_stacked_run_resumes_after_kill_9_bit_identically(tmp_path):
    """A stacked group (two seeds in one model) killed with SIGKILL after its first checkpoint, then resumed by its
    folder (`stack --resume DIR`), ends with the same K records, curves, history and final parameters, bit for bit,
    as an uninterrupted stacked run (the runner's one loop: the stacked group had no checkpoint before)."""
    from dnlib.experiments import records
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}                       # the same threads in every process: the same sums
    steps = 60
    cmd = [sys.executable, "-m", "dnlib.experiments.cifar", "stack"]
    args = ["base", "--seeds", "0", "1", "--steps", str(steps), "--subset", "300,100", "--batch-size", "20",
            "--eval-every", "2", "--device", "cpu"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*cmd, *args, "--resume", str(full)], env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*cmd, *args, "--resume", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)                # right after the first checkpoint (step 2)
    finally:
        proc.kill()
        proc.wait()
    assert 0 < torch.load(killed / "checkpoint.pt", weights_only=True)["step"] < steps    # killed mid-run
    subprocess.run([*cmd, "--resume", str(killed)], env=env, check=True, capture_output=True, timeout=600)
    for seed in (0, 1):
        a, b = full / f"base-s{seed}", killed / f"base-s{seed}"
        ra, rb = records.read_record(a), records.read_record(b)
        assert ra["stopped"] == rb["stopped"] == "completed" and ra["steps_done"] == rb["steps_done"] == steps
        assert ra["seed"] == rb["seed"] == seed and ra["config"] == rb["config"]
        assert {k: ra["headline"][k] for k in ("final_acc", "best_acc")} == \
            {k: rb["headline"][k] for k in ("final_acc", "best_acc")}
        assert _timeless(records.read_curves(a)) == _timeless(records.read_curves(b))
    assert _timeless(json.loads((full / "history.json").read_text())) == \
        _timeless(json.loads((killed / "history.json").read_text()))
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (full, killed))
    assert ca["step"] == cb["step"] == steps and ca["batches"] == cb["batches"]
    assert ca["model"].keys() == cb["model"].keys() and all(torch.equal(ca["model"][k], cb["model"][k])
                                                            for k in ca["model"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


# -------------------------------------------------------------------------------------------------- PTB / SR
needs_ptb = pytest.mark.skipif(not (MIRROR / "ptb" / "ptb.train.txt").is_file(), reason=f"PTB not in {MIRROR}")


@pytest.mark.slow
@needs_ptb
@pytest.mark.parametrize("change, message", [({"seed": 5}, "seed: stored 0, requested 5"),
                                             ({"hidden_size": 24}, "hidden_size: stored 16, requested 24")])
def test_ptb_run_refuses_to_resume_another_run(tmp_path, change, message):
    from dnlib.experiments.ptb import load_data, run
    kw = dict(data=load_data(3000, 200), device="cpu", final_test_batch_size=None, resume=tmp_path, batch_size=4)
    run("base-lstm", epochs=1, hidden_size=16, **kw)
    with pytest.raises(CheckpointError, match=message):
        run("base-lstm", epochs=2, **{"hidden_size": 16, **change}, **kw)   # more epochs alone would extend it


needs_sr = pytest.mark.skipif(not (MIRROR / "sr" / "T91").is_dir(), reason=f"SR data not in {MIRROR}")


@pytest.mark.slow
@needs_sr
def test_sr_train_refuses_to_resume_another_norm(tmp_path):
    from dnlib.experiments import sr
    kw = dict(steps=4, eval_every=0, eval_sets=(), device="cpu", resume=tmp_path, progress=False)
    sr.run("none", "smoke", **kw)
    with pytest.raises(CheckpointError, match="norm: stored 'none', requested 'bn'"):
        sr.run("bn", "smoke", **{**kw, "steps": 8})


# ------------------------------------------------------------------- broken run.json / record.json, crafted files
class WorkStarted(BaseException):
    """Raised by a tripwire: the command went past its checks (a BaseException: no ``except Exception`` hides it)."""


def _one_line_exit_2(main, argv, capsys):
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


RUN_FILES = {   # (file, content): what --resume found there
    "run.json truncated": ("run.json", b'{"experiment": "cifar", "config": "b'),
    "run.json garbage": ("run.json", b"\x00\xff\xfe not text"),
    "run.json a list": ("run.json", b"[1, 2, 3]"),
    "run.json wrong types": ("run.json", b'{"experiment": "cifar", "config": 5, "fields": "x", "options": [1]}'),
    "run.json foreign fields": ("run.json", b'{"experiment": "cifar", "config": "bn", "fields": {"bogus": 1}}'),
    "record.json a list": ("record.json", b"[1, 2]"),
    "record.json garbage": ("record.json", b"\x00\xff\xfe not text"),
    "record.json foreign": ("record.json", b'{"accuracy": 0.9}'),
}


@pytest.mark.parametrize("case", list(RUN_FILES))
def test_resume_refuses_a_broken_or_foreign_run_file_naming_it(case, tmp_path, capsys, monkeypatch):
    """`run --resume DIR` over a broken or foreign run.json gave a traceback (AttributeError, TypeError) or a
    message without the file; over a broken record.json it went on and overwrote it. Now: one line naming the
    file, exit 2, before any data is loaded (the recipe's build is a tripwire here)."""
    from dnlib.experiments import cifar

    def tripwire(*a, **k):
        raise WorkStarted("the run was built")
    monkeypatch.setattr(cifar.CifarRecipe, "build", tripwire)
    name, content = RUN_FILES[case]
    (tmp_path / name).write_bytes(content)
    config = [] if name == "run.json" else ["bn"]
    code, err = _one_line_exit_2(cifar.main, ["run", *config, "--resume", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1, (code, err)
    assert f"{tmp_path / name}: not a" in err[0], err
    assert (tmp_path / name).read_bytes() == content          # left as it was


needs_set5 = pytest.mark.skipif(not (MIRROR / "sr" / "Set5").is_dir(), reason=f"SR Set5 not in {MIRROR}")


@needs_set5
def test_sr_report_over_a_crafted_checkpoint_is_one_line_and_runs_nothing(tmp_path, capsys):
    """A run folder whose record has no final scores is scored from its checkpoint: a crafted one (a pickle with
    a payload) was refused with a CheckpointError traceback; now one line naming it, exit 2; the payload never
    runs."""
    import json
    import pickle

    from dnlib.experiments import recipe as recipes
    from dnlib.experiments import records, sr
    d = tmp_path / "smoke-bn-s0"
    d.mkdir()
    cfg = sr.RECIPE.config("smoke-bn", steps=2)
    (d / recipes.RUN_FILE).write_text(json.dumps({"experiment": "sr", "config": cfg.name, "seed": 0,
                                                     "fields": sr.RECIPE.config_dict(cfg), "options": {}}))
    records.write_record(d, records.make_record("sr", {**sr.RECIPE.config_dict(cfg), "setup": {"label": "BN"}}, 0,
                                                stopped="time limit at step 1", steps_done=1, steps_planned=2,
                                                headline={"set5_psnr": None, "set5_ssim": None}))
    touched = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {touched}",))
    (d / "checkpoint.pt").write_bytes(pickle.dumps({"model": Payload()}))
    code, err = _one_line_exit_2(sr.main, ["report", str(tmp_path), "--sets", "Set5", "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1, (code, err)
    assert f"checkpoint {d / 'checkpoint.pt'} refused" in err[0], err
    assert not touched.exists()
