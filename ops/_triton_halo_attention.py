"""Fused Triton path of :func:`ops.halo_attention_2d` (forward and backward).

FlashAttention-2 structure over HaloNet's analytic windows: a program owns ``BLOCK_M`` queries of
one ``bq x bq`` query block of one (batch, head) and streams the block's ``win x win`` key window
in ``BLOCK_N`` chunks with an online softmax; no score matrix, no unfolded K/V copy and no
zero-padded K/V copy reaches memory. Window token ``t`` of block ``(by, bx)`` sits at key-grid
position ``(by * bs - halo + t // win, bx * bs - halo + t % win)``; positions outside the grid
load as zeros and **stay in the softmax** (timm's semantics: logit = relative bias only, value 0).

Relative logits: ``RH = c * q @ height_rel.T`` and ``RW = c * q @ width_rel.T`` (``c = scale``
with ``scale_pos_embed``, else 1) are computed outside with torch matmuls, ``(B, heads, Hq, Wq,
2 * win - 1)``, and gathered in-kernel at offsets ``win - 1 + ki - i`` / ``win - 1 + kj - j``.
Their gradients are reduced in the dQ kernel: ``dRH[q, win - 1 + ki - i] = sum_kj dS[q, (ki, kj)]``
is a dot of ``dS`` with a one-hot (key -> window row) matrix, then scattered (each query's
offsets are distinct, so no conflicts); torch's autograd carries them on to q and the tables.

Backward: ``delta = rowsum(dO * O)`` (torch), a dQ (+ dRH, dRW) kernel per query block that
loops over its window, and a dK/dV kernel per *home* key block (the ``bs x bs`` block that
contains the keys) that loops over the query blocks whose haloed windows reach it (neighbours
within ``ceil(halo / bs)`` blocks). Every key has one home block, so every gradient element has
exactly one writer: deterministic, no atomics, no windowed gradient buffers.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ._checks import check_triton_supported

__all__ = ["halo_attention_triton"]

_INTERPRETER_BLOCK = 256
_MIN_BLOCK = 16
_BLOCK_CAP = None  # tests lower this to force several query/key blocks per window


@triton.jit
def _tile_mask(tokens_ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    if D == BLOCK_D:
        return tokens_ok[:, None]
    else:
        return tokens_ok[:, None] & (offs_d[None, :] < D)


@triton.jit
def _tile_mask_t(tokens_ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    if D == BLOCK_D:
        return tokens_ok[None, :]
    else:
        return tokens_ok[None, :] & (offs_d[:, None] < D)


@triton.jit
def _query_tokens(t, by, bx, bq):
    """In-block position (i, j), query-grid position and validity of query tokens ``t``."""
    i = t // bq
    j = t % bq
    return i, j, by * bq + i, bx * bq + j, t < bq * bq


@triton.jit
def _window_keys(t, by, bx, bs, halo, win, H, W):
    """Window position (ki, kj), key-grid position, in-window and in-grid flags of window
    tokens ``t`` of block ``(by, bx)``."""
    ki = t // win
    kj = t % win
    y = by * bs - halo + ki
    x = bx * bs - halo + kj
    in_window = t < win * win
    in_grid = in_window & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    return ki, kj, y, x, in_window, in_grid


@triton.jit
def _halo_attn_fwd(
    Q, K, V, RH, RW, O, LSE,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sr_b, sr_h, sr_y, sr_x, sr_r,
    so_b, so_h, so_y, so_x, so_d,
    heads, H, W, Hq, Wq, bs, halo, bq, win, nbx, nblocks, num_m_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_BIAS: tl.constexpr, STORE_LSE: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    m_blk = pid % num_m_blocks
    blk = (pid // num_m_blocks) % nblocks
    bh = (pid // (num_m_blocks * nblocks)).to(tl.int64)
    b = bh // heads
    h = bh % heads
    by = blk // nbx
    bx = blk % nbx
    LOG2E: tl.constexpr = 1.4426950408889634
    qk_scale = scale * LOG2E

    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    qi, qj, qy, qx, q_ok = _query_tokens(offs_m, by, bx, bq)
    q = tl.load(Q + b * sq_b + h * sq_h + qy[:, None] * sq_y + qx[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    r_row = b * sr_b + h * sr_h + qy * sr_y + qx * sr_x

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start_n in range(0, win * win, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ki, kj, ky, kx, k_in, k_real = _window_keys(offs_n, by, bx, bs, halo, win, H, W)
        kT = tl.load(k_base + offs_dqk[:, None] * sk_d + ky[None, :] * sk_y + kx[None, :] * sk_x,
                     mask=_tile_mask_t(k_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        v = tl.load(v_base + ky[:, None] * sv_y + kx[:, None] * sv_x + offs_dv[None, :] * sv_d,
                    mask=_tile_mask(k_real, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        if HAS_BIAS:
            pair_ok = q_ok[:, None] & k_in[None, :]
            bias = tl.load(RH + r_row[:, None] + (win - 1 + ki[None, :] - qi[:, None]) * sr_r,
                           mask=pair_ok, other=0.0).to(tl.float32)
            bias += tl.load(RW + r_row[:, None] + (win - 1 + kj[None, :] - qj[:, None]) * sr_r,
                            mask=pair_ok, other=0.0).to(tl.float32)
            s += bias * LOG2E
        # Out-of-grid keys stay (k = 0, v = 0); only lanes past the window are excluded.
        s = tl.where(k_in[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + qy[:, None] * so_y + qx[:, None] * so_x
             + offs_dv[None, :] * so_d, out.to(O.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV))
    if STORE_LSE:
        tl.store(LSE + bh * Hq * Wq + qy * Wq + qx, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def _halo_attn_bwd_dq(
    Q, K, V, RH, RW, DO, LSE, DELTA, DQ, DRH, DRW,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sr_b, sr_h, sr_y, sr_x, sr_r,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    sdr_b, sdr_h, sdr_y, sdr_x, sdr_r,
    heads, H, W, Hq, Wq, bs, halo, bq, win, nbx, nblocks, num_m_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_WIN: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query block: dQ = scale * dS K and, with the bias, the per-offset sums
    of dS into dRH / dRW."""
    pid = tl.program_id(0)
    m_blk = pid % num_m_blocks
    blk = (pid // num_m_blocks) % nblocks
    bh = (pid // (num_m_blocks * nblocks)).to(tl.int64)
    b = bh // heads
    h = bh % heads
    by = blk // nbx
    bx = blk % nbx
    LOG2E: tl.constexpr = 1.4426950408889634
    qk_scale = scale * LOG2E

    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_w = tl.arange(0, BLOCK_WIN)
    qi, qj, qy, qx, q_ok = _query_tokens(offs_m, by, bx, bq)
    q = tl.load(Q + b * sq_b + h * sq_h + qy[:, None] * sq_y + qx[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + qy[:, None] * sdo_y + qx[:, None] * sdo_x
                 + offs_dv[None, :] * sdo_d,
                 mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * Hq * Wq + qy * Wq + qx, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + bh * Hq * Wq + qy * Wq + qx, mask=q_ok, other=0.0)
    r_row = b * sr_b + h * sr_h + qy * sr_y + qx * sr_x

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    drh = tl.zeros([BLOCK_M, BLOCK_WIN], dtype=tl.float32)
    drw = tl.zeros([BLOCK_M, BLOCK_WIN], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start_n in range(0, win * win, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ki, kj, ky, kx, k_in, k_real = _window_keys(offs_n, by, bx, bs, halo, win, H, W)
        k = tl.load(k_base + ky[:, None] * sk_y + kx[:, None] * sk_x + offs_dqk[None, :] * sk_d,
                    mask=_tile_mask(k_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        vT = tl.load(v_base + offs_dv[:, None] * sv_d + ky[None, :] * sv_y + kx[None, :] * sv_x,
                     mask=_tile_mask_t(k_real, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            vT = vT.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        pair_ok = q_ok[:, None] & k_in[None, :]
        if HAS_BIAS:
            bias = tl.load(RH + r_row[:, None] + (win - 1 + ki[None, :] - qi[:, None]) * sr_r,
                           mask=pair_ok, other=0.0).to(tl.float32)
            bias += tl.load(RW + r_row[:, None] + (win - 1 + kj[None, :] - qj[:, None]) * sr_r,
                            mask=pair_ok, other=0.0).to(tl.float32)
            s += bias * LOG2E
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(pair_ok, p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            # one-hot (key -> its window row / column): exact per-offset sums of dS
            oh_h = ((ki[:, None] == offs_w[None, :]) & k_in[:, None]).to(tl.float32)
            oh_w = ((kj[:, None] == offs_w[None, :]) & k_in[:, None]).to(tl.float32)
            drh += tl.dot(ds, oh_h, input_precision="ieee")
            drw += tl.dot(ds, oh_w, input_precision="ieee")

    tl.store(DQ + b * sdq_b + h * sdq_h + qy[:, None] * sdq_y + qx[:, None] * sdq_x
             + offs_dqk[None, :] * sdq_d, (dq * scale).to(DQ.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))
    if HAS_BIAS:
        dr_row = b * sdr_b + h * sdr_h + qy * sdr_y + qx * sdr_x
        w_ok = q_ok[:, None] & (offs_w[None, :] < win)
        tl.store(DRH + dr_row[:, None] + (win - 1 + offs_w[None, :] - qi[:, None]) * sdr_r,
                 drh.to(DRH.dtype.element_ty), mask=w_ok)
        tl.store(DRW + dr_row[:, None] + (win - 1 + offs_w[None, :] - qj[:, None]) * sdr_r,
                 drw.to(DRW.dtype.element_ty), mask=w_ok)


@triton.jit
def _halo_attn_bwd_dkdv(
    Q, K, V, RH, RW, DO, LSE, DELTA, DK, DV,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sr_b, sr_h, sr_y, sr_x, sr_r,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdk_b, sdk_h, sdk_y, sdk_x, sdk_d,
    sdv_b, sdv_h, sdv_y, sdv_x, sdv_d,
    heads, H, W, Hq, Wq, bs, halo, bq, win, nbx, nby, nblocks, num_n_blocks, reach,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per chunk of a home key block: dV = Pᵀ dO and dK = scale * dSᵀ Q summed over
    every query block whose window contains the keys."""
    pid = tl.program_id(0)
    n_blk = pid % num_n_blocks
    home = (pid // num_n_blocks) % nblocks
    bh = (pid // (num_n_blocks * nblocks)).to(tl.int64)
    b = bh // heads
    h = bh % heads
    hy = home // nbx
    hx = home % nbx
    LOG2E: tl.constexpr = 1.4426950408889634
    qk_scale = scale * LOG2E

    offs_n = n_blk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    ky = hy * bs + offs_n // bs
    kx = hx * bs + offs_n % bs
    k_ok = offs_n < bs * bs
    k = tl.load(K + b * sk_b + h * sk_h + ky[:, None] * sk_y + kx[:, None] * sk_x
                + offs_dqk[None, :] * sk_d,
                mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + ky[:, None] * sv_y + kx[:, None] * sv_x
                + offs_dv[None, :] * sv_d,
                mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    by_lo = tl.maximum(hy - reach, 0)
    by_hi = tl.minimum(hy + reach + 1, nby)
    bx_lo = tl.maximum(hx - reach, 0)
    bx_hi = tl.minimum(hx + reach + 1, nbx)
    for by in range(by_lo, by_hi):
        for bx in range(bx_lo, bx_hi):
            # these keys' place in block (by, bx)'s window
            ki = ky - (by * bs - halo)
            kj = kx - (bx * bs - halo)
            in_win = k_ok & (ki >= 0) & (ki < win) & (kj >= 0) & (kj < win)
            for start_m in range(0, bq * bq, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)
                qi, qj, qy, qx, q_ok = _query_tokens(offs_m, by, bx, bq)
                qT = tl.load(q_base + offs_dqk[:, None] * sq_d + qy[None, :] * sq_y
                             + qx[None, :] * sq_x,
                             mask=_tile_mask_t(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
                do = tl.load(do_base + qy[:, None] * sdo_y + qx[:, None] * sdo_x
                             + offs_dv[None, :] * sdo_d,
                             mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
                if UPCAST_DOT:
                    qT = qT.to(tl.float32)
                    do = do.to(tl.float32)
                lse = tl.load(LSE + bh * Hq * Wq + qy * Wq + qx, mask=q_ok, other=0.0)
                delta = tl.load(DELTA + bh * Hq * Wq + qy * Wq + qx, mask=q_ok, other=0.0)
                pair_ok = in_win[:, None] & q_ok[None, :]
                sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
                if HAS_BIAS:
                    r_row = b * sr_b + h * sr_h + qy * sr_y + qx * sr_x
                    bias = tl.load(RH + r_row[None, :] + (win - 1 + ki[:, None] - qi[None, :]) * sr_r,
                                   mask=pair_ok, other=0.0).to(tl.float32)
                    bias += tl.load(RW + r_row[None, :] + (win - 1 + kj[:, None] - qj[None, :]) * sr_r,
                                    mask=pair_ok, other=0.0).to(tl.float32)
                    sT += bias * LOG2E
                pT = tl.math.exp2(sT - lse[None, :])
                pT = tl.where(pair_ok, pT, 0.0)
                dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
                dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
                dsT = pT * (dpT - delta[None, :])
                dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=DOT_PRECISION)

    tl.store(DK + b * sdk_b + h * sdk_h + ky[:, None] * sdk_y + kx[:, None] * sdk_x
             + offs_dqk[None, :] * sdk_d, (dk * scale).to(DK.dtype.element_ty),
             mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK))
    tl.store(DV + b * sdv_b + h * sdv_h + ky[:, None] * sdv_y + kx[:, None] * sdv_x
             + offs_dv[None, :] * sdv_d, dv.to(DV.dtype.element_ty),
             mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV))


_INTERPRETED = isinstance(_halo_attn_fwd, InterpretedFunction)


def _dot_precision(dtype):
    if dtype == torch.float32 and not _INTERPRETED and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _fit(n):
    return max(_MIN_BLOCK, triton.next_power_of_2(n))


class _Problem:
    def __init__(self, q, k, v, block_size, halo_size, stride, scale):
        self.B, self.heads, self.H, self.W, self.d_qk = k.shape
        self.Hq, self.Wq = q.shape[2:4]
        self.d_v = v.shape[-1]
        self.bs, self.halo, self.stride, self.scale = block_size, halo_size, stride, scale
        self.bq, self.win = block_size // stride, block_size + 2 * halo_size
        self.nby, self.nbx = self.H // block_size, self.W // block_size
        self.nblocks = self.nby * self.nbx
        self.reach = -(-halo_size // block_size)  # neighbour blocks a window reaches
        self.block_dqk, self.block_dv = _fit(self.d_qk), _fit(self.d_v)
        self.block_win = _fit(self.win)
        cap = _INTERPRETER_BLOCK if _INTERPRETED else 64
        if _BLOCK_CAP is not None:
            cap = min(cap, _BLOCK_CAP)
        self.block_m = min(cap, _fit(self.bq * self.bq))
        self.block_n = min(cap, _fit(self.win * self.win))
        self.block_home = min(cap, _fit(self.bs * self.bs))
        self.num_warps = 1 if _INTERPRETED else 4
        self.empty = self.B * self.heads * self.Hq * self.Wq == 0

    def grid_args(self):
        return (self.heads, self.H, self.W, self.Hq, self.Wq, self.bs, self.halo, self.bq,
                self.win, self.nbx)

    def consts(self, dtype, has_bias):
        return dict(D_QK=self.d_qk, D_V=self.d_v, BLOCK_DQK=self.block_dqk,
                    BLOCK_DV=self.block_dv, HAS_BIAS=has_bias,
                    UPCAST_DOT=_INTERPRETED and dtype == torch.bfloat16,
                    DOT_PRECISION=_dot_precision(dtype), num_warps=self.num_warps)


def _bias_args(q, rh, rw):
    if rh is None:
        return q, q, (0, 0, 0, 0, 0)  # never read (HAS_BIAS=False)
    if rh.stride() != rw.stride():  # one stride set serves both tables
        rh, rw = rh.contiguous(), rw.contiguous()
    return rh, rw, rh.stride()


def _forward(q, k, v, rh, rw, pb, store_lse):
    out = torch.empty(pb.B, pb.Hq, pb.Wq, pb.heads, pb.d_v, dtype=q.dtype,
                      device=q.device).permute(0, 3, 1, 2, 4)
    lse = torch.empty(pb.B * pb.heads, pb.Hq, pb.Wq, dtype=torch.float32, device=q.device) \
        if store_lse else torch.empty(1, dtype=torch.float32, device=q.device)
    if pb.empty:
        return out, lse
    has_bias = rh is not None
    rh, rw, sr = _bias_args(q, rh, rw)
    num_m = triton.cdiv(pb.bq * pb.bq, pb.block_m)
    _halo_attn_fwd[(pb.B * pb.heads * pb.nblocks * num_m,)](
        q, k, v, rh, rw, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *sr, *out.stride(),
        *pb.grid_args(), pb.nblocks, num_m, pb.scale,
        BLOCK_M=pb.block_m, BLOCK_N=pb.block_n, STORE_LSE=store_lse,
        num_stages=1 if _INTERPRETED else 2, **pb.consts(q.dtype, has_bias))
    return out, lse


def _backward(dout, q, k, v, rh, rw, out, lse, pb):
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    has_bias = rh is not None
    drh = torch.zeros(rh.shape if has_bias else (0,), dtype=q.dtype, device=q.device)
    drw = torch.zeros_like(drh)
    if pb.empty:
        return dq.zero_(), dk.zero_(), dv.zero_(), drh, drw
    delta = (out.float() * dout.float()).sum(-1).reshape(pb.B * pb.heads, pb.Hq, pb.Wq)
    rh_, rw_, sr = _bias_args(q, rh, rw)
    consts = pb.consts(q.dtype, has_bias)
    num_m = triton.cdiv(pb.bq * pb.bq, pb.block_m)
    _halo_attn_bwd_dq[(pb.B * pb.heads * pb.nblocks * num_m,)](
        q, k, v, rh_, rw_, dout, lse, delta, dq, drh if has_bias else dq, drw if has_bias else dq,
        *q.stride(), *k.stride(), *v.stride(), *sr, *dout.stride(), *dq.stride(),
        *(drh.stride() if has_bias else (0,) * 5),
        *pb.grid_args(), pb.nblocks, num_m, pb.scale,
        BLOCK_M=pb.block_m, BLOCK_N=pb.block_n, BLOCK_WIN=pb.block_win,
        num_stages=1, **consts)
    num_n = triton.cdiv(pb.bs * pb.bs, pb.block_home)
    _halo_attn_bwd_dkdv[(pb.B * pb.heads * pb.nblocks * num_n,)](
        q, k, v, rh_, rw_, dout, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *sr, *dout.stride(), *dk.stride(), *dv.stride(),
        *pb.grid_args(), pb.nby, pb.nblocks, num_n, pb.reach, pb.scale,
        BLOCK_M=pb.block_m, BLOCK_N=pb.block_home, num_stages=1, **consts)
    return dq, dk, dv, drh, drw


@torch.library.custom_op("backbones::halo_attention_fwd", mutates_args=())
def _halo_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           rel_h: Optional[torch.Tensor], rel_w: Optional[torch.Tensor],
                           block_size: int, halo_size: int, stride: int, scale: float,
                           store_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    pb = _Problem(q, k, v, block_size, halo_size, stride, scale)
    return _forward(q, k, v, rel_h, rel_w, pb, store_lse)


@_halo_attention_fwd_op.register_fake
def _(q, k, v, rel_h, rel_w, block_size, halo_size, stride, scale, store_lse):
    B, heads, Hq, Wq, _ = q.shape
    out = q.new_empty(B, Hq, Wq, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
    lse = q.new_empty((B * heads, Hq, Wq) if store_lse else (1,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("backbones::halo_attention_bwd", mutates_args=())
def _halo_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor, rel_h: Optional[torch.Tensor],
                           rel_w: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                           block_size: int, halo_size: int, stride: int, scale: float
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor]:
    pb = _Problem(q, k, v, block_size, halo_size, stride, scale)
    return _backward(dout, q, k, v, rel_h, rel_w, out, lse, pb)


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
