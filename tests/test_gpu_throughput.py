"""scripts/gpu_throughput.py: its CPU rehearsal (``--device cpu --tiny``) runs end to end and writes its report.

The gpu_cifar script's rehearsal (tests/test_scripts.py) runs this same command (its THROUGHPUT step) and checks
the report with :func:`check_report`; the test here runs it only where that rehearsal cannot (no CIFAR-10 in the data
root), so ``make test`` runs the script once. Its training section's timing structure (round-robin, load average)
is checked in-process on fake trainers."""
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DNLIB_DATA", REPO / "data"))


def cifar_rehearsal_runs() -> bool:
    """Whether tests/test_scripts.py's gpu_cifar rehearsal runs (and so runs this script and checks its report)."""
    return (DATA / "cifar10-jpeg").exists() or (DATA / "cifar-10-batches-py").exists()


def check_report(out: Path) -> None:
    """Every section of a ``--device cpu --tiny`` run ran (the Triton check in the interpreter when triton is
    installed) and is reported in ``out``."""
    rep = json.loads((out / "throughput.json").read_text())
    assert rep["device"]["type"] == "cpu" and rep["tiny"] is True
    check = rep["triton_check"]
    if importlib.util.find_spec("triton") is not None:
        assert check["ok"] is True and check["rows"] and all(r["grad_rel_err"] < 1e-4 for r in check["rows"])
    else:
        assert "skipped" in check
    layers = {(tuple(r["shape"]), r["layer"]) for r in rep["layer"] if "ms" in r}
    assert len(layers) == 3 * 3 and not [r for r in rep["layer"] if "error" in r]
    assert all(r["ratio_vs_bn"] == 1.0 for r in rep["layer"] if r["layer"] == "batchnorm2d")
    rows = rep["training"]
    assert {(r["config"], r["kind"], r["copies"]) for r in rows} == {
        (c, k, n) for c in ("base", "bn-star", "dn-star") for k, n in (("separate", 1), ("stacked", 1), ("stacked", 2))}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert all(r["load_before"].startswith("load average") and r["load_after"].startswith("load average")
               for r in rows + rep["layer"])
    assert all(r["vs_separate"] > 0 for r in rows if r["kind"] == "stacked")
    est = rep["table7_estimate"]
    assert est["runs"] == 13 * 2 * 3 and est["sequential_seconds"] > 0 and est["stacked_seeds_k3_seconds"] is None
    md = (out / "throughput.md").read_text()
    assert "Table 7 estimate" in md and "tiny CPU rehearsal" in md
    assert "interleaved round-robin" in md and "before load average" in md


def _script():
    spec = importlib.util.spec_from_file_location("_gpu_throughput_for_test", REPO / "scripts" / "gpu_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_times_its_candidates_round_robin_and_prints_the_load_average(monkeypatch, capsys):
    """The ordinary run and the K-stacked runs of a configuration are timed interleaved (each round one step of
    every candidate), the ratio to the ordinary run from the same rounds, the load average printed before and after.
    Before: each candidate timed in its own block one after another (``time_steps``), no load average."""
    script, calls = _script(), []

    def trainer(name):
        return SimpleNamespace(batches=itertools.count(), train_step=lambda batch: calls.append(name) or 1.0)
    monkeypatch.setattr(script.runner, "build_setup", lambda recipe, cfg, seed, device, options: SimpleNamespace(
        make_trainer=lambda evaluate=None: trainer("separate")))
    monkeypatch.setattr(script.stacked, "prepare", lambda recipe, cfg, seeds, **kw: SimpleNamespace(
        trainer=trainer(f"stacked{len(seeds)}"), setup=SimpleNamespace(info={"mode": "eager"})))
    rows = script.training(torch.device("cpu"), ["base"], [1, 2], SimpleNamespace(name="cifar10"), steps=3, warmup=1,
                           batch_size=20)
    assert calls == ["separate", "stacked1", "stacked2"] * 4
    assert [(r["kind"], r["copies"]) for r in rows] == [("separate", 1), ("stacked", 1), ("stacked", 2)]
    assert all(r["vs_separate"] > 0 for r in rows[1:]) and all(r["load_before"].startswith("load average")
                                                             for r in rows)
    out = capsys.readouterr().out
    loads = [line for line in out.splitlines() if "load average" in line]
    assert len(loads) == 2 and "before" in loads[0] and "after" in loads[1], out


@pytest.mark.slow   # interpreters, kernels or compilation: make check skips it
def test_gpu_throughput_rehearsal(tmp_path):
    if cifar_rehearsal_runs():
        pytest.skip("tests/test_scripts.py's gpu_cifar rehearsal runs this command and checks its report")
    out = tmp_path / "t"
    env = dict(os.environ)
    if importlib.util.find_spec("triton") is not None:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_throughput.py"), "--device", "cpu", "--tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    check_report(out)
