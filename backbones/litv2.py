"""LITv2: Fast Vision Transformers with HiLo Attention.

Paper: "Fast Vision Transformers with HiLo Attention", Zizheng Pan, Jianfei Cai, Bohan Zhuang,
NeurIPS 2022, arXiv:2205.13213.
Official code and weights: https://github.com/ziplab/LITv2 (Apache-2.0). This is an independent
implementation that loads the official checkpoints unchanged (classification releases and the
dense-prediction backbones' mmdet / mmseg files).

Layout: a 4x4 patch embedding (conv + LayerNorm), four stages, final LayerNorm, mean pool, linear
head. Stages 0-1 hold ConvFFN-only blocks (``x + DWMlp(norm2(x))``: no attention), stages 2-3 HiLo
blocks. Between stages a deformable token merging (DTM): a 2x2 stride-2 deformable convolution
(``torchvision.ops.deform_conv2d``; offsets from a 2x2 stride-2 conv), BatchNorm, GELU. In the zoo
layout every stage *starts* with its downsample (timm Swin style), so a stage's output is the
official ``x_out`` before the DTM: exactly what the official dense backbones return as features.

HiLo splits the heads of a block: ``int(num_heads * alpha)`` Lo-Fi heads (every query attends to
keys / values computed from the ``s x s`` average-pooled map) and the rest Hi-Fi heads (attention
inside non-overlapping ``s x s`` windows, through ``ops.window_attention_2d``). Each branch has its
own projections (``l_q``, ``l_kv``, ``l_proj`` / ``h_qkv``, ``h_proj``) and the output is
``cat([Hi-Fi, Lo-Fi])``. A window size of 1 makes every head Lo-Fi without pooling: plain global
attention (``ops.window_attention_2d`` with one window).

Any input size works, following the official dense backbones: the image is zero-padded on the
bottom / right to a multiple of the patch size, HiLo zero-pads its (normed) input map to a multiple
of ``s`` *before* the projections (padded tokens carry the projection biases and are not masked;
average pooling divides by ``s * s``) and crops both branches back, DTM floors odd sizes. At sizes
the official classifier accepts this is the identical computation.
"""
import re
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, get_norm_layer
from timm.models import generate_default_cfgs
from timm.models._pretrained import PretrainedCfg
from torchvision.ops import deform_conv2d

import ops

from ._builder import build_zoo_model
from ._helpers import unwrap_checkpoint
from ._family import Family, PaperResult, register_family
from ._registry import register_zoo_model
from .layers import (DeviceLike, Stage, StagedBackboneMixin, calculate_drop_path_rates,
                     factory_context, notrace_function)
from .query_attention import litv2_query_attention

__all__ = ["LITv2", "HiLoAttention", "DeformableTokenMerging", "checkpoint_filter_fn",
           "create_from_official", "hilo_head_split"]


def hilo_head_split(num_heads, alpha, window_size):
    """``(lofi_heads, hifi_heads)`` exactly as the official HiLo computes them: Lo-Fi gets
    ``int(num_heads * alpha)`` heads (Python float product, truncated: 12 * 0.7 -> 8), Hi-Fi the
    rest; a window size of 1 gives every head to Lo-Fi (plain global attention)."""
    if window_size == 1:
        return num_heads, 0
    lofi = int(num_heads * alpha)
    return lofi, num_heads - lofi


@notrace_function
def pad_bottom_right(x: torch.Tensor, multiple: int, channels_last: bool) -> torch.Tensor:
    """Zero-pad the bottom / right of a map (NHWC when ``channels_last``, else NCHW) to a multiple
    of ``multiple``. Its own FX leaf: whether to pad depends on the traced input's shape."""
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    pad_b, pad_r = (-h) % multiple, (-w) % multiple
    if pad_b == 0 and pad_r == 0:
        return x
    if channels_last:
        return F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return F.pad(x, (0, pad_r, 0, pad_b))


