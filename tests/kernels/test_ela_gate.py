"""ops.ela_gate (ELA's attention): the reference against the official two-branch form in float64,
the Triton path against the reference (forward and every gradient; non-square planes, planes
wider / taller than one tile, 1-pixel sides, each paper version's conv, strided inputs, gradients
of some inputs only) and input validation. The checks every op shares (opcheck, torch.compile,
fp16 / bf16, empty batch, fx, fvcore, ...) run from op_cases.py in test_op_contract.py.

Shapes stay tiny: without a GPU the Triton path runs in the interpreter.
"""
import pytest
import torch
import torch.nn as nn

import ops
from harness import DEVICE, assert_backends_match, rand, randn
from ops import _triton_ela_gate as ela_tri

# (k, channels per conv group, GroupNorm groups) of ELA-T / B / S / L at C = 16 (S / L: C // 8
# groups of 8 channels)
VERSIONS = {"T": (5, 1, 8), "B": (7, 1, 16), "S": (5, 8, 16), "L": (7, 8, 16)}


def _params(C, k, per_group, dtype=torch.float32, seed=0):
    return (randn(C, per_group, k, dtype=dtype, seed=seed + 1) * 0.5,
            rand(C, dtype=dtype, seed=seed + 2) + 0.5, randn(C, dtype=dtype, seed=seed + 3) * 0.2)


def official_form(x, weight, gamma, beta, num_groups, eps=1e-5):
    """The official classes' forward on explicit modules: one Conv1d and one GroupNorm, both
    called once per direction, ``(x * a_h) * a_w``."""
    B, C, H, W = x.shape
    conv = nn.Conv1d(C, C, weight.shape[-1], padding=weight.shape[-1] // 2,
                     groups=C // weight.shape[1], bias=False).to(x)
    gn = nn.GroupNorm(num_groups, C, eps=eps).to(x)
    with torch.no_grad():
        conv.weight.copy_(weight)
        gn.weight.copy_(gamma)
        gn.bias.copy_(beta)
    x_h = torch.mean(x, dim=3, keepdim=True).view(B, C, H)
    x_w = torch.mean(x, dim=2, keepdim=True).view(B, C, W)
    a_h = torch.sigmoid(gn(conv(x_h))).view(B, C, H, 1)
    a_w = torch.sigmoid(gn(conv(x_w))).view(B, C, 1, W)
    return x * a_h * a_w


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("hw", [(9, 13), (13, 9), (3, 2), (1, 6), (1, 1)])
def test_reference_is_the_official_form(version, hw):
    """Non-square planes, sides shorter than the kernel (zero padding reaches across), L = 1
    (GroupNorm over the group's channels only)."""
    k, per_group, groups = VERSIONS[version]
    x = randn(2, 16, *hw, dtype=torch.float64)
    params = [p.double() for p in _params(16, k, per_group)]
    out = ops.ela_gate(x, *params, num_groups=groups, backend="reference")
    torch.testing.assert_close(out, official_form(x, *params, groups), atol=1e-12, rtol=1e-12)


def test_reference_inference_path_equals_autograd_path():
    """Without autograd the reference multiplies in place; with it, out of place: same values,
    and the in-place result leaves the input untouched."""
    x = randn(2, 16, 6, 11)
    params = _params(16, 7, 8)
    x_before = x.clone()
    with torch.no_grad():
        fast = ops.ela_gate(x, *params, num_groups=16, backend="reference")
    x.requires_grad_()
    slow = ops.ela_gate(x, *params, num_groups=16, backend="reference")
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=0, rtol=0)
    torch.testing.assert_close(x.detach(), x_before, atol=0, rtol=0)


