"""Token-to-token attention after BiFormer's region routing (bi-level routing attention, BRA).

The ``(H, W)`` token grid is cut into ``nR = (H / rh) * (W / rw)`` regions of ``rh x rw`` tokens,
regions numbered row-major over the region grid and tokens row-major inside a region (BiFormer's
``r = j * n_win + i``). ``region_index[b, r]`` lists ``topk`` key/value regions for query region
``r`` of image ``b`` (BiFormer's ``r_idx`` from its top-k router, shared by all heads). Every query
token of region ``r`` attends, with one softmax, over the concatenation of the listed regions'
tokens: ``topk * rh * rw`` keys.

This is exactly what the official code computes after routing: ``KVGather`` copies the listed
regions' K/V (``torch.gather`` along the region axis) into ``(n, p², topk, w², c)`` and the
attention runs over the flattened ``(topk w²)`` axis. Consequently:

* the order of the listed regions and of the keys inside them does not change the result;
* a region listed twice appears twice in the key list, i.e. its tokens get double weight in the
  softmax (and twice the gradient) -- the gather's semantics, reproduced exactly here. BiFormer's
  own router (``torch.topk``) never repeats a region.

Layout: ``q``, ``k`` are ``(B, heads, H, W, d_qk)`` and ``v`` is ``(B, heads, H, W, d_v)`` with any
strides (views of a qkv projection); the output is ``(B, heads, H, W, d_v)``.

What the op does not do (the model's job): padding the grid to whole regions (legacy ``auto_pad``
pads x before the qkv projection; the nchw BRA pads q/k/v with zeros after it; either way padded
keys are *not* masked), routing, LePE, and the scale: the official BRA uses
``qk_dim ** -0.5`` with ``qk_dim`` the *full* q/k width over all heads, not the head dim that is
this op's default -- pass ``scale=`` explicitly.
"""
import torch
import torch.nn.functional as F

from ._fx import fx_leaf
from ._backend import select_backend
from ._checks import check_qkv

__all__ = ["routed_attention_2d", "routed_attention_macs", "routed_attention_reference",
           "max_chunk_regions"]

# Bytes of gathered K/V (plus the SDPA output) the reference materialises at once; it processes
# query regions in chunks that stay under this. Under autograd each chunk's gathered K/V is saved
# for backward anyway, so the budget bounds the transient workspace and the inference peak.
MAX_GATHER_BYTES = 256 * 2 ** 20


def _check_region_size(grid, region_size):
    if isinstance(region_size, int):
        region_size = (region_size, region_size)
    if (not isinstance(region_size, (tuple, list)) or len(region_size) != 2
            or any(isinstance(r, bool) or int(r) != r or r < 1 for r in region_size)):
        raise ValueError(
            f"region_size must be a positive int or two positive ints, got {region_size}")
    rh, rw = (int(r) for r in region_size)
    H, W = grid
    if H % rh or W % rw:
        raise ValueError(
            f"the {H}x{W} token grid is not divisible into {rh}x{rw} regions; pad the grid to "
            f"{-(-H // rh) * rh}x{-(-W // rw) * rw} first (BiFormer pads before routing: "
            "auto_pad) or choose a region size that divides it")
    return rh, rw


def _check_region_index(region_index, batch, num_regions, device):
    if not isinstance(region_index, torch.Tensor) or region_index.dim() != 3:
        got = (tuple(region_index.shape) if isinstance(region_index, torch.Tensor)
               else type(region_index))
        raise ValueError(f"region_index must be a 3-D tensor (B, num_regions, topk), got {got}")
    if region_index.is_floating_point() or region_index.is_complex() \
            or region_index.dtype == torch.bool:
        raise TypeError(f"region_index must be an integer tensor (int64), got {region_index.dtype}")
    B, nR, topk = region_index.shape
    if B != batch or nR != num_regions:
        raise ValueError(
            f"region_index must have shape (B={batch}, num_regions={num_regions}, topk), got "
            f"{tuple(region_index.shape)}")
    if topk < 1:
        raise ValueError("region_index must list at least one region per query region (topk >= 1)")
    if region_index.device != device:
        raise ValueError(f"region_index is on {region_index.device}, q on {device}")
    region_index = region_index.to(torch.int64)
    # Data-dependent check (one host sync); skipped while torch.compile traces, where an
    # out-of-range index is then undefined behaviour (the kernel reads outside the regions).
    if region_index.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(region_index)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= num_regions:
            raise ValueError(
                f"region_index values must lie in [0, {num_regions - 1}] (the grid has "
                f"{num_regions} regions), got values in [{lo}, {hi}]")
    return region_index


def nondeterministic_backward_limit(device, needs_dkdv):
    """The fused backward adds dK/dV up with fp32 atomics, in an order that varies between runs on
    a GPU: under ``torch.use_deterministic_algorithms(True)`` (not ``warn_only``) the kernel
    cannot take a call that will need them. The interpreter runs programs in order."""
    if (device.type == "cuda" and needs_dkdv and torch.are_deterministic_algorithms_enabled()
            and not torch.is_deterministic_algorithms_warn_only_enabled()):
        return RuntimeError(
            "the triton routed_attention_2d backward accumulates dK/dV with fp32 atomics and is "
            "not deterministic, and torch.use_deterministic_algorithms(True) is set; pass "
            "backend='reference'")
    return None


