"""Named experiment configurations with the paper's reference numbers."""
from .cifar import CifarConfig, get_config, list_configs

__all__ = ["CifarConfig", "get_config", "list_configs"]
