"""ops.halo_attention_2d: the reference against timm's HaloAttn (outputs and gradients, incl. the
relative-position tables), the zero-padded-keys-participate semantics, validation, and the Triton
path against the reference (forward and backward). The checks every op shares (opcheck,
torch.compile, fp16 / bf16, partial gradients, empty batch, fx, fvcore, ...) run from op_cases.py
in test_op_contract.py.

Shapes stay tiny: without a GPU the Triton path runs in the interpreter.
"""
import pytest
import torch
from timm.layers.halo_attn import HaloAttn

import ops
from ops.halo_attention import halo_attention_macs
from harness import DEVICE, assert_backends_match, fvcore_totals


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def _timm_layer(seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    m = HaloAttn(**kwargs).to(dtype)
    with torch.no_grad():  # larger than timm's init so the relative logits matter
        m.pos_embed.height_rel.normal_()
        m.pos_embed.width_rel.normal_()
    return m


def _via_op(m, x, backend="reference"):
    """timm's HaloAttn.forward re-expressed: its projections -> the op -> its output step."""
    B, _, H, W = x.shape
    nh, dqk, dv = m.num_heads, m.dim_head_qk, m.dim_head_v
    q = m.q(x)
    Hq, Wq = q.shape[-2:]
    q = q.view(B, nh, dqk, Hq, Wq).permute(0, 1, 3, 4, 2)
    kv = m.kv(x).view(B, nh, dqk + dv, H, W).permute(0, 1, 3, 4, 2)  # interleaved per head
    out = ops.halo_attention_2d(
        q, kv[..., :dqk], kv[..., dqk:], m.block_size, m.halo_size, stride=m.block_stride,
        rel_pos=(m.pos_embed.height_rel, m.pos_embed.width_rel), scale=m.scale,
        scale_pos_embed=m.scale_pos_embed, backend=backend)
    return m.pool(out.permute(0, 1, 4, 2, 3).reshape(B, nh * dv, Hq, Wq))


TIMM_CONFIGS = [
    # (HaloAttn kwargs, input grid)
    (dict(dim=16, num_heads=2, block_size=8, halo_size=2), (16, 16)),
    (dict(dim=16, num_heads=2, block_size=8, halo_size=3), (24, 16)),
    (dict(dim=16, dim_out=32, num_heads=2, dim_head=4, block_size=8, halo_size=3,
          scale_pos_embed=True), (16, 24)),                                  # d_qk 4 != d_v 16
    (dict(dim=16, dim_out=24, num_heads=2, qk_ratio=0.34, block_size=8, halo_size=2),
     (16, 16)),                                                             # d_qk 4, d_v 12
    (dict(dim=16, num_heads=2, stride=2, block_size=8, halo_size=2), (16, 16)),  # strided q
    (dict(dim=16, dim_out=32, num_heads=4, dim_head=4, stride=2, block_size=8, halo_size=3,
          scale_pos_embed=True), (24, 16)),
    (dict(dim=16, num_heads=2, stride=2, avg_down=True, block_size=8, halo_size=2), (16, 16)),
    (dict(dim=16, num_heads=2, stride=2, block_size=7, halo_size=2), (14, 21)),  # avg-pool path
]


@pytest.mark.parametrize("cfg, grid", TIMM_CONFIGS, ids=lambda c: str(c))
def test_reference_matches_timm_forward_and_grads(cfg, grid):
    m = _timm_layer(**cfg)
    x = _randn(2, cfg["dim"], *grid, dtype=torch.float64).cpu().requires_grad_()
    expected = m(x)
    g = torch.randn_like(expected)
    params = [x, m.q.weight, m.kv.weight, m.pos_embed.height_rel, m.pos_embed.width_rel]
    expected_grads = torch.autograd.grad(expected, params, g)
    out = _via_op(m, x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)
    grads = torch.autograd.grad(out, params, g)
    for name, a, b in zip(("x", "q.weight", "kv.weight", "height_rel", "width_rel"),
                          grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda s: f"{name}: {s}")


def test_reference_matches_timm_float32():
    m = _timm_layer(dtype=torch.float32, dim=16, num_heads=2, block_size=8, halo_size=3)
    x = _randn(1, 16, 24, 16)
    torch.testing.assert_close(_via_op(m, x), m(x), atol=1e-5, rtol=1e-5)


def test_padded_keys_take_part_in_softmax():
    # k = 0 and no bias: every logit is 0, so each query averages v uniformly over its whole
    # window, padded (zero) keys included. With v = 1 on the grid, a query of the corner block
    # (bs 8, halo 2 on 16x16: window rows/cols -2..9) gets (10 * 10) / 12² -- not 1 as a masked
    # softmax would give.
    B, h, H, W = 1, 1, 16, 16
    q = _randn(B, h, H, W, 4, dtype=torch.float64)
    k = torch.zeros(B, h, H, W, 4, dtype=torch.float64, device=DEVICE)
    v = torch.ones(B, h, H, W, 3, dtype=torch.float64, device=DEVICE)
    out = ops.halo_attention_2d(q, k, v, 8, 2, backend="reference")
    torch.testing.assert_close(out[0, 0, :8, :8], torch.full((8, 8, 3), 100 / 144, dtype=torch.float64, device=DEVICE))
    torch.testing.assert_close(out[0, 0, :8, 8:], torch.full((8, 8, 3), 100 / 144, dtype=torch.float64, device=DEVICE))
    # ... and the relative logits apply to padded keys too: with a bias that favours the
    # up-left offsets (padding for the corner block), the corner output drops further.
    win = 12
    rel_h = torch.zeros(2 * win - 1, 4, dtype=torch.float64, device=DEVICE)
    rel_w = torch.zeros_like(rel_h)
    q1 = torch.ones_like(q)
    rel_h[:win - 1 + 2, 0] = 3.0  # key rows ki < i + 2 ...
    out_b = ops.halo_attention_2d(q1, k, v, 8, 2, rel_pos=(rel_h, rel_w), backend="reference")
    assert (out_b[0, 0, 0, 0] < 100 / 144 - 0.05).all()


def naive_halo_attention(q, k, v, bs, halo, stride, rel_pos, scale, spe):
    """Loop-level definition, one query at a time, padded keys spelled out as zeros."""
    B, h, H, W, _ = k.shape
    bq, win = bs // stride, bs + 2 * halo
    out = q.new_zeros(*q.shape[:4], v.shape[-1])
    for qy in range(H // stride):
        for qx in range(W // stride):
            by, i, bx, j = qy // bq, qy % bq, qx // bq, qx % bq
            logits, vals = [], []
            for ki in range(win):
                for kj in range(win):
                    y, x = by * bs - halo + ki, bx * bs - halo + kj
                    inside = 0 <= y < H and 0 <= x < W
                    kk = k[:, :, y, x] if inside else torch.zeros_like(k[:, :, 0, 0])
                    vv = v[:, :, y, x] if inside else torch.zeros_like(v[:, :, 0, 0])
                    qv = q[:, :, qy, qx]
                    s = (qv * kk).sum(-1) * scale
                    if rel_pos is not None:
                        r = (qv * rel_pos[0][win - 1 + ki - i]).sum(-1) \
                            + (qv * rel_pos[1][win - 1 + kj - j]).sum(-1)
                        s = s + r * (scale if spe else 1.0)
                    logits.append(s)
                    vals.append(vv)
            p = torch.stack(logits, -1).softmax(-1)
            out[:, :, qy, qx] = (p[..., None] * torch.stack(vals, -2)).sum(-2)
    return out


@pytest.mark.parametrize("stride, spe", [(1, False), (2, True)])
def test_reference_matches_naive_definition(stride, spe):
    bs, halo, H, W = 4, 1, 8, 12
    win = bs + 2 * halo
    q = _randn(1, 2, H // stride, W // stride, 3, dtype=torch.float64, seed=1)
    k = _randn(1, 2, H, W, 3, dtype=torch.float64, seed=2)
    v = _randn(1, 2, H, W, 5, dtype=torch.float64, seed=3)
    rel = (_randn(2 * win - 1, 3, dtype=torch.float64, seed=4),
           _randn(2 * win - 1, 3, dtype=torch.float64, seed=5))
    out = ops.halo_attention_2d(q, k, v, bs, halo, stride=stride, rel_pos=rel, scale=0.7,
                                scale_pos_embed=spe, backend="reference")
    expected = naive_halo_attention(q, k, v, bs, halo, stride, rel, 0.7, spe)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    out0 = ops.halo_attention_2d(q, k, v, bs, halo, stride=stride, backend="reference")
    torch.testing.assert_close(out0, naive_halo_attention(q, k, v, bs, halo, stride, None,
                                                          3 ** -0.5, False),
                               atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("recompute", [False, True])
def test_reference_slices_and_recompute_change_nothing(monkeypatch, recompute):
    """On the CPU the reference splits a call over (sample, head) slices and, for large calls
    with autograd, recomputes in the backward pass: outputs and gradients (tables included)
    are those of one plain call."""
    import ops.halo_attention as ha
    g = torch.Generator().manual_seed(0)
    B, heads, H, W, bs, halo, stride = 3, 4, 8, 12, 4, 1, 2
    q = torch.randn(B, heads, H // stride, W // stride, 8, generator=g, requires_grad=True)
    k = torch.randn(B, heads, H, W, 8, generator=g, requires_grad=True)
    v = torch.randn(B, heads, H, W, 6, generator=g, requires_grad=True)
    win = bs + 2 * halo
    rel = tuple(torch.randn(2 * win - 1, 8, generator=g, requires_grad=True) for _ in range(2))
    weights = torch.randn(B, heads, H // stride, W // stride, 6, generator=g)
    results, original = [], ha.halo_attention_reference
    for tiny in (True, False):  # one (sample, head) slice per call / one call
        for name in ("REFERENCE_CHUNK_BYTES", "REFERENCE_CHUNK_BYTES_MAX",
                     "REFERENCE_CHUNK_BYTES_AUTOGRAD"):
            monkeypatch.setattr(ha, name, 1 if tiny else 1 << 40)
        monkeypatch.setattr(ha, "REFERENCE_RECOMPUTE_BYTES", 0 if recompute and tiny else 1 << 40)
        calls = []
        monkeypatch.setattr(ha, "halo_attention_reference", _counting(original, calls))
        out = ops.halo_attention_2d(q, k, v, bs, halo, stride=stride, rel_pos=rel,
                                    backend="reference")
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v, *rel))
        with torch.no_grad():
            plain = ops.halo_attention_2d(q, k, v, bs, halo, stride=stride, rel_pos=rel,
                                          backend="reference")
        results.append([out.detach(), plain, *grads])
        # 12 slices forward (+ 12 recomputed in backward), 12 without autograd / 1 + 1
        assert len(calls) == ((12 + 12 * recompute + 12) if tiny else 2)
    for a, b in zip(*results):  # table gradients are summed over the slices in another order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())


def _counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return fn(*args, **kwargs)
    return counted


def test_validation():
    q, k, v = _randn(1, 2, 16, 16, 8), _randn(1, 2, 16, 16, 8), _randn(1, 2, 16, 16, 4)
    with pytest.raises(ValueError, match="multiple of block_size"):
        ops.halo_attention_2d(q[:, :, :12], k[:, :, :12], v[:, :, :12], 8, 2)
    with pytest.raises(ValueError, match="q must be"):
        ops.halo_attention_2d(q, k, v, 8, 2, stride=2)
    with pytest.raises(ValueError, match="multiple of stride"):
        ops.halo_attention_2d(q, k, v, 7, 2, stride=2)
    with pytest.raises(ValueError, match="height_rel"):
        ops.halo_attention_2d(q, k, v, 8, 2, rel_pos=(_randn(22, 8), _randn(23, 8)))
    with pytest.raises(TypeError):
        ops.halo_attention_2d(q, k.double(), v, 8, 2)


def test_macs_by_hand():
    # 2 heads, 8x8 query grid (stride 2 of 16x16), block 8 halo 2: every query sees 12² keys.
    assert halo_attention_macs((1, 2, 8, 8, 16), (1, 2, 16, 16, 8), 8, 2) \
        == 1 * 2 * 64 * 144 * (16 + 8)


# --------------------------------------------------------------------------- Triton vs reference

from ops import _triton_blocksparse as tri  # noqa: E402


def _halo_op(bs, halo, stride, spe=False, scale=None):
    def op(q, kv, *rel, backend):
        # k and v as interleaved slices of one kv tensor (timm's per-head layout): strided views
        d_qk = q.shape[-1]
        return ops.halo_attention_2d(q, kv[..., :d_qk], kv[..., d_qk:], bs, halo, stride=stride,
                                     rel_pos=tuple(rel) if rel else None, scale=scale,
                                     scale_pos_embed=spe, backend=backend)
    return op


def _halo_inputs(B, heads, H, W, d_qk, d_v, bs, halo, stride, bias, dtype=torch.float32):
    def make():
        win = bs + 2 * halo
        leaves = [_randn(B, heads, H // stride, W // stride, d_qk, dtype=dtype, seed=1),
                  _randn(B, heads, H, W, d_qk + d_v, dtype=dtype, seed=2)]
        if bias:
            leaves += [_randn(2 * win - 1, d_qk, dtype=dtype, seed=3) * 0.5,
                       _randn(2 * win - 1, d_qk, dtype=dtype, seed=4) * 0.5]
        return leaves
    return make


@pytest.mark.parametrize("bs, halo, stride, bias, spe, grid, dims", [
    (8, 2, 1, False, False, (16, 16), (16, 16)),
    (8, 2, 1, True, False, (16, 16), (16, 12)),    # d_v != d_qk
    (8, 3, 1, True, True, (16, 8), (8, 16)),
    (8, 2, 2, False, False, (16, 16), (16, 16)),   # strided queries
    (8, 3, 2, True, False, (16, 16), (8, 16)),
    (4, 1, 2, True, True, (8, 12), (8, 8)),
    (4, 5, 1, True, False, (12, 8), (8, 8)),       # halo > block: windows reach 2 blocks away
])
def test_triton_matches_reference(bs, halo, stride, bias, spe, grid, dims):
    assert_backends_match(_halo_op(bs, halo, stride, spe),
                          _halo_inputs(2, 2, *grid, *dims, bs, halo, stride, bias))


def test_triton_small_tiles(monkeypatch):
    # several query and key chunks per block/window, and partial chunks
    monkeypatch.setattr(tri, "_BLOCK_CAP", 16)
    assert_backends_match(_halo_op(8, 3, 1), _halo_inputs(1, 2, 16, 8, 8, 8, 8, 3, 1, True))
    assert_backends_match(_halo_op(6, 1, 2, scale=0.3),
                          _halo_inputs(1, 1, 12, 6, 8, 4, 6, 1, 2, True))


@pytest.mark.parametrize("cfg, grid", [TIMM_CONFIGS[1], TIMM_CONFIGS[5]], ids=["s1", "s2"])
def test_triton_timm_layer(cfg, grid):
    m = _timm_layer(dtype=torch.float32, **cfg)
    x = _randn(1, cfg["dim"], *grid)
    torch.testing.assert_close(_via_op(m, x, backend="triton"), m(x), atol=1e-5, rtol=1e-5)


def test_fvcore_counts_timm_layer_alike():
    """A whole timm HaloAttn layer (projections, the op on kv slices, pooling) counts the same on
    both paths (the op alone: test_op_contract.py)."""
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = _timm_layer(dtype=torch.float32, dim=16, num_heads=2, block_size=8,
                                 halo_size=2, dim_head=8)

        def forward(self, x):
            return _via_op(self.m, x, backend=None)  # the backend fvcore_totals selects

    totals = fvcore_totals(Layer().eval(), _randn(1, 16, 16, 16))
    assert totals["reference"] == totals["triton"] > 0
