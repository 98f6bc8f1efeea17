"""Fused Triton path of :func:`ops.window_attention_2d`: the ``WINDOW`` pattern of the
block-sparse kernel family (:mod:`ops._triton_blocksparse`).

A window is a query group whose key list is the window itself; token ``t`` of window
``(wy, wx)`` sits at grid position ``(wy * wh - oy + t // ww, wx * ww - ox + t % ww)``, so the
partition (padding included) is index arithmetic on the inputs' own strides. Keys outside the
grid load as zeros: with ``padding="zeros"`` that is the definition (logit 0, value 0, in the
softmax); with ``"masked"`` they get ``-inf``. Windows never overlap, so the dK/dV pass owns a
window's keys and loops over the same window's queries; when a window fits one key block that
pass also finishes dQ.
"""
from typing import List, Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._custom_op import FusedOp

__all__ = ["window_attention_triton"]

# Under the interpreter every tl op is one numpy call whose fixed Python overhead dwarfs the
# arithmetic, so fewer, larger tiles are strictly faster; 128 still splits the tests' full-grid
# windows (up to 16x16 tokens) into several blocks.
_INTERPRETER_BLOCK = 128


def _launch_config(window_tokens, block_dqk, block_dv, backward):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for windows of ``window_tokens`` tokens.

    Tiles never exceed the next power of two of the window: CSWin's 1-row stripes and HiLo's 2x2
    windows would otherwise spend most of every tile on masked lanes. The GPU choices come from a
    sweep on an H100 (bf16, B=128, Swin 7x7 / CSWin stripes / 14x14 full grid, d = 32..128):
    forward 64x64 tiles, 128-query tiles once a window has >= 128 tokens; backward with the whole
    window in one key block when it fits (fused dQ) and short 32-query steps.
    """
    fit = bsa.fit(window_tokens)
    if bsa.INTERPRETED:
        config = (min(_INTERPRETER_BLOCK, fit),) * 2 + (1, 1)
    elif max(block_dqk, block_dv) > 128:
        # q/k/v tiles and fp32 accumulators of 256-wide heads must shrink to fit registers.
        config = (min(32, fit), min(32, fit), 8, 2)
    elif not backward:
        config = (128, 64, 8, 2) if fit >= 128 else (min(64, fit), min(64, fit), 4, 2)
    elif fit <= 64:
        config = (min(32, fit), fit, 4, 1)
    elif fit == 128 and max(block_dqk, block_dv) <= 64:
        config = (128, 128, 8, 1)
    else:
        config = (64, 64, 4, 2)
    return (bsa.cap(config[0]), bsa.cap(config[1])) + config[2:]


def window_pattern(q, v, window_size, window_offset, padding, scale):
    """The WINDOW pattern of one call."""
    H, W = q.shape[2:4]
    (wh, ww), (oy, ox) = window_size, window_offset
    windows_x = triton.cdiv(W + ox, ww)
    windows = triton.cdiv(H + oy, wh) * windows_x
    L = wh * ww
    dqk, dv = bsa.fit(q.shape[-1]), bsa.fit(v.shape[-1])
    bm, bn, warps, stages = _launch_config(L, dqk, dv, backward=False)
    fwd = bsa.Launch(windows, triton.cdiv(L, bm), bm, bn, warps, stages)
    bm, bn, warps, stages = _launch_config(L, dqk, dv, backward=True)
    dq = bsa.Launch(windows, triton.cdiv(L, bm), bm, bn, warps, stages)
    dkdv = bsa.Launch(windows, triton.cdiv(L, bn), bm, bn, warps, stages)
    return bsa.Pattern(bsa.WINDOW, (wh, ww, oy, ox, windows_x), (H, W), (H, W), scale,
                       fwd, dq, dkdv, mask_oob=padding == "masked", fuse_dq=dkdv.blocks == 1)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_h: int, window_w: int,
             offset_y: int, offset_x: int, padding: str, scale: float, for_backward: bool
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    pattern = window_pattern(q, v, (window_h, window_w), (offset_y, offset_x), padding, scale)
    return bsa.attention_forward(q, k, v, pattern, store_lse=for_backward)


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              out: torch.Tensor, lse: torch.Tensor, window_h: int, window_w: int, offset_y: int,
              offset_x: int, padding: str, scale: float, needs_input_grad: List[bool]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    need_dq, need_dk, need_dv = needs_input_grad
    pattern = window_pattern(q, v, (window_h, window_w), (offset_y, offset_x), padding, scale)
    return bsa.attention_backward(dout, q, k, v, out, lse, pattern, need_dq=need_dq,
                                  need_dkdv=need_dk or need_dv)[:3]


FUSED_OP = FusedOp("window_attention", forward=_forward, backward=_backward,
                   forward_fake=bsa.fake_forward)


def window_attention_triton(q, k, v, window_size, window_offset, padding, scale):
    """Triton implementation of ``window_attention_reference``; arguments already validated by
    :func:`ops.window_attention_2d` (``window_size``/``window_offset`` are int pairs)."""
    return FUSED_OP(q, k, v, *window_size, *window_offset, padding, float(scale))
