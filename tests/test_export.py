"""Every preset exports in evaluation mode: ``torch.export`` and ONNX (``torch.onnx.export(..., dynamo=True)``, run
with onnxruntime), each equal to eager.

One model holds a Conv2d followed by every preset (and the other paths of the presets that have them: the general
path beside the native kernel, the band path) side by side, so that one export covers them all; each output is
compared on its own. The batch-statistics presets carry random running statistics. ``onnx``, ``onnxscript`` and
``onnxruntime`` are the ``test`` extra (pinned in requirements-ci.txt); without them the ONNX test is skipped.
"""
import warnings

import pytest
import torch
from torch import nn

from dnlib import list_norms, make_norm
from dnlib.norms.presets import PRESETS
from dnlib.norms.weight_std import StdConv2d

pytestmark = pytest.mark.usefixtures("one_thread")

C = 4
OVERRIDES = {"gn": dict(groups=2), "bcn": dict(groups=2), "evonorm-s0": dict(groups=2), "evonorm-s0a": dict(groups=2)}
#: the other paths exported beside ``impl="auto"`` (the native kernel's): the general path's Functions (bn: with
#: running statistics; ln: the shared-field Function) and the band path's matrix product
GENERAL = {"bn": ("general",), "ln": ("general",), "dn-1d": ("band",)}


def _branches() -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    for name in list_norms():
        preset = PRESETS[name]
        impls = ["auto"] + [impl for impl in GENERAL.get(name, ()) if preset.module is None]
        for impl in impls:
            kw = dict(OVERRIDES.get(name, {}))
            if impl != "auto":
                kw["impl"] = impl
            # ws normalizes a conv's weights: its branch is timm's StdConv2d, which applies it
            m = StdConv2d(C, C, 3, padding=1) if name == "ws" else make_norm(name, C, **kw)
            with torch.no_grad():
                for pname, p in m.named_parameters():
                    if pname in ("weight", "bias"):
                        p.copy_(torch.rand(p.shape, generator=g) + 0.5)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(C, generator=g))
                if getattr(m, "running_var", None) is not None:
                    m.running_var.copy_(torch.rand(C, generator=g) + 0.5)
            out[f"{name}-{impl}"] = m
    return out


class AllPresets(nn.Module):
    """``x -> conv(x) -> (norm(h) for every branch)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.norms = nn.ModuleDict({k.replace("-", "_"): m for k, m in _branches().items()})

    def forward(self, x):
        h = self.conv(x)
        return tuple(torch.relu(m(h)) for m in self.norms.values())


def _inputs(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g) * 2 + 0.5


@pytest.fixture(scope="module")
def model():
    return AllPresets().eval()


@pytest.fixture(scope="module")
def exported(model):
    """``torch.export`` with a dynamic batch size (the ONNX test converts this same program)."""
    return torch.export.export(model, (_inputs(),), dynamic_shapes={"x": {0: torch.export.Dim("batch", max=64)}})


def test_every_preset_is_in_the_export_model(model):
    assert {f"{n}-auto".replace("-", "_") for n in list_norms()} <= set(model.norms)


def _compare(model, got, x, what):
    with torch.no_grad():
        expected = model(x)
    assert len(got) == len(expected)
    for key, a, b in zip(model.norms, got, expected):
        torch.testing.assert_close(torch.as_tensor(a), b, rtol=1e-5, atol=1e-5, msg=f"{key}, {what}")


def test_torch_export_equals_eager_for_every_preset(model, exported):
    for n, seed in ((2, 1), (5, 2)):  # new values and a new batch size: nothing was baked in
        x = _inputs(n, seed)
        _compare(model, exported.module()(x), x, f"batch {n}, seed {seed}")


@pytest.mark.slow  # (~10 s of CPU: the ONNX translation of every preset's graph; `make test` runs it, `make check` not)
def test_onnx_export_equals_eager_via_onnxruntime(model, exported):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(exported, dynamo=True, verbose=False, optimize=False)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # (constant folding's notes on CastLike nodes)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    for n, seed in ((2, 1), (5, 3)):
        x = _inputs(n, seed)
        _compare(model, session.run(None, {session.get_inputs()[0].name: x.numpy()}), x, f"batch {n}, seed {seed}")
