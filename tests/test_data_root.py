"""The data root, verified atomic downloads and archive unpacking (no network: file:// and localhost)."""

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from dnlib.data import fetch as F
from dnlib.data import root as R


def _make_tgz(path: Path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "served"
    src.mkdir()
    path = src / "toy.tar.gz"
    md5 = _make_tgz(path, {"toy/a.txt": b"hello\n", "toy/b.txt": b"x" * 5000})
    return path, md5


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("DNLIB_DATA", str(tmp_path))
    assert R.data_root() == tmp_path
    assert R.data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DNLIB_DATA")
    assert R.data_root().name == "data"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "c"))
    assert R.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_download_file_url_verified(archive, tmp_path):
    path, md5 = archive
    dest = tmp_path / "root" / "toy.tar.gz"
    F.download_url(path.as_uri(), dest, md5=md5, progress=False)
    assert dest.read_bytes() == path.read_bytes()
    assert _leftovers(dest.parent) == ["toy.tar.gz"]


def test_checksum_mismatch_leaves_nothing(archive, tmp_path):
    path, _ = archive
    dest = tmp_path / "root" / "toy.tar.gz"
    with pytest.raises(R.DownloadError, match="md5 mismatch"):
        F.download_url(path.as_uri(), dest, md5="0" * 32, progress=False)
    assert _leftovers(dest.parent) == []


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])  # then the connection drops
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_interrupted_download_leaves_nothing(archive, tmp_path):
    path, md5 = archive
    _TruncatingHandler.payload = path.read_bytes()
    server = http.server.HTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "root" / "toy.tar.gz"
        url = f"http://127.0.0.1:{server.server_port}/toy.tar.gz"
        with pytest.raises(R.DownloadError, match="interrupted"):
            F.download_url(url, dest, md5=md5, progress=False)
        assert _leftovers(dest.parent) == []
    finally:
        server.shutdown()
        server.server_close()


def test_truncated_archive_clear_error_and_nothing_extracted(archive, tmp_path):
    path, _ = archive
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(path.read_bytes()[:-200])
    out = tmp_path / "out"
    with pytest.raises(R.DownloadError, match="truncated or corrupt") as e:
        F.extract_archive(bad, out)
    assert str(bad) in str(e.value)
    assert _leftovers(out) == []


def _source(url, md5, **kw):
    return F.DatasetSource(name="Toy", folders=("toy",), check=("a.txt",), url=url, md5=md5,
                           archive="toy.tar.gz", **kw)


def test_find_or_fetch_downloads_unpacks_once(archive, tmp_path):
    path, md5 = archive
    root = tmp_path / "root"
    found = F.find_or_fetch(_source(path.as_uri(), md5), root, progress=False)
    assert found == root / "toy" and (found / "a.txt").read_text() == "hello\n"
    assert _leftovers(root) == ["toy", "toy.tar.gz"]
    path.unlink()  # a second call needs neither the URL nor the archive
    assert F.find_or_fetch(_source(path.as_uri(), md5), root, progress=False) == found


def test_find_or_fetch_bad_archive_in_root_is_refused(archive, tmp_path):
    path, md5 = archive
    root = tmp_path / "root"
    root.mkdir()
    (root / "toy.tar.gz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(R.DownloadError, match="md5 mismatch"):
        F.find_or_fetch(_source(path.as_uri(), md5), root, progress=False)
    assert not (root / "toy").exists()


@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_error_names_everything(tmp_path, download):
    url = (tmp_path / "nowhere" / "toy.tar.gz").as_uri()  # unreachable: no such file
    with pytest.raises(R.DatasetNotFoundError) as e:
        F.find_or_fetch(_source(url, "0" * 32), tmp_path / "root", download=download, progress=False)
    msg = str(e.value)
    for part in ("Toy", str(tmp_path / "root" / "toy"), str(tmp_path / "root" / "toy.tar.gz"), url, "DNLIB_DATA"):
        assert part in msg
    assert ("download=False" in msg) != download
    assert _leftovers(tmp_path / "root") == []


def test_atomic_save_npy(tmp_path):
    import numpy as np
    R.atomic_save_npy(tmp_path / "a.npy", np.arange(5))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3, 4]
    assert _leftovers(tmp_path) == ["a.npy"]


