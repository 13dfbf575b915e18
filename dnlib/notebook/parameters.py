"""A notebook's parameters: the one cell tagged ``parameters`` (``name: type = value  # help``, checked by
:func:`parameter_cell_problems`), the types papermill infers for it (:func:`declared_parameters`), the profiles in its
metadata (:func:`notebook_profiles`), the values a run gets (:func:`resolve_parameters`: a profile, then ``-p``
overrides typed by :func:`coerce` and checked against the allowed values of ``metadata.dnlib.parameters`` by
:func:`check_value`) and the check a running notebook makes of its own values (:func:`check_parameters`, the cell
right after the parameters cell)::

    import dnlib.notebook.parameters
    dnlib.notebook.parameters.check_parameters("03_cifar", globals())
    dnlib.notebook.parameters.resolve_parameters("notebooks/03_cifar.ipynb", "smoke", [("steps", "20")])

:mod:`dnlib.notebook.suite` validates every notebook with these before it executes any.
"""
from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ParameterError", "REPO_ROOT", "NOTEBOOK_DIR", "read_notebook", "cell_source", "notebook_profiles",
           "declared_parameters", "changed_parameters", "parameter_rules", "RULE_KEYS", "rule_problems", "check_value",
           "coerce", "resolve_parameters", "parameter_cell_problems", "check_parameter_cell", "check_parameters"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]     # dnlib/ (this is dnlib/notebook/parameters.py)
#: The repository root when dnlib is used from a checkout (editable install or PYTHONPATH), else the cwd.
REPO_ROOT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else Path.cwd()
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class ParameterError(ValueError):
    """A parameter that a notebook does not declare, or a value of the wrong type or not allowed."""


def read_notebook(path: str | Path) -> dict:
    """The notebook's JSON as a plain dict (no nbformat validation); a :class:`ValueError` naming the file when
    it is not JSON."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a notebook (not JSON: {e})") from None


def notebook_profiles(path: str | Path) -> dict[str, dict[str, Any]]:
    """``metadata.dnlib.profiles`` of a notebook: ``{profile: {parameter: value}}`` (empty when absent)."""
    return dict(read_notebook(path).get("metadata", {}).get("dnlib", {}).get("profiles", {}))


def declared_parameters(path: str | Path) -> dict[str, dict[str, str]]:
    """The notebook's parameters as papermill infers them: ``{name: {inferred_type_name, default, help}}``."""
    import papermill

    return papermill.inspect_notebook(str(path))


def changed_parameters(path: str | Path, values: dict[str, Any]) -> list[str] | None:
    """The names in ``values`` whose value differs from the default the notebook at ``path`` declares (a name it does
    not declare counts as changed): outside the suite, what a user or papermill's ``-p`` set, a record's
    ``config.set``. None: the notebook or one of its defaults cannot be read as a literal."""
    try:
        declared = {k: ast.literal_eval(v["default"]) for k, v in declared_parameters(path).items()}
    except Exception:  # a notebook papermill cannot read, or a default that is not a literal
        return None
    from ..experiments.records import jsonable  # as the record holds them: a (1, 2) default equals [1, 2]
    return [k for k, v in values.items() if k not in declared or jsonable(v) != jsonable(declared[k])]


#: What ``metadata.dnlib.parameters.<name>`` may state about a parameter's values (:func:`check_value`).
RULE_KEYS = ("min", "max", "choices", "choices_from", "pattern", "allow_nonfinite")


def parameter_rules(path: str | Path) -> dict[str, dict[str, Any]]:
    """``metadata.dnlib.parameters`` of a notebook: ``{parameter: {rule: value}}`` (empty when absent)."""
    return dict(read_notebook(path).get("metadata", {}).get("dnlib", {}).get("parameters", {}))


