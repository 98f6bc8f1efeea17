"""ops.flops' fvcore rules read a traced call's arguments by schema name, not by position: an op
whose schema lists the same arguments in another order, or a call written with keyword
arguments, counts the same. (That both paths of every op count alike: test_op_contract.py.)
"""
import pytest
import torch

import ops
from ops import _triton_window_attention as window_tri
from harness import randn

fvcore = pytest.importorskip("fvcore.nn")

_WINDOW, _OFFSET, _SCALE = (4, 3), (1, 2), 0.25

# The window op's forward arguments, listed in another order than its schema's.
_SHUFFLED = "zoo_test::window_attention_shuffled"
torch.library.define(
    _SHUFFLED, "(int window_w, Tensor v, float scale, int offset_x, Tensor k, int window_h, "
               "str padding, Tensor q, int offset_y, bool for_backward) -> (Tensor, Tensor)")


@torch.library.impl(_SHUFFLED, "default")
def _shuffled(window_w, v, scale, offset_x, k, window_h, padding, q, offset_y, for_backward):
    return window_tri.FUSED_OP.forward_op(q, k, v, window_h, window_w, offset_y, offset_x,
                                          padding, scale, for_backward)


class _Layer(torch.nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, q, k, v):
        return self.call(q, k, v)[0]


def _macs(call, handles):
    q, k, v = randn(1, 2, 7, 9, 16, seed=1), randn(1, 2, 7, 9, 16, seed=2), randn(1, 2, 7, 9, 8)
    analysis = fvcore.FlopCountAnalysis(_Layer(call).eval(), (q, k, v))
    analysis.set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False)
    with torch.no_grad():
        total = analysis.total()
    assert not analysis.unsupported_ops()
    return total


_EXPECTED = ops.window_attention_macs((1, 2, 7, 9, 16), (1, 2, 7, 9, 8), _WINDOW, _OFFSET)


def test_window_rule_reads_a_shuffled_schema_by_name():
    count = ops.flops._COUNTS["backbones::window_attention_fwd"]
    handles = {_SHUFFLED: ops.flops.schema_handle(_SHUFFLED, count)}
    shuffled = torch.ops.zoo_test.window_attention_shuffled
    assert _macs(lambda q, k, v: shuffled(_WINDOW[1], v, _SCALE, _OFFSET[1], k, _WINDOW[0],
                                          "zeros", q, _OFFSET[0], False), handles) == _EXPECTED


def test_fused_op_called_with_keywords_counts_the_same():
    fwd = window_tri.FUSED_OP.forward_op
    by_position = _macs(lambda q, k, v: fwd(q, k, v, *_WINDOW, *_OFFSET, "zeros", _SCALE, False),
                        ops.flops.fvcore_handles())
    by_keyword = _macs(lambda q, k, v: fwd(
        for_backward=False, scale=_SCALE, padding="zeros", offset_x=_OFFSET[1], v=v,
        window_w=_WINDOW[1], offset_y=_OFFSET[0], k=k, window_h=_WINDOW[0], q=q),
        ops.flops.fvcore_handles())
    assert by_position == by_keyword == _EXPECTED


def test_sdpa_rule_reads_keywords():
    def sdpa(q, k, v):
        flat = [t.flatten(2, 3) for t in (q, k, v)]
        return (torch.nn.functional.scaled_dot_product_attention(
            value=flat[2], scale=_SCALE, key=flat[1], query=flat[0]),)

    assert _macs(sdpa, ops.flops.fvcore_handles()) == 2 * 63 * 63 * (16 + 8)
