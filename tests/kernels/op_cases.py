"""One entry per op of ``ops``: everything the shared contract checks need to run it.

tests/kernels/test_op_contract.py runs every check that all ops must pass (custom-op registration
through ``torch.library.opcheck``, ``torch.compile(fullgraph=True)`` against eager, fp16 / bf16
against the float32 reference, gradients of some inputs only, ``torch.no_grad``, an empty batch,
``torch.fx`` leaves, fvcore counting, backend defaults, unsupported dtypes) over :data:`CASES`.
Covering a new op is adding one :class:`OpCase` here; its own file keeps only what is specific to
it (its definition, edge cases, shapes, layouts, validation). ``test_every_op_has_a_case`` fails
until a new public op, or a new ``backbones::`` custom op, is listed.

Inputs stay tiny: without a GPU the Triton path runs in the interpreter.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

import torch

import ops
from ops import _triton_ela_gate as ela_tri
from ops import _triton_ulsam as ulsam_tri
from ops import _triton_halo_attention as halo_tri
from ops import _triton_masked_attention as masked_tri
from ops import _triton_neighborhood_attention as na_tri
from ops import _triton_reversed_attention as reversed_tri
from ops import _triton_routed_attention as routed_tri
from ops import _triton_window_attention as window_tri
from harness import DEVICE, rand, randn

LOW_PRECISION = (torch.float16, torch.bfloat16)
# torch.library.opcheck utilities: a forward op (tied to autograd), and a backward op (which has
# no autograd of its own).
FORWARD_OP_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor")
BACKWARD_OP_TESTS = ("test_schema", "test_faketensor")
# A backward op's needs_input_grad asking for every gradient (the first n for n inputs).
_ALL_GRADS = [True] * 5


@dataclass(frozen=True)
class OpCheck:
    """One ``torch.library.opcheck(op, args(*tensors), test_utils=...)`` call, ``tensors`` being
    the case's op tensors built from inputs that require grad."""
    label: str
    op: Any                                  # a torch.library custom op
    args: Callable[..., tuple]
    test_utils: Tuple[str, ...] = FORWARD_OP_TESTS

    @property
    def qualname(self):
        return self.op._qualname


def _identity(*tensors):
    return tensors


@dataclass(frozen=True)
class OpCase:
    """How the shared checks call one op.

    Attributes:
        name: the test id.
        op: the public function (``ops.<name>``), the expected ``torch.fx`` leaf.
        inputs: ``inputs(batch=<default>, dtype=torch.float32)`` -> leaf tensors; floating ones
            in ``dtype`` (gradients are taken with respect to them), others (indices, masks) as
            they are. ``batch=0`` must give an empty batch.
        call: ``call(*tensors, backend=..., **variant)`` -> the op's output: the op applied to
            the op tensors with the case's static arguments, nothing else (the fx check counts
            its nodes).
        view: leaves -> op tensors (strided views, products); identity by default.
        backends: ``("reference", "triton")``, or ``(None,)`` for an op without a backend choice.
        backward: the op is differentiable in its floating inputs.
        variants: named static keyword sets for ``call``; the low-precision check runs every one,
            the other checks the first.
        low_precision: dtypes the Triton path is checked in against the float32 reference.
        tolerances: ``{dtype: assert_backends_match overrides}`` (atol, rtol, grad_atol,
            grad_rtol) where the harness defaults do not fit.
        opchecks: the op's custom ops, each forward and backward op at least once.
        macs: ``macs(*tensors)`` -> what fvcore must count on both paths (ops with a fused
            custom op); None skips the fvcore check.
        known_failures: ``{check name: reason}``, strict xfails (an ops bug to fix, not hide).
    """
    name: str
    op: Callable
    inputs: Callable[..., tuple]
    call: Callable[..., Any]
    view: Callable[..., tuple] = _identity
    backends: Tuple[Optional[str], ...] = ("reference", "triton")
    backward: bool = True
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"default": {}})
    low_precision: Tuple[torch.dtype, ...] = LOW_PRECISION
    tolerances: Mapping[torch.dtype, Mapping[str, float]] = field(default_factory=dict)
    opchecks: Tuple[OpCheck, ...] = ()
    macs: Optional[Callable[..., int]] = None
    known_failures: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self):
        return self.name

    @property
    def fused(self):
        """Has a Triton path to hold against the reference."""
        return "triton" in self.backends

    def leaves(self, *, grad=False, **kwargs):
        """Fresh inputs; floating ones require grad with ``grad`` (and a differentiable op)."""
        leaves = self.inputs(**kwargs)
        if grad and self.backward:
            for t in leaves:
                if t.is_floating_point():
                    t.requires_grad_()
        return leaves

    def tensors(self, leaves):
        return tuple(self.view(*leaves))

    def run(self, leaves, backend, **variant):
        return self.call(*self.tensors(leaves), backend=backend, **variant)


