"""Fused Triton path of :func:`ops.ulsam_attention`: the passes over the feature map as kernels,
the per-(sample, subspace) softmax of the small logit maps in PyTorch. One custom op
(``backbones::ulsam_fwd`` / ``_bwd``):

forward
  1. ``_logits_kernel``: per (sample, subspace, spatial tile), for every channel of the
     subspace, the folded depthwise affine + ReLU at the 9 neighbours of each pixel, their
     maximum (the 3x3 max-pool), weighted into the G -> 1 sum; then bias + ReLU -> logits ``s``
     ``(B, g, H, W)`` (float32).
     ``x`` is read once (the 9 shifted loads hit the cache);
  2. PyTorch: softmax of ``s`` over the H*W positions -> ``attn`` (float32, g maps a sample);
  3. ``_apply_kernel``: ``out = attn * x + x`` in one read of ``x`` and one write.

backward (``s`` and ``attn`` saved)
  1. ``_attn_grad_kernel``: ``dA = sum over the subspace's channels of dout * x`` and the direct
     term ``dx = dout * (1 + attn)``, in one read of ``dout`` and ``x``;
  2. PyTorch: softmax and ReLU backward on the ``(B, g, H, W)`` maps -> ``dz``, and the bias grad;
  3. ``_branch_grad_kernel``: per output pixel and channel the window's maximum and its position
     (recomputed; the first maximum in row-major order, as PyTorch's max-pool picks), the weight
     grad ``sum dz * pooled``, and ``w * dz`` added (atomically) at the maximum's position of a
     float32 gradient map of the ReLU output. A maximum of 0 (ReLU off) gets no gradient;
  4. ``_affine_grad_kernel``: ``dx += g * dw_scale``, ``d dw_scale = sum g * x``,
     ``d dw_shift = sum g`` in one read.

The kernels over a subspace's channels run one program per (sample, subspace, spatial tile), so a
batch of 1 with few subspaces still fills a GPU; the per-channel kernels run one program per
(sample, channel) plane. Every sum is float32 whatever the input dtype; gradients of the (C,) /
(g, G) parameters are accumulated with float32 atomics across programs.
"""
from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ._custom_op import FusedOp
from ._triton_blocksparse import INTERPRETED

__all__ = ["ulsam_attention_triton"]

# Elements of one tile (see ops._triton_ela_gate): whole planes in the interpreter, 1024 on a GPU
# (nine shifted tiles are live in the logits kernel). Tests lower them to run multi-tile planes.
TILE_ELEMENTS = {"interpreter": 1 << 16, "gpu": 1024}
MAX_BLOCK_W = 128


