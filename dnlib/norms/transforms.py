"""Normalizers under ``torch.func`` transforms: what works, and the running-statistics switch.

Every :class:`~dnlib.norms.norm.DivisiveNorm` preset runs under ``vmap``, ``grad``, ``vjp``, ``jvp``, ``jacrev``,
``jacfwd``, ``hessian`` and ``functional_call``, and under forward-mode AD (``torch.autograd.forward_ad``): there the
general path's hand-written autograd Functions step aside for their plain-op composition (the same math, see
:func:`dnlib.norms.functional.under_transform`), the native kernels (``F.batch_norm``, ``F.group_norm``, ...) and
the band path are plain torch ops already, and ``impl="compile"``/``"triton"`` run the general path's plain ops.

As for torch's BatchNorm, a module that *tracks running statistics in training mode* (``bn``, ``bn-s``, ``bn-ms``,
``sn``; ``brn``, ``bcn`` and ``evonorm-b0``, which cannot do without them) updates them in place, which a
transform cannot do to buffers it does not transform: such a forward raises, unless the buffers come through the
transform (``torch.func.stack_module_state`` + ``vmap`` over ``functional_call``, each copy then updating its
own). Evaluation mode works (the running statistics are constants), and
:func:`replace_all_batch_norm_modules_` turns tracking off in place, as ``torch.func.replace_all_batch_norm_modules_``
does for ``nn.BatchNorm``.

The L1 penalty (``alpha > 0``) is recorded per transform: call :func:`dnlib.sparse_penalty` inside the transformed
function (each vmapped copy gets its own term, and grad differentiates it); collecting a term outside the
transform that recorded it raises.
"""
from __future__ import annotations

import torch
from torch import nn

from .batch_variants import BatchChannelNorm, BatchRenorm
from .evonorm import EvoNorm2dB0
from .frozen import FrozenBatchNorm2d
from .norm import DivisiveNorm

#: Presets that normalize with their running statistics (in training too, or in evaluation without a batch-statistics
#: fallback): frozen-bn (never updated: works under transforms as is), brn, bcn and evonorm-b0 (updated in place in
#: training: under a transform only with the buffers passed through vmap, or in evaluation mode).
KEEP_RUNNING_STATS = (FrozenBatchNorm2d, BatchRenorm, BatchChannelNorm, EvoNorm2dB0)


def replace_all_batch_norm_modules_(root: nn.Module) -> nn.Module:
    """Stop every running-statistics tracker in ``root``, in place, for ``torch.func`` transforms in training mode.

    Each :class:`DivisiveNorm` (and each ``nn.BatchNorm*``, through ``torch.func.replace_all_batch_norm_modules_``)
    gets ``track_running_stats = False`` and ``running_mean``, ``running_var`` and ``num_batches_tracked`` set to
    None: it then normalizes with the statistics of the current batch in training *and* evaluation mode (as torch's
    BatchNorm without tracking), and its state dict has no running statistics. Returns ``root``. The presets that
    need their running statistics (:data:`KEEP_RUNNING_STATS`: frozen-bn, brn, bcn, evonorm-b0) keep them.

    Example::

        >>> model = dnlib.replace_all_batch_norm_modules_(CifarCNN(norm="bn"))   # from dnlib.models
        >>> per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    """
    if not isinstance(root, nn.Module):
        raise TypeError(f"root: expected an nn.Module, got {type(root).__name__}")
    for m in root.modules():
        if isinstance(m, DivisiveNorm) and m.track_running_stats and not isinstance(m, KEEP_RUNNING_STATS):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    torch.func.replace_all_batch_norm_modules_(root)
    return root
