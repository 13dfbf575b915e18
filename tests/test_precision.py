"""A run's arithmetic (dnlib.training.precision, the runner): float32 by default, the paper's (TF32 off for cuDNN
convolutions, which torch's default allows, and for cuBLAS matrix products), TF32 with the ``tf32`` option
(``--tf32``); set while the run builds and trains, the process's own switches restored after; recorded in the
record's device (the switches) and ``config.setup.precision`` (what defines the experiment); stored in run.json and
compared by a resume as any option is.

The switches are process-global and settable on a CPU build of torch: the tests read them from inside a run (its
build and its loss) on a tiny recipe of this module, so that no data set is needed."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn

from dnlib.data.loader import TensorBatches
from dnlib.experiments import commands, pooling, records
from dnlib.experiments import runner as runner_mod
from dnlib.experiments.recipe import Recipe, Setup
from dnlib.training import precision
from dnlib.training.trainer import TrainConfig

FLOAT32 = {"cudnn_tf32": False, "matmul_tf32": False, "float32_matmul_precision": "highest"}
TF32 = {"cudnn_tf32": True, "matmul_tf32": True, "float32_matmul_precision": "high"}


@pytest.fixture(autouse=True)
def _own_switches():
    """Every switch as it was before the test (the context restores them on leaving; the test sets what it likes
    inside)."""
    with precision.float32_arithmetic(False):
        yield


# ------------------------------------------------------------------------------------------- a tiny recipe
@dataclass
class ToyConfig:
    name: str = "toy"
    lr: float = 0.05
    steps: int = 4
    batch_size: int = 8


class Toy(Recipe):
    """A linear regression: what a run needs and nothing else; its build and its loss note the switches."""
    name = "toy"
    seen: list = []

    def configs(self):
        return ["toy"]

    def config(self, config, steps=None, **overrides):
        if not isinstance(config, ToyConfig) and config != "toy":
            raise ValueError(f"config: unknown configuration {config!r}; known: ['toy']")
        cfg = replace(config if isinstance(config, ToyConfig) else ToyConfig(), **overrides)
        return replace(cfg, steps=steps) if steps is not None else cfg

    def build(self, cfg, data, seed, device="auto", *, eval_every: int = 2):
        self.seen.append(("build", precision.switches()))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 3, generator=g)
        y = x.sum(1, keepdim=True)

        def loss(model, batch):
            self.seen.append(("step", precision.switches()))
            return nn.functional.mse_loss(model(batch[0]), batch[1])

        tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, eval_every=eval_every, checkpoint_every=eval_every,
                           log_every=1, seed=seed, device=str(device), progress=False)
        return Setup(model=nn.Linear(3, 1), loss_fn=loss, batches=TensorBatches(x, y, batch_size=cfg.batch_size,
                                                                                    seed=seed),
                     train=tcfg, evaluate=lambda m: {"mse": float(nn.functional.mse_loss(m(x), y))},
                     run_info={"config": cfg.name, "lr": cfg.lr}, info={"mode": "eager"})

    def headline(self, result):
        return {"mse": next((r["mse"] for r in reversed(result.history) if "mse" in r), None)}


TOY = Toy()


def _run(**kw):
    return runner_mod.run(TOY, kw.pop("config", "toy"), device="cpu", progress=False, **kw)


def _torch_defaults():
    """torch's own defaults: TF32 convolutions, float32 matrix products."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


# ------------------------------------------------------------------------------------------- the switches
@pytest.mark.parametrize("tf32, inside", [(False, FLOAT32), (True, TF32)])
def test_the_switches_are_set_inside_and_restored_after(tf32, inside):
    _torch_defaults()
    before = precision.switches()
    assert before["cudnn_tf32"] is True and before["matmul_tf32"] is False     # torch's default: TF32 convolutions
    with precision.float32_arithmetic(tf32) as now:
        assert now == precision.switches() == inside
    assert precision.switches() == before
    with pytest.raises(RuntimeError, match="inside"), precision.float32_arithmetic(tf32):
        raise RuntimeError("inside")
    assert precision.switches() == before             # restored after an exception too


def test_a_process_keeps_its_own_settings():
    """Switches set by the user before a run (the older API's, and a matmul precision of "medium") come back."""
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("medium")
    before = precision.switches()
    with precision.float32_arithmetic(True) as now:
        assert now == TF32
    assert precision.switches() == before and torch.backends.cudnn.allow_tf32 is False


