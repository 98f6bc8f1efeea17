"""The fused window attention as torch.library custom ops: schema, fake implementation and
autograd registration (opcheck), torch.compile without graph breaks, and fvcore counting rules
that give the fused path the same GMACs as the reference."""

import pytest
import torch
import timm

import backbones  # noqa: F401
import ops
from harness import assert_compiles_like_eager, fvcore_totals
from ops import _triton_window_attention as fused


def _qkv(B=1, heads=2, H=6, W=5, d=16, dv=16, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, heads, H, W, n, generator=g).requires_grad_(requires_grad)
            for n in (d, d, dv)]


def test_opcheck_forward_op():
    q, k, v = _qkv(dv=8)
    for padding in ("zeros", "masked"):
        torch.library.opcheck(fused._window_attention_fwd_op,
                              (q, k, v, 4, 2, 1, 0, padding, 0.25, True),
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_compile_fullgraph_matches_eager(backend):
    def layer(q, k, v):
        out = ops.window_attention_2d(q, k, v, (4, 2), window_offset=(1, 0), backend=backend)
        return out.permute(0, 2, 3, 1, 4).flatten(3).square().sum()

    assert_compiles_like_eager(layer, _qkv)


def test_fvcore_counts_both_paths_alike():
    model = timm.create_model("cswin_tiny_224", embed_dim=16, depths=(1, 1, 1, 1),
                              num_heads=(2, 2, 4, 4), split_sizes=(1, 2, 7, None)).eval()
    totals = fvcore_totals(model, torch.randn(1, 3, 72, 96))
    assert totals["reference"] == totals["triton"] > 0


def test_window_attention_macs_by_hand():
    # 2 heads, 7x5 grid, windows 4x2 with offset (1, 0): 2 x 3 windows of 8 tokens.
    assert ops.flops.window_attention_macs((1, 2, 7, 5, 16), (1, 2, 7, 5, 8), (4, 2), (1, 0)) \
        == 1 * 2 * 6 * 8 * 8 * (16 + 8)
    assert ops.flops.sdpa_macs((2, 3, 10, 16), (2, 3, 12, 16), (2, 3, 12, 8)) == 6 * 10 * 12 * 24
    # broadcast batch dims, and grouped-query heads (q's head count)
    assert ops.flops.sdpa_macs((2, 4, 3, 10, 8), (1, 4, 3, 12, 8), (1, 4, 3, 12, 16)) \
        == 2 * 4 * 3 * 10 * 12 * (8 + 16)
    assert ops.flops.sdpa_macs((2, 8, 10, 8), (2, 2, 12, 8), (2, 2, 12, 8)) == 2 * 8 * 10 * 12 * 16
