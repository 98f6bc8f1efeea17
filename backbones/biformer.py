"""BiFormer: Vision Transformer with Bi-Level Routing Attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu, Wang, Ke, Zhang, Lau,
CVPR 2023, arXiv:2303.08810.
Official code and weights: https://github.com/rayleizhu/BiFormer (MIT licence). This is an
independent implementation that loads the official checkpoints (both attention implementations:
``ops/bra_legacy.py`` behind BiFormer-T/S/B/STL and ``ops/bra_nchw.py`` behind BiFormer-STL-nchw).

Bi-level routing attention (BRA): the token grid is cut into ``n_win x n_win`` regions; every
region's mean query is compared with every region's mean key, each query region keeps its ``topk``
best key regions (``torch.topk``, so ties resolve exactly as in the official router), and the
queries of a region attend with one softmax over the tokens of those regions. The token attention
runs through ``ops.routed_attention_2d`` from the routing indices: no gathered copy of K/V is made
by the model (the Triton path never materialises one; the reference path gathers with
``index_select`` in bounded chunks whose backward is an ``index_add`` of the gathered size, not the
official gather's ``n_win**2``-fold expanded gradient). LePE is a plain depthwise convolution of V
over the whole grid (it is outside the attention).

Any input size works. The legacy layout pads like the official dense configs (``auto_pad``): the
block input is zero-padded on the bottom/right to a multiple of ``n_win`` *before* the qkv
projection, padded tokens take part (unmasked) in the region means, the attention and LePE, and
the output is cropped. The nchw layout pads the way its official op does (floor region size, q/k/v
zero-padded after the projection, region means over valid tokens only). At sizes the official
classifiers accept, both are the identical computation.

The routing indices of every BRA layer are the output of its ``attn.router`` submodule
(``(B, regions, topk)``, descending score): a forward hook reads them.
"""
import re
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, get_norm_layer
from timm.models import generate_default_cfgs

import ops

from ._builder import build_zoo_model
from ._helpers import unwrap_checkpoint
from .layers import (DeviceLike, Stage, StagedBackboneMixin, calculate_drop_path_rates,
                     factory_context, notrace_function)
from ._family import Family, PaperResult, register_family
from ._registry import register_zoo_model
from .query_attention import biformer_query_attention

__all__ = ["BiFormer", "BiLevelRoutingAttention", "GlobalAttention", "RegionRouter",
           "checkpoint_filter_fn", "create_from_official"]

ROUTING_MODES = ("legacy", "nchw")
IntOrStages = Union[int, Sequence[int]]


