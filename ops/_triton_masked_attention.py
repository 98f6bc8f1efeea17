"""Fused Triton path of :func:`ops.masked_attention` (forward and backward).

Forward (FlashAttention-2 style): one program per ``BLOCK_M`` query tile of one (batch, head)
streams the keys in ``BLOCK_N`` tiles with an online softmax. The mask tile is loaded from memory
first (bytes of a bool mask, or bits of the packed uint8 form: byte ``j >> 3``, bit ``j & 7``),
with stride 0 along a broadcast batch or head dim; a key tile with no kept (query, key) pair in
the query tile is skipped before K and V are read. Masked logits are ``-inf``.

Backward (FA2): ``delta = rowsum(dO * O)``; dQ per query tile (the forward's loop, same skip);
dK/dV per key tile, looping over every query tile and skipping those whose mask tile is empty.
Every gradient element has exactly one writer: no atomics.

Fully-masked rows: ``l = 0`` -> output 0 and a stored LSE of ``+inf``, so their probabilities and
gradients are 0 in the backward. The softmax runs in base 2 (scale folded into
``scale * log2(e)``); the LSE (``(B * heads, Lq)``, fp32, base 2) is kept for the backward. The
output is stored token-major ``(B, Lq, heads, d_v)`` and returned as its
``(B, heads, Lq, d_v)`` view, so ``out.transpose(1, 2).reshape(B, Lq, heads * d_v)`` is free.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ._checks import check_triton_supported
from ._triton_window_attention import _dot_precision, _tile_mask, _tile_mask_t

__all__ = ["masked_attention_triton"]

_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16 on GPU
_TILE_CAP = None  # tests lower this to force many small tiles


@triton.jit
def _mask_tile(M, rows, cols, valid, sm_q, sm_k, PACKED: tl.constexpr):
    """Kept-pair mask of a tile; ``rows`` (queries) and ``cols`` (keys) broadcast to its shape,
    ``M`` already points at the (batch, head) slice."""
    if PACKED:
        byte = tl.load(M + rows * sm_q + (cols >> 3) * sm_k, mask=valid, other=0).to(tl.int32)
        return (((byte >> (cols & 7)) & 1) != 0) & valid
    else:
        byte = tl.load(M + rows * sm_q + cols * sm_k, mask=valid, other=0)
        return (byte != 0) & valid


@triton.jit
def _ma_fwd(
    Q, K, V, M, O, LSE,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sm_b, sm_h, sm_q, sm_k,
    so_b, so_h, so_l, so_d,
    heads, Lq, Lk, q_tiles,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PACKED: tl.constexpr,
    STORE_LSE: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = (pid // q_tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    rows = (pid % q_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = rows < Lq
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    m_base = M + b * sm_b + h * sm_h
    for n0 in range(0, Lk, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k_ok = cols < Lk
        ok = _mask_tile(m_base, rows[:, None], cols[None, :], q_ok[:, None] & k_ok[None, :],
                        sm_q, sm_k, PACKED)
        if tl.max(ok.to(tl.int32)) > 0:  # skip key tiles with no kept pair: K/V never read
            kT = tl.load(k_base + offs_dqk[:, None] * sk_d + cols[None, :] * sk_l,
                         mask=_tile_mask_t(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            v = tl.load(v_base + cols[:, None] * sv_l + offs_dv[None, :] * sv_d,
                        mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                kT = kT.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    has_key = l_i > 0.0  # False on fully-masked rows (and tile padding): output 0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    tl.store(O + b * so_b + h * so_h + rows[:, None] * so_l + offs_dv[None, :] * so_d,
             out.to(O.dtype.element_ty), mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV))
    if STORE_LSE:
        lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
        tl.store(LSE + bh * Lq + rows, lse, mask=q_ok)


@triton.jit
def _ma_bwd_dq(
    Q, K, V, M, DO, LSE, DELTA, DQ,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sm_b, sm_h, sm_q, sm_k,
    sdo_b, sdo_h, sdo_l, sdo_d,
    sdq_b, sdq_h, sdq_l, sdq_d,
    heads, Lq, Lk, q_tiles,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PACKED: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query tile: dQ = scale · dS K over the key tiles it keeps."""
    pid = tl.program_id(0)
    bh = (pid // q_tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    rows = (pid % q_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = rows < Lq
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_l + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + rows[:, None] * sdo_l + offs_dv[None, :] * sdo_d,
                 mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * Lq + rows, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + bh * Lq + rows, mask=q_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    m_base = M + b * sm_b + h * sm_h
    for n0 in range(0, Lk, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k_ok = cols < Lk
        ok = _mask_tile(m_base, rows[:, None], cols[None, :], q_ok[:, None] & k_ok[None, :],
                        sm_q, sm_k, PACKED)
        if tl.max(ok.to(tl.int32)) > 0:
            k = tl.load(k_base + cols[:, None] * sk_l + offs_dqk[None, :] * sk_d,
                        mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            vT = tl.load(v_base + offs_dv[:, None] * sv_d + cols[None, :] * sv_l,
                         mask=_tile_mask_t(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                k = k.to(tl.float32)
                vT = vT.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    tl.store(DQ + b * sdq_b + h * sdq_h + rows[:, None] * sdq_l + offs_dqk[None, :] * sdq_d,
             (dq * scale).to(DQ.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))


@triton.jit
def _ma_bwd_dkdv(
    Q, K, V, M, DO, LSE, DELTA, DK, DV,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sm_b, sm_h, sm_q, sm_k,
    sdo_b, sdo_h, sdo_l, sdo_d,
    sdk_b, sdk_h, sdk_l, sdk_d,
    sdv_b, sdv_h, sdv_l, sdv_d,
    heads, Lq, Lk, k_tiles,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PACKED: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per key tile: dV = Pᵀ dO and dK = scale · dSᵀ Q over every query tile that
    keeps one of its keys. Probabilities are kept transposed (keys x queries)."""
    pid = tl.program_id(0)
    bh = (pid // k_tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    cols = (pid % k_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = cols < Lk
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + b * sk_b + h * sk_h + cols[:, None] * sk_l + offs_dqk[None, :] * sk_d,
                mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + cols[:, None] * sv_l + offs_dv[None, :] * sv_d,
                mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    m_base = M + b * sm_b + h * sm_h
    for m0 in range(0, Lq, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        q_ok = rows < Lq
        okT = _mask_tile(m_base, rows[None, :], cols[:, None], k_ok[:, None] & q_ok[None, :],
                         sm_q, sm_k, PACKED)
        if tl.max(okT.to(tl.int32)) > 0:
            qT = tl.load(q_base + offs_dqk[:, None] * sq_d + rows[None, :] * sq_l,
                         mask=_tile_mask_t(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            do = tl.load(do_base + rows[:, None] * sdo_l + offs_dv[None, :] * sdo_d,
                         mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                qT = qT.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + bh * Lq + rows, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + bh * Lq + rows, mask=q_ok, other=0.0)
            sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
            pT = tl.where(okT, tl.math.exp2(sT - lse[None, :]), 0.0)
            dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=DOT_PRECISION)

    tl.store(DK + b * sdk_b + h * sdk_h + cols[:, None] * sdk_l + offs_dqk[None, :] * sdk_d,
             (dk * scale).to(DK.dtype.element_ty),
             mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK))
    tl.store(DV + b * sdv_b + h * sdv_h + cols[:, None] * sdv_l + offs_dv[None, :] * sdv_d,
             dv.to(DV.dtype.element_ty), mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV))


# The kernels were decorated under the interpreter iff this is an InterpretedFunction.
_INTERPRETED = isinstance(_ma_fwd, InterpretedFunction)


class _Problem:
    """Shapes, tiles, mask view and launch parameters shared by the forward and backward."""

    def __init__(self, q, k, v, mask, scale):
        self.B, self.heads, self.Lq, self.d_qk = q.shape
        self.Lk, self.d_v = k.shape[2], v.shape[-1]
        self.scale = scale
        self.packed = mask.dtype == torch.uint8
        self.mask = mask if self.packed else mask.view(torch.uint8)
        # broadcast batch / head dims are read with stride 0
        self.mask_strides = tuple(0 if self.mask.shape[i] == 1 else self.mask.stride(i)
                                  for i in range(2)) + tuple(self.mask.stride()[2:])
        self.block_dqk = triton.next_power_of_2(max(self.d_qk, _MIN_BLOCK))
        self.block_dv = triton.next_power_of_2(max(self.d_v, _MIN_BLOCK))
        # Interpreter: every tl op is a numpy call with fixed overhead, so few large tiles win.
        # GPU: 64 x 64 tiles (not tuned on hardware yet).
        cap_m, cap_n = (128, 256) if _INTERPRETED else (64, 64)
        if _TILE_CAP is not None:
            cap_m, cap_n = min(cap_m, _TILE_CAP), min(cap_n, _TILE_CAP)
        self.block_m = max(_MIN_BLOCK, min(cap_m, triton.next_power_of_2(max(self.Lq, 1))))
        self.block_n = max(_MIN_BLOCK, min(cap_n, triton.next_power_of_2(max(self.Lk, 1))))
        self.q_tiles = triton.cdiv(self.Lq, self.block_m)
        self.k_tiles = triton.cdiv(self.Lk, self.block_n)
        self.num_warps = 1 if _INTERPRETED else 4

    def constexprs(self, dtype):
        return dict(
            D_QK=self.d_qk, D_V=self.d_v, BLOCK_M=self.block_m, BLOCK_N=self.block_n,
            BLOCK_DQK=self.block_dqk, BLOCK_DV=self.block_dv, PACKED=self.packed,
            UPCAST_DOT=_INTERPRETED and dtype == torch.bfloat16,
            DOT_PRECISION=_dot_precision(dtype),
            num_warps=self.num_warps, num_stages=1 if _INTERPRETED else 2)


def _forward(q, k, v, mask, scale, store_lse):
    pb = _Problem(q, k, v, mask, scale)
    out = torch.empty(pb.B, pb.Lq, pb.heads, pb.d_v, dtype=q.dtype,
                      device=q.device).permute(0, 2, 1, 3)
    lse = torch.empty(pb.B * pb.heads, pb.Lq, dtype=torch.float32, device=q.device) \
        if store_lse else torch.empty(1, dtype=torch.float32, device=q.device)
    programs = pb.B * pb.heads * pb.q_tiles
    if programs == 0:
        return out, lse
    _ma_fwd[(programs,)](
        q, k, v, pb.mask, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *pb.mask_strides, *out.stride(),
        pb.heads, pb.Lq, pb.Lk, pb.q_tiles, pb.scale,
        STORE_LSE=store_lse, **pb.constexprs(q.dtype))
    return out, lse


def _backward(dout, q, k, v, mask, out, lse, scale, need_dq=True, need_dkdv=True):
    pb = _Problem(q, k, v, mask, scale)
    dq, dk, dv = (torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if pb.B * pb.heads * pb.Lq == 0 or pb.Lk == 0:
        return dq, dk, dv
    delta = (out.float() * dout.float()).sum(-1).reshape(pb.B * pb.heads, pb.Lq).contiguous()
    consts = pb.constexprs(q.dtype)
    common = (pb.heads, pb.Lq, pb.Lk)
    if need_dkdv:
        _ma_bwd_dkdv[(pb.B * pb.heads * pb.k_tiles,)](
            q, k, v, pb.mask, dout, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *pb.mask_strides, *dout.stride(),
            *dk.stride(), *dv.stride(), *common, pb.k_tiles, pb.scale, **consts)
    if need_dq:
        _ma_bwd_dq[(pb.B * pb.heads * pb.q_tiles,)](
            q, k, v, pb.mask, dout, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *pb.mask_strides, *dout.stride(),
            *dq.stride(), *common, pb.q_tiles, pb.scale, **consts)
    return dq, dk, dv


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


def _setup_context(ctx, inputs, output):
    q, k, v, mask, scale, store_lse = inputs
    if not store_lse:  # forward without grad: nothing to save
        return
    ctx.save_for_backward(q, k, v, mask, *output)
    ctx.scale = scale


def _backward_rule(ctx, dout, dlse):
    q, k, v, mask, out, lse = ctx.saved_tensors
    need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
    dq, dk, dv = _masked_attention_bwd_op(dout, q, k, v, mask, out, lse, ctx.scale, need_dq,
                                          need_dk or need_dv)
    return (dq if need_dq else None, dk if need_dk else None, dv if need_dv else None,
            None, None, None)


_masked_attention_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


def masked_attention_triton(q, k, v, mask, scale):
    """Triton implementation of ``masked_attention_reference``; arguments already validated by
    :func:`ops.masked_attention`."""
    check_triton_supported("masked_attention", q, v)
    store_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out, _ = _masked_attention_fwd_op(q, k, v, mask, float(scale), store_lse)
    return out
