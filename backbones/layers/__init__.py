"""Layers shared by the zoo's families."""
from timm.layers import calculate_drop_path_rates

from .factory import DeviceLike, factory_context
from .fx import notrace_function, notrace_module
from .stage import Stage
from .staged import StagedBackboneMixin

__all__ = ["DeviceLike", "Stage", "StagedBackboneMixin", "calculate_drop_path_rates",
           "factory_context", "notrace_function", "notrace_module"]
