"""The custom-op / autograd glue (ops._custom_op.FusedOp) every fused op shares: the backward
computes and returns only the gradients autograd asks for (``needs_input_grad``), checked on the
two ops whose backward is not the plain q/k/v one: halo (relative-position logits) and reversed
(per-query weights). What the gradients are is checked against the reference in each op's file
and in test_op_contract.py (gradients of some inputs only).
"""
from typing import List, Tuple

import pytest
import torch

import ops
from ops import _triton_blocksparse as bsa
from ops import _triton_halo_attention as halo_tri
from ops import _triton_reversed_attention as reversed_tri
from ops._custom_op import FusedOp
from harness import rand, randn


class _Recorder:
    """Stands in for a Triton kernel: records each launch's ``NEED_*`` flags, then launches."""

    def __init__(self, name, kernel, launches):
        self.name, self.kernel, self.launches = name, kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            flags = {k: v for k, v in kwargs.items() if k.startswith("NEED_")}
            self.launches.append((self.name, flags))
            return self.kernel[grid](*args, **kwargs)
        return launch


def _record(monkeypatch, module, names):
    launches = []
    for name in names:
        monkeypatch.setattr(module, name, _Recorder(name, getattr(module, name), launches))
    return launches


def _spy_backward_op(monkeypatch, fused):
    """The glue's calls of ``fused``'s backward op: (needs_input_grad, numel of each result)."""
    calls = []
    real = fused.backward_op

    def spy(*args):
        grads = real(*args)
        calls.append((list(args[-1]), [g.numel() for g in grads]))
        return grads

    monkeypatch.setattr(fused, "backward_op", spy)
    return calls


