"""Every prepared GPU script runs at smoke size (issue 24: "every README and scripts/*.sh command runs at smoke
size"): the CPU rehearsal each script's header documents is run as written (OUT a temporary folder, PY this
interpreter), and must exit 0 with every check, bench and run of it done (the scripts go on past a failed step with
a line saying so, so the log is read too)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_gpu_throughput import check_report, cifar_rehearsal_runs

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DNLIB_DATA", ROOT / "data"))
FAILED = re.compile(r"failed|did not complete|Traceback|error:", re.I)


def _rehearsal(script: Path) -> tuple[dict, list]:
    """The environment and command of the ``# A tiny CPU rehearsal:`` lines of ``script``'s header."""
    text = script.read_text()
    head = text[text.index("# A tiny CPU rehearsal:"):].split("\n")[1:]
    cmd = ""
    for line in head:
        body = line.lstrip("#").strip()
        cmd += " " + body.rstrip("\\").strip()
        if not body.endswith("\\"):
            break
    words = shlex.split(cmd)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    return env, [w for w in words if not re.match(r"^[A-Z_]+=", w)]


@pytest.mark.slow
@pytest.mark.parametrize("name, needs", [("gpu_cifar", "cifar10-jpeg"), ("gpu_ptb", "ptb"), ("gpu_sr", "sr")])
def test_a_gpu_script_rehearses_on_the_cpu_as_its_header_says(name, needs, tmp_path):
    if not (DATA / needs).exists() and not (DATA / "cifar-10-batches-py").exists():
        pytest.skip(f"{needs} not in {DATA}")
    env, cmd = _rehearsal(ROOT / "scripts" / f"{name}.sh")
    assert env["DEVICE"] == "cpu" and cmd == ["bash", f"scripts/{name}.sh"], (env, cmd)
    env = {**os.environ, **env, "OUT": str(tmp_path / "out"), "PY": sys.executable, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    bad = [line for line in log.splitlines()          # (a sweep's status line counts its failed runs: "failed 0")
           if FAILED.search(re.sub(r"\bfailed 0\b", "", line))]
    assert not bad, "\n".join(bad[:20])
    saved = (tmp_path / "out" / "log.txt").read_text()          # scripts/gpu_common.sh: a copy of all it printed
    assert res.stdout.strip() and res.stdout.strip().splitlines()[-1] in saved
    assert (tmp_path / "out" / "nvidia-smi.txt").is_file()
    recs = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("record.json")]
    assert len(recs) >= 2 and all(r["stopped"] == "completed" for r in recs), [r["stopped"] for r in recs]
    if name == "gpu_cifar":     # its THROUGHPUT step is scripts/gpu_throughput.py's rehearsal: checked here, run once
        assert cifar_rehearsal_runs()
        check_report(tmp_path / "out" / "throughput")


# ------------------------------------------------------------------ the scripts' arguments (cheap, in-process)
def _script(name: str):
    """``scripts/<name>.py`` imported as a module (its ``main(argv)`` is called in-process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _refused(main, argv, capsys) -> str:
    """``main(argv)`` exits 2 with one line on stderr (no traceback): that line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and "Traceback" not in err, err
    return err.strip()


def _committed_folder(tmp_path: Path) -> Path:
    keep = tmp_path / "keep"
    (keep / "committed-run-s0-cpu").mkdir(parents=True)
    (keep / "committed-run-s0-cpu" / "record.json").write_text("{}")
    return keep


@pytest.mark.parametrize("runs", ["nonexist", "empty", "foreign"])
def test_analysis_collect_refuses_bad_runs_and_keeps_its_output_folder(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keep = _committed_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    foreign = tmp_path / "foreign" / "x-s0"
    foreign.mkdir(parents=True)
    rec = json.loads((ROOT / "results/records/analysis/batch-bn-b2-s0-cpu/record.json").read_text())
    (foreign / "record.json").write_text(json.dumps({**rec, "experiment": "cifar"}))
    err = _refused(_script("analysis_collect").main, [runs, "--out", str(keep)], capsys)
    assert runs in err
    assert (keep / "committed-run-s0-cpu" / "record.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign", "keep"]


def test_analysis_collect_replaces_its_output_folder_whole(tmp_path, capsys):
    keep = _committed_folder(tmp_path)
    src = ROOT / "results/records/analysis/batch-bn-b2-s0-cpu"
    run = tmp_path / "runs" / "batch-bn-b2-s0"
    run.mkdir(parents=True)
    for f in ("record.json", "curves.csv"):
        (run / f).write_bytes((src / f).read_bytes())
    assert _script("analysis_collect").main([str(tmp_path / "runs"), "--out", str(keep)]) == 0
    assert "1 run records" in capsys.readouterr().out
    assert [p.name for p in keep.iterdir()] == ["batch-bn-b2-s0-cpu"]
    assert sorted(p.name for p in (keep / "batch-bn-b2-s0-cpu").iterdir()) == ["curves.csv", "record.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "runs"]          # no temporary folder left


@pytest.mark.parametrize("name, argv, message", [
    ("pack_folder", [], "the following arguments are required: {pack,unpack}"),       # was an IndexError
    ("pack_folder", ["pack", "nonexist", "out.pack"], "SRC_DIR: nonexist does not exist"),  # 'packed 0 files'
    ("pack_folder", ["unpack", "nonexist", "dest"], "IN_FILE: nonexist does not exist"),
    ("campaign_facts", ["--threads", "0", "--out", "cf.json"], "--threads: 0 is not a positive integer"),
    ("convert_results", ["--out", "afile"], "--out: afile exists and is not a folder"),
    ("profile_cells", ["--out", "afile/x", "--cells", "nn.LSTM", "--repeat", "1"],        # after the profiling
     "--out: cannot create afile/x: afile is not a folder"),
    ("results_figures", ["--records", "nonexist", "--out", "rf_out"], "--records: nonexist does not exist"),
    ("results_figures", ["--records", "empty", "--out", "rf_out"], "--records: empty holds no run folder"),
])
def test_a_scripts_bad_argument_is_one_line_exit_2_before_any_work(name, argv, message, tmp_path, capsys,
                                                                    monkeypatch):
    """Tracebacks (or 'packed 0 files', exit 0) before; results_figures left its --out folder behind."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "empty").mkdir()
    err = _refused(_script(name).main, argv, capsys)
    assert err.startswith(f"{name}.py") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty"]        # nothing written


def test_pack_folder_packs_and_unpacks(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.txt").write_text("x")
    (src / "y.bin").write_bytes(b"\0\1")
    main = _script("pack_folder").main
    assert main(["pack", str(src), str(tmp_path / "p.pack")]) == 0
    assert main(["unpack", str(tmp_path / "p.pack"), str(tmp_path / "dest")]) == 0
    assert "packed 2 files" in capsys.readouterr().out
    assert (tmp_path / "dest" / "a" / "x.txt").read_text() == "x"
    assert (tmp_path / "dest" / "y.bin").read_bytes() == b"\0\1"


@pytest.mark.slow
def test_profile_cells_piped_into_a_reader_that_stops_ends_quietly(tmp_path):
    """`profile_cells.py | head` was a BrokenPipeError traceback (and, with --out, no file): the reader here closes
    the pipe before the tables are printed."""
    out = tmp_path / "t.txt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "profile_cells.py"), "--cells", "nn.LSTM",
                             "--repeat", "1", "--rows", "2", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err, err    # (torch's profiler logs its start and stop)
    assert proc.returncode == 1 and out.read_text().startswith("nn.LSTM: 2 x 200")
