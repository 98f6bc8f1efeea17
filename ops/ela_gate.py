"""Efficient Local Attention (ELA) as one function: strip means, a shared 1-D conv, GroupNorm,
sigmoid, and the broadcast product.

For ``x`` of shape ``(B, C, H, W)``:

    z_h = mean_j x[..., :, j]          (B, C, H)      z_w = mean_i x[..., i, :]   (B, C, W)
    a_h = sigmoid(GN(conv1d(z_h)))                    a_w = sigmoid(GN(conv1d(z_w)))
    out = x * a_h[..., :, None] * a_w[..., None, :]

with one ``Conv1d(C, C, k, padding=k // 2, groups=C // weight.shape[1], bias=False)`` and one
``GroupNorm(num_groups, C)`` whose parameters both directions share, the GroupNorm statistics
taken separately per direction (Xu & Wan, arXiv:2403.01123; spec ``ela.md`` section 2).

The work is two passes over the feature map (the strip means, the product) around a few hundred
FLOPs per pixel on ``(B, C, H + W)`` sequences. The paths:

* reference: PyTorch. Without autograd (inference) the product is written in place into one new
  tensor: the official ``x * a_h * a_w`` allocates a second full-size temporary, and on a CPU the
  page faults of that fresh allocation cost more than the arithmetic (``model_cards/ela.md``).
* triton: one kernel reads ``x`` once for both strip means (``(B, C, H + W)``), PyTorch runs the
  tiny conv / GroupNorm / sigmoid on the sequences, and a second kernel writes the product; each
  kernel has its backward kernel (:mod:`ops._triton_ela_gate`).

The op is differentiable in ``x``, the conv weight and both GroupNorm parameters on both paths.
"""
import torch
import torch.nn.functional as F

from ._backend import select_backend
from ._fx import fx_leaf

__all__ = ["ela_gate", "ela_gate_reference", "ela_gate_macs", "ela_sequence_gate"]


def _check_inputs(x, weight, gn_weight, gn_bias, num_groups):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("ela_gate: x must be a 4-D (B, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"ela_gate: x must be a floating-point tensor, got {x.dtype}")
    C = x.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3 or weight.shape[0] != C:
        raise ValueError(f"ela_gate: weight must be the Conv1d weight (C={C}, C / groups, k), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight}")
    if C % weight.shape[1]:
        raise ValueError(f"ela_gate: weight.shape[1]={weight.shape[1]} (channels per conv group) "
                         f"does not divide C={C}")
    if weight.shape[-1] % 2 == 0:
        raise ValueError(f"ela_gate: the kernel size must be odd (padding k // 2 keeps the length), "
                         f"got {weight.shape[-1]}")
    for name, t in (("gn_weight", gn_weight), ("gn_bias", gn_bias)):
        if not isinstance(t, torch.Tensor) or t.shape != (C,):
            raise ValueError(f"ela_gate: {name} must be a ({C},) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t}")
    if not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"ela_gate: num_groups={num_groups!r} must be a positive divisor of "
                         f"C={C}")
    for name, t in (("weight", weight), ("gn_weight", gn_weight), ("gn_bias", gn_bias)):
        if t.device != x.device or t.dtype != x.dtype:
            raise TypeError(f"ela_gate: {name} must have x's device and dtype ({x.device}, "
                            f"{x.dtype}), got ({t.device}, {t.dtype})")


def ela_sequence_gate(z, weight, gn_weight, gn_bias, num_groups: int, eps: float):
    """``sigmoid(GN(conv1d(z)))`` of one direction's strip means ``z`` ``(B, C, L)``."""
    groups = z.shape[1] // weight.shape[1]
    y = F.conv1d(z, weight, None, 1, weight.shape[-1] // 2, 1, groups)
    return torch.sigmoid(F.group_norm(y, num_groups, gn_weight, gn_bias, eps))


def ela_gate_reference(x, weight, gn_weight, gn_bias, num_groups: int, eps: float):
    """The definition in PyTorch (the official order ``(x * a_h) * a_w``)."""
    B, H, W = x.shape[0], x.shape[2], x.shape[3]
    if H == W:
        # one conv / GroupNorm / sigmoid call for both directions, stacked along the batch (each
        # sample's statistics are its own): half the small-op overhead that dominates at batch 1
        a = ela_sequence_gate(torch.cat([x.mean(3), x.mean(2)]), weight, gn_weight, gn_bias,
                              num_groups, eps)
        a_h, a_w = a[:B], a[B:]
    else:
        a_h = ela_sequence_gate(x.mean(3), weight, gn_weight, gn_bias, num_groups, eps)
        a_w = ela_sequence_gate(x.mean(2), weight, gn_weight, gn_bias, num_groups, eps)
    out = x * a_h.unsqueeze(-1)
    if torch.is_grad_enabled() and (out.requires_grad or a_w.requires_grad):
        return out * a_w.unsqueeze(-2)
    # Nothing to differentiate: multiply in place, no second full-size tensor (the product's
    # backward would need the value it overwrites).
    return out.mul_(a_w.unsqueeze(-2))




@fx_leaf
def ela_gate(x, weight, gn_weight, gn_bias, *, num_groups, eps=1e-5, backend=None):
    """ELA's attention applied to ``x``: ``x * a_h * a_w`` (module docstring).

    Args:
        x: ``(B, C, H, W)``, any strides; any ``H, W >= 1`` (shorter than the kernel too: the
            conv pads with zeros).
        weight: the shared Conv1d weight ``(C, C / groups, k)``, ``k`` odd; ``groups`` is read from
            its shape (``C`` for ELA-T / B, ``C // 8`` for ELA-S / L).
        gn_weight, gn_bias: the shared GroupNorm's ``(C,)`` affine parameters.
        num_groups: the GroupNorm's group count (must divide ``C``).
        eps: the GroupNorm's epsilon.
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, C, H, W)`` in ``x``'s dtype (contiguous NCHW).
    """
    _check_inputs(x, weight, gn_weight, gn_bias, num_groups)
    if select_backend("ela_gate", backend, x, x, head_dims={}) == "triton":
        from ._triton_ela_gate import ela_gate_triton
        return ela_gate_triton(x, weight, gn_weight, gn_bias, num_groups, float(eps))
    return ela_gate_reference(x, weight, gn_weight, gn_bias, num_groups, float(eps))


def ela_gate_macs(x_shape, weight_shape, gn_affine=True):
    """What fvcore counts for one call, on either path: the two Conv1d calls
    (``B * C * L * (C / groups) * k`` for ``L = H`` and ``L = W``) and the two GroupNorms
    (fvcore's rule: 5 per element with affine parameters, 4 without). The strip means, the
    sigmoid and the product are not multiply-adds in fvcore's count (it skips ``mean`` / ``mul``),
    so neither path counts them; they are ``B * C * H * W * 4`` elementwise operations."""
    B, C, H, W = x_shape
    per_channel_taps = weight_shape[1] * weight_shape[2]
    norm = 5 if gn_affine else 4
    return B * C * (H + W) * (per_channel_taps + norm)
