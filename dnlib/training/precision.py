"""The arithmetic of a run's float32 convolutions and matrix products: float32 (TF32 off, the paper's arithmetic) or
TF32 on CUDA, set for the run and restored after (:func:`float32_arithmetic`); the switches as they stand
(:func:`switches`, recorded in every run record's device); the run option that chooses (:func:`check_tf32`).

Layer: training (torch only). torch's defaults differ by kind of operation: cuDNN convolutions may use TF32
(``torch.backends.cudnn.allow_tf32`` is True) while cuBLAS matrix products do not
(``torch.backends.cuda.matmul.allow_tf32`` is False, float32 matmul precision ``"highest"``). On an Ampere or later card
(A100, H100) a TF32 product keeps 10 of float32's 23 mantissa bits, so a CIFAR or SR run on a GPU left at torch's
defaults computed its convolutions in TF32. The paper's numbers were computed in float32 (TensorFlow, 2016, before
TF32): a run of :mod:`dnlib.experiments.runner` turns both switches off unless its ``tf32`` option turns both on (a
faster run, different arithmetic: runs that differ in it are different experiments). CPU matrix products (oneDNN)
are kept at float32 in both cases.

torch 2.9 added per-backend switches (``torch.backends.cudnn.conv.fp32_precision`` ...) beside the older ones, and
reading an older switch after the newer ones were set raises; this module sets and restores the newer ones where torch
has them (every one as it was: a process keeps its own settings), the older ones otherwise."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["check_tf32", "switches", "arithmetic", "float32_arithmetic"]

B = torch.backends
#: torch >= 2.9's per-backend switches, parents before children (restored in this order)
_NEW = (("",), ("cuda", "matmul"), ("cudnn",), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn",),
        ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"))


def check_tf32(value) -> bool:
    """The ``tf32`` option: True (TF32 convolutions and matrix products on CUDA) or False (float32, the paper's
    arithmetic); anything else is a ValueError naming it."""
    if not isinstance(value, bool):
        raise ValueError(f"tf32: True (TF32 convolutions and matrix products on CUDA) or False (float32, the "
                         f"paper's arithmetic, the default), got {value!r}")
    return value


def _node(path: tuple):
    node = B
    for name in path:
        if name:
            node = getattr(node, name)
    return node


def _new_api() -> bool:
    try:
        return isinstance(B.cudnn.conv.fp32_precision, str)
    except (AttributeError, RuntimeError):
        return False


def _effective(path: tuple) -> str:
    """A per-backend switch resolved ("none": its parent's, up to the top; "ieee" when every one is "none")."""
    for k in range(len(path), -1, -1):
        v = getattr(_node(path[:k]), "fp32_precision", "none")     # (torch.backends.cuda itself has none)
        if v != "none":
            return v
    return "ieee"


def switches() -> dict:
    """The switches as they stand: ``{"cudnn_tf32", "matmul_tf32", "float32_matmul_precision"}`` (whether cuDNN
    convolutions and cuBLAS matrix products may use TF32, and torch's float32 matmul precision: ``"highest"``
    float32, ``"high"`` TF32; with the per-backend switches, CUDA's)."""
    if not _new_api():
        return {"cudnn_tf32": bool(B.cudnn.allow_tf32), "matmul_tf32": bool(B.cuda.matmul.allow_tf32),
                "float32_matmul_precision": torch.get_float32_matmul_precision()}
    matmul = _effective(("cuda", "matmul"))     # (torch's own getter may raise, or say what an older switch set)
    return {"cudnn_tf32": _effective(("cudnn", "conv")) == "tf32", "matmul_tf32": matmul == "tf32",
            "float32_matmul_precision": {"ieee": "highest", "tf32": "high", "bf16": "medium"}.get(matmul, matmul)}


def arithmetic(tf32: bool, device) -> str:
    """What a run's float32 convolutions and matrix products computed in (``setup.precision`` of its record):
    ``"tf32"`` on CUDA with ``tf32`` on, else ``"float32"`` (a CPU has no TF32)."""
    return "tf32" if tf32 and torch.device(device).type == "cuda" else "float32"


@contextlib.contextmanager
def float32_arithmetic(tf32: bool = False) -> Iterator[dict]:
    """Inside: cuDNN convolutions (and RNNs) and cuBLAS matrix products in float32 (``tf32=False``: TF32 off) or
    allowed TF32 (``tf32=True``), CPU matrix products in float32; yields :func:`switches`. Every switch is restored
    on leaving, as it was (an exception included)."""
    check_tf32(tf32)
    if _new_api():
        saved = [(p, _node(p).fp32_precision) for p in _NEW]
        cuda = "tf32" if tf32 else "ieee"
        for p, v in ((("cudnn", "conv"), cuda), (("cudnn", "rnn"), cuda), (("cuda", "matmul"), cuda),
                     (("mkldnn", "matmul"), "ieee"), (("mkldnn", "conv"), "ieee"), (("mkldnn", "rnn"), "ieee")):
            _node(p).fp32_precision = v
    else:                   # torch < 2.9: the two switches (matmul: through the float32 matmul precision)
        saved = (B.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        B.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield switches()
    finally:
        if isinstance(saved, list):
            for p, v in saved:
                _node(p).fp32_precision = v
        else:
            B.cudnn.allow_tf32 = saved[0]
            torch.set_float32_matmul_precision(saved[1])
