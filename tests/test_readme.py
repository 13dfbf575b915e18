"""The README's shell examples work as written (issue 23 item 7): they run in the project's venv, and the folder
names they promise are the ones the code makes."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_every_shell_example_says_it_runs_in_the_venv():
    """`python -m dnlib cifar list` outside the venv fails with ModuleNotFoundError: torch."""
    blocks = [b for b in _bash_blocks() if re.search(r"(^|\s)python -m dnlib", b)]
    assert blocks
    for b in blocks:
        assert "source .venv/bin/activate" in b or not re.search(r"(^|[\s;])python ", b), b.splitlines()[0]


def test_sweep_run_folders_are_named_as_the_readme_says():
    from dnlib.experiments import records
    from dnlib.experiments.cifar import RECIPE as CIFAR
    from dnlib.experiments.sr import RECIPE as SR

    cifar = records.run_name(CIFAR.label("bn-star", {}), 0)
    assert cifar == "cifar10-bn-star-s0" and f"`OUT/{cifar}/`" in README
    assert records.run_name(SR.label("fast-dn*", {}), 1) == "fast-dn-s1"
    assert "`OUT/<config>-s<seed>/` (CIFAR: `OUT/<dataset>-<config>-s<seed>/`" in README
