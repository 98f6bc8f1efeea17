"""Fused Triton path of :func:`ops.neighborhood_attention_2d` (forward and backward).

Dilation first: with dilation ``(dh, dw)`` the grid splits into ``dh * dw`` interleaved sub-grids
(group ``(gy, gx)`` holds positions ``(gy + dh * i, gx + dw * j)``) and neighborhood attention never
crosses them: on its own sub-grid, of size ``(Hg, Wg) = (ceil((H - gy) / dh), ceil((W - gx) / dw))``,
a query sees the plain clamped window ``start(i) = clamp(i - k // 2, 0, Lg - k)``. Every kernel
therefore works in sub-grid coordinates and maps them to memory as ``gy + dh * i`` (pure stride
arithmetic on the inputs' own strides; q/k/v are read in place, typically as qkv views).

Forward (FlashAttention-2 style): a program owns a ``TY x TX`` rectangle of queries of one
sub-grid of one (batch, head). ``start`` is monotone, so the union of its queries' windows is the
key rectangle ``[start(y0), start(y_last) + kh) x [start(x0), start(x_last) + kw)``; the program
streams it in ``KY x KX`` key tiles with an online softmax and masks each (query, key) element
with the clamped-window test ``start(qy) <= ky < start(qy) + kh`` (and the same along x).

Backward (FA2): ``delta = rowsum(dO * O)``; dQ per query tile (the forward's loop); dK/dV per key
tile, looping over the query rectangle whose windows can reach it. That rectangle comes from the
analytic inverse of ``start``: key ``j`` is seen by queries ``i_lo(j) <= i <= i_hi(j)`` with
``i_lo(j) = 0 if j < k else j - k // 2`` and ``i_hi(j) = L - 1 if j >= L - k else j + k // 2``.
Every gradient element has exactly one writer: no atomics.

The softmax runs in base 2 (scale folded into ``scale * log2(e)``); the forward stores the base-2
log-sum-exp (``(B * heads, H, W)``, full-grid coordinates) for the backward. The output is stored
token-major ``(B, H, W, heads, d_v)`` and returned as its ``(B, heads, H, W, d_v)`` view.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ._checks import check_triton_supported
from ._triton_window_attention import (
    _dot_precision, _tile_mask, _tile_mask_t, _window_attn_bwd_delta)

__all__ = ["neighborhood_attention_triton"]

_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16 on GPU
_TILE_CAP = None  # tests lower this (per tile side) to force many small tiles


@triton.jit
def _window_start(i, L, K):
    """First key (sub-grid coordinates) of the clamped window of query ``i``."""
    return tl.minimum(tl.maximum(i - K // 2, 0), L - K)


@triton.jit
def _coords(pid, tiles_y, tiles_x, dh, dw, H, W):
    """Flat program id -> (tile row, tile col, group (gy, gx), batch*head, sub-grid size)."""
    tx = pid % tiles_x
    ty = (pid // tiles_x) % tiles_y
    grp = (pid // (tiles_x * tiles_y)) % (dh * dw)
    bh = (pid // (tiles_x * tiles_y * dh * dw)).to(tl.int64)
    gy = grp // dw
    gx = grp % dw
    Hg = (H - gy + dh - 1) // dh
    Wg = (W - gx + dw - 1) // dw
    return ty, tx, gy, gx, bh, Hg, Wg


@triton.jit
def _in_window(qsy, qsx, ky, kx, kh, kw):
    """(queries, keys) mask: key (ky, kx) lies in the window starting at (qsy, qsx)."""
    return ((ky[None, :] >= qsy[:, None]) & (ky[None, :] < qsy[:, None] + kh)
            & (kx[None, :] >= qsx[:, None]) & (kx[None, :] < qsx[:, None] + kw))


@triton.jit
def _na_fwd(
    Q, K, V, O, LSE,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    so_b, so_h, so_y, so_x, so_d,
    heads, H, W, kh, kw, dh, dw, tiles_y, tiles_x,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    TY: tl.constexpr, TX: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    STORE_LSE: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    ty, tx, gy, gx, bh, Hg, Wg = _coords(tl.program_id(0), tiles_y, tiles_x, dh, dw, H, W)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    y0 = ty * TY
    x0 = tx * TX

    t = tl.arange(0, TY * TX)
    qy = y0 + t // TX
    qx = x0 + t % TX
    q_ok = (qy < Hg) & (qx < Wg)
    qY = gy + qy * dh
    qX = gx + qx * dw
    qsy = _window_start(qy, Hg, kh)
    qsx = _window_start(qx, Wg, kw)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + h * sq_h + qY[:, None] * sq_y + qX[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    ky_lo = _window_start(y0, Hg, kh)
    ky_hi = _window_start(tl.minimum(y0 + TY - 1, Hg - 1), Hg, kh) + kh
    kx_lo = _window_start(x0, Wg, kw)
    kx_hi = _window_start(tl.minimum(x0 + TX - 1, Wg - 1), Wg, kw) + kw

    m_i = tl.full([TY * TX], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([TY * TX], dtype=tl.float32)
    acc = tl.zeros([TY * TX, BLOCK_DV], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    n = tl.arange(0, KY * KX)
    for ky0 in range(ky_lo, ky_hi, KY):
        for kx0 in range(kx_lo, kx_hi, KX):
            ky = ky0 + n // KX
            kx = kx0 + n % KX
            k_ok = (ky < ky_hi) & (kx < kx_hi)
            kY = gy + ky * dh
            kX = gx + kx * dw
            kT = tl.load(k_base + offs_dqk[:, None] * sk_d + kY[None, :] * sk_y
                         + kX[None, :] * sk_x,
                         mask=_tile_mask_t(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            v = tl.load(v_base + kY[:, None] * sv_y + kX[:, None] * sv_x + offs_dv[None, :] * sv_d,
                        mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                kT = kT.to(tl.float32)
                v = v.to(tl.float32)
            ok = _in_window(qsy, qsx, ky, kx, kh, kw) & k_ok[None, :]
            s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    # Every real query has kh * kw keys, so l_i > 0 on real rows; the guard is for tile padding.
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + qY[:, None] * so_y + qX[:, None] * so_x
             + offs_dv[None, :] * so_d, out.to(O.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV))
    if STORE_LSE:
        tl.store(LSE + bh * H * W + qY * W + qX, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def _na_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    heads, H, W, kh, kw, dh, dw, tiles_y, tiles_x,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    TY: tl.constexpr, TX: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query tile: dQ = scale · dS K over the union of its windows."""
    ty, tx, gy, gx, bh, Hg, Wg = _coords(tl.program_id(0), tiles_y, tiles_x, dh, dw, H, W)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    y0 = ty * TY
    x0 = tx * TX

    t = tl.arange(0, TY * TX)
    qy = y0 + t // TX
    qx = x0 + t % TX
    q_ok = (qy < Hg) & (qx < Wg)
    qY = gy + qy * dh
    qX = gx + qx * dw
    qsy = _window_start(qy, Hg, kh)
    qsx = _window_start(qx, Wg, kw)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + h * sq_h + qY[:, None] * sq_y + qX[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + qY[:, None] * sdo_y + qX[:, None] * sdo_x
                 + offs_dv[None, :] * sdo_d,
                 mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * H * W + qY * W + qX, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + bh * H * W + qY * W + qX, mask=q_ok, other=0.0)

    ky_lo = _window_start(y0, Hg, kh)
    ky_hi = _window_start(tl.minimum(y0 + TY - 1, Hg - 1), Hg, kh) + kh
    kx_lo = _window_start(x0, Wg, kw)
    kx_hi = _window_start(tl.minimum(x0 + TX - 1, Wg - 1), Wg, kw) + kw

    dq = tl.zeros([TY * TX, BLOCK_DQK], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    n = tl.arange(0, KY * KX)
    for ky0 in range(ky_lo, ky_hi, KY):
        for kx0 in range(kx_lo, kx_hi, KX):
            ky = ky0 + n // KX
            kx = kx0 + n % KX
            k_ok = (ky < ky_hi) & (kx < kx_hi)
            kY = gy + ky * dh
            kX = gx + kx * dw
            k = tl.load(k_base + kY[:, None] * sk_y + kX[:, None] * sk_x
                        + offs_dqk[None, :] * sk_d,
                        mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            vT = tl.load(v_base + offs_dv[:, None] * sv_d + kY[None, :] * sv_y
                         + kX[None, :] * sv_x,
                         mask=_tile_mask_t(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                k = k.to(tl.float32)
                vT = vT.to(tl.float32)
            ok = _in_window(qsy, qsx, ky, kx, kh, kw) & k_ok[None, :] & q_ok[:, None]
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    tl.store(DQ + b * sdq_b + h * sdq_h + qY[:, None] * sdq_y + qX[:, None] * sdq_x
             + offs_dqk[None, :] * sdq_d, (dq * scale).to(DQ.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))


@triton.jit
def _first_query(j, L, K):
    """Smallest query (sub-grid coordinates) whose window contains key ``j``."""
    return tl.where(j < K, 0, j - K // 2)


@triton.jit
def _last_query(j, L, K):
    """Largest query whose window contains key ``j``."""
    return tl.where(j >= L - K, L - 1, j + K // 2)


@triton.jit
def _na_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdk_b, sdk_h, sdk_y, sdk_x, sdk_d,
    sdv_b, sdv_h, sdv_y, sdv_x, sdv_d,
    heads, H, W, kh, kw, dh, dw, tiles_y, tiles_x,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    TY: tl.constexpr, TX: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per ``KY x KX`` key tile: dV = Pᵀ dO and dK = scale · dSᵀ Q over the query
    rectangle that can reach it (analytic inverse of the window start). Probabilities are kept
    transposed (keys x queries) so both sums are plain dots."""
    ty, tx, gy, gx, bh, Hg, Wg = _coords(tl.program_id(0), tiles_y, tiles_x, dh, dw, H, W)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    ky0 = ty * KY
    kx0 = tx * KX

    n = tl.arange(0, KY * KX)
    ky = ky0 + n // KX
    kx = kx0 + n % KX
    k_ok = (ky < Hg) & (kx < Wg)
    kY = gy + ky * dh
    kX = gx + kx * dw
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + b * sk_b + h * sk_h + kY[:, None] * sk_y + kX[:, None] * sk_x
                + offs_dqk[None, :] * sk_d,
                mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + kY[:, None] * sv_y + kX[:, None] * sv_x
                + offs_dv[None, :] * sv_d,
                mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    qy_lo = _first_query(ky0, Hg, kh)
    qy_hi = _last_query(tl.minimum(ky0 + KY - 1, Hg - 1), Hg, kh) + 1
    qx_lo = _first_query(kx0, Wg, kw)
    qx_hi = _last_query(tl.minimum(kx0 + KX - 1, Wg - 1), Wg, kw) + 1

    dk = tl.zeros([KY * KX, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([KY * KX, BLOCK_DV], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    t = tl.arange(0, TY * TX)
    for qy0 in range(qy_lo, qy_hi, TY):
        for qx0 in range(qx_lo, qx_hi, TX):
            qy = qy0 + t // TX
            qx = qx0 + t % TX
            q_ok = (qy < qy_hi) & (qx < qx_hi)
            qY = gy + qy * dh
            qX = gx + qx * dw
            qsy = _window_start(qy, Hg, kh)
            qsx = _window_start(qx, Wg, kw)
            qT = tl.load(q_base + offs_dqk[:, None] * sq_d + qY[None, :] * sq_y
                         + qX[None, :] * sq_x,
                         mask=_tile_mask_t(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            do = tl.load(do_base + qY[:, None] * sdo_y + qX[:, None] * sdo_x
                         + offs_dv[None, :] * sdo_d,
                         mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                qT = qT.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + bh * H * W + qY * W + qX, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + bh * H * W + qY * W + qX, mask=q_ok, other=0.0)
            # (keys, queries) mask: the transposed window test.
            okT = ((ky[:, None] >= qsy[None, :]) & (ky[:, None] < qsy[None, :] + kh)
                   & (kx[:, None] >= qsx[None, :]) & (kx[:, None] < qsx[None, :] + kw)
                   & k_ok[:, None] & q_ok[None, :])
            sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
            pT = tl.where(okT, tl.math.exp2(sT - lse[None, :]), 0.0)
            dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=DOT_PRECISION)

    tl.store(DK + b * sdk_b + h * sdk_h + kY[:, None] * sdk_y + kX[:, None] * sdk_x
             + offs_dqk[None, :] * sdk_d, (dk * scale).to(DK.dtype.element_ty),
             mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK))
    tl.store(DV + b * sdv_b + h * sdv_h + kY[:, None] * sdv_y + kX[:, None] * sdv_x
             + offs_dv[None, :] * sdv_d, dv.to(DV.dtype.element_ty),
             mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV))


# The kernels were decorated under the interpreter iff this is an InterpretedFunction.
_INTERPRETED = isinstance(_na_fwd, InterpretedFunction)


def _tile(extent_y, extent_x, max_tokens):
    """Power-of-two ``(ty, tx)`` covering at most ``max_tokens`` (at least 16) tokens, no wider
    than the extents' next powers of two where that allows 16 tokens."""
    cap = _TILE_CAP if _TILE_CAP is not None else max_tokens
    tx = min(triton.next_power_of_2(max(extent_x, 1)), cap, max_tokens)
    ty = min(triton.next_power_of_2(max(extent_y, 1)), cap, max(1, max_tokens // tx))
    while ty * tx < _MIN_BLOCK:  # tl.dot needs >= 16 rows
        if ty <= tx:
            ty *= 2
        else:
            tx *= 2
    return ty, tx


class _Problem:
    """Shapes, sub-grid tiling and launch parameters shared by the forward and backward."""

    def __init__(self, q, v, kernel_size, dilation, scale):
        self.B, self.heads, self.H, self.W, self.d_qk = q.shape
        self.d_v = v.shape[-1]
        (self.kh, self.kw), (self.dh, self.dw) = kernel_size, dilation
        self.scale = scale
        self.Hg, self.Wg = triton.cdiv(self.H, self.dh), triton.cdiv(self.W, self.dw)  # largest
        self.block_dqk = triton.next_power_of_2(max(self.d_qk, _MIN_BLOCK))
        self.block_dv = triton.next_power_of_2(max(self.d_v, _MIN_BLOCK))
        # Interpreter: every tl op is a numpy call with fixed overhead, so few large tiles win.
        # GPU: 64-query tiles against 64-key tiles (not tuned on hardware yet).
        q_tokens = 128 if _INTERPRETED else 64
        k_tokens = 256 if _INTERPRETED else 64
        self.q_tile = _tile(self.Hg, self.Wg, q_tokens)
        self.k_tile = _tile(min(self.Hg, self.q_tile[0] + self.kh - 1),
                            min(self.Wg, self.q_tile[1] + self.kw - 1), k_tokens)
        self.num_warps = 1 if _INTERPRETED else 4
        self.empty = self.B * self.heads * self.H * self.W == 0

    def grid(self, tile):
        ty, tx = triton.cdiv(self.Hg, tile[0]), triton.cdiv(self.Wg, tile[1])
        return (self.B * self.heads * self.dh * self.dw * ty * tx,), (ty, tx)

    def args(self, tiles):
        return (self.heads, self.H, self.W, self.kh, self.kw, self.dh, self.dw, *tiles,
                self.scale)

    def constexprs(self, dtype):
        return dict(
            D_QK=self.d_qk, D_V=self.d_v,
            TY=self.q_tile[0], TX=self.q_tile[1], KY=self.k_tile[0], KX=self.k_tile[1],
            BLOCK_DQK=self.block_dqk, BLOCK_DV=self.block_dv,
            UPCAST_DOT=_INTERPRETED and dtype == torch.bfloat16,
            DOT_PRECISION=_dot_precision(dtype),
            num_warps=self.num_warps, num_stages=1 if _INTERPRETED else 2)


def _forward(q, k, v, pb, store_lse):
    out = torch.empty(pb.B, pb.H, pb.W, pb.heads, pb.d_v, dtype=q.dtype,
                      device=q.device).permute(0, 3, 1, 2, 4)
    lse = torch.empty(pb.B * pb.heads, pb.H, pb.W, dtype=torch.float32, device=q.device) \
        if store_lse else torch.empty(1, dtype=torch.float32, device=q.device)
    if pb.empty:
        return out, lse
    grid, tiles = pb.grid(pb.q_tile)
    _na_fwd[grid](q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                  *pb.args(tiles), STORE_LSE=store_lse, **pb.constexprs(q.dtype))
    return out, lse


def _backward(q, k, v, out, lse, dout, pb, need_dq=True, need_dkdv=True):
    dq, dk, dv = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if pb.empty:
        return dq.zero_(), dk.zero_(), dv.zero_()
    hw = pb.H * pb.W
    delta = torch.empty(pb.B * pb.heads, pb.H, pb.W, dtype=torch.float32, device=q.device)
    delta_block = min(256 if _INTERPRETED else 128, triton.next_power_of_2(hw))
    delta_blocks = triton.cdiv(hw, delta_block)
    _window_attn_bwd_delta[(pb.B * pb.heads * delta_blocks,)](
        out, dout, delta, *out.stride(), *dout.stride(), pb.heads, pb.H, pb.W, delta_blocks,
        pb.d_v, BLOCK=delta_block, BLOCK_DV=pb.block_dv, num_warps=4)
    consts = pb.constexprs(q.dtype)
    if need_dkdv:
        grid, tiles = pb.grid(pb.k_tile)
        _na_bwd_dkdv[grid](
            q, k, v, dout, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            *pb.args(tiles), **consts)
    if need_dq:
        grid, tiles = pb.grid(pb.q_tile)
        _na_bwd_dq[grid](
            q, k, v, dout, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
            *pb.args(tiles), **consts)
    return dq, dk, dv


# torch.library custom ops tied together by register_autograd: one opaque node each for
# torch.compile / export (fake implementations give the shapes) and a name fvcore can count.

@torch.library.custom_op("backbones::neighborhood_attention_fwd", mutates_args=())
def _neighborhood_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   kernel_h: int, kernel_w: int, dilation_h: int,
                                   dilation_w: int, scale: float, store_lse: bool
                                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    pb = _Problem(q, v, (kernel_h, kernel_w), (dilation_h, dilation_w), scale)
    return _forward(q, k, v, pb, store_lse)


@_neighborhood_attention_fwd_op.register_fake
def _(q, k, v, kernel_h, kernel_w, dilation_h, dilation_w, scale, store_lse):
    B, heads, H, W, _ = q.shape
    out = q.new_empty(B, H, W, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
    lse = q.new_empty((B * heads, H, W) if store_lse else (1,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("backbones::neighborhood_attention_bwd", mutates_args=())
def _neighborhood_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                   v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                                   kernel_h: int, kernel_w: int, dilation_h: int,
                                   dilation_w: int, scale: float, need_dq: bool, need_dkdv: bool
                                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pb = _Problem(q, v, (kernel_h, kernel_w), (dilation_h, dilation_w), scale)
    return _backward(q, k, v, out, lse, dout, pb, need_dq=need_dq, need_dkdv=need_dkdv)


@_neighborhood_attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse, kernel_h, kernel_w, dilation_h, dilation_w, scale, need_dq,
      need_dkdv):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, *args, store_lse = inputs
    if not store_lse:  # forward without grad: nothing to save
        return
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = args  # kernel_h, kernel_w, dilation_h, dilation_w, scale


def _backward_rule(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
    dq, dk, dv = _neighborhood_attention_bwd_op(dout, q, k, v, out, lse, *ctx.args, need_dq,
                                                need_dk or need_dv)
    return (dq if need_dq else None, dk if need_dk else None, dv if need_dv else None,
            None, None, None, None, None, None)


_neighborhood_attention_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


def neighborhood_attention_triton(q, k, v, kernel_size, dilation, scale):
    """Triton implementation of ``neighborhood_attention_reference``; arguments already validated
    by :func:`ops.neighborhood_attention_2d` (``kernel_size``/``dilation`` are int pairs)."""
    check_triton_supported("neighborhood_attention_2d", q, v)
    store_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out, _ = _neighborhood_attention_fwd_op(q, k, v, *kernel_size, *dilation, float(scale),
                                            store_lse)
    return out
