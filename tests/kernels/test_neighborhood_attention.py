"""ops.neighborhood_attention_2d: the reference against a naive per-query loop written from NATTEN's
documented neighborhood rule (clamped windows on the dilation sub-grid), the Triton path against the reference (forward and backward) and input validation. The checks every op shares (opcheck,
torch.compile, fp16 / bf16, partial gradients, empty batch, fx, fvcore, ...) run from op_cases.py
in test_op_contract.py.

Shapes stay tiny: without a GPU the Triton path runs in the interpreter (~ms per program).
"""
import pytest
import torch

import ops
from ops.neighborhood_attention import neighborhood_index, neighborhood_starts
from harness import DEVICE, assert_backends_match


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def natten_window_start(index, length, kernel_size, dilation):
    """First key of query ``index``'s neighborhood, brute force from the documented rule: the
    query lives on the sub-grid of positions congruent to it modulo ``dilation``; on that sub-grid
    its window is the ``kernel_size`` consecutive positions centred on it, shifted (never
    shrunk) to stay inside the sub-grid. (Checked in development against NATTEN's own
    get_window_start for every case below.)"""
    subgrid = list(range(index % dilation, length, dilation))
    position = subgrid.index(index)
    first = min(max(position - kernel_size // 2, 0), len(subgrid) - kernel_size)
    return subgrid[first]


def naive_neighborhood_attention(q, k, v, kernel_size, dilation, scale):
    """One query at a time: list its kh*kw keys from NATTEN's window start, explicit softmax."""
    B, heads, H, W, _ = q.shape
    (kh, kw), (dh, dw) = kernel_size, dilation
    out = q.new_zeros(B, heads, H, W, v.shape[-1])
    for i in range(H):
        si = natten_window_start(i, H, kh, dh)
        rows = [si + a * dh for a in range(kh)]
        for j in range(W):
            sj = natten_window_start(j, W, kw, dw)
            cols = [sj + c * dw for c in range(kw)]
            keys = [(y, x) for y in rows for x in cols]
            assert all(0 <= y < H and 0 <= x < W for y, x in keys)
            assert all(y % dh == i % dh and x % dw == j % dw for y, x in keys)
            kn = torch.stack([k[:, :, y, x] for y, x in keys], dim=2)  # (B, heads, K, d)
            vn = torch.stack([v[:, :, y, x] for y, x in keys], dim=2)
            logits = torch.einsum("bhd,bhkd->bhk", q[:, :, i, j], kn) * scale
            out[:, :, i, j] = torch.einsum("bhk,bhkd->bhd", logits.softmax(-1), vn)
    return out


# --------------------------------------------------------------------------- reference pinned


@pytest.mark.parametrize("length, kernel, dilation", [
    (7, 3, 1), (7, 7, 1), (10, 5, 1), (10, 3, 2), (11, 3, 2), (11, 5, 2), (12, 3, 3), (13, 3, 4),
    (9, 3, 3), (8, 1, 8),
])
def test_window_starts_match_natten_rule(length, kernel, dilation):
    starts = neighborhood_starts(length, kernel, dilation)
    assert starts.tolist() == [natten_window_start(i, length, kernel, dilation)
                               for i in range(length)]
    idx = neighborhood_index(length, kernel, dilation)
    assert int(idx.min()) >= 0 and int(idx.max()) < length
    # the query itself is always among its keys
    assert all(i in idx[i].tolist() for i in range(length))


@pytest.mark.parametrize("grid, kernel, dilation", [
    ((7, 7), (3, 3), (1, 1)),
    ((9, 8), (5, 5), (1, 1)),      # borders: windows shifted inwards
    ((8, 11), (3, 7), (1, 1)),     # rectangular kernel
    ((10, 9), (3, 3), (2, 2)),     # dilation 2, odd and even sub-grid sizes
    ((11, 12), (5, 3), (2, 3)),    # per-axis dilation
    ((6, 5), (5, 5), (1, 1)),      # kernel = grid along W only
    ((5, 7), (1, 3), (5, 2)),      # kernel * dilation = grid
])
def test_reference_matches_naive_definition(grid, kernel, dilation):
    H, W = grid
    q, k, v = (_randn(2, 2, H, W, d, dtype=torch.float64, seed=s)
               for d, s in ((8, 1), (8, 2), (5, 3)))
    out = ops.neighborhood_attention_2d(q, k, v, kernel, dilation=dilation, backend="reference")
    expected = naive_neighborhood_attention(q, k, v, kernel, dilation, 8 ** -0.5)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_reference_strided_views_and_scale():
    # q, k, v as views of one (B, H, W, 3, heads, d) projection output
    B, heads, H, W, d = 2, 3, 7, 6, 8
    qkv = _randn(B, H, W, 3, heads, d, dtype=torch.float64, seed=4)
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
    assert not q.is_contiguous()
    out = ops.neighborhood_attention_2d(q, k, v, 3, dilation=2, scale=0.7, backend="reference")
    expected = naive_neighborhood_attention(q, k, v, (3, 3), (2, 2), 0.7)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_reference_kernel_equal_to_grid_is_full_attention():
    q, k, v = (_randn(2, 2, 5, 7, 16, dtype=torch.float64, seed=s) for s in range(3))
    out = ops.neighborhood_attention_2d(q, k, v, (5, 7), scale=0.3, backend="reference")
    flat = [t.reshape(2, 2, 35, 16) for t in (q, k, v)]
    dense = ((flat[0] @ flat[1].transpose(-1, -2) * 0.3).softmax(-1) @ flat[2]).reshape(out.shape)
    torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-10)


def test_reference_kernel_1_is_identity_on_values():
    q, k, v = (_randn(1, 2, 4, 5, 8, dtype=torch.float64, seed=s) for s in range(3))
    out = ops.neighborhood_attention_2d(q, k, v, 1, backend="reference")
    torch.testing.assert_close(out, v)


def test_reference_chunked_rows_match(monkeypatch):
    from ops import neighborhood_attention as na
    q, k, v = (_randn(1, 2, 9, 7, 8, dtype=torch.float64, seed=s) for s in range(3))
    whole = na.neighborhood_attention_2d(q, k, v, 3, dilation=2, backend="reference")
    monkeypatch.setattr(na, "_REFERENCE_CHUNK_ELEMENTS", 1)  # one query row per chunk
    chunked = na.neighborhood_attention_2d(q, k, v, 3, dilation=2, backend="reference")
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)