# --------------------------------------------------------------------------- window attention

_WINDOW, _WINDOW_OFFSET = (4, 3), (1, 2)   # partial windows, padding before and after, both axes


def _window_inputs(batch=1, dtype=torch.float32):
    return (randn(batch, 2, 7, 9, 16, dtype=dtype, seed=1),
            randn(batch, 2, 7, 9, 16, dtype=dtype, seed=2),
            randn(batch, 2, 7, 9, 8, dtype=dtype, seed=3))    # d_v != d_qk


def _window_call(q, k, v, backend, padding="zeros"):
    return ops.window_attention_2d(q, k, v, _WINDOW, window_offset=_WINDOW_OFFSET,
                                   padding=padding, backend=backend)


def _window_fwd_args(padding):
    return lambda q, k, v: (q, k, v, *_WINDOW, *_WINDOW_OFFSET, padding, 0.25, True)


def _window_bwd_args(q, k, v):
    fixed = (*_WINDOW, *_WINDOW_OFFSET, "masked", 0.25)
    out, lse = window_tri.FUSED_OP.forward_op(q, k, v, *fixed, True)
    return (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse,
            *fixed, _ALL_GRADS[:3])


WINDOW_ATTENTION = OpCase(
    "window_attention_2d", ops.window_attention_2d, _window_inputs, _window_call,
    variants={"zeros": {"padding": "zeros"}, "masked": {"padding": "masked"}},
    opchecks=(OpCheck("fwd-zeros", window_tri.FUSED_OP.forward_op, _window_fwd_args("zeros")),
              OpCheck("fwd-masked", window_tri.FUSED_OP.forward_op, _window_fwd_args("masked")),
              OpCheck("bwd", window_tri.FUSED_OP.backward_op, _window_bwd_args,
                      BACKWARD_OP_TESTS)),
    macs=lambda q, k, v: ops.window_attention_macs(q.shape, v.shape, _WINDOW, _WINDOW_OFFSET),
)


def _conv_inputs(batch=2, dtype=torch.float32):
    return (randn(batch, 2, 7, 9, 4, dtype=dtype, seed=1),   # heads 2 x d 4 = 8 channels
            randn(8, 1, 3, 3, dtype=dtype, seed=2), randn(8, dtype=dtype, seed=3))


def _conv_call(x, weight, bias, backend):
    assert backend is None, "window_depthwise_conv2d has no backend choice"
    return ops.window_depthwise_conv2d(x, weight, bias, _WINDOW, window_offset=_WINDOW_OFFSET)


WINDOW_DEPTHWISE_CONV = OpCase(
    "window_depthwise_conv2d", ops.window_depthwise_conv2d, _conv_inputs, _conv_call,
    backends=(None,))


# --------------------------------------------------------------------------- routed attention

_REGION, _TOPK = (2, 2), 3


def _routed_inputs(batch=1, dtype=torch.float32):
    num_regions = (4 // _REGION[0]) * (6 // _REGION[1])
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, num_regions, (batch, num_regions, _TOPK), generator=gen)
    index[:, :, 1] = index[:, :, 0]                          # a repeated region in every list
    return (randn(batch, 2, 4, 6, 16, dtype=dtype, seed=1),
            randn(batch, 2, 4, 6, 16, dtype=dtype, seed=2),
            randn(batch, 2, 4, 6, 8, dtype=dtype, seed=3), index.to(DEVICE))


