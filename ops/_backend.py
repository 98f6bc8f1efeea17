"""Backend selection shared by every op.

Resolution order for one call: the op's ``backend=`` argument, then the innermost
``ops.use_backend(...)`` context, then the ``BACKBONES_OPS_BACKEND`` environment variable (read at
call time, so it can be flipped inside a process), then the device: Triton for CUDA tensors, the
PyTorch reference everywhere else.
"""
import contextlib
import importlib.util
import os
import threading

import torch

BACKENDS = ("triton", "reference")
ENV_VAR = "BACKBONES_OPS_BACKEND"

_local = threading.local()


def _validate(name, origin):
    if name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r} from {origin}; choose one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name):
    """Run every op inside the ``with`` block on ``name`` ('triton' or 'reference')."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(_validate(name, "ops.use_backend()"))
    try:
        yield
    finally:
        stack.pop()


def interpreter_enabled():
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available():
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend, tensor):
    """The backend that runs an op on ``tensor``, after checking it can run there."""
    if backend is not None:
        name = _validate(backend, "backend=")
    elif getattr(_local, "stack", None):
        name = _local.stack[-1]
    elif os.environ.get(ENV_VAR):
        name = _validate(os.environ[ENV_VAR].strip().lower(), f"${ENV_VAR}")
    else:
        name = "triton" if tensor.is_cuda and triton_available() else "reference"

    if name == "triton":
        if not triton_available():
            raise RuntimeError(
                "ops backend 'triton' was requested but triton is not installed; "
                "`pip install triton` (Linux) or use backend='reference'.")
        if not tensor.is_cuda and not interpreter_enabled():
            raise RuntimeError(
                f"ops backend 'triton' got a tensor on {tensor.device}; Triton kernels run on CUDA, "
                "or on the CPU through the interpreter when TRITON_INTERPRET=1 is set before "
                "`import ops`. Use backend='reference' for the PyTorch path.")
    return name


def current_default_backend(device=torch.device("cpu")):
    """What an op called without ``backend=`` would pick for a tensor on ``device``."""
    return resolve_backend(None, torch.empty(0, device=device))
