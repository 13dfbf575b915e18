"""One registry of normalizers and one way for every model to take one (issue 13 item 3).

Every model takes ``norm=`` (a preset name of :data:`dnlib.norms.presets.PRESETS` or a :class:`NormSpec`) and
``norm_kwargs=`` (:func:`dnlib.make_norm` overrides), resolved once in ``__init__`` through
:func:`dnlib.norms.presets.get_norm_layer`. The SR experiment's normalizer names are rows of
:mod:`dnlib.experiments.sr_configs` (a preset plus overrides), checked here against the values of the former
``dnlib.models.srcnn.SR_NORMS`` written out below.
"""
import ast
import importlib
import json
import pathlib
import pkgutil

import pytest
import torch
from torch import nn

import dnlib
from dnlib.models import SRCNN, BNLSTMCell, BNRNNCell, CifarCNN, LanguageModel, LNLSTMCell, NormLSTMCell, NormRNNCell
from dnlib.norms.norm import DivisiveNorm
from dnlib.norms.presets import PRESETS, Preset, get_norm_layer, get_spec, list_norms
from dnlib.norms.spec import NormSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
CS = "channel,space"


def _norm_reprs(model: nn.Module) -> list:
    """Every normalizer site of ``model`` by qualified name, as its repr (spec, affine, momentum, alpha, impl)."""
    return [(name, repr(m)) for name, m in model.named_modules()
            if isinstance(m, DivisiveNorm) or (isinstance(m, nn.Identity) and "norm" in name)]


def _same_model(build_a, build_b) -> None:
    """Both builders, from the same seed, give the same normalizer modules and the same state dict."""
    torch.manual_seed(0)
    a = build_a()
    torch.manual_seed(0)
    b = build_b()
    assert _norm_reprs(a) == _norm_reprs(b)
    assert _norm_reprs(a), "the model has no normalizer sites to compare"
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def _as_spec(name: str, **changes):
    """The preset ``name`` given as a NormSpec: its spec, and its module defaults moved into norm_kwargs."""
    return PRESETS[name].spec, {**PRESETS[name].defaults, **changes}


# ------------------------------------------------------------------ every model: preset name == NormSpec
@pytest.mark.parametrize("name", ["bn", "ln", "dn", "dn-s", "gn", "none"])
def test_cifar_cnn_takes_a_preset_name_or_a_spec(name):
    kw = dict(window=(5, 3, 3), border="reference") if name.startswith("dn") else {}
    spec, spec_kw = _as_spec(name, **kw)
    _same_model(lambda: CifarCNN(10, name, norm_kwargs=dict(kw)), lambda: CifarCNN(10, spec, norm_kwargs=spec_kw))


def test_cifar_cnn_norm_kwargs_reach_every_layer_and_per_layer_lists():
    m = CifarCNN(10, ["bn", "ln", "dn"], norm_kwargs=dict(window=[None, None, 3], sigma=0.5, eps=0.0),
                 per_layer=dict(alpha=[0.0, 0.01, 0.02]))
    assert [n.spec.sigma for n in m.norms] == [0.5, 0.5, 0.5]
    assert [n.alpha for n in m.norms] == [0.0, 0.01, 0.02]
    assert [n.spec.eps for n in m.norms] == [0.0, 0.0, 0.0]
    assert dict(m.norms[2].spec.sum_window) == {"space": 3}


def test_cifar_cnn_old_keyword_form_is_gone():
    """``CifarCNN(10, "dn", sigma=0.5)`` (the former spelling of ``norm_kwargs``) is retired (issue 24 item 3)."""
    with pytest.raises(TypeError, match="sigma"):
        CifarCNN(10, "dn", sigma=0.5)
    with pytest.raises(ValueError, match="norm_kwargs"):
        CifarCNN(10, "dn", norm_kwargs=[("sigma", 0.5)])