def test_the_switches_of_a_torch_before_2_9(monkeypatch):
    """torch < 2.9 has only the two older switches (the matmul one through the float32 matmul precision)."""
    monkeypatch.setattr(precision, "_new_api", lambda: False)
    torch.set_float32_matmul_precision("high")
    with precision.float32_arithmetic(False) as now:
        assert now == FLOAT32 and torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "high"


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "true"])
def test_a_bad_tf32_value_is_refused(bad):
    with pytest.raises(ValueError, match=r"^tf32: True \(TF32 .*\) or False \(float32, the paper's arithmetic"):
        precision.check_tf32(bad)
    with pytest.raises(ValueError, match=r"^tf32: "):
        runner_mod.prepare(TOY, "toy", device="cpu", options={"tf32": bad})


def test_what_a_run_computed_in():
    assert precision.arithmetic(False, "cuda") == "float32" and precision.arithmetic(True, "cuda:1") == "tf32"
    assert precision.arithmetic(True, "cpu") == "float32"          # a CPU has no TF32


# ------------------------------------------------------------------------------------------- a run
@pytest.mark.parametrize("tf32", [False, True])
def test_a_run_computes_in_its_arithmetic_records_it_and_restores_the_switches(tf32, tmp_path):
    _torch_defaults()
    before = precision.switches()
    TOY.seen.clear()
    r = _run(out=tmp_path, options={"tf32": tf32} if tf32 else {})
    want = TF32 if tf32 else FLOAT32
    assert [w for w, _ in TOY.seen][:2] == ["build", "step"] and all(s == want for _, s in TOY.seen)
    assert precision.switches() == before                       # the process's own (TF32 convolutions) again
    rec = records.read_record(r.run_dir)
    assert rec["device"]["precision"] == want
    assert rec["config"]["setup"]["precision"] == "float32"     # a CPU: float32 either way
    assert all(s["device"]["precision"] == want for s in rec["segments"])
    assert json.loads((r.run_dir / "run.json").read_text())["options"]["tf32"] is tf32


def test_prepared_runs_leave_the_process_its_switches_between_build_and_train():
    _torch_defaults()
    before = precision.switches()
    run = runner_mod.prepare(TOY, "toy", device="cpu", progress=False, options={"tf32": True})
    assert precision.switches() == before
    TOY.seen.clear()
    run.go()
    assert TOY.seen and all(s == TF32 for _, s in TOY.seen) and precision.switches() == before


