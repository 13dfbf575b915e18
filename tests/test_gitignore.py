"""What a user's runs leave in the checkout is ignored by git (issue 23 item 7), and the notebooks are not."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("path, ignored", [
    ("out.ipynb", True),                           # notebooks/README.md's plain papermill example writes it here
    ("runs/smoke/suite-x/summary.json", True),
    ("notebooks/03_cifar.ipynb", False),
    ("notebooks/new_lesson.ipynb", False),
])
def test_gitignore(path, ignored):
    res = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert (res.returncode == 0) == ignored, f"{path}: ignored={res.returncode == 0}, expected {ignored}"
