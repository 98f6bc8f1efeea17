"""Fused Triton path of :func:`ops.halo_attention_2d`: the ``HALO`` pattern of the block-sparse
kernel family (:mod:`ops._triton_blocksparse`).

A query group is one ``bq x bq`` block of the (possibly strided) query grid; its key list is the
block's haloed ``win x win`` window on the key grid, token ``t`` at
``(by * bs - halo + t // win, bx * bs - halo + t % win)``. Positions outside the grid load as
zeros and **stay in the softmax** (timm's semantics: logit = relative bias only, value 0).

Relative logits: ``RH = c * q @ height_rel.T`` and ``RW = c * q @ width_rel.T`` (``c = scale``
with ``scale_pos_embed``, else 1) are computed by :func:`ops.halo_attention_2d` with torch
matmuls, ``(B, heads, Hq, Wq, 2 * win - 1)``, and gathered in-kernel at offsets
``win - 1 + ki - i`` / ``win - 1 + kj - j``; the dQ pass reduces their gradients per offset and
torch's autograd carries them on to q and the tables. The dK/dV pass owns each key's *home*
``bs x bs`` block and loops over the query blocks whose windows reach it (neighbours within
``ceil(halo / bs)`` blocks): one writer per gradient element, no atomics, no windowed gradient
buffers.
"""
from typing import List, Optional, Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._custom_op import FusedOp

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


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: Optional[torch.Tensor],
             rel_w: Optional[torch.Tensor], block_size: int, halo_size: int, stride: int,
             scale: float, for_backward: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    pattern = halo_pattern(q, k, block_size, halo_size, stride, scale)
    return bsa.attention_forward(q, k, v, pattern, store_lse=for_backward,
                                 rel=_rel(rel_h, rel_w, block_size, halo_size))


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rel_h: Optional[torch.Tensor], rel_w: Optional[torch.Tensor], out: torch.Tensor,
              lse: torch.Tensor, block_size: int, halo_size: int, stride: int, scale: float,
              needs_input_grad: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor]:
    need_dq, need_dk, need_dv, need_drh, need_drw = needs_input_grad
    pattern = halo_pattern(q, k, block_size, halo_size, stride, scale)
    return bsa.attention_backward(dout, q, k, v, out, lse, pattern,
                                  _rel(rel_h, rel_w, block_size, halo_size), need_dq=need_dq,
                                  need_dkdv=need_dk or need_dv, need_drel=need_drh or need_drw)


# rel_h / rel_w are the relative logits RH / RW (see the module docstring), not the tables.
FUSED_OP = FusedOp("halo_attention", forward=_forward, backward=_backward,
                   forward_fake=bsa.fake_forward,
                   differentiable=("q", "k", "v", "rel_h", "rel_w"))


def halo_attention_triton(q, k, v, rel_logits, block_size, halo_size, stride, scale):
    """Triton implementation of ``halo_attention_reference``; arguments already validated by
    :func:`ops.halo_attention_2d`, ``rel_logits`` None or the ``(RH, RW)`` of
    :func:`ops.halo_attention.halo_rel_logits`."""
    rh, rw = (None, None) if rel_logits is None else rel_logits
    return FUSED_OP(q, k, v, rh, rw, block_size, halo_size, stride, float(scale))
