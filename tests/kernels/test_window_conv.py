"""ops.window_depthwise_conv2d (CSWin's LePE) against a per-window loop written from its
definition: a depthwise conv run on each window alone, zero-padded at the window's borders."""
import pytest
import torch
import torch.nn.functional as F

import ops


def per_window_definition(x, weight, bias, window_size, window_offset):
    B, h, H, W, d = x.shape
    wh, ww = window_size or (H, W)
    oy, ox = window_offset
    out = torch.zeros_like(x)
    maps = x.permute(0, 1, 4, 2, 3).reshape(B, h * d, H, W)
    for y0 in range(-oy, H, wh):
        for x0 in range(-ox, W, ww):
            ys, xs = slice(max(y0, 0), min(y0 + wh, H)), slice(max(x0, 0), min(x0 + ww, W))
            window = torch.zeros(B, h * d, wh, ww, dtype=x.dtype)
            window[:, :, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = maps[:, :, ys, xs]
            y = F.conv2d(window, weight, bias, padding=(weight.shape[-2] // 2, weight.shape[-1] // 2),
                         groups=h * d)
            y = y[:, :, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
            out[:, :, ys, xs] = y.reshape(B, h, d, *y.shape[-2:]).permute(0, 1, 3, 4, 2)
    return out


@pytest.mark.parametrize("grid,window,centred", [
    ((7, 9), None, False),        # full grid: no partition
    ((7, 9), (7, 1), False),      # vertical stripes of 1: no partition
    ((7, 9), (1, 9), False),      # horizontal stripes of 1: no partition
    ((8, 9), (8, 2), True),       # stripes of 2 with centred padding: partition
    ((11, 17), (7, 17), True),    # horizontal stripes of 7, padded
    ((6, 6), (7, 7), True),       # one window larger than the grid
    ((7, 9), (3, 4), False),      # square-ish windows, end padding
])
def test_window_depthwise_conv2d_matches_definition(grid, window, centred):
    torch.manual_seed(0)
    h, d = 2, 3
    qkv = torch.randn(2, *grid, 3, h, d)  # v as a strided view, as models pass it
    x = qkv[..., 2, :, :].permute(0, 3, 1, 2, 4)
    weight, bias = torch.randn(h * d, 1, 3, 3), torch.randn(h * d)
    offset = ops.centered_window_offset(grid, window) if (window and centred) else (0, 0)
    got = ops.window_depthwise_conv2d(x, weight, bias, window, window_offset=offset)
    want = per_window_definition(x, weight, bias, window, offset)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_window_depthwise_conv2d_gradients_flow():
    x = torch.randn(1, 2, 5, 6, 4, requires_grad=True)
    weight = torch.randn(8, 1, 3, 3, requires_grad=True)
    for window in (None, (5, 1), (5, 2)):
        ops.window_depthwise_conv2d(x, weight, None, window).sum().backward()
    assert x.grad is not None and weight.grad is not None


def test_window_depthwise_conv2d_errors():
    x = torch.randn(1, 2, 5, 6, 4)
    with pytest.raises(ValueError, match="depthwise weight"):
        ops.window_depthwise_conv2d(x, torch.randn(4, 1, 3, 3), None, (5, 1))
    with pytest.raises(ValueError, match="odd"):
        ops.window_depthwise_conv2d(x, torch.randn(8, 1, 2, 2), None, (5, 1))
    with pytest.raises(ValueError, match="B, heads, H, W, d"):
        ops.window_depthwise_conv2d(x[0], torch.randn(8, 1, 3, 3), None, (5, 1))
