"""Fused Triton path of :func:`ops.routed_attention_2d`: the ``ROUTED`` (indexed) pattern of the
block-sparse kernel family (:mod:`ops._triton_blocksparse`).

A query group is one region; its key list is the virtual concatenation of the ``topk`` listed
regions' tokens, ``topk * T`` of them (``T = rh * rw``): key ``j`` is token ``j % T`` of region
``region_index[b, r, j // T]``, each lane computing its own region and grid position from the
index (an index-driven load through the inputs' strides: no gathered copy of K/V ever exists).
Key blocks run over the flat list, so one block spans several listed regions whenever
``T < BLOCK_N`` (BiFormer stage 3 has 2x2 regions: a 64-key block holds 16 of them) and the key
side wastes no lanes; repeated indices are simply listed twice, as the gather formulation does.

Backward: a key region is listed by data-dependent query regions (maybe twice by one), so the dQ
pass also scatters ``dK = scale * dSᵀ Q`` and ``dV = Pᵀ dO`` with fp32 ``tl.atomic_add`` into fp32
buffers (then cast to the input dtype). On a GPU the order of the fp32 additions varies between
runs, so dK/dV are **not bitwise deterministic** (``torch.use_deterministic_algorithms(True)``
makes the CUDA backward raise; use ``backend='reference'`` there). Under the interpreter programs
run sequentially and are deterministic.
"""
import warnings
from typing import List, Tuple

import torch
import triton

from . import _triton_blocksparse as bsa
from ._custom_op import FusedOp

__all__ = ["routed_attention_triton"]


def _config(region_tokens, list_tokens, wide, backward):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). Query tiles never exceed the region's next power
    of two; key blocks run over the flat routed list. GPU choices are untuned starting points."""
    fit_m, fit_n = bsa.fit(region_tokens), bsa.fit(list_tokens)
    if bsa.INTERPRETED:
        config = (min(128, fit_m), min(128, fit_n), 1, 1)
    elif wide:
        config = (min(32, fit_m), min(32, fit_n), 8, 2)
    elif backward:
        config = (min(64, fit_m), min(32, fit_n), 4, 1)
    else:
        config = (min(64, fit_m), min(64, fit_n), 4, 2)
    return (bsa.cap(config[0]), bsa.cap(config[1])) + config[2:]


def routed_pattern(q, v, region_index, region_size, scale):
    H, W = q.shape[2:4]
    rh, rw = region_size
    regions_x = W // rw
    regions = (H // rh) * regions_x
    topk = region_index.shape[-1]
    T = rh * rw
    wide = max(bsa.fit(q.shape[-1]), bsa.fit(v.shape[-1])) > 128
    bm, bn, warps, stages = _config(T, topk * T, wide, backward=False)
    fwd = bsa.Launch(regions, triton.cdiv(T, bm), bm, bn, warps, stages)
    bm, bn, warps, stages = _config(T, topk * T, wide, backward=True)
    dq = bsa.Launch(regions, triton.cdiv(T, bm), bm, bn, warps, stages)
    return bsa.Pattern(bsa.ROUTED, (rh, rw, regions_x, topk), (H, W), (H, W), scale, fwd, dq,
                       None, index=region_index)


def _alert_not_deterministic():
    """PyTorch's convention for nondeterministic CUDA kernels (as ``index_add_`` does): an
    error under ``torch.use_deterministic_algorithms(True)``, a warning with ``warn_only``."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = ("routed_attention_2d's triton backward accumulates dK/dV with fp32 atomics and is not "
           "deterministic; use backend='reference' under torch.use_deterministic_algorithms(True)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg)
    else:
        raise RuntimeError(msg)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor,
             region_h: int, region_w: int, scale: float, for_backward: bool
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    pattern = routed_pattern(q, v, region_index, (region_h, region_w), scale)
    return bsa.attention_forward(q, k, v, pattern, store_lse=for_backward)


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              region_index: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, region_h: int,
              region_w: int, scale: float, needs_input_grad: List[bool]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    need_dq, need_dk, need_dv = needs_input_grad
    if (need_dk or need_dv) and q.is_cuda:
        _alert_not_deterministic()
    pattern = routed_pattern(q, v, region_index, (region_h, region_w), scale)
    return bsa.attention_backward(dout, q, k, v, out, lse, pattern, need_dq=need_dq,
                                  need_dkdv=need_dk or need_dv)[:3]


FUSED_OP = FusedOp("routed_attention", forward=_forward, backward=_backward,
                   forward_fake=bsa.fake_forward)


def routed_attention_triton(q, k, v, region_index, region_size, scale):
    """Triton implementation of ``routed_attention_reference``; arguments already validated by
    :func:`ops.routed_attention_2d` (``region_index`` int64 in range, ``region_size`` ints)."""
    return FUSED_OP(q, k, v, region_index, *region_size, float(scale))
