"""Layers shared by the zoo's families."""
from .staged import StagedBackboneMixin

__all__ = ["StagedBackboneMixin"]
