"""fvcore counting rules for the attention ops, so GMAC tables count attention like the papers do
(one multiply-add = one MAC; ``q kᵀ`` and ``attn v``, softmax and masks not counted).

    analysis = fvcore.nn.FlopCountAnalysis(model, x)
    analysis.set_op_handle(**ops.flops.fvcore_handles())

fvcore's own rules count neither ``aten::scaled_dot_product_attention`` (the reference path) nor
custom ops (the fused path); both paths count the same work.
"""
import math

__all__ = ["fvcore_handles", "sdpa_macs", "window_attention_macs"]


def sdpa_macs(q_shape, k_shape, v_shape):
    """Batch dims broadcast (grouped-query heads take q's count)."""
    rank = max(len(q_shape), len(k_shape), len(v_shape))
    padded = [[1] * (rank - len(s)) + list(s[:-2]) for s in (q_shape, k_shape, v_shape)]
    batch = math.prod(max(dims) for dims in zip(*padded))
    return batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def window_attention_macs(q_shape, v_shape, window_size, window_offset):
    """Every query against every key of its window, padded windows counted whole (as the
    reference's SDPA over padded windows computes them)."""
    from .window_attention import window_grid
    B, heads, H, W, d_qk = q_shape
    (nwy, nwx), _ = window_grid((H, W), window_size, window_offset)
    tokens = window_size[0] * window_size[1]
    return B * heads * nwy * nwx * tokens * tokens * (d_qk + v_shape[-1])


def _sizes(value):
    return value.type().sizes()


def _sdpa_jit(inputs, outputs):
    return sdpa_macs(*(_sizes(t) for t in inputs[:3]))


def _window_attention_jit(inputs, outputs):
    q, v = _sizes(inputs[0]), _sizes(inputs[2])
    window_h, window_w, offset_y, offset_x = (i.toIValue() for i in inputs[3:7])
    return window_attention_macs(q, v, (window_h, window_w), (offset_y, offset_x))


def _routed_attention_jit(inputs, outputs):
    from .routed_attention import routed_attention_macs
    q, v, index = (_sizes(inputs[i]) for i in (0, 2, 3))
    return routed_attention_macs(q, v, index[-1], (inputs[4].toIValue(), inputs[5].toIValue()))


def _halo_attention_jit(inputs, outputs):
    from .halo_attention import halo_attention_macs
    q, v = _sizes(inputs[0]), _sizes(inputs[2])
    block_size, halo_size = (i.toIValue() for i in inputs[5:7])
    return halo_attention_macs(q, v, block_size, halo_size)


def _neighborhood_attention_jit(inputs, outputs):
    from .neighborhood_attention import neighborhood_attention_macs
    q, v = _sizes(inputs[0]), _sizes(inputs[2])
    kernel_h, kernel_w = (i.toIValue() for i in inputs[3:5])
    return neighborhood_attention_macs(q, v, (kernel_h, kernel_w))


def _masked_attention_jit(inputs, outputs):
    from .masked import masked_attention_macs
    return masked_attention_macs(*(_sizes(inputs[i]) for i in range(3)))


def _reversed_attention_jit(inputs, outputs):
    from .reversed import reversed_attention_macs
    return reversed_attention_macs(_sizes(inputs[0]), _sizes(inputs[2]))


def fvcore_handles():
    """``{op name: fvcore handle}`` for every attention op the zoo's models can run."""
    return {
        "aten::scaled_dot_product_attention": _sdpa_jit,
        "backbones::window_attention_fwd": _window_attention_jit,
        "backbones::routed_attention_fwd": _routed_attention_jit,
        "backbones::halo_attention_fwd": _halo_attention_jit,
        "backbones::neighborhood_attention_fwd": _neighborhood_attention_jit,
        "backbones::masked_attention_fwd": _masked_attention_jit,
        "backbones::reversed_attention_fwd": _reversed_attention_jit,
    }
