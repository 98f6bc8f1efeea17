"""Which implementation runs one op call: the fused Triton kernel or the PyTorch reference.

An explicit choice wins; the first one found of the op's ``backend=`` argument, the innermost
``ops.use_backend(...)`` block and the ``BACKBONES_OPS_BACKEND`` environment variable (read at
call time, so it can be flipped inside a process). An explicit ``"triton"`` that the kernel cannot
run raises an error that says why and what to do.

Without one, the backend is the one that can run the call, as NATTEN picks its backends: Triton
for tensors on a GPU (:data:`AUTO_TRITON_DEVICES`) whose call the kernel takes
(:func:`triton_limit`: triton installed, dtype, head dims, and the op's own limits), the reference
otherwise. A GPU call the kernel cannot take runs the reference with a one-time warning that says
why; CPU calls run the reference silently (on the CPU the kernels run only in Triton's
interpreter, ``TRITON_INTERPRET=1``, when a test or a benchmark asks for them by name).
"""
import contextlib
import functools
import importlib.util
import os
import threading
import warnings

import torch

BACKENDS = ("triton", "reference")
ENV_VAR = "BACKBONES_OPS_BACKEND"

# What every fused kernel takes: a head is one register tile wide, and the launch
# configurations are sized for tiles up to 256.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_HEAD_DIM = 256

# Device types on which ``backend=None`` runs Triton when it can.
AUTO_TRITON_DEVICES = ("cuda",)

_local = threading.local()
_warned = set()  # (op, reason) pairs already reported by a fallback warning


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


@functools.cache  # asked on every GPU call; whether triton is installed does not change
def triton_available():
    return importlib.util.find_spec("triton") is not None


def explicit_backend(backend):
    """The backend a call asked for by name (argument, context, environment), else None."""
    if backend is not None:
        return _validate(backend, "backend=")
    if getattr(_local, "stack", None):
        return _local.stack[-1]
    if os.environ.get(ENV_VAR):
        return _validate(os.environ[ENV_VAR].strip().lower(), f"${ENV_VAR}")
    return None


def triton_limit(op_name, device, dtype, head_dims):
    """Why the fused kernels cannot run a call on ``device`` in ``dtype`` with ``head_dims``
    (``{name: size}``), as the exception an explicit ``backend='triton'`` raises; None when they
    can."""
    if not triton_available():
        return RuntimeError("triton is not installed: `pip install triton` (Linux), or use "
                            "backend='reference'")
    if device.type != "cuda" and not interpreter_enabled():
        return RuntimeError(
            f"ops backend 'triton' got a tensor on {device}; Triton kernels run on CUDA, or on the "
            "CPU through the interpreter when TRITON_INTERPRET=1 is set before `import ops`. "
            "Use backend='reference' for the PyTorch path.")
    if dtype not in TRITON_DTYPES:
        return TypeError(
            f"the triton {op_name} supports float32, float16 and bfloat16, got {dtype}; cast "
            "q, k, v (e.g. .float()) or pass backend='reference'")
    for name, size in head_dims.items():
        if not 1 <= size <= TRITON_MAX_HEAD_DIM:
            return ValueError(
                f"the triton {op_name} supports head dims 1..{TRITON_MAX_HEAD_DIM}, got "
                f"{name}={size}; split the heads further or pass backend='reference'")
    return None


def select_backend(op_name, backend, q, v, op_limit=None, head_dims=None):
    """``"triton"`` or ``"reference"`` for one call of ``op_name`` on ``q`` / ``v`` (see the
    module docstring). ``op_limit``: a zero-argument callable giving the op's own limit beyond
    :func:`triton_limit` (an exception, or None); limits are only evaluated when Triton is a
    candidate. ``head_dims``: the sizes the kernel's tiles must hold (default: q's and v's last
    dims; ``{}`` for kernels that tile every dimension, such as the CNN gates)."""
    name = explicit_backend(backend)
    if name == "reference" or (name is None and q.device.type not in AUTO_TRITON_DEVICES):
        return "reference"
    if head_dims is None:
        head_dims = {"d_qk": q.shape[-1], "d_v": v.shape[-1]}
    limit = triton_limit(op_name, q.device, q.dtype, head_dims)
    if limit is None and op_limit is not None:
        limit = op_limit()
    if limit is None:
        return "triton"
    if name == "triton":
        raise limit
    _warn_fallback(op_name, limit)
    return "reference"


def _warn_fallback(op_name, limit):
    # Once per (op, reason): a model calls its op in every block of every step. torch.compile
    # cannot trace a warning (nor the bookkeeping), so a compiled call falls back silently.
    key = (op_name, str(limit))
    if key in _warned or torch.compiler.is_compiling():
        return
    _warned.add(key)
    warnings.warn(f"ops.{op_name} runs its PyTorch reference because the Triton kernel cannot "
                  f"take this call: {limit}", stacklevel=5)  # the op's caller


def current_default_backend(device=torch.device("cpu")):
    """What an op called without ``backend=`` picks for tensors on ``device`` in a dtype and head
    size its kernel supports."""
    name = explicit_backend(None)
    if name is not None:
        return name
    device = torch.device(device)
    if device.type in AUTO_TRITON_DEVICES and triton_limit("", device, torch.float32, {}) is None:
        return "triton"
    return "reference"
