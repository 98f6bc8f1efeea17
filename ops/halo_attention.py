"""HaloNet's blocked local self-attention with haloing (timm's ``HaloAttn``, minus projections).

The key/value grid ``(H, W)`` is cut into non-overlapping ``block_size x block_size`` blocks,
numbered row-major. Block ``(by, bx)`` owns the queries of a ``bq x bq`` block of the query grid,
``bq = block_size // stride``: the query grid is the key grid sub-sampled by ``stride`` (timm's
strided ``q`` projection, a stride-2 1x1 conv reading pixels ``(2i, 2j)``). Its keys are the
``win x win`` window (``win = block_size + 2 * halo_size``) whose top-left corner is
``(by * block_size - halo, bx * block_size - halo)`` on the key grid; tokens are row-major inside
blocks and windows.

Exactly timm's semantics (``timm/layers/halo_attn.py``), which the trained weights depend on:

* **Padded keys take part in the softmax.** Window positions outside the grid are zero keys and
  zero values (timm zero-pads kv *after* the projection and does not mask), so they enter the
  softmax with logit ``0 * scale + rel-pos bias`` and dilute the output near the borders.
* **Relative position logits** (``rel_pos=(height_rel, width_rel)``, each ``(2 * win - 1, d_qk)``
  and shared by all heads, timm's ``PosEmbedRel``): query ``(i, j)`` (its position inside its
  possibly strided ``bq x bq`` block) and window key ``(ki, kj)`` get
  ``q . height_rel[win - 1 + ki - i] + q . width_rel[win - 1 + kj - j]``, padded keys included.
  For strided queries ``i`` is the index in the down-sampled block (timm's choice).
* Logits are ``scale * (q . k) + rel`` or, with ``scale_pos_embed=True``,
  ``scale * (q . k + rel)``.

Layout: ``q`` is ``(B, heads, H / stride, W / stride, d_qk)``, ``k`` is ``(B, heads, H, W, d_qk)``
and ``v`` is ``(B, heads, H, W, d_v)``, any strides (views of the projections). timm's ``kv``
projection interleaves channels per head, ``[k_h0, v_h0, k_h1, v_h1, ...]``: view it as
``kv.view(B, heads, d_qk + d_v, H, W).permute(0, 1, 3, 4, 2)`` and slice the last axis. The output
is ``(B, heads, H / stride, W / stride, d_v)``.

What the op does not do (the caller's job): the projections, timm's avg-pool fallback (stride 2
with an odd block size or ``avg_down``: call with ``stride=1`` and ``F.avg_pool2d(out, 2)``), and
padding inputs whose size is not a multiple of ``block_size`` (padding ``x`` with zeros before a
bias-free kv projection equals padding k/v with zeros, so the caller may pad and crop).
"""
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._fx import fx_leaf
from ._backend import select_backend
from ._checks import check_qkv

__all__ = ["halo_attention_2d", "halo_attention_reference", "halo_attention_macs",
           "halo_rel_logits"]


