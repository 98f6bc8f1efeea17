"""Attention under an arbitrary per-element connectivity mask (Sparsifiner's sparse attention).

``out[b, h, i] = sum_j softmax_j(scale * q_i . k_j  over the j with mask[i, j]) v_j``

Sparsifiner (CVPR 2023, ``lim142857/Sparsifiner``) predicts, per head and per patch query, the
top-``attn_budget`` keys from a low-rank connectivity predictor, scatters them into a 0/1 mask,
prepends an all-ones row for the class token (the cls query attends every key) and detaches it.
The attention is then ``masked_fill(~mask, -inf)`` **before** the softmax (not a multiplication
after it), so the kept logits are renormalised among themselves; the DeiT file follows with
``nan_to_num``. Train (its phase 2) and eval use the same masked path; nothing in the mask is
learned through this op (the mask takes no gradient).

Layout: ``q`` ``(B, heads, Lq, d_qk)``, ``k`` ``(B, heads, Lk, d_qk)``, ``v`` ``(B, heads, Lk, d_v)``,
any strides (views of a qkv projection need no copy); the output is ``(B, heads, Lq, d_v)``.

Mask, broadcast over batch and heads (leading dims ``B or 1`` and ``heads or 1``):

* ``bool`` ``(B|1, heads|1, Lq, Lk)``: True = attend;
* packed ``uint8`` ``(B|1, heads|1, Lq, ceil(Lk / 8))``: bit ``j % 8`` (least significant first,
  ``numpy.packbits(..., bitorder="little")``) of byte ``j // 8`` is key ``j``; bits past ``Lk``
  are ignored. 8x less memory than ``bool``; :func:`topk_mask` builds it straight from top-k
  indices (Sparsifiner's ``topk`` + ``scatter``) and :func:`pack_mask` from a bool mask;
* additive float ``(B|1, heads|1, Lq, Lk)`` holding only ``0`` (attend) and ``-inf`` (masked):
  the form PyTorch's SDPA computes with, so the CPU reference takes it without the bool -> float
  pass SDPA makes for a bool mask (about as fast as no mask at all). Other values are not a mask
  (the backends would disagree on them); the fused path turns the form into a bool mask.

Fully-masked rows (a query with no key at all) give an **output of exactly 0 and zero gradients**
(no NaN) on both backends. That is the DeiT file's ``nan_to_num`` forward; its backward would give
NaN there, ours gives 0. Sparsifiner itself never produces such rows (each patch row keeps
``attn_budget >= 1`` keys, the cls row keeps all), so this only matters for hand-made masks and
``Lk = 0``.
"""
import torch
import torch.nn.functional as F

from ._fx import fx_leaf
from ._backend import select_backend
from ._checks import check_qkv

__all__ = ["masked_attention", "masked_attention_reference", "masked_attention_macs",
           "topk_mask", "pack_mask", "unpack_mask"]

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


@fx_leaf
def pack_mask(mask):
    """Bool ``(..., Lk)`` -> packed uint8 ``(..., ceil(Lk / 8))`` (little bit order)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_mask expects a bool mask, got {mask.dtype}")
    lk = mask.shape[-1]
    padded = F.pad(mask.to(torch.uint8), (0, (-lk) % 8))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (padded.unflatten(-1, (-1, 8)) * weights).sum(-1, dtype=torch.uint8)


@fx_leaf
def unpack_mask(packed, lk):
    """Packed uint8 ``(..., ceil(lk / 8))`` -> bool ``(..., lk)``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_mask expects a uint8 mask, got {packed.dtype}")
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.flatten(-2)[..., :lk]


@fx_leaf
def topk_mask(indices, lk, *, packed=True):
    """The connectivity mask of per-query key indices, e.g. ``scores.topk(budget).indices``.

    Args:
        indices: integer ``(..., Lq, k)``; repeated indices are allowed (kept once).
        lk: number of keys.
        packed: return the packed uint8 form (default) or a bool ``(..., Lq, lk)`` mask.

    Sparsifiner's cls row attends every key: build the patch rows with this function and prepend
    a row of ``torch.full(..., 255, dtype=torch.uint8)`` (or ``True`` for the bool form).
    """
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    # A data-dependent check: skipped while compiling, or fullgraph compilation breaks here.
    if (indices.numel() and not torch.compiler.is_compiling()
            and (int(indices.min()) < 0 or int(indices.max()) >= lk)):
        raise ValueError(f"indices must lie in [0, {lk}), got [{int(indices.min())}, "
                         f"{int(indices.max())}]")
    mask = torch.zeros(*indices.shape[:-1], lk, dtype=torch.bool, device=indices.device)
    mask.scatter_(-1, indices.long(), True)
    return pack_mask(mask) if packed else mask


