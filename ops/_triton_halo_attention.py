"""Fused Triton path of :func:`ops.halo_attention_2d`: the ``HALO`` pattern of the block-sparse
kernel family (:mod:`ops._triton_blocksparse`).

A query group is one ``bq x bq`` block of the (possibly strided) query grid; its key list is the
block's haloed ``win x win`` window on the key grid, token ``t`` at
``(by * bs - halo + t // win, bx * bs - halo + t % win)``. Positions outside the grid load as
zeros and **stay in the softmax** (timm's semantics: logit = relative bias only, value 0).

Relative logits: ``RH = c * q @ height_rel.T`` and ``RW = c * q @ width_rel.T`` (``c = scale``
with ``scale_pos_embed``, else 1) are computed outside with torch matmuls, ``(B, heads, Hq, Wq,
2 * win - 1)``, and gathered in-kernel at offsets ``win - 1 + ki - i`` / ``win - 1 + kj - j``;
the dQ pass reduces their gradients per offset and torch's autograd carries them on to q and
the tables. The dK/dV pass owns each key's *home* ``bs x bs`` block and loops over the query
blocks whose windows reach it (neighbours within ``ceil(halo / bs)`` blocks): one writer per
gradient element, no atomics, no windowed gradient buffers.
"""
from typing import Optional, Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._checks import check_triton_supported

__all__ = ["halo_attention_triton"]


def halo_pattern(q, k, block_size, halo_size, stride, scale):
    B, heads, H, W, _ = k.shape
    Hq, Wq = q.shape[2:4]
    bq, win = block_size // stride, block_size + 2 * halo_size
    nby, nbx = H // block_size, W // block_size
    reach = -(-halo_size // block_size)  # neighbour blocks a window reaches
    big = 256 if bsa.INTERPRETED else 64
    block_m = bsa.cap(min(big, bsa.fit(bq * bq)))
    block_n = bsa.cap(min(big, bsa.fit(win * win)))
    block_home = bsa.cap(min(big, bsa.fit(block_size * block_size)))
    fwd = bsa.Launch(nby * nbx, triton.cdiv(bq * bq, block_m), block_m, block_n, 4, 2)
    dq = bsa.Launch(nby * nbx, triton.cdiv(bq * bq, block_m), block_m, block_n, 4, 1)
    dkdv = bsa.Launch(nby * nbx, triton.cdiv(block_size * block_size, block_home), block_m,
                      block_home, 4, 1)
    return bsa.Pattern(bsa.HALO, (block_size, halo_size, bq, win, nbx, nby, reach), (Hq, Wq),
                       (H, W), scale, fwd, dq, dkdv)


def _rel(rh, rw, block_size, halo_size):
    return None if rh is None else (rh, rw, block_size + 2 * halo_size - 1)


def _forward(q, k, v, rh, rw, block_size, halo_size, stride, scale, store_lse):
    pattern = halo_pattern(q, k, block_size, halo_size, stride, scale)
    return bsa.attention_forward(q, k, v, pattern, store_lse, _rel(rh, rw, block_size, halo_size))


def _backward(dout, q, k, v, rh, rw, out, lse, block_size, halo_size, stride, scale):
    pattern = halo_pattern(q, k, block_size, halo_size, stride, scale)
    return bsa.attention_backward(dout, q, k, v, out, lse, pattern,
                                  _rel(rh, rw, block_size, halo_size))


@torch.library.custom_op("backbones::halo_attention_fwd", mutates_args=())
def _halo_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           rel_h: Optional[torch.Tensor], rel_w: Optional[torch.Tensor],
                           block_size: int, halo_size: int, stride: int, scale: float,
                           store_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, rel_h, rel_w, block_size, halo_size, stride, scale, store_lse)


@_halo_attention_fwd_op.register_fake
def _(q, k, v, rel_h, rel_w, block_size, halo_size, stride, scale, store_lse):
    B, heads, Hq, Wq, _ = q.shape
    out = q.new_empty(B, Hq, Wq, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
    lse = q.new_empty((B * heads, Hq * Wq) if store_lse else (1,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("backbones::halo_attention_bwd", mutates_args=())
def _halo_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor, rel_h: Optional[torch.Tensor],
                           rel_w: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                           block_size: int, halo_size: int, stride: int, scale: float
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor]:
    return _backward(dout, q, k, v, rel_h, rel_w, out, lse, block_size, halo_size, stride,
                     scale)


@_halo_attention_bwd_op.register_fake
def _(dout, q, k, v, rel_h, rel_w, out, lse, block_size, halo_size, stride, scale):
    grads = tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if rel_h is None:
        return grads + (q.new_empty(0), q.new_empty(0))
    return grads + (q.new_empty(rel_h.shape), q.new_empty(rel_h.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, rel_h, rel_w, *args, store_lse = inputs
    if not store_lse:
        return
    ctx.has_bias = rel_h is not None
    ctx.save_for_backward(q, k, v, rel_h, rel_w, *output)
    ctx.args = args  # block_size, halo_size, stride, scale


def _backward_rule(ctx, dout, dlse):
    q, k, v, rel_h, rel_w, out, lse = ctx.saved_tensors
    dq, dk, dv, drh, drw = _halo_attention_bwd_op(dout, q, k, v, rel_h, rel_w, out, lse,
                                                  *ctx.args)
    if not ctx.has_bias:
        drh = drw = None
    return dq, dk, dv, drh, drw, None, None, None, None, None


_halo_attention_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


def halo_attention_triton(q, k, v, block_size, halo_size, stride, rel_pos, scale,
                          scale_pos_embed):
    """Triton implementation of ``halo_attention_reference``; arguments already validated by
    :func:`ops.halo_attention_2d`."""
    check_triton_supported("halo_attention_2d", q, v)
    rh = rw = None
    if rel_pos is not None:
        from .halo_attention import halo_rel_logits
        rh, rw = halo_rel_logits(q, tuple(rel_pos), scale if scale_pos_embed else 1.0)
    store_lse = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, rh, rw))
    out, _ = _halo_attention_fwd_op(q, k, v, rh, rw, block_size, halo_size, stride,
                                    float(scale), store_lse)
    return out
