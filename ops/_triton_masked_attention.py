"""Fused Triton path of :func:`ops.masked_attention`: the ``DENSE`` pattern of the block-sparse
kernel family (:mod:`ops._triton_blocksparse`) with a mask.

The (B, heads, L, d) sequences are a 1 x L grid. Every query block visits every key block; the
mask tile is loaded first (bytes of a bool mask, or bits of the packed uint8 form: byte
``j >> 3``, bit ``j & 7``; stride 0 along a broadcast batch or head dim), and a key block with no
kept (query, key) pair in the query block is skipped before K and V are read; the dK/dV pass skips
query blocks the same way. Masked logits are ``-inf``; fully-masked rows output 0 and get a
log-sum-exp of ``+inf`` (probabilities and gradients 0). The output is stored token-major
``(B, Lq, heads, d_v)`` and returned as its ``(B, heads, Lq, d_v)`` view.
"""
from typing import Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._checks import check_triton_supported

__all__ = ["masked_attention_triton"]


def masked_pattern(q, k, mask, scale):
    Lq, Lk = q.shape[2], k.shape[2]
    packed = mask.dtype == torch.uint8
    # Interpreter: every tl op is a numpy call with fixed overhead, so few large tiles win.
    # GPU: 64 x 64 tiles (not tuned on hardware yet).
    cap_m, cap_n = (128, 256) if bsa.INTERPRETED else (64, 64)
    block_m = bsa.cap(min(cap_m, bsa.fit(Lq)))
    block_n = bsa.cap(min(cap_n, bsa.fit(Lk)))
    fwd = bsa.Launch(1, triton.cdiv(Lq, block_m), block_m, block_n, 4, 2)
    dkdv = bsa.Launch(1, triton.cdiv(Lk, block_n), block_m, block_n, 4, 2)
    return bsa.Pattern(bsa.DENSE, (), (1, Lq), (1, Lk), scale, fwd, fwd, dkdv,
                       mask=mask if packed else mask.view(torch.uint8),
                       mask_mode=2 if packed else 1, fuse_dq=dkdv.blocks == 1)


def _forward(q, k, v, mask, scale, store_lse):
    return bsa.attention_forward(q, k, v, masked_pattern(q, k, mask, scale), store_lse)


def _backward(dout, q, k, v, mask, out, lse, scale, need_dq=True, need_dkdv=True):
    return bsa.attention_backward(dout, q, k, v, out, lse, masked_pattern(q, k, mask, scale),
                                  need_dq=need_dq, need_dkdv=need_dkdv)[:3]


# torch.library custom ops tied together by register_autograd: one opaque node each for
# torch.compile / export (fake implementations give the shapes) and a name fvcore can count.

@torch.library.custom_op("backbones::masked_attention_fwd", mutates_args=())
def _masked_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor, scale: float, store_lse: bool
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, mask, scale, store_lse)


@_masked_attention_fwd_op.register_fake
def _(q, k, v, mask, scale, store_lse):
    B, heads, Lq, _ = q.shape
    out = q.new_empty(B, Lq, heads, v.shape[-1]).permute(0, 2, 1, 3)
    lse = q.new_empty((B * heads, Lq) if store_lse else (1,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("backbones::masked_attention_bwd", mutates_args=())
def _masked_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, mask: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, scale: float, need_dq: bool, need_dkdv: bool
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dout, q, k, v, mask, out, lse, scale, need_dq=need_dq, need_dkdv=need_dkdv)


@_masked_attention_bwd_op.register_fake
def _(dout, q, k, v, mask, out, lse, scale, need_dq, need_dkdv):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


bsa.register_qkv_autograd(_masked_attention_fwd_op, _masked_attention_bwd_op, num_saved_inputs=4)


def masked_attention_triton(q, k, v, mask, scale):
    """Triton implementation of ``masked_attention_reference``; arguments already validated by
    :func:`ops.masked_attention`."""
    check_triton_supported("masked_attention", q, v)
    store_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out, _ = _masked_attention_fwd_op(q, k, v, mask, float(scale), store_lse)
    return out