def region_layout(H: int, W: int, n_win: int, routing: str = "legacy"):
    """``(region_size, padded grid)`` of an ``H x W`` map: ``'legacy'`` pads to a multiple of
    ``n_win`` (exactly ``n_win x n_win`` regions of ``ceil(H / n_win) x ceil(W / n_win)``);
    ``'nchw'`` takes ``(H // n_win) x (W // n_win)`` regions (at least 1), as many as cover it."""
    if routing == "legacy":
        rh, rw = -(-H // n_win), -(-W // n_win)
        return (rh, rw), (rh * n_win, rw * n_win)
    rh, rw = max(1, H // n_win), max(1, W // n_win)
    return (rh, rw), (-(-H // rh) * rh, -(-W // rw) * rw)


# Shape arithmetic on the region grid, as FX leaves (under a trace the shapes are Proxies).

@notrace_function
def _region_size(x: torch.Tensor, n_win: int, routing: str) -> Tuple[int, int]:
    """Region size of the NHWC map ``x``."""
    return region_layout(x.shape[1], x.shape[2], n_win, routing)[0]


@notrace_function
def _pad_grid(x: torch.Tensor, multiple: Tuple[int, int]) -> torch.Tensor:
    """``x`` (NHWC) zero-padded on the bottom / right to a multiple of ``multiple`` (no copy when
    it already is one)."""
    pad_h, pad_w = -x.shape[1] % multiple[0], -x.shape[2] % multiple[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


@notrace_function
def _crop_grid(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` (NHWC) cropped to the grid of ``like`` (a view)."""
    return x[:, :like.shape[1], :like.shape[2]]


@notrace_function
def _topk_regions(logits: torch.Tensor, topk: int) -> torch.Tensor:
    # At most every region (small grids); torch.topk resolves ties as the official router does.
    return torch.topk(logits, k=min(topk, logits.shape[-1]), dim=-1).indices


class RegionRouter(nn.Module):
    """Region-to-region routing: the ``topk`` key regions of every query region, by the dot
    product of region-mean queries and keys. Parameter-free and not differentiated (the official
    routers detach q and k).

    ``forward(q, k, region_size)``: NHWC q / k maps -> ``(B, regions, topk)`` int64, regions
    row-major, best first. ``'legacy'``: the map is already padded to ``n_win x n_win`` whole
    regions, means over every token (padded ones too), logits scaled by ``scale``. ``'nchw'``: the
    unpadded map, means over the valid tokens of each ``region_size`` region (ceil-mode average
    pooling), unscaled logits (the official nchw router has no scale).
    """

    def __init__(self, topk: int, n_win: int, scale: float, routing: str = "legacy"):
        super().__init__()
        self.topk, self.n_win, self.scale, self.routing = topk, n_win, scale, routing

    def forward(self, q: torch.Tensor, k: torch.Tensor,
                region_size: Tuple[int, int]) -> torch.Tensor:
        q, k = q.detach(), k.detach()
        if self.routing == "legacy":
            n = self.n_win
            q_r = q.unflatten(1, (n, -1)).unflatten(3, (n, -1)).mean((2, 4)).flatten(1, 2)
            k_r = k.unflatten(1, (n, -1)).unflatten(3, (n, -1)).mean((2, 4)).flatten(1, 2)
            logits = (q_r * self.scale) @ k_r.transpose(-2, -1)
        else:
            q_r = F.avg_pool2d(q.permute(0, 3, 1, 2), region_size, ceil_mode=True,
                               count_include_pad=False).flatten(2).transpose(1, 2)
            k_r = F.avg_pool2d(k.permute(0, 3, 1, 2), region_size, ceil_mode=True,
                               count_include_pad=False).flatten(2)
            logits = q_r @ k_r
        return _topk_regions(logits, self.topk)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, n_win={self.n_win}, routing={self.routing!r}"


class BiLevelRoutingAttention(nn.Module):
    """Region routing + token attention over the routed regions + LePE on V + output projection.

    NHWC in and out. The qkv projection's output is ``q (qk_dim) | k (qk_dim) | v (dim)``; head
    ``m`` owns channels ``[m * d, (m + 1) * d)`` of each (official layout).

    Args:
        n_win: regions per side (see :func:`region_layout`).
        topk: key regions per query region (at most the number of regions on small grids).
        qk_scale: logit scale, default ``qk_dim ** -0.5`` (the full q/k width, as officially).
        side_dwconv: LePE kernel (0: none).
        proj: output projection (official ``param_attention='qkvo'``) or none (``'qkv'``).
        routing: ``'legacy'`` or ``'nchw'`` padding / region-mean semantics (module docstring).
    """

    def __init__(self, dim: int, num_heads: int, n_win: int = 7, topk: int = 4,
                 qk_dim: Optional[int] = None, qk_scale: Optional[float] = None,
                 side_dwconv: int = 5, proj: bool = True, routing: str = "legacy"):
        super().__init__()
        qk_dim = qk_dim or dim
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"qk_dim {qk_dim} and dim {dim} must be divisible by num_heads "
                             f"{num_heads}")
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
        if topk < 1 or n_win < 1:
            raise ValueError(f"topk ({topk}) and n_win ({n_win}) must be positive")
        self.dim, self.qk_dim, self.num_heads = dim, qk_dim, num_heads
        self.n_win, self.topk, self.routing = n_win, topk, routing
        self.scale = qk_scale or qk_dim ** -0.5  # `or`: the official code ignores 0
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim)
        self.router = RegionRouter(topk, n_win, self.scale, routing)
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if side_dwconv > 0 else None)
        self.proj = nn.Linear(dim, dim) if proj else nn.Identity()

    def region_layout(self, H: int, W: int):
        """``(region_size, padded grid)`` for an ``H x W`` input."""
        return region_layout(H, W, self.n_win, self.routing)

    def forward(self, x):
        qk, heads = self.qk_dim, self.num_heads
        region_size = _region_size(x, self.n_win, self.routing)
        if self.routing == "legacy":
            # Pad before qkv (padded q/k/v = biases); the router sees whole regions.
            qkv = self.qkv(_pad_grid(x, (self.n_win, self.n_win)))
            region_index = self.router(qkv[..., :qk], qkv[..., qk:2 * qk], region_size)
        else:
            # The router pools the valid tokens; q/k/v are padded with zeros after qkv.
            qkv = self.qkv(x)
            region_index = self.router(qkv[..., :qk], qkv[..., qk:2 * qk], region_size)
            qkv = _pad_grid(qkv, region_size)
        # (B, heads, Hp, Wp, d) strided views of the projection: no copy.
        q = qkv[..., :qk].unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)
        k = qkv[..., qk:2 * qk].unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)
        v = qkv[..., 2 * qk:].unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)
        out = ops.routed_attention_2d(q, k, v, region_index, region_size, scale=self.scale)
        out = out.permute(0, 2, 3, 1, 4).flatten(3)
        if self.routing == "legacy":
            if self.lepe is not None:  # LePE over the padded V, as the official auto_pad does
                out = out + self.lepe(qkv[..., 2 * qk:].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            out = _crop_grid(out, x)
        else:
            out = _crop_grid(out, x)
            if self.lepe is not None:  # LePE over the unpadded V
                v_map = _crop_grid(qkv[..., 2 * qk:], x).permute(0, 3, 1, 2)
                out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        return self.proj(out)


class GlobalAttention(nn.Module):
    """Multi-head self-attention over the whole grid (BiFormer's last stage), NHWC in and out.

    ``lepe_on``: ``'x'`` (official ``AttentionLePE``: depthwise conv of the attention input),
    ``'v'`` (``nchwAttentionLePE``: of V) or None (``Attention``). The official classes hard-code
    8 heads and a bias-free qkv projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, side_dwconv: int = 5,
                 lepe_on: Optional[str] = "x"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if lepe_on not in ("x", "v", None):
            raise ValueError(f"lepe_on must be 'x', 'v' or None, got {lepe_on!r}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.lepe_on = lepe_on if side_dwconv > 0 else None
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if self.lepe_on else None)

    def forward(self, x):
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1))
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, heads, H, W, d) views
        out = ops.window_attention_2d(q, k, v, None, scale=self.scale)
        out = out.permute(0, 2, 3, 1, 4).flatten(3)
        if self.lepe_on == "x":
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif self.lepe_on == "v":
            v_map = qkv[..., 2, :, :].flatten(3).permute(0, 3, 1, 2)
            out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        return self.proj(out)


class Mlp(nn.Module):
    """Linear -> (depthwise 3x3 conv) -> GELU -> Linear, NHWC."""

    def __init__(self, dim: int, hidden: int, dwconv: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = self.fc1(x)
        if self.dwconv is not None:
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))


class BiFormerBlock(nn.Module):
    """(conv pos-embed) -> attention -> MLP, pre- or post-norm, optional layer scale; NHWC."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 3., mlp_dwconv: bool = False,
                 pos_embed_kernel: int = 3, drop_path: float = 0.,
                 layer_scale_init_value: float = -1, pre_norm: bool = True):
        super().__init__()
        self.pos_embed = (nn.Conv2d(dim, dim, pos_embed_kernel, padding=pos_embed_kernel // 2,
                                    groups=dim) if pos_embed_kernel > 0 else None)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), mlp_dwconv)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None
        self.pre_norm = pre_norm

    def _scaled(self, gamma: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return y if gamma is None else gamma * y

    def forward(self, x):
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.pre_norm:
            x = x + self.drop_path(self._scaled(self.gamma1, self.attn(self.norm1(x))))
            return x + self.drop_path(self._scaled(self.gamma2, self.mlp(self.norm2(x))))
        x = self.norm1(x + self.drop_path(self._scaled(self.gamma1, self.attn(x))))
        return self.norm2(x + self.drop_path(self._scaled(self.gamma2, self.mlp(x))))


class ConvStem(nn.Module):
    """BiFormer-T/S/B stem: conv3x3 s2 -> norm -> GELU -> conv3x3 s2 -> norm (ceil(H / 4))."""

    def __init__(self, in_chans: int, dim: int, norm_layer: Callable = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = norm_layer(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = norm_layer(dim)

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class PatchStem(nn.Module):
    """BiFormer-STL stem: conv4x4 s4 -> norm (output floor(H / 4))."""

    def __init__(self, in_chans: int, dim: int, norm_layer: Callable = nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 4, stride=4)
        self.norm = norm_layer(dim)

    def forward(self, x):
        return self.norm(self.conv(x))


class ConvDownsample(nn.Module):
    """conv3x3 s2 (padding 1) -> norm (T/S/B)."""

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable = nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1)
        self.norm = norm_layer(dim_out)

    def forward(self, x):
        return self.norm(self.conv(x))


class NormConvDownsample(nn.Module):
    """norm -> conv2x2 s2 (STL patch merging)."""

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable = nn.BatchNorm2d):
        super().__init__()
        self.norm = norm_layer(dim)
        self.conv = nn.Conv2d(dim, dim_out, 2, stride=2)

    def forward(self, x):
        return self.conv(self.norm(x))


def _per_stage(value, num_stages, name):
    values = (value,) * num_stages if isinstance(value, (int, float)) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name}={value!r} must have one entry per stage ({num_stages})")
    return values


class BiFormer(StagedBackboneMixin, nn.Module):
    """BiFormer backbone and classifier (timm API); covers the T/S/B layout and the STL layouts.

    Args:
        in_chans, num_classes, global_pool: as in timm (``global_pool`` ``'avg'`` or ``''``).
        depths, dims: blocks and width per stage.
        qk_dims: q/k width of each BRA stage (default ``dims``).
        head_dim: BRA heads per stage are ``qk_dims[i] // head_dim``.
        mlp_ratios: MLP hidden ratio per stage.
        n_win: regions per side, one int or one per stage.
        topks: per stage, ``>0`` BRA with that top-k; ``-2`` global attention with LePE on the
            attention input (official ``AttentionLePE``); ``-1`` global attention (official
            ``Attention``; with ``routing='nchw'``, ``nchwAttentionLePE``: LePE on V).
        side_dwconv: LePE kernel size (0: none), one int or one per stage.
        pos_embed_kernel: conv pos-embed before every block (official ``before_attn_dwconv``;
            0: none, the STL layouts).
        qk_scale: BRA logit scale (default ``qk_dim ** -0.5``; the global stages keep theirs).
        layer_scale_init_value, pre_norm, mlp_dwconv: as the official kwargs;
        attn_proj: output projection in BRA (official ``param_attention='qkvo'``).
        stem: ``'conv'`` (two 3x3 stride-2 convs, T/S/B) or ``'patch'`` (4x4 stride 4, STL).
        downsample: ``'conv_norm'`` (3x3 stride 2 then norm) or ``'norm_conv'`` (norm then 2x2).
        norm_layer: norm of the stem, the downsampling layers and (default) the pre-head norm, a
            callable of the channel count or a timm norm name (``'batchnorm2d'``,
            ``'layernorm2d'``): BatchNorm2d in every release.
        head_norm_layer: the pre-head norm, if not ``norm_layer``.
        routing: ``'legacy'`` (``ops/bra_legacy.py``) or ``'nchw'`` (``ops/bra_nchw.py``).
        drop_rate: dropout before the classifier (the official models have none: 0);
            drop_path_rate: stochastic depth, linear over all blocks.
        final_norm: pre-head norm on the last stage (official dense wrapper: none).
        feature_norms: one LayerNorm2d (eps 1e-6) per stage on the features returned by
            ``forward_intermediates`` / ``features_only`` (official ``BiFormer_mm.extra_norms``).
        device, dtype: where and in which float type the parameters are created.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            depths: Sequence[int] = (2, 2, 8, 2),
            dims: Sequence[int] = (64, 128, 256, 512),
            qk_dims: Optional[Sequence[Optional[int]]] = None,
            head_dim: int = 32,
            mlp_ratios: Sequence[float] = (3, 3, 3, 3),
            n_win: IntOrStages = 7,
            topks: Sequence[int] = (1, 4, 16, -2),
            side_dwconv: IntOrStages = 5,
            pos_embed_kernel: int = 3,
            qk_scale: Optional[float] = None,
            layer_scale_init_value: float = -1,
            pre_norm: bool = True,
            attn_proj: bool = True,
            mlp_dwconv: bool = False,
            stem: str = "conv",
            downsample: str = "conv_norm",
            norm_layer: Union[str, Callable] = nn.BatchNorm2d,
            head_norm_layer: Optional[Union[str, Callable]] = None,
            routing: str = "legacy",
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            attn_drop_rate: float = 0.,
            final_norm: bool = True,
            feature_norms: bool = False,
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if attn_drop_rate:
            raise ValueError("BiFormer: attention-probability dropout is not supported by the "
                             "fused attention ops (the official models have none)")
        num_stages = len(depths)
        dims, depths = tuple(dims), tuple(depths)
        qk_dims = tuple(dims if qk_dims is None else (q or d for q, d in zip(qk_dims, dims)))
        n_wins = _per_stage(n_win, num_stages, "n_win")
        side_dwconvs = _per_stage(side_dwconv, num_stages, "side_dwconv")
        per_stage = dict(dims=dims, qk_dims=qk_dims, mlp_ratios=tuple(mlp_ratios),
                         topks=tuple(topks))
        bad = {k: v for k, v in per_stage.items() if len(v) != num_stages}
        if bad:
            raise ValueError(f"{bad} must have one entry per stage (depths {depths})")
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
        if any(t == 0 or t < -2 for t in topks):
            raise ValueError(f"topks {tuple(topks)}: each must be > 0 (BRA), -1 or -2 (global "
                             "attention); the official topk=0 conv 'pseudo attention' ablation is "
                             "not supported")
        if stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {stem!r}")
        if downsample not in ("conv_norm", "norm_conv"):
            raise ValueError(f"downsample must be 'conv_norm' or 'norm_conv', got {downsample!r}")
        norm_layer = get_norm_layer(norm_layer)
        head_norm_layer = get_norm_layer(head_norm_layer) if head_norm_layer else norm_layer
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NCHW"
        self.grad_checkpointing = False
        self.min_input_size = 4 if stem == "patch" else 1

        with factory_context(device, dtype):
            stem_cls = ConvStem if stem == "conv" else PatchStem
            self.stem = stem_cls(in_chans, dims[0], norm_layer)
            down_cls = ConvDownsample if downsample == "conv_norm" else NormConvDownsample
            dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
            stages, self.feature_info = [], []
            for i in range(num_stages):
                blocks = []
                for j in range(depths[i]):
                    if topks[i] > 0:
                        attn = BiLevelRoutingAttention(
                            dims[i], qk_dims[i] // head_dim, n_wins[i], topks[i], qk_dims[i],
                            qk_scale, side_dwconvs[i], attn_proj, routing)
                    else:
                        lepe_on = "x" if topks[i] == -2 else ("v" if routing == "nchw" else None)
                        attn = GlobalAttention(dims[i], 8, qkv_bias=False,
                                               side_dwconv=side_dwconvs[i], lepe_on=lepe_on)
                    blocks.append(BiFormerBlock(dims[i], attn, mlp_ratios[i], mlp_dwconv,
                                                pos_embed_kernel, dpr[i][j],
                                                layer_scale_init_value, pre_norm))
                down = down_cls(dims[i - 1], dims[i], norm_layer) if i else None
                stages.append(Stage(down, blocks, blocks_fmt="NHWC"))
                self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i,
                                              module=f"stages.{i}"))
            self.stages = nn.Sequential(*stages)
            self.num_features = self.head_hidden_size = dims[-1]
            self.feature_norms = (nn.ModuleList([LayerNorm2d(d, eps=1e-6) for d in dims])
                                  if feature_norms else None)
            self.norm = head_norm_layer(dims[-1]) if final_norm else nn.Identity()
            self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool,
                                       drop_rate=drop_rate, input_fmt="NCHW")
            self.apply(self._init_weights)



# ---------------------------------------------------------------------------------------------
# Official checkpoints

# Block-internal renames, official -> zoo (after the block prefix).
_BLOCK_KEY_MAP = [
    (r"^attn\.qkv\.qkv\.", "attn.qkv."),          # legacy BRA (QKVLinear)
    (r"^attn\.wo\.", "attn.proj."),               # legacy BRA
    (r"^attn\.qkv_linear\.", "attn.qkv."),        # nchw BRA (1x1 conv)
    (r"^attn\.output_linear\.", "attn.proj."),    # nchw BRA (1x1 conv)
    (r"^mlp\.1\.dwconv\.", "mlp.dwconv."),        # T/S/B mlp_dwconv
]
_MLP_TSB = [(r"^mlp\.0\.", "mlp.fc1."), (r"^mlp\.3\.", "mlp.fc2.")]
_MLP_STL = [(r"^mlp\.0\.", "mlp.fc1."), (r"^mlp\.2\.", "mlp.fc2.")]
# Zoo parameters that are Linear layers but 1x1 convs in the nchw checkpoints.
_LINEAR_SUFFIXES = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
_DENSE_HEAD_PREFIXES = ("neck.", "decode_head.", "auxiliary_head.", "rpn_head.", "roi_head.",
                        "bbox_head.", "mask_head.")


def _is_zoo_layout(state_dict):
    return any(k.startswith(("stem.", "stages.0.blocks.0.mlp.fc1")) for k in state_dict)


def _map_key(key, stl):
    m = re.match(r"^downsample_layers\.(\d+)\.(\d+)\.(.*)$", key)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        if i == 0:
            names = {0: "conv", 1: "norm"} if stl else {0: "conv1", 1: "norm1", 3: "conv2", 4: "norm2"}
            return f"stem.{names[j]}.{rest}" if j in names else key
        names = {0: "norm", 1: "conv"} if stl else {0: "conv", 1: "norm"}
        return f"stages.{i}.downsample.{names[j]}.{rest}" if j in names else key
    m = re.match(r"^stages\.(\d+)\.(?:blocks\.)?(\d+)\.(.*)$", key)
    if m:
        rest = m[3]
        for pattern, repl in _BLOCK_KEY_MAP + (_MLP_STL if stl else _MLP_TSB):
            rest, n = re.subn(pattern, repl, rest)
            if n:
                break
        return f"stages.{m[1]}.blocks.{m[2]}.{rest}"
    m = re.match(r"^extra_norms\.(\d+)\.(.*)$", key)
    if m:
        return f"feature_norms.{m[1]}.{m[2]}"
    if key.startswith("head."):
        return "head.fc." + key[len("head."):]
    return key


def checkpoint_filter_fn(state_dict, model=None):
    """Official BiFormer checkpoint -> zoo keys; zoo-layout dicts pass unchanged.

    Takes every official layout: T/S/B (``models/biformer.py``, legacy BRA), STL
    (``models/biformer_stl.py``, legacy BRA) and STL-nchw (``models/biformer_stl_nchw.py``, nchw
    BRA with 1x1-conv weights, squeezed here to the zoo's Linear layers); any wrapper
    (``model`` as released, ``state_dict``, EMA; ``module.`` prefixes); mmdet/mmseg files
    (``backbone.`` keys, heads dropped). With ``model`` given, keys the model does not have
    (``head``/``norm`` for a dense backbone) are dropped and missing ``feature_norms`` keep the
    model's fresh values (weight 1, bias 0), as the official dense wrapper's non-strict load does.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items()
                      if k.startswith("backbone.")}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_DENSE_HEAD_PREFIXES)}
    if _is_zoo_layout(state_dict):
        out = dict(state_dict)
    else:
        stl = any(re.match(r"^stages\.\d+\.blocks\.", k) for k in state_dict)
        out = {}
        for key, value in state_dict.items():
            key = _map_key(key, stl)
            if key.endswith(_LINEAR_SUFFIXES) and value.dim() == 4:
                value = value.flatten(1)  # [O, I, 1, 1] 1x1 conv -> [O, I] Linear
            out[key] = value
    if model is not None:
        own = model.state_dict()
        for prefix in ("head.", "norm.", "feature_norms."):
            if not any(k.startswith(prefix) for k in own):
                out = {k: v for k, v in out.items() if not k.startswith(prefix)}
        for k, v in own.items():
            if k.startswith("feature_norms.") and k not in out:
                out[k] = v
    return out


_OFFICIAL_NORMS = {"batchnorm2d": nn.BatchNorm2d, "layernorm2d": LayerNorm2d}


def _official_norm(value, what):
    """The official ``norm_layer`` (``torch.nn.BatchNorm2d`` / timm ``LayerNorm2d``, as a class or
    its dotted name) -> the norm callable."""
    name = value if isinstance(value, str) else getattr(value, "__name__", repr(value))
    key = name.split(".")[-1].lower()
    if key not in _OFFICIAL_NORMS:
        raise ValueError(f"official {what}={value!r} is not supported; expected "
                         "torch.nn.BatchNorm2d or timm LayerNorm2d")
    return _OFFICIAL_NORMS[key]


_BIFORMER_CLASSES = ("BiFormer", "BiFormer_mm")
_STL_CLASSES = ("BiFormerSTL", "nchwBiFormerSTL")
# The official nchwAttentionLePE is built without side_dwconv: its LePE is always 5x5.
_NCHW_GLOBAL_LEPE = 5


def create_from_official(kwargs, official_class=None):
    """The zoo model with the architecture the official constructor builds from ``kwargs``.

    ``official_class``: ``models/biformer.py:BiFormer`` (default; T/S/B),
    ``models/biformer_stl.py:BiFormerSTL``, ``models/biformer_stl_nchw.py:nchwBiFormerSTL`` or the
    dense wrapper ``object_detection/models_mm/biformer_mm.py:BiFormer_mm`` (no head / pre-head
    norm, per-stage output LayerNorm2d); the class name alone also works. Options no release uses
    and the fused op cannot express (soft / differentiable routing, K/V downsampling, the topk=0
    ablation, positional-encoding layers) are refused with a ValueError.

    What each class does with its arguments (and this function therefore does): the global
    attention stages hard-code 8 heads, no qkv bias and the ``head_dim ** -0.5`` scale (qk_scale
    reaches the BRA layers only); both STL classes never pass ``qk_scale`` to their blocks (it is
    ignored); nchwBiFormerSTL's global stages keep a 5x5 LePE whatever ``side_dwconv``;
    ``drop_rate`` is never used; ``auto_pad`` only lifts the divisibility assert (this model
    always pads).
    """
    cls_name = (official_class or "BiFormer").split(":")[-1]
    if cls_name not in _BIFORMER_CLASSES + _STL_CLASSES:
        raise ValueError(f"unknown official BiFormer class {official_class!r}; expected one of "
                         "models/biformer.py:BiFormer, models/biformer_stl.py:BiFormerSTL, "
                         "models/biformer_stl_nchw.py:nchwBiFormerSTL, "
                         "object_detection/models_mm/biformer_mm.py:BiFormer_mm")
    kw = dict(kwargs)
    common = dict(in_chans=kw.get("in_chans", 3), num_classes=kw.get("num_classes", 1000),
                  drop_path_rate=kw.get("drop_path_rate", 0.))
    if cls_name in _STL_CLASSES:
        nchw = cls_name == "nchwBiFormerSTL"
        depths = tuple(kw.get("depth", (2, 2, 6, 2)))
        topks = tuple(kw.get("topks", (1, 4, 16, -2)))
        if nchw and any(t <= 0 and t != -1 for t in topks):
            raise ValueError(f"nchwBiFormerSTL takes topks > 0 or -1 only, got {topks}")
        side_dwconv = kw.get("side_dwconv", 5)
        if nchw:
            side_dwconv = tuple(_NCHW_GLOBAL_LEPE if t == -1 else side_dwconv for t in topks)
        n_wins = kw.get("n_wins", (7,) * 4)
        head_norm = kw.get("pre_head_norm_layer")
        args = dict(
            common, depths=depths, dims=tuple(kw.get("embed_dim", (96, 192, 384, 768))),
            head_dim=kw.get("head_dim", 32), mlp_ratios=tuple(kw.get("mlp_ratios", (4,) * 4)),
            n_win=n_wins if isinstance(n_wins, int) else tuple(n_wins), topks=topks,
            side_dwconv=side_dwconv, pos_embed_kernel=0, stem="patch", downsample="norm_conv",
            norm_layer=_official_norm(kw.get("norm_layer", "LayerNorm2d"), "norm_layer"),
            head_norm_layer=_official_norm(head_norm, "pre_head_norm_layer") if head_norm else None,
            routing="nchw" if nchw else "legacy")
        model = BiFormer(**args)
    else:
        unsupported = [k for k, ok in (
            ("param_routing", not kw.get("param_routing")),
            ("diff_routing", not kw.get("diff_routing")),
            ("soft_routing", not kw.get("soft_routing")),
            ("representation_size", not kw.get("representation_size")),
            ("pe", kw.get("pe") in (None, "none"))) if not ok]
        if unsupported:
            raise ValueError(f"official kwargs {unsupported} are not supported (no released model "
                             "uses them; routing weights / differentiable routing cannot run "
                             "through the fused routed-attention op)")
        topks = tuple(kw.get("topks", (8, 8, -1, -1)))
        if any(t > 0 for t in topks) and kw.get("kv_downsample_mode", "ada_avgpool") != "identity":
            raise ValueError(f"kv_downsample_mode={kw.get('kv_downsample_mode', 'ada_avgpool')!r} "
                             "is not supported: every released BiFormer uses 'identity' (pass it "
                             "explicitly; the class default 'ada_avgpool' is no released config)")
        qk_dims = kw.get("qk_dims", [None] * 4)
        if qk_dims is None or any(q is None for q in qk_dims):
            raise ValueError("official BiFormer kwargs need qk_dims (every released config sets "
                             "them; the official default [None]*4 crashes)")
        pos_kernel = max(0, kw.get("before_attn_dwconv", 3))
        if pos_kernel not in (0, 3):
            raise ValueError(f"before_attn_dwconv={pos_kernel}: the official block hard-codes "
                             "padding 1, so only 3 (or 0: none) keeps the map size")
        param_attention = kw.get("param_attention", "qkvo")
        if param_attention not in ("qkvo", "qkv"):
            raise ValueError(f"param_attention must be 'qkvo' or 'qkv', got {param_attention!r}")
        args = dict(
            common, depths=tuple(kw.get("depth", (3, 4, 8, 3))),
            dims=tuple(kw.get("embed_dim", (64, 128, 320, 512))), qk_dims=tuple(qk_dims),
            head_dim=kw.get("head_dim", 64), mlp_ratios=tuple(kw.get("mlp_ratios", (4,) * 4)),
            n_win=kw.get("n_win", 7), topks=topks, side_dwconv=kw.get("side_dwconv", 5),
            pos_embed_kernel=pos_kernel, qk_scale=kw.get("qk_scale"),
            layer_scale_init_value=kw.get("layer_scale_init_value", -1),
            pre_norm=kw.get("pre_norm", True), attn_proj=param_attention == "qkvo",
            mlp_dwconv=kw.get("mlp_dwconv", False), stem="conv", downsample="conv_norm",
            norm_layer=nn.BatchNorm2d)
        if cls_name == "BiFormer_mm":
            args.update(num_classes=0, final_norm=False, feature_norms=True)
        model = BiFormer(**args)
    if kw.get("use_checkpoint_stages"):
        model.set_grad_checkpointing(True)
    return model


# ---------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

def _cfg(url="", **kwargs):
    # The official ``model.default_cfg = _cfg()`` is timm's ViT cfg (mean/std 0.5, crop 0.9), which
    # the official scripts never use; evaluation is Resize(256/224) + CenterCrop with ImageNet
    # mean/std, bicubic.
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1", "classifier": "head.fc",
        "license": "mit",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        "paper_ids": "arXiv:2303.08810",
        "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "notes": ("Official OneDrive links; users report them broken. If the download fails, load "
                  "a local copy: timm.create_model(name, pretrained=True, "
                  "pretrained_cfg_overlay=dict(file='/path/to/biformer_*_in1k.pth')).",),
        **kwargs,
    }


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"

default_cfgs = generate_default_cfgs({
    "biformer_tiny_224.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
    "biformer_small_224.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
    "biformer_base_224.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
    "biformer_stl_224.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChSf-m7ujkvx9lIQ1"),
                                  first_conv="stem.conv"),
    "biformer_stl_nchw_224.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChWYrKbWbMgqd2Ai0"),
                                       first_conv="stem.conv"),
})

# Official README ImageNet-1k top-1, params (M) and FLOPs (G, fvcore multiply-adds) at 224.
# What turns the classifier into the official dense backbone (BiFormer_mm): per-stage output
# norms (``extra_norms.i``) and the dense configs' region grid (COCO n_win 16, ADE20K n_win 8);
# used by backbones.dense.DenseBackbone(task=...).
# The authors' constructor of each variant (file:function in OFFICIAL_REPO), for side-by-side
# timing and output checks against a local clone (tools/benchmark.py --official).
FAMILY = register_family(Family(
    name="biformer",
    model_cls=BiFormer,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="rayleizhu/BiFormer",
    official_classes=("models/biformer.py:BiFormer", "models/biformer_stl.py:BiFormerSTL",
                      "models/biformer_stl_nchw.py:nchwBiFormerSTL",
                      "object_detection/models_mm/biformer_mm.py:BiFormer_mm"),
    # exact parameter counts of the official implementation (1000-class heads)
    param_counts={
        "biformer_base_224": 56_804_968,
        "biformer_small_224": 25_536_232,
        "biformer_stl_224": 28_372_552,
        "biformer_stl_nchw_224": 28_372_552,
        "biformer_tiny_224": 13_142_760,
    },
    official_entrypoints={
        "biformer_tiny_224": "models/biformer.py:biformer_tiny",
        "biformer_small_224": "models/biformer.py:biformer_small",
        "biformer_base_224": "models/biformer.py:biformer_base",
        "biformer_stl_224": "models/biformer_stl.py:biformer_stl",
        "biformer_stl_nchw_224": "models/biformer_stl_nchw.py:biformer_stl_nchw",
    },
    paper_results={
        "biformer_tiny_224": PaperResult(top1=81.4, params_m=13.1, gflops=2.2),
        "biformer_small_224": PaperResult(top1=83.8, params_m=25.5, gflops=4.5),
        "biformer_base_224": PaperResult(top1=84.3, params_m=56.8, gflops=9.8),
        "biformer_stl_224": PaperResult(top1=82.7, params_m=28.4, gflops=4.6),
        "biformer_stl_nchw_224": PaperResult(top1=82.7, params_m=28.4, gflops=4.6),
    },
    dense_backbone_kwargs={
        "detection": dict(feature_norms=True, n_win=16),
        "segmentation": dict(feature_norms=True, n_win=8),
    },
    torchscript=("the attention runs through ops.routed_attention_2d / ops.window_attention_2d, "
                 "which pick the Triton or reference path in Python and take keyword-only "
                 "arguments: TorchScript compiles neither; torch.export is the supported path"),
    query_attention=biformer_query_attention,
))


def _create_biformer(variant, pretrained=False, **kwargs):
    return build_zoo_model(BiFormer, variant, pretrained, num_stages=4,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


_TSB = dict(n_win=7, topks=(1, 4, 16, -2), mlp_ratios=(3, 3, 3, 3), head_dim=32, side_dwconv=5,
            pos_embed_kernel=3)
_STL = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4), head_dim=32,
            n_win=7, side_dwconv=5, pos_embed_kernel=0, stem="patch", downsample="norm_conv",
            norm_layer=nn.BatchNorm2d)


@register_zoo_model
def biformer_tiny_224(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-T (official ``biformer_tiny``), 13.1M params."""
    model_args = dict(_TSB, depths=(2, 2, 8, 2), dims=(64, 128, 256, 512))
    return _create_biformer("biformer_tiny_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def biformer_small_224(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-S (official ``biformer_small``), 25.5M params."""
    model_args = dict(_TSB, depths=(4, 4, 18, 4), dims=(64, 128, 256, 512))
    return _create_biformer("biformer_small_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def biformer_base_224(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-B (official ``biformer_base``), 56.8M params."""
    model_args = dict(_TSB, depths=(4, 4, 18, 4), dims=(96, 192, 384, 768))
    return _create_biformer("biformer_base_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def biformer_stl_224(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-STL (official ``biformer_stl``): Swin-T layout, legacy BRA, 28.4M params."""
    model_args = dict(_STL, topks=(1, 4, 16, -2), routing="legacy")
    return _create_biformer("biformer_stl_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def biformer_stl_nchw_224(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-STL-nchw (official ``biformer_stl_nchw``): Swin-T layout, refactored nchw BRA and
    a global-attention last stage with LePE on V, 28.4M params."""
    model_args = dict(_STL, topks=(1, 4, 16, -1), routing="nchw")
    return _create_biformer("biformer_stl_nchw_224", pretrained, **dict(model_args, **kwargs))
