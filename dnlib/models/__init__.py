"""The paper's models; each takes ``norm=`` and builds its normalizers with :func:`dnlib.make_norm`."""
from .cnn import CifarCNN
from .rnn import BNLSTMCell, BNRNNCell, LanguageModel, LNLSTMCell, NormLSTMCell, NormRNNCell
from .srcnn import SRCNN

__all__ = ["CifarCNN", "LanguageModel", "NormLSTMCell", "BNLSTMCell", "LNLSTMCell", "NormRNNCell", "BNRNNCell",
           "SRCNN"]