@pytest.mark.parametrize("name,kw", [("bn", {}), ("dn", dict(sum_window=5, sup_window=7, sigma=1.0)),
                                     ("dn-ms", dict(window=5, border="reference")), ("ln", dict(alpha=0.1)),
                                     ("none", dict(alpha=0.1))])
def test_srcnn_takes_a_preset_name_or_a_spec(name, kw):
    spec, spec_kw = _as_spec(name, **kw)
    _same_model(lambda: SRCNN(name, norm_kwargs=dict(kw)), lambda: SRCNN(spec, norm_kwargs=spec_kw))


def test_no_normalizer_is_no_module_where_the_model_says_so():
    """"none" without an L1 term: SRCNN and the recurrent cells build nothing (Identity / no site), as before;
    the CIFAR CNN keeps a parameterless DivisiveNorm site (its baseline +L1 row adds alpha there)."""
    assert isinstance(SRCNN("none").norm1, nn.Identity) and isinstance(SRCNN(None).norm2, nn.Identity)
    assert isinstance(SRCNN("none", norm_kwargs=dict(alpha=0.1)).norm1, DivisiveNorm)
    cell = NormLSTMCell(4, 6)
    assert cell.gate_norm is None and cell.cell_norm is None
    assert NormLSTMCell(4, 6, norm_kwargs=dict(alpha=0.01)).gate_norm.alpha == pytest.approx(0.04)
    assert all(isinstance(m, DivisiveNorm) and not list(m.parameters()) for m in CifarCNN(10).norms)


@pytest.mark.parametrize("cls,name,kw", [
    (NormLSTMCell, "ln-s", dict(sigma=1.0, eps=0.0, alpha=0.01)),
    (NormLSTMCell, "dn-1d-s", dict(sigma=1.0, eps=0.0, window=5, border="zeros")),
    (NormRNNCell, "ln", dict(sigma=0.01, affine=True)),
    (NormRNNCell, "dn-1d-s", dict(sigma=1.0, window=7)),
    (BNLSTMCell, "bn", dict(sigma=1.0, eps=0.0)),
    (BNRNNCell, "bn", dict(sigma=0.01)),
    (LNLSTMCell, "ln", dict(sigma=0.01, eps=0.0)),
])
def test_recurrent_cells_take_a_preset_name_or_a_spec(cls, name, kw):
    spec, spec_kw = _as_spec(name, **kw)
    if cls in (BNLSTMCell, BNRNNCell):
        spec_kw.pop("affine")      # the per-step BN's gain is shared over time: its own affine= (default True)
    _same_model(lambda: cls(5, 8, norm=name, norm_kwargs=dict(kw)), lambda: cls(5, 8, norm=spec, norm_kwargs=spec_kw))


def test_cells_use_norm_kwargs():
    cell = NormRNNCell(5, 8, "tanh", norm="dn-1d-s", norm_kwargs=dict(sigma=0.3, window=3, alpha=0.01))
    assert cell.norm.spec.sigma == 0.3 and dict(cell.norm.spec.sum_window) == {"channel": 3}
    assert cell.norm.alpha == 0.01
    bn = BNRNNCell(5, 8, "relu", norm="bn-s", norm_kwargs=dict(sigma=0.7))
    assert bn.norm_ih.steps[0].spec.sigma == 0.7 and not bn.norm_ih.steps[0].affine
    ln = LNLSTMCell(5, 8, norm="ln", norm_kwargs=dict(affine=False))
    assert ln.norm_c.weight is None


@pytest.mark.parametrize("arch,norm", [("lstm", "ln-s"), ("rnn", "dn-1d-s"), ("bn-lstm", "bn"), ("ln-lstm", "ln"),
                                       ("bn-rnn", "bn")])
