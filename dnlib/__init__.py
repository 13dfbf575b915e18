"""dnlib: Normalizing the Normalizers (Ren, Liao, Urtasun, Sinz, Zemel; ICLR 2017) in PyTorch.

One divisive normalizer (:class:`DivisiveNorm`, configured by a :class:`NormSpec`) whose presets are BN, LN,
DN, IN, GN, LRN and RMSNorm; the sparse L1 regularizer; the paper's models, data, training and figures.
"""
from .norms.convert import convert_norms
from .norms.functional import divisive_norm, field_mean
from .norms.norm import DivisiveNorm, convert_sync_norm
from .norms.presets import PRESETS, get_spec, list_norms, make_norm
from .norms.sparse import clear_penalties, l1_penalty, sparse_penalty
from .norms.spec import NormSpec
from .norms.transforms import replace_all_batch_norm_modules_

__all__ = ["NormSpec", "DivisiveNorm", "make_norm", "list_norms", "get_spec", "PRESETS", "divisive_norm",
           "field_mean", "sparse_penalty", "clear_penalties", "l1_penalty", "convert_sync_norm",
           "convert_norms", "replace_all_batch_norm_modules_"]
__version__ = "0.1.0"
