"""ops.reversed_attention (DependencyViT): the reference against a naive fp64 loop written from the
timm PR #2062 formula (``A_R = softmax(q kᵀ · scale, -1)ᵀ * p * m``, ``out = A_R @ v``), its
gradients (gradcheck), the Triton path against the reference (forward and backward) and input
validation. The checks every op shares (opcheck, torch.compile, fp16 / bf16, partial gradients,
empty batch, fx, fvcore, ...) run from op_cases.py in test_op_contract.py.

Shapes stay tiny: without a GPU the Triton path runs in the interpreter (~ms per program).
"""
import importlib

import pytest
import torch

import ops
from harness import DEVICE, assert_backends_match


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def _rand(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def naive_reversed_attention(q, k, v, w, scale):
    """One (batch, head, child i) at a time: child i's softmax over parents j, then each parent j
    receives A[i, j] · w[i] · v[i]. Also returns the dependency mask Σ_h A_R (parent x child)."""
    B, heads, L, _ = q.shape
    out = q.new_zeros(B, heads, L, v.shape[-1])
    mask = q.new_zeros(B, L, L)
    for b in range(B):
        for h in range(heads):
            for i in range(L):
                logits = torch.stack([q[b, h, i] @ k[b, h, j] for j in range(L)]) * scale
                a = logits.softmax(0)
                for j in range(L):
                    out[b, h, j] += a[j] * w[b, h, i] * v[b, h, i]
                    mask[b, j, i] += a[j] * w[b, h, i]
    return out, mask


def timm_reversed_attention(q, k, v, p, m, scale):
    """Steps 4-5 of the spec's description of ``ReversedAttention.forward`` (attn_drop = 0):
    p (B, H, 1, N), m (B, 1, 1, N)."""
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    attn = attn.transpose(-2, -1) * p * m
    return attn @ v, attn.detach().sum(dim=1)


def _dvit_weights(B, heads, L, dtype=torch.float64, seed=7):
    """Head selector p (softmax over heads, τ = 0.1) and a cumulative message weight m."""
    p = (_randn(B, L, heads, dtype=dtype, seed=seed) / 0.1).softmax(-1).transpose(1, 2)
    m = _rand(B, L, dtype=dtype, seed=seed + 1) * _rand(B, L, dtype=dtype, seed=seed + 2)
    return p, m


# --------------------------------------------------------------------------- reference pinned


@pytest.mark.parametrize("B, heads, L, d_qk, d_v, weighted", [
    (2, 2, 7, 8, 5, True), (1, 3, 10, 4, 4, False), (2, 1, 1, 3, 2, True),
])
def test_reference_matches_naive_definition(B, heads, L, d_qk, d_v, weighted):
    q, k = (_randn(B, heads, L, d_qk, dtype=torch.float64, seed=s) for s in (1, 2))
    v = _randn(B, heads, L, d_v, dtype=torch.float64, seed=3)
    w = _rand(B, heads, L, dtype=torch.float64, seed=4) if weighted else None
    out, mask = ops.reversed_attention(q, k, v, w, scale=0.6, return_scores=True,
                                       backend="reference")
    exp_out, exp_mask = naive_reversed_attention(
        q, k, v, w if weighted else torch.ones(B, heads, L, dtype=torch.float64), 0.6)
    torch.testing.assert_close(out, exp_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(mask, exp_mask, atol=1e-12, rtol=1e-10)
    assert not mask.requires_grad


def test_reference_matches_timm_pr_lines_and_mask_columns():
    B, heads, L, d = 2, 3, 13, 8
    q, k, v = (_randn(B, heads, L, d, dtype=torch.float64, seed=s) for s in range(3))
    p, m = _dvit_weights(B, heads, L)
    out, mask = ops.reversed_attention(q, k, v, p * m[:, None, :], return_scores=True,
                                       backend="reference")
    exp_out, exp_mask = timm_reversed_attention(q, k, v, p[:, :, None, :], m[:, None, None, :],
                                                d ** -0.5)
    torch.testing.assert_close(out, exp_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(mask, exp_mask, atol=1e-12, rtol=1e-10)
    # Spec Sec. 3.7: every column (sending child) of the dependency mask sums to its m.
    torch.testing.assert_close(mask.sum(1), m, atol=1e-12, rtol=1e-10)
    # broadcastable weights: m alone as (B, 1, L) equals m expanded over heads
    torch.testing.assert_close(
        ops.reversed_attention(q, k, v, m[:, None, :], backend="reference"),
        ops.reversed_attention(q, k, v, m[:, None, :].expand(B, heads, L).contiguous(),
                               backend="reference"))


def test_reference_strided_views_and_default_scale():
    B, heads, L, d = 2, 2, 9, 8
    qkv = _randn(B, L, 3, heads, d, dtype=torch.float64, seed=4)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    w = _rand(B, L, heads, dtype=torch.float64, seed=5).transpose(1, 2)
    out = ops.reversed_attention(q, k, v, w, backend="reference")
    torch.testing.assert_close(out, naive_reversed_attention(q, k, v, w, d ** -0.5)[0],
                               atol=1e-12, rtol=1e-10)


def test_reference_chunked_queries_match(monkeypatch):
    # ops.reversed_attention is the function; the module of that name lives in sys.modules.
    ra = importlib.import_module("ops.reversed_attention")
    q, k, v = (_randn(2, 2, 11, 8, dtype=torch.float64, seed=s) for s in range(3))
    w = _rand(2, 2, 11, dtype=torch.float64, seed=3)
    whole = ra.reversed_attention(q, k, v, w, return_scores=True, backend="reference")
    monkeypatch.setattr(ra, "_REFERENCE_CHUNK_ELEMENTS", 1)  # one query per chunk
    chunked = ra.reversed_attention(q, k, v, w, return_scores=True, backend="reference")
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-12)


def test_reference_gradients_gradcheck():
    q, k = (_randn(1, 2, 5, 3, dtype=torch.float64, seed=s).requires_grad_() for s in (0, 1))
    v = _randn(1, 2, 5, 4, dtype=torch.float64, seed=2).requires_grad_()
    w = _rand(1, 2, 5, dtype=torch.float64, seed=3).requires_grad_()
    torch.autograd.gradcheck(
        lambda q, k, v, w: ops.reversed_attention(q, k, v, w, scale=0.8, backend="reference"),
        (q, k, v, w))
    m = _rand(1, 1, 5, dtype=torch.float64, seed=4).requires_grad_()  # broadcast over heads
    torch.autograd.gradcheck(
        lambda q, k, v, m: ops.reversed_attention(q, k, v, m, backend="reference"), (q, k, v, m))


def test_validation():
    q = _randn(1, 2, 6, 4)
    ra = ops.reversed_attention
    with pytest.raises(ValueError, match="4-D"):
        ra(q[0], q[0], q[0], backend="reference")
    with pytest.raises(ValueError, match="same shape"):
        ra(q, q[..., :2], q, backend="reference")
    with pytest.raises(ValueError, match="v must match"):
        ra(q, q, q[:, :, :5], backend="reference")
    with pytest.raises(TypeError, match="dtype"):
        ra(q, q.double(), q, backend="reference")
    with pytest.raises(TypeError, match="floating"):
        ra(q.long(), q.long(), q.long(), backend="reference")
    with pytest.raises(ValueError, match="broadcastable"):
        ra(q, q, q, torch.ones(1, 3, 6), backend="reference")
    with pytest.raises(ValueError, match="broadcastable"):
        ra(q, q, q, torch.ones(1, 2, 1, 6), backend="reference")
    with pytest.raises(TypeError, match="weights must have"):
        ra(q, q, q, torch.ones(1, 2, 6, dtype=torch.float64), backend="reference")
    with pytest.raises(TypeError, match="float32"):
        ra(q.double(), q.double(), q.double(), backend="triton")
    assert ra(q, q, q, torch.ones(6), backend="reference").shape == q.shape


def test_macs_by_hand():
    assert ops.reversed_attention_macs((2, 3, 196, 16), (2, 3, 196, 8)) == 2 * 3 * 196 * 196 * 24


# --------------------------------------------------------------------------- triton vs reference


def _inputs(B, heads, L, d_qk, d_v=None, weights="full", dtype=torch.float32):
    d_v = d_qk if d_v is None else d_v

    def make():
        leaves = [_randn(B, heads, L, d_qk, dtype=dtype, seed=1),
                  _randn(B, heads, L, d_qk, dtype=dtype, seed=2),
                  _randn(B, heads, L, d_v, dtype=dtype, seed=3)]
        if weights == "full":
            leaves.append(_rand(B, heads, L, dtype=dtype, seed=4) + 0.1)
        elif weights == "per_token":
            leaves.append(_rand(B, 1, L, dtype=dtype, seed=4) + 0.1)
        return tuple(leaves)
    return make


def _op(scale=None, return_scores=False):
    def op(q, k, v, w=None, backend=None):
        return ops.reversed_attention(q, k, v, w, scale=scale, return_scores=return_scores,
                                      backend=backend)
    return op


CASES = {
    # name: (B, heads, L, d_qk, d_v, weights)
    "L37": (2, 2, 37, 16, 16, "full"),
    "L50_dv_larger": (1, 2, 50, 8, 32, "full"),
    "dv_smaller": (1, 1, 29, 32, 8, "full"),
    "no_weights": (2, 1, 23, 16, 16, None),
    "per_token_weights": (1, 3, 19, 16, 16, "per_token"),
    "L1": (1, 2, 1, 16, 16, "full"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case):
    B, heads, L, d_qk, d_v, weights = CASES[case]
    assert_backends_match(_op(), _inputs(B, heads, L, d_qk, d_v, weights))


def test_triton_scores_match_reference():
    assert_backends_match(_op(scale=0.3, return_scores=True), _inputs(2, 3, 37, 16, 8),
                          grad=False)


@pytest.mark.parametrize("return_scores", [False, True])
def test_triton_small_tiles(monkeypatch, return_scores):
    # 16-token tiles: several key and query tiles, partial last tiles (L = 50).
    from ops import _triton_reversed_attention as tri
    monkeypatch.setattr(tri, "_TILE_CAP", 16)
    if return_scores:
        assert_backends_match(_op(return_scores=True), _inputs(2, 2, 50, 16, 8), grad=False)
    assert_backends_match(_op(), _inputs(1, 2, 50, 16, 8))


def test_triton_strided_qkv_views():
    B, heads, L, d = 2, 2, 37, 16

    def op(qkv, wt, backend):
        q, k, v = qkv.view(B, L, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        return ops.reversed_attention(q, k, v, wt.transpose(1, 2), scale=0.2, backend=backend)

    assert_backends_match(op, lambda: (_randn(B, L, 3 * heads * d, seed=5),
                                       _rand(B, L, heads, seed=6)))


def test_triton_no_grad_forward_with_scores():
    q, k, v, w = _inputs(1, 2, 26, 16)()
    with torch.no_grad():
        out, mask = ops.reversed_attention(q, k, v, w, return_scores=True, backend="triton")
    ref, ref_mask = ops.reversed_attention(q, k, v, w, return_scores=True, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(mask, ref_mask, atol=2e-5, rtol=1e-4)
