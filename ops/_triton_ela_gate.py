"""Fused Triton path of :func:`ops.ela_gate`: the passes over the feature map as kernels, the
1-D part in PyTorch. One custom op (``backbones::ela_gate_fwd`` / ``_bwd``):

forward
  1. ``_pool_fwd_kernel``: one read of ``x`` gives both strip means, ``z = [mean over W (H values)
     | mean over H (W values)]``, ``(B, C, H + W)`` in float32;
  2. PyTorch: Conv1d + GroupNorm + sigmoid on ``z[..., :H]`` and ``z[..., H:]`` (a few hundred
     FLOPs per pixel of ``(B, C, H + W)``: not worth a kernel) -> the gates ``a = [a_h | a_w]``;
  3. ``_product_fwd_kernel``: ``out = (x * a_h) * a_w`` in one read of ``x`` and one write.

backward (``z`` and ``a`` saved)
  1. ``_gate_grad_kernel``: ``da_h[i] = sum_j dout x a_w``, ``da_w[j] = sum_i dout x a_h`` in one
     read of ``dout`` and ``x``;
  2. PyTorch autograd through the recomputed 1-D part: ``dz`` and the conv / GroupNorm grads;
  3. ``_input_grad_kernel``: ``dx = dout a_h a_w + dz_h / W + dz_w / H`` (the product's and the
     strip means' terms at once) in one read of ``dout`` and one write.

One program owns one ``(b, c)`` plane and walks it in ``BLOCK_H x BLOCK_W`` tiles: column sums
finish inside a column strip; row sums of a plane wider than one tile are accumulated in the
float32 output across strips (no other program writes them, so no atomics). Sums are float32
whatever the input dtype.
"""
from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ._custom_op import FusedOp
from ._triton_blocksparse import INTERPRETED

__all__ = ["ela_gate_triton"]


# Elements of one tile. Interpreter: every tl op is a numpy call with fixed overhead, so whole
# planes per tile win. GPU: 4096 (32 fp32 registers a thread at 4 warps). Tests lower them to run
# the multi-tile paths on small planes.
TILE_ELEMENTS = {"interpreter": 1 << 16, "gpu": 4096}
MAX_BLOCK_W = 256


