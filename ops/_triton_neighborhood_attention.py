"""Fused Triton path of :func:`ops.neighborhood_attention_2d`: the ``NEIGHBORHOOD`` pattern of
the block-sparse kernel family (:mod:`ops._triton_blocksparse`).

Dilation first: with dilation ``(dh, dw)`` the grid splits into ``dh * dw`` interleaved sub-grids
(group ``(gy, gx)`` holds positions ``(gy + dh * i, gx + dw * j)``) and neighborhood attention never
crosses them: on its own sub-grid a query sees the plain clamped window
``start(i) = clamp(i - k // 2, 0, Lg - k)`` (NATTEN's semantics). A query group is a ``TY x TX``
tile of one sub-grid; ``start`` is monotone, so its key list is the rectangle
``[start(y0), start(y_last) + kh) x [start(x0), start(x_last) + kw)``, and each (query, key) pair
passes the clamped-window test. The dK/dV pass owns ``KY x KX`` key tiles and loops over the query
rectangle whose windows can reach them (the analytic inverse of ``start``): one writer per
gradient element, no atomics.
"""
from typing import List, Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._custom_op import FusedOp

__all__ = ["neighborhood_attention_triton"]

_TILE_CAP = None  # tests lower this (per tile side) to force many small 2-D tiles


def _tile(extent_y, extent_x, max_tokens):
    """Power-of-two ``(ty, tx)`` covering at most ``max_tokens`` (at least 16) tokens, no wider
    than the extents' next powers of two where that allows 16 tokens."""
    side = max_tokens if _TILE_CAP is None else _TILE_CAP
    tx = min(triton.next_power_of_2(max(extent_x, 1)), max_tokens, side)
    ty = min(triton.next_power_of_2(max(extent_y, 1)), max(1, max_tokens // tx), side)
    while ty * tx < bsa.MIN_BLOCK:  # tl.dot needs >= 16 rows
        if ty <= tx:
            ty *= 2
        else:
            tx *= 2
    return ty, tx


def neighborhood_pattern(q, kernel_size, dilation, scale):
    H, W = q.shape[2:4]
    (kh, kw), (dh, dw) = kernel_size, dilation
    Hg, Wg = triton.cdiv(H, dh), triton.cdiv(W, dw)  # the largest sub-grid
    # Interpreter: every tl op is a numpy call with fixed overhead, so few large tiles win.
    # GPU: 64-query tiles against 64-key blocks (not tuned on hardware yet).
    q_tokens, k_tokens = (128, 256) if bsa.INTERPRETED else (64, 64)
    ty, tx = _tile(Hg, Wg, bsa.cap(q_tokens))
    ky, kx = _tile(min(Hg, ty + kh - 1), min(Wg, tx + kw - 1), bsa.cap(k_tokens))
    groups = dh * dw
    q_tiles = (triton.cdiv(Wg, tx), triton.cdiv(Hg, ty))
    k_tiles = (triton.cdiv(Wg, kx), triton.cdiv(Hg, ky))
    key_rect = min(Hg, ty + kh - 1) * min(Wg, tx + kw - 1)
    query_rect = min(Hg, ky + kh - 1) * min(Wg, kx + kw - 1)
    block_n = bsa.cap(min(k_tokens, bsa.fit(key_rect)))
    block_m = bsa.cap(min(q_tokens, bsa.fit(query_rect)))
    fwd = bsa.Launch(groups * q_tiles[0] * q_tiles[1], 1, ty * tx, block_n, 4, 2)
    dkdv = bsa.Launch(groups * k_tiles[0] * k_tiles[1], 1, block_m, ky * kx, 4, 2,
                      args=(kh, kw, dh, dw, kx, *k_tiles, 0))
    return bsa.Pattern(bsa.NEIGHBORHOOD, (kh, kw, dh, dw, tx, *q_tiles), (H, W), (H, W), scale,
                       fwd, fwd, dkdv)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_h: int, kernel_w: int,
             dilation_h: int, dilation_w: int, scale: float, for_backward: bool
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    pattern = neighborhood_pattern(q, (kernel_h, kernel_w), (dilation_h, dilation_w), scale)
    return bsa.attention_forward(q, k, v, pattern, store_lse=for_backward)


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              out: torch.Tensor, lse: torch.Tensor, kernel_h: int, kernel_w: int,
              dilation_h: int, dilation_w: int, scale: float, needs_input_grad: List[bool]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    need_dq, need_dk, need_dv = needs_input_grad
    pattern = neighborhood_pattern(q, (kernel_h, kernel_w), (dilation_h, dilation_w), scale)
    return bsa.attention_backward(dout, q, k, v, out, lse, pattern, need_dq=need_dq,
                                  need_dkdv=need_dk or need_dv)[:3]


FUSED_OP = FusedOp("neighborhood_attention", forward=_forward, backward=_backward,
                   forward_fake=bsa.fake_forward)


def neighborhood_attention_triton(q, k, v, kernel_size, dilation, scale):
    """Triton implementation of ``neighborhood_attention_reference``; arguments already validated
    by :func:`ops.neighborhood_attention_2d` (``kernel_size``/``dilation`` are int pairs)."""
    return FUSED_OP(q, k, v, *kernel_size, *dilation, float(scale))
