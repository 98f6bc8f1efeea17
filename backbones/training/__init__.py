"""ImageNet-style training and validation for every zoo (and timm) model: mmengine's Runner
driving timm's data, augmentation, optimizer and scheduler factories. The command lines are
``tools/train.py`` and ``tools/validate.py``."""
from .config import DEFAULTS, build_parser, resolve_config, scaled_lr
from .data import DataError, DigitsDataset

__all__ = ["DEFAULTS", "build_parser", "resolve_config", "scaled_lr", "DataError",
           "DigitsDataset"]