def _blocks(H, W):
    cap = TILE_ELEMENTS["interpreter" if INTERPRETED else "gpu"]
    block_w = min(triton.next_power_of_2(max(W, 1)), MAX_BLOCK_W, cap)
    block_h = min(triton.next_power_of_2(max(H, 1)), max(1, cap // block_w))
    return block_h, block_w


@triton.jit
def _logits_kernel(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, s_ptr, G, NG, H, W, TILES_W,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)          # sample * g + subspace
    tile = tl.program_id(1)
    n = pid % NG
    x_ptr += pid * G * H * W                     # the subspace's first channel plane
    s_ptr += pid * H * W
    rr = (tile // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)
    cc = (tile % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for c in range(0, G):
        sc = tl.load(scale_ptr + n * G + c).to(tl.float32)
        sh = tl.load(shift_ptr + n * G + c).to(tl.float32)
        wc = tl.load(w_ptr + n * G + c).to(tl.float32)
        plane = x_ptr + c * H * W
        # d >= 0 and the centre is inside: 0 outside the plane never changes the max
        pooled = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for dy in tl.static_range(-1, 2):
            for dx in tl.static_range(-1, 2):
                yy = rr[:, None] + dy
                xx = cc[None, :] + dx
                m = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                t = tl.load(plane + yy * W + xx, mask=m, other=0.).to(tl.float32)
                d = tl.where(m, tl.maximum(t * sc + sh, 0.), 0.)
                pooled = tl.maximum(pooled, d)
        acc += wc * pooled
    s = tl.maximum(acc + tl.load(b_ptr + n).to(tl.float32), 0.)
    out_mask = (rr[:, None] < H) & (cc[None, :] < W)
    tl.store(s_ptr + rr[:, None] * W + cc[None, :], s, mask=out_mask)


@triton.jit
def _apply_kernel(x_ptr, a_ptr, out_ptr, G, H, W,
                  BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)        # sample * C + channel
    x_ptr += plane * H * W
    out_ptr += plane * H * W
    a_ptr += (plane // G) * H * W                # the channel's subspace map
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    for r0 in range(0, H, BLOCK_H):
        rr = r0 + rows
        for c0 in range(0, W, BLOCK_W):
            cc = c0 + cols
            mask = (rr[:, None] < H) & (cc[None, :] < W)
            offs = rr[:, None] * W + cc[None, :]
            t = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
            a = tl.load(a_ptr + offs, mask=mask, other=0.)
            tl.store(out_ptr + offs, (a * t + t).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attn_grad_kernel(dout_ptr, x_ptr, a_ptr, da_ptr, dx_ptr, G, H, W, TILES_W,
                      NEED_DX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)          # sample * g + subspace
    tile = tl.program_id(1)
    dout_ptr += pid * G * H * W
    x_ptr += pid * G * H * W
    dx_ptr += pid * G * H * W
    a_ptr += pid * H * W
    da_ptr += pid * H * W
    rr = (tile // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)
    cc = (tile % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rr[:, None] < H) & (cc[None, :] < W)
    offs = rr[:, None] * W + cc[None, :]
    a = tl.load(a_ptr + offs, mask=mask, other=0.)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for c in range(0, G):
        g = tl.load(dout_ptr + c * H * W + offs, mask=mask, other=0.).to(tl.float32)
        t = tl.load(x_ptr + c * H * W + offs, mask=mask, other=0.).to(tl.float32)
        acc += g * t
        if NEED_DX:
            tl.store(dx_ptr + c * H * W + offs, g * a + g, mask=mask)
    tl.store(da_ptr + offs, acc, mask=mask)


@triton.jit
def _branch_grad_kernel(x_ptr, scale_ptr, shift_ptr, w_ptr, dz_ptr, gd_ptr, dw_ptr, G, NG, H, W,
                        TILES_W, NEED_GD: tl.constexpr, NEED_DW: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)          # sample * g + subspace
    tile = tl.program_id(1)
    n = pid % NG
    x_ptr += pid * G * H * W
    gd_ptr += pid * G * H * W
    dz_ptr += pid * H * W
    rr = (tile // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)
    cc = (tile % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = (rr[:, None] < H) & (cc[None, :] < W)
    offs = rr[:, None] * W + cc[None, :]
    dz = tl.load(dz_ptr + offs, mask=inside, other=0.)
    for c in range(0, G):
        sc = tl.load(scale_ptr + n * G + c).to(tl.float32)
        sh = tl.load(shift_ptr + n * G + c).to(tl.float32)
        wc = tl.load(w_ptr + n * G + c).to(tl.float32)
        plane = x_ptr + c * H * W
        # window maximum and its offset; outside the plane counts as -1 (never chosen), and a
        # later equal value does not replace an earlier one (PyTorch's first maximum)
        best = tl.full([BLOCK_H, BLOCK_W], -1.0, dtype=tl.float32)
        arg = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.int32)
        for dy in tl.static_range(-1, 2):
            for dx in tl.static_range(-1, 2):
                yy = rr[:, None] + dy
                xx = cc[None, :] + dx
                m = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                t = tl.load(plane + yy * W + xx, mask=m, other=0.).to(tl.float32)
                d = tl.where(m, tl.maximum(t * sc + sh, 0.), -1.0)
                take = d > best
                best = tl.where(take, d, best)
                arg = tl.where(take, dy * W + dx, arg)
        if NEED_DW:
            tl.atomic_add(dw_ptr + n * G + c, tl.sum(tl.sum(tl.where(inside, dz * best, 0.), 1), 0))
        if NEED_GD:
            tl.atomic_add(gd_ptr + c * H * W + offs + arg, wc * dz, mask=inside & (best > 0))


@triton.jit
def _affine_grad_kernel(x_ptr, scale_ptr, gd_ptr, dx_ptr, dscale_ptr, dshift_ptr, C, H, W,
                        NEED_DX: tl.constexpr, NEED_DP: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)        # sample * C + channel
    ch = plane % C
    x_ptr += plane * H * W
    gd_ptr += plane * H * W
    dx_ptr += plane * H * W
    sc = tl.load(scale_ptr + ch).to(tl.float32)
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    acc_scale = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc_shift = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for r0 in range(0, H, BLOCK_H):
        rr = r0 + rows
        for c0 in range(0, W, BLOCK_W):
            cc = c0 + cols
            mask = (rr[:, None] < H) & (cc[None, :] < W)
            offs = rr[:, None] * W + cc[None, :]
            gd = tl.load(gd_ptr + offs, mask=mask, other=0.)   # 0 wherever the ReLU was off
            if NEED_DX:
                prev = tl.load(dx_ptr + offs, mask=mask, other=0.)
                tl.store(dx_ptr + offs, prev + gd * sc, mask=mask)
            if NEED_DP:
                t = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
                acc_scale += gd * t
                acc_shift += gd
    if NEED_DP:
        tl.atomic_add(dscale_ptr + ch, tl.sum(tl.sum(acc_scale, 1), 0))
        tl.atomic_add(dshift_ptr + ch, tl.sum(tl.sum(acc_shift, 1), 0))


def _meta(H, W):
    block_h, block_w = _blocks(H, W)
    return dict(BLOCK_H=block_h, BLOCK_W=block_w)


def _tiles(H, W):
    """(tiles of a plane, tiles along W) for the kernels with one program per tile."""
    block_h, block_w = _blocks(H, W)
    tiles_w = triton.cdiv(W, block_w)
    return triton.cdiv(H, block_h) * tiles_w, tiles_w


def _forward(x: torch.Tensor, dw_scale: torch.Tensor, dw_shift: torch.Tensor,
             pw_weight: torch.Tensor, pw_bias: torch.Tensor,
             for_backward: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    B, C, H, W = x.shape
    g, G = pw_weight.shape
    s = torch.zeros(B, g, H, W, device=x.device, dtype=torch.float32)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x.numel() == 0:
        return out, s, s.clone()
    tiles, tiles_w = _tiles(H, W)
    _logits_kernel[(B * g, tiles)](x, dw_scale.contiguous(), dw_shift.contiguous(),
                                   pw_weight.contiguous(), pw_bias.contiguous(), s, G, g, H, W,
                                   tiles_w, **_meta(H, W))
    attn = s.flatten(2).softmax(-1).view_as(s)
    _apply_kernel[(B * C,)](x, attn, out, G, H, W, **_meta(H, W))
    return out, s, attn


def _backward(dout: torch.Tensor, x: torch.Tensor, dw_scale: torch.Tensor, dw_shift: torch.Tensor,
              pw_weight: torch.Tensor, pw_bias: torch.Tensor, s: torch.Tensor, attn: torch.Tensor,
              needs_input_grad: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor]:
    need_x, need_scale, need_shift, need_w, need_b = needs_input_grad
    x, dout = x.contiguous(), dout.contiguous()
    B, C, H, W = x.shape
    g, G = pw_weight.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    dx32 = torch.zeros(x.shape, **f32) if need_x else torch.empty(0, **f32)
    d_scale = torch.zeros(C, **f32)
    d_shift = torch.zeros(C, **f32)
    d_w = torch.zeros(g, G, **f32)
    d_b = torch.zeros(g, **f32)
    if x.numel():
        meta = _meta(H, W)
        tiles, tiles_w = _tiles(H, W)
        da = torch.empty(B, g, H, W, **f32)
        _attn_grad_kernel[(B * g, tiles)](dout, x, attn, da, dx32, G, H, W, tiles_w,
                                          NEED_DX=need_x, **meta)
        # softmax over the positions, then the ReLU (s > 0 where it passed)
        dz = attn * (da - (attn * da).sum((2, 3), keepdim=True))
        dz = torch.where(s > 0, dz, torch.zeros_like(dz))
        d_b = dz.sum((0, 2, 3))
        need_gd = need_x or need_scale or need_shift
        if need_gd or need_w:
            gd = torch.zeros(x.shape, **f32) if need_gd else torch.empty(0, **f32)
            scale, shift = dw_scale.contiguous(), dw_shift.contiguous()
            _branch_grad_kernel[(B * g, tiles)](x, scale, shift, pw_weight.contiguous(),
                                                dz.contiguous(), gd, d_w, G, g, H, W, tiles_w,
                                                NEED_GD=need_gd, NEED_DW=need_w, **meta)
            if need_gd:
                _affine_grad_kernel[(B * C,)](x, scale, gd, dx32, d_scale, d_shift, C, H, W,
                                              NEED_DX=need_x, NEED_DP=need_scale or need_shift,
                                              **meta)
    return (dx32.to(x.dtype) if need_x else None,
            d_scale.to(dw_scale.dtype) if need_scale else None,
            d_shift.to(dw_shift.dtype) if need_shift else None,
            d_w.to(pw_weight.dtype) if need_w else None,
            d_b.to(pw_bias.dtype) if need_b else None)


def _forward_fake(x, dw_scale, dw_shift, pw_weight, pw_bias, for_backward):
    B, C, H, W = x.shape
    g = pw_weight.shape[0]
    return (torch.empty(x.shape, device=x.device, dtype=x.dtype),
            x.new_empty(B, g, H, W, dtype=torch.float32),
            x.new_empty(B, g, H, W, dtype=torch.float32))


# named after the module (ops/ulsam.py beside ops/_triton_ulsam.py)
FUSED_OP = FusedOp("ulsam", forward=_forward, backward=_backward,
                   forward_fake=_forward_fake, outputs=("out", "s", "attn"), saved=("s", "attn"),
                   differentiable=("x", "dw_scale", "dw_shift", "pw_weight", "pw_bias"))


def ulsam_attention_triton(x, dw_scale, dw_shift, pw_weight, pw_bias):
    """Triton implementation of ``ulsam_attention_reference``; arguments already validated by
    :func:`ops.ulsam_attention`."""
    return FUSED_OP(x, dw_scale, dw_shift, pw_weight, pw_bias)
