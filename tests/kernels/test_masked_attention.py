"""ops.masked_attention (Sparsifiner's sparse attention): the reference against a naive explicit
softmax in float64 (Sparsifiner's ``masked_fill(~mask, -inf)`` + softmax + ``nan_to_num``), the
mask helpers, the Triton path against the reference (forward and backward, bool and packed
masks) and input validation. The checks every op shares (opcheck, torch.compile, fp16 / bf16,
partial gradients, empty batch, fx, fvcore, ...) run from op_cases.py in test_op_contract.py.

Shapes stay tiny: without a GPU the Triton path runs in the interpreter (~ms per program).
"""
import math

import pytest
import torch

import ops
from harness import DEVICE, assert_backends_match


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def _mask(*shape, density=0.3, seed=0, empty_rows=()):
    gen = torch.Generator().manual_seed(seed + 100)
    m = torch.rand(*shape, generator=gen) < density
    for idx in empty_rows:  # (b, h, row) indices into the mask's own (possibly size-1) dims
        m[idx] = False
    return m.to(DEVICE)


def naive_masked_attention(q, k, v, mask, scale):
    """Sparsifiner's DeiT ``Attention.forward`` on explicit tensors: logits, -inf where the mask
    is False, softmax, nan_to_num (fully-masked rows -> 0), times V."""
    attn = (q @ k.transpose(-1, -2)) * scale
    attn = attn.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.nan_to_num(attn) @ v


# --------------------------------------------------------------------------- mask helpers


@pytest.mark.parametrize("lk", [1, 7, 8, 9, 50, 197])
def test_pack_unpack_roundtrip(lk):
    m = _mask(2, 3, 5, lk, density=0.5)
    packed = ops.pack_mask(m)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 5, math.ceil(lk / 8))
    torch.testing.assert_close(ops.unpack_mask(packed, lk), m)
    # little bit order, like numpy.packbits(..., bitorder="little")
    one = torch.zeros(1, 1, 1, lk, dtype=torch.bool)
    one[..., lk - 1] = True
    assert ops.pack_mask(one)[0, 0, 0, (lk - 1) // 8].item() == 1 << ((lk - 1) % 8)


def test_topk_mask_is_sparsifiner_scatter():
    scores = _randn(2, 3, 11, 19, seed=7)
    idx = scores.topk(5, dim=-1, sorted=False).indices
    # Sparsifiner: zeros(...).scatter_(-1, topk_idx, 1.0), then used as a bool mask
    official = torch.zeros_like(scores).scatter_(-1, idx, 1.0).bool()
    torch.testing.assert_close(ops.topk_mask(idx, 19, packed=False), official)
    torch.testing.assert_close(ops.topk_mask(idx, 19), ops.pack_mask(official))
    # repeated indices are kept once
    rep = torch.tensor([[[[2, 2, 0]]]])
    assert ops.topk_mask(rep, 4, packed=False).tolist() == [[[[True, False, True, False]]]]
    with pytest.raises(ValueError, match="lie in"):
        ops.topk_mask(rep, 2)
    with pytest.raises(TypeError, match="integer"):
        ops.topk_mask(rep.float(), 4)


# --------------------------------------------------------------------------- reference pinned


@pytest.mark.parametrize("mask_batch, mask_heads", [(2, 3), (1, 3), (2, 1), (1, 1)])
@pytest.mark.parametrize("packed", [False, True])
def test_reference_matches_naive(mask_batch, mask_heads, packed):
    q = _randn(2, 3, 13, 8, dtype=torch.float64, seed=1)
    k = _randn(2, 3, 17, 8, dtype=torch.float64, seed=2)
    v = _randn(2, 3, 17, 5, dtype=torch.float64, seed=3)   # d_v != d_qk, Lq != Lk
    m = _mask(mask_batch, mask_heads, 13, 17, empty_rows=[(0, 0, 4)])
    mask = ops.pack_mask(m) if packed else m
    out = ops.masked_attention(q, k, v, mask, backend="reference")
    expected = naive_masked_attention(q, k, v, m, 8 ** -0.5)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    empty = out[0, 0, 4] if mask_batch == 2 else out[:, 0, 4]
    if mask_heads == 1:
        empty = out[0, :, 4] if mask_batch == 2 else out[:, :, 4]
    assert empty.abs().max() == 0  # the fully-masked row, broadcast like the mask


def test_reference_full_mask_is_dense_attention():
    q, k, v = (_randn(2, 2, 9, 16, dtype=torch.float64, seed=s) for s in range(3))
    full = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    out = ops.masked_attention(q, k, v, full, scale=0.3, backend="reference")
    dense = ((q @ k.transpose(-1, -2)) * 0.3).softmax(-1) @ v
    torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-10)


