"""The paper's models, and He et al.'s CIFAR ResNet (``resnet20``; beyond the paper). Each takes its normalizer the
same way: ``norm=`` a preset name (:func:`dnlib.list_norms`) or a :class:`~dnlib.norms.spec.NormSpec`, ``norm_kwargs=``
the :func:`dnlib.make_norm` overrides, resolved once in ``__init__`` by :func:`dnlib.norms.presets.get_norm_layer`. The
experiments' named rows (CIFAR ``dn-star`` and ``resnet20-*``, PTB ``dn-star-lstm``, SR ``dn*``) are in
the ``*_configs`` modules of :mod:`dnlib.experiments`: ``CifarConfig.build_model()``, ``SRConfig.build_model(norm)``,
``LanguageModel(vocab_size, **PTBConfig.model_kwargs())``."""
from .cnn import CifarCNN
from .plain import PlainCNN
from .resnet import CifarResNet, resnet20
from .rnn import BNLSTMCell, BNRNNCell, LNLSTMCell, NormLSTMCell, NormRNNCell
from .rnn_lm import LanguageModel
from .srcnn import SRCNN

__all__ = ["CifarCNN", "LanguageModel", "NormLSTMCell", "BNLSTMCell", "LNLSTMCell", "NormRNNCell", "BNRNNCell",
           "SRCNN", "CifarResNet", "resnet20", "PlainCNN"]