def _names_from(spec: str) -> list:
    """The names ``choices_from`` spells: a dnlib function called with literal arguments,
    ``"dnlib.experiments.cifar_configs.list_configs('resnet20')"``, or a dnlib collection
    (``"dnlib.experiments.analysis_configs.SIZES"``), read without running any notebook."""
    import importlib

    try:
        node = ast.parse(spec, mode="eval").body
        call = isinstance(node, ast.Call)
        args = [ast.literal_eval(a) for a in node.args] if call else []
        dotted = ast.unparse(node.func if call else node)
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"choices_from {spec!r} is not `dnlib.module.name` or `dnlib.module.function(literals)`: "
                         f"{exc}") from None
    module, _, attr = dotted.rpartition(".")
    if not module.startswith("dnlib") or not attr.isidentifier():
        raise ValueError(f"choices_from {spec!r} must name a dnlib module's function or collection")
    target = getattr(importlib.import_module(module), attr)
    return list(target(*args) if call else target)


def _rule_errors(rule: dict[str, Any]) -> str | None:
    unknown = sorted(set(rule) - set(RULE_KEYS))
    return f"unknown rule key(s) {unknown}; known: {', '.join(RULE_KEYS)}" if unknown else None


def _allowed(rule: dict[str, Any], names: list) -> str:
    """What ``rule`` allows, in words."""
    parts = []
    if "min" in rule or "max" in rule:
        parts.append(" and ".join(f"{op} {rule[k]}" for k, op in (("min", ">="), ("max", "<=")) if k in rule))
    if names or "pattern" in rule:
        shown = ", ".join(map(repr, names[:12])) + (f", ... ({len(names)} in all: {rule['choices_from']})"
                                                     if len(names) > 12 else "")
        parts.append(" or ".join(x for x in (f"one of {shown}" if names else "",
                                             f"matching {rule['pattern']!r}" if "pattern" in rule else "") if x))
    return "; ".join(parts) or "any value"


def _nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    return False


def rule_problems(path: str | Path, declared: dict | None = None) -> list[str]:
    """What is wrong with a notebook's ``metadata.dnlib.parameters``: a rule for an undeclared parameter, an unknown
    rule key, a ``choices_from`` that cannot be read, a parameters-cell default that breaks its rule."""
    declared = declared_parameters(path) if declared is None else declared
    problems = []
    for name, rule in parameter_rules(path).items():
        where = f"metadata.dnlib.parameters.{name}"
        if name not in declared:
            problems.append(f"{where}: no such parameter; declared: {', '.join(declared) or 'none'}")
            continue
        if not isinstance(rule, dict) or _rule_errors(rule):
            problems.append(f"{where}: {_rule_errors(rule) if isinstance(rule, dict) else 'not a dict of rules'}")
            continue
        try:
            default = ast.literal_eval(declared[name]["default"])
        except (ValueError, SyntaxError):
            continue
        try:
            check_value(default, rule, nullable=_optional(declared[name]["inferred_type_name"])[1])
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            problems.append(f"{where}: the parameters cell's default {default!r} {exc}")
    return problems


def check_value(value: Any, rule: dict[str, Any] | None = None, *, nullable: bool = False) -> None:
    """Raise ``ValueError`` saying what is allowed unless ``value`` (already of its declared type) keeps ``rule``, a
    notebook's ``metadata.dnlib.parameters.<name>``:

    * ``min`` / ``max``: bounds (inclusive) of a number;
    * ``choices`` (a list), ``choices_from`` (a dnlib function or collection, :func:`_names_from`), ``pattern`` (a
      regular expression the whole string matches): the value must be in one of them (``"device": {"choices":
      ["auto", "cpu", "cuda"], "pattern": "cuda:\\d+"}``);
    * ``allow_nonfinite``: true lets a float be NaN or infinite, which is refused otherwise (also with no rule).

    A list, tuple or set is checked item by item; None (of an ``Optional`` parameter) keeps every rule."""
    rule = dict(rule or {})
    problem = _rule_errors(rule)
    if problem:
        raise ValueError(f"metadata.dnlib.parameters: {problem}")
    if value is None:
        return
    if not rule.get("allow_nonfinite") and _nonfinite(value):
        raise ValueError("is not allowed: NaN and infinite values are refused (the notebook's "
                         "metadata.dnlib.parameters may set allow_nonfinite)")
    names = list(rule.get("choices", [])) + (_names_from(rule["choices_from"]) if "choices_from" in rule else [])
    items = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
    or_none = " (or None)" if nullable else ""
    for item in items:
        bad = False
        if "min" in rule or "max" in rule:
            number = isinstance(item, (int, float)) and not isinstance(item, bool)
            bad = not number or item < rule.get("min", item) or item > rule.get("max", item)
        if names or "pattern" in rule:
            bad = bad or not (item in names or (isinstance(item, str) and "pattern" in rule
                                                and re.fullmatch(rule["pattern"], item)))
        if bad:
            which = f"item {item!r} " if item is not value else ""
            raise ValueError(f"{which}is not allowed: allowed {_allowed(rule, names)}"
                             f"{' for each item' if item is not value else ''}{or_none}")