def test_reference_gradients_gradcheck():
    q, k, v = (_randn(1, 1, 5, 6, 3, dtype=torch.float64, seed=s).requires_grad_()
               for s in range(3))
    torch.autograd.gradcheck(
        lambda q, k, v: ops.neighborhood_attention_2d(q, k, v, (3, 5), backend="reference"),
        (q, k, v))


def test_validation():
    q = _randn(1, 1, 6, 8, 4)
    na = ops.neighborhood_attention_2d
    with pytest.raises(ValueError, match="odd"):
        na(q, q, q, 4, backend="reference")
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        na(q, q, q, 7, backend="reference")          # 7 > H = 6
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        na(q, q, q, 3, dilation=3, backend="reference")  # 9 > 8 along W
    with pytest.raises(ValueError, match="dilation"):
        na(q, q, q, 3, dilation=0, backend="reference")
    with pytest.raises(ValueError, match="pair"):
        na(q, q, q, (3, 3, 3), backend="reference")
    with pytest.raises(ValueError, match="5-D"):
        na(q[0], q[0], q[0], 3, backend="reference")
    with pytest.raises(ValueError, match="same shape"):
        na(q, q[..., :2], q, 3, backend="reference")
    with pytest.raises(TypeError, match="dtype"):
        na(q, q.double(), q, 3, backend="reference")
    # the largest allowed dilation (kernel * dilation == grid) is accepted
    assert na(q, q, q, 3, dilation=(2, 2), backend="reference").shape == q.shape


def test_macs_by_hand():
    assert ops.neighborhood_attention_macs((2, 3, 7, 9, 16), (2, 3, 7, 9, 8), (3, 5)) \
        == 2 * 3 * 7 * 9 * 15 * 24
    assert ops.neighborhood_attention_macs((1, 1, 7, 7, 8), (1, 1, 7, 7, 8), 7) \
        == 49 * 49 * 16


# --------------------------------------------------------------------------- triton vs reference


def _qkv_inputs(B, heads, H, W, d_qk, d_v=None, dtype=torch.float32):
    d_v = d_qk if d_v is None else d_v
    return lambda: (_randn(B, heads, H, W, d_qk, dtype=dtype, seed=1),
                    _randn(B, heads, H, W, d_qk, dtype=dtype, seed=2),
                    _randn(B, heads, H, W, d_v, dtype=dtype, seed=3))


def _na_op(kernel, dilation=1, scale=None):
    def op(q, k, v, backend):
        return ops.neighborhood_attention_2d(q, k, v, kernel, dilation=dilation, scale=scale,
                                             backend=backend)
    return op


CASES = {
    # name: (B, heads, (H, W), d_qk, d_v, kernel, dilation)
    "k3": (2, 2, (7, 7), 16, 16, 3, 1),
    "k7_borders": (1, 2, (9, 10), 16, 16, 7, 1),
    "rect_kernel": (1, 1, (9, 11), 8, 8, (3, 5), 1),
    "dilation_2": (1, 2, (10, 9), 16, 16, 3, 2),
    "dilation_per_axis": (1, 1, (12, 13), 16, 16, (5, 3), (2, 3)),
    "kernel_times_dilation_eq_grid": (1, 1, (6, 9), 16, 16, 3, (2, 3)),
    "kernel_eq_grid": (2, 1, (5, 7), 16, 16, (5, 7), 1),
    "kernel_1": (1, 1, (4, 6), 16, 16, 1, 1),
    "d_v_larger": (1, 2, (6, 6), 8, 32, 3, 1),
    "d_v_smaller": (1, 1, (7, 5), 32, 8, (3, 5), 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case):
    B, heads, grid, d_qk, d_v, kernel, dilation = CASES[case]
    assert_backends_match(_na_op(kernel, dilation), _qkv_inputs(B, heads, *grid, d_qk, d_v))


@pytest.mark.parametrize("kernel, dilation", [(3, 1), ((5, 3), 1), (3, 2), ((3, 5), (3, 2))])
def test_triton_small_tiles(monkeypatch, kernel, dilation):
    # 4x4 query and key tiles and 16-key blocks: many tiles per sub-grid, so the forward's key
    # rectangles and the backward's analytic query ranges are exercised away from the borders.
    from ops import _triton_blocksparse as family
    from ops import _triton_neighborhood_attention as tri
    monkeypatch.setattr(tri, "_TILE_CAP", 4)
    monkeypatch.setattr(family, "_BLOCK_CAP", 16)
    assert_backends_match(_na_op(kernel, dilation), _qkv_inputs(1, 1, 15, 14, 16, 8))


def test_triton_strided_qkv_views():
    B, heads, H, W, d = 2, 2, 7, 9, 16

    def op(qkv, backend):
        q, k, v = qkv.view(B, H, W, 3, heads, d).permute(3, 0, 4, 1, 2, 5).unbind(0)
        return ops.neighborhood_attention_2d(q, k, v, (3, 5), dilation=(2, 1), scale=0.2,
                                             backend=backend)

    assert_backends_match(op, lambda: _randn(B, H, W, 3 * heads * d, seed=5))
