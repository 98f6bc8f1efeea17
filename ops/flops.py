"""MAC counts of the attention ops, and fvcore counting rules for them, so GMAC tables count
attention like the papers do (one multiply-add = one MAC; ``q kᵀ`` and ``attn v``, softmax and
masks not counted).

    analysis = fvcore.nn.FlopCountAnalysis(model, x)
    analysis.set_op_handle(**ops.flops.fvcore_handles())

fvcore's own rules count neither ``aten::scaled_dot_product_attention`` (the reference path) nor
custom ops (the fused path); both paths count the same work. Each op's ``*_macs`` lives beside the
op; the rules here read a traced call's arguments by their schema names, so they keep counting
right whatever order a schema lists its arguments in.
"""
import math

import torch

from .ela_gate import ela_gate_macs
from .halo_attention import halo_attention_macs
from .masked_attention import masked_attention_macs
from .neighborhood_attention import neighborhood_attention_macs
from .reversed_attention import reversed_attention_macs
from .routed_attention import routed_attention_macs
from .ulsam import ulsam_attention_macs
from .window_attention import window_attention_macs

__all__ = ["fvcore_handles", "schema_handle", "sdpa_macs", "window_attention_macs",
           "routed_attention_macs", "halo_attention_macs", "neighborhood_attention_macs",
           "masked_attention_macs", "reversed_attention_macs", "ela_gate_macs",
           "ulsam_attention_macs"]


def sdpa_macs(q_shape, k_shape, v_shape):
    """Batch dims broadcast (grouped-query heads take q's count)."""
    rank = max(len(q_shape), len(k_shape), len(v_shape))
    padded = [[1] * (rank - len(s)) + list(s[:-2]) for s in (q_shape, k_shape, v_shape)]
    batch = math.prod(max(dims) for dims in zip(*padded))
    return batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


# ``{op: count(**arguments)}``: tensors arrive as their shapes, other arguments as their values,
# under their schema names; ``**_`` takes the arguments a count does not need.
_COUNTS = {
    "aten::scaled_dot_product_attention":
        lambda query, key, value, **_: sdpa_macs(query, key, value),
    "backbones::window_attention_fwd":
        lambda q, v, window_h, window_w, offset_y, offset_x, **_: window_attention_macs(
            q, v, (window_h, window_w), (offset_y, offset_x)),
    "backbones::routed_attention_fwd":
        lambda q, v, region_index, region_h, region_w, **_: routed_attention_macs(
            q, v, region_index[-1], (region_h, region_w)),
    "backbones::halo_attention_fwd":
        lambda q, v, block_size, halo_size, **_: halo_attention_macs(
            q, v, block_size, halo_size),
    "backbones::neighborhood_attention_fwd":
        lambda q, v, kernel_h, kernel_w, **_: neighborhood_attention_macs(
            q, v, (kernel_h, kernel_w)),
    "backbones::masked_attention_fwd":
        lambda q, k, v, **_: masked_attention_macs(q, k, v),
    "backbones::reversed_attention_fwd":
        lambda q, v, **_: reversed_attention_macs(q, v),
    # ELA: what fvcore counts of the reference (the 1-D convs and GroupNorms inside the op)
    "backbones::ela_gate_fwd":
        lambda x, weight, **_: ela_gate_macs(x, weight),
    # ULSAM: the reference's einsum (the G -> 1 contraction), B * C * H * W
    "backbones::ulsam_fwd":
        lambda x, **_: ulsam_attention_macs(x),
}


def _argument(value):
    if isinstance(value.type(), torch._C.TensorType):
        return tuple(value.type().sizes())
    return value.toIValue()


def _schema(qualname):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name).default._schema


def schema_handle(qualname, count):
    """An fvcore handle for the op ``qualname`` that calls ``count`` with the traced call's
    arguments by schema name (tensors as shapes)."""

    def handle(inputs, outputs):
        names = [arg.name for arg in _schema(qualname).arguments]
        return count(**{name: _argument(v) for name, v in zip(names, inputs, strict=True)})

    return handle


def fvcore_handles():
    """``{op name: fvcore handle}`` for every attention op the zoo's models can run."""
    return {qualname: schema_handle(qualname, count) for qualname, count in _COUNTS.items()}
