"""ops.window_attention_2d: the reference against a hand-written definition, the Triton path
against the reference (forward and backward), input validation and FLOP counting (backend
selection: test_backend.py). The checks every op shares (opcheck, torch.compile, fp16 / bf16 in
both padding modes, partial gradients, empty batch, fx, fvcore, ...) run from op_cases.py in
test_op_contract.py.

Shapes stay tiny: without a GPU the Triton path runs in the interpreter (~ms per program).
"""
import math

import pytest
import torch

import ops
from ops import _triton_blocksparse as tri
from harness import DEVICE, assert_backends_match, fvcore_totals


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def naive_window_attention(q, k, v, window_size, window_offset, padding, scale):
    """The op spelled out: zero-pad the grid by hand, loop over windows, explicit softmax."""
    B, h, H, W, _ = q.shape
    if window_size is None:
        window_size, window_offset = (H, W), (0, 0)
    (wh, ww), (oy, ox) = window_size, window_offset
    nwy, nwx = math.ceil((H + oy) / wh), math.ceil((W + ox) / ww)

    def pad(t):
        out = t.new_zeros(B, h, nwy * wh, nwx * ww, t.shape[-1])
        out[:, :, oy:oy + H, ox:ox + W] = t
        return out

    real = torch.zeros(nwy * wh, nwx * ww, dtype=torch.bool, device=q.device)
    real[oy:oy + H, ox:ox + W] = True
    qp, kp, vp = pad(q), pad(k), pad(v)
    out = qp.new_zeros(B, h, nwy * wh, nwx * ww, v.shape[-1])
    for i in range(nwy):
        for j in range(nwx):
            ys, xs = slice(i * wh, (i + 1) * wh), slice(j * ww, (j + 1) * ww)
            qw, kw, vw = (t[:, :, ys, xs].reshape(B, h, wh * ww, -1) for t in (qp, kp, vp))
            logits = qw @ kw.transpose(-1, -2) * scale
            if padding == "masked":
                logits = logits.masked_fill(~real[ys, xs].reshape(-1), float("-inf"))
            out[:, :, ys, xs] = (logits.softmax(-1) @ vw).reshape(B, h, wh, ww, -1)
    return out[:, :, oy:oy + H, ox:ox + W]


# --------------------------------------------------------------------------- reference pinned


@pytest.mark.parametrize("padding", ["zeros", "masked"])
@pytest.mark.parametrize("grid, window, offset", [
    ((8, 8), (4, 4), (0, 0)),
    ((7, 10), (4, 4), (0, 0)),      # partial windows at the end
    ((7, 10), (4, 4), (3, 1)),      # arbitrary offsets
    ((5, 6), (8, 8), (1, 1)),       # one window larger than the grid
    ((6, 9), (6, 2), (0, 1)),       # vertical stripes
    ((6, 9), (1, 9), (0, 0)),       # 1-row stripes
    ((6, 9), None, (0, 0)),         # full grid
])
@pytest.mark.parametrize("d_v", [5, 8])  # d_qk != d_v and == d_v take different PyTorch paths
def test_reference_matches_naive_definition(grid, window, offset, padding, d_v):
    H, W = grid
    q, k, v = (_randn(2, 2, H, W, d, dtype=torch.float64, seed=s)
               for d, s in ((8, 1), (8, 2), (d_v, 3)))
    out = ops.window_attention_2d(q, k, v, window, window_offset=offset, padding=padding,
                                  backend="reference")
    expected = naive_window_attention(q, k, v, window, offset, padding, 8 ** -0.5)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_reference_zeros_padding_differs_from_masked():
    # Guards the test above against a naive definition that ignores `padding`.
    q, k, v = (_randn(1, 1, 5, 5, 8, dtype=torch.float64, seed=s) for s in range(3))
    z = ops.window_attention_2d(q, k, v, (4, 4), padding="zeros", backend="reference")
    m = ops.window_attention_2d(q, k, v, (4, 4), padding="masked", backend="reference")
    assert (z - m).abs().max() > 1e-3
    assert torch.allclose(z[:, :, :4, :4], m[:, :, :4, :4])  # the full window is unaffected


def test_reference_full_grid_is_dense_attention():
    q, k, v = (_randn(2, 2, 5, 7, 16, dtype=torch.float64, seed=s) for s in range(3))
    out = ops.window_attention_2d(q, k, v, None, scale=0.3, backend="reference")
    flat = [t.reshape(2, 2, 35, 16) for t in (q, k, v)]
    dense = ((flat[0] @ flat[1].transpose(-1, -2) * 0.3).softmax(-1) @ flat[2]).reshape(out.shape)
    torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-10)


# --------------------------------------------------------------------------- triton vs reference