class HiLoAttention(nn.Module):
    """HiLo attention on an NHWC map: Hi-Fi heads (``s x s`` window attention) then Lo-Fi heads
    (attention to the ``s x s`` average-pooled map), concatenated in that order.

    Args:
        dim: channels; num_heads: heads, ``dim // num_heads`` channels each.
        window_size: ``s`` (>= 1). 1: all heads Lo-Fi, no pooling (global attention).
        alpha: fraction of heads for Lo-Fi (``int(num_heads * alpha)``).
        qkv_bias: bias of ``l_q``, ``l_kv``, ``h_qkv`` (the output projections always have one).
        qk_scale: logit scale, default ``head_dim ** -0.5`` (0 / None: the default, as officially).
    """

    def __init__(self, dim, num_heads, window_size=2, alpha=0.9, qkv_bias=True, qk_scale=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if int(window_size) != window_size or window_size < 1:
            raise ValueError(f"HiLo window_size must be a positive int, got {window_size}")
        if not 0. <= alpha <= 1.:
            raise ValueError(f"alpha (the Lo-Fi share of the heads) must be in [0, 1], got {alpha}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, int(window_size)
        self.head_dim = dim // num_heads
        self.lofi_heads, self.hifi_heads = hilo_head_split(num_heads, alpha, self.window_size)
        self.lofi_dim, self.hifi_dim = self.lofi_heads * self.head_dim, self.hifi_heads * self.head_dim
        self.scale = qk_scale or self.head_dim ** -0.5  # `or`: the official code ignores 0
        if self.lofi_heads:
            self.l_q = nn.Linear(dim, self.lofi_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * self.lofi_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(self.lofi_dim, self.lofi_dim)
        if self.hifi_heads:
            self.h_qkv = nn.Linear(dim, 3 * self.hifi_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(self.hifi_dim, self.hifi_dim)

    def extra_repr(self):
        return (f"dim={self.dim}, window_size={self.window_size}, lofi_heads={self.lofi_heads}, "
                f"hifi_heads={self.hifi_heads}")

    def hifi(self, x):
        """Window attention on the padded map ``(B, Hp, Wp, C)``, ``Hp``, ``Wp`` multiples of s."""
        B, Hp, Wp, _ = x.shape
        heads, d, s = self.hifi_heads, self.head_dim, self.window_size
        # q, k, v: (B, heads, Hp, Wp, d) strided views of the projection, channels [3][heads][d].
        q, k, v = self.h_qkv(x).view(B, Hp, Wp, 3, heads, d).permute(3, 0, 4, 1, 2, 5).unbind(0)
        out = ops.window_attention_2d(q, k, v, (s, s), scale=self.scale)
        return out.permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, self.hifi_dim)

    def lofi(self, x, H, W):
        """Queries of the ``H x W`` tokens against keys / values of the pooled padded map."""
        B, Hp, Wp, C = x.shape
        heads, d, s = self.lofi_heads, self.head_dim, self.window_size
        if s == 1:  # global attention over the grid: one window
            q = self.l_q(x).view(B, H, W, heads, d).permute(0, 3, 1, 2, 4)
            k, v = self.l_kv(x).view(B, H, W, 2, heads, d).permute(3, 0, 4, 1, 2, 5).unbind(0)
            out = ops.window_attention_2d(q, k, v, None, scale=self.scale)
            return out.permute(0, 2, 3, 1, 4).reshape(B, H, W, self.lofi_dim)
        # Pool the normed map (zero padding included, fixed divisor s*s), then project k, v.
        # flatten() rather than view(B, -1, ...): -1 is ambiguous for an empty batch
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), s, s).flatten(2).transpose(1, 2)
        k, v = self.l_kv(pooled).unflatten(-1, (2, heads, d)).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.l_q(x[:, :H, :W]).view(B, H * W, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return out.transpose(1, 2).reshape(B, H, W, self.lofi_dim)

    def forward(self, x):
        _, H, W, _ = x.shape
        # pad the normed input before the projections (official dense code)
        x = pad_bottom_right(x, self.window_size, True)
        outs = []
        if self.hifi_heads:
            outs.append(self.h_proj(self.hifi(x)[:, :H, :W]))
        if self.lofi_heads:
            outs.append(self.l_proj(self.lofi(x, H, W)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class DWMlp(nn.Module):
    """ConvFFN: fc1 -> depthwise 3x3 conv (zero padding) -> GELU -> dropout -> fc2 -> dropout.
    NHWC in and out."""

    def __init__(self, dim, hidden_dim, drop=0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        # Official DWMlp init: normal(0, sqrt(2 / fan_out)) with fan_out = 3 * 3 per group.
        nn.init.normal_(self.dwconv.weight, 0., (2. / 9.) ** 0.5)
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x):
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class LITBlock(nn.Module):
    """``x + dp(HiLo(norm1(x)))`` (attention stages only), then ``x + dp(DWMlp(norm2(x)))``.
    ConvFFN-only blocks have no ``norm1`` / ``attn`` (official key names kept)."""

    def __init__(self, dim, num_heads, window_size=0, alpha=0.9, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, proj_drop=0., drop_path=0., norm_layer=nn.LayerNorm):
        super().__init__()
        if window_size:
            self.norm1 = norm_layer(dim)
            self.attn = HiLoAttention(dim, num_heads, window_size, alpha, qkv_bias, qk_scale)
        else:
            self.norm1 = self.attn = None
        self.norm2 = norm_layer(dim)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio), proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@notrace_function
def deform_conv2d_float32(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, stride: Tuple[int, int],
                          padding: Tuple[int, int]) -> torch.Tensor:
    """``deform_conv2d`` computed in at least float32, returned in ``x``'s dtype. The official DCN
    runs in float32 under mixed precision (apex ``float_function`` / ``custom_fwd(cast_inputs=
    float32)``), and torchvision's CPU kernel has no bfloat16. An FX leaf: it branches on dtype."""
    if x.dtype in (torch.float16, torch.bfloat16):
        out = deform_conv2d(x.float(), offset.float(), weight.float(), bias.float(), stride=stride,
                            padding=padding)
        return out.to(x.dtype)
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding)


class DeformConv2dPack(nn.Module):
    """DCNv1 convolution with its own offset conv (the official ``DeformConv2dPack``'s weights and
    numerics), through ``torchvision.ops.deform_conv2d``: no compiled extension, any batch size.

    Offsets: ``conv_offset`` (same kernel / stride / padding, 2 channels per kernel tap ``k =
    ki * kw + kj``: channel ``2k`` the row shift, ``2k + 1`` the column shift), zero-initialised so
    training starts from a plain strided conv. Samples are bilinear, zero outside the map.
    """

    def __init__(self, in_chs, out_chs, kernel_size=2, stride=2, padding=0):
        super().__init__()
        # tuples: torchvision's deform_conv2d schema (TorchScript) takes no bare ints
        self.stride, self.padding = (stride, stride), (padding, padding)
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_chs))
        self.conv_offset = nn.Conv2d(in_chs, 2 * kernel_size * kernel_size, kernel_size, stride,
                                     padding)
        # nn.Conv2d's default init for the main weight / bias (the official reset_parameters).
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        bound = 1 / (in_chs * kernel_size * kernel_size) ** 0.5
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        offset = self.conv_offset(x)
        return deform_conv2d_float32(x, offset, self.weight, self.bias, self.stride, self.padding)


