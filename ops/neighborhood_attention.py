"""Neighborhood attention on a 2-D token grid, with NATTEN's semantics (``natten.na2d``).

Every query attends the ``kh x kw`` neighborhood of keys around it. The neighborhood is centred on
the query and **shifted inwards at the borders, never padded**: every query sees exactly
``kh * kw`` real keys. Per axis of length ``L``, kernel ``k`` (odd) and dilation ``d``:

* without dilation, query ``i`` attends keys ``start(i) + t`` for ``t < k`` with
  ``start(i) = clamp(i - k // 2, 0, L - k)``;
* with dilation ``d``, query ``i`` belongs to the dilated sub-grid ``g = i % d`` (positions
  ``g, g + d, g + 2d, ...``, ``L_g = ceil((L - g) / d)`` of them) and the rule above runs on that
  sub-grid: with ``i' = i // d`` and ``s' = clamp(i' - k // 2, 0, L_g - k)`` the keys are
  ``(s' + t) * d + g``. This is exactly NATTEN's ``get_window_start`` / ``get_pb_start``
  (the border branch ``length - b + imodd - 2 * nh * dilation`` resp. ``a + imodd - k * dilation``
  is the last window of the query's own sub-grid).

NATTEN requires ``kernel_size * dilation <= L`` per axis; that is exactly the condition for every
sub-grid to hold at least ``k`` positions, and is enforced here too. A kernel equal to the grid
(dilation 1) is full attention. No relative position bias, no ``stride`` (GNA) and no causal mask.

Layout: ``q``, ``k`` are ``(B, heads, H, W, d_qk)`` and ``v`` is ``(B, heads, H, W, d_v)`` with any
strides (e.g. views of a qkv projection); the output is ``(B, heads, H, W, d_v)``. NATTEN itself is
heads-last, ``(B, H, W, heads, d)``: ``x.permute(0, 3, 1, 2, 4)`` converts for free.
"""
import torch

from ._fx import fx_leaf
from ._backend import select_backend
from ._checks import check_qkv

__all__ = ["neighborhood_attention_2d", "neighborhood_attention_reference",
           "neighborhood_attention_macs", "neighborhood_starts", "neighborhood_index"]

# Elements (B * heads * rows * W * kh * kw * d) of one gathered key or value chunk in the
# reference: bounds its extra memory independently of the grid size.
_REFERENCE_CHUNK_ELEMENTS = 1 << 24


def _pair(value, name):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    if any(isinstance(x, bool) or int(x) != x for x in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(int(x) for x in pair)


def _check_inputs(q, k, v, kernel_size, dilation):
    check_qkv(q, k, v, rank=5)
    kernel_size = _pair(kernel_size, "kernel_size")
    dilation = _pair(dilation, "dilation")
    for axis, n, ks, dil in zip("HW", q.shape[2:4], kernel_size, dilation):
        if ks < 1 or ks % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size} "
                             "(even kernels are not supported)")
        if dil < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if ks * dil > n:
            raise ValueError(
                f"neighborhood attention needs kernel_size * dilation <= grid size along each "
                f"axis (as NATTEN does), got kernel {ks} x dilation {dil} > {axis}={n}")
    return kernel_size, dilation


def neighborhood_starts(length, kernel, dilation=1, device=None):
    """``(length,)`` int64: first key index (full-grid coordinates) of each query's window."""
    i = torch.arange(length, device=device)
    g = i % dilation
    sub_len = (length - g + dilation - 1) // dilation  # L_g, size of the query's sub-grid
    sub_start = torch.minimum((i // dilation - kernel // 2).clamp(min=0), sub_len - kernel)
    return sub_start * dilation + g


def neighborhood_index(length, kernel, dilation=1, device=None):
    """``(length, kernel)`` int64: the key indices of each query's window along one axis."""
    starts = neighborhood_starts(length, kernel, dilation, device)
    return starts[:, None] + torch.arange(kernel, device=device) * dilation


def neighborhood_attention_reference(q, k, v, kernel_size, dilation, scale):
    """The definition: gather every query's ``kh x kw`` keys and values by index, explicit softmax
    over them. O(N * K) work and memory, chunked over query rows."""
    B, heads, H, W, d_qk = q.shape
    d_v = v.shape[-1]
    (kh, kw), (dh, dw) = kernel_size, dilation
    iy = neighborhood_index(H, kh, dh, q.device)  # (H, kh)
    ix = neighborhood_index(W, kw, dw, q.device)  # (W, kw)
    per_row = max(1, B * heads * W * kh * kw * max(d_qk, d_v))
    rows = max(1, min(H, _REFERENCE_CHUNK_ELEMENTS // per_row))
    outs = []
    for r0 in range(0, H, rows):
        # (rows, kh, 1, 1) x (1, 1, W, kw) indices -> (B, heads, rows, kh, W, kw, dim)
        ry, rx = iy[r0:r0 + rows, :, None, None], ix[None, None]
        kn, vn = k[:, :, ry, rx], v[:, :, ry, rx]
        logits = torch.einsum("bhrwc,bhrawkc->bhrwak", q[:, :, r0:r0 + rows], kn) * scale
        attn = logits.flatten(-2).softmax(-1).view_as(logits)
        outs.append(torch.einsum("bhrwak,bhrawkc->bhrwc", attn, vn))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


@fx_leaf
def neighborhood_attention_2d(q, k, v, kernel_size, *, dilation=1, scale=None, backend=None):
    """NATTEN's ``na2d``: softmax attention of every query to its clamped ``kh x kw`` neighborhood.

    Args:
        q, k: ``(B, heads, H, W, d_qk)``; v: ``(B, heads, H, W, d_v)``; any strides.
        kernel_size: odd int or ``(kh, kw)``.
        dilation: int or ``(dh, dw)``; ``kernel_size * dilation <= (H, W)`` per axis.
        scale: logit scale, default ``d_qk ** -0.5``.
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, heads, H, W, d_v)``.
    """
    kernel_size, dilation = _check_inputs(q, k, v, kernel_size, dilation)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if select_backend("neighborhood_attention_2d", backend, q, v) == "triton":
        from ._triton_neighborhood_attention import neighborhood_attention_triton
        return neighborhood_attention_triton(q, k, v, kernel_size, dilation, float(scale))
    return neighborhood_attention_reference(q, k, v, kernel_size, dilation, scale)


def neighborhood_attention_macs(q_shape, v_shape, kernel_size):
    """MACs of ``q kᵀ`` and ``attn v``: every query against its ``kh * kw`` keys (no padding
    exists, so this is exact for both paths; dilation does not change it)."""
    B, heads, H, W, d_qk = q_shape
    kh, kw = _pair(kernel_size, "kernel_size")
    return B * heads * H * W * kh * kw * (d_qk + v_shape[-1])
