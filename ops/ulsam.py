"""ULSAM's subspace attention (Saini, Jha et al., WACV 2020), in its inference form.

The channels of ``x`` (B, C, H, W) are split in order into ``g`` subspaces of ``G = C / g``
channels. Per subspace ``n``:

    d   = relu(x_n * dw_scale + dw_shift)            # 1x1 depthwise conv + BN, folded per channel
    p   = max_pool(d, 3, stride 1, padding 1)
    s   = relu(pw_weight[n] . p + pw_bias[n])        # G -> 1 conv + BN, folded
    A_n = softmax of s over the H*W positions of each sample
    out_n = x_n * A_n + x_n                          # the one map A_n scales every channel of n

In training the two BatchNorms use batch statistics, which a per-pixel fold cannot express; the
module (``backbones.ulsam.ULSAM``) runs them itself there and calls this op in eval mode, where
they are affine maps.

Padding of the max-pool: PyTorch pads with -inf; ``d >= 0`` after the ReLU and the window centre
is always inside, so padding with 0 gives the same maximum (a kernel may use either).
"""
import torch
import torch.nn.functional as F

from ._backend import select_backend
from ._fx import fx_leaf

__all__ = ["ulsam_attention", "ulsam_attention_reference", "ulsam_attention_macs",
           "max_pool3x3_nonneg", "subspace_conv", "apply_subspace_attention"]


def _check_inputs(x, dw_scale, dw_shift, pw_weight, pw_bias):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x must be a 4-D (B, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    C = x.shape[1]
    if not isinstance(pw_weight, torch.Tensor) or pw_weight.dim() != 2:
        got = tuple(pw_weight.shape) if isinstance(pw_weight, torch.Tensor) else type(pw_weight)
        raise ValueError(f"pw_weight must be (g, C / g): one row of weights per subspace, got {got}")
    g, G = pw_weight.shape
    if g * G != C:
        raise ValueError(f"pw_weight {tuple(pw_weight.shape)} must be (g, C / g) with g * (C / g) "
                         f"= C = {C} (the channels of x)")
    for name, t, n in (("dw_scale", dw_scale, C), ("dw_shift", dw_shift, C), ("pw_bias", pw_bias, g)):
        if not isinstance(t, torch.Tensor) or t.shape != (n,):
            raise ValueError(f"{name} must be a ({n},) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}")
    for name, t in (("dw_scale", dw_scale), ("dw_shift", dw_shift), ("pw_weight", pw_weight),
                    ("pw_bias", pw_bias)):
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name} must have x's dtype and device ({x.dtype}, {x.device}), got "
                            f"{t.dtype}, {t.device}")


def max_pool3x3_nonneg(d):
    """``F.max_pool2d(d, 3, 1, 1)`` for ``d >= 0``: a 3-wide max along W, then along H, over a
    zero border. Equal bit for bit (the -inf padding never wins against values >= 0), and on the
    CPU ~10x faster than PyTorch's NCHW max-pool kernel, the official module's largest cost."""
    p = F.pad(d, (1, 1, 1, 1))
    r = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(r[..., :-2, :], r[..., 1:-1, :]), r[..., 2:, :])


def subspace_conv(p, pw_weight, pw_bias):
    """Each subspace's G -> 1 conv of ``p`` (B, C, H, W) -> (B, g, H, W). One batched
    contraction over the g subspaces (a grouped ``conv2d`` with g outputs is as exact but its CPU
    kernel is ~100x slower at g = 16)."""
    g, G = pw_weight.shape
    return torch.einsum("bnchw,nc->bnhw", p.unflatten(1, (g, G)), pw_weight) + pw_bias[:, None, None]


def apply_subspace_attention(x, s):
    """``x * A + x``, A = softmax of the logits ``s`` (B, g, H, W) over the H*W positions,
    broadcast to the G channels of each subspace."""
    g = s.shape[1]
    attn = s.flatten(2).softmax(-1).view_as(s)
    xs = x.unflatten(1, (g, x.shape[1] // g))
    return torch.addcmul(xs, xs, attn.unsqueeze(2)).flatten(1, 2)


def ulsam_attention_reference(x, dw_scale, dw_shift, pw_weight, pw_bias):
    """The definition, vectorised over subspaces: one elementwise affine, one max-pool, one
    contraction, one softmax and one multiply-add for all ``g`` subspaces."""
    d = torch.relu(torch.addcmul(dw_shift[:, None, None], x, dw_scale[:, None, None]))
    logits = torch.relu(subspace_conv(max_pool3x3_nonneg(d), pw_weight, pw_bias))
    return apply_subspace_attention(x, logits)




@fx_leaf
def ulsam_attention(x, dw_scale, dw_shift, pw_weight, pw_bias, *, backend=None):
    """ULSAM's subspace attention with folded BatchNorms (module docstring).

    Args:
        x: ``(B, C, H, W)``.
        dw_scale, dw_shift: ``(C,)``, the depthwise 1x1 conv and its BN as one per-channel affine.
        pw_weight: ``(g, C / g)``, row ``n`` is subspace ``n``'s G -> 1 conv, BN scale folded in.
        pw_bias: ``(g,)``, the G -> 1 conv's bias with the BN folded in.
        backend: ``"triton"``, ``"reference"`` or None (see :mod:`ops._backend`).

    Returns:
        ``(B, C, H, W)``: ``x * (1 + A)``, A the subspace's spatial softmax map.
    """
    _check_inputs(x, dw_scale, dw_shift, pw_weight, pw_bias)
    if select_backend("ulsam_attention", backend, x, x, head_dims={}) == "triton":
        from ._triton_ulsam import ulsam_attention_triton
        return ulsam_attention_triton(x, dw_scale, dw_shift, pw_weight, pw_bias)
    return ulsam_attention_reference(x, dw_scale, dw_shift, pw_weight, pw_bias)


def ulsam_attention_macs(x_shape):
    """What fvcore counts for one call, on either path: the G -> 1 contraction, ``B * C * H * W``
    multiply-adds (the reference's einsum; ``ops.flops`` counts the fused op alike). The folded
    depthwise affine is an elementwise ``addcmul`` fvcore does not count; the ULSAM paper counts it
    as a 1x1 conv, ``2 * B * C * H * W`` in all (``backbones.ulsam.ulsam_macs``). The max-pool,
    softmax and multiply-add are not multiply-adds in either count."""
    B, C, H, W = x_shape
    return B * C * H * W
