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
from typing import List, Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._custom_op import FusedOp

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


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
             scale: float, for_backward: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return bsa.attention_forward(q, k, v, masked_pattern(q, k, mask, scale),
                                 store_lse=for_backward)


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float,
              needs_input_grad: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    need_dq, need_dk, need_dv = needs_input_grad
    return bsa.attention_backward(dout, q, k, v, out, lse, masked_pattern(q, k, mask, scale),
                                  need_dq=need_dq, need_dkdv=need_dk or need_dv)[:3]


FUSED_OP = FusedOp("masked_attention", forward=_forward, backward=_backward,
                   forward_fake=bsa.fake_forward)


def masked_attention_triton(q, k, v, mask, scale):
    """Triton implementation of ``masked_attention_reference``; arguments already validated by
    :func:`ops.masked_attention`."""
    return FUSED_OP(q, k, v, mask, float(scale))