class DeformableTokenMerging(nn.Module):
    """DTM: deformable 2x2 stride-2 conv (C -> C_out) -> BatchNorm2d -> GELU; NHWC in and out.
    Odd sizes floor (the last row / column is reachable only through the offsets)."""

    def __init__(self, dim, dim_out):
        super().__init__()
        self.dconv = DeformConv2dPack(dim, dim_out, 2, 2, 0)
        self.norm = nn.BatchNorm2d(dim_out)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.dconv(x.permute(0, 3, 1, 2))
        return self.act(self.norm(x)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Zero-pad the image bottom / right to a multiple of the patch, conv patch x patch stride
    patch, LayerNorm, dropout (the official ``pos_drop``); NCHW in, NHWC out."""

    def __init__(self, in_chans, dim, patch_size=4, norm_layer=nn.LayerNorm, drop=0.):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = pad_bottom_right(x, self.patch_size, False)
        return self.drop(self.norm(self.proj(x).permute(0, 2, 3, 1)))


FEATURE_NORM_STYLES = ("detection", "segmentation")


def _feature_norm_stages(feature_norms, num_stages):
    """Stages whose features get a LayerNorm: None / False: none; ``'segmentation'`` / True: all
    (official mmseg backbone ``norm0..norm3``); ``'detection'``: all but stage 0 (official mmdet
    backbone ``norm1..norm3``); or an explicit sequence of stage indices."""
    if feature_norms is None or feature_norms is False:
        return ()
    if feature_norms is True or feature_norms == "segmentation":
        return tuple(range(num_stages))
    if feature_norms == "detection":
        return tuple(range(1, num_stages))
    if isinstance(feature_norms, str):
        raise ValueError(f"feature_norms must be None, True, one of {FEATURE_NORM_STYLES} or a "
                         f"sequence of stage indices, got {feature_norms!r}")
    if any(not -num_stages <= int(i) < num_stages for i in feature_norms):
        raise ValueError(f"feature_norms stage indices {tuple(feature_norms)} out of range for "
                         f"{num_stages} stages")
    return tuple(sorted({int(i) % num_stages for i in feature_norms}))


class LITv2(StagedBackboneMixin, nn.Module):
    """LITv2 backbone and classifier (timm API).

    Args:
        in_chans, num_classes, global_pool: as in timm (``global_pool`` ``'avg'`` or ``''``).
        patch_size: stem patch (4 in every release).
        embed_dim: stage-0 width; stage ``i`` has ``embed_dim * 2**i`` channels.
        depths: blocks per stage (any number of stages); num_heads: heads per stage
            (ConvFFN-only stages ignore them).
        window_sizes: per stage, ``0`` for a ConvFFN-only stage (no attention; the official
            ``has_msa=0``), else HiLo's ``s`` (the official ``local_ws``; 1 = global attention).
        alpha: Lo-Fi share of the heads, ``int(num_heads * alpha)`` Lo-Fi heads per HiLo block.
        mlp_ratio, qkv_bias, qk_scale: as in the official code (ConvFFN hidden width
            ``int(dim * mlp_ratio)``; ``qk_scale`` None or 0: ``head_dim ** -0.5``).
        drop_rate: dropout before the classifier (the official model has none);
            proj_drop_rate: dropout inside the ConvFFNs (the official ``drop_rate``, 0 in every
            release); pos_drop_rate: dropout after the patch embedding (the official classifier
            builds one from ``drop_rate`` but never calls it);
            drop_path_rate: stochastic depth, linear over all blocks (ConvFFN-only ones included).
        norm_layer: the token norm (patch embedding, blocks, final and feature norms); a callable
            ``norm_layer(dim)`` or a timm norm name. Default ``nn.LayerNorm`` (eps 1e-5), as
            officially. The DTM's BatchNorm is fixed.
        patch_norm: norm after the patch conv (official default True).
        final_norm: norm on the last stage's output (the classifier has it; the dense backbones
            do not).
        feature_norms: norms on the features of ``forward_intermediates`` / ``features_only``:
            None or False (raw stage outputs, default); True (one norm per stage, every stage: the
            meaning ``feature_norms=True`` has in every zoo family); ``'segmentation'`` (every
            stage too: the official mmseg backbone's ``norm0..norm3``); ``'detection'`` (every
            stage but the first: the official mmdet backbone's ``norm1..norm3``); or a sequence
            of stage indices.
        device, dtype: where and in which float precision to create parameters and buffers
            (``device="meta"`` allocates nothing).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            patch_size: int = 4,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_sizes: Sequence[int] = (0, 0, 2, 1),
            alpha: float = 0.9,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Union[str, Callable] = nn.LayerNorm,
            patch_norm: bool = True,
            final_norm: bool = True,
            feature_norms: Union[None, bool, str, Sequence[int]] = None,
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if attn_drop_rate:
            raise ValueError("LITv2: attention-probability dropout is not supported (the official "
                             "HiLo accepts attn_drop and ignores it; every release uses 0)")
        num_stages = len(depths)
        depths = tuple(depths)
        if not (len(num_heads) == len(window_sizes) == num_stages):
            raise ValueError(f"depths {depths}, num_heads {tuple(num_heads)} and window_sizes "
                             f"{tuple(window_sizes)} must have one entry per stage")
        if any(int(w) != w or w < 0 for w in window_sizes):
            raise ValueError(f"window_sizes {tuple(window_sizes)}: each must be 0 (ConvFFN-only "
                             "stage) or a positive HiLo window size")
        dims = tuple(embed_dim * 2 ** i for i in range(num_stages))
        norm_layer = get_norm_layer(norm_layer)
        normed = _feature_norm_stages(feature_norms, num_stages)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NHWC"
        self.grad_checkpointing = False
        # The smallest image whose last stage still has one token: ceil(H / p) >= 2**(n - 1).
        self.min_input_size = patch_size * (2 ** (num_stages - 1) - 1) + 1
        # outside the factory context: a bfloat16 default dtype would round the rates
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)

        with factory_context(device, dtype):
            self.stem = PatchEmbed(in_chans, dims[0], patch_size,
                                   norm_layer if patch_norm else None, pos_drop_rate)
            stages, self.feature_info = [], []
            for i in range(num_stages):
                down = DeformableTokenMerging(dims[i - 1], dims[i]) if i > 0 else None
                blocks = [LITBlock(dims[i], num_heads[i], int(window_sizes[i]), alpha, mlp_ratio,
                                   qkv_bias, qk_scale, proj_drop_rate, dpr[i][j], norm_layer)
                          for j in range(depths[i])]
                stages.append(Stage(down, blocks))
                self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i,
                                              module=f"stages.{i}"))
            self.stages = nn.Sequential(*stages)
            self.num_features = self.head_hidden_size = dims[-1]
            self.feature_norms = nn.ModuleList([
                norm_layer(d) if i in normed else nn.Identity() for i, d in enumerate(dims)
            ]) if normed else None
            self.norm = norm_layer(self.num_features) if final_norm else nn.Identity()
            self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool,
                                       drop_rate=drop_rate, input_fmt=self.output_fmt)
            self.apply(self._init_weights)