def test_reference_strided_views_and_scale():
    # q, k, v as views of one (B, N, 3, heads, d) projection output, as timm's Attention does
    B, N, heads, d = 2, 11, 3, 8
    qkv = _randn(B, N, 3, heads, d, dtype=torch.float64, seed=4)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    m = _mask(B, heads, N, N, seed=3)
    out = ops.masked_attention(q, k, v, m, scale=0.7, backend="reference")
    torch.testing.assert_close(out, naive_masked_attention(q, k, v, m, 0.7),
                               atol=1e-12, rtol=1e-10)


def test_reference_fully_masked_rows_zero_grads():
    q, k, v = (_randn(1, 2, 6, 4, dtype=torch.float64, seed=s).requires_grad_()
               for s in range(3))
    m = _mask(1, 2, 6, 6, density=0.5, empty_rows=[(0, 1, 2), (0, 0, 5)])
    m[0, 0, 0] = True  # key-only usage elsewhere is irrelevant
    out = ops.masked_attention(q, k, v, m, backend="reference")
    assert not out.isnan().any()
    g = torch.autograd.grad(out.square().sum() + out.sum(), (q, k, v))
    assert all(not t.isnan().any() for t in g)
    assert g[0][0, 1, 2].abs().max() == 0 and g[0][0, 0, 5].abs().max() == 0
    # a key that only the empty rows could see gets no gradient
    m2 = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    m2[..., :5] = True
    m2[..., 3, :] = False
    out = ops.masked_attention(q, k, v, m2, backend="reference")
    gk, gv = torch.autograd.grad(out.sum(), (k, v))
    assert gk[..., 5, :].abs().max() == 0 and gv[..., 5, :].abs().max() == 0


def test_reference_gradients_gradcheck():
    q, k, v = (_randn(1, 2, 5, 3, dtype=torch.float64, seed=s).requires_grad_()
               for s in range(3))
    m = _mask(1, 2, 5, 5, density=0.5, empty_rows=[(0, 0, 1)])
    torch.autograd.gradcheck(
        lambda q, k, v: ops.masked_attention(q, k, v, m, backend="reference"), (q, k, v))


def test_reference_no_keys():
    q = _randn(1, 2, 4, 8)
    k, v = _randn(1, 2, 0, 8), _randn(1, 2, 0, 3)
    m = torch.zeros(1, 2, 4, 0, dtype=torch.bool)
    for backend in ("reference", "triton"):
        out = ops.masked_attention(q, k, v, m, backend=backend)
        assert out.shape == (1, 2, 4, 3) and out.abs().max() == 0


