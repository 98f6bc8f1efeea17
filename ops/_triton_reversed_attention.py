"""Fused Triton path of :func:`ops.reversed_attention` (forward and backward).

Notation per (batch, head): ``P[i, j] = softmax_j(q_i · k_j · scale)`` (row softmax over keys),
``w_i`` the per-query weight, ``u_i = w_i v_i``, ``out_j = Σ_i P[i, j] u_i``.

Forward:

* pass 1 (``_ra_lse``, one program per query tile, FA2-forward style without an output): the
  base-2 row log-sum-exp ``lse_i`` with an online max over key tiles;
* pass 2 (``_ra_col``, one program per key tile, the FA2 dK/dV kernel run as a forward with
  ``dO := u``): loop over query tiles, ``out_j += Σ_i exp2(s_ij - lse_i) · u_i``;
* optional pass 3 (``_ra_mask``, one program per (batch, key tile, query tile), looping over
  heads): the detached dependency mask ``mask[b, j, i] = Σ_h P_h[i, j] w_h[i]``.

Backward, with upstream ``G_j = dL/dout_j``:

* ``R_i = Σ_j P[i, j] G_j`` (a forward attention with values ``G``),
  ``dv_i = w_i R_i``, ``dw_i = v_i · R_i =: delta_i``;
* ``dS[i, j] = w_i P[i, j] (G_j · v_i - delta_i)``, ``dq_i = scale Σ_j dS[i, j] k_j``,
  ``dk_j = scale Σ_i dS[i, j] q_i``.

``_ra_bwd_q`` (per query tile; two loops over key tiles: ``R``/``delta``, then ``dq``) writes
``delta`` (= ``dw``, and what ``dq`` and ``dk`` need), ``dv`` and ``dq``; ``_ra_bwd_k`` (per key
tile, loop over query tiles) writes ``dk``. A gradient not asked for is skipped: its store, the
``dq`` loop, or the whole ``_ra_bwd_k`` launch. Every gradient element has exactly one writer: no
atomics. The output is stored
token-major ``(B, L, heads, d_v)`` and returned as its ``(B, heads, L, d_v)`` view.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._custom_op import FusedOp
from ._triton_blocksparse import _tile_mask, _tile_mask_t
from ._triton_blocksparse import INTERPRETED, MIN_BLOCK as _MIN_BLOCK
from ._triton_blocksparse import dot_precision as _dot_precision

__all__ = ["reversed_attention_triton"]

_TILE_CAP = None  # tests lower this to force many small tiles

_LOG2E = 1.4426950408889634


@triton.jit
def _ra_lse(
    Q, K, LSE,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    heads, L, tiles, scale,
    D_QK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = (pid // tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    offs_m = (pid % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = offs_m < L
    offs_d = tl.arange(0, BLOCK_DQK)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_d, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ok = offs_n < L
        kT = tl.load(k_base + offs_d[:, None] * sk_d + offs_n[None, :] * sk_l,
                     mask=_tile_mask_t(k_ok, offs_d, D_QK, BLOCK_DQK), other=0.0)
        if UPCAST_DOT:
            kT = kT.to(tl.float32)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    tl.store(LSE + bh * L + offs_m, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def _ra_col(
    Q, K, V, W, LSE, O,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sw_b, sw_h, sw_l,
    so_b, so_h, so_l, so_d,
    heads, L, tiles, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_W: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per key tile: out_j = Σ_i exp2(s_ij - lse_i) · w_i v_i over all query tiles."""
    pid = tl.program_id(0)
    bh = (pid // tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    offs_n = (pid % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = offs_n < L
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + b * sk_b + h * sk_h + offs_n[:, None] * sk_l + offs_dqk[None, :] * sk_d,
                mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        k = k.to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    v_base = V + b * sv_b + h * sv_h
    for m0 in range(0, L, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q_ok = offs_m < L
        qT = tl.load(q_base + offs_dqk[:, None] * sq_d + offs_m[None, :] * sq_l,
                     mask=_tile_mask_t(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        v = tl.load(v_base + offs_m[:, None] * sv_l + offs_dv[None, :] * sv_d,
                    mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            qT = qT.to(tl.float32)
        u = v.to(tl.float32)
        if HAS_W:
            w = tl.load(W + b * sw_b + h * sw_h + offs_m * sw_l, mask=q_ok, other=0.0)
            u = u * w.to(tl.float32)[:, None]
        lse = tl.load(LSE + bh * L + offs_m, mask=q_ok, other=0.0)
        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
        pT = tl.where(k_ok[:, None] & q_ok[None, :], tl.math.exp2(sT - lse[None, :]), 0.0)
        if UPCAST_DOT:
            acc += tl.dot(pT, u, input_precision=DOT_PRECISION)
        else:
            acc += tl.dot(pT.to(v.dtype), u.to(v.dtype), input_precision=DOT_PRECISION)
    tl.store(O + b * so_b + h * so_h + offs_n[:, None] * so_l + offs_dv[None, :] * so_d,
             acc.to(O.dtype.element_ty), mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV))


@triton.jit
def _ra_mask(
    Q, K, W, LSE, MASK,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sw_b, sw_h, sw_l,
    heads, L, tiles_n, tiles_m, scale,
    D_QK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    HAS_W: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per (batch, key tile, query tile): mask[b, j, i] = Σ_h P_h[i, j] w_h[i]."""
    pid = tl.program_id(0)
    tm = pid % tiles_m
    tn = (pid // tiles_m) % tiles_n
    b = (pid // (tiles_m * tiles_n)).to(tl.int64)
    qk_scale = scale * 1.4426950408889634
    offs_n = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    k_ok = offs_n < L
    q_ok = offs_m < L
    offs_d = tl.arange(0, BLOCK_DQK)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for h in range(0, heads):
        bh = b * heads + h
        k = tl.load(K + b * sk_b + h * sk_h + offs_n[:, None] * sk_l + offs_d[None, :] * sk_d,
                    mask=_tile_mask(k_ok, offs_d, D_QK, BLOCK_DQK), other=0.0)
        qT = tl.load(Q + b * sq_b + h * sq_h + offs_d[:, None] * sq_d + offs_m[None, :] * sq_l,
                     mask=_tile_mask_t(q_ok, offs_d, D_QK, BLOCK_DQK), other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            qT = qT.to(tl.float32)
        lse = tl.load(LSE + bh * L + offs_m, mask=q_ok, other=0.0)
        pT = tl.math.exp2(tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
        if HAS_W:
            w = tl.load(W + b * sw_b + h * sw_h + offs_m * sw_l, mask=q_ok, other=0.0)
            pT = pT * w.to(tl.float32)[None, :]
        acc += pT
    tl.store(MASK + b * L * L + offs_n[:, None] * L + offs_m[None, :],
             acc.to(MASK.dtype.element_ty), mask=k_ok[:, None] & q_ok[None, :])


@triton.jit
def _ra_bwd_q(
    Q, K, V, W, G, LSE, DQ, DV, DELTA,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sw_b, sw_h, sw_l,
    sg_b, sg_h, sg_l, sg_d,
    sdq_b, sdq_h, sdq_l, sdq_d,
    sdv_b, sdv_h, sdv_l, sdv_d,
    heads, L, tiles, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_W: tl.constexpr,
    NEED_DV: tl.constexpr, NEED_DQ: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query tile: R = P G, delta = v·R (= dw; dk needs it too), with NEED_DV
    dv = w R, then with NEED_DQ dq = scale · w · Σ_j P (G_j·v_i - delta_i) k_j."""
    pid = tl.program_id(0)
    bh = (pid // tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    offs_m = (pid % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = offs_m < L
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + offs_m[:, None] * sv_l + offs_dv[None, :] * sv_d,
                mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
        v = v.to(tl.float32)
    if HAS_W:
        w = tl.load(W + b * sw_b + h * sw_h + offs_m * sw_l, mask=q_ok, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    lse = tl.load(LSE + bh * L + offs_m, mask=q_ok, other=0.0)
    k_base = K + b * sk_b + h * sk_h
    g_base = G + b * sg_b + h * sg_h

    r = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ok = offs_n < L
        kT = tl.load(k_base + offs_dqk[:, None] * sk_d + offs_n[None, :] * sk_l,
                     mask=_tile_mask_t(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        g = tl.load(g_base + offs_n[:, None] * sg_l + offs_dv[None, :] * sg_d,
                    mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            kT = kT.to(tl.float32)
            g = g.to(tl.float32)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(k_ok[None, :] & q_ok[:, None], tl.math.exp2(s - lse[:, None]), 0.0)
        r += tl.dot(p.to(g.dtype), g, input_precision=DOT_PRECISION)

    delta = tl.sum(v.to(tl.float32) * r, 1)
    tl.store(DELTA + bh * L + offs_m, delta, mask=q_ok)
    if NEED_DV:
        tl.store(DV + b * sdv_b + h * sdv_h + offs_m[:, None] * sdv_l + offs_dv[None, :] * sdv_d,
                 (r * w[:, None]).to(DV.dtype.element_ty),
                 mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV))

    if NEED_DQ:
        dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
        for n0 in range(0, L, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k_ok = offs_n < L
            k = tl.load(k_base + offs_n[:, None] * sk_l + offs_dqk[None, :] * sk_d,
                        mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
            gT = tl.load(g_base + offs_dv[:, None] * sg_d + offs_n[None, :] * sg_l,
                         mask=_tile_mask_t(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
            if UPCAST_DOT:
                k = k.to(tl.float32)
                gT = gT.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            p = tl.where(k_ok[None, :] & q_ok[:, None], tl.math.exp2(s - lse[:, None]), 0.0)
            gv = tl.dot(v, gT, input_precision=DOT_PRECISION)  # (queries, keys): G_j · v_i
            ds = p * (gv - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

        tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_l + offs_dqk[None, :] * sdq_d,
                 (dq * (w * scale)[:, None]).to(DQ.dtype.element_ty),
                 mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))


@triton.jit
def _ra_bwd_k(
    Q, K, V, W, G, LSE, DELTA, DK,
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    sw_b, sw_h, sw_l,
    sg_b, sg_h, sg_l, sg_d,
    sdk_b, sdk_h, sdk_l, sdk_d,
    heads, L, tiles, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_W: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per key tile: dk_j = scale Σ_i w_i P[i, j] (G_j·v_i - delta_i) q_i."""
    pid = tl.program_id(0)
    bh = (pid // tiles).to(tl.int64)
    b = bh // heads
    h = bh % heads
    qk_scale = scale * 1.4426950408889634
    offs_n = (pid % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = offs_n < L
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + b * sk_b + h * sk_h + offs_n[:, None] * sk_l + offs_dqk[None, :] * sk_d,
                mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    g = tl.load(G + b * sg_b + h * sg_h + offs_n[:, None] * sg_l + offs_dv[None, :] * sg_d,
                mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        k = k.to(tl.float32)
        g = g.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    v_base = V + b * sv_b + h * sv_h
    for m0 in range(0, L, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q_ok = offs_m < L
        q = tl.load(q_base + offs_m[:, None] * sq_l + offs_dqk[None, :] * sq_d,
                    mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        vT = tl.load(v_base + offs_dv[:, None] * sv_d + offs_m[None, :] * sv_l,
                     mask=_tile_mask_t(q_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            q = q.to(tl.float32)
            vT = vT.to(tl.float32)
        lse = tl.load(LSE + bh * L + offs_m, mask=q_ok, other=0.0)
        delta = tl.load(DELTA + bh * L + offs_m, mask=q_ok, other=0.0)
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        pT = tl.where(k_ok[:, None] & q_ok[None, :], tl.math.exp2(sT - lse[None, :]), 0.0)
        if HAS_W:
            w = tl.load(W + b * sw_b + h * sw_h + offs_m * sw_l, mask=q_ok, other=0.0)
            pT = pT * w.to(tl.float32)[None, :]
        gvT = tl.dot(g, vT, input_precision=DOT_PRECISION)  # (keys, queries): G_j · v_i
        dsT = pT * (gvT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    tl.store(DK + b * sdk_b + h * sdk_h + offs_n[:, None] * sdk_l + offs_dqk[None, :] * sdk_d,
             (dk * scale).to(DK.dtype.element_ty),
             mask=_tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK))


class _Problem:
    def __init__(self, q, v, scale):
        self.B, self.heads, self.L, self.d_qk = q.shape
        self.d_v = v.shape[-1]
        self.scale = scale
        self.block_dqk = triton.next_power_of_2(max(self.d_qk, _MIN_BLOCK))
        self.block_dv = triton.next_power_of_2(max(self.d_v, _MIN_BLOCK))
        # Interpreter: few large tiles win (every tl op is a numpy call). GPU: 64 x 64, untuned.
        cap = 128 if INTERPRETED else 64
        if _TILE_CAP is not None:
            cap = _TILE_CAP
        self.block = max(_MIN_BLOCK, min(cap, triton.next_power_of_2(max(self.L, 1))))
        self.tiles = triton.cdiv(self.L, self.block)
        self.num_warps = 1 if INTERPRETED else 4
        self.empty = self.B * self.heads * self.L == 0

    def constexprs(self, dtype, with_dv=True):
        c = dict(D_QK=self.d_qk, BLOCK_M=self.block, BLOCK_N=self.block,
                 BLOCK_DQK=self.block_dqk,
                 UPCAST_DOT=INTERPRETED and dtype == torch.bfloat16,
                 DOT_PRECISION=_dot_precision(dtype),
                 num_warps=self.num_warps, num_stages=1 if INTERPRETED else 2)
        if with_dv:
            c.update(D_V=self.d_v, BLOCK_DV=self.block_dv)
        return c


def _w_args(weights, q):
    if weights is None:
        return q, (0, 0, 0), False
    return weights, weights.stride(), True


def _lse(q, k, pb):
    lse = torch.empty(pb.B * pb.heads, pb.L, dtype=torch.float32, device=q.device)
    _ra_lse[(pb.B * pb.heads * pb.tiles,)](
        q, k, lse, *q.stride(), *k.stride(), pb.heads, pb.L, pb.tiles, pb.scale,
        **pb.constexprs(q.dtype, with_dv=False))
    return lse


def _forward(q, k, v, weights, pb, return_scores):
    out = torch.empty(pb.B, pb.L, pb.heads, pb.d_v, dtype=q.dtype,
                      device=q.device).permute(0, 2, 1, 3)
    scores = torch.zeros(pb.B, pb.L, pb.L, dtype=q.dtype, device=q.device) if return_scores \
        else q.new_empty(0)
    if pb.empty:
        return out.zero_(), scores, torch.zeros(pb.B * pb.heads, pb.L, device=q.device)
    lse = _lse(q, k, pb)
    w, sw, has_w = _w_args(weights, q)
    _ra_col[(pb.B * pb.heads * pb.tiles,)](
        q, k, v, w, lse, out, *q.stride(), *k.stride(), *v.stride(), *sw, *out.stride(),
        pb.heads, pb.L, pb.tiles, pb.scale, HAS_W=has_w, **pb.constexprs(q.dtype))
    if return_scores:
        _ra_mask[(pb.B * pb.tiles * pb.tiles,)](
            q, k, w, lse, scores, *q.stride(), *k.stride(), *sw,
            pb.heads, pb.L, pb.tiles, pb.tiles, pb.scale, HAS_W=has_w,
            **pb.constexprs(q.dtype, with_dv=False))
    return out, scores, lse


def _backward(dout, q, k, v, weights, lse, pb, need_dq, need_dk, need_dv):
    """``(dq, dk, dv, delta)``, the gradients not asked for None; ``delta`` (= dw) always, as dq
    and dk need it."""
    dq, dk, dv = (torch.empty_like(t, memory_format=torch.contiguous_format) if need else None
                  for t, need in ((q, need_dq), (k, need_dk), (v, need_dv)))
    delta = torch.zeros(pb.B * pb.heads, pb.L, dtype=torch.float32, device=q.device)
    if pb.empty:
        return (*(None if g is None else g.zero_() for g in (dq, dk, dv)), delta)
    w, sw, has_w = _w_args(weights, q)
    # Gradients not asked for are never written: their inputs stand in as pointers.
    dq_, dk_, dv_ = (t if g is None else g for g, t in ((dq, q), (dk, k), (dv, v)))
    grid = (pb.B * pb.heads * pb.tiles,)
    consts = pb.constexprs(q.dtype)
    _ra_bwd_q[grid](
        q, k, v, w, dout, lse, dq_, dv_, delta,
        *q.stride(), *k.stride(), *v.stride(), *sw, *dout.stride(), *dq_.stride(), *dv_.stride(),
        pb.heads, pb.L, pb.tiles, pb.scale, HAS_W=has_w, NEED_DV=need_dv, NEED_DQ=need_dq,
        **consts)
    if need_dk:
        _ra_bwd_k[grid](
            q, k, v, w, dout, lse, delta, dk_,
            *q.stride(), *k.stride(), *v.stride(), *sw, *dout.stride(), *dk_.stride(),
            pb.heads, pb.L, pb.tiles, pb.scale, HAS_W=has_w, **consts)
    return dq, dk, dv, delta


def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                weights: Optional[torch.Tensor], scale: float, return_scores: bool,
                for_backward: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, scores or empty, lse)``; lse ``(B * heads, L)`` float32, base 2 (pass 2 needs it
    whether or not a backward follows)."""
    return _forward(q, k, v, weights, _Problem(q, v, scale), return_scores)


def _fake_forward(q, k, v, weights, scale, return_scores, for_backward):
    B, heads, L, _ = q.shape
    out = q.new_empty(B, L, heads, v.shape[-1]).permute(0, 2, 1, 3)
    scores = q.new_empty(B, L, L) if return_scores else q.new_empty(0)
    return out, scores, q.new_empty(B * heads, L, dtype=torch.float32)


def _backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 weights: Optional[torch.Tensor], lse: torch.Tensor, scale: float,
                 return_scores: bool, needs_input_grad: List[bool]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    need_dq, need_dk, need_dv, need_dw = needs_input_grad
    pb = _Problem(q, v, scale)
    dq, dk, dv, delta = _backward(dout, q, k, v, weights, lse, pb, need_dq, need_dk, need_dv)
    dw = delta.view(pb.B, pb.heads, pb.L).to(q.dtype) if need_dw else None
    return dq, dk, dv, dw


# The scores output is detached (the reference's dependency mask takes no gradient either).
FUSED_OP = FusedOp("reversed_attention", forward=_forward_op, backward=_backward_op,
                   forward_fake=_fake_forward, outputs=("out", "scores", "lse"), results=2,
                   saved=("lse",), differentiable=("q", "k", "v", "weights"))


def reversed_attention_triton(q, k, v, weights, scale, return_scores):
    """Triton implementation of ``reversed_attention_reference``; arguments already validated by
    :func:`ops.reversed_attention` (``weights`` is None or expanded to ``(B, heads, L)``)."""
    out, scores = FUSED_OP(q, k, v, weights, float(scale), bool(return_scores))
    return (out, scores) if return_scores else out
