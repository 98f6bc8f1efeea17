"""Reversed attention of DependencyViT (Ding et al., CVPR 2023), on token sequences.

Semantics follow the only runnable reference, timm PR #2062 ``ReversedAttention`` (see
``shared/specs/dependencyvit.md`` Sec. 3): the *forward* attention is the usual row softmax over
keys, ``A[i, j] = softmax_j(q_i · k_j · scale)`` (child ``i`` distributes one unit over parents
``j``); it is then transposed and every child's column is weighted by ``w[i]``::

    out[b, h, j] = Σ_i A[b, h, i, j] · w[b, h, i] · v[b, h, i]

In DependencyViT ``w[b, h, i] = p[b, h, i] · m[b, i]``: ``p`` is the head selector
(``softmax(head_selector(x) / 0.1)`` over heads, per token) and ``m`` the cumulative message
controller weight (per token, shared by heads), i.e. pass ``weights = p * m[:, None, :]``.
``weights`` is per head *and* per token and may be anything broadcastable to ``(B, heads, L)``
(``None`` means all ones).

``return_scores=True`` also returns the reference's dependency mask
``mask[b, j, i] = Σ_h A[b, h, i, j] · w[b, h, i]`` ``(B, L, L)``, row = receiving parent ``j``,
column = sending child ``i`` (``attn.dependency_mask``; each column sums to ``Σ_h w[b, h, i]``, i.e.
to ``m_i`` when the head selector sums to one). Like the reference it is detached: no gradient
flows through it. The Lite pruning score of the reference is ``m`` itself, which needs no kernel;
the "received mass" ``Σ_h Σ_i A_ij w_i`` is ``mask.sum(-1)``.

Layout: ``q``, ``k`` are ``(B, heads, L, d_qk)`` and ``v`` is ``(B, heads, L, d_v)`` with any
strides; the output is ``(B, heads, L, d_v)``. There is no dropout on ``A`` (the reference's
``attn_drop`` is 0).
"""
import torch

from ._fx import fx_leaf
from ._backend import select_backend
from ._checks import check_qkv

__all__ = ["reversed_attention", "reversed_attention_reference", "reversed_attention_macs"]

# Elements (B * heads * queries * L) of one chunk of the attention matrix in the reference.
_REFERENCE_CHUNK_ELEMENTS = 1 << 24


def _check_inputs(q, k, v, weights):
    check_qkv(q, k, v, rank=4)
    if weights is None:
        return None
    B, heads, L, _ = q.shape
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a tensor or None, got {type(weights)}")
    if weights.dtype != q.dtype:
        raise TypeError(f"weights must have q's dtype {q.dtype}, got {weights.dtype}")
    if weights.device != q.device:
        raise ValueError(f"weights must be on q's device {q.device}, got {weights.device}")
    try:
        if weights.dim() > 3:
            raise RuntimeError
        return weights.expand(B, heads, L)
    except RuntimeError:
        raise ValueError(f"weights must be broadcastable to (B, heads, L) = {(B, heads, L)}, "
                         f"got {tuple(weights.shape)}") from None


def reversed_attention_reference(q, k, v, weights, scale, return_scores=False):
    """The definition: explicit softmax over keys, then the transposed, weighted accumulation over
    queries. O(L^2) work, memory bounded by chunking over queries."""
    B, heads, L, _ = q.shape
    rows = max(1, min(L, _REFERENCE_CHUNK_ELEMENTS // max(1, B * heads * L)))
    out, mask = None, None
    for i0 in range(0, L, rows):
        # matmuls rather than einsums: fvcore counts matmuls exactly (its einsum rule estimates);
        # the scale goes on q (L x d), not on the L x L logits: one pass less over the largest
        # tensor, and the copy a strided q needs for the matmul comes with it
        attn = ((q[:, :, i0:i0 + rows] * scale) @ k.transpose(-1, -2)).softmax(-1)
        u = v[:, :, i0:i0 + rows]
        if weights is not None:
            u = u * weights[:, :, i0:i0 + rows, None]
        part = attn.transpose(-1, -2) @ u  # (B, heads, parents j, d_v)
        out = part if out is None else out + part
        if return_scores:
            with torch.no_grad():
                a = attn if weights is None else attn * weights[:, :, i0:i0 + rows, None]
                part = a.sum(1).transpose(1, 2)  # (B, parents j, children i)
                mask = part if mask is None else torch.cat([mask, part], dim=2)
    if out is None:  # L == 0
        out = v.new_zeros(v.shape)
        mask = q.new_zeros(B, 0, 0) if return_scores else None
    return (out, mask) if return_scores else out


@fx_leaf
def reversed_attention(q, k, v, weights=None, *, scale=None, return_scores=False, backend=None):
    """DependencyViT's reversed attention ``out_j = Σ_i softmax_j(q_i·k_j·scale) · w_i · v_i``.

    Args:
        q, k: ``(B, heads, L, d_qk)``; v: ``(B, heads, L, d_v)``; any strides.
        weights: per-(head, query) weights ``w`` broadcastable to ``(B, heads, L)`` (DependencyViT:
            head selector ``p`` times the cumulative message weight ``m``), or None for ones.
            Same dtype and device as ``q``; differentiable.
        scale: logit scale, default ``d_qk ** -0.5``.
        return_scores: also return the detached dependency mask ``(B, L, L)``
            ``mask[b, j, i] = Σ_h softmax_j(q_i·k_j)[b, h] · w[b, h, i]`` (row = parent ``j``,
            column = child ``i``).
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, heads, L, d_v)``, or ``(out, mask)`` with ``return_scores``.
    """
    weights = _check_inputs(q, k, v, weights)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if select_backend("reversed_attention", backend, q, v) == "triton":
        from ._triton_reversed_attention import reversed_attention_triton
        return reversed_attention_triton(q, k, v, weights, float(scale), bool(return_scores))
    return reversed_attention_reference(q, k, v, weights, scale, return_scores)


def reversed_attention_macs(q_shape, v_shape):
    """MACs of ``q kᵀ`` and ``Aᵀ (w v)``: dense, every query against every key (the per-query
    weighting and the optional dependency mask are not counted, like softmax)."""
    B, heads, L, d_qk = q_shape
    return B * heads * L * L * (d_qk + v_shape[-1])
