"""Fused Triton path of :func:`ops.window_attention_2d` (forward and backward).

FlashAttention-2 structure restricted to one window: a program owns ``BLOCK_M`` query tokens of one
window of one (batch, head) and streams the same window's keys in ``BLOCK_N`` blocks with an
online softmax, so no score matrix and no windowed copy of q/k/v ever reaches memory. Tokens of a
window are numbered row-major; token ``t`` of window ``(wy, wx)`` sits at grid position
``(wy * wh - oy + t // ww, wx * ww - ox + t % ww)``, so the window partition (padding included) is
pure index arithmetic on top of the inputs' own strides: q/k/v are read in place, typically as
strided views of one qkv projection output.

Padding semantics (see ``window_attention_reference``): keys outside the grid load as zeros.
With ``padding="zeros"`` that *is* the definition (logit exactly 0, value 0) and they stay in the
softmax; with ``"masked"`` they get ``-inf``. Lanes past the window's ``wh * ww`` tokens are tile
padding and are always ``-inf``. Padded queries are neither stored nor given gradients.

The backward follows FA2: ``delta = rowsum(dO * O)``, then one kernel that owns a key block and
loops over its window's query blocks (dK, dV), and one that owns a query block and loops over key
blocks (dQ). When a whole window fits in one key block the first kernel also finishes dQ and the
second is skipped. Windows never overlap, so every output element has exactly one writer: no
atomics.

Layouts: the output is stored token-major, ``(B, H, W, heads, d_v)``, and returned as its
``(B, heads, H, W, d_v)`` view; gradients are fresh contiguous tensors in the inputs' logical shape.

The softmax runs in base 2 (``exp2`` with the scale folded into ``scale * log2(e)``) and the
forward stores the base-2 log-sum-exp for the backward to recompute probabilities.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ._checks import check_triton_supported

__all__ = ["window_attention_triton"]


# Under the interpreter every tl op is one numpy call whose fixed Python overhead dwarfs the
# arithmetic, so fewer, larger tiles are strictly faster; 128 still splits the tests' full-grid
# windows (up to 16x16 tokens) into several blocks. GPU tiles: see _launch_config.
_INTERPRETER_BLOCK = 128
_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16 on GPU
_BLOCK_CAP = None  # tests lower this to force many small blocks per window


@triton.jit
def _program_coords(pid, num_blocks, num_windows, num_windows_x, heads, wh, ww, oy, ox):
    """Split a flat program id into (block in window, batch, head, window origin on the grid).

    Blocks of one window are consecutive program ids, then windows, then (batch, head): programs
    that run together share the window's K/V in L2.
    """
    blk = pid % num_blocks
    win = (pid // num_blocks) % num_windows
    bh = pid // (num_blocks * num_windows)
    y0 = (win // num_windows_x) * wh - oy
    x0 = (win % num_windows_x) * ww - ox
    # int64 so batch/head offsets into large activations cannot overflow 32-bit pointer math.
    bh = bh.to(tl.int64)
    return blk, bh // heads, bh % heads, bh, y0, x0


@triton.jit
def _window_tokens(t, y0, x0, ww, L, H, W):
    """Grid position of window tokens ``t``, whether ``t`` is a token of the window at all, and
    whether it lies inside the real (unpadded) grid."""
    y = y0 + t // ww
    x = x0 + t % ww
    in_window = t < L
    in_grid = in_window & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    return y, x, in_window, in_grid


@triton.jit
def _tile_mask(tokens_ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a (tokens, dims) tile. Without a per-dim term when the head dim fills the block:
    a mask that varies along d stops the compiler from vectorising the loads."""
    if D == BLOCK_D:
        return tokens_ok[:, None]
    else:
        return tokens_ok[:, None] & (offs_d[None, :] < D)