def _grads(op, leaves, wrt, backend):
    leaves = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(leaves)]
    out = op(*leaves, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
    return torch.autograd.grad(out, [leaves[i] for i in wrt], g)


# --------------------------------------------------------------------------- halo attention

def _halo(q, k, v, rel_h, rel_w, backend):
    return ops.halo_attention_2d(q, k, v, 4, 1, rel_pos=(rel_h, rel_w), backend=backend)


def _halo_leaves():
    return [randn(1, 2, 8, 8, 8, seed=1), randn(1, 2, 8, 8, 8, seed=2),
            randn(1, 2, 8, 8, 4, seed=3), randn(11, 8, seed=4) * 0.5, randn(11, 8, seed=5) * 0.5]


# needs_input_grad is over (q, k, v, RH, RW): the relative logits RH = q @ rel_h.T take a
# gradient when q or the table does.
@pytest.mark.parametrize("wrt, needs, launches", [
    ((0,), [True, False, False, True, True],
     [("_bwd_dq", {"NEED_DQ": True, "NEED_DREL": True})]),
    ((2,), [False, False, True, False, False], [("_bwd_dkdv", {})]),
    ((1, 2), [False, True, True, False, False], [("_bwd_dkdv", {})]),
    ((3, 4), [False, False, False, True, True],
     [("_bwd_dq", {"NEED_DQ": False, "NEED_DREL": True})]),
    ((0, 1, 2, 3, 4), [True] * 5,
     [("_bwd_dkdv", {}), ("_bwd_dq", {"NEED_DQ": True, "NEED_DREL": True})]),
], ids=["q", "v", "kv", "tables", "all"])
def test_halo_backward_computes_only_what_is_asked(monkeypatch, wrt, needs, launches):
    calls = _spy_backward_op(monkeypatch, halo_tri.FUSED_OP)
    recorded = _record(monkeypatch, bsa, ("_bwd_dq", "_bwd_dkdv"))
    grads = _grads(_halo, _halo_leaves(), wrt, "triton")
    assert recorded == launches
    (asked, numels), = calls
    assert asked == needs
    assert [n > 0 for n in numels] == needs  # placeholders where not asked
    for g, ref in zip(grads, _grads(_halo, _halo_leaves(), wrt, "reference"), strict=True):
        torch.testing.assert_close(g, ref, atol=5e-5, rtol=1e-4)


def test_halo_backward_without_relative_logits(monkeypatch):
    calls = _spy_backward_op(monkeypatch, halo_tri.FUSED_OP)
    recorded = _record(monkeypatch, bsa, ("_bwd_dq", "_bwd_dkdv"))
    q, k, v = _halo_leaves()[:3]
    q.requires_grad_()
    out = ops.halo_attention_2d(q, k, v, 4, 1, backend="triton")
    out.sum().backward()
    assert calls == [([True, False, False, False, False], [q.numel(), 0, 0, 0, 0])]
    assert recorded == [("_bwd_dq", {"NEED_DQ": True, "NEED_DREL": False})]
    assert k.grad is None and v.grad is None


# --------------------------------------------------------------------------- reversed attention

def _reversed(q, k, v, w, backend):
    return ops.reversed_attention(q, k, v, w, backend=backend)


def _reversed_leaves():
    return [randn(2, 2, 19, 16, seed=1), randn(2, 2, 19, 16, seed=2), randn(2, 2, 19, 8, seed=3),
            rand(2, 2, 19, seed=4) + 0.1]


@pytest.mark.parametrize("wrt, launches", [
    ((0,), [("_ra_bwd_q", {"NEED_DV": False, "NEED_DQ": True})]),
    ((1,), [("_ra_bwd_q", {"NEED_DV": False, "NEED_DQ": False}), ("_ra_bwd_k", {})]),
    ((2,), [("_ra_bwd_q", {"NEED_DV": True, "NEED_DQ": False})]),
    ((3,), [("_ra_bwd_q", {"NEED_DV": False, "NEED_DQ": False})]),
    ((0, 1, 2, 3), [("_ra_bwd_q", {"NEED_DV": True, "NEED_DQ": True}), ("_ra_bwd_k", {})]),
], ids=["q", "k", "v", "weights", "all"])
def test_reversed_backward_computes_only_what_is_asked(monkeypatch, wrt, launches):
    needs = [i in wrt for i in range(4)]
    calls = _spy_backward_op(monkeypatch, reversed_tri.FUSED_OP)
    recorded = _record(monkeypatch, reversed_tri, ("_ra_bwd_q", "_ra_bwd_k"))
    grads = _grads(_reversed, _reversed_leaves(), wrt, "triton")
    assert recorded == launches
    assert calls == [(needs, [t.numel() if need else 0
                              for t, need in zip(_reversed_leaves(), needs)])]
    for g, ref in zip(grads, _grads(_reversed, _reversed_leaves(), wrt, "reference"),
                      strict=True):
        torch.testing.assert_close(g, ref, atol=5e-5, rtol=1e-4)


def test_no_backward_without_a_gradient(monkeypatch):
    """Inputs that take no gradient (or no_grad): nothing is kept, the backward never runs."""
    calls = _spy_backward_op(monkeypatch, reversed_tri.FUSED_OP)
    out = ops.reversed_attention(*_reversed_leaves(), backend="triton")
    assert not out.requires_grad
    leaves = [t.requires_grad_() for t in _reversed_leaves()]
    with torch.no_grad():
        out, scores = ops.reversed_attention(*leaves, return_scores=True, backend="triton")
    assert not out.requires_grad and not scores.requires_grad
    out, scores = ops.reversed_attention(*leaves, return_scores=True, backend="triton")
    assert out.requires_grad and not scores.requires_grad  # the scores carry no gradient
    assert calls == []


# --------------------------------------------------------------------------- the glue's contract

def test_fused_op_checks_the_kernel_signatures():
    """A backward whose parameters do not follow the forward's is refused before anything is
    registered."""
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                for_backward: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("never called")

    def backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor, lse: torch.Tensor, needs_input_grad: List[bool]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"dout, q, k, v, out, lse, scale, needs_input_grad"):
        FusedOp("never_registered", forward=forward, backward=backward, forward_fake=forward)
    assert not hasattr(torch.ops.backbones, "never_registered_fwd")