def test_the_cli_flag(tmp_path, capsys):
    assert commands.main(TOY, ["run", "toy", "--device", "cpu", "--tf32", "--out", str(tmp_path / "a")]) == 0
    assert commands.main(TOY, ["run", "toy", "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    (a,), (b,) = (records.find_runs([tmp_path / k]) for k in "ab")
    assert records.read_record(a)["device"]["precision"] == TF32
    assert records.read_record(b)["device"]["precision"] == FLOAT32
    assert json.loads((Path(a) / "run.json").read_text())["options"]["tf32"] is True
    with pytest.raises(SystemExit) as e:       # a resume of the TF32 run that asks for float32: one line, exit 2
        commands.main(TOY, ["run", "--resume", str(a), "--no-tf32", "--steps", "6"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "tf32: the run in" in err and "tf32=True" in err, err
    with pytest.raises(SystemExit):
        commands.main(TOY, ["run", "--help"])
    assert "--tf32, --no-tf32" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- resume
def test_a_resume_keeps_the_runs_tf32_and_refuses_another(tmp_path):
    _run(resume=tmp_path, stop_after=2, options={"tf32": True})
    with pytest.raises(ValueError, match=r"^tf32: the run in .* was made with tf32=True; given tf32=False"):
        _run(resume=tmp_path, options={"tf32": False})
    TOY.seen.clear()
    done = _run(resume=tmp_path)                                   # left out: the stored one
    assert done.stopped == "completed" and all(s == TF32 for _, s in TOY.seen)
    assert json.loads((tmp_path / "run.json").read_text())["options"]["tf32"] is True


def test_a_folder_that_stored_no_tf32_ran_in_float32(tmp_path):
    """A folder written before the option: it ran at the default (False); another value is refused."""
    _run(resume=tmp_path, stop_after=2)
    run_file = tmp_path / "run.json"
    stored = json.loads(run_file.read_text())
    del stored["options"]["tf32"]
    run_file.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"^tf32: .*made with tf32=False \(its default\); given tf32=True"):
        _run(resume=tmp_path, options={"tf32": True})
    assert _run(resume=tmp_path, options={"tf32": False}).stopped == "completed"


def test_call_takes_tf32_as_an_option(tmp_path):
    r = runner_mod.call(TOY, "toy", device="cpu", progress=False, tf32=True, lr=0.01)
    assert r.record["device"]["precision"] == TF32 and r.record["config"]["lr"] == 0.01


# ------------------------------------------------------------------------------------------- pooling
def test_runs_of_another_arithmetic_are_another_experiment():
    """``setup.precision`` defines the experiment: float32 (left out, the value of a record without it made off
    CUDA), TF32, and a CUDA record made before it was recorded: TF32 convolutions (torch's default then)."""
    def rec(device, experiment="cifar", **setup):
        return {"experiment": experiment, "config": {"name": "bn", "lr": 0.1, "setup": {"mode": "eager", **setup}},
                "device": {"type": device}}

    new_cpu, old_cpu = pooling.defining(rec("cpu", precision="float32")), pooling.defining(rec("cpu"))
    assert new_cpu == old_cpu and "setup.precision" not in new_cpu
    assert pooling.defining(rec("cuda", precision="float32")) == new_cpu
    tf32, old_cuda = pooling.defining(rec("cuda", precision="tf32")), pooling.defining(rec("cuda"))
    assert tf32["setup.precision"] == "tf32" and old_cuda["setup.precision"] == "tf32-conv"
    whats = {"a": new_cpu, "b": tf32, "c": old_cuda}
    assert pooling.differing(list(whats.values())) == ["setup.precision"]
    assert pooling.split_labels(["setup.precision"], whats) == {
        "a": "precision float32", "b": "precision tf32", "c": "precision tf32-conv"}
    assert pooling.defining(rec("cuda", experiment="ptb")) == new_cpu   # PTB convolves nothing: float32 then too


def test_the_switches_of_a_fresh_process_are_torchs_defaults():
    """What the review's reproducer saw (r12): cuDNN convolutions may use TF32 unless a run turns it off."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import json; from dnlib.training.precision import switches; "
                          "print(json.dumps(switches()))"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == {"cudnn_tf32": True, "matmul_tf32": False, "float32_matmul_precision": "highest"}


def test_the_h100_records_made_before_ran_tf32_convolutions():
    root = Path(__file__).resolve().parent.parent / "results" / "records" / "cifar" / "bn-star-s0-h100"
    rec = records.read_record(root)
    assert rec["device"]["type"] == "cuda" and pooling.defining(rec)["setup.precision"] == "tf32-conv"


def test_a_sweep_passes_tf32_on_and_refuses_a_folder_made_with_another(tmp_path, capsys):
    from dnlib.experiments import sweep as sweeps
    with pytest.raises(SystemExit):
        commands.main(TOY, ["sweep", "--help"])
    out = capsys.readouterr().out
    assert "--tf32, --no-tf32" in out[out.index("run options, passed on to every run"):]
    _run(resume=tmp_path / "toy-s0")                                # float32
    assert sweeps.check_runs(TOY, ["toy"], [0], ["--no-tf32"], out=tmp_path) == ["toy"]
    with pytest.raises(ValueError, match=r"toy-s0: its run was made with other settings than this sweep gives "
                                         r"it: tf32=False \(this sweep: True\)"):
        sweeps.check_runs(TOY, ["toy"], [0], ["--tf32"], out=tmp_path)


@pytest.mark.parametrize("tf32", [False, True])
def test_bench_and_check_graph_time_and_check_in_a_runs_arithmetic(tf32):
    """bench and check-graph build outside the runner (the campaign's probes time its steps): they ran at the
    process's switches (torch's default: TF32 convolutions on CUDA) while every run computes in float32 unless
    ``tf32``; now the build and the steps are in a run's arithmetic, and the switches are restored after."""
    from dnlib.experiments import bench
    _torch_defaults()
    before = precision.switches()
    want = TF32 if tf32 else FLOAT32
    for fn, kw in ((bench.bench, dict(warmup=1)), (bench.check_graph, dict(eager={}, graph={}))):
        TOY.seen.clear()
        fn(TOY, "toy", steps=2, device="cpu", options={"tf32": True} if tf32 else None, **kw)
        assert TOY.seen and all(s == want for _, s in TOY.seen), (fn.__name__, TOY.seen)
        assert precision.switches() == before


def test_a_row_whose_check_is_not_applicable_does_not_fail_the_command(tmp_path, capsys):
    """A recipe command's rows set the exit status: ``ok: false`` is 1; ``ok: null`` (a check that cannot fail here,
    e.g. a graph check of a step no graph replaces, with its ``why``) is not a failure (before: exit 1, as any
    falsy ok); a row without ``ok`` is 0 as before."""
    from dnlib.experiments.recipe import Command

    class Checks(Toy):
        def __init__(self, rows):
            self.rows = rows

        def commands(self):
            return {"check": Command("rows", lambda q: None, lambda args, q: iter(self.rows), rows=True)}

    not_applicable = {"config": "toy", "ok": None, "why": "not applicable: the same step"}
    assert commands.main(Checks([not_applicable, {"config": "toy"}]), ["check"]) == 0
    assert commands.main(Checks([not_applicable, {"config": "toy", "ok": False}]), ["check"]) == 1
    assert commands.main(Checks([{"config": "toy", "ok": True}]), ["check"]) == 0
