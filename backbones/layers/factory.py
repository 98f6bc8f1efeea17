"""``device=`` / ``dtype=`` for zoo model constructors (timm's factory-kwargs convention)."""
import contextlib
from typing import Optional, Union

import torch

__all__ = ["DeviceLike", "factory_context"]

DeviceLike = Union[str, torch.device, None]


@contextlib.contextmanager
def factory_context(device: DeviceLike = None, dtype: Optional[torch.dtype] = None):
    """Create every parameter and buffer inside the block on ``device`` with float ``dtype``.

    ``device="meta"`` builds a model without allocating or initialising memory (for sharded or
    lazy loading); ``dtype=torch.bfloat16`` builds it in that precision directly. Both go through
    PyTorch's factory defaults, so every layer of a family gets them without passing them down.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    previous = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        if dtype is not None:
            torch.set_default_dtype(dtype)
            stack.callback(torch.set_default_dtype, previous)
        yield
