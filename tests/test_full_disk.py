"""A full disk while writing (issue 22, item 7): the atomic writers (dnlib.io) say "No space left on device: <the
destination>" and leave nothing partial behind, checkpoints included (torch.save said "unexpected pos N vs M").

Two ways to fill a disk: a real 64 KiB tmpfs mounted for the test (needs root and a kernel that lets the sandbox
mount; skipped otherwise), and, always, a file object whose writes fail with ENOSPC after a few bytes (a stand-in
for the operating system only: the code under test is the real writer)."""
from __future__ import annotations

import errno
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnlib import io

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
BIG = {"w": torch.randn(100_000)}      # 400 KB: more than the tmpfs holds


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs at ``tmp_path/disk`` (unmounted afterwards); skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield disk
    finally:
        gc.collect()        # a writer that failed may hold its file until collected: the mount would be busy
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)     # detached now, gone when released


def _no_space(path):
    return pytest.raises(OSError, match=f"^\\[Errno {errno.ENOSPC}\\] No space left on device: {path}$")


def test_a_checkpoint_on_a_full_disk_says_no_space_and_leaves_the_old_file(full_disk):
    old = {"w": torch.arange(4)}
    io.atomic_save(full_disk / "checkpoint.pt", old)
    with _no_space(full_disk / "checkpoint.pt"):
        io.atomic_save(full_disk / "checkpoint.pt", BIG)
    assert sorted(p.name for p in full_disk.iterdir()) == ["checkpoint.pt"]          # no temporary left
    assert torch.equal(torch.load(full_disk / "checkpoint.pt", weights_only=True)["w"], old["w"])


def test_json_and_text_on_a_full_disk_name_the_destination(full_disk):
    with _no_space(full_disk / "record.json"):
        io.atomic_write_json(full_disk / "record.json", list(range(40_000)))
    with _no_space(full_disk / "table.md"):
        io.atomic_write_text(full_disk / "table.md", "x" * 200_000)
    assert list(full_disk.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not ((MIRROR / "cifar10-jpeg" / "train").is_dir() or (MIRROR / "cifar-10-batches-py").is_dir()),
                    reason=f"CIFAR-10 not in DNLIB_DATA={MIRROR}")
def test_a_run_whose_checkpoint_does_not_fit_is_one_line(full_disk, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dnlib.experiments.cifar", "run", "base", "--steps", "2",
                        "--subset", "200,100", "--device", "cpu", "--out", str(full_disk)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, r.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("python -m dnlib cifar run: error: No space left on device: "), err
    assert err[0].endswith("/checkpoint.pt"), err
    (folder,) = full_disk.iterdir()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]              # nothing partial


# ------------------------------------------------------------------ the same through a failing file object
class _FullFile:
    """A real file whose writes fail with ENOSPC once ``room`` bytes are written (what a full disk does)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_files(monkeypatch):
    """dnlib.io's ``open`` gives files with 1 KiB of room."""
    monkeypatch.setattr(io, "open", lambda *a, **k: _FullFile(open(*a, **k), 1024), raising=False)  # noqa: SIM115


@pytest.mark.parametrize("write", [lambda p: io.atomic_save(p, BIG),
                                   lambda p: io.atomic_write_json(p, list(range(9999))),
                                   lambda p: io.atomic_write_text(p, "x" * 5000)], ids=["save", "json", "text"])
def test_a_write_that_runs_out_of_space_names_the_destination(write, full_files, tmp_path):
    path = tmp_path / "out" / "checkpoint.pt"
    with _no_space(path):
        write(path)
    assert list(path.parent.iterdir()) == []
