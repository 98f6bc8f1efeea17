"""The ops as leaves of a ``torch.fx`` trace.

``torch.fx.symbolic_trace`` (and timm's / torchvision's feature extractors built on it) runs a
model's Python with ``Proxy`` objects instead of tensors. An op's checks, its backend choice and its
reference path all read shapes and take branches, which a Proxy cannot answer. Wrapped with
:func:`fx_leaf`, an op called with any Proxy among its arguments records one ``call_function``
node instead of being traced into, whatever tracer is running (no registry to pass in). Outside a
trace the wrapper is a plain call. ``torch.compile`` / ``torch.export`` do not use Proxies: they
trace through the wrapper into the op as before.
"""
import functools

import torch.fx
from torch.fx.node import map_aggregate

__all__ = ["fx_leaf"]


def _first_proxy(args, kwargs):
    found = []

    def visit(a):
        if isinstance(a, torch.fx.Proxy) and not found:
            found.append(a)
        return a

    map_aggregate((args, kwargs), visit)
    return found[0] if found else None


def fx_leaf(fn):
    """Make ``fn`` one opaque ``call_function`` node when it is called during an FX trace."""

    @functools.wraps(fn)
    def leaf(*args, **kwargs):
        proxy = _first_proxy(args, kwargs)
        if proxy is not None:
            # The node's target is the wrapper itself: the traced GraphModule calls it with real
            # tensors, where it is a plain call of ``fn``.
            return proxy.tracer.create_proxy("call_function", leaf, args, kwargs)
        return fn(*args, **kwargs)

    leaf.__wrapped_op__ = fn
    return leaf