@triton.jit
def _tile_mask_t(tokens_ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """:func:`_tile_mask` of a transposed (dims, tokens) tile."""
    if D == BLOCK_D:
        return tokens_ok[None, :]
    else:
        return tokens_ok[None, :] & (offs_d[:, None] < D)


@triton.jit
def _window_attn_fwd(
    Q, K, V, O, LSE,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    so_b, so_h, so_y, so_x, so_d,
    heads, H, W, wh, ww, oy, ox, num_windows_x, num_windows, num_m_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASK_PADDED_KEYS: tl.constexpr, STORE_LSE: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    m_blk, b, h, bh, y0, x0 = _program_coords(
        tl.program_id(0), num_m_blocks, num_windows, num_windows_x, heads, wh, ww, oy, ox)
    L = wh * ww
    qk_scale = scale * 1.4426950408889634

    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    qy, qx, _, q_real = _window_tokens(offs_m, y0, x0, ww, L, H, W)
    q = tl.load(Q + b * sq_b + h * sq_h + qy[:, None] * sq_y + qx[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    # A finite floor instead of -inf keeps exp2(m_old - m_new) a number when a whole key block is
    # masked (a key block lying entirely in "masked" padding).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ky, kx, k_in_window, k_real = _window_tokens(offs_n, y0, x0, ww, L, H, W)
        # Out-of-grid keys load as 0: in "zeros" mode that is exactly the padded key and value.
        kT = tl.load(k_base + offs_dqk[:, None] * sk_d + ky[None, :] * sk_y + kx[None, :] * sk_x,
                     mask=_tile_mask_t(k_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        v = tl.load(v_base + ky[:, None] * sv_y + kx[:, None] * sv_x + offs_dv[None, :] * sv_d,
                    mask=_tile_mask(k_real, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        if MASK_PADDED_KEYS:
            key_ok = k_real
        else:
            key_ok = k_in_window
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # Every window holds at least one real key (0 <= offset < window), so l_i > 0 on real rows;
    # the guard only keeps tile-padding rows finite.
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + qy[:, None] * so_y + qx[:, None] * so_x
             + offs_dv[None, :] * so_d, out.to(O.dtype.element_ty),
             mask=_tile_mask(q_real, offs_dv, D_V, BLOCK_DV))
    if STORE_LSE:
        tl.store(LSE + bh * H * W + qy * W + qx, m_i + tl.math.log2(l_i), mask=q_real)


@triton.jit
def _window_attn_bwd_delta(
    O, DO, DELTA,
    so_b, so_h, so_y, so_x, so_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    heads, H, W, num_blocks, D_V: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """delta = rowsum(dO * O) per query, the softmax-Jacobian term shared by dQ and dK."""
    pid = tl.program_id(0)
    blk = pid % num_blocks
    bh = (pid // num_blocks).to(tl.int64)
    b = bh // heads
    h = bh % heads
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_DV)
    y = offs // W
    x = offs % W
    mask = _tile_mask(offs < H * W, offs_d, D_V, BLOCK_DV)
    o = tl.load(O + b * so_b + h * so_h + y[:, None] * so_y + x[:, None] * so_x
                + offs_d[None, :] * so_d, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdo_b + h * sdo_h + y[:, None] * sdo_y + x[:, None] * sdo_x
                 + offs_d[None, :] * sdo_d, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * H * W + offs, tl.sum(o * do, 1), mask=offs < H * W)


@triton.jit
def _window_attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DQ, DK, DV,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    sdk_b, sdk_h, sdk_y, sdk_x, sdk_d,
    sdv_b, sdv_h, sdv_y, sdv_x, sdv_d,
    heads, H, W, wh, ww, oy, ox, num_windows_x, num_windows, num_n_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASK_PADDED_KEYS: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FUSE_DQ: tl.constexpr,
):
    """One program per key block: dV = Pᵀ dO and dK = scale · dSᵀ Q over the window's queries.
    Probabilities are kept transposed (keys x queries) so both sums are plain dots.

    FUSE_DQ (the window fits in one key block, the common case for small windows and stripes):
    this program then sees every key of each query, so it also finishes dQ = scale · dS K and the
    separate dQ pass, which would re-read q, k, v and dO, is skipped."""
    n_blk, b, h, bh, y0, x0 = _program_coords(
        tl.program_id(0), num_n_blocks, num_windows, num_windows_x, heads, wh, ww, oy, ox)
    L = wh * ww
    qk_scale = scale * 1.4426950408889634

    offs_n = n_blk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    ky, kx, k_in_window, k_real = _window_tokens(offs_n, y0, x0, ww, L, H, W)
    k = tl.load(K + b * sk_b + h * sk_h + ky[:, None] * sk_y + kx[:, None] * sk_x
                + offs_dqk[None, :] * sk_d,
                mask=_tile_mask(k_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + ky[:, None] * sv_y + kx[:, None] * sv_x
                + offs_dv[None, :] * sv_d,
                mask=_tile_mask(k_real, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if MASK_PADDED_KEYS:
        key_ok = k_real
    else:
        key_ok = k_in_window

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    dq_base = DQ + b * sdq_b + h * sdq_h
    for start_m in range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        qy, qx, _, q_real = _window_tokens(offs_m, y0, x0, ww, L, H, W)
        qT = tl.load(q_base + offs_dqk[:, None] * sq_d + qy[None, :] * sq_y + qx[None, :] * sq_x,
                     mask=_tile_mask_t(q_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        do = tl.load(do_base + qy[:, None] * sdo_y + qx[:, None] * sdo_x + offs_dv[None, :] * sdo_d,
                     mask=_tile_mask(q_real, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            qT = qT.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + bh * H * W + qy * W + qx, mask=q_real, other=0.0)
        delta = tl.load(DELTA + bh * H * W + qy * W + qx, mask=q_real, other=0.0)

        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
        pT = tl.math.exp2(sT - lse[None, :])
        # Padded queries have no output, hence send no gradient to the keys. (Their q and dO load
        # as zeros, which already zeroes both sums; the mask keeps pT itself exact.)
        pT = tl.where(key_ok[:, None] & q_real[None, :], pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=DOT_PRECISION)
        if FUSE_DQ:
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=DOT_PRECISION) * scale
            tl.store(dq_base + qy[:, None] * sdq_y + qx[:, None] * sdq_x
                     + offs_dqk[None, :] * sdq_d, dq.to(DQ.dtype.element_ty),
                     mask=_tile_mask(q_real, offs_dqk, D_QK, BLOCK_DQK))

    # Gradients of padded (out-of-grid) keys belong to constants: not stored.
    tl.store(DK + b * sdk_b + h * sdk_h + ky[:, None] * sdk_y + kx[:, None] * sdk_x
             + offs_dqk[None, :] * sdk_d, (dk * scale).to(DK.dtype.element_ty),
             mask=_tile_mask(k_real, offs_dqk, D_QK, BLOCK_DQK))
    tl.store(DV + b * sdv_b + h * sdv_h + ky[:, None] * sdv_y + kx[:, None] * sdv_x
             + offs_dv[None, :] * sdv_d, dv.to(DV.dtype.element_ty),
             mask=_tile_mask(k_real, offs_dv, D_V, BLOCK_DV))


@triton.jit
def _window_attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    heads, H, W, wh, ww, oy, ox, num_windows_x, num_windows, num_m_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASK_PADDED_KEYS: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query block: dQ = scale · dS K over the window's keys."""
    m_blk, b, h, bh, y0, x0 = _program_coords(
        tl.program_id(0), num_m_blocks, num_windows, num_windows_x, heads, wh, ww, oy, ox)
    L = wh * ww
    qk_scale = scale * 1.4426950408889634

    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    qy, qx, _, q_real = _window_tokens(offs_m, y0, x0, ww, L, H, W)
    q = tl.load(Q + b * sq_b + h * sq_h + qy[:, None] * sq_y + qx[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + qy[:, None] * sdo_y + qx[:, None] * sdo_x
                 + offs_dv[None, :] * sdo_d,
                 mask=_tile_mask(q_real, offs_dv, D_V, BLOCK_DV), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * H * W + qy * W + qx, mask=q_real, other=0.0)
    delta = tl.load(DELTA + bh * H * W + qy * W + qx, mask=q_real, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ky, kx, k_in_window, k_real = _window_tokens(offs_n, y0, x0, ww, L, H, W)
        k = tl.load(k_base + ky[:, None] * sk_y + kx[:, None] * sk_x + offs_dqk[None, :] * sk_d,
                    mask=_tile_mask(k_real, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        vT = tl.load(v_base + offs_dv[:, None] * sv_d + ky[None, :] * sv_y + kx[None, :] * sv_x,
                     mask=_tile_mask_t(k_real, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            vT = vT.to(tl.float32)
        if MASK_PADDED_KEYS:
            key_ok = k_real
        else:
            key_ok = k_in_window
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        # Excluded keys have k = 0, so dQ would not see them anyway; masking keeps dS exact.
        p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    tl.store(DQ + b * sdq_b + h * sdq_h + qy[:, None] * sdq_y + qx[:, None] * sdq_x
             + offs_dqk[None, :] * sdq_d, (dq * scale).to(DQ.dtype.element_ty),
             mask=_tile_mask(q_real, offs_dqk, D_QK, BLOCK_DQK))


# The kernels were decorated under the interpreter iff this is an InterpretedFunction; that, not
# the environment at call time, decides how they run.
_INTERPRETED = isinstance(_window_attn_fwd, InterpretedFunction)


class _Problem:
    """Shapes, window tiling and launch parameters shared by the forward and backward launches."""

    def __init__(self, q, v, window_size, window_offset, padding, scale):
        self.B, self.heads, self.H, self.W, self.d_qk = q.shape
        self.d_v = v.shape[-1]
        (self.wh, self.ww), (self.oy, self.ox) = window_size, window_offset
        self.num_windows_x = triton.cdiv(self.W + self.ox, self.ww)
        self.num_windows = triton.cdiv(self.H + self.oy, self.wh) * self.num_windows_x
        self.padding, self.scale = padding, scale
        self.window_tokens = self.wh * self.ww
        self.block_dqk = triton.next_power_of_2(max(self.d_qk, _MIN_BLOCK))
        self.block_dv = triton.next_power_of_2(max(self.d_v, _MIN_BLOCK))
        self.fwd = _launch_config(self.window_tokens, self.block_dqk, self.block_dv, False)
        self.bwd = _launch_config(self.window_tokens, self.block_dqk, self.block_dv, True)
        self.empty = self.B * self.heads * self.H * self.W == 0

    def window_args(self):
        return (self.heads, self.H, self.W, self.wh, self.ww, self.oy, self.ox,
                self.num_windows_x, self.num_windows)

    def blocks(self, config):
        """(query blocks, key blocks) per window under a launch config."""
        return (triton.cdiv(self.window_tokens, config[0]),
                triton.cdiv(self.window_tokens, config[1]))

    def constexprs(self, dtype, config):
        block_m, block_n, num_warps, num_stages = config
        return dict(
            D_QK=self.d_qk, D_V=self.d_v,
            BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_DQK=self.block_dqk, BLOCK_DV=self.block_dv,
            MASK_PADDED_KEYS=self.padding == "masked",
            UPCAST_DOT=_INTERPRETED and dtype == torch.bfloat16,
            DOT_PRECISION=_dot_precision(dtype),
            num_warps=num_warps, num_stages=num_stages)


def _launch_config(window_tokens, block_dqk, block_dv, backward):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for windows of ``window_tokens`` tokens.

    Tiles never exceed the next power of two of the window: CSWin's 1-row stripes and HiLo's 2x2
    windows would otherwise spend most of every tile on masked lanes. The GPU choices come from a
    sweep on an H100 (bf16, B=128, Swin 7x7 / CSWin stripes / 14x14 full grid, d = 32..128):
    forward 64x64 tiles, 128-query tiles once a window has >= 128 tokens; backward with the whole
    window in one key block when it fits (fused dQ) and short 32-query steps.
    """
    fit = max(_MIN_BLOCK, triton.next_power_of_2(window_tokens))
    if _INTERPRETED:
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
    if _BLOCK_CAP is not None:
        config = (min(config[0], _BLOCK_CAP), min(config[1], _BLOCK_CAP)) + config[2:]
    return config


def _dot_precision(dtype):
    # fp32 dots honour torch's TF32 switch like cuBLAS matmuls do; the interpreter is always IEEE.
    if dtype == torch.float32 and not _INTERPRETED and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _forward(q, k, v, pb, store_lse):
    # Logical (B, heads, H, W, d_v) stored as (B, H, W, heads, d_v): the model's next step
    # ``.permute(0, 2, 3, 1, 4).reshape(B, H * W, heads * d_v)`` is then a free view.
    out = torch.empty(pb.B, pb.H, pb.W, pb.heads, pb.d_v, dtype=q.dtype,
                      device=q.device).permute(0, 3, 1, 2, 4)
    lse = torch.empty(pb.B * pb.heads, pb.H, pb.W, dtype=torch.float32, device=q.device) \
        if store_lse else torch.empty(1, dtype=torch.float32, device=q.device)
    if pb.empty:
        return out, lse
    num_m_blocks, _ = pb.blocks(pb.fwd)
    _window_attn_fwd[(pb.B * pb.heads * pb.num_windows * num_m_blocks,)](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *pb.window_args(), num_m_blocks, pb.scale,
        STORE_LSE=store_lse, **pb.constexprs(q.dtype, pb.fwd))
    return out, lse


def _backward(q, k, v, out, lse, dout, pb, need_dq=True, need_dkdv=True):
    # Gradients in the inputs' logical, contiguous layout: autograd's backward of the qkv views
    # (slice, unbind) allocates contiguous logical-shape buffers, so this makes its copies plain.
    dq, dk, dv = torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format), \
        torch.empty_like(v, memory_format=torch.contiguous_format)
    if pb.empty:
        return dq.zero_(), dk.zero_(), dv.zero_()

    hw = pb.H * pb.W
    delta = torch.empty(pb.B * pb.heads, pb.H, pb.W, dtype=torch.float32, device=q.device)
    delta_block = min(_INTERPRETER_BLOCK * 2 if _INTERPRETED else 128,
                      triton.next_power_of_2(hw))
    delta_blocks = triton.cdiv(hw, delta_block)
    _window_attn_bwd_delta[(pb.B * pb.heads * delta_blocks,)](
        out, dout, delta, *out.stride(), *dout.stride(), pb.heads, pb.H, pb.W, delta_blocks,
        pb.d_v, BLOCK=delta_block, BLOCK_DV=pb.block_dv, num_warps=4)

    num_m_blocks, num_n_blocks = pb.blocks(pb.bwd)
    fuse_dq = need_dq and num_n_blocks == 1
    consts = pb.constexprs(q.dtype, pb.bwd)
    if need_dkdv or fuse_dq:
        _window_attn_bwd_dkdv[(pb.B * pb.heads * pb.num_windows * num_n_blocks,)](
            q, k, v, dout, lse, delta, dq, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
            *dq.stride(), *dk.stride(), *dv.stride(),
            *pb.window_args(), num_n_blocks, pb.scale, FUSE_DQ=fuse_dq, **consts)
    if need_dq and not fuse_dq:
        _window_attn_bwd_dq[(pb.B * pb.heads * pb.num_windows * num_m_blocks,)](
            q, k, v, dout, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
            *pb.window_args(), num_m_blocks, pb.scale, **consts)
    return dq, dk, dv


# The fused path is a pair of torch.library custom ops (forward, backward) tied together by
# register_autograd: torch.compile / export see one opaque node each (no graph break, shapes from
# the fake implementations), eager autograd works as with an autograd.Function, and fvcore sees
# the forward by name (ops.flops counts it).

@torch.library.custom_op("backbones::window_attention_fwd", mutates_args=())
def _window_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             window_h: int, window_w: int, offset_y: int, offset_x: int,
                             padding: str, scale: float, store_lse: bool
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    pb = _Problem(q, v, (window_h, window_w), (offset_y, offset_x), padding, scale)
    return _forward(q, k, v, pb, store_lse)


@_window_attention_fwd_op.register_fake
def _(q, k, v, window_h, window_w, offset_y, offset_x, padding, scale, store_lse):
    B, heads, H, W, _ = q.shape
    out = q.new_empty(B, H, W, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
    lse = q.new_empty((B * heads, H, W) if store_lse else (1,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("backbones::window_attention_bwd", mutates_args=())
def _window_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             window_h: int, window_w: int, offset_y: int, offset_x: int,
                             padding: str, scale: float, need_dq: bool, need_dkdv: bool
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pb = _Problem(q, v, (window_h, window_w), (offset_y, offset_x), padding, scale)
    return _backward(q, k, v, out, lse, dout, pb, need_dq=need_dq, need_dkdv=need_dkdv)


@_window_attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse, window_h, window_w, offset_y, offset_x, padding, scale, need_dq,
      need_dkdv):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, *args, store_lse = inputs
    if not store_lse:  # forward without grad: nothing to save
        return
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = args  # window_h, window_w, offset_y, offset_x, padding, scale


def _backward_rule(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
    dq, dk, dv = _window_attention_bwd_op(dout, q, k, v, out, lse, *ctx.args, need_dq,
                                          need_dk or need_dv)
    return (dq if need_dq else None, dk if need_dk else None, dv if need_dv else None,
            None, None, None, None, None, None, None)


_window_attention_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


def window_attention_triton(q, k, v, window_size, window_offset, padding, scale):
    """Triton implementation of ``window_attention_reference``; arguments already validated by
    :func:`ops.window_attention_2d` (``window_size``/``window_offset`` are int pairs)."""
    check_triton_supported("window_attention_2d", q, v)
    # The log-sum-exp is only needed (and stored) when a gradient will be asked for.
    store_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out, _ = _window_attention_fwd_op(q, k, v, *window_size, *window_offset, padding,
                                      float(scale), store_lse)
    return out
