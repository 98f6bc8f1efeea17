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
"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d
from timm.models import checkpoint_seq, generate_default_cfgs

import ops

from ._builder import build_zoo_model
from ._helpers import unwrap_checkpoint
from .layers import StagedBackboneMixin
from ._registry import register_zoo_model

__all__ = ["BiFormer", "BiLevelRoutingAttention", "GlobalAttention", "checkpoint_filter_fn",
           "create_from_official", "golden_outputs"]

ROUTING_MODES = ("legacy", "nchw")


def _norm2d(kind, dim):
    """Norm over the channels of an NCHW map: ``'batchnorm'`` (eps 1e-5) or ``'layernorm2d'``
    (timm ``LayerNorm2d``, eps 1e-6)."""
    if kind == "batchnorm":
        return nn.BatchNorm2d(dim)
    if kind == "layernorm2d":
        return LayerNorm2d(dim, eps=1e-6)
    raise ValueError(f"norm_layer must be 'batchnorm' or 'layernorm2d', got {kind!r}")


class BiLevelRoutingAttention(nn.Module):
    """Region routing + token attention over the routed regions + LePE on V + output projection.

    NHWC in and out. The qkv projection's output is ``q (qk_dim) | k (qk_dim) | v (dim)``; head
    ``m`` owns channels ``[m * d, (m + 1) * d)`` of each (official layout).

    Args:
        n_win: regions per side. ``'legacy'``: exactly ``n_win x n_win`` regions of
            ``ceil(H / n_win) x ceil(W / n_win)`` tokens; ``'nchw'``: regions of
            ``(H // n_win) x (W // n_win)`` tokens (at least 1), as many as cover the grid.
        topk: key regions per query region (at most the number of regions on small grids).
        qk_scale: logit scale, default ``qk_dim ** -0.5`` (the full q/k width, as officially).
        side_dwconv: LePE kernel (0: none).
        proj: output projection (official ``param_attention='qkvo'``) or none (``'qkv'``).
        routing: ``'legacy'`` or ``'nchw'`` padding / region-mean semantics (module docstring).
    """

    def __init__(self, dim, num_heads, n_win=7, topk=4, qk_dim=None, qk_scale=None, side_dwconv=5,
                 proj=True, routing="legacy"):
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
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if side_dwconv > 0 else None)
        self.proj = nn.Linear(dim, dim) if proj else nn.Identity()
        # Set by golden_outputs / users to keep the last routing indices (B, regions, topk).
        self.record_routing = False
        self.routing_index = None

    def region_layout(self, H, W):
        """``(region_size, padded grid)`` for an ``H x W`` input."""
        n = self.n_win
        if self.routing == "legacy":  # pad to a multiple of n_win: exactly n_win x n_win regions
            rh, rw = -(-H // n), -(-W // n)
            return (rh, rw), (rh * n, rw * n)
        rh, rw = max(1, H // n), max(1, W // n)
        return (rh, rw), (-(-H // rh) * rh, -(-W // rw) * rw)

    def route(self, q_r, k_r):
        """Top-k key regions per query region from region descriptors ``(B, regions, qk_dim)``;
        sorted by descending score (``torch.topk``, the official router)."""
        if self.routing == "legacy":
            logits = (q_r * self.scale) @ k_r.transpose(-2, -1)
        else:
            logits = q_r @ k_r.transpose(-2, -1)  # the nchw router has no scale
        return torch.topk(logits, k=min(self.topk, logits.shape[-1]), dim=-1).indices

    def forward(self, x):
        B, H, W, C = x.shape
        qk, heads = self.qk_dim, self.num_heads
        (rh, rw), (Hp, Wp) = self.region_layout(H, W)
        gh, gw = Hp // rh, Wp // rw
        if self.routing == "legacy":
            if (Hp, Wp) != (H, W):
                x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))  # before qkv: padded q/k/v = biases
            qkv = self.qkv(x)
            with torch.no_grad():
                # Region means over every token of the region, padded ones included.
                q_r = qkv[..., :qk].reshape(B, gh, rh, gw, rw, qk).mean((2, 4)).flatten(1, 2)
                k_r = qkv[..., qk:2 * qk].reshape(B, gh, rh, gw, rw, qk).mean((2, 4)).flatten(1, 2)
        else:
            qkv = self.qkv(x)
            with torch.no_grad():
                # Region means over the valid tokens only (the nchw op's avg-pool semantics).
                qk_map = qkv[..., :2 * qk].permute(0, 3, 1, 2)
                pooled = F.avg_pool2d(qk_map, (rh, rw), ceil_mode=True, count_include_pad=False)
                pooled = pooled.flatten(2).transpose(1, 2)
                q_r, k_r = pooled[..., :qk], pooled[..., qk:]
            if (Hp, Wp) != (H, W):
                qkv = F.pad(qkv, (0, 0, 0, Wp - W, 0, Hp - H))  # after qkv: padded q/k/v = 0
        region_index = self.route(q_r, k_r)
        if self.record_routing:
            self.routing_index = region_index
        # (B, heads, Hp, Wp, d) strided views of the projection: no copy.
        q = qkv[..., :qk].unflatten(-1, (heads, qk // heads)).permute(0, 3, 1, 2, 4)
        k = qkv[..., qk:2 * qk].unflatten(-1, (heads, qk // heads)).permute(0, 3, 1, 2, 4)
        v = qkv[..., 2 * qk:].unflatten(-1, (heads, C // heads)).permute(0, 3, 1, 2, 4)
        out = ops.routed_attention_2d(q, k, v, region_index, (rh, rw), scale=self.scale)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, C)
        if self.routing == "legacy":
            if self.lepe is not None:  # LePE over the padded V, as the official auto_pad does
                out = out + self.lepe(qkv[..., 2 * qk:].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            out = out[:, :H, :W]
        else:
            out = out[:, :H, :W]
            if self.lepe is not None:  # LePE over the unpadded V
                v_map = qkv[:, :H, :W, 2 * qk:].permute(0, 3, 1, 2)
                out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        return self.proj(out)


class GlobalAttention(nn.Module):
    """Multi-head self-attention over the whole grid (BiFormer's last stage), NHWC in and out.

    ``lepe_on``: ``'x'`` (official ``AttentionLePE``: depthwise conv of the attention input),
    ``'v'`` (``nchwAttentionLePE``: of V) or None (``Attention``). The official classes hard-code
    8 heads and a bias-free qkv projection.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, side_dwconv=5,
                 lepe_on="x"):
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
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H, W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, heads, H, W, d) views
        out = ops.window_attention_2d(q, k, v, None, scale=self.scale)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        if self.lepe_on == "x":
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif self.lepe_on == "v":
            v_map = qkv[..., 2, :, :].flatten(3).permute(0, 3, 1, 2)
            out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        return self.proj(out)


class Mlp(nn.Module):
    """Linear -> (depthwise 3x3 conv) -> GELU -> Linear, NHWC."""

    def __init__(self, dim, hidden, dwconv=False):
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

    def __init__(self, dim, attn, mlp_ratio=3., mlp_dwconv=False, pos_embed_kernel=3,
                 drop_path=0., layer_scale_init_value=-1, pre_norm=True):
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

    def _scaled(self, gamma, y):
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
    """BiFormer-T/S/B stem: conv3x3 s2 -> BN -> GELU -> conv3x3 s2 -> BN (output ceil(H / 4))."""

    def __init__(self, in_chans, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class PatchStem(nn.Module):
    """BiFormer-STL stem: conv4x4 s4 -> norm (output floor(H / 4))."""

    def __init__(self, in_chans, dim, norm_layer):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 4, stride=4)
        self.norm = _norm2d(norm_layer, dim)

    def forward(self, x):
        return self.norm(self.conv(x))


class ConvDownsample(nn.Module):
    """conv3x3 s2 (padding 1) -> BN (T/S/B)."""

    def __init__(self, dim, dim_out):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim_out)

    def forward(self, x):
        return self.norm(self.conv(x))


class NormConvDownsample(nn.Module):
    """norm -> conv2x2 s2 (STL patch merging)."""

    def __init__(self, dim, dim_out, norm_layer):
        super().__init__()
        self.norm = _norm2d(norm_layer, dim)
        self.conv = nn.Conv2d(dim, dim_out, 2, stride=2)

    def forward(self, x):
        return self.conv(self.norm(x))


class BiFormerStage(nn.Module):
    """Downsample (NCHW) then blocks (NHWC); NCHW in and out."""

    def __init__(self, downsample, blocks):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x):
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


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
        side_dwconv: LePE kernel size (0: none).
        pos_embed_kernel: conv pos-embed before every block (official ``before_attn_dwconv``;
            0: none, the STL layouts).
        qk_scale, layer_scale_init_value, pre_norm, mlp_dwconv: as the official kwargs;
        attn_proj: output projection in BRA (official ``param_attention='qkvo'``).
        stem: ``'conv'`` (two 3x3 stride-2 convs, T/S/B) or ``'patch'`` (4x4 stride 4, STL).
        downsample: ``'conv_norm'`` (3x3 stride 2 then BN) or ``'norm_conv'`` (norm then 2x2).
        norm_layer: ``'batchnorm'`` / ``'layernorm2d'``: STL stem, patch merging and (default)
            pre-head norm; head_norm_layer: the pre-head norm (T/S/B: BatchNorm).
        routing: ``'legacy'`` (``ops/bra_legacy.py``) or ``'nchw'`` (``ops/bra_nchw.py``).
        drop_rate: dropout before the classifier (the official models have none: 0);
            drop_path_rate: stochastic depth, linear over all blocks.
        final_norm: pre-head norm on the last stage (official dense wrapper: none).
        feature_norms: one LayerNorm2d (eps 1e-6) per stage on the features returned by
            ``forward_intermediates`` / ``features_only`` (official ``BiFormer_mm.extra_norms``).
    """

    def __init__(self, in_chans=3, num_classes=1000, global_pool="avg", depths=(2, 2, 8, 2),
                 dims=(64, 128, 256, 512), qk_dims=None, head_dim=32, mlp_ratios=(3, 3, 3, 3),
                 n_win=7, topks=(1, 4, 16, -2), side_dwconv=5, pos_embed_kernel=3, qk_scale=None,
                 layer_scale_init_value=-1, pre_norm=True, attn_proj=True, mlp_dwconv=False,
                 stem="conv", downsample="conv_norm", norm_layer="batchnorm",
                 head_norm_layer=None, routing="legacy", drop_rate=0., drop_path_rate=0.,
                 attn_drop_rate=0., final_norm=True, feature_norms=False):
        super().__init__()
        if attn_drop_rate:
            raise ValueError("BiFormer: attention-probability dropout is not supported by the "
                             "fused attention ops (the official models have none)")
        num_stages = len(depths)
        dims, depths = tuple(dims), tuple(depths)
        qk_dims = tuple(dims if qk_dims is None else (q or d for q, d in zip(qk_dims, dims)))
        n_wins = (n_win,) * num_stages if isinstance(n_win, int) else tuple(n_win)
        per_stage = dict(dims=dims, qk_dims=qk_dims, mlp_ratios=tuple(mlp_ratios), n_win=n_wins,
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
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NCHW"
        self.grad_checkpointing = False
        self.min_input_size = 4 if stem == "patch" else 1
        if stem == "conv":
            self.stem = ConvStem(in_chans, dims[0])
        elif stem == "patch":
            self.stem = PatchStem(in_chans, dims[0], norm_layer)
        else:
            raise ValueError(f"stem must be 'conv' or 'patch', got {stem!r}")
        if downsample not in ("conv_norm", "norm_conv"):
            raise ValueError(f"downsample must be 'conv_norm' or 'norm_conv', got {downsample!r}")

        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths))]
        stages, self.feature_info = [], []
        for i in range(num_stages):
            if i == 0:
                down = nn.Identity()
            elif downsample == "conv_norm":
                down = ConvDownsample(dims[i - 1], dims[i])
            else:
                down = NormConvDownsample(dims[i - 1], dims[i], norm_layer)
            blocks = []
            for j in range(depths[i]):
                if topks[i] > 0:
                    attn = BiLevelRoutingAttention(
                        dims[i], qk_dims[i] // head_dim, n_wins[i], topks[i], qk_dims[i], qk_scale,
                        side_dwconv, attn_proj, routing)
                else:
                    lepe_on = "x" if topks[i] == -2 else ("v" if routing == "nchw" else None)
                    attn = GlobalAttention(dims[i], 8, qkv_bias=False, side_dwconv=side_dwconv,
                                           lepe_on=lepe_on)
                blocks.append(BiFormerBlock(dims[i], attn, mlp_ratios[i], mlp_dwconv,
                                            pos_embed_kernel, dpr[i][j], layer_scale_init_value,
                                            pre_norm))
            stages.append(BiFormerStage(down, blocks))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.feature_norms = (nn.ModuleList([LayerNorm2d(d, eps=1e-6) for d in dims])
                              if feature_norms else None)
        self.norm = (_norm2d(head_norm_layer or ("batchnorm" if stem == "conv" else norm_layer),
                             dims[-1]) if final_norm else nn.Identity())
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


_NORM_NAMES = {"batchnorm2d": "batchnorm", "layernorm2d": "layernorm2d"}


def _official_norm(value, what):
    """``torch.nn.BatchNorm2d`` / ``LayerNorm2d`` as a class or its dotted name -> our name."""
    name = value if isinstance(value, str) else getattr(value, "__name__", repr(value))
    key = name.split(".")[-1].lower()
    if key not in _NORM_NAMES:
        raise ValueError(f"official {what}={value!r} is not supported; expected "
                         "torch.nn.BatchNorm2d or timm LayerNorm2d")
    return _NORM_NAMES[key]


_BIFORMER_CLASSES = ("BiFormer", "BiFormer_mm")
_STL_CLASSES = ("BiFormerSTL", "nchwBiFormerSTL")


def create_from_official(kwargs, official_class=None):
    """The zoo model with the architecture the official constructor builds from ``kwargs``.

    ``official_class``: ``models/biformer.py:BiFormer`` (default; T/S/B),
    ``models/biformer_stl.py:BiFormerSTL``, ``models/biformer_stl_nchw.py:nchwBiFormerSTL`` or the
    dense wrapper ``object_detection/models_mm/biformer_mm.py:BiFormer_mm`` (no head / pre-head
    norm, per-stage output LayerNorm2d); the class name alone also works. Options no release uses
    and the fused op cannot express (soft / differentiable routing, K/V downsampling, the topk=0
    ablation, positional-encoding layers) are refused with a ValueError.
    """
    cls_name = (official_class or "BiFormer").split(":")[-1]
    if cls_name not in _BIFORMER_CLASSES + _STL_CLASSES:
        raise ValueError(f"unknown official BiFormer class {official_class!r}; expected one of "
                         "models/biformer.py:BiFormer, models/biformer_stl.py:BiFormerSTL, "
                         "models/biformer_stl_nchw.py:nchwBiFormerSTL, "
                         "object_detection/models_mm/biformer_mm.py:BiFormer_mm")
    kw = dict(kwargs)
    common = dict(in_chans=kw.get("in_chans", 3), num_classes=kw.get("num_classes", 1000),
                  qk_scale=kw.get("qk_scale"), drop_path_rate=kw.get("drop_path_rate", 0.))
    if cls_name in _STL_CLASSES:
        nchw = cls_name == "nchwBiFormerSTL"
        depths = tuple(kw.get("depth", (2, 2, 6, 2)))
        topks = tuple(kw.get("topks", (1, 4, 16, -2)))
        if nchw and any(t <= 0 and t != -1 for t in topks):
            raise ValueError(f"nchwBiFormerSTL takes topks > 0 or -1 only, got {topks}")
        norm_layer = _official_norm(kw.get("norm_layer", "LayerNorm2d"), "norm_layer")
        head_norm = kw.get("pre_head_norm_layer")
        args = dict(
            common, depths=depths, dims=tuple(kw.get("embed_dim", (96, 192, 384, 768))),
            head_dim=kw.get("head_dim", 32), mlp_ratios=tuple(kw.get("mlp_ratios", (4,) * 4)),
            n_win=tuple(kw.get("n_wins", (7,) * 4)), topks=topks,
            side_dwconv=kw.get("side_dwconv", 5), pos_embed_kernel=0, stem="patch",
            downsample="norm_conv", norm_layer=norm_layer,
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
        pos_kernel = kw.get("before_attn_dwconv", 3)
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
            pos_embed_kernel=pos_kernel,
            layer_scale_init_value=kw.get("layer_scale_init_value", -1),
            pre_norm=kw.get("pre_norm", True), attn_proj=param_attention == "qkvo",
            mlp_dwconv=kw.get("mlp_dwconv", False), stem="conv", downsample="conv_norm")
        if cls_name == "BiFormer_mm":
            args.update(num_classes=0, final_norm=False, feature_norms=True)
        model = BiFormer(**args)
    if kw.get("use_checkpoint_stages"):
        model.set_grad_checkpointing(True)
    return model


def golden_outputs(model, x, config, inputs=None):
    """Logits, raw stage features and every BRA layer's routing indices, named as the fixtures
    name them (``routing_idx.<official module path>``)."""
    stl = config.get("official_class", "").split(":")[-1] in _STL_CLASSES
    bra = {}
    for name, module in model.named_modules():
        if isinstance(module, BiLevelRoutingAttention):
            module.record_routing = True
            s, b = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.attn$", name).groups()
            bra[f"routing_idx.stages.{s}.{'blocks.' if stl else ''}{b}"] = module
    try:
        # One pass: forward_intermediates' final output is forward_features' (conformance suite),
        # and the Triton path under the interpreter is slow enough to count passes.
        final, feats = model.forward_intermediates(x)
        outputs = {"logits": model.forward_head(final)}
        outputs.update({name: m.routing_index for name, m in bra.items()})
        outputs.update({f"features.{i}": f for i, f in enumerate(feats)})
    finally:
        for m in bra.values():
            m.record_routing, m.routing_index = False, None
    return outputs


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
PAPER_RESULTS = {
    "biformer_tiny_224": dict(top1=81.4, params_m=13.1, gflops=2.2),
    "biformer_small_224": dict(top1=83.8, params_m=25.5, gflops=4.5),
    "biformer_base_224": dict(top1=84.3, params_m=56.8, gflops=9.8),
    "biformer_stl_224": dict(top1=82.7, params_m=28.4, gflops=4.6),
    "biformer_stl_nchw_224": dict(top1=82.7, params_m=28.4, gflops=4.6),
}


# What turns the classifier into the official dense backbone (BiFormer_mm): per-stage output
# norms (``extra_norms.i``) and the dense configs' region grid (COCO n_win 16, ADE20K n_win 8);
# used by backbones.dense.DenseBackbone(task=...).
DENSE_BACKBONE_KWARGS = {
    "detection": dict(feature_norms=True, n_win=16),
    "segmentation": dict(feature_norms=True, n_win=8),
}


# The authors' constructor of each variant (file:function in OFFICIAL_REPO), for side-by-side
# timing and output checks against a local clone (tools/benchmark.py --official).
OFFICIAL_REPO = "rayleizhu/BiFormer"
OFFICIAL_ENTRYPOINTS = {
    "biformer_tiny_224": "models/biformer.py:biformer_tiny",
    "biformer_small_224": "models/biformer.py:biformer_small",
    "biformer_base_224": "models/biformer.py:biformer_base",
    "biformer_stl_224": "models/biformer_stl.py:biformer_stl",
    "biformer_stl_nchw_224": "models/biformer_stl_nchw.py:biformer_stl_nchw",
}


def _create_biformer(variant, pretrained=False, **kwargs):
    return build_zoo_model(BiFormer, variant, pretrained, num_stages=4,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


_TSB = dict(n_win=7, topks=(1, 4, 16, -2), mlp_ratios=(3, 3, 3, 3), head_dim=32, side_dwconv=5,
            pos_embed_kernel=3)
_STL = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4), head_dim=32,
            n_win=7, side_dwconv=5, pos_embed_kernel=0, stem="patch", downsample="norm_conv",
            norm_layer="batchnorm")


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
