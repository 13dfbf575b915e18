"""The paper's models; each takes ``norm=`` and builds its normalizers with :func:`dnlib.make_norm`."""
from .cnn import CifarCNN

__all__ = ["CifarCNN"]