def _case(shape, version="S"):
    k, per_group, groups = VERSIONS[version]
    C = shape[1]
    return (lambda: (randn(*shape, seed=5), *_params(C, k, per_group)),
            lambda x, w, g, b, backend: ops.ela_gate(x, w, g, b, num_groups=groups,
                                                     backend=backend))


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_triton_matches_reference_per_version(version):
    make, op = _case((2, 16, 7, 10), version)
    assert_backends_match(op, make)


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (9, 1), (2, 3)])
def test_triton_matches_reference_on_thin_planes(hw):
    make, op = _case((2, 16, *hw))
    assert_backends_match(op, make)


@pytest.mark.parametrize("hw", [(19, 37), (37, 19)])
def test_triton_multi_tile_planes(hw, monkeypatch):
    """Tiles of 8 x 8: column sums across row tiles, row sums accumulated across column strips,
    ragged last tiles both ways."""
    monkeypatch.setitem(ela_tri.TILE_ELEMENTS, "interpreter", 64)
    monkeypatch.setitem(ela_tri.TILE_ELEMENTS, "gpu", 64)
    monkeypatch.setattr(ela_tri, "MAX_BLOCK_W", 8)
    assert ela_tri._blocks(*hw) == (8, 8)
    make, op = _case((1, 16, *hw))
    assert_backends_match(op, make)


def test_triton_takes_strided_inputs():
    """A channels-last batch and a cropped view: the kernels read contiguous copies, gradients
    flow back to the original layout."""
    make, _ = _case((2, 16, 6, 9))
    _, _, groups = VERSIONS["S"]

    def op(x, w, g, b, backend):
        view = x.to(memory_format=torch.channels_last)[:, :, 1:, ::2]
        return ops.ela_gate(view, w, g, b, num_groups=groups, backend=backend)

    assert_backends_match(op, make)


@pytest.mark.parametrize("which", [[0], [1, 2, 3], [2]])
def test_triton_gradients_of_some_inputs(which):
    make, op = _case((2, 16, 5, 8))
    assert_backends_match(op, make, grad=which)


def test_gradcheck_reference_float64():
    """The reference's gradients are the definition's (finite differences)."""
    x = randn(1, 16, 4, 5, dtype=torch.float64).requires_grad_()
    w, g, b = (p.double().requires_grad_() for p in _params(16, 5, 8))
    assert torch.autograd.gradcheck(
        lambda *t: ops.ela_gate(*t, num_groups=16, backend="reference"), (x, w, g, b))


def test_macs():
    x = randn(2, 16, 5, 7)
    w, g, b = _params(16, 5, 8)
    # conv: B C L (C / groups) k per direction; GroupNorm: 5 per element (fvcore's rule)
    assert ops.ela_gate_macs(x.shape, w.shape) == 2 * 16 * (5 + 7) * (8 * 5 + 5)


@pytest.mark.parametrize("bad, error, match", [
    (dict(x=torch.randn(16, 5, 7)), ValueError, r"4-D \(B, C, H, W\)"),
    (dict(x=torch.zeros(1, 16, 5, 7, dtype=torch.int64)), TypeError, "floating-point"),
    (dict(weight=torch.randn(8, 1, 5)), ValueError, r"\(C=16, C / groups, k\)"),
    (dict(weight=torch.randn(16, 3, 5)), ValueError, "does not divide C=16"),
    (dict(weight=torch.randn(16, 1, 4)), ValueError, "must be odd"),
    (dict(gn_bias=torch.randn(8)), ValueError, r"gn_bias must be a \(16,\) tensor"),
    (dict(num_groups=5), ValueError, "positive divisor of C=16"),
    (dict(weight=torch.randn(16, 1, 5, dtype=torch.float64)), TypeError, "x's device and dtype"),
])
def test_input_errors(bad, error, match):
    args = dict(x=torch.randn(1, 16, 5, 7), weight=torch.randn(16, 1, 5), gn_weight=torch.ones(16),
                gn_bias=torch.zeros(16), num_groups=4)
    args.update(bad)
    with pytest.raises(error, match=match):
        ops.ela_gate(args["x"], args["weight"], args["gn_weight"], args["gn_bias"],
                     num_groups=args["num_groups"])