def _check_inputs(q, k, v, mask):
    check_qkv(q, k, v, rank=4, same_tokens=False)
    B, heads, lq, d_qk = q.shape
    if k.shape[:2] != (B, heads) or k.shape[-1] != d_qk:
        raise ValueError(f"k must be (B, heads, Lk, d_qk) matching q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must match k in (B, heads, Lk), got {tuple(v.shape)} vs "
                         f"{tuple(k.shape)}")
    lk = k.shape[2]
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise ValueError("mask must be a 4-D tensor (B|1, heads|1, Lq, Lk) (bool) or "
                         "(B|1, heads|1, Lq, ceil(Lk/8)) (packed uint8), got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)}")
    if mask.dtype == torch.bool or mask.is_floating_point():
        last, form = lk, "Lk"
    elif mask.dtype == torch.uint8:
        last, form = (lk + 7) // 8, "ceil(Lk/8)"
    else:
        raise TypeError(f"mask must be bool (True = attend), packed uint8 or additive float "
                        f"(0 / -inf), got {mask.dtype}")
    if (mask.shape[0] not in (1, B) or mask.shape[1] not in (1, heads) or mask.shape[2] != lq
            or mask.shape[3] != last):
        raise ValueError(f"mask of dtype {mask.dtype} must be (B|1, heads|1, Lq, {form}) = "
                         f"({B}|1, {heads}|1, {lq}, {last}), got {tuple(mask.shape)}")
    if mask.device != q.device:
        raise ValueError(f"mask must be on q's device {q.device}, got {mask.device}")


def masked_attention_reference(q, k, v, mask, scale):
    """The definition: SDPA with a bool mask; fully-masked rows are let attend every key (so the
    softmax stays finite) and then zeroed, which also zeroes their gradients. PyTorch's CPU SDPA
    already gives such rows an output and gradients of 0 (its safe softmax), so on the CPU the
    mask goes in as it is: three passes over the (Lq, Lk) mask fewer per call."""
    if mask.dtype == torch.uint8:
        mask = unpack_mask(mask, k.shape[2])
    if q.device.type == "cpu":
        if mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if mask.is_floating_point():
        mask = mask > float("-inf")
    has_key = mask.any(-1, keepdim=True)                       # (B|1, heads|1, Lq, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, scale=scale)
    return out * has_key.to(out.dtype)


@fx_leaf
def masked_attention(q, k, v, mask, *, scale=None, backend=None):
    """Softmax attention of every query over the keys its mask row allows.

    Args:
        q: ``(B, heads, Lq, d_qk)``; k: ``(B, heads, Lk, d_qk)``; v: ``(B, heads, Lk, d_v)``;
            any strides.
        mask: bool ``(B|1, heads|1, Lq, Lk)`` with True = attend, the packed uint8 form
            ``(B|1, heads|1, Lq, ceil(Lk / 8))`` (see :func:`topk_mask`), or the additive float
            form (0 = attend, -inf = masked). Masked logits are ``-inf`` before the softmax.
            Takes no gradient.
        scale: logit scale, default ``d_qk ** -0.5``.
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, heads, Lq, d_v)``; rows whose mask is all False are 0 (with zero gradients).
    """
    _check_inputs(q, k, v, mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if select_backend("masked_attention", backend, q, v) == "triton":
        from ._triton_masked_attention import masked_attention_triton
        if mask.is_floating_point():
            mask = mask > float("-inf")
        return masked_attention_triton(q, k, v, mask, float(scale))
    return masked_attention_reference(q, k, v, mask, scale)


def masked_attention_macs(q_shape, k_shape, v_shape, keys_per_query=None, dense_rows=0):
    """MACs of ``q kᵀ`` and ``attn v``.

    Default (``keys_per_query=None``): the dense count ``B * heads * Lq * Lk * (d_qk + d_v)``,
    what the reference's SDPA computes and what the fvcore rules count for both paths: the mask is
    data, unknown to a shape-based count. The fused path skips key tiles with no kept entry, so
    its real work lies between the kept-pair count and this.

    With a fixed budget (Sparsifiner: ``keys_per_query = ceil(keep_rate * N)``, cls row dense,
    ``dense_rows=1``) the count of kept pairs is data-independent:
    ``B * heads * (dense_rows * Lk + (Lq - dense_rows) * keys_per_query) * (d_qk + d_v)``,
    i.e. the spec's ``2 h d (N + (N - 1) b)`` per image for d_qk = d_v = d.
    """
    B, heads, lq, d_qk = q_shape
    lk, d_v = k_shape[-2], v_shape[-1]
    if keys_per_query is None:
        pairs = lq * lk
    else:
        pairs = dense_rows * lk + (lq - dense_rows) * min(int(keys_per_query), lk)
    return B * heads * pairs * (d_qk + d_v)