def to_regions(x, region_size):
    """``(B, h, H, W, c)`` -> ``(B, h, num_regions, rh * rw, c)``: regions row-major, tokens
    row-major inside a region (one copy for strided inputs)."""
    B, h, H, W, c = x.shape
    rh, rw = region_size
    x = x.reshape(B, h, H // rh, rh, W // rw, rw, c).transpose(3, 4)
    return x.reshape(B, h, (H // rh) * (W // rw), rh * rw, c)


def from_regions(x, grid_size, region_size):
    """Inverse of :func:`to_regions`."""
    B, h, _, _, c = x.shape
    (H, W), (rh, rw) = grid_size, region_size
    x = x.reshape(B, h, H // rh, W // rw, rh, rw, c).transpose(3, 4)
    return x.reshape(B, h, H, W, c)


def max_chunk_regions(B, heads, num_regions, topk, region_tokens, d_qk, d_v, element_size,
                      budget=None):
    """How many query regions the reference processes at once so that their gathered K/V and
    output stay under ``budget`` bytes (:data:`MAX_GATHER_BYTES`); at least 1."""
    budget = MAX_GATHER_BYTES if budget is None else budget
    per_region = B * heads * region_tokens * (topk * (d_qk + d_v) + d_v) * element_size
    return max(1, min(num_regions, budget // max(1, per_region)))


def routed_attention_reference(q, k, v, region_index, region_size, scale):
    """The definition: regions to region-major order, gather the listed regions' K/V with one
    flat ``index_select`` per chunk of query regions (its backward is an ``index_add`` of the
    gathered size, not the official gather's ``num_regions``-fold expanded gradient), then SDPA on
    4-D ``(B * heads, regions, topk * rh * rw, d)`` inputs (5-D inputs take SDPA's slow unfused
    path on the CPU)."""
    B, h, H, W, d_qk = q.shape
    d_v = v.shape[-1]
    nR, topk = region_index.shape[1:]
    T = region_size[0] * region_size[1]
    qr = to_regions(q, region_size).flatten(0, 1)                    # (B*h, nR, T, d_qk)
    kr = to_regions(k, region_size).reshape(B * h * nR, T, d_qk)
    vr = to_regions(v, region_size).reshape(B * h * nR, T, d_v)
    # Row of region g of (batch b, head m) in kr/vr: (b * h + m) * nR + g.
    base = torch.arange(B * h, device=q.device).view(B, h, 1, 1) * nR
    chunk = max_chunk_regions(B, h, nR, topk, T, d_qk, d_v, q.element_size())
    outs = []
    for r0 in range(0, nR, chunk):
        nc = min(chunk, nR - r0)
        rows = (base + region_index[:, None, r0:r0 + nc]).reshape(-1)  # (B*h*nc*topk,)
        k_sel = kr.index_select(0, rows).view(B * h, nc, topk * T, d_qk)
        v_sel = vr.index_select(0, rows).view(B * h, nc, topk * T, d_v)
        outs.append(F.scaled_dot_product_attention(qr[:, r0:r0 + nc], k_sel, v_sel, scale=scale))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    return from_regions(out.view(B, h, nR, T, d_v), (H, W), region_size)


@fx_leaf
def routed_attention_2d(q, k, v, region_index, region_size, *, scale=None, backend=None):
    """Softmax attention of every query token over the tokens of the key/value regions routed to
    its region (BiFormer's bi-level routing attention after the router).

    Args:
        q, k: ``(B, heads, H, W, d_qk)``; v: ``(B, heads, H, W, d_v)``; any strides.
        region_index: integer ``(B, num_regions, topk)``; ``region_index[b, r]`` lists the regions
            (``0 <= index < num_regions``, row-major over the region grid) whose tokens the
            queries of region ``r`` attend to. Shared by all heads; unsorted and repeated entries
            are allowed (a repeated region counts twice, as in BiFormer's gather).
        region_size: ``(rh, rw)`` tokens per region (or one int); must divide ``(H, W)``.
        scale: logit scale, default ``d_qk ** -0.5`` (BiFormer uses ``qk_dim ** -0.5`` over all
            heads: pass it).
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, heads, H, W, d_v)``.
    """
    check_qkv(q, k, v, rank=5)
    region_size = _check_region_size(q.shape[2:4], region_size)
    num_regions = (q.shape[2] // region_size[0]) * (q.shape[3] // region_size[1])
    region_index = _check_region_index(region_index, q.shape[0], num_regions, q.device)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    needs_dkdv = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
    if select_backend("routed_attention_2d", backend, q, v,
                      lambda: nondeterministic_backward_limit(q.device, needs_dkdv)) == "triton":
        from ._triton_routed_attention import routed_attention_triton
        return routed_attention_triton(q, k, v, region_index, region_size, float(scale))
    return routed_attention_reference(q, k, v, region_index, region_size, scale)


def routed_attention_macs(q_shape, v_shape, topk, region_size):
    """Multiply-adds of ``q kᵀ`` and ``attn v``: every query against ``topk * rh * rw`` keys."""
    B, heads, H, W, d_qk = q_shape
    return B * heads * H * W * topk * region_size[0] * region_size[1] * (d_qk + v_shape[-1])