def test_language_model_passes_norm_and_norm_kwargs_to_every_layer(arch, norm):
    kw = dict(sigma=0.5, eps=0.0)
    spec, spec_kw = _as_spec(norm, **kw)
    if arch in ("bn-lstm", "bn-rnn"):
        spec_kw.pop("affine")
    _same_model(lambda: LanguageModel(30, 8, arch, norm=norm, norm_kwargs=kw),
                lambda: LanguageModel(30, 8, arch, norm=spec, norm_kwargs=spec_kw))
    model = LanguageModel(30, 8, arch, norm=norm, norm_kwargs=kw)
    sites = [m for m in model.modules() if isinstance(m, DivisiveNorm)]
    assert sites and all(m.spec.sigma == 0.5 and m.spec.eps == 0.0 for m in sites)


# ------------------------------------------------------------------------- bad input: named, before work
@pytest.mark.parametrize("build", [
    lambda norm, kw: CifarCNN(10, norm, norm_kwargs=kw),
    lambda norm, kw: SRCNN(norm, norm_kwargs=kw),
    lambda norm, kw: NormLSTMCell(4, 6, norm=norm, norm_kwargs=kw),
    lambda norm, kw: NormRNNCell(4, 6, "tanh", norm=norm, norm_kwargs=kw),
    lambda norm, kw: BNLSTMCell(4, 6, norm=norm, norm_kwargs=kw),
    lambda norm, kw: LNLSTMCell(4, 6, norm=norm, norm_kwargs=kw),
    lambda norm, kw: LanguageModel(20, 6, "lstm", norm=norm, norm_kwargs=kw),
])
def test_bad_norm_or_norm_kwargs_is_named(build):
    default = "bn" if "BNLSTMCell" in build.__code__.co_names else "ln"
    with pytest.raises(ValueError, match=r"norm: unknown normalizer 'no-such'.*known presets"):
        build("no-such", None)
    with pytest.raises(ValueError, match=r"norm: expected a preset name .* or a NormSpec, got dict"):
        build({"sigma": 1.0}, None)
    with pytest.raises(ValueError, match=r"norm_kwargs: unknown key 'sigmaa'; allowed are"):
        build(default, {"sigmaa": 1.0})
    with pytest.raises(ValueError, match=r"norm_kwargs: expected a mapping"):
        build(default, [("sigma", 1.0)])


def test_get_norm_layer_resolves_once():
    layer = get_norm_layer("DN", dict(window=5, sigma=0.5))
    a, b = layer(16), layer(32, alpha=0.1)
    assert a.spec == b.spec == get_spec("dn").replace(sum_window={"space": 5}, sup_window={"space": 5}, sigma=0.5)
    assert (a.num_features, b.num_features, a.alpha, b.alpha) == (16, 32, 0.0, 0.1)
    assert get_norm_layer(None)(4).spec == get_spec("none")


# --------------------------------------------------------------------------- SR: rows of configs/sr.py
# The former dnlib.models.srcnn.SR_NORMS, written out (commit 8d873d5): name -> (spec, alpha, affine, Identity?).
_SR_BEFORE = {
    "none": None,
    "bn": (NormSpec("batch,space", "batch,space"), 0.0, True),
    "dn*": (NormSpec(CS, CS, {"space": 5}, {"space": 7}, sigma=1.0), 0.1, False),
    "dn*-code": (NormSpec(CS, CS, {"space": 5}, {"space": 7}, sigma=1.0, eps=0.0, border="reference"), 0.0, False),
    "dn-ms": (NormSpec(CS, None, {"space": 5}, border="reference"), 0.0, False),
}
_SR_ALIASES = {"dn-star": "dn*", "dnstar": "dn*", "dn-star-code": "dn*-code", "dnms": "dn-ms", "base": "none",
               "srcnn": "none", "DN*": "dn*"}