# ------------------------------------------------------------------ the data root rule (issue 11, part 6)
def _clone_root():
    return Path(R.__file__).resolve().parents[2]


def test_data_root_beside_the_clone(monkeypatch, tmp_path):
    """DNLIB_DATA unset: ../shared/data beside the clone wins over data/ in the clone."""
    monkeypatch.delenv("DNLIB_DATA", raising=False)
    clone = tmp_path / "clone"
    (clone / "dnlib").mkdir(parents=True)
    (clone / "pyproject.toml").write_text("[project]\nname = 'dnlib'\n")
    monkeypatch.setattr(R, "_repo_dir", lambda: clone)
    assert R.data_root() == clone / "data"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert R.data_root() == tmp_path / "shared" / "data"
    monkeypatch.setenv("DNLIB_DATA", str(tmp_path / "elsewhere"))
    assert R.data_root() == tmp_path / "elsewhere"
    monkeypatch.setenv("DNLIB_DATA", "")  # empty counts as unset
    assert R.data_root() == tmp_path / "shared" / "data"


BESIDE = _clone_root().parent / "shared" / "data"
needs_beside = pytest.mark.skipif(not (BESIDE / "ptb" / "ptb.train.txt").is_file(),
                                  reason=f"no shared data beside this clone ({BESIDE})")


@pytest.mark.slow
@needs_beside
def test_plain_python_finds_shared_data_beside_the_clone(monkeypatch, tmp_path):
    """What jupyter lab, plain papermill or plain pytest run: a Python process without DNLIB_DATA."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "DNLIB_DATA"}
    code = ("from dnlib.data import data_root; from dnlib.data.ptb import PTB_SOURCE; "
            "from dnlib.data.fetch import find_or_fetch; print(data_root()); "
            "print(find_or_fetch(PTB_SOURCE, download=False))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    root, ptb = out.stdout.split()
    assert Path(root).resolve() == BESIDE.resolve() and Path(ptb).resolve() == (BESIDE / "ptb").resolve()
    monkeypatch.delenv("DNLIB_DATA", raising=False)
    assert R.data_root().resolve() == BESIDE.resolve()


# ------------------------------------------------------------------ extraction keeps what is there (issue 11, part 4)
def test_extract_keeps_an_existing_folder(archive, tmp_path):
    path, _ = archive
    root = tmp_path / "root"
    (root / "toy" / "notes").mkdir(parents=True)
    (root / "toy" / "mine.txt").write_text("user file")
    (root / "toy" / "notes" / "n.txt").write_text("more")
    (root / "toy" / "a.txt").write_text("hello\n")  # identical to the archive's copy: fine
    F.extract_archive(path, root)
    assert (root / "toy" / "mine.txt").read_text() == "user file"
    assert (root / "toy" / "notes" / "n.txt").read_text() == "more"
    assert (root / "toy" / "a.txt").read_text() == "hello\n" and (root / "toy" / "b.txt").read_bytes() == b"x" * 5000
    assert _leftovers(root) == ["toy"]


def test_extract_refuses_to_overwrite_a_different_file(archive, tmp_path):
    path, _ = archive
    root = tmp_path / "root"
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "a.txt").write_text("my edits")
    with pytest.raises(R.DownloadError) as e:
        F.extract_archive(path, root)
    assert str(root / "toy" / "a.txt") in str(e.value)
    assert (root / "toy" / "a.txt").read_text() == "my edits"
    assert _leftovers(root) == ["toy"] and _leftovers(root / "toy") == ["a.txt"]  # nothing moved in


def test_extract_refuses_without_tar_filters(archive, tmp_path, monkeypatch):
    """Python < 3.11.4 (or 3.10.12) has no tarfile.data_filter: an unfiltered extractall is refused."""
    path, _ = archive
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(R.DownloadError, match="3.11.4"):
        F.extract_archive(path, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []
