"""ops.ulsam_attention: the reference against the module's definition (a real max-pool, a grouped
conv), and the Triton path (the interpreter on a CPU) against the reference, outputs and the
gradients of every input, at g = 1, 4, 8, 16, non-square planes, planes spanning several tiles,
and validation. The shared contract (opcheck, compile, fp16 / bf16, empty batch, fx, fvcore) is
in test_op_contract.py through op_cases.ULSAM_ATTENTION."""
import pytest
import torch
import torch.nn.functional as F

import ops
from harness import DEVICE, assert_backends_match, rand, randn
from ops import _triton_ulsam
from ops.ulsam import max_pool3x3_nonneg, ulsam_attention_reference


def _inputs(B, C, H, W, g, seed=0, scale=3.0):
    return (randn(B, C, H, W, seed=seed) * scale, rand(C, seed=seed + 1) + 0.5,
            randn(C, seed=seed + 2) * 0.5, randn(g, C // g, seed=seed + 3),
            rand(g, seed=seed + 4) + 0.2)


def _definition(x, dw_scale, dw_shift, pw_weight, pw_bias):
    """The layers the official module runs: a depthwise conv, PyTorch's max-pool, a grouped
    1x1 conv, a softmax over the positions and the multiply-add."""
    g, G = pw_weight.shape
    C = x.shape[1]
    d = F.relu(F.conv2d(x, dw_scale.view(C, 1, 1, 1), dw_shift, groups=C))
    p = F.max_pool2d(d, 3, 1, 1)
    s = F.relu(F.conv2d(p, pw_weight.view(g, G, 1, 1), pw_bias, groups=g))
    a = s.flatten(2).softmax(-1).view_as(s).repeat_interleave(G, 1)
    return a * x + x


@pytest.mark.parametrize("B,C,H,W,g", [(2, 16, 7, 9, 1), (1, 16, 8, 8, 4), (2, 24, 5, 11, 8),
                                       (1, 32, 6, 3, 16), (3, 8, 1, 1, 2)])
def test_reference_is_the_definition(B, C, H, W, g):
    args = [t.double() for t in _inputs(B, C, H, W, g)]
    torch.testing.assert_close(ulsam_attention_reference(*args), _definition(*args))


def test_separable_max_pool_is_max_pool2d_bit_for_bit():
    d = F.relu(randn(2, 5, 13, 10, seed=3))
    d[0, 0, :4] = 0  # flat zero regions: ties everywhere
    assert torch.equal(max_pool3x3_nonneg(d), F.max_pool2d(d, 3, 1, 1))


@pytest.mark.parametrize("B,C,H,W,g", [(2, 16, 7, 9, 1), (1, 16, 8, 8, 4), (2, 24, 5, 11, 8),
                                       (1, 32, 6, 3, 16), (3, 8, 1, 1, 2)])
def test_triton_matches_reference(B, C, H, W, g):
    assert_backends_match(ops.ulsam_attention, lambda: _inputs(B, C, H, W, g))


def test_triton_gradients_of_some_inputs_only():
    for grad in ([0], [1, 2], [3, 4], [0, 3]):
        assert_backends_match(ops.ulsam_attention, lambda: _inputs(2, 16, 6, 7, 4), grad=grad)


def test_triton_across_tiles(monkeypatch):
    """Planes larger than one tile (rows and columns split): the 3x3 windows straddle tiles."""
    monkeypatch.setitem(_triton_ulsam.TILE_ELEMENTS, "interpreter", 32)
    monkeypatch.setitem(_triton_ulsam.TILE_ELEMENTS, "gpu", 32)
    monkeypatch.setattr(_triton_ulsam, "MAX_BLOCK_W", 8)
    assert _triton_ulsam._blocks(13, 19) == (4, 8)
    assert_backends_match(ops.ulsam_attention, lambda: _inputs(2, 12, 13, 19, 3))


def test_triton_peaked_attention():
    """A large input scale: most logits far past the ReLU, a peaked softmax."""
    assert_backends_match(ops.ulsam_attention, lambda: _inputs(2, 16, 9, 9, 4, scale=12.0),
                          atol=1e-4, rtol=1e-4)


def test_validation():
    x, sc, sh, w, b = _inputs(1, 16, 4, 4, 4)
    with pytest.raises(ValueError, match=r"\(g, C / g\)"):
        ops.ulsam_attention(x, sc, sh, w.reshape(-1), b)
    with pytest.raises(ValueError, match="C = 16"):
        ops.ulsam_attention(x, sc, sh, randn(3, 5), rand(3))
    with pytest.raises(ValueError, match=r"dw_scale must be a \(16,\)"):
        ops.ulsam_attention(x, sc[:8], sh, w, b)
    with pytest.raises(ValueError, match="4-D"):
        ops.ulsam_attention(x[0], sc, sh, w, b)
    with pytest.raises(TypeError, match="dtype"):
        ops.ulsam_attention(x, sc.double(), sh, w, b)
    with pytest.raises(TypeError, match="floating-point"):
        ops.ulsam_attention(x.long(), sc, sh, w, b)


def test_module_runs_the_op_in_eval_on_both_backends():
    """The zoo module in eval mode is one op call; both backends give its output."""
    from backbones.ulsam import ULSAM
    m = ULSAM(16, num_splits=4).to(DEVICE).eval()
    with torch.no_grad():
        for bn in (m.bn_dw, m.bn_pw):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    x = randn(2, 16, 7, 6, seed=9) * 4
    with torch.no_grad():
        ref = m(x)
        with ops.use_backend("triton"):
            tri = m(x)
    torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)
