"""Attention ops of the Backbone Zoo.

Every op is a function ``ops.<op>(q, k, v, ..., backend=None)`` with two implementations: a fused
Triton kernel (CUDA, or the CPU under ``TRITON_INTERPRET=1``) and a PyTorch reference that runs
anywhere and is the op's readable definition. ``backend=None`` runs Triton where its kernel can
take the call (CUDA tensors in a dtype and head size it supports) and the reference elsewhere;
``backend=``, ``with ops.use_backend(...)`` or ``BACKBONES_OPS_BACKEND=triton|reference`` choose
explicitly, for one call, a block or a whole process (see :mod:`ops._backend`).
"""
from ._backend import BACKENDS, current_default_backend, interpreter_enabled, use_backend
from ._fx import fx_leaf
from .ela_gate import ela_gate, ela_gate_macs
from .halo_attention import halo_attention_2d, halo_attention_macs
from .masked_attention import (
    masked_attention, masked_attention_macs, pack_mask, topk_mask, unpack_mask)
from .neighborhood_attention import neighborhood_attention_2d, neighborhood_attention_macs
from .reversed_attention import reversed_attention, reversed_attention_macs
from .routed_attention import routed_attention_2d, routed_attention_macs
from .ulsam import ulsam_attention, ulsam_attention_macs
from .window_attention import (
    centered_window_offset,
    window_attention_2d,
    window_attention_macs,
    window_depthwise_conv2d,
    window_grid,
)
from . import flops

__all__ = [
    "flops", "fx_leaf", "BACKENDS", "current_default_backend", "interpreter_enabled", "use_backend",
    "centered_window_offset", "window_attention_2d", "window_attention_macs",
    "window_depthwise_conv2d", "window_grid",
    "routed_attention_2d", "routed_attention_macs",
    "halo_attention_2d", "halo_attention_macs",
    "neighborhood_attention_2d", "neighborhood_attention_macs",
    "masked_attention", "masked_attention_macs", "topk_mask", "pack_mask", "unpack_mask",
    "reversed_attention", "reversed_attention_macs",
    "ela_gate", "ela_gate_macs",
    "ulsam_attention", "ulsam_attention_macs",
]