def test_validation():
    q = _randn(2, 3, 5, 8)
    k = _randn(2, 3, 7, 8)
    m = torch.ones(2, 3, 5, 7, dtype=torch.bool)
    ma = ops.masked_attention
    with pytest.raises(ValueError, match="4-D"):
        ma(q[0], k[0], k[0], m, backend="reference")
    with pytest.raises(ValueError, match="k must be"):
        ma(q, k[..., :4], k, m, backend="reference")
    with pytest.raises(ValueError, match="v must match"):
        ma(q, k, k[:, :, :6], m, backend="reference")
    with pytest.raises(TypeError, match="dtype"):
        ma(q, k.double(), k, m, backend="reference")
    with pytest.raises(TypeError, match="bool"):
        ma(q, k, k, m.long(), backend="reference")
    with pytest.raises(ValueError, match="mask of dtype"):
        ma(q, k, k, m[..., :6], backend="reference")            # wrong Lk
    with pytest.raises(ValueError, match="mask of dtype"):
        ma(q, k, k, m.expand(2, 3, 5, 7)[:, :2], backend="reference")  # heads 2 vs 3
    with pytest.raises(ValueError, match="mask of dtype"):
        ma(q, k, k, ops.pack_mask(m)[..., :0], backend="reference")  # packed needs ceil(7/8)
    with pytest.raises(ValueError, match="4-D"):
        ma(q, k, k, m[0], backend="reference")
    with pytest.raises(ValueError, match="pack"):
        ops.masked_attention(q, k, k, None, backend="reference")
    # broadcast masks are accepted
    assert ma(q, k, k, m[:1, :1], backend="reference").shape == (2, 3, 5, 8)


def test_macs_by_hand():
    assert ops.masked_attention_macs((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 8)) \
        == 2 * 3 * 7 * 9 * 24
    # Sparsifiner-S layer at 224: N = 197, h = 6, d = 64, budget 50, cls row dense
    macs = ops.masked_attention_macs((1, 6, 197, 64), (1, 6, 197, 64), (1, 6, 197, 64),
                                     keys_per_query=50, dense_rows=1)
    assert macs == 2 * 6 * 64 * (197 + 196 * 50)  # the spec's 2 h d (N + (N-1) b) = 7.7 M


# --------------------------------------------------------------------------- triton vs reference


def _inputs(B, heads, lq, lk, d_qk, d_v=None, dtype=torch.float32):
    d_v = d_qk if d_v is None else d_v
    return lambda: (_randn(B, heads, lq, d_qk, dtype=dtype, seed=1),
                    _randn(B, heads, lk, d_qk, dtype=dtype, seed=2),
                    _randn(B, heads, lk, d_v, dtype=dtype, seed=3))


def _ma_op(mask, scale=None):
    def op(q, k, v, backend):
        return ops.masked_attention(q, k, v, mask, scale=scale, backend=backend)
    return op