@pytest.mark.parametrize("name", list(_SR_BEFORE) + list(_SR_ALIASES))
def test_sr_rows_build_the_same_normalizers_as_before(name):
    from dnlib.experiments.sr_configs import get_config, sr_norm_name
    expected = _SR_BEFORE[_SR_ALIASES.get(name, name)]
    assert sr_norm_name(name) == _SR_ALIASES.get(name, name)
    for config in ("paper", "smoke"):
        cfg = get_config(config)
        net = cfg.build_model(name)
        assert isinstance(net, SRCNN) and (net.conv1.out_channels, net.conv2.out_channels) == cfg.channels
        for m in (net.norm1, net.norm2):
            if expected is None:
                assert isinstance(m, nn.Identity)
                continue
            spec, alpha, affine = expected
            assert isinstance(m, DivisiveNorm)
            assert m.spec == spec
            assert (m.spec.sigma, m.spec.eps, m.spec.border, m.alpha, m.affine) == (spec.sigma, spec.eps, spec.border,
                                                                                   alpha, affine)
            assert m.track_running_stats == (name == "bn")


def test_sr_rows_name_a_preset_and_norm_kwargs_override_them():
    from dnlib.experiments.sr_configs import SR_NORM_ROWS, get_config, sr_norm
    for name, row in SR_NORM_ROWS.items():
        assert row.preset in PRESETS, name
        assert set(row.norm_kwargs) <= {"sum_window", "sup_window", "window", "sigma", "eps", "alpha", "border"}
    preset, kw = sr_norm("dn*", {"alpha": 0.0})
    assert preset == "dn" and kw["alpha"] == 0.0 and kw["sup_window"] == 7
    assert sr_norm("ln") == ("ln", {})                  # any other preset: as is
    spec = NormSpec(CS, CS, sigma=2.0)
    assert sr_norm(spec, {"alpha": 0.1}) == (spec, {"alpha": 0.1})
    net = get_config("smoke").build_model("dn*", {"alpha": 0.0})
    assert net.norm1.alpha == 0.0 and net.norm1.spec.sigma == 1.0
    with pytest.raises(ValueError, match=r"norm: unknown SR normalizer 'no-such'.*dn\*-code"):
        sr_norm("no-such")


def test_one_registry_of_normalizers():
    """No module of dnlib but presets holds a table of NormSpecs or Presets, or of (preset name, overrides) pairs
    as the former SR_NORMS (gone from dnlib.models.srcnn with its srcnn_norm)."""
    import dnlib.models.srcnn as srcnn
    assert not hasattr(srcnn, "SR_NORMS") and not hasattr(srcnn, "srcnn_norm")
    holders = []
    for info in pkgutil.walk_packages(dnlib.__path__, "dnlib."):
        if info.name in ("dnlib.norms.presets", "dnlib.notebook.widgets", "dnlib.notebook.stall") \
                or info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for attr, value in vars(mod).items():
            if value is PRESETS or not isinstance(value, dict):
                continue
            if any(isinstance(v, (NormSpec, Preset)) or (isinstance(v, tuple) and v and (
                    isinstance(v[0], NormSpec) or (isinstance(v[0], str) and v[0] in PRESETS)))
                   for v in value.values()):
                holders.append(f"{info.name}.{attr}")
    assert holders == []
    assert list_norms() == list(PRESETS)


# ------------------------------------------------------------------------------------------ dead code
def test_dead_code_is_gone():
    from dnlib.data.cifar import CIFAR
    from dnlib.models import rnn
    assert not hasattr(rnn, "num_parameters")
    assert not hasattr(CIFAR, "normalize")


def _code_sources():
    for path in sorted((ROOT / "dnlib").rglob("*.py")):
        yield path, path.read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield nb, "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


def test_private_names_stay_in_their_module():
    """No ``from .x import _name`` and no ``module._name`` of a dnlib module across dnlib and the notebooks."""
    found = []
    for path, src in _code_sources():
        tree = ast.parse(src)
        dnlib_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("dnlib")):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.name}:{node.lineno} imports {a.name}")
                    dnlib_names.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                dnlib_names.update((a.asname or a.name).split(".")[0] for a in node.names
                                   if a.name.startswith("dnlib"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in dnlib_names and base.id[0].islower():
                    found.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
    assert found == []