def _routed_call(q, k, v, index, backend):
    return ops.routed_attention_2d(q, k, v, index, _REGION, scale=0.3, backend=backend)


def _routed_fwd_args(store_lse):
    return lambda q, k, v, index: (q, k, v, index, *_REGION, 0.25, store_lse)


def _routed_bwd_args(q, k, v, index):
    out, lse = routed_tri.FUSED_OP.forward_op(q, k, v, index, *_REGION, 0.25, True)
    return (torch.randn_like(out), q.detach(), k.detach(), v.detach(), index, out.detach(), lse,
            *_REGION, 0.25, _ALL_GRADS[:3])


ROUTED_ATTENTION = OpCase(
    "routed_attention_2d", ops.routed_attention_2d, _routed_inputs, _routed_call,
    opchecks=(OpCheck("fwd-lse", routed_tri.FUSED_OP.forward_op, _routed_fwd_args(True)),
              OpCheck("fwd-no-lse", routed_tri.FUSED_OP.forward_op, _routed_fwd_args(False)),
              OpCheck("bwd", routed_tri.FUSED_OP.backward_op, _routed_bwd_args,
                      BACKWARD_OP_TESTS)),
    macs=lambda q, k, v, index: ops.routed_attention_macs(q.shape, v.shape, _TOPK, _REGION),
)


# --------------------------------------------------------------------------- halo attention

_BLOCK, _HALO, _STRIDE = 4, 1, 2
_TABLE = 2 * (_BLOCK + 2 * _HALO) - 1


