"""Run records (dnlib.experiments.records): own folders, the same keys everywhere, atomic files, provenance."""
import json
import multiprocessing as mp
import os
import stat
import subprocess

import pytest

from dnlib.experiments import records as R


def _record(**kw):
    base = dict(started=1000.0, ended=1012.5, steps_planned=10, steps_done=10, stopped="completed",
                headline={"test_acc": 0.5}, paper={"test_acc": 0.8}, device="cpu", argv=["run", "bn"])
    base.update(kw)
    return R.make_record("cifar", {"name": "bn", "lr": 0.01}, 3, **base)


def test_record_has_every_key_in_order_and_provenance():
    rec = _record()
    assert tuple(rec) == R.RECORD_KEYS
    assert rec["name"] == "bn" and rec["seed"] == 3 and rec["seconds"] == 12.5
    assert rec["started"] == "1970-01-01T00:16:40+00:00"
    assert rec["versions"]["torch"] and rec["versions"]["python"]
    assert rec["device"]["type"] == "cpu"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=R._REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert rec["git"]["commit"] == head.stdout.strip()
        assert isinstance(rec["git"]["dirty"], bool)


def test_record_round_trip_and_nan_becomes_null(tmp_path):
    rec = _record(headline={"test_acc": float("nan"), "loss": 1.5})
    R.write_record(tmp_path, rec)
    back = R.read_record(tmp_path)
    assert back["headline"] == {"test_acc": None, "loss": 1.5}
    json.loads((tmp_path / R.RECORD_FILE).read_text())  # valid JSON, no bare NaN


def test_a_resumable_runs_record_lists_its_segments_and_sums_their_seconds(tmp_path):
    """The runner's record of a run resumed by later calls: the first call's start (an ISO string kept as it is),
    one segment per call that trained, ``seconds`` their sum; :func:`check_record` refuses segments that are not
    objects."""
    prov = R.provenance("cpu")
    segs = [R.make_segment(1000.0, 1010.0, [0, 4], prov), R.make_segment(2000.0, 2002.5, [4, 10], prov)]
    assert [tuple(s) for s in segs] == [R.SEGMENT_KEYS] * 2 and segs[1]["steps"] == [4, 10]
    assert segs[1]["started"] == "1970-01-01T00:33:20+00:00" and segs[1]["seconds"] == 2.5
    assert segs[0]["git"] == prov["git"] and segs[0]["host"] == prov["host"] and segs[0]["device"]["type"] == "cpu"
    rec = _record(started=segs[0]["started"], ended=2002.5, segments=segs, prov=prov)
    assert tuple(rec) == R.RUN_RECORD_KEYS and rec["started"] == "1970-01-01T00:16:40+00:00"
    assert rec["seconds"] == 12.5 and rec["segments"] == segs
    R.write_record(tmp_path, rec)
    assert R.read_record(tmp_path) == rec and R.gather([tmp_path])[0]["seconds"] == 12.5
    assert _record(segments=[])["seconds"] == 0                        # built, nothing trained
    assert R.make_segment(1e9, None, [0, 1], prov)["ended"] is None      # running: seconds so far
    for bad, what in (("x", "'segments' is str"), (["x"], "segment 0 is str")):
        with pytest.raises(ValueError, match=f"not a run record \\({what}"):
            R.check_record({**rec, "segments": bad}, "f.json")


def test_write_record_refuses_an_incomplete_record(tmp_path):
    with pytest.raises(ValueError, match="missing keys"):
        R.write_record(tmp_path, {"experiment": "x"})


def test_read_record_names_a_broken_file(tmp_path):
    (tmp_path / R.RECORD_FILE).write_text('{"experiment": ')
    with pytest.raises(ValueError, match=str(tmp_path)):
        R.read_record(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run record"):
        R.read_record(tmp_path / "nope")


def test_new_run_dirs_never_collide(tmp_path):
    dirs = [R.new_run_dir(tmp_path, R.run_name("dn*", 0)) for _ in range(20)]
    assert len(set(dirs)) == 20 and all(d.is_dir() for d in dirs)
    assert all(d.name.startswith("dn-s0-") for d in dirs)


def _claim(base, q):
    q.put(str(R.new_run_dir(base, "bn-s0")))


def test_new_run_dir_is_unique_across_processes(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(tmp_path, q)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = [q.get(timeout=5) for _ in procs]
    assert len(set(got)) == 6


def test_curves_round_trip_union_of_columns(tmp_path):
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "test_acc": 0.25}, {"step": 3, "loss": float("nan")}]
    R.write_curves(tmp_path, rows)
    header = (tmp_path / R.CURVES_FILE).read_text().splitlines()[0]
    assert header == "step,loss,test_acc"
    back = R.read_curves(tmp_path)
    assert back[0] == {"step": 1, "loss": 2.5} and back[1]["test_acc"] == 0.25
    assert back[2]["loss"] != back[2]["loss"]  # nan survives as nan