def _qkv_inputs(B, heads, H, W, d_qk, d_v=None, dtype=torch.float32):
    d_v = d_qk if d_v is None else d_v
    return lambda: (_randn(B, heads, H, W, d_qk, dtype=dtype, seed=1),
                    _randn(B, heads, H, W, d_qk, dtype=dtype, seed=2),
                    _randn(B, heads, H, W, d_v, dtype=dtype, seed=3))


def _window_op(window, offset=(0, 0), padding="zeros", scale=None):
    def op(q, k, v, backend):
        return ops.window_attention_2d(q, k, v, window, window_offset=offset, padding=padding,
                                       scale=scale, backend=backend)
    return op


CASES = {
    # name: (B, heads, (H, W), d_qk, d_v, window, offset)
    "divisible": (2, 2, (8, 8), 16, 16, (4, 4), (0, 0)),
    "partial_windows": (1, 2, (7, 10), 16, 16, (4, 4), (0, 0)),
    "window_larger_than_grid": (2, 1, (5, 6), 8, 8, (8, 8), "centered"),
    "stripes_vertical": (1, 2, (10, 10), 16, 16, (10, 3), "centered"),
    "stripes_horizontal": (1, 2, (10, 10), 16, 16, (3, 10), "centered"),
    "one_row_stripes": (1, 1, (6, 12), 32, 32, (1, 12), (0, 0)),
    "full_grid_16x16": (1, 2, (16, 16), 32, 32, None, (0, 0)),
    "full_grid_odd": (2, 1, (9, 11), 8, 8, None, (0, 0)),
    "centered_offsets": (2, 1, (7, 9), 16, 16, (4, 4), "centered"),
    "offsets_3_2": (1, 1, (9, 7), 16, 16, (4, 4), (3, 2)),
    "d_v_larger": (1, 2, (6, 6), 8, 32, (3, 3), (0, 0)),
    "d_v_smaller": (1, 1, (7, 5), 32, 8, (4, 4), "centered"),
}


def _resolve_offset(grid, window, offset):
    return ops.centered_window_offset(grid, window) if offset == "centered" else offset