# ---------------------------------------------------------------------------------------------
# Official checkpoints

# Official key -> zoo key (after the mmdet / mmseg `backbone.` prefix is stripped).
_OFFICIAL_KEY_MAP = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.",
     lambda m: f"stages.{m[1]}.blocks.{m[2]}.mlp.dwconv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", lambda m: f"stages.{m[1]}.blocks.{m[2]}."),
    # The official DTM ends stage i; the zoo's stage i + 1 starts with it.
    (r"^layers\.(\d+)\.downsample\.dconv\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.dconv."),
    (r"^layers\.(\d+)\.downsample\.norm_layer\.",
     lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"^norm(\d+)\.", lambda m: f"feature_norms.{m[1]}."),
    (r"^head\.", "head.fc."),
]
_DENSE_HEAD_PREFIXES = ("neck.", "decode_head.", "auxiliary_head.", "rpn_head.", "roi_head.",
                        "bbox_head.", "mask_head.")


def _is_zoo_layout(state_dict):
    return any(k.startswith(("stem.", "stages.")) for k in state_dict)


def checkpoint_filter_fn(state_dict, model=None):
    """Official LITv2 checkpoint -> zoo keys; zoo-layout dicts pass unchanged.

    Takes the classification releases (``{'model': sd, 'optimizer': ..., ...}`` or a bare state
    dict; any wrapper or ``module.`` prefix, see ``unwrap_checkpoint``) and mmdet / mmseg files
    (``state_dict`` with ``backbone.`` keys; neck and heads dropped; ``backbone.norm{i}`` ->
    ``feature_norms.{i}``). With ``model`` given, keys the model does not have (``head`` / ``norm``
    for a dense backbone, ``feature_norms`` for a classifier) are dropped and missing
    ``feature_norms`` keep the model's fresh values (weight 1, bias 0), as the official dense
    backbones' non-strict load of a classification checkpoint does.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items()
                      if k.startswith("backbone.")}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_DENSE_HEAD_PREFIXES)}
    if _is_zoo_layout(state_dict):
        out = dict(state_dict)
    else:
        out = {}
        for key, value in state_dict.items():
            for pattern, repl in _OFFICIAL_KEY_MAP:
                key, n = re.subn(pattern, repl, key)
                if n:
                    break
            out[key] = value
    if model is not None:
        own = model.state_dict()
        for prefix in ("head.", "norm.", "feature_norms."):
            if not any(k.startswith(prefix) for k in own):
                out = {k: v for k, v in out.items() if not k.startswith(prefix)}
        if any(k.startswith("feature_norms.") for k in own):
            out = {k: v for k, v in out.items() if not k.startswith("feature_norms.") or k in own}
            for k, v in own.items():
                if k.startswith("feature_norms.") and k not in out:
                    out[k] = v
    return out


_OFFICIAL_CLASSES = {
    "classification": "classification/models/litv2.py:LITv2",
    "detection": "detection/mmdet/models/backbones/litv2.py:LITv2",
    "segmentation": "segmentation/mmseg/models/backbones/litv2.py:LITv2",
}


def _official_kind(official_class):
    """'classification' / 'detection' / 'segmentation' from an official class path. Every official
    class is named ``LITv2``; the file path (``detection/`` or ``mmdet``, ``segmentation/`` or
    ``mmseg``) tells the dense backbones apart, the class name alone means the classifier."""
    name = official_class or "LITv2"
    if name.split(":")[-1] != "LITv2":
        raise ValueError(f"unknown official LITv2 class {official_class!r}; expected one of "
                         f"{sorted(_OFFICIAL_CLASSES.values())}")
    lowered = name.lower()
    if "detection" in lowered or "mmdet" in lowered:
        return "detection"
    if "segmentation" in lowered or "mmseg" in lowered:
        return "segmentation"
    return "classification"


def create_from_official(kwargs, official_class=None):
    """The zoo model with the architecture the official constructor builds from ``kwargs``.

    ``official_class``: ``classification/models/litv2.py:LITv2`` (default; also the bare class
    name), ``detection/mmdet/models/backbones/litv2.py:LITv2`` (no head / final norm; LayerNorm
    ``norm{i}`` on the features of ``out_indices`` except stage 0) or
    ``segmentation/mmseg/models/backbones/litv2.py:LITv2`` (``norm{i}`` on every feature in
    ``out_indices``). Official defaults apply to missing kwargs (``alpha=0.5``!). Arguments with
    no effect in the official code (``img_size``, ``pretrain_img_size``, ``window_size``, ``ape``:
    LITv2 has no position embedding, ``attn_drop_rate``: HiLo ignores it, ``frozen_stages``,
    ``init_cfg``) are accepted and ignored.
    """
    kind = _official_kind(official_class)
    kw = dict(kwargs)
    norm_layer = kw.get("norm_layer", nn.LayerNorm)
    if not callable(norm_layer):
        # the official classes call norm_layer(dim): a name would crash there
        raise ValueError(f"official norm_layer={norm_layer!r} must be a callable such as "
                         "torch.nn.LayerNorm (every release uses it)")
    depths = tuple(kw.get("depths", (2, 2, 6, 2)))
    num_heads = tuple(kw.get("num_heads", (3, 6, 12, 24)))
    has_msa = tuple(kw.get("has_msa", (0, 0, 1, 1)))
    local_ws = kw.get("local_ws", None if kind == "classification" else (0, 0, 2, 1))
    if local_ws is None:
        raise ValueError("official LITv2 kwargs need local_ws (the classification class's default "
                         "None crashes; every release uses [0, 0, 2, 1])")
    local_ws = tuple(local_ws)
    if not (len(num_heads) == len(has_msa) == len(local_ws) == len(depths)):
        raise ValueError(f"depths {depths}, num_heads {num_heads}, has_msa {has_msa} and local_ws "
                         f"{local_ws} must have one entry per stage")
    bad = [i for i, (m, s) in enumerate(zip(has_msa, local_ws)) if m == 1 and s < 1]
    if bad:
        raise ValueError(f"stages {bad} have attention (has_msa=1) but local_ws < 1; the official "
                         "HiLo cannot be built there")
    window_sizes = tuple(int(s) if m == 1 else 0 for m, s in zip(has_msa, local_ws))
    args = dict(
        in_chans=kw.get("in_chans", 3), patch_size=kw.get("patch_size", 4),
        embed_dim=kw.get("embed_dim", 96), depths=depths, num_heads=num_heads,
        window_sizes=window_sizes, alpha=kw.get("alpha", 0.5), mlp_ratio=kw.get("mlp_ratio", 4.),
        qkv_bias=kw.get("qkv_bias", True), qk_scale=kw.get("qk_scale"),
        # drop_rate reaches only the ConvFFNs: the classifier builds a pos_drop it never calls
        proj_drop_rate=kw.get("drop_rate", 0.), pos_drop_rate=0.,
        drop_path_rate=kw.get("drop_path_rate", 0.1 if kind == "classification" else 0.2),
        norm_layer=norm_layer, patch_norm=kw.get("patch_norm", True))
    if kind == "classification":
        args["num_classes"] = kw.get("num_classes", 1000)
    else:
        # the official forward matches stage numbers against out_indices: negative ones select
        # nothing
        out_indices = [int(i) for i in kw.get("out_indices", range(len(depths)))]
        normed = sorted({i for i in out_indices if 0 <= i < len(depths)
                         and (kind == "segmentation" or i != 0)})
        args.update(num_classes=0, final_norm=False, feature_norms=normed or None)
    model = LITv2(**args)
    if kw.get("use_checkpoint"):
        model.set_grad_checkpointing(True)
    return model


# ---------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

def _cfg(url="", **kwargs):
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj", "classifier": "head.fc",
        "license": "apache-2.0",
        "origin_url": "https://github.com/ziplab/LITv2",
        "paper_ids": "arXiv:2205.13213",
        "paper_name": "Fast Vision Transformers with HiLo Attention",
        **kwargs,
    }


_V10 = "https://github.com/ziplab/LITv2/releases/download/v1.0/"
_V11 = "https://github.com/ziplab/LITv2/releases/download/v1.1/"

# LITv2-S alpha-ablation releases (README, paper Fig. 4): tag -> (alpha, file, README top-1).
ALPHA_TAGS = {
    "in1k_alpha0": (0.0, "alpha_0.pth", 81.16),
    "in1k_alpha0_2": (0.2, "alpha_0.2.pth", 81.89),
    "in1k_alpha0_4": (0.4, "alpha_0.4.pth", 81.81),
    "in1k_alpha0_5": (0.5, "alpha_0.5.pth", 81.88),
    "in1k_alpha0_7": (0.7, "alpha_0.7.pth", 81.94),
    "in1k_alpha0_9": (0.9, "alpha_0.9.pth", 82.03),
    "in1k_alpha1": (1.0, "alpha_1.pth", 81.89),
}

# Architecture kwargs a pretrained tag implies, applied by the entrypoint when the tag is chosen
# (timm's PretrainedCfg has no field for model kwargs; it only injects num_classes / in_chans).
TAG_MODEL_ARGS = {f"litv2_small_224.{tag}": dict(alpha=alpha)
                  for tag, (alpha, _, _) in ALPHA_TAGS.items()}


def _alpha_cfg(tag):
    alpha, filename, top1 = ALPHA_TAGS[tag]
    lofi, hifi = hilo_head_split(12, alpha, 2)
    return _cfg(
        url=_V11 + filename,
        description=f"LITv2-S with alpha={alpha} ({lofi} Lo-Fi / {hifi} Hi-Fi heads in stage 3); "
                    f"ImageNet-1k top-1 {top1} (README)",
        notes=(f"Architecture differs from the default tag: alpha={alpha}. "
               f"timm.create_model('litv2_small_224.{tag}') builds it (the entrypoint applies "
               "backbones.litv2.TAG_MODEL_ARGS).",
               "Ablation release of the paper's Fig. 4; local_ws [0, 0, 2, 1] assumed (not "
               "stated in the README), as for every other LITv2 release."))


default_cfgs = generate_default_cfgs({
    "litv2_small_224.in1k": _cfg(url=_V10 + "litv2_s.pth"),
    **{f"litv2_small_224.{tag}": _alpha_cfg(tag) for tag in ALPHA_TAGS},
    "litv2_medium_224.in1k": _cfg(url=_V10 + "litv2_m.pth"),
    "litv2_base_224.in1k": _cfg(url=_V10 + "litv2_b.pth"),
    "litv2_base_384.in1k": _cfg(url=_V10 + "litv2_b_384.pth", input_size=(3, 384, 384),
                                pool_size=(12, 12), crop_pct=1.0),
})


def _tag_of(pretrained_cfg):
    if isinstance(pretrained_cfg, str):
        return pretrained_cfg
    if isinstance(pretrained_cfg, PretrainedCfg):
        return pretrained_cfg.tag
    if isinstance(pretrained_cfg, dict):
        return pretrained_cfg.get("tag")
    return None


# The official code has no per-variant constructor: only the `LITv2` class
# (classification/models/litv2.py), configured by classification/configs/litv2-*.yaml through
# build.py, and its required `local_ws` defaults to None (crashes); so no official_entrypoints
# (tools/benchmark.py --official calls an entrypoint without arguments).
FAMILY = register_family(Family(
    name="litv2",
    model_cls=LITv2,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="ziplab/LITv2",
    official_classes=tuple(_OFFICIAL_CLASSES.values()),
    # exact parameter counts of the official implementation (1000-class heads)
    param_counts={
        "litv2_base_224": 86_520_704,
        "litv2_base_384": 86_520_704,
        "litv2_medium_224": 48_830_368,
        "litv2_small_224": 27_844_000,
    },
    tag_param_counts={
        "litv2_small_224.in1k_alpha0": 28_089_760,
        "litv2_small_224.in1k_alpha0_4": 27_696_544,
        "litv2_small_224.in1k_alpha0_5": 27_647_392,
        "litv2_small_224.in1k_alpha0_7": 27_696_544,
        "litv2_small_224.in1k_alpha1": 28_089_760,
    },
    # official README ImageNet-1k top-1, params (M) and FLOPs (G, the model's own flops():
    # multiply-adds)
    paper_results={
        "litv2_small_224": PaperResult(top1=82.0, params_m=28, gflops=3.7),
        "litv2_medium_224": PaperResult(top1=83.3, params_m=49, gflops=7.5),
        "litv2_base_224": PaperResult(top1=83.6, params_m=87, gflops=13.2),
        "litv2_base_384": PaperResult(top1=84.7, params_m=87, gflops=39.7),
    },
    # what turns the classifier into the official dense backbones (detection/.../litv2.py: norms
    # on stages 1-3; segmentation/.../litv2.py: on all four); used by
    # backbones.dense.DenseBackbone(task=...). The detection tables' "s = 4" rows pass
    # window_sizes=(0, 0, 4, 1).
    dense_backbone_kwargs={
        "detection": dict(feature_norms="detection"),
        "segmentation": dict(feature_norms="segmentation"),
    },
    torchscript="HiLo's attention runs through ops.window_attention_2d, whose keyword-only "
                "arguments and Python backend dispatch TorchScript cannot compile (torch.export "
                "is the supported path).",
    query_attention=litv2_query_attention,
))


def _create_litv2(variant, pretrained=False, **kwargs):
    tag = _tag_of(kwargs.get("pretrained_cfg"))
    tag_args = TAG_MODEL_ARGS.get(f"{variant}.{tag}", {}) if tag else {}
    for key, value in tag_args.items():
        if key in kwargs and kwargs[key] != value and pretrained:
            raise ValueError(f"{variant}.{tag} holds weights for {key}={value}; got {key}="
                             f"{kwargs[key]!r}, which they do not fit (drop the argument or "
                             "choose another tag)")
        kwargs.setdefault(key, value)
    if tag_args:
        kwargs["pretrained_model_args"] = dict(tag_args)
    model = build_zoo_model(LITv2, variant, pretrained, num_stages=4,
                            pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    if tag_args:  # timm's export (save_for_hf / push_to_hub) records these as model_args
        model._model_args = dict(getattr(model, "_model_args", {}), **tag_args)
    return model


@register_zoo_model
def litv2_small_224(pretrained=False, **kwargs) -> LITv2:
    """LITv2-S (official ``litv2-small.yaml``), 27.8M params; the ``in1k_alpha*`` tags are the
    alpha-ablation releases (same layout, another Lo-Fi / Hi-Fi head split)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_litv2("litv2_small_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def litv2_medium_224(pretrained=False, **kwargs) -> LITv2:
    """LITv2-M (official ``litv2-medium.yaml``), 48.8M params."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_litv2("litv2_medium_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def litv2_base_224(pretrained=False, **kwargs) -> LITv2:
    """LITv2-B (official ``litv2-base.yaml``), 86.5M params."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_litv2("litv2_base_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def litv2_base_384(pretrained=False, **kwargs) -> LITv2:
    """LITv2-B fine-tuned at 384 (official ``litv2-base-finetune-384.yaml``), 86.5M params."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_litv2("litv2_base_384", pretrained, **dict(model_args, **kwargs))
