"""Named experiment configurations with the paper's reference numbers, one module per experiment:
:mod:`dnlib.configs.cifar` (Tables 3, 7, 10), :mod:`dnlib.configs.ptb` (Tables 4, 9), :mod:`dnlib.configs.sr`
(Tables 5, 6)."""
from . import cifar, ptb, sr
from .cifar import CifarConfig

__all__ = ["cifar", "ptb", "sr", "CifarConfig"]
