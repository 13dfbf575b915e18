"""scripts/gpu_throughput.py: its CPU rehearsal (``--device cpu --tiny``) runs end to end and writes its report.

The gpu_cifar script's rehearsal (tests/test_scripts.py) runs this same command (its THROUGHPUT step) and checks
the report with :func:`check_report`; the test here runs it only where that rehearsal cannot (no CIFAR-10 in the data
root), so ``make test`` runs the script once."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # interpreters, kernels or compilation: make check skips it

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
    est = rep["table7_estimate"]
    assert est["runs"] == 13 * 2 * 3 and est["sequential_seconds"] > 0 and est["stacked_seeds_k3_seconds"] is None
    md = (out / "throughput.md").read_text()
    assert "Table 7 estimate" in md and "tiny CPU rehearsal" in md


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