_INT_RE = re.compile(r"^[+-]?\d+$")
_CONTAINERS = {"list": list, "dict": dict, "tuple": tuple, "set": set}


_OPTIONAL_RE = re.compile(r"^\s*Optional\[(?P<inner>.+)\]\s*$")


def _optional(type_name: str | None) -> tuple[str | None, bool]:
    """``(the type, whether None is allowed)``: ``"Optional[int]"`` (written ``x: "Optional[int]" = 3``: papermill
    parses no ``int | None``, and the quotes spare the cell an import) -> ``("int", True)``; ``"int"`` -> ``("int",
    False)``."""
    m = _OPTIONAL_RE.match(type_name or "")
    return (m.group("inner").strip(), True) if m else (type_name, False)


def _base_type(type_name: str | None) -> str | None:
    type_name = _optional(type_name)[0]
    if type_name in (None, "None"):
        return None
    return type_name.split("[", 1)[0].strip()


def coerce(value: Any, type_name: str | None, *, from_cli: bool = False) -> Any:
    """Return ``value`` as the declared type, or raise ``TypeError`` saying why it does not fit.

    ``from_cli`` values are strings typed on a command line and are parsed per the declared type
    (``"3"`` is an ``int``, ``"0.5"`` a ``float``, ``"true"``/``"False"`` a ``bool``, a ``str`` is taken verbatim,
    containers are Python literals). Other values (from notebook metadata) must already have the type;
    an ``int`` is accepted where a ``float`` is declared. A parameter declared ``"Optional[X]"`` also takes None
    (``None`` on a command line, ``null`` in metadata): a notebook passes None to the library, never a sentinel.
    """
    type_name, nullable = _optional(type_name)
    if nullable and (value is None or (from_cli and isinstance(value, str) and value.strip() in ("None", "none"))):
        return None
    base = _base_type(type_name)
    if base is None:
        raise TypeError("the parameter is untyped in the notebook (write `name: type = value  # help`)")
    if from_cli and isinstance(value, str):
        value = _parse_cli(value, base, type_name)
    return _check_type(value, base, type_name)


def _parse_cli(value: str, base: str, type_name: str) -> Any:
    """A command line's string as the declared type ``base`` (a container: the Python literal it spells)."""
    text = value.strip()
    if base == "str":
        return value
    if base == "int":
        if not _INT_RE.match(text):
            raise TypeError(f"expects int, got {value!r}")
        return int(text)
    if base == "float":
        try:
            return float(text)
        except ValueError:
            raise TypeError(f"expects float, got {value!r}") from None
    if base == "bool":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise TypeError(f"expects bool (true/false), got {value!r}")
    if base not in _CONTAINERS:
        raise TypeError(f"declared type {type_name!r} is not supported by the runner")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise TypeError(f"expects a {base} literal, got {value!r}") from None