CASES = {
    # name: (B, heads, Lq, Lk, d_qk, d_v, mask dims (B|1, heads|1), density)
    "odd_37": (2, 2, 37, 37, 16, 16, (2, 2), 0.25),
    "cross_37x50": (1, 2, 37, 50, 16, 16, (1, 2), 0.3),
    "broadcast_batch_heads": (2, 3, 21, 50, 16, 16, (1, 1), 0.2),
    "d_v_larger": (1, 2, 19, 23, 8, 32, (1, 2), 0.4),
    "d_v_smaller": (1, 1, 29, 31, 32, 8, (1, 1), 0.3),
    "dense_mask": (1, 2, 17, 17, 16, 16, (1, 1), 1.1),
    "very_sparse": (1, 2, 40, 50, 16, 16, (1, 2), 0.03),
}


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case, packed):
    B, heads, lq, lk, d_qk, d_v, (mb, mh), density = CASES[case]
    m = _mask(mb, mh, lq, lk, density=density, empty_rows=[(0, 0, lq // 2)])
    mask = ops.pack_mask(m) if packed else m
    assert_backends_match(_ma_op(mask), _inputs(B, heads, lq, lk, d_qk, d_v))


def test_triton_sparsifiner_like_topk_mask():
    # N = 50 tokens (cls + 49), budget ceil(0.25 * 50) = 13 keys per patch row, cls row dense
    B, heads, N, d = 2, 3, 50, 16
    scores = _randn(B, heads, N - 1, N, seed=9)
    patch_rows = ops.topk_mask(scores.topk(math.ceil(0.25 * N), dim=-1).indices, N)
    cls_row = torch.full((B, heads, 1, patch_rows.shape[-1]), 255, dtype=torch.uint8)
    mask = torch.cat([cls_row.to(DEVICE), patch_rows], dim=2)
    assert ops.unpack_mask(mask, N).sum(-1)[..., 1:].eq(13).all()
    assert_backends_match(_ma_op(mask), _inputs(B, heads, N, N, d))


@pytest.mark.parametrize("packed", [False, True])
def test_triton_small_tiles_skip_empty_tiles(monkeypatch, packed):
    # 16 x 16 tiles: several query and key tiles, and a block-structured mask whose empty
    # (query tile, key tile) pairs are skipped in the forward and both backward kernels.
    from ops import _triton_blocksparse as family
    monkeypatch.setattr(family, "_BLOCK_CAP", 16)
    lq, lk = 50, 45
    m = _mask(1, 2, lq, lk, density=0.3)
    m[..., :16, 16:] = False     # query tile 0 sees only key tile 0
    m[..., 32:48, :32] = False   # query tile 2 sees only key tile 2
    m[..., 48:, :] = False       # the last (partial) query tile is fully masked
    mask = ops.pack_mask(m) if packed else m
    assert_backends_match(_ma_op(mask, scale=0.2), _inputs(2, 2, lq, lk, 16, 8))


def test_triton_strided_qkv_views():
    B, N, heads, d = 2, 37, 2, 16
    m = _mask(B, 1, N, N, seed=5)

    def op(qkv, backend):
        q, k, v = qkv.view(B, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        return ops.masked_attention(q, k, v, m, scale=0.2, backend=backend)

    assert_backends_match(op, lambda: _randn(B, N, 3 * heads * d, seed=5))


def test_triton_output_layout_is_token_major():
    q, k, v = _inputs(2, 3, 9, 9, 16)()
    out = ops.masked_attention(q, k, v, _mask(1, 1, 9, 9, density=0.5), backend="triton")
    assert out.transpose(1, 2).is_contiguous()


def test_triton_fully_masked_rows_zero_grads():
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 20, 20, 16)())
    m = torch.ones(1, 1, 20, 20, dtype=torch.bool)
    m[..., 7, :] = False
    out = ops.masked_attention(q, k, v, m, backend="triton")
    assert out[:, :, 7].abs().max() == 0
    g = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert all(not t.isnan().any() for t in g)
    assert g[0][:, :, 7].abs().max() == 0


def _additive(m, dtype=torch.float32):
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_additive_mask_is_the_bool_mask(dtype):
    """The additive 0 / -inf form gives the bool mask's outputs and gradients, fully-masked rows
    included (0, zero gradients), whatever the mask's float dtype."""
    q, k, v = (_randn(2, 2, 9, 8, dtype=torch.float64, seed=s).requires_grad_() for s in range(3))
    m = _mask(2, 1, 9, 9, density=0.4, empty_rows=[(1, 0, 3)])
    want = ops.masked_attention(q, k, v, m, backend="reference")
    got = ops.masked_attention(q, k, v, _additive(m, dtype), backend="reference")
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    assert got[1, :, 3].abs().max() == 0
    g_want = torch.autograd.grad(want.square().sum(), (q, k, v))
    g_got = torch.autograd.grad(got.square().sum(), (q, k, v))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    with pytest.raises(TypeError, match="additive float"):
        ops.masked_attention(q, k, v, m.to(torch.int32), backend="reference")


def test_triton_additive_mask_matches_reference():
    m = _mask(1, 2, 19, 23, density=0.3, empty_rows=[(0, 0, 5)])
    assert_backends_match(_ma_op(_additive(m)), _inputs(1, 2, 19, 23, 16, 16))