@pytest.mark.parametrize("padding", ["zeros", "masked"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case, padding):
    B, heads, grid, d_qk, d_v, window, offset = CASES[case]
    offset = _resolve_offset(grid, window, offset)
    assert_backends_match(_window_op(window, offset, padding),
                          _qkv_inputs(B, heads, *grid, d_qk, d_v))


@pytest.mark.parametrize("padding", ["zeros", "masked"])
@pytest.mark.parametrize("grid, window, offset", [
    ((9, 11), None, (0, 0)),       # 99 tokens: 7 query and key blocks, the last partial
    ((5, 6), (8, 8), (3, 1)),      # first key block lies entirely in the top padding
])
def test_triton_multi_block_windows(grid, window, offset, padding, monkeypatch):
    # Force 16-token tiles so windows span several query and key blocks: exercises the online
    # softmax rescaling, fully padded key blocks and the backward's block loops.
    monkeypatch.setattr(tri, "_BLOCK_CAP", 16)
    assert_backends_match(_window_op(window, offset, padding), _qkv_inputs(1, 1, *grid, 16))


def test_triton_strided_qkv_views_cswin_layout():
    """q/k/v as strided views of one qkv projection, heads split between the two stripe
    orientations as in CSWin; gradients flow back into the qkv tensor."""
    B, H, W, heads, d, sw = 2, 8, 10, 2, 16, 3

    def op(qkv, backend):
        q, k, v = qkv.view(B, H, W, 3, heads, d).permute(3, 0, 4, 1, 2, 5)
        assert not q.is_contiguous()
        outs = []
        for hs, window in ((slice(0, 1), (H, sw)), (slice(1, 2), (sw, W))):
            outs.append(ops.window_attention_2d(
                q[:, hs], k[:, hs], v[:, hs], window,
                window_offset=ops.centered_window_offset((H, W), window), backend=backend))
        out = torch.cat(outs, 1)
        return out.permute(0, 2, 3, 1, 4).reshape(B, H * W, heads * d)

    assert_backends_match(op, lambda: _randn(B, H * W, 3 * heads * d))


def test_triton_output_storage_is_token_major():
    q, k, v = _qkv_inputs(1, 2, 6, 6, 16)()
    out = ops.window_attention_2d(q, k, v, (3, 3), backend="triton")
    assert out.shape == (1, 2, 6, 6, 16)
    assert out.permute(0, 2, 3, 1, 4).is_contiguous()
    assert out.permute(0, 2, 3, 1, 4).reshape(1, 36, 32).data_ptr() == out.data_ptr()


@pytest.mark.parametrize("which", [0, 2])
def test_triton_partial_requires_grad_and_no_grad(which, monkeypatch):
    # 16-token blocks: the 5x6 grid as one window spans two key blocks, so dQ is not fused into
    # the dK/dV pass and need_dq / need_dkdv select separate kernels. Windows of one key block
    # (fused dQ) get the same check in test_op_contract.py (its window_attention_2d case).
    monkeypatch.setattr(tri, "_BLOCK_CAP", 16)
    window = None
    inputs = list(_qkv_inputs(1, 1, 5, 6, 16)())
    x = inputs[which].requires_grad_(True)
    out = ops.window_attention_2d(*inputs, window, backend="triton")
    (gx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    ref = ops.window_attention_2d(*inputs, window, backend="reference")
    (gx_ref,) = torch.autograd.grad(ref, x, torch.ones_like(ref))
    torch.testing.assert_close(gx, gx_ref, atol=5e-5, rtol=1e-4)
    q, k, v = inputs
    with torch.no_grad():
        torch.testing.assert_close(ops.window_attention_2d(q, k, v, window, backend="triton"),
                                   ref.detach(), atol=2e-5, rtol=1e-4)


def test_triton_custom_scale():
    assert_backends_match(_window_op((4, 4), scale=0.71), _qkv_inputs(1, 1, 6, 6, 8))


# --------------------------------------------------------------------------- unsupported inputs


def test_triton_rejects_head_dim_above_256():
    q, k, v = _qkv_inputs(1, 1, 2, 2, 257, d_v=16)()
    with pytest.raises(ValueError, match="head dims"):
        ops.window_attention_2d(q, k, v, (2, 2), backend="triton")


# --------------------------------------------------------------------------- input validation


def _good():
    return _qkv_inputs(1, 1, 4, 4, 8)()


@pytest.mark.parametrize("mutate, kwargs, error, match", [
    (lambda q, k, v: (q[0], k, v), {}, ValueError, "5-D"),
    (lambda q, k, v: (q, k, v.unsqueeze(0)), {}, ValueError, "5-D"),
    (lambda q, k, v: (q, k.double(), v), {}, TypeError, "share one dtype"),
    (lambda q, k, v: (q.long(), k.long(), v.long()), {}, TypeError, "floating-point"),
    (lambda q, k, v: (q, k[..., :4], v), {}, ValueError, "same shape"),
    (lambda q, k, v: (q, k, v[:, :, :2]), {}, ValueError, "must match q"),
    (lambda q, k, v: (q, k, v), {"window_offset": (2, 0)}, ValueError, "window_offset"),
    (lambda q, k, v: (q, k, v), {"window_offset": (0, -1)}, ValueError, "window_offset"),
    (lambda q, k, v: (q, k, v), {"window_offset": (0, 0, 0)}, ValueError, "window_offset"),
    (lambda q, k, v: (q, k, v), {"window_size": (0, 2)}, ValueError, "window_size"),
    (lambda q, k, v: (q, k, v), {"padding": "reflect"}, ValueError, "padding"),
])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_input_validation(mutate, kwargs, error, match, backend):
    q, k, v = mutate(*_good())
    kwargs = {"window_size": (2, 2), **kwargs}
    with pytest.raises(error, match=match):
        ops.window_attention_2d(q, k, v, backend=backend, **kwargs)


# --------------------------------------------------------------------------- FLOP counting


def test_fvcore_counts_cswin_alike():
    """A whole CSWin (stripes of every width, the full grid, the SDPA handle for the rest) counts
    the same on both paths (the op alone: test_op_contract.py)."""
    import timm

    import backbones  # noqa: F401  (registers the zoo's models with timm)

    model = timm.create_model("cswin_tiny_224", embed_dim=16, depths=(1, 1, 1, 1),
                              num_heads=(2, 2, 4, 4), split_sizes=(1, 2, 7, None)).eval()
    totals = fvcore_totals(model, torch.randn(1, 3, 72, 96))
    assert totals["reference"] == totals["triton"] > 0


def test_window_attention_macs_by_hand():
    # 2 heads, 7x5 grid, windows 4x2 with offset (1, 0): 2 x 3 windows of 8 tokens.
    assert ops.window_attention_macs((1, 2, 7, 5, 16), (1, 2, 7, 5, 8), (4, 2), (1, 0)) \
        == 1 * 2 * 6 * 8 * 8 * (16 + 8)
    assert ops.flops.sdpa_macs((2, 3, 10, 16), (2, 3, 12, 16), (2, 3, 12, 8)) == 6 * 10 * 12 * 24
    # broadcast batch dims, and grouped-query heads (q's head count)
    assert ops.flops.sdpa_macs((2, 4, 3, 10, 8), (1, 4, 3, 12, 8), (1, 4, 3, 12, 16)) \
        == 2 * 4 * 3 * 10 * 12 * (8 + 16)
    assert ops.flops.sdpa_macs((2, 8, 10, 8), (2, 2, 12, 8), (2, 2, 12, 8)) == 2 * 8 * 10 * 12 * 16