def _check_inputs(q, k, v, block_size, halo_size, stride, rel_pos):
    check_qkv(q, k, v, rank=5, same_tokens=False)
    for name, val in (("block_size", block_size), ("halo_size", halo_size), ("stride", stride)):
        if isinstance(val, bool) or int(val) != val:
            raise ValueError(f"{name} must be an int, got {val!r}")
    block_size, halo_size, stride = int(block_size), int(halo_size), int(stride)
    if block_size < 1 or halo_size < 0 or stride < 1:
        raise ValueError(f"need block_size >= 1, halo_size >= 0, stride >= 1, got "
                         f"{block_size}, {halo_size}, {stride}")
    if block_size % stride:
        raise ValueError(
            f"block_size {block_size} is not a multiple of stride {stride}: timm falls back to "
            "full-resolution attention and a 2x2 average pool there; call with stride=1 and pool")
    B, heads, H, W, d_qk = k.shape
    if v.shape[:4] != k.shape[:4]:
        raise ValueError(f"v must match k in (B, heads, H, W), got {tuple(v.shape)} vs {tuple(k.shape)}")
    if H % block_size or W % block_size:
        raise ValueError(
            f"the key/value grid {H}x{W} must be a multiple of block_size {block_size} (timm "
            "asserts the same); zero-pad the layer input to a multiple and crop the output")
    if q.shape != (B, heads, H // stride, W // stride, d_qk):
        raise ValueError(
            f"q must be (B, heads, H / stride, W / stride, d_qk) = "
            f"{(B, heads, H // stride, W // stride, d_qk)} for k of shape {tuple(k.shape)} and "
            f"stride {stride}, got {tuple(q.shape)}")
    if rel_pos is not None:
        if not isinstance(rel_pos, (tuple, list)) or len(rel_pos) != 2:
            raise ValueError("rel_pos must be None or a pair (height_rel, width_rel)")
        win = block_size + 2 * halo_size
        for name, t in zip(("height_rel", "width_rel"), rel_pos):
            if not isinstance(t, torch.Tensor) or t.shape != (2 * win - 1, d_qk):
                raise ValueError(
                    f"{name} must be a (2 * win - 1, d_qk) = {(2 * win - 1, d_qk)} tensor, got "
                    f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}")
            if t.dtype != q.dtype or t.device != q.device:
                raise TypeError(f"{name} must be {q.dtype} on {q.device}, got {t.dtype} on {t.device}")
    return block_size, halo_size, stride


def halo_rel_logits(q, rel_pos, scale=1.0):
    """``scale * q @ table.T`` for both tables: ``(B, heads, Hq, Wq, 2 * win - 1)`` each, indexed
    by relative offset. The per-key gather (offset ``win - 1 + ki - i``) happens later."""
    rel_h, rel_w = rel_pos
    rh, rw = q @ rel_h.transpose(0, 1), q @ rel_w.transpose(0, 1)
    if scale != 1.0:
        rh, rw = rh * scale, rw * scale
    return rh, rw


def to_blocks(x, block):
    """``(B, h, nby * block, nbx * block, c)`` -> ``(B, h, nby * nbx, block * block, c)``."""
    B, h, H, W, c = x.shape
    x = x.reshape(B, h, H // block, block, W // block, block, c).transpose(3, 4)
    return x.reshape(B, h, (H // block) * (W // block), block * block, c)


def from_blocks(x, grid, block):
    B, h, _, _, c = x.shape
    H, W = grid
    x = x.reshape(B, h, H // block, W // block, block, block, c).transpose(3, 4)
    return x.reshape(B, h, H, W, c)


def to_halo_windows(x, block_size, halo_size):
    """``(B, h, H, W, c)`` -> zero-padded overlapping windows ``(B, h, nblocks, win * win, c)``."""
    B, h, H, W, c = x.shape
    win = block_size + 2 * halo_size
    x = F.pad(x, (0, 0, halo_size, halo_size, halo_size, halo_size))
    x = x.unfold(2, win, block_size).unfold(3, win, block_size)  # (B, h, nby, nbx, c, win, win)
    x = x.permute(0, 1, 2, 3, 5, 6, 4)
    return x.reshape(B, h, (H // block_size) * (W // block_size), win * win, c)


def halo_attention_reference(q, k, v, block_size, halo_size, stride, rel_pos, scale,
                             scale_pos_embed):
    """The definition: unfold zero-padded K/V into per-block windows, gather the relative
    logits per (query, key) pair, softmax over the whole window (padding included)."""
    B, heads, Hq, Wq, _ = q.shape
    bq, win = block_size // stride, block_size + 2 * halo_size
    qb = to_blocks(q, bq).flatten(0, 1)                                   # (Bh, nb, bq², dqk)
    kw = to_halo_windows(k, block_size, halo_size).flatten(0, 1)          # (Bh, nb, win², dqk)
    vw = to_halo_windows(v, block_size, halo_size).flatten(0, 1)          # (Bh, nb, win², dv)
    if rel_pos is None:
        out = F.scaled_dot_product_attention(qb, kw, vw, scale=scale)
    else:
        rh, rw = halo_rel_logits(q, rel_pos, scale if scale_pos_embed else 1.0)
        rh, rw = to_blocks(rh, bq).flatten(0, 1), to_blocks(rw, bq).flatten(0, 1)
        Bh, nb = qb.shape[:2]
        # offset of key row ki (column kj) seen from query row i (column j): win - 1 + ki - i
        pos = torch.arange(bq, device=q.device)
        idx = win - 1 + torch.arange(win, device=q.device)[None, :] - pos[:, None]  # (bq, win)
        idx_h = idx[:, None, :].expand(bq, bq, win).reshape(bq * bq, win)  # by query row i
        idx_w = idx[None, :, :].expand(bq, bq, win).reshape(bq * bq, win)  # by query column j
        gh = torch.gather(rh, -1, idx_h.expand(Bh, nb, -1, -1))            # (Bh, nb, bq², win)
        gw = torch.gather(rw, -1, idx_w.expand(Bh, nb, -1, -1))
        bias = (gh[..., :, None] + gw[..., None, :]).flatten(-2)          # (Bh, nb, bq², win²)
        attn = torch.matmul(qb, kw.transpose(-1, -2)) * scale + bias
        out = torch.matmul(attn.softmax(-1), vw)
    return from_blocks(out.view(B, heads, *out.shape[1:]), (Hq, Wq), bq)


# How the reference path runs on the CPU (measured on the 2-core CPU with HaloNet-H1 at 256 px;
# the fused kernel never stores logits and ignores all of this). Sizes are a call's logits bytes
# (B * heads * queries * win², float32: the layer's 64x64 stage-1 map is 25.7 MB per image).
# * The cost is not the arithmetic but fresh memory: a temporary above glibc's mmap threshold
#   (dynamic, <= 32 MiB) is mapped fresh, page-faulted and zeroed on every call, and the reference
#   makes ~5 logits-sized ones. Split over (sample, head) slices whose temporaries stay under it,
#   a call reuses heap memory: batch 8, 1 thread, 1.9-2.1 s with 8-32 MiB slices vs 4.3-4.9 s in
#   one call (timm 4.2-4.7 s); at batch 1, 254-290 ms vs 423-465 ms.
# * Every slice costs ~15 OpenMP parallel regions whose barriers are expensive when another
#   process holds a core, so only calls above twice REFERENCE_CHUNK_BYTES are split, into at most
#   REFERENCE_MAX_CALLS slices of at least REFERENCE_CHUNK_BYTES (more only when a slice would
#   exceed REFERENCE_CHUNK_BYTES_MAX).
# * With autograd the saved softmax dominates: small slices fragment the heap around it (resident
#   peak +1.5 GB at batch 8), 64 MiB slices are mapped and unmapped whole. Calls above
#   REFERENCE_RECOMPUTE_BYTES are recomputed in the backward pass instead of saved (training step
#   at batch 8: 6.1-7.5 s vs 9.8 s, 1 thread; peak 1.6 GB vs 1.9 GB with only stage 1's 205 MB
#   call recomputed); smaller ones (every call at batch 1) save, as recomputing costs more than
#   it frees there (565 vs 470 ms per step).
REFERENCE_CHUNK_BYTES = 8 << 20
REFERENCE_CHUNK_BYTES_MAX = 32 << 20
REFERENCE_MAX_CALLS = 4
REFERENCE_CHUNK_BYTES_AUTOGRAD = 64 << 20
REFERENCE_RECOMPUTE_BYTES = 32 << 20


def _logits_bytes(q, block_size, halo_size):
    """Bytes of one logits tensor of a call: every query against its ``win x win`` window."""
    return q.shape[:4].numel() * (block_size + 2 * halo_size) ** 2 * q.element_size()


def _reference_in_slices(q, k, v, autograd, block_size, halo_size, *rest):
    """``halo_attention_reference`` split over (sample, head) slices: heads and samples are
    independent, so the result is that of one call."""
    B, heads, Hq, Wq, _ = q.shape
    n = B * heads
    total = _logits_bytes(q, block_size, halo_size)
    if autograd:
        budget = REFERENCE_CHUNK_BYTES_AUTOGRAD
    elif total <= 2 * REFERENCE_CHUNK_BYTES:
        budget = total
    else:
        budget = min(REFERENCE_CHUNK_BYTES_MAX, max(REFERENCE_CHUNK_BYTES, total / REFERENCE_MAX_CALLS))
    calls = min(n, math.ceil(total / budget)) if total else 1
    args = (block_size, halo_size, *rest)
    if calls <= 1:
        return halo_attention_reference(q, k, v, *args)
    step = -(-n // calls)
    q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)  # views
    outs = [halo_attention_reference(q[i:i + step, None], k[i:i + step, None],
                                     v[i:i + step, None], *args) for i in range(0, n, step)]
    return torch.cat(outs).view(B, heads, Hq, Wq, v.shape[-1])


def _reference(q, k, v, block_size, halo_size, stride, rel_pos, scale, scale_pos_embed):
    args = (block_size, halo_size, stride, rel_pos, scale, scale_pos_embed)
    autograd = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *(rel_pos or ())))
    if autograd and _logits_bytes(q, block_size, halo_size) > REFERENCE_RECOMPUTE_BYTES:
        return checkpoint(_reference_in_slices, q, k, v, True, *args, use_reentrant=False)
    return _reference_in_slices(q, k, v, autograd, *args)


@fx_leaf
def halo_attention_2d(q, k, v, block_size, halo_size, *, stride=1, rel_pos=None, scale=None,
                      scale_pos_embed=False, backend=None):
    """HaloNet attention: each ``bq x bq`` query block against its haloed ``win x win`` window.

    Args:
        q: ``(B, heads, H / stride, W / stride, d_qk)``; k: ``(B, heads, H, W, d_qk)``;
            v: ``(B, heads, H, W, d_v)``; any strides. ``H``, ``W`` multiples of ``block_size``.
        block_size: block size on the key grid (timm's ``block_size``).
        halo_size: halo added on every side of a block's key window (timm's ``halo_size``).
        stride: query sub-sampling (timm's ``block_stride``), a divisor of ``block_size``.
        rel_pos: None or ``(height_rel, width_rel)``, each ``(2 * win - 1, d_qk)``, shared by all
            heads (timm's ``pos_embed.height_rel`` / ``.width_rel``); gradients flow to them.
        scale: logit scale, default ``d_qk ** -0.5``.
        scale_pos_embed: multiply the relative logits by ``scale`` too (timm's flag).
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, heads, H / stride, W / stride, d_v)``.
    """
    block_size, halo_size, stride = _check_inputs(q, k, v, block_size, halo_size, stride, rel_pos)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if select_backend("halo_attention_2d", backend, q, v) == "triton":
        from ._triton_halo_attention import halo_attention_triton
        rel_logits = None if rel_pos is None else halo_rel_logits(
            q, tuple(rel_pos), scale if scale_pos_embed else 1.0)
        return halo_attention_triton(q, k, v, rel_logits, block_size, halo_size, stride, scale)
    return _reference(q, k, v, block_size, halo_size, stride,
                      None if rel_pos is None else tuple(rel_pos), scale, bool(scale_pos_embed))


def halo_attention_macs(q_shape, v_shape, block_size, halo_size):
    """MACs of ``q kᵀ`` and ``attn v``: every query against its whole window, padded keys
    included (they are computed). The relative logits' ``q @ table.T`` are plain matmuls that
    fvcore counts on both paths by itself."""
    B, heads, Hq, Wq, d_qk = q_shape
    win = block_size + 2 * halo_size
    return B * heads * Hq * Wq * win * win * (d_qk + v_shape[-1])
