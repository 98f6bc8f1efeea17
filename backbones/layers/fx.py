"""Tracing support: the parts of a model that ``torch.fx`` must not trace into.

Shape arithmetic (padding to whole windows, region layouts, input checks) reads ``x.shape`` and
branches on it; under ``torch.fx.symbolic_trace`` the shape is a Proxy and the branch fails. Such
code lives in small functions marked :func:`notrace_function`, or in modules marked
:func:`notrace_module`: each becomes one node of the graph (timm's notrace registry, which
``features_only=True, feature_cls='fx'`` and timm's tests read). Functions are also leaves for any
other tracer, e.g. torchvision's ``create_feature_extractor`` called without timm's tracer
arguments (see :func:`ops.fx_leaf`).
"""
from timm.layers import register_notrace_function, register_notrace_module

from ops import fx_leaf

__all__ = ["notrace_function", "notrace_module"]


def notrace_function(fn):
    """A leaf for every FX tracer, and registered in timm's notrace registry."""
    return register_notrace_function(fx_leaf(fn))


def notrace_module(cls):
    """A module class timm's tracer keeps as one ``call_module`` node (timm's registry)."""
    return register_notrace_module(cls)
