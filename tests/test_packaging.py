"""pyproject.toml and environment.yml list the same packages; the CI pin is the CPU torch."""
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        pip_names |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            conda_names |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        elif _name(dep) not in ("python", "pip"):
            conda_names.add(CONDA_NAMES.get(_name(dep), _name(dep)))
    assert conda_names == pip_names, (sorted(conda_names - pip_names), sorted(pip_names - conda_names))


def test_ci_pins_cpu_torch_and_no_torchvision():
    pins = (ROOT / "requirements-ci.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M)
    everything = (ROOT / "pyproject.toml").read_text() + pins + (ROOT / "environment.yml").read_text()
    assert "torchvision" not in everything.replace("no torchvision", "")


def test_ci_script_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in ci