def test_gather_flattens_runs(tmp_path):
    for seed in (0, 1):
        d = R.new_run_dir(tmp_path / "cifar", R.run_name("bn", seed))
        R.write_record(d, R.make_record("cifar", {"name": "bn"}, seed, stopped="completed",
                                        headline={"test_acc": 0.5 + seed / 10}, paper={"test_acc": 0.78}))
    rows = R.gather([tmp_path])
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[1]["test_acc"] == pytest.approx(0.6) and rows[0]["paper_test_acc"] == 0.78
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        R.gather([tmp_path / "missing"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_records_and_tables_are_written_with_the_umask_mode(tmp_path, umask, mode):
    """The atomic writer's temporary file (then the record) honours the umask, as open() would: 0644 under the
    usual 022 (was 0600 whatever the umask: mkstemp's mode)."""
    from dnlib.io import atomic_save_npy, atomic_write_text

    old = os.umask(umask)
    try:
        written = [R.write_record(tmp_path / "run", _record()), atomic_write_text(tmp_path / "table.md", "| a |\n"),
                   atomic_save_npy(tmp_path / "x.npy", __import__("numpy").zeros(2))]
    finally:
        os.umask(old)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(mode) for p in written}


# ------------------------------------------------------------------------ broken or foreign record files
BROKEN = {"truncated": '{"schema": 1, "experiment": "cif', "garbage": b"\x00\xffPK\x03 not text",
          "a list": "[1, 2, 3]", "foreign": '{"accuracy": 0.9}',
          "wrong types": '{"experiment": "cifar", "headline": [1, 2], "git": "abc"}'}


def _runs_with_broken(tmp_path):
    """Two good run folders and one per BROKEN record.json; returns (good folders, {broken folder: kind})."""
    good = []
    for seed in (0, 1):
        d = R.new_run_dir(tmp_path, R.run_name("bn", seed))
        R.write_record(d, {**_record(headline={"test_acc": 0.5 + seed / 10}), "seed": seed})
        R.write_curves(d, [{"step": 5, "test_acc": 0.4}, {"step": 10, "test_acc": 0.5}])
        good.append(d)
    broken = {}
    for kind, content in BROKEN.items():
        d = tmp_path / kind.replace(" ", "-")
        d.mkdir()
        (d / R.RECORD_FILE).write_bytes(content if isinstance(content, bytes) else content.encode())
        broken[d] = kind
    return good, broken


@pytest.mark.parametrize("kind", list(BROKEN))
def test_read_record_refuses_a_broken_or_foreign_file_naming_it(tmp_path, kind):
    """A list, garbage bytes or a foreign object gave AttributeError/UnicodeDecodeError far from the file."""
    content = BROKEN[kind]
    (tmp_path / R.RECORD_FILE).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=f"{tmp_path / R.RECORD_FILE}: not a (valid )?run record"):
        R.read_record(tmp_path)


def test_gather_and_the_results_loaders_skip_broken_records_naming_each(tmp_path):
    """gather, dnlib.experiments.aggregate (notebook 06) and sweeps.load_runs keep the good runs and name each skipped
    file in a RecordWarning (they raised a traceback, or a message without the file, at the first broken one)."""
    from dnlib.experiments import aggregate
    from dnlib.experiments import sweep as sweeps
    good, broken = _runs_with_broken(tmp_path)
    calls = {"gather": lambda: [r["run"] for r in R.gather([tmp_path])],
             "read_records": lambda: [str(d) for d, _ in R.read_records([tmp_path])],
             "aggregate.summarize": lambda: [s["n"] for s in aggregate.summarize(tmp_path)],
             "aggregate.curve_bands": lambda: sorted(aggregate.curve_bands(tmp_path, "test_acc")),
             "sweeps.load_runs": lambda: [rec["seed"] for rec, _ in sweeps.load_runs(tmp_path)]}
    want = {"gather": [str(d) for d in good], "read_records": [str(d) for d in good], "aggregate.summarize": [2],
            "aggregate.curve_bands": ["bn"], "sweeps.load_runs": [0, 1]}
    for name, call in calls.items():
        with pytest.warns(R.RecordWarning) as caught:
            got = call()
        assert got == want[name], name
        said = [str(w.message) for w in caught if issubclass(w.category, R.RecordWarning)]
        assert len(said) == len(broken), (name, said)
        for d in broken:
            assert sum(f"skipped {d / R.RECORD_FILE}: " in m for m in said) == 1, (name, d, said)


def test_gather_command_names_each_skipped_folder_on_one_line(tmp_path, capsys):
    from dnlib.experiments import cifar
    good, broken = _runs_with_broken(tmp_path)
    assert cifar.main(["gather", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == len(broken) and all(": warning: skipped " in line for line in lines), lines
    for d in broken:
        assert sum(str(d / R.RECORD_FILE) in line for line in lines) == 1
    assert out.count("| cifar | bn |") >= 2
