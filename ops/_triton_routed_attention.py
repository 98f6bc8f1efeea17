"""Fused Triton path of :func:`ops.routed_attention_2d` (forward and backward).

FlashAttention-2 with an *indexed* key list (``ops.md`` section 5.2, INDEXED kv-tile mode). A
program owns ``BLOCK_M`` query tokens of one region of one (batch, head). Its keys are the virtual
concatenation of the ``topk`` listed regions' tokens, ``topk * T`` of them (``T = rh * rw``): key
``j`` is token ``j % T`` of region ``region_index[b, r, j // T]``. The program streams that list in
``BLOCK_N``-key blocks, each lane computing its own region and grid position from the index (an
index-driven load through the inputs' strides: no gathered copy of K/V ever exists), with an online
softmax in fp32.

Because key blocks run over the flat list, one block spans several listed regions whenever
``T < BLOCK_N`` (BiFormer stage 3 has 2x2 regions: a 64-key block holds 16 of them), so the key
side wastes no lanes. The query side does: a region's queries fill one ``max(16, T)``-lane tile, so
2x2 regions use 4 of 16 query lanes (packing several query regions per program would need a
block-diagonal key mask; not done, correctness first).

Backward (FA2): one query-side kernel per query block recomputes ``P`` from the stored log-sum-exp,
computes ``delta = rowsum(dO * O)`` for its own rows, accumulates ``dQ`` over the key list and
scatters ``dK = scale * dSᵀ Q`` and ``dV = Pᵀ dO`` with fp32 ``tl.atomic_add`` into fp32 buffers
(then cast to the input dtype). A key region is listed by many query regions (and may be listed
twice by one), so its gradient has many writers: atomics are the simplest correct reduction. On a
GPU the order of the fp32 additions varies between runs, so dK/dV are **not bitwise
deterministic** (``torch.use_deterministic_algorithms(True)`` makes the CUDA backward raise; use
``backend='reference'`` there). Under the interpreter programs run sequentially and are
deterministic.

Softmax in base 2 (``exp2``, scale folded into ``scale * log2(e)``); the forward stores the base-2
log-sum-exp. Layouts: the output is stored token-major ``(B, H, W, heads, d_v)`` and returned as its
``(B, heads, H, W, d_v)`` view; gradients are fresh contiguous tensors of the inputs' logical shape.
"""
import warnings
from typing import Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ._checks import check_triton_supported

__all__ = ["routed_attention_triton"]

# Under the interpreter every tl op costs fixed Python overhead: fewer, larger tiles are faster.
_INTERPRETER_BLOCK = 128
_MIN_BLOCK = 16  # tl.dot needs M, N, K >= 16 on GPU
_BLOCK_CAP = None  # tests lower this to force several query and key blocks