def _halo_inputs(batch=1, dtype=torch.float32):
    # q, one kv projection (k and v are its interleaved slices, as timm's), the two tables
    return (randn(batch, 2, 8 // _STRIDE, 8 // _STRIDE, 8, dtype=dtype, seed=1),
            randn(batch, 2, 8, 8, 8 + 4, dtype=dtype, seed=2),
            randn(_TABLE, 8, dtype=dtype, seed=3) * 0.5,
            randn(_TABLE, 8, dtype=dtype, seed=4) * 0.5)


def _halo_view(q, kv, rel_h, rel_w):
    return q, kv[..., :8], kv[..., 8:], rel_h, rel_w


def _halo_call(q, k, v, rel_h, rel_w, backend):
    return ops.halo_attention_2d(q, k, v, _BLOCK, _HALO, stride=_STRIDE, rel_pos=(rel_h, rel_w),
                                 backend=backend)


def _halo_logits(q, rel_h, rel_w):
    return tuple((q @ t.T).detach().requires_grad_() for t in (rel_h, rel_w))


def _halo_fwd_args(bias):
    def args(q, k, v, rel_h, rel_w):
        rh, rw = _halo_logits(q, rel_h, rel_w) if bias else (None, None)
        return (q, k, v, rh, rw, _BLOCK, _HALO, _STRIDE, 0.3, True)
    return args


def _halo_bwd_args(needs_input_grad):
    def args(q, k, v, rel_h, rel_w):
        rh, rw = (t.detach() for t in _halo_logits(q, rel_h, rel_w))
        fixed = (_BLOCK, _HALO, _STRIDE, 0.3)
        out, lse = halo_tri.FUSED_OP.forward_op(q, k, v, rh, rw, *fixed, True)
        return (torch.randn_like(out), q.detach(), k.detach(), v.detach(), rh, rw, out.detach(),
                lse, *fixed, needs_input_grad)
    return args


def _halo_macs(q, k, v, rel_h, rel_w):
    # the attention, and the relative logits' q @ table.T (plain matmuls on both paths)
    return (ops.halo_attention_macs(q.shape, v.shape, _BLOCK, _HALO)
            + 2 * q.numel() * rel_h.shape[0])


HALO_ATTENTION = OpCase(
    "halo_attention_2d", ops.halo_attention_2d, _halo_inputs, _halo_call, view=_halo_view,
    opchecks=(OpCheck("fwd-no-bias", halo_tri.FUSED_OP.forward_op, _halo_fwd_args(False)),
              OpCheck("fwd-bias", halo_tri.FUSED_OP.forward_op, _halo_fwd_args(True)),
              OpCheck("bwd", halo_tri.FUSED_OP.backward_op, _halo_bwd_args(_ALL_GRADS[:5]),
                      BACKWARD_OP_TESTS),
              OpCheck("bwd-q-only", halo_tri.FUSED_OP.backward_op,
                      _halo_bwd_args([True, False, False, False, False]), BACKWARD_OP_TESTS)),
    macs=_halo_macs,
)


# --------------------------------------------------------------------------- neighborhood attention

_KERNEL, _DILATION = (3, 5), (2, 1)


def _na_inputs(batch=1, dtype=torch.float32):
    return (randn(batch, 2, 7, 6, 16, dtype=dtype, seed=1),
            randn(batch, 2, 7, 6, 16, dtype=dtype, seed=2),
            randn(batch, 2, 7, 6, 8, dtype=dtype, seed=3))


def _na_call(q, k, v, backend):
    return ops.neighborhood_attention_2d(q, k, v, _KERNEL, dilation=_DILATION, backend=backend)


def _na_bwd_args(q, k, v):
    fixed = (*_KERNEL, *_DILATION, 0.25)
    out, lse = na_tri.FUSED_OP.forward_op(q, k, v, *fixed, True)
    return (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse, *fixed,
            _ALL_GRADS[:3])


NEIGHBORHOOD_ATTENTION = OpCase(
    "neighborhood_attention_2d", ops.neighborhood_attention_2d, _na_inputs, _na_call,
    opchecks=(OpCheck("fwd", na_tri.FUSED_OP.forward_op,
                      lambda q, k, v: (q, k, v, *_KERNEL, *_DILATION, 0.25, True)),
              OpCheck("bwd", na_tri.FUSED_OP.backward_op, _na_bwd_args, BACKWARD_OP_TESTS)),
    macs=lambda q, k, v: ops.neighborhood_attention_macs(q.shape, v.shape, _KERNEL),
)


# --------------------------------------------------------------------------- masked attention

def _mask(*shape, density, seed=0):
    gen = torch.Generator().manual_seed(seed + 100)
    return (torch.rand(*shape, generator=gen) < density).to(DEVICE)


def _masked_inputs(batch=2, dtype=torch.float32):
    mask = _mask(1, 2, 13, 15, density=0.4)     # broadcast over the batch
    mask[0, 0, 3] = False                       # a fully masked row: output 0, gradient 0
    return (randn(batch, 2, 13, 16, dtype=dtype, seed=1),
            randn(batch, 2, 15, 16, dtype=dtype, seed=2),
            randn(batch, 2, 15, 8, dtype=dtype, seed=3), ops.pack_mask(mask))


def _masked_call(q, k, v, mask, backend):
    return ops.masked_attention(q, k, v, mask, backend=backend)


def _as_bool(mask, k):
    return ops.unpack_mask(mask, k.shape[2])


def _masked_fwd_args(packed):
    return lambda q, k, v, mask: (q, k, v, mask if packed else _as_bool(mask, k), 0.25, True)


def _masked_bwd_args(packed):
    def args(q, k, v, mask):
        mask = mask if packed else _as_bool(mask, k)
        out, lse = masked_tri.FUSED_OP.forward_op(q, k, v, mask, 0.25, True)
        return (torch.randn_like(out), q.detach(), k.detach(), v.detach(), mask, out.detach(),
                lse, 0.25, _ALL_GRADS[:3])
    return args


MASKED_ATTENTION = OpCase(
    "masked_attention", ops.masked_attention, _masked_inputs, _masked_call,
    opchecks=tuple(
        check for packed, form in ((False, "bool"), (True, "packed")) for check in (
            OpCheck(f"fwd-{form}", masked_tri.FUSED_OP.forward_op, _masked_fwd_args(packed)),
            OpCheck(f"bwd-{form}", masked_tri.FUSED_OP.backward_op, _masked_bwd_args(packed),
                    BACKWARD_OP_TESTS))),
    macs=lambda q, k, v, mask: ops.masked_attention_macs(q.shape, k.shape, v.shape),
)


# --------------------------------------------------------------------------- reversed attention

def _reversed_inputs(batch=2, dtype=torch.float32):
    # q, k, v, the head selector p and DependencyViT's per-token message weight m
    return (randn(batch, 2, 19, 16, dtype=dtype, seed=1),
            randn(batch, 2, 19, 16, dtype=dtype, seed=2),
            randn(batch, 2, 19, 8, dtype=dtype, seed=3),
            rand(batch, 2, 19, dtype=dtype, seed=4) + 0.1, rand(batch, 19, dtype=dtype, seed=9))


def _reversed_view(q, k, v, p, m):
    return q, k, v, p * m[:, None, :]


def _reversed_call(q, k, v, weights, backend):
    return ops.reversed_attention(q, k, v, weights, backend=backend)


def _reversed_fwd_args(weighted, return_scores):
    return lambda q, k, v, w: (q, k, v, w if weighted else None, 0.25, return_scores, True)


def _reversed_bwd_args(needs_input_grad):
    def args(q, k, v, w):
        out, _, lse = reversed_tri.FUSED_OP.forward_op(q, k, v, w, 0.25, False, True)
        return (torch.randn_like(out), q.detach(), k.detach(), v.detach(), w.detach(), lse, 0.25,
                False, needs_input_grad)
    return args


REVERSED_ATTENTION = OpCase(
    "reversed_attention", ops.reversed_attention, _reversed_inputs, _reversed_call,
    view=_reversed_view,
    opchecks=(OpCheck("fwd-weights-scores", reversed_tri.FUSED_OP.forward_op,
                      _reversed_fwd_args(True, True)),
              OpCheck("fwd-no-weights", reversed_tri.FUSED_OP.forward_op,
                      _reversed_fwd_args(False, False)),
              OpCheck("bwd", reversed_tri.FUSED_OP.backward_op,
                      _reversed_bwd_args(_ALL_GRADS[:4]), BACKWARD_OP_TESTS),
              OpCheck("bwd-q-only", reversed_tri.FUSED_OP.backward_op,
                      _reversed_bwd_args([True, False, False, False]), BACKWARD_OP_TESTS)),
    macs=lambda q, k, v, w: ops.reversed_attention_macs(q.shape, v.shape),
)


# --------------------------------------------------------------------------- ELA gate

def _ela_inputs(batch=2, dtype=torch.float32):
    # x (H != W, both past the conv's reach at the borders), a grouped k = 5 conv weight (2
    # channels a group: ELA-S / L-like), the GroupNorm's gamma and beta
    return (randn(batch, 8, 5, 7, dtype=dtype, seed=1), randn(8, 2, 5, dtype=dtype, seed=2),
            rand(8, dtype=dtype, seed=3) + 0.5, randn(8, dtype=dtype, seed=4))


def _ela_call(x, weight, gn_weight, gn_bias, backend):
    return ops.ela_gate(x, weight, gn_weight, gn_bias, num_groups=4, backend=backend)


def _ela_fwd_args(x, weight, gn_weight, gn_bias):
    return (x, weight, gn_weight, gn_bias, 4, 1e-5, True)


def _ela_bwd_args(needs_input_grad):
    def args(x, weight, gn_weight, gn_bias):
        out, z, a = ela_tri.FUSED_OP.forward_op(x, weight, gn_weight, gn_bias, 4, 1e-5, True)
        return (torch.randn_like(out), x.detach(), weight.detach(), gn_weight.detach(),
                gn_bias.detach(), z, a, 4, 1e-5, needs_input_grad)
    return args


ELA_GATE = OpCase(
    "ela_gate", ops.ela_gate, _ela_inputs, _ela_call,
    opchecks=(OpCheck("fwd", ela_tri.FUSED_OP.forward_op, _ela_fwd_args),
              OpCheck("bwd", ela_tri.FUSED_OP.backward_op, _ela_bwd_args(_ALL_GRADS[:4]),
                      BACKWARD_OP_TESTS),
              OpCheck("bwd-params-only", ela_tri.FUSED_OP.backward_op,
                      _ela_bwd_args([False, True, True, True]), BACKWARD_OP_TESTS)),
    macs=lambda x, weight, *_: ops.ela_gate_macs(x.shape, weight.shape),
)


# --------------------------------------------------------------------------- ULSAM attention

def _ulsam_inputs(batch=2, dtype=torch.float32):
    # x: in each (sample, channel) plane the 35 values are distinct multiples of 1/8 (exact in
    # fp16 / bf16), so no 3x3 window has two equal maxima in any dtype (the max-pool's gradient
    # goes to one position; a tie would be routed differently by the two paths); 8 channels in
    # g = 2 subspaces of 4; positive biases keep most logits past the ReLU
    gen = torch.Generator().manual_seed(11)
    planes = torch.rand(batch * 8, 35, generator=gen).argsort(-1)  # a permutation per plane
    x = ((planes.float() - 17) / 8).reshape(batch, 8, 5, 7).to(dtype).to(DEVICE)
    return (x, rand(8, dtype=dtype, seed=2) + 0.5, randn(8, dtype=dtype, seed=3) * 0.5,
            randn(2, 4, dtype=dtype, seed=4), rand(2, dtype=dtype, seed=5) + 0.2)


def _ulsam_call(x, dw_scale, dw_shift, pw_weight, pw_bias, backend):
    return ops.ulsam_attention(x, dw_scale, dw_shift, pw_weight, pw_bias, backend=backend)


def _ulsam_fwd_args(*tensors):
    return (*tensors, True)


def _ulsam_bwd_args(needs_input_grad):
    def args(*tensors):
        out, s, attn = ulsam_tri.FUSED_OP.forward_op(*tensors, True)
        return (torch.randn_like(out), *(t.detach() for t in tensors), s, attn, needs_input_grad)
    return args


ULSAM_ATTENTION = OpCase(
    "ulsam_attention", ops.ulsam_attention, _ulsam_inputs, _ulsam_call,
    opchecks=(OpCheck("fwd", ulsam_tri.FUSED_OP.forward_op, _ulsam_fwd_args),
              OpCheck("bwd", ulsam_tri.FUSED_OP.backward_op, _ulsam_bwd_args(_ALL_GRADS[:5]),
                      BACKWARD_OP_TESTS),
              OpCheck("bwd-params-only", ulsam_tri.FUSED_OP.backward_op,
                      _ulsam_bwd_args([False, True, True, True, True]), BACKWARD_OP_TESTS)),
    macs=lambda x, *_: ops.ulsam_attention_macs(x.shape),
)


# --------------------------------------------------------------------------- mask helpers

_LK = 19


def _no_backend(fn):
    def call(*tensors, backend):
        assert backend is None, "the mask helpers have no backend choice"
        return fn(*tensors)
    return call


PACK_MASK = OpCase(
    "pack_mask", ops.pack_mask,
    lambda batch=2, dtype=None: (_mask(batch, 2, 5, _LK, density=0.5),),
    _no_backend(ops.pack_mask), backends=(None,), backward=False)

UNPACK_MASK = OpCase(
    "unpack_mask", ops.unpack_mask,
    lambda batch=2, dtype=None: (ops.pack_mask(_mask(batch, 2, 5, _LK, density=0.5)),),
    _no_backend(lambda packed: ops.unpack_mask(packed, _LK)), backends=(None,), backward=False)


def _topk_inputs(batch=2, dtype=None):
    return (randn(batch, 2, 5, _LK, seed=7).topk(4, dim=-1, sorted=False).indices,)


TOPK_MASK = OpCase(
    "topk_mask", ops.topk_mask, _topk_inputs,
    _no_backend(lambda indices: ops.topk_mask(indices, _LK)), backends=(None,), backward=False,
)


CASES = (WINDOW_ATTENTION, WINDOW_DEPTHWISE_CONV, ROUTED_ATTENTION, HALO_ATTENTION,
         NEIGHBORHOOD_ATTENTION, MASKED_ATTENTION, REVERSED_ATTENTION, ELA_GATE, ULSAM_ATTENTION,
         PACK_MASK, UNPACK_MASK, TOPK_MASK)