def _blocks(H, W):
    cap = TILE_ELEMENTS["interpreter" if INTERPRETED else "gpu"]
    block_w = min(triton.next_power_of_2(max(W, 1)), MAX_BLOCK_W, cap)
    block_h = min(triton.next_power_of_2(max(H, 1)), max(1, cap // block_w))
    return block_h, block_w


@triton.jit
def _pool_fwd_kernel(x_ptr, z_ptr, H, W, inv_h, inv_w,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    x_ptr += plane * H * W
    z_ptr += plane * (H + W)
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    for c0 in range(0, W, BLOCK_W):
        cc = c0 + cols
        col_acc = tl.full([BLOCK_W], 0.0, dtype=tl.float32)
        for r0 in range(0, H, BLOCK_H):
            rr = r0 + rows
            mask = (rr[:, None] < H) & (cc[None, :] < W)
            t = tl.load(x_ptr + rr[:, None] * W + cc[None, :], mask=mask, other=0.).to(tl.float32)
            col_acc += tl.sum(t, 0)
            row_mask = rr < H
            prev = tl.load(z_ptr + rr, mask=row_mask, other=0.)
            tl.store(z_ptr + rr, prev + tl.sum(t, 1) * inv_w, mask=row_mask)
        tl.store(z_ptr + H + cc, col_acc * inv_h, mask=cc < W)


@triton.jit
def _product_fwd_kernel(x_ptr, a_ptr, out_ptr, H, W,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    x_ptr += plane * H * W
    out_ptr += plane * H * W
    a_ptr += plane * (H + W)
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    for r0 in range(0, H, BLOCK_H):
        rr = r0 + rows
        a_h = tl.load(a_ptr + rr, mask=rr < H, other=0.).to(tl.float32)
        for c0 in range(0, W, BLOCK_W):
            cc = c0 + cols
            a_w = tl.load(a_ptr + H + cc, mask=cc < W, other=0.).to(tl.float32)
            mask = (rr[:, None] < H) & (cc[None, :] < W)
            offs = rr[:, None] * W + cc[None, :]
            t = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
            out = (t * a_h[:, None]) * a_w[None, :]  # the official order
            tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_grad_kernel(dout_ptr, x_ptr, a_ptr, da_ptr, H, W,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """``da_h[i] = sum_j dout x a_w``, ``da_w[j] = sum_i dout x a_h`` (float32)."""
    plane = tl.program_id(0).to(tl.int64)
    dout_ptr += plane * H * W
    x_ptr += plane * H * W
    a_ptr += plane * (H + W)
    da_ptr += plane * (H + W)
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    for c0 in range(0, W, BLOCK_W):
        cc = c0 + cols
        a_w = tl.load(a_ptr + H + cc, mask=cc < W, other=0.).to(tl.float32)
        da_w = tl.full([BLOCK_W], 0.0, dtype=tl.float32)
        for r0 in range(0, H, BLOCK_H):
            rr = r0 + rows
            a_h = tl.load(a_ptr + rr, mask=rr < H, other=0.).to(tl.float32)
            mask = (rr[:, None] < H) & (cc[None, :] < W)
            offs = rr[:, None] * W + cc[None, :]
            gx = (tl.load(dout_ptr + offs, mask=mask, other=0.).to(tl.float32)
                  * tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32))
            da_w += tl.sum(gx * a_h[:, None], 0)
            row_mask = rr < H
            prev = tl.load(da_ptr + rr, mask=row_mask, other=0.)
            tl.store(da_ptr + rr, prev + tl.sum(gx * a_w[None, :], 1), mask=row_mask)
        tl.store(da_ptr + H + cc, da_w, mask=cc < W)


@triton.jit
def _input_grad_kernel(dout_ptr, a_ptr, dz_ptr, dx_ptr, H, W, inv_h, inv_w,
                       HAS_DZ: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """``dx = dout a_h a_w`` (the product) ``+ dz_h / W + dz_w / H`` (the strip means)."""
    plane = tl.program_id(0).to(tl.int64)
    dout_ptr += plane * H * W
    dx_ptr += plane * H * W
    a_ptr += plane * (H + W)
    dz_ptr += plane * (H + W)
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    for r0 in range(0, H, BLOCK_H):
        rr = r0 + rows
        a_h = tl.load(a_ptr + rr, mask=rr < H, other=0.).to(tl.float32)
        if HAS_DZ:
            dz_h = tl.load(dz_ptr + rr, mask=rr < H, other=0.) * inv_w
        for c0 in range(0, W, BLOCK_W):
            cc = c0 + cols
            a_w = tl.load(a_ptr + H + cc, mask=cc < W, other=0.).to(tl.float32)
            mask = (rr[:, None] < H) & (cc[None, :] < W)
            offs = rr[:, None] * W + cc[None, :]
            g = tl.load(dout_ptr + offs, mask=mask, other=0.).to(tl.float32)
            dx = (g * a_h[:, None]) * a_w[None, :]
            if HAS_DZ:
                dz_w = tl.load(dz_ptr + H + cc, mask=cc < W, other=0.) * inv_h
                dx += dz_h[:, None] + dz_w[None, :]
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, x, *args, **meta):
    B, C, H, W = x.shape
    if B * C and H and W:
        block_h, block_w = _blocks(H, W)
        kernel[(B * C,)](*args, BLOCK_H=block_h, BLOCK_W=block_w, **meta)


def _forward(x: torch.Tensor, weight: torch.Tensor, gn_weight: torch.Tensor,
             gn_bias: torch.Tensor, num_groups: int, eps: float,
             for_backward: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    B, C, H, W = x.shape
    z = torch.zeros(B, C, H + W, device=x.device, dtype=torch.float32)
    _launch(_pool_fwd_kernel, x, x, z, H, W, 1.0 / max(H, 1), 1.0 / max(W, 1))
    a = _sequence_gates(z.to(x.dtype), weight, gn_weight, gn_bias, num_groups, eps, H)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _launch(_product_fwd_kernel, x, x, a, out, H, W)
    return out, z, a


def _sequence_forward(z, weight, gn_weight, gn_bias, num_groups, eps):
    """``sigmoid(GN(conv1d(z)))`` of one direction's strip means ``z`` ``(B, C, L)`` through ATen
    (the op's ``ela_sequence_gate``), with what its backward needs: (y, normed, mean, rstd)."""
    B, C, L = z.shape
    pad, groups = weight.shape[-1] // 2, C // weight.shape[1]
    y = torch.ops.aten.convolution(z, weight, None, [1], [pad], [1], False, [0], groups)
    normed, mean, rstd = torch.ops.aten.native_group_norm(
        y, gn_weight, gn_bias, B, C, L, num_groups, eps)
    return y, normed, mean, rstd


def _sequence_gates(z, weight, gn_weight, gn_bias, num_groups, eps, H):
    """``a = [a_h | a_w]`` ``(B, C, H + W)`` from the strip means ``z``."""
    return torch.cat([torch.sigmoid(_sequence_forward(part, weight, gn_weight, gn_bias,
                                                      num_groups, eps)[1])
                      for part in (z[..., :H], z[..., H:])], dim=-1)


def _sequence_backward(da, z, weight, gn_weight, gn_bias, num_groups, eps, needs):
    """Gradients of ``sigmoid(GN(conv1d(z)))`` for one direction, through ATen's own backward
    ops (inside a custom op autograd is off; the 1-D part is recomputed, a few hundred FLOPs per
    pixel of ``(B, C, L)``). ``needs``: (dz, dweight, dgn_weight, dgn_bias)."""
    B, C, L = z.shape
    pad, groups = weight.shape[-1] // 2, C // weight.shape[1]
    y, normed, mean, rstd = _sequence_forward(z, weight, gn_weight, gn_bias, num_groups, eps)
    d_normed = torch.ops.aten.sigmoid_backward(da, torch.sigmoid(normed))
    dy, dgw, dgb = torch.ops.aten.native_group_norm_backward(
        d_normed, y, mean, rstd, gn_weight, B, C, L, num_groups,
        [needs[0] or needs[1], needs[2], needs[3]])
    dz = dw = None
    if needs[0] or needs[1]:
        dz, dw, _ = torch.ops.aten.convolution_backward(
            dy, z, weight, None, [1], [pad], [1], False, [0], groups,
            [needs[0], needs[1], False])
    return dz, dw, dgw, dgb


def _backward(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, gn_weight: torch.Tensor,
              gn_bias: torch.Tensor, z: torch.Tensor, a: torch.Tensor, num_groups: int,
              eps: float, needs_input_grad: List[bool]) -> Tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor, torch.Tensor]:
    x, a, dout = x.contiguous(), a.contiguous(), dout.contiguous()
    B, C, H, W = x.shape
    # the gradient reaching the gates
    da = torch.zeros(a.shape, device=a.device, dtype=torch.float32)
    _launch(_gate_grad_kernel, x, dout, x, a, da, H, W)
    da = da.to(a.dtype)
    zx = z.to(x.dtype)
    per_direction = [
        _sequence_backward(da[..., sl], zx[..., sl].contiguous(), weight, gn_weight, gn_bias,
                           num_groups, eps, needs_input_grad)
        for sl in (slice(None, H), slice(H, None))]
    dx = dw = dgw = dgb = None
    if needs_input_grad[1]:
        dw = per_direction[0][1] + per_direction[1][1]
    if needs_input_grad[2]:
        dgw = per_direction[0][2] + per_direction[1][2]
    if needs_input_grad[3]:
        dgb = per_direction[0][3] + per_direction[1][3]
    if needs_input_grad[0]:
        dz = torch.cat([per_direction[0][0], per_direction[1][0]], -1).float()
        dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        _launch(_input_grad_kernel, x, dout, a, dz, dx, H, W, 1.0 / max(H, 1), 1.0 / max(W, 1),
                HAS_DZ=True)
    return dx, dw, dgw, dgb


def _forward_fake(x, weight, gn_weight, gn_bias, num_groups, eps, for_backward):
    B, C, H, W = x.shape
    return (torch.empty(x.shape, device=x.device, dtype=x.dtype),
            x.new_empty(B, C, H + W, dtype=torch.float32), x.new_empty(B, C, H + W))


FUSED_OP = FusedOp("ela_gate", forward=_forward, backward=_backward, forward_fake=_forward_fake,
                   outputs=("out", "z", "a"), saved=("z", "a"),
                   differentiable=("x", "weight", "gn_weight", "gn_bias"))


def ela_gate_triton(x, weight, gn_weight, gn_bias, num_groups, eps):
    """Triton implementation of ``ela_gate_reference``; arguments already validated by
    :func:`ops.ela_gate`."""
    return FUSED_OP(x, weight, gn_weight, gn_bias, int(num_groups), float(eps))
