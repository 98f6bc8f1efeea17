"""Attention inside non-overlapping rectangular windows of a 2-D token grid.

One op covers CSWin's stripes (windows of ``(H, sw)`` and ``(sw, W)``), Swin-style square windows,
HiLo's local windows and full attention over the grid (``window_size=None``).

Layout: ``q``, ``k`` are ``(B, heads, H, W, d_qk)`` and ``v`` is ``(B, heads, H, W, d_v)``, with
any strides, so the three can be views straight out of a qkv projection
(``qkv.view(B, H, W, 3, heads, d).permute(3, 0, 4, 1, 2, 5)``) without a copy. The output has the
logical layout ``(B, heads, H, W, d_v)``.

Windows tile a padded grid: window ``i`` along an axis covers grid rows
``[i * wh - oy, (i + 1) * wh - oy)`` where ``(oy, ox) = window_offset`` is the padding placed
before the first window; the end is padded up to a whole window. What padded positions mean is set
by ``padding``:

* ``"zeros"``: padded keys are zero vectors that take part in the softmax (logit exactly 0, value
  0). This is CSWin's dense backbone (and HaloNet): they zero-pad q, k, v after the projection and
  do not mask.
* ``"masked"``: padded keys are excluded from the softmax.

Queries at padded positions are computed by nobody: the output covers the real grid only.
"""
import torch
import torch.nn.functional as F

from ._fx import fx_leaf
from ._backend import select_backend
from ._checks import check_qkv

PADDING_MODES = ("zeros", "masked")

__all__ = ["window_attention_2d", "window_attention_macs", "window_depthwise_conv2d",
           "centered_window_offset", "window_grid"]