@triton.jit
def _program_coords(pid, num_m_blocks, num_regions, heads):
    """Flat program id -> (query block, region, batch, head, batch*head). Blocks of one region
    are consecutive, then regions, then (batch, head)."""
    blk = pid % num_m_blocks
    reg = (pid // num_m_blocks) % num_regions
    bh = (pid // (num_m_blocks * num_regions)).to(tl.int64)
    return blk, reg, bh // heads, bh % heads, bh


@triton.jit
def _region_tokens(reg, t, num_regions_x, rh, rw):
    """Grid (y, x) of token ``t`` (row-major) of region ``reg`` (row-major over regions)."""
    y = (reg // num_regions_x) * rh + t // rw
    x = (reg % num_regions_x) * rw + t % rw
    return y, x


@triton.jit
def _key_tokens(idx_base, s_idx_k, offs_n, L, T, num_regions_x, rh, rw):
    """Grid (y, x) of keys ``offs_n`` of the flat routed key list and whether they exist: key
    ``j`` is token ``j % T`` of listed region ``j // T``."""
    k_ok = offs_n < L
    slot = offs_n // T
    reg = tl.load(idx_base + slot * s_idx_k, mask=k_ok, other=0)
    y, x = _region_tokens(reg, offs_n - slot * T, num_regions_x, rh, rw)
    return y, x, k_ok


@triton.jit
def _tile_mask(tokens_ok, offs_d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a (tokens, dims) tile (no per-dim term when the head dim fills the block)."""
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
def _routed_attn_fwd(
    Q, K, V, IDX, O, LSE,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    so_b, so_h, so_y, so_x, so_d,
    si_b, si_r, si_k,
    heads, H, W, rh, rw, num_regions_x, num_regions, topk, num_m_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    STORE_LSE: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    m_blk, reg, b, h, bh = _program_coords(tl.program_id(0), num_m_blocks, num_regions, heads)
    T = rh * rw
    L = topk * T
    qk_scale = scale * 1.4426950408889634

    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ok = offs_m < T
    qy, qx = _region_tokens(reg, offs_m, num_regions_x, rh, rw)
    q = tl.load(Q + b * sq_b + h * sq_h + qy[:, None] * sq_y + qx[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    idx_base = IDX + b * si_b + reg * si_r
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ky, kx, k_ok = _key_tokens(idx_base, si_k, offs_n, L, T, num_regions_x, rh, rw)
        kT = tl.load(k_base + offs_dqk[:, None] * sk_d + ky[None, :] * sk_y + kx[None, :] * sk_x,
                     mask=_tile_mask_t(k_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
        v = tl.load(v_base + ky[:, None] * sv_y + kx[:, None] * sv_x + offs_dv[None, :] * sv_d,
                    mask=_tile_mask(k_ok, offs_dv, D_V, BLOCK_DV), other=0.0)
        if UPCAST_DOT:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # Every query has topk * T >= 1 keys, so l_i > 0 on real rows; the guard keeps padding rows
    # finite.
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + qy[:, None] * so_y + qx[:, None] * so_x
             + offs_dv[None, :] * so_d, out.to(O.dtype.element_ty),
             mask=_tile_mask(q_ok, offs_dv, D_V, BLOCK_DV))
    if STORE_LSE:
        tl.store(LSE + bh * H * W + qy * W + qx, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def _routed_attn_bwd(
    Q, K, V, IDX, O, DO, LSE, DQ, DK, DV,
    sq_b, sq_h, sq_y, sq_x, sq_d,
    sk_b, sk_h, sk_y, sk_x, sk_d,
    sv_b, sv_h, sv_y, sv_x, sv_d,
    so_b, so_h, so_y, so_x, so_d,
    sdo_b, sdo_h, sdo_y, sdo_x, sdo_d,
    sdq_b, sdq_h, sdq_y, sdq_x, sdq_d,
    sdk_b, sdk_h, sdk_y, sdk_x, sdk_d,
    sdv_b, sdv_h, sdv_y, sdv_x, sdv_d,
    si_b, si_r, si_k,
    heads, H, W, rh, rw, num_regions_x, num_regions, topk, num_m_blocks,
    scale, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    NEED_DQ: tl.constexpr, NEED_DKDV: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per query block: delta, dQ over the routed key list, and the block's
    contribution to dK/dV of every listed key by fp32 atomics."""
    m_blk, reg, b, h, bh = _program_coords(tl.program_id(0), num_m_blocks, num_regions, heads)
    T = rh * rw
    L = topk * T
    qk_scale = scale * 1.4426950408889634

    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ok = offs_m < T
    qy, qx = _region_tokens(reg, offs_m, num_regions_x, rh, rw)
    q = tl.load(Q + b * sq_b + h * sq_h + qy[:, None] * sq_y + qx[:, None] * sq_x
                + offs_dqk[None, :] * sq_d,
                mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK), other=0.0)
    dv_mask = _tile_mask(q_ok, offs_dv, D_V, BLOCK_DV)
    do = tl.load(DO + b * sdo_b + h * sdo_h + qy[:, None] * sdo_y + qx[:, None] * sdo_x
                 + offs_dv[None, :] * sdo_d, mask=dv_mask, other=0.0)
    o = tl.load(O + b * so_b + h * so_h + qy[:, None] * so_y + qx[:, None] * so_x
                + offs_dv[None, :] * so_d, mask=dv_mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    lse = tl.load(LSE + bh * H * W + qy * W + qx, mask=q_ok, other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    idx_base = IDX + b * si_b + reg * si_r
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    dk_base = DK + b * sdk_b + h * sdk_h
    dv_base = DV + b * sdv_b + h * sdv_h
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ky, kx, k_ok = _key_tokens(idx_base, si_k, offs_n, L, T, num_regions_x, rh, rw)
        dk_mask = _tile_mask(k_ok, offs_dqk, D_QK, BLOCK_DQK)
        kv_mask = _tile_mask(k_ok, offs_dv, D_V, BLOCK_DV)
        k = tl.load(k_base + ky[:, None] * sk_y + kx[:, None] * sk_x + offs_dqk[None, :] * sk_d,
                    mask=dk_mask, other=0.0)
        v = tl.load(v_base + ky[:, None] * sv_y + kx[:, None] * sv_x + offs_dv[None, :] * sv_d,
                    mask=kv_mask, other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        # Padding lanes load zeros, which already zeroes their contributions (q = dO = 0 rows,
        # k = v = 0 columns); the mask keeps P itself exact.
        p = tl.where(q_ok[:, None] & k_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        if NEED_DQ:
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        if NEED_DKDV:
            dv_part = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            dk_part = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
            tl.atomic_add(dk_base + ky[:, None] * sdk_y + kx[:, None] * sdk_x
                          + offs_dqk[None, :] * sdk_d, dk_part, mask=dk_mask)
            tl.atomic_add(dv_base + ky[:, None] * sdv_y + kx[:, None] * sdv_x
                          + offs_dv[None, :] * sdv_d, dv_part, mask=kv_mask)

    if NEED_DQ:
        tl.store(DQ + b * sdq_b + h * sdq_h + qy[:, None] * sdq_y + qx[:, None] * sdq_x
                 + offs_dqk[None, :] * sdq_d, (dq * scale).to(DQ.dtype.element_ty),
                 mask=_tile_mask(q_ok, offs_dqk, D_QK, BLOCK_DQK))


# Decorated under the interpreter iff this is an InterpretedFunction; that, not the environment
# at call time, decides how the kernels run.
_INTERPRETED = isinstance(_routed_attn_fwd, InterpretedFunction)


def _dot_precision(dtype):
    # fp32 dots honour torch's TF32 switch like cuBLAS matmuls do; the interpreter is always IEEE.
    if dtype == torch.float32 and not _INTERPRETED and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


class _Problem:
    """Shapes, region grid and launch parameters shared by the forward and backward launches."""

    def __init__(self, q, v, region_index, region_size, scale):
        self.B, self.heads, self.H, self.W, self.d_qk = q.shape
        self.d_v = v.shape[-1]
        self.rh, self.rw = region_size
        self.num_regions_x = self.W // self.rw
        self.num_regions = (self.H // self.rh) * self.num_regions_x
        self.topk = region_index.shape[-1]
        self.scale = scale
        self.region_tokens = self.rh * self.rw
        self.block_dqk = triton.next_power_of_2(max(self.d_qk, _MIN_BLOCK))
        self.block_dv = triton.next_power_of_2(max(self.d_v, _MIN_BLOCK))
        self.empty = self.B * self.heads * self.H * self.W == 0
        self.fwd = self._config(backward=False)
        self.bwd = self._config(backward=True)

    def _config(self, backward):
        """(BLOCK_M, BLOCK_N, num_warps, num_stages). Query tiles never exceed the region's
        next power of two; key tiles run over the flat routed list of topk * T keys. The GPU
        choices are untuned starting points (no GPU sweep yet)."""
        fit_m = max(_MIN_BLOCK, triton.next_power_of_2(self.region_tokens))
        fit_n = max(_MIN_BLOCK, triton.next_power_of_2(self.topk * self.region_tokens))
        wide = max(self.block_dqk, self.block_dv) > 128
        if _INTERPRETED:
            config = (min(_INTERPRETER_BLOCK, fit_m), min(_INTERPRETER_BLOCK, fit_n), 1, 1)
        elif wide:
            config = (min(32, fit_m), min(32, fit_n), 8, 2)
        elif backward:
            config = (min(64, fit_m), min(32, fit_n), 4, 1)
        else:
            config = (min(64, fit_m), min(64, fit_n), 4, 2)
        if _BLOCK_CAP is not None:
            config = (min(config[0], _BLOCK_CAP), min(config[1], _BLOCK_CAP)) + config[2:]
        return config

    def args(self, num_m_blocks):
        return (self.heads, self.H, self.W, self.rh, self.rw, self.num_regions_x,
                self.num_regions, self.topk, num_m_blocks, self.scale)

    def num_m_blocks(self, config):
        return triton.cdiv(self.region_tokens, config[0])

    def grid(self, config):
        return (self.B * self.heads * self.num_regions * self.num_m_blocks(config),)

    def constexprs(self, dtype, config):
        block_m, block_n, num_warps, num_stages = config
        return dict(
            D_QK=self.d_qk, D_V=self.d_v, BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_DQK=self.block_dqk, BLOCK_DV=self.block_dv,
            UPCAST_DOT=_INTERPRETED and dtype == torch.bfloat16,
            DOT_PRECISION=_dot_precision(dtype),
            num_warps=num_warps, num_stages=num_stages)


def _forward(q, k, v, region_index, pb, store_lse):
    out = torch.empty(pb.B, pb.H, pb.W, pb.heads, pb.d_v, dtype=q.dtype,
                      device=q.device).permute(0, 3, 1, 2, 4)
    lse = torch.empty(pb.B * pb.heads, pb.H, pb.W, dtype=torch.float32, device=q.device) \
        if store_lse else torch.empty(1, dtype=torch.float32, device=q.device)
    if pb.empty:
        return out, lse
    _routed_attn_fwd[pb.grid(pb.fwd)](
        q, k, v, region_index, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *region_index.stride(),
        *pb.args(pb.num_m_blocks(pb.fwd)),
        STORE_LSE=store_lse, **pb.constexprs(q.dtype, pb.fwd))
    return out, lse


def _alert_not_deterministic():
    """PyTorch's convention for nondeterministic CUDA kernels (as ``index_add_`` does): an
    error under ``torch.use_deterministic_algorithms(True)``, a warning with ``warn_only``."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = ("routed_attention_2d's triton backward accumulates dK/dV with fp32 atomics and is not "
           "deterministic; use backend='reference' under torch.use_deterministic_algorithms(True)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg)
    else:
        raise RuntimeError(msg)


def _backward(q, k, v, region_index, out, lse, dout, pb, need_dq=True, need_dkdv=True):
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    # fp32 accumulation buffers for the atomics, cast to the input dtype afterwards.
    dk32 = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv32 = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    if pb.empty:
        dq.zero_()
    elif need_dq or need_dkdv:
        if need_dkdv and q.is_cuda:
            _alert_not_deterministic()
        _routed_attn_bwd[pb.grid(pb.bwd)](
            q, k, v, region_index, out, dout, lse, dq, dk32, dv32,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(),
            *dq.stride(), *dk32.stride(), *dv32.stride(), *region_index.stride(),
            *pb.args(pb.num_m_blocks(pb.bwd)),
            NEED_DQ=need_dq, NEED_DKDV=need_dkdv, **pb.constexprs(q.dtype, pb.bwd))
    return dq, dk32.to(k.dtype), dv32.to(v.dtype)


# Custom ops (forward, backward) tied by register_autograd, as for the window op: torch.compile /
# export see one opaque node each, eager autograd works, fvcore sees the forward by name.

@torch.library.custom_op("backbones::routed_attention_fwd", mutates_args=())
def _routed_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             region_index: torch.Tensor, region_h: int, region_w: int,
                             scale: float, store_lse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    pb = _Problem(q, v, region_index, (region_h, region_w), scale)
    return _forward(q, k, v, region_index, pb, store_lse)


@_routed_attention_fwd_op.register_fake
def _(q, k, v, region_index, region_h, region_w, scale, store_lse):
    B, heads, H, W, _ = q.shape
    out = q.new_empty(B, H, W, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
    lse = q.new_empty((B * heads, H, W) if store_lse else (1,), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("backbones::routed_attention_bwd", mutates_args=())
def _routed_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, region_index: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, region_h: int, region_w: int, scale: float,
                             need_dq: bool, need_dkdv: bool
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pb = _Problem(q, v, region_index, (region_h, region_w), scale)
    return _backward(q, k, v, region_index, out, lse, dout, pb, need_dq=need_dq,
                     need_dkdv=need_dkdv)


@_routed_attention_bwd_op.register_fake
def _(dout, q, k, v, region_index, out, lse, region_h, region_w, scale, need_dq, need_dkdv):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, region_index, *args, store_lse = inputs
    if not store_lse:  # forward without grad: nothing to save
        return
    ctx.save_for_backward(q, k, v, region_index, *output)
    ctx.args = args  # region_h, region_w, scale


def _backward_rule(ctx, dout, dlse):
    q, k, v, region_index, out, lse = ctx.saved_tensors
    need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
    dq, dk, dv = _routed_attention_bwd_op(dout, q, k, v, region_index, out, lse, *ctx.args,
                                          need_dq, need_dk or need_dv)
    return (dq if need_dq else None, dk if need_dk else None, dv if need_dv else None,
            None, None, None, None, None)


_routed_attention_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


def routed_attention_triton(q, k, v, region_index, region_size, scale):
    """Triton implementation of ``routed_attention_reference``; arguments already validated by
    :func:`ops.routed_attention_2d` (``region_index`` int64 in range, ``region_size`` ints)."""
    check_triton_supported("routed_attention_2d", q, v)
    store_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out, _ = _routed_attention_fwd_op(q, k, v, region_index, *region_size, float(scale),
                                      store_lse)
    return out