def _check_type(value: Any, base: str, type_name: str) -> Any:
    """``value`` if it is a ``base`` (an int where a float is declared: as a float; a list where a tuple is: as
    a tuple), else a TypeError saying what it is."""
    if base == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base == "tuple" and isinstance(value, list):
        return tuple(value)
    expected = {"int": int, "float": float, "str": str, "bool": bool, **_CONTAINERS}.get(base)
    if expected is None:
        raise TypeError(f"declared type {type_name!r} is not supported by the runner")
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise TypeError(f"expects {base}, got {type(value).__name__} {value!r}")
    return value


def _override_targets(key: str, path: Path) -> str | None:
    """``NAME`` applies to every notebook; ``NB:NAME`` only to notebooks whose stem starts with ``NB``."""
    if ":" in key:
        scope, name = key.split(":", 1)
        return name if path.stem.startswith(Path(scope).stem) else None
    return key


def resolve_parameters(
    path: str | Path, profile: str = "smoke", overrides: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Validated parameters for one notebook: its ``profile`` values, then the ``-p`` overrides.

    ``profile`` must be one of the notebook's ``metadata.dnlib.profiles``; ``"smoke"`` may also be undeclared, as
    the parameters cell's defaults are the smoke run. Each value must have the declared type (:func:`coerce`) and keep
    the notebook's ``metadata.dnlib.parameters`` (:func:`check_value`; :func:`rule_problems` first). Raises
    :class:`ParameterError` naming the notebook and every bad parameter (its value and what is allowed), or the profile
    it lacks and those it has (it would otherwise run its defaults, the smoke size, under the other profile's name).
    """
    path = Path(path)
    profiles = notebook_profiles(path)
    if profile not in profiles and profile != "smoke":
        raise ParameterError(f"{path.name}: no profile {profile!r} in metadata.dnlib.profiles; it has: "
                             f"{', '.join(sorted(profiles)) or 'none'}")
    declared, rules = declared_parameters(path), parameter_rules(path)
    errors = rule_problems(path, declared)
    values: dict[str, Any] = {}
    sources = [(k, v, False, f"profile {profile!r}") for k, v in profiles.get(profile, {}).items()]
    for key, value in overrides:
        name = _override_targets(key, path)
        if name is not None:
            sources.append((name, value, True, "-p"))
    for name, value, from_cli, origin in sources:
        if name not in declared:
            known = ", ".join(declared) or "none"
            errors.append(f"unknown parameter {name!r} (from {origin}); declared: {known}")
            continue
        type_name = declared[name]["inferred_type_name"]
        try:
            values[name] = coerce(value, type_name, from_cli=from_cli)
        except TypeError as exc:
            errors.append(f"parameter {name!r} (from {origin}) {exc}")
            continue
        try:
            check_value(values[name], rules.get(name), nullable=_optional(type_name)[1])
        except ValueError as exc:
            errors.append(f"parameter {name!r} (from {origin}) = {values[name]!r} {exc}")
    if errors:
        raise ParameterError(f"{path.name}: " + f"\n{path.name}: ".join(errors))
    return values


def cell_source(cell: dict) -> str:
    """A cell's source as one string (nbformat stores a list of lines or a string)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def parameter_cell_problems(path: str | Path) -> list[str]:
    """What is wrong with a notebook's ``parameters`` cell (empty list when nothing is).

    Exactly one cell must be tagged ``parameters``; each of its statements must be one line
    ``name: type = literal  # help`` that papermill understands (its ``inspect_notebook`` finds the same names,
    each with a type and a help comment).
    """
    path = Path(path)
    cells = [c for c in read_notebook(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        return [f"expected exactly one cell tagged 'parameters', found {len(cells)}"]
    problems, names = [], []
    try:
        tree = ast.parse(cell_source(cells[0]))
    except SyntaxError as exc:
        return [f"parameters cell is not valid Python: {exc}"]
    for node in tree.body:
        line = ast.get_source_segment(cell_source(cells[0]), node) or ""
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            problems.append(f"line {node.lineno}: not of the form `name: type = value  # help`: {line!r}")
            continue
        names.append(node.target.id)
        try:
            ast.literal_eval(node.value)
        except ValueError:
            problems.append(f"parameter {node.target.id!r}: value is not a literal")
    declared = declared_parameters(path)
    for name in names:
        info = declared.get(name)
        if info is None:
            problems.append(f"parameter {name!r}: papermill cannot parse its line (papermill skips a line with a "
                            f"second '=', e.g. in the comment)")
        elif _base_type(info["inferred_type_name"]) is None:
            problems.append(f"parameter {name!r}: untyped")
        elif not info.get("help"):
            problems.append(f"parameter {name!r}: no help comment")
    return problems


def check_parameter_cell(path: str | Path) -> None:
    """Raise :class:`ParameterError` naming the notebook unless :func:`parameter_cell_problems` is empty."""
    problems = parameter_cell_problems(path)
    if problems:
        name = Path(path).name
        raise ParameterError(f"{name}: " + f"\n{name}: ".join(problems))


def check_parameters(notebook: str | Path, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    r"""Check, inside a running notebook, that its parameters have their declared types and allowed values.

    The notebooks call it in the cell right after their ``parameters`` cell
    (``dnlib.notebook.parameters.check_parameters("03_cifar", globals())``), so a run from JupyterLab or plain
    papermill gets the checks of ``python -m dnlib.notebook.suite`` (:func:`coerce`, :func:`check_value`) before any
    work starts. The classic mistake it catches: ``papermill -p configs "[dn-star]"`` injects the *string*
    ``"[dn-star]"``; lists and dicts go in as YAML, ``papermill -y "configs: [dn-star]"``. (An unknown name cannot be
    seen from inside the kernel; papermill itself warns about it.)

    Args:
        notebook: the notebook's name (``"03_cifar"``, looked up in the repository's ``notebooks/``) or path.
        namespace: the kernel's variables, usually ``globals()``. Default: the running IPython kernel's namespace.

    Returns:
        ``{name: value}`` of the declared parameters. A value is also written back into ``namespace`` when the
        declared type converts it losslessly (an ``int`` given for a ``float``, a list for a ``tuple``).

    Raises:
        ParameterError: naming the notebook, and for each bad parameter its name, value and declared type
            (a parameter missing from ``namespace`` is an error too: run the parameters cell first).
    """
    path = Path(notebook)
    if not path.is_file():
        path = NOTEBOOK_DIR / (path.name if path.suffix == ".ipynb" else f"{path.name}.ipynb")
    if not path.is_file():
        raise FileNotFoundError(f"check_parameters: no notebook {str(notebook)!r} (looked in {NOTEBOOK_DIR})")
    if namespace is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise ValueError("check_parameters: namespace=None needs a running IPython kernel; pass globals()")
        namespace = shell.user_ns
    errors, values, rules = [], {}, parameter_rules(path)
    for name, info in declared_parameters(path).items():
        declared = info["inferred_type_name"]
        if name not in namespace:
            errors.append(f"parameter {name!r} is not defined (run the parameters cell first)")
            continue
        value = namespace[name]
        try:
            values[name] = coerce(value, declared)
        except TypeError as exc:
            hint = ""
            if isinstance(value, str) and _base_type(declared) in _CONTAINERS:
                hint = (f"; with plain papermill give lists and dicts as YAML, -y \"{name}: {value}\" "
                        "(with -p they arrive as a string)")
            elif isinstance(value, (int, float)) and _base_type(declared) == "str":
                hint = f"; with plain papermill give a string with -r {name} VALUE (-p parses numbers)"
            errors.append(f"parameter {name!r} = {value!r} ({type(value).__name__}) does not have its declared "
                          f"type {declared}: {exc}{hint}")
            continue
        try:
            check_value(values[name], rules.get(name), nullable=_optional(declared)[1])
        except ValueError as exc:
            errors.append(f"parameter {name!r} = {value!r} {exc}")
    if errors:
        raise ParameterError(f"{path.name}: " + f"\n{path.name}: ".join(errors))
    namespace.update(values)
    return values