@fx_leaf
def centered_window_offset(grid_size, window_size):
    """Padding before the first window when the grid is padded up to whole windows with the
    first half of the padding in front (``pad // 2``) and the rest behind: CSWin's convention."""
    return tuple(((-n) % w) // 2 for n, w in zip(grid_size, window_size))


@fx_leaf
def window_grid(grid_size, window_size, window_offset=(0, 0)):
    """``(num_windows_y, num_windows_x)`` and the padding ``(top, bottom, left, right)``."""
    (H, W), (wh, ww), (oy, ox) = grid_size, window_size, window_offset
    pad_bottom = (-(H + oy)) % wh
    pad_right = (-(W + ox)) % ww
    return ((H + oy + pad_bottom) // wh, (W + ox + pad_right) // ww), (oy, pad_bottom, ox, pad_right)


def _check_window(grid_size, window_size, window_offset):
    if window_size is None:
        return tuple(grid_size), (0, 0)
    if len(window_size) != 2 or any(int(w) != w or w < 1 for w in window_size):
        raise ValueError(f"window_size must be two positive ints (or None), got {window_size}")
    window_size = tuple(int(w) for w in window_size)
    window_offset = tuple(int(o) for o in window_offset)
    if len(window_offset) != 2 or any(not 0 <= o < w for o, w in zip(window_offset, window_size)):
        raise ValueError(
            f"window_offset {window_offset} must satisfy 0 <= offset < window_size {window_size}: "
            "a larger offset would create windows made only of padding")
    return window_size, window_offset


def to_windows(x, window_size, window_offset):
    """``(B, h, H, W, c)`` -> zero-padded windows ``(B, h, num_windows, wh * ww, c)``, windows in
    row-major window order, tokens row-major inside a window."""
    B, h, H, W, c = x.shape
    (wh, ww) = window_size
    (nwy, nwx), (top, bottom, left, right) = window_grid((H, W), window_size, window_offset)
    if top or bottom or left or right:
        x = F.pad(x, (0, 0, left, right, top, bottom))
    x = x.reshape(B, h, nwy, wh, nwx, ww, c).transpose(3, 4)
    return x.reshape(B, h, nwy * nwx, wh * ww, c)


def from_windows(x, grid_size, window_size, window_offset):
    """Inverse of :func:`to_windows`, cropping the padding away."""
    B, h, _, _, c = x.shape
    (H, W), (wh, ww) = grid_size, window_size
    (nwy, nwx), (top, _, left, _) = window_grid(grid_size, window_size, window_offset)
    x = x.reshape(B, h, nwy, nwx, wh, ww, c).transpose(3, 4).reshape(B, h, nwy * wh, nwx * ww, c)
    return x[:, :, top:top + H, left:left + W]


def _whole_grid_attention(q, k, v, scale):
    """One window that is the grid (no padding): attention over the flattened grid, without the
    window reshapes (SHViT calls this in every attention layer; it halves the op's overhead)."""
    B, h, H, W, _ = q.shape
    qf, kf, vf = (t.flatten(2, 3) for t in (q, k, v))
    if q.shape[-1] != v.shape[-1]:  # see below
        attn = ((qf @ kf.transpose(-1, -2)) * scale).softmax(dim=-1)
        # (attn v)ᵀ = vᵀ attnᵀ: channel-major memory, so a caller that views the output as NCHW
        # (SHViT: v is a view of an NCHW projection) gets a contiguous map for its next conv
        out = (vf.transpose(-1, -2) @ attn.transpose(-1, -2)).transpose(-1, -2)
    else:
        out = F.scaled_dot_product_attention(qf, kf, vf, scale=scale)
    return out.view(B, h, H, W, v.shape[-1])


def window_attention_reference(q, k, v, window_size, window_offset, padding, scale):
    """The definition: pad, cut into windows, softmax(q kᵀ · scale) v per window, stitch back."""
    grid = q.shape[2:4]
    if window_grid(grid, window_size, window_offset) == ((1, 1), (0, 0, 0, 0)):
        return _whole_grid_attention(q, k, v, scale)
    qw, kw, vw = (to_windows(t, window_size, window_offset) for t in (q, k, v))
    mask = None
    _, (top, bottom, left, right) = window_grid(grid, window_size, window_offset)
    if padding == "masked" and (top or bottom or left or right):
        real = torch.ones(1, 1, *grid, 1, dtype=torch.bool, device=q.device)
        mask = to_windows(real, window_size, window_offset).transpose(-1, -2)  # (1,1,nW,1,L)
        mask = mask.flatten(0, 1)
    B, h, nw, L, _ = qw.shape
    if qw.shape[-1] != vw.shape[-1]:
        # PyTorch's fused attention kernels need d_qk == d_v; its math fallback for d_qk != d_v
        # (SHViT: 16 vs 48-96) took 1.3-2x the time of these three ops on the CPU.
        attn = (qw @ kw.transpose(-1, -2)) * scale
        if mask is not None:
            attn = attn.masked_fill(~mask, float("-inf"))
        out = attn.softmax(dim=-1) @ vw
        return from_windows(out, grid, window_size, window_offset)
    # 4-D (batch*heads, windows, tokens, dim): PyTorch's fused CPU/GPU kernels take 4-D inputs,
    # 5-D ones fall back to the unfused math path (5-8x slower on the CPU).
    out = F.scaled_dot_product_attention(qw.flatten(0, 1), kw.flatten(0, 1), vw.flatten(0, 1),
                                         attn_mask=mask, scale=scale)
    return from_windows(out.view(B, h, nw, L, vw.shape[-1]), grid, window_size, window_offset)


@fx_leaf
def window_attention_2d(q, k, v, window_size=None, *, window_offset=(0, 0), padding="zeros",
                        scale=None, backend=None):
    """Softmax attention of every query to the keys of its own window.

    Args:
        q, k: ``(B, heads, H, W, d_qk)``; v: ``(B, heads, H, W, d_v)``; any strides.
        window_size: ``(wh, ww)``, or None for one window over the whole grid.
        window_offset: padding before the first window, ``0 <= offset < window`` per axis
            (:func:`centered_window_offset` gives CSWin's centred padding).
        padding: ``"zeros"`` (padded keys take part with logit 0 and value 0) or ``"masked"``.
        scale: logit scale, default ``d_qk ** -0.5``.
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, heads, H, W, d_v)``.
    """
    check_qkv(q, k, v, rank=5)
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    window_size, window_offset = _check_window(q.shape[2:4], window_size, window_offset)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if select_backend("window_attention_2d", backend, q, v) == "triton":
        from ._triton_window_attention import window_attention_triton
        return window_attention_triton(q, k, v, window_size, window_offset, padding, float(scale))
    return window_attention_reference(q, k, v, window_size, window_offset, padding, scale)


def window_attention_macs(q_shape, v_shape, window_size, window_offset):
    """MACs of ``q kᵀ`` and ``attn v``: every query against every key of its window, padded
    windows counted whole (as the reference's SDPA over padded windows computes them)."""
    B, heads, H, W, d_qk = q_shape
    (nwy, nwx), _ = window_grid((H, W), window_size, window_offset)
    tokens = window_size[0] * window_size[1]
    return B * heads * nwy * nwx * tokens * tokens * (d_qk + v_shape[-1])


@fx_leaf
def window_depthwise_conv2d(x, weight, bias=None, window_size=None, *, window_offset=(0, 0)):
    """Depthwise convolution applied separately inside each window, zero-padded at window borders
    (CSWin's LePE: ``get_v`` run on every stripe on its own).

    Args:
        x: ``(B, heads, H, W, d)``, channel ``c = head * d + j`` for the conv weights.
        weight: ``(heads * d, 1, kh, kw)`` with odd ``kh``, ``kw``; bias: ``(heads * d,)``.

    Returns:
        ``(B, heads, H, W, d)``.
    """
    if x.dim() != 5:
        raise ValueError(f"x must be (B, heads, H, W, d), got {tuple(x.shape)}")
    B, h, H, W, d = x.shape
    if weight.shape[0] != h * d or weight.shape[1] != 1:
        raise ValueError(f"depthwise weight must be ({h * d}, 1, kh, kw), got {tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"depthwise kernel must have odd sizes, got {kh}x{kw}")
    window_size, window_offset = _check_window((H, W), window_size, window_offset)
    wh, ww = window_size
    (nwy, nwx), (top, bottom, left, right) = window_grid((H, W), window_size, window_offset)
    # No partition is needed along an axis whose one window is the whole grid (the conv's own zero
    # padding is the window border), nor along an axis of 1-token windows (only the kernel's centre
    # tap sees data there). CSWin's first stage (stripes of 1) and last stage (full grid) are such.
    whole_y, whole_x = nwy == 1 and not (top or bottom), nwx == 1 and not (left or right)
    if (whole_y or wh == 1) and (whole_x or ww == 1):
        if not whole_y:
            weight = weight[:, :, kh // 2:kh // 2 + 1]
        if not whole_x:
            weight = weight[:, :, :, kw // 2:kw // 2 + 1]
        # Channels-last: one copy out of the strided (qkv) view, and mkldnn's fast depthwise path.
        xc = x.permute(0, 2, 3, 1, 4).reshape(B, H, W, h * d).permute(0, 3, 1, 2)
        y = F.conv2d(xc, weight, bias, padding=(weight.shape[-2] // 2, weight.shape[-1] // 2),
                     groups=h * d)
        return y.permute(0, 2, 3, 1).reshape(B, H, W, h, d).permute(0, 3, 1, 2, 4)
    xw = to_windows(x, window_size, window_offset)  # (B, h, nW, L, d)
    nw = xw.shape[2]
    xw = xw.permute(0, 2, 1, 4, 3).reshape(B * nw, h * d, wh, ww)
    yw = F.conv2d(xw, weight, bias, padding=(kh // 2, kw // 2), groups=h * d)
    yw = yw.reshape(B, nw, h, d, wh * ww).permute(0, 2, 1, 4, 3)
    return from_windows(yw, (H, W), window_size, window_offset)
