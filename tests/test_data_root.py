"""The data root, verified atomic downloads and archive unpacking (no network: file:// and localhost)."""

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

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
    R.download_url(path.as_uri(), dest, md5=md5, progress=False)
    assert dest.read_bytes() == path.read_bytes()
    assert _leftovers(dest.parent) == ["toy.tar.gz"]


def test_checksum_mismatch_leaves_nothing(archive, tmp_path):
    path, _ = archive
    dest = tmp_path / "root" / "toy.tar.gz"
    with pytest.raises(R.DownloadError, match="md5 mismatch"):
        R.download_url(path.as_uri(), dest, md5="0" * 32, progress=False)
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
            R.download_url(url, dest, md5=md5, progress=False)
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
        R.extract_archive(bad, out)
    assert str(bad) in str(e.value)
    assert _leftovers(out) == []


def _source(url, md5, **kw):
    return R.DatasetSource(name="Toy", folders=("toy",), check=("a.txt",), url=url, md5=md5,
                           archive="toy.tar.gz", **kw)


def test_find_or_fetch_downloads_unpacks_once(archive, tmp_path):
    path, md5 = archive
    root = tmp_path / "root"
    found = R.find_or_fetch(_source(path.as_uri(), md5), root, progress=False)
    assert found == root / "toy" and (found / "a.txt").read_text() == "hello\n"
    assert _leftovers(root) == ["toy", "toy.tar.gz"]
    path.unlink()  # a second call needs neither the URL nor the archive
    assert R.find_or_fetch(_source(path.as_uri(), md5), root, progress=False) == found


def test_find_or_fetch_bad_archive_in_root_is_refused(archive, tmp_path):
    path, md5 = archive
    root = tmp_path / "root"
    root.mkdir()
    (root / "toy.tar.gz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(R.DownloadError, match="md5 mismatch"):
        R.find_or_fetch(_source(path.as_uri(), md5), root, progress=False)
    assert not (root / "toy").exists()


@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_error_names_everything(tmp_path, download):
    url = (tmp_path / "nowhere" / "toy.tar.gz").as_uri()  # unreachable: no such file
    with pytest.raises(R.DatasetNotFoundError) as e:
        R.find_or_fetch(_source(url, "0" * 32), tmp_path / "root", download=download, progress=False)
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
