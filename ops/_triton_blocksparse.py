"""Block-sparse flash attention on a 2-D token grid: the one Triton kernel family behind
``ops.window_attention_2d``, ``ops.halo_attention_2d``, ``ops.neighborhood_attention_2d``,
``ops.routed_attention_2d`` and ``ops.masked_attention``.

FlashAttention-2 structure, parametrised by a *pattern* (a constexpr) that says which keys each
query sees. Queries are cut into **groups** (a window, a HaloNet block, a tile of a dilated
sub-grid, a BiFormer region, or the whole grid); a program owns ``BLOCK_M`` queries of one group of
one (batch, head) and streams the group's **key list** in ``BLOCK_N``-key blocks with an online
softmax. Every token position is computed from indices and read through the tensors' own strides
(q/k/v are typically views of one qkv projection): no permute, gather, padded copy, mask or score
matrix ever reaches memory.

=====================  ===========================================  ==============================
pattern                key list of a group                          per-pair test / extras
=====================  ===========================================  ==============================
``WINDOW``             the window's ``wh x ww`` tokens              out-of-grid keys: zero or -inf
``HALO``               the block's haloed ``win x win`` window      zero keys take part; rel-pos
``NEIGHBORHOOD``       the union of the tile's clamped windows      clamped-window test
``ROUTED``             ``topk`` regions read from an index tensor   (repeats count twice)
``DENSE``              every key                                    optional bool / bit mask
=====================  ===========================================  ==============================

Pattern arguments travel as eight ints ``a0..a7`` whose meaning each pattern documents in its
helper below; the ``Pattern`` class builds them on the host.

Backward (FA2): ``delta = rowsum(dO * O)`` pre-pass, then

* ``_bwd_dq``: one program per query block, the forward's loop again: dQ, the relative-position
  gradients (reduced per offset with a one-hot dot), and for ``ROUTED`` dK/dV by fp32 atomics (a
  routed key has data-dependent readers, so the query side is the only cheap owner);
* ``_bwd_dkdv``: one program per block of **owned** keys (a window's keys, a HaloNet block's home
  keys, a sub-grid key tile, a block of the grid) looping over the queries that can see them
  (the same window; the neighbouring blocks; the analytic inverse of the clamped window; all
  queries). Every gradient element has one writer: deterministic, no atomics. When a group's
  whole key list fits one block (small windows), it also finishes dQ (``FUSE_DQ``).

Rows whose every key is masked output 0 and store a log-sum-exp of ``+inf``, so their
probabilities and gradients are 0. The softmax runs in base 2 (``exp2``, scale folded into
``scale * log2(e)``); the stored log-sum-exp is base 2.
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

__all__ = ["Pattern", "Launch", "forward_outputs", "fake_forward", "attention_forward",
           "attention_backward", "dot_precision", "fit", "cap",
           "WINDOW", "HALO", "NEIGHBORHOOD", "ROUTED", "DENSE", "INTERPRETED", "MIN_BLOCK"]

WINDOW: tl.constexpr = tl.constexpr(0)
HALO: tl.constexpr = tl.constexpr(1)
NEIGHBORHOOD: tl.constexpr = tl.constexpr(2)
ROUTED: tl.constexpr = tl.constexpr(3)
DENSE: tl.constexpr = tl.constexpr(4)

MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16 on GPU
_BLOCK_CAP = None  # tests lower this to force many small blocks per group
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


# ----------------------------------------------------------------------------------------------
# Small shared pieces
# ----------------------------------------------------------------------------------------------

@triton.jit
def _tile_mask(tokens_ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a (tokens, dims) tile. No per-dim term when the head dim fills the block: a mask
    that varies along d stops the compiler from vectorising the loads."""
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
def _load_rows(base, y, x, ok, offs_d, sy, sx, sd, D: tl.constexpr, BLOCK_D: tl.constexpr,
               UPCAST: tl.constexpr):
    """(tokens, dims) tile of a (.., H, W, d) tensor at grid positions (y, x)."""
    t = tl.load(base + y[:, None] * sy + x[:, None] * sx + offs_d[None, :] * sd,
                mask=_tile_mask(ok, offs_d, D, BLOCK_D), other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _load_cols(base, y, x, ok, offs_d, sy, sx, sd, D: tl.constexpr, BLOCK_D: tl.constexpr,
               UPCAST: tl.constexpr):
    """The transposed (dims, tokens) tile."""
    t = tl.load(base + offs_d[:, None] * sd + y[None, :] * sy + x[None, :] * sx,
                mask=_tile_mask_t(ok, offs_d, D, BLOCK_D), other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _neighborhood_start(i, L, K):
    """First key (sub-grid coordinates) of the clamped window of query ``i`` (NATTEN)."""
    return tl.minimum(tl.maximum(i - K // 2, 0), L - K)


@triton.jit
def _dilation_group(g, a2, a3, a5, a6, Hq, Wq):
    """NEIGHBORHOOD: group id -> (tile row, tile col, sub-grid origin gy/gx, sub-grid size)."""
    tx = g % a5
    ty = (g // a5) % a6
    grp = g // (a5 * a6)
    gy = grp // a3
    gx = grp % a3
    return ty, tx, gy, gx, (Hq - gy + a2 - 1) // a2, (Wq - gx + a3 - 1) // a3


# ----------------------------------------------------------------------------------------------
# Patterns: which queries a group holds and which keys it sees
# ----------------------------------------------------------------------------------------------

@triton.jit
def _queries(PATTERN: tl.constexpr, g, t, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq,
             BLOCK_M: tl.constexpr):
    """Query tokens ``t`` of group ``g``: grid (y, x), validity, and pattern coordinates (qa, qb)
    used by the pair test or the relative-position bias.

    WINDOW  a0..a4 = wh, ww, oy, ox, windows per row: window g starts at
            ((g // a4) * wh - oy, (g % a4) * ww - ox); tokens row-major.
    HALO    a0..a4 = block, halo, bq, win, blocks per row: the bq x bq query block g (the query
            grid may be the key grid sub-sampled); qa, qb = position inside the block.
    NEIGHBORHOOD a0..a6 = kh, kw, dh, dw, TX, tiles per row, tiles per column: group = (dilation
            sub-grid, BLOCK_M // TX x TX tile of it); qa, qb = window start on the sub-grid.
    ROUTED  a0..a2 = rh, rw, regions per row: region g, tokens row-major.
    DENSE   group 0 = the grid, tokens row-major (``t`` already spans every query block).
    """
    qa = tl.zeros_like(t)
    qb = tl.zeros_like(t)
    if PATTERN == WINDOW:
        y = (g // a4) * a0 - a2 + t // a1
        x = (g % a4) * a1 - a3 + t % a1
        ok = (t < a0 * a1) & (y >= 0) & (y < Hq) & (x >= 0) & (x < Wq)
    elif PATTERN == HALO:
        qa = t // a2
        qb = t % a2
        y = (g // a4) * a2 + qa
        x = (g % a4) * a2 + qb
        ok = t < a2 * a2
    elif PATTERN == NEIGHBORHOOD:
        ty, tx, gy, gx, Hg, Wg = _dilation_group(g, a2, a3, a5, a6, Hq, Wq)
        sy = ty * (BLOCK_M // a4) + t // a4
        sx = tx * a4 + t % a4
        ok = (sy < Hg) & (sx < Wg)
        qa = _neighborhood_start(sy, Hg, a0)
        qb = _neighborhood_start(sx, Wg, a1)
        y = gy + sy * a2
        x = gx + sx * a3
    elif PATTERN == ROUTED:
        y = (g // a2) * a0 + t // a1
        x = (g % a2) * a1 + t % a1
        ok = t < a0 * a1
    else:
        y = t // Wq
        x = t % Wq
        ok = t < Hq * Wq
    return y, x, ok, qa, qb


@triton.jit
def _key_span(PATTERN: tl.constexpr, g, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W,
              BLOCK_M: tl.constexpr):
    """Length of group ``g``'s key list and three scalars that locate it (NEIGHBORHOOD: the key
    rectangle's origin and width on the sub-grid; ROUTED a3 = topk regions)."""
    c0 = 0
    c1 = 0
    c2 = 1
    if PATTERN == WINDOW:
        n = a0 * a1
    elif PATTERN == HALO:
        n = a3 * a3
    elif PATTERN == NEIGHBORHOOD:
        ty, tx, gy, gx, Hg, Wg = _dilation_group(g, a2, a3, a5, a6, Hq, Wq)
        y0 = ty * (BLOCK_M // a4)
        x0 = tx * a4
        c0 = _neighborhood_start(y0, Hg, a0)
        c1 = _neighborhood_start(x0, Wg, a1)
        y_end = _neighborhood_start(tl.minimum(y0 + BLOCK_M // a4 - 1, Hg - 1), Hg, a0) + a0
        c2 = _neighborhood_start(tl.minimum(x0 + a4 - 1, Wg - 1), Wg, a1) + a1 - c1
        n = (y_end - c0) * c2
    elif PATTERN == ROUTED:
        n = a3 * a0 * a1
    else:
        n = H * W
    return n, c0, c1, c2


@triton.jit
def _keys(PATTERN: tl.constexpr, g, s, n, c0, c1, c2, idx_base, s_idx_k,
          a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W):
    """Keys ``s`` of group ``g``'s key list: grid (y, x), whether the slot is in the list,
    whether it lies on the grid (out-of-grid keys load as zeros), and pattern coordinates
    (ka, kb) (HALO: place in the window; NEIGHBORHOOD: sub-grid position)."""
    ka = tl.zeros_like(s)
    kb = tl.zeros_like(s)
    in_list = s < n
    if PATTERN == WINDOW:
        y = (g // a4) * a0 - a2 + s // a1
        x = (g % a4) * a1 - a3 + s % a1
        real = in_list & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    elif PATTERN == HALO:
        ka = s // a3
        kb = s % a3
        y = (g // a4) * a0 - a1 + ka
        x = (g % a4) * a0 - a1 + kb
        real = in_list & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    elif PATTERN == NEIGHBORHOOD:
        ty, tx, gy, gx, Hg, Wg = _dilation_group(g, a2, a3, a5, a6, Hq, Wq)
        ka = c0 + s // c2
        kb = c1 + s % c2
        y = gy + ka * a2
        x = gx + kb * a3
        real = in_list
    elif PATTERN == ROUTED:
        T = a0 * a1
        slot = s // T
        region = tl.load(idx_base + slot * s_idx_k, mask=in_list, other=0)
        t = s - slot * T
        y = (region // a2) * a0 + t // a1
        x = (region % a2) * a1 + t % a1
        real = in_list
    else:
        y = s // W
        x = s % W
        real = in_list
    return y, x, in_list, real, ka, kb


@triton.jit
def _pair_terms(PATTERN: tl.constexpr, MASK_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                TRANSPOSED: tl.constexpr,
                q_ok, qa, qb, qflat, k_ok, ka, kb, kflat,
                M_base, sm_q, sm_k, RH, RW, r_row, sr_r, rel_center, a0, a1):
    """Which (query, key) pairs take part, and their additive logit (natural log units): the
    NEIGHBORHOOD window test, the DENSE mask (bytes, or bits: byte ``j >> 3``, bit ``j & 7``),
    the HALO relative-position logits ``RH[q, c + ka - qa] + RW[q, c + kb - qb]``. Laid out
    (queries, keys), or (keys, queries) when TRANSPOSED."""
    if TRANSPOSED:
        QOK = q_ok[None, :]
        QA = qa[None, :]
        QB = qb[None, :]
        QF = qflat[None, :]
        RR = r_row[None, :]
        KOK = k_ok[:, None]
        KA = ka[:, None]
        KB = kb[:, None]
        KF = kflat[:, None]
    else:
        QOK = q_ok[:, None]
        QA = qa[:, None]
        QB = qb[:, None]
        QF = qflat[:, None]
        RR = r_row[:, None]
        KOK = k_ok[None, :]
        KA = ka[None, :]
        KB = kb[None, :]
        KF = kflat[None, :]
    ok = QOK & KOK
    if PATTERN == NEIGHBORHOOD:
        ok = ok & (KA >= QA) & (KA < QA + a0) & (KB >= QB) & (KB < QB + a1)
    if MASK_MODE == 1:
        byte = tl.load(M_base + QF * sm_q + KF * sm_k, mask=ok, other=0)
        ok = ok & (byte != 0)
    elif MASK_MODE == 2:
        byte = tl.load(M_base + QF * sm_q + (KF >> 3) * sm_k, mask=ok, other=0).to(tl.int32)
        ok = ok & (((byte >> (KF & 7)) & 1) != 0)
    if HAS_BIAS:
        bias = tl.load(RH + RR + (rel_center + KA - QA) * sr_r, mask=ok, other=0.0).to(tl.float32)
        bias += tl.load(RW + RR + (rel_center + KB - QB) * sr_r, mask=ok, other=0.0).to(tl.float32)
    else:
        bias = 0.0
    return ok, bias


@triton.jit
def _key_block(PATTERN: tl.constexpr, MASK_OOB: tl.constexpr, MASK_MODE: tl.constexpr,
               HAS_BIAS: tl.constexpr, g, offs_n, n, c0, c1, c2, idx_base, si_k,
               q_ok, qa, qb, qflat, m_base, sm_q, sm_k, RH, RW, r_row, sr_r, rel_center,
               a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W):
    """One key block of a query block's list, as the forward and dQ passes see it: the keys,
    which take part (out-of-grid ones per MASK_OOB), the (query, key) pairs kept and their bias,
    and whether the block holds any kept pair at all (masks only: otherwise K/V are not read)."""
    ky, kx, k_list, k_real, ka, kb = _keys(PATTERN, g, offs_n, n, c0, c1, c2, idx_base, si_k,
                                           a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W)
    if MASK_OOB:
        k_ok = k_real
    else:
        k_ok = k_list
    ok, bias = _pair_terms(PATTERN, MASK_MODE, HAS_BIAS, False, q_ok, qa, qb, qflat,
                           k_ok, ka, kb, ky * W + kx, m_base, sm_q, sm_k, RH, RW, r_row,
                           sr_r, rel_center, a0, a1)
    if MASK_MODE != 0:
        visit = tl.max(ok.to(tl.int32)) > 0
    else:
        visit = True
    return ky, kx, k_real, k_ok, ka, kb, ok, bias, visit


@triton.jit
def _program(pid, num_blocks, num_groups, heads):
    """Flat program id -> (block in group, group, batch, head, batch*head). Blocks of a group are
    consecutive, then groups, then (batch, head): programs running together share K/V in L2.
    int64 so batch/head offsets into large activations cannot overflow 32-bit pointer math."""
    blk = pid % num_blocks
    g = (pid // num_blocks) % num_groups
    bh = (pid // (num_blocks * num_groups)).to(tl.int64)
    return blk, g, bh // heads, bh % heads, bh


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

@triton.jit
def _fwd(
    Q, K, V, O, LSE, IDX, M, RH, RW,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    so_b, so_h, so_y, so_x, so_d,
    si_b, si_g, si_k, sm_b, sm_h, sm_q, sm_k, sr_b, sr_h, sr_y, sr_x, sr_r,
    heads, Hq, Wq, H, W, num_groups, num_blocks, rel_center,
    a0, a1, a2, a3, a4, a5, a6, a7, scale,
    PATTERN: tl.constexpr, MASK_OOB: tl.constexpr, MASK_MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr, STORE_LSE: tl.constexpr,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    blk, g, b, h, bh = _program(tl.program_id(0), num_blocks, num_groups, heads)
    qk_scale = scale * LOG2E
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    qy, qx, q_ok, qa, qb = _queries(PATTERN, g, offs_m, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq,
                                    BLOCK_M)
    q = _load_rows(Q + b * sq_b + h * sq_h, qy, qx, q_ok, offs_dqk, sq_y, sq_x, sq_d,
                   D_QK, BLOCK_DQK, UPCAST_DOT)
    qflat = qy * Wq + qx
    r_row = b * sr_b + h * sr_h + qy * sr_y + qx * sr_x
    m_base = M + b * sm_b + h * sm_h
    idx_base = IDX + b * si_b + g * si_g

    # A finite floor instead of -inf keeps exp2(m_old - m_new) a number while every key so far
    # was masked.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    n, c0, c1, c2 = _key_span(PATTERN, g, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W, BLOCK_M)
    for start_n in range(0, n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ky, kx, k_real, k_ok, ka, kb, ok, bias, visit = _key_block(
            PATTERN, MASK_OOB, MASK_MODE, HAS_BIAS, g, offs_n, n, c0, c1, c2, idx_base, si_k,
            q_ok, qa, qb, qflat, m_base, sm_q, sm_k, RH, RW, r_row, sr_r, rel_center,
            a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W)
        if visit:
            kT = _load_cols(k_base, ky, kx, k_real, offs_dqk, sk_y, sk_x, sk_d, D_QK, BLOCK_DQK,
                            UPCAST_DOT)
            v = _load_rows(v_base, ky, kx, k_real, offs_dv, sv_y, sv_x, sv_d, D_V, BLOCK_DV,
                           UPCAST_DOT)
            s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
            if HAS_BIAS:
                s += bias * LOG2E
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    has_key = l_i > 0.0  # False on rows with every key masked (and tile padding): output 0
    l_safe = tl.where(has_key, l_i, 1.0)
    tl.store(O + b * so_b + h * so_h + qy[:, None] * so_y + qx[:, None] * so_x
             + offs_dv[None, :] * so_d, (acc / l_safe[:, None]).to(O.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV))
    if STORE_LSE:
        lse = tl.where(has_key, m_i + tl.math.log2(l_safe), float("inf"))
        tl.store(LSE + bh * Hq * Wq + qflat, lse, mask=q_ok)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------

@triton.jit
def _bwd_delta(
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
    ok = offs < H * W
    o = _load_rows(O + b * so_b + h * so_h, y, x, ok, offs_d, so_y, so_x, so_d, D_V, BLOCK_DV,
                   True)
    do = _load_rows(DO + b * sdo_b + h * sdo_h, y, x, ok, offs_d, sdo_y, sdo_x, sdo_d, D_V,
                    BLOCK_DV, True)
    tl.store(DELTA + bh * H * W + offs, tl.sum(o * do, 1), mask=ok)


@triton.jit
def _bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, DK, DV, IDX, M, RH, RW, DRH, DRW,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    sdk_b, sdk_h, sdk_y, sdk_x, sdk_d,
    sdv_b, sdv_h, sdv_y, sdv_x, sdv_d,
    si_b, si_g, si_k, sm_b, sm_h, sm_q, sm_k, sr_b, sr_h, sr_y, sr_x, sr_r,
    sdr_b, sdr_h, sdr_y, sdr_x, sdr_r,
    heads, Hq, Wq, H, W, num_groups, num_blocks, rel_center,
    a0, a1, a2, a3, a4, a5, a6, a7, scale,
    PATTERN: tl.constexpr, MASK_OOB: tl.constexpr, MASK_MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr, NEED_DQ: tl.constexpr, NEED_DREL: tl.constexpr,
    ATOMIC_DKDV: tl.constexpr,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_REL: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query block: with NEED_DQ, dQ = scale · dS K over the group's key list;
    with NEED_DREL, the bias's per-offset sums of dS (a dot of dS with a one-hot key -> offset
    matrix; each query's offsets are distinct, so the stores never collide); with ATOMIC_DKDV,
    the block's share of dV = Pᵀ dO and dK = scale · dSᵀ Q added into fp32 buffers."""
    blk, g, b, h, bh = _program(tl.program_id(0), num_blocks, num_groups, heads)
    qk_scale = scale * LOG2E
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    qy, qx, q_ok, qa, qb = _queries(PATTERN, g, offs_m, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq,
                                    BLOCK_M)
    q = _load_rows(Q + b * sq_b + h * sq_h, qy, qx, q_ok, offs_dqk, sq_y, sq_x, sq_d,
                   D_QK, BLOCK_DQK, UPCAST_DOT)
    do = _load_rows(DO + b * sdo_b + h * sdo_h, qy, qx, q_ok, offs_dv, sdo_y, sdo_x, sdo_d,
                    D_V, BLOCK_DV, UPCAST_DOT)
    qflat = qy * Wq + qx
    lse = tl.load(LSE + bh * Hq * Wq + qflat, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + bh * Hq * Wq + qflat, mask=q_ok, other=0.0)
    r_row = b * sr_b + h * sr_h + qy * sr_y + qx * sr_x
    m_base = M + b * sm_b + h * sm_h
    idx_base = IDX + b * si_b + g * si_g

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    offs_r = tl.arange(0, BLOCK_REL)
    d_rel_a = tl.zeros([BLOCK_M, BLOCK_REL], dtype=tl.float32)
    d_rel_b = tl.zeros([BLOCK_M, BLOCK_REL], dtype=tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    dk_base = DK + b * sdk_b + h * sdk_h
    dv_base = DV + b * sdv_b + h * sdv_h
    n, c0, c1, c2 = _key_span(PATTERN, g, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W, BLOCK_M)
    for start_n in range(0, n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ky, kx, k_real, k_ok, ka, kb, ok, bias, visit = _key_block(
            PATTERN, MASK_OOB, MASK_MODE, HAS_BIAS, g, offs_n, n, c0, c1, c2, idx_base, si_k,
            q_ok, qa, qb, qflat, m_base, sm_q, sm_k, RH, RW, r_row, sr_r, rel_center,
            a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W)
        if visit:
            k = _load_rows(k_base, ky, kx, k_real, offs_dqk, sk_y, sk_x, sk_d, D_QK, BLOCK_DQK,
                           UPCAST_DOT)
            vT = _load_cols(v_base, ky, kx, k_real, offs_dv, sv_y, sv_x, sv_d, D_V, BLOCK_DV,
                            UPCAST_DOT)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            if HAS_BIAS:
                s += bias * LOG2E
            p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            if NEED_DQ:
                dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            if NEED_DREL:
                oh_a = ((ka[:, None] == offs_r[None, :]) & k_ok[:, None]).to(tl.float32)
                oh_b = ((kb[:, None] == offs_r[None, :]) & k_ok[:, None]).to(tl.float32)
                d_rel_a += tl.dot(ds, oh_a, input_precision="ieee")
                d_rel_b += tl.dot(ds, oh_b, input_precision="ieee")
            if ATOMIC_DKDV:
                dk_mask = _tile_mask(k_real, offs_dqk, D_QK, BLOCK_DQK)
                dv_mask = _tile_mask(k_real, offs_dv, D_V, BLOCK_DV)
                dv_part = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
                dk_part = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
                tl.atomic_add(dk_base + ky[:, None] * sdk_y + kx[:, None] * sdk_x
                              + offs_dqk[None, :] * sdk_d, dk_part * scale, mask=dk_mask)
                tl.atomic_add(dv_base + ky[:, None] * sdv_y + kx[:, None] * sdv_x
                              + offs_dv[None, :] * sdv_d, dv_part, mask=dv_mask)

    if NEED_DQ:
        tl.store(DQ + b * sdq_b + h * sdq_h + qy[:, None] * sdq_y + qx[:, None] * sdq_x
                 + offs_dqk[None, :] * sdq_d, (dq * scale).to(DQ.dtype.element_ty),
                 mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))
    if NEED_DREL:
        dr_row = b * sdr_b + h * sdr_h + qy * sdr_y + qx * sdr_x
        r_ok = q_ok[:, None] & (offs_r[None, :] <= rel_center)
        tl.store(DRH + dr_row[:, None] + (rel_center + offs_r[None, :] - qa[:, None]) * sdr_r,
                 d_rel_a.to(DRH.dtype.element_ty), mask=r_ok)
        tl.store(DRW + dr_row[:, None] + (rel_center + offs_r[None, :] - qb[:, None]) * sdr_r,
                 d_rel_b.to(DRW.dtype.element_ty), mask=r_ok)


@triton.jit
def _owned_keys(PATTERN: tl.constexpr, g, s, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W,
                BLOCK_N: tl.constexpr):
    """Keys ``s`` of owner ``g`` in the dK/dV pass (each key has exactly one owner): grid (y, x),
    on-grid flag (only those get gradients), in-list flag, pattern coordinates (ka, kb).

    WINDOW: the window's slots (as in the forward). HALO: the bs x bs home block g of the key
    grid. NEIGHBORHOOD: a BLOCK_N // a4 x a4 key tile of a sub-grid (a4..a6 describe the key
    tiling in this launch). DENSE: ``s`` is already the flat key index."""
    ka = tl.zeros_like(s)
    kb = tl.zeros_like(s)
    if PATTERN == WINDOW:
        y = (g // a4) * a0 - a2 + s // a1
        x = (g % a4) * a1 - a3 + s % a1
        in_list = s < a0 * a1
        real = in_list & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    elif PATTERN == HALO:
        y = (g // a4) * a0 + s // a0
        x = (g % a4) * a0 + s % a0
        real = s < a0 * a0
        in_list = real
    elif PATTERN == NEIGHBORHOOD:
        ty, tx, gy, gx, Hg, Wg = _dilation_group(g, a2, a3, a5, a6, H, W)
        ka = ty * (BLOCK_N // a4) + s // a4
        kb = tx * a4 + s % a4
        real = (ka < Hg) & (kb < Wg)
        in_list = real
        y = gy + ka * a2
        x = gx + kb * a3
    else:
        y = s // W
        x = s % W
        real = s < H * W
        in_list = real
    return y, x, real, in_list, ka, kb


@triton.jit
def _reader_steps(PATTERN: tl.constexpr, g, blk, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Number of BLOCK_M query steps that can see owner ``g``'s keys."""
    if PATTERN == WINDOW:
        steps = tl.cdiv(a0 * a1, BLOCK_M)
    elif PATTERN == HALO:
        hy = g // a4
        hx = g % a4
        rows = tl.minimum(hy + a6 + 1, a5) - tl.maximum(hy - a6, 0)
        cols = tl.minimum(hx + a6 + 1, a4) - tl.maximum(hx - a6, 0)
        steps = rows * cols * tl.cdiv(a2 * a2, BLOCK_M)
    elif PATTERN == NEIGHBORHOOD:
        qy0, qx0, rows, cols, gy, gx, Hg, Wg = _na_readers(g, a0, a1, a2, a3, a4, a5, a6, H, W,
                                                           BLOCK_N)
        steps = tl.cdiv(rows * cols, BLOCK_M)
    else:
        steps = tl.cdiv(Hq * Wq, BLOCK_M)
    return steps


@triton.jit
def _first_query(j, L, K):
    """Smallest query (sub-grid coordinates) whose clamped window contains key ``j``."""
    return tl.where(j < K, 0, j - K // 2)


@triton.jit
def _last_query(j, L, K):
    """Largest query whose clamped window contains key ``j``."""
    return tl.where(j >= L - K, L - 1, j + K // 2)


@triton.jit
def _na_readers(g, a0, a1, a2, a3, a4, a5, a6, H, W, BLOCK_N: tl.constexpr):
    """NEIGHBORHOOD: the query rectangle (origin, rows, cols on the sub-grid) whose windows can
    reach key tile ``g`` (the analytic inverse of the clamped window start)."""
    ty, tx, gy, gx, Hg, Wg = _dilation_group(g, a2, a3, a5, a6, H, W)
    ky0 = ty * (BLOCK_N // a4)
    kx0 = tx * a4
    qy0 = _first_query(ky0, Hg, a0)
    qx0 = _first_query(kx0, Wg, a1)
    rows = _last_query(tl.minimum(ky0 + BLOCK_N // a4 - 1, Hg - 1), Hg, a0) + 1 - qy0
    cols = _last_query(tl.minimum(kx0 + a4 - 1, Wg - 1), Wg, a1) + 1 - qx0
    return qy0, qx0, rows, cols, gy, gx, Hg, Wg


@triton.jit
def _reader_queries(PATTERN: tl.constexpr, g, step, t, ky, kx, k_in, ka, kb,
                    a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Queries of reader step ``step`` of owner ``g`` (lanes ``t``): grid (y, x), validity,
    pattern coordinates (qa, qb), and the owned keys' pattern coordinates (ka, kb) and
    membership as seen from these queries' key list."""
    qa = tl.zeros_like(t)
    qb = tl.zeros_like(t)
    if PATTERN == WINDOW:
        qy, qx, q_ok, qa, qb = _queries(WINDOW, g, step * BLOCK_M + t, a0, a1, a2, a3, a4, a5,
                                        a6, a7, Hq, Wq, BLOCK_M)
    elif PATTERN == HALO:
        per_block = tl.cdiv(a2 * a2, BLOCK_M)
        hy = g // a4
        hx = g % a4
        by0 = tl.maximum(hy - a6, 0)
        bx0 = tl.maximum(hx - a6, 0)
        cols = tl.minimum(hx + a6 + 1, a4) - bx0
        nb = step // per_block
        by = by0 + nb // cols
        bx = bx0 + nb % cols
        qy, qx, q_ok, qa, qb = _queries(HALO, by * a4 + bx, (step % per_block) * BLOCK_M + t,
                                        a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, BLOCK_M)
        # the owned keys' place in block (by, bx)'s window
        ka = ky - (by * a0 - a1)
        kb = kx - (bx * a0 - a1)
        k_in = k_in & (ka >= 0) & (ka < a3) & (kb >= 0) & (kb < a3)
    elif PATTERN == NEIGHBORHOOD:
        qy0, qx0, rows, cols, gy, gx, Hg, Wg = _na_readers(g, a0, a1, a2, a3, a4, a5, a6, H, W,
                                                           BLOCK_N)
        s = step * BLOCK_M + t
        sy = qy0 + s // cols
        sx = qx0 + s % cols
        q_ok = s < rows * cols
        qa = _neighborhood_start(sy, Hg, a0)
        qb = _neighborhood_start(sx, Wg, a1)
        qy = gy + sy * a2
        qx = gx + sx * a3
    else:
        s = step * BLOCK_M + t
        qy = s // Wq
        qx = s % Wq
        q_ok = s < Hq * Wq
    return qy, qx, q_ok, qa, qb, ka, kb, k_in


@triton.jit
def _bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DQ, DK, DV, M, RH, RW,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    sdk_b, sdk_h, sdk_y, sdk_x, sdk_d,
    sdv_b, sdv_h, sdv_y, sdv_x, sdv_d,
    sm_b, sm_h, sm_q, sm_k, sr_b, sr_h, sr_y, sr_x, sr_r,
    heads, Hq, Wq, H, W, num_groups, num_blocks, rel_center,
    a0, a1, a2, a3, a4, a5, a6, a7, scale,
    PATTERN: tl.constexpr, MASK_OOB: tl.constexpr, MASK_MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr, FUSE_DQ: tl.constexpr,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per block of owned keys: dV = Pᵀ dO and dK = scale · dSᵀ Q over every query
    that sees them. Probabilities are kept transposed (keys x queries) so both sums are plain
    dots. FUSE_DQ (WINDOW / DENSE with the whole key list in this one block): the program sees
    every key of its queries, so it also finishes dQ = scale · dS K and the dQ pass is skipped."""
    blk, g, b, h, bh = _program(tl.program_id(0), num_blocks, num_groups, heads)
    qk_scale = scale * LOG2E
    offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    ky, kx, k_real, k_list, ka0, kb0 = _owned_keys(PATTERN, g, offs_n, a0, a1, a2, a3, a4, a5,
                                                   a6, a7, Hq, Wq, H, W, BLOCK_N)
    k = _load_rows(K + b * sk_b + h * sk_h, ky, kx, k_real, offs_dqk, sk_y, sk_x, sk_d,
                   D_QK, BLOCK_DQK, UPCAST_DOT)
    v = _load_rows(V + b * sv_b + h * sv_h, ky, kx, k_real, offs_dv, sv_y, sv_x, sv_d,
                   D_V, BLOCK_DV, UPCAST_DOT)
    if MASK_OOB:
        k_ok = k_real
    else:
        k_ok = k_list
    kflat = ky * W + kx
    m_base = M + b * sm_b + h * sm_h

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    dq_base = DQ + b * sdq_b + h * sdq_h
    t = tl.arange(0, BLOCK_M)
    steps = _reader_steps(PATTERN, g, blk, a0, a1, a2, a3, a4, a5, a6, a7, Hq, Wq, H, W,
                          BLOCK_M, BLOCK_N)
    for step in range(0, steps):
        qy, qx, q_ok, qa, qb, ka, kb, k_in = _reader_queries(
            PATTERN, g, step, t, ky, kx, k_ok, ka0, kb0, a0, a1, a2, a3, a4, a5, a6, a7,
            Hq, Wq, H, W, BLOCK_M, BLOCK_N)
        qflat = qy * Wq + qx
        r_row = b * sr_b + h * sr_h + qy * sr_y + qx * sr_x
        okT, biasT = _pair_terms(PATTERN, MASK_MODE, HAS_BIAS, True, q_ok, qa, qb, qflat,
                                 k_in, ka, kb, kflat, m_base, sm_q, sm_k, RH, RW, r_row, sr_r,
                                 rel_center, a0, a1)
        if MASK_MODE != 0:
            visit = tl.max(okT.to(tl.int32)) > 0
        else:
            visit = True
        if visit:
            qT = _load_cols(q_base, qy, qx, q_ok, offs_dqk, sq_y, sq_x, sq_d, D_QK, BLOCK_DQK,
                            UPCAST_DOT)
            do = _load_rows(do_base, qy, qx, q_ok, offs_dv, sdo_y, sdo_x, sdo_d, D_V, BLOCK_DV,
                            UPCAST_DOT)
            lse = tl.load(LSE + bh * Hq * Wq + qflat, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + bh * Hq * Wq + qflat, mask=q_ok, other=0.0)
            sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale
            if HAS_BIAS:
                sT += biasT * LOG2E
            pT = tl.where(okT, tl.math.exp2(sT - lse[None, :]), 0.0)
            dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=DOT_PRECISION)
            if FUSE_DQ:
                dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=DOT_PRECISION) * scale
                tl.store(dq_base + qy[:, None] * sdq_y + qx[:, None] * sdq_x
                         + offs_dqk[None, :] * sdq_d, dq.to(DQ.dtype.element_ty),
                         mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))

    # Gradients of out-of-grid (padding) keys belong to constants: not stored.
    tl.store(DK + b * sdk_b + h * sdk_h + ky[:, None] * sdk_y + kx[:, None] * sdk_x
             + offs_dqk[None, :] * sdk_d, (dk * scale).to(DK.dtype.element_ty),
             mask=_tile_mask(k_real, offs_dqk, D_QK, BLOCK_DQK))
    tl.store(DV + b * sdv_b + h * sdv_h + ky[:, None] * sdv_y + kx[:, None] * sdv_x
             + offs_dv[None, :] * sdv_d, dv.to(DV.dtype.element_ty),
             mask=_tile_mask(k_real, offs_dv, D_V, BLOCK_DV))


# The kernels were decorated under the interpreter iff this is an InterpretedFunction; that, not
# the environment at call time, decides how they run.
INTERPRETED = isinstance(_fwd, InterpretedFunction)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------

def dot_precision(dtype):
    """fp32 dots honour torch's TF32 switch like cuBLAS matmuls do; the interpreter is IEEE."""
    if dtype == torch.float32 and not INTERPRETED and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def fit(n):
    """Smallest power-of-two tile (at least MIN_BLOCK) holding ``n`` tokens."""
    return max(MIN_BLOCK, triton.next_power_of_2(max(int(n), 1)))


def cap(block):
    return block if _BLOCK_CAP is None else max(MIN_BLOCK, min(block, _BLOCK_CAP))


class Launch:
    """One kernel launch's tiling: groups x blocks programs per (batch, head)."""

    def __init__(self, groups, blocks, block_m, block_n, num_warps=4, num_stages=2, args=None):
        self.groups, self.blocks = int(groups), int(blocks)
        self.block_m, self.block_n = int(block_m), int(block_n)
        self.num_warps, self.num_stages = (1, 1) if INTERPRETED else (num_warps, num_stages)
        self.args = args  # pattern ints of this launch (default: the pattern's)


class Pattern:
    """What one op call asks of the kernel family: the pattern, its ints, the query and key
    grids, the extras (index tensor, mask, relative-position tables) and the tiling of the
    forward / dQ launch (``fwd``, ``dq``) and of the dK/dV launch (``dkdv``; None for ROUTED,
    whose dK/dV come from the dQ launch by atomics)."""

    def __init__(self, kind, args, q_grid, k_grid, scale, fwd, dq, dkdv, *, mask_oob=False,
                 index=None, mask=None, mask_mode=0, fuse_dq=False):
        self.kind, self.scale = getattr(kind, "value", kind), float(scale)
        self.args = tuple(int(a) for a in args) + (0,) * (8 - len(args))
        self.Hq, self.Wq = q_grid
        self.H, self.W = k_grid
        self.fwd, self.dq, self.dkdv = fwd, dq, dkdv
        self.mask_oob = bool(mask_oob)
        self.index, self.mask, self.mask_mode = index, mask, mask_mode
        self.fuse_dq = fuse_dq

    def extras(self, q):
        """Pointer args and strides for the index tensor and the mask (q stands in when absent:
        never read)."""
        if self.index is not None:
            idx, si = self.index, self.index.stride()
        else:
            idx, si = q, (0, 0, 0)
        if self.mask is not None:
            m = self.mask
            # broadcast batch / head dims are read with stride 0
            sm = tuple(0 if m.shape[i] == 1 else m.stride(i) for i in range(2)) + m.stride()[2:]
        else:
            m, sm = q, (0, 0, 0, 0)
        return idx, si, m, sm


def _bias_args(q, rel):
    if rel is None:
        return q, q, (0,) * 5, 0, False  # never read (HAS_BIAS=False)
    rh, rw, center = rel
    if rh.stride() != rw.stride():  # one stride set serves both tables
        rh, rw = rh.contiguous(), rw.contiguous()
    return rh, rw, rh.stride(), center, True


def _constexprs(q, v, launch, pattern):
    d_qk, d_v = q.shape[-1], v.shape[-1]
    return dict(
        PATTERN=pattern.kind, MASK_OOB=pattern.mask_oob, MASK_MODE=pattern.mask_mode,
        D_QK=d_qk, D_V=d_v, BLOCK_DQK=fit(d_qk), BLOCK_DV=fit(d_v),
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n,
        UPCAST_DOT=INTERPRETED and q.dtype == torch.bfloat16,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=launch.num_warps, num_stages=launch.num_stages)


def _grid_strides(t):
    """(b, h, y, x, d) strides of a 5-D tensor, or of a 4-D (B, heads, L, d) one seen as a
    1 x L grid."""
    if t.dim() == 4:
        sb, sh, sl, sd = t.stride()
        return sb, sh, 0, sl, sd
    return t.stride()


def forward_outputs(q, v, store_lse):
    """Empty output and log-sum-exp of a forward (also the custom ops' fake results): the output
    logically ``(B, heads, *q_grid, d_v)``, stored token-major; the base-2 log-sum-exp
    ``(B * heads, queries)`` float32, a 1-element placeholder without ``store_lse``."""
    B, heads = q.shape[:2]
    q_dims = q.shape[2:-1]
    # Logical (B, heads, ..., d_v) stored as (B, ..., heads, d_v): the model's next step
    # ``.permute(...).reshape(B, N, heads * d_v)`` is then a free view.
    perm = (0, q.dim() - 2) + tuple(range(1, q.dim() - 2)) + (q.dim() - 1,)
    out = q.new_empty(B, *q_dims, heads, v.shape[-1]).permute(*perm)
    lse = q.new_empty((B * heads, q_dims.numel()) if store_lse else (1,), dtype=torch.float32)
    return out, lse


def fake_forward(q, k, v, *args):
    """The fake of an op's forward custom op ``(q, k, v, ..., for_backward)``."""
    return forward_outputs(q, v, store_lse=args[-1])


def attention_forward(q, k, v, pattern, store_lse, rel=None):
    """:func:`forward_outputs`, computed."""
    B, heads = q.shape[:2]
    out, lse = forward_outputs(q, v, store_lse)
    nq = pattern.Hq * pattern.Wq
    launch = pattern.fwd
    programs = B * heads * launch.groups * launch.blocks
    if programs == 0 or pattern.H * pattern.W == 0:
        if nq and B * heads:
            out.zero_()
            lse.fill_(float("inf"))
        return out, lse
    idx, si, m, sm = pattern.extras(q)
    rh, rw, sr, center, has_bias = _bias_args(q, rel)
    _fwd[(programs,)](
        q, k, v, out, lse, idx, m, rh, rw,
        *_grid_strides(q), *_grid_strides(k), *_grid_strides(v), *_grid_strides(out),
        *si, *sm, *sr,
        heads, pattern.Hq, pattern.Wq, pattern.H, pattern.W, launch.groups, launch.blocks,
        center, *(launch.args or pattern.args), float(pattern.scale),
        HAS_BIAS=has_bias, STORE_LSE=store_lse, **_constexprs(q, v, launch, pattern))
    return out, lse


def attention_backward(dout, q, k, v, out, lse, pattern, rel=None, *, need_dq=True,
                       need_dkdv=True, need_drel=True):
    """``(dq, dk, dv, d_rel_h, d_rel_w)``, each None unless asked for (``need_*``; the
    relative-logit gradients also need ``rel``): gradients in the inputs' logical, contiguous
    layout (autograd's backward of the qkv views allocates contiguous logical-shape buffers, so
    this keeps its copies plain), relative-logit gradients shaped like the logits."""
    B, heads = q.shape[:2]
    atomic = pattern.dkdv is None
    rh, rw, sr, center, has_bias = _bias_args(q, rel)
    need_drel = need_drel and has_bias
    dq = torch.empty_like(q, memory_format=torch.contiguous_format) if need_dq else None
    dk = dv = d_rh = d_rw = None
    if need_dkdv and atomic:  # fp32 buffers for the atomics, cast to the input dtype afterwards
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    elif need_dkdv:
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if need_drel:
        d_rh = torch.zeros(rh.shape, dtype=q.dtype, device=q.device)
        d_rw = torch.zeros_like(d_rh)
    nq, nk = pattern.Hq * pattern.Wq, pattern.H * pattern.W
    if B * heads * nq == 0 or nk == 0:
        grads = (dq, dk, dv, d_rh, d_rw)
        return tuple(None if g is None else g.zero_().to(t.dtype)
                     for g, t in zip(grads, (q, k, v, rh, rw)))

    delta = torch.empty(B * heads, nq, dtype=torch.float32, device=q.device)
    delta_block = min(256 if INTERPRETED else 128, triton.next_power_of_2(nq))
    delta_blocks = triton.cdiv(nq, delta_block)
    _bwd_delta[(B * heads * delta_blocks,)](
        out, dout, delta, *_grid_strides(out), *_grid_strides(dout), heads, pattern.Hq,
        pattern.Wq, delta_blocks, v.shape[-1], BLOCK=delta_block, BLOCK_DV=fit(v.shape[-1]),
        num_warps=4)

    # Gradients not asked for are never written: their inputs stand in as pointers.
    dq_, dk_, dv_ = (t if g is None else g for g, t in ((dq, q), (dk, k), (dv, v)))
    d_rh_, d_rw_ = (d_rh, d_rw) if need_drel else (q, q)
    idx, si, m, sm = pattern.extras(q)
    common = (*_grid_strides(q), *_grid_strides(k), *_grid_strides(v), *_grid_strides(dout),
              *_grid_strides(dq_), *_grid_strides(dk_), *_grid_strides(dv_))
    grid_args = (heads, pattern.Hq, pattern.Wq, pattern.H, pattern.W)
    # fuse_dq: the op promises every group's key list fits its one dK/dV block
    fuse_dq = need_dq and not atomic and pattern.fuse_dq
    if fuse_dq and pattern.mask is not None:
        dq.zero_()  # query steps with no kept pair are skipped, and their dQ is 0
    if not atomic and (need_dkdv or fuse_dq):
        launch = pattern.dkdv
        _bwd_dkdv[(B * heads * launch.groups * launch.blocks,)](
            q, k, v, dout, lse, delta, dq_, dk_, dv_, m, rh, rw, *common, *sm, *sr,
            *grid_args, launch.groups, launch.blocks, center,
            *(launch.args or pattern.args), float(pattern.scale),
            HAS_BIAS=has_bias, FUSE_DQ=fuse_dq, **_constexprs(q, v, launch, pattern))
    if (need_dq and not fuse_dq) or need_drel or (atomic and need_dkdv):
        launch = pattern.dq
        block_rel = fit(center + 1) if has_bias else MIN_BLOCK
        _bwd_dq[(B * heads * launch.groups * launch.blocks,)](
            q, k, v, dout, lse, delta, dq_, dk_, dv_, idx, m, rh, rw, d_rh_, d_rw_,
            *common, *si, *sm, *sr, *(d_rh.stride() if need_drel else (0,) * 5),
            *grid_args, launch.groups, launch.blocks, center,
            *(launch.args or pattern.args), float(pattern.scale),
            HAS_BIAS=has_bias, NEED_DQ=need_dq and not fuse_dq, NEED_DREL=need_drel,
            ATOMIC_DKDV=atomic and need_dkdv, BLOCK_REL=block_rel,
            **_constexprs(q, v, launch, pattern))
    if need_dkdv and atomic:
        dk, dv = dk.to(k.dtype), dv.to(v.dtype)
    return dq, dk, dv, d_rh, d_rw
