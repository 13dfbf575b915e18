"""pyproject.toml and environment.yml list the same packages; the CI pin is the CPU torch."""
import re
import subprocess
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


#: import names whose package is named otherwise
PACKAGE_OF = {"skimage": "scikit-image", "yaml": "pyyaml"}


def _installed_by_setup() -> set:
    """The package names ``make setup`` (CI's set-up) installs: the dependencies, the extras it names, and the pins of
    requirements-ci.txt and requirements-ci-nodeps.txt."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (extras,) = re.findall(r"^EXTRAS\s*:=\s*([\w,-]+)$", (ROOT / "Makefile").read_text(), re.M)
    names = {_name(r) for r in project["dependencies"]}
    for extra in extras.split(","):
        names |= {_name(r) for r in project["optional-dependencies"][extra]}
    for pins in ("requirements-ci.txt", "requirements-ci-nodeps.txt"):
        names |= {_name(line) for line in (ROOT / pins).read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")}
    return names


def test_setup_installs_every_package_a_test_would_skip_without():
    """A test that skips when a package is absent (``pytest.importorskip``, ``find_spec``) runs in CI: ``make setup``
    installs that package (before: the TensorBoard tests and the check against timm's norm layers were skipped in
    every CI run)."""
    wanted = set()
    for path in [*(ROOT / "tests").glob("*.py"), ROOT / "conftest.py", ROOT / "notebooks" / "conftest.py"]:
        wanted |= set(re.findall(r'(?:importorskip|find_spec)\("([\w.]+)"\)', path.read_text()))
    assert {"tensorboard", "timm", "ray"} <= {m.split(".")[0] for m in wanted}     # the scan finds them
    installed = _installed_by_setup()
    missing = sorted(m for m in wanted if PACKAGE_OF.get(m.split(".")[0], m.split(".")[0]) not in installed)
    assert not missing, f"make setup does not install what these tests need: {missing}"


def test_an_unknown_installer_is_one_line_and_exit_2(tmp_path):
    """``make setup INSTALLER=...`` takes uv or pip; anything else stops before the venv is touched."""
    r = subprocess.run(["bash", str(ROOT / "scripts" / "install_venv.sh"), str(tmp_path / "venv"), "test", "conda"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "INSTALLER=conda" in r.stderr and "uv or pip" in r.stderr
    assert not (tmp_path / "venv").exists()


def test_license_is_an_spdx_expression_with_its_file():
    """setuptools deprecates ``license = {text = ...}`` (a warning on every install until 2027-02-18, then builds fail):
    the license is an SPDX expression (setuptools >= 77) and its text ships in the wheel."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT" and pyproject["project"]["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
