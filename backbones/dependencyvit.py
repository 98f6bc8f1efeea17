"""DependencyViT and DependencyViT-Lite: a ViT whose attention is reversed, so that a dependency
tree of the image's patches emerges from it.

Paper: "Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention",
Mingyu Ding, Yikang Shen, Lijie Fan, Zhenfang Chen, Zitian Chen, Ping Luo, Joshua B. Tenenbaum,
Chuang Gan, CVPR 2023, arXiv:2304.03282. The authors' repository (dingmyu/DependencyViT, MIT)
holds only a licence: no code and no weights were released. The behaviour implemented here is that
of the only runnable reference, the open timm pull request #2062 (Fredo Guan, Apache-2.0), which
its author reports trains about two points below the paper; the golden fixtures encode it. This is
an independent implementation with the reference's state_dict keys.

Architecture: timm's ViT without class token (16x16 patch embedding, learned position table, pre-
norm blocks with LayerScale 1e-6, no qkv bias, mean pooling), whose attention is *reversed*:

* the forward attention ``A = softmax_j(q_i k_j / sqrt(d))`` is the usual one (each child ``i``
  distributes one unit over parents ``j``), but it is transposed, so every parent ``j`` *receives*
  ``Σ_i A[i, j] w_i v_i``; the weight ``w_i = p_h[i] · m_i`` of a child is its head selector ``p``
  (softmax over heads of a bias-free linear map, temperature 0.1) times its message weight ``m``
  (sigmoid of a bias-free two-layer MLP, multiplied up over the blocks: *cumulative*);
* the soft dependency mask of a block is ``Σ_h A_h^T · w_h`` ``(B, N, N)``, row = receiving parent,
  column = sending child; its columns add up to the children's ``m``;
* the final tokens are ``LayerNorm(x) · m``;
* Lite (``prune_layers``, ``prune_ratio``): after the attention residual of the listed blocks,
  the tokens with the largest cumulative ``m`` survive (``floor`` of the reference's float64 keep
  fraction times the token count); the rest are dropped for good.

Reversed attention runs through :func:`ops.reversed_attention` (fused Triton kernels on the GPU,
the PyTorch reference elsewhere). Surviving tokens are kept in ascending original patch order (the
reference keeps ``topk(sorted=False)`` order, which is implementation-defined; logits do not depend
on it), so every per-token output has a defined layout.

Dependency outputs (trees, parts, saliency): :meth:`DependencyViT.forward_dependencies` and
:mod:`backbones.dependency_tree`.
"""
import math
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, resample_abs_pos_embed, \
    trunc_normal_
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices

import ops

from ._builder import build_zoo_model
from ._family import Family, register_family
from ._helpers import check_image_input, unwrap_checkpoint
from ._registry import register_zoo_model
from .dependency_tree import DependencyOutput
from .layers import DeviceLike, calculate_drop_path_rates, factory_context, notrace_function
from .query_attention import dependencyvit_query_attention

__all__ = ["DependencyViT", "ReversedAttention", "DependencyBlock", "TokenPruner",
           "checkpoint_filter_fn", "create_from_official", "kept_token_counts"]

MESSAGE_SCALES = ("after_norm", "before_norm", "none")
PRUNE_SCORES = ("message", "received")


def _keep_fractions(prune_ratio: float, num_pruners: int) -> List[float]:
    """The reference's keep fraction of the k-th pruning (k = 1, 2, ...): the fraction of the
    tokens still there that survive, so that ``1 - k * r`` of the original ones are left. Python
    float64, exactly as the reference computes it: with r = 0.2 the second fraction is
    0.7499999999999999 and 80 tokens keep 59, not 60."""
    return [(1 - k * prune_ratio) / (1 - (k - 1) * prune_ratio) for k in range(1, num_pruners + 1)]


def kept_token_counts(num_tokens: int, prune_layers: Sequence[int], prune_ratio: float,
                      depth: int) -> List[int]:
    """Tokens entering each of ``depth`` blocks, plus the final count (``depth + 1`` entries), for
    ``num_tokens`` patches and 1-based ``prune_layers`` (the reference's arithmetic)."""
    prune_at = {layer - 1: f for layer, f in
                zip(sorted(set(prune_layers or ())), _keep_fractions(prune_ratio or 0.,
                                                                     len(set(prune_layers or ()))))}
    counts, n = [], num_tokens
    for i in range(depth):
        counts.append(n)
        if i in prune_at:
            n = math.floor(prune_at[i] * n)
    counts.append(n)
    return counts


class TokenPruner(nn.Module):
    """Dynamic pooling of DependencyViT-Lite: keep the ``floor(keep_fraction * N)`` tokens with
    the largest score, in ascending original patch order. No parameters."""

    def __init__(self, keep_fraction: float):
        super().__init__()
        if not 0. < keep_fraction <= 1.:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.keep_fraction = keep_fraction

    def forward(self, x, m, index: Optional[torch.Tensor], score):
        """``x`` (B, N, C), ``m`` (B, N), ``index`` (B, N) original patch index of each token (None:
        all patches in order), ``score`` (B, N) -> the same three for the kept tokens."""
        return _prune_tokens(x, m, index, score, self.keep_fraction)

    def extra_repr(self):
        return f"keep_fraction={self.keep_fraction!r}"


@notrace_function
def _prune_tokens(x, m, index: Optional[torch.Tensor], score, keep_fraction: float):
    B, N, C = x.shape
    keep = math.floor(keep_fraction * N)
    # The kept set is the reference's (the top-`keep` scores); sorting it puts the tokens in
    # ascending original order, which the reference's topk(sorted=False) leaves undefined.
    keep_idx = score.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values
    x = x.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, C))
    index = keep_idx if index is None else index.gather(1, keep_idx)
    return x, m.gather(1, keep_idx), index


class HeadSelector(nn.Linear):
    """The head selector ``p = softmax(W x / temperature)`` over heads, per token: (B, N, C) ->
    (B, N, heads). A bias-free ``nn.Linear`` (key ``head_selector.weight``) whose output is already
    the softmax, so a forward hook sees the selector's weights."""

    def __init__(self, dim: int, num_heads: int, temperature: float = 0.1):
        super().__init__(dim, num_heads, bias=False)
        if not temperature > 0:
            raise ValueError(f"head selector temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, x):
        return (super().forward(x) / self.temperature).softmax(dim=-1)

    def extra_repr(self):
        return super().extra_repr() + f", temperature={self.temperature}"


class ReversedAttention(nn.Module):
    """Reversed multi-head attention with head selector and message controller.

    ``forward(x, m)`` with ``x = norm1(tokens)`` (B, N, C) and the cumulative message weight ``m``
    of the previous block (B, N) (None before the first block) returns ``(out, m, mask)``: the
    projected output (B, N, C), this block's message weight (B, N) and, when asked for (or while
    :attr:`track_dependency_mask` is on), the detached soft dependency mask (B, N, N), else None.

    Args:
        head_temperature: the head selector's softmax temperature (reference: 0.1).
        cumulative_message: multiply the message weights up over the blocks (reference) or use
            each block's own.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_norm: bool = False, attn_drop: float = 0., proj_drop: float = 0.,
                 norm_layer: Callable = nn.LayerNorm, head_temperature: float = 0.1,
                 cumulative_message: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.cumulative_message = cumulative_message
        self.attn_drop = attn_drop
        self.track_dependency_mask = False
        self.dependency_mask: Optional[torch.Tensor] = None
        self.head_selector = HeadSelector(dim, num_heads, head_temperature)
        self.message_controller = Mlp(dim, int(dim / 2), 1, act_layer=nn.GELU, bias=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, m: Optional[torch.Tensor] = None, need_mask: bool = False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        p = self.head_selector(x)  # (B, N, heads)
        gate = self.message_controller(x).sigmoid().squeeze(-1)  # (B, N)
        m = m * gate if m is not None and self.cumulative_message else gate
        weights = p.transpose(1, 2) * m.unsqueeze(1)  # (B, heads, N): per sending child
        need_mask = need_mask or self.track_dependency_mask
        if self.training and self.attn_drop > 0.:
            out, mask = self._dropout_attention(q, k, v, weights, need_mask)
        elif need_mask:
            out, mask = ops.reversed_attention(q, k, v, weights, scale=self.scale,
                                               return_scores=True)
        else:
            out, mask = ops.reversed_attention(q, k, v, weights, scale=self.scale), None
        if self.track_dependency_mask:
            self.dependency_mask = mask
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return out, m, mask

    def _dropout_attention(self, q, k, v, weights, need_mask: bool):
        # Dropout on the forward attention, as the reference's attn_drop: the fused op has none.
        attn = F.dropout((q @ k.transpose(-2, -1) * self.scale).softmax(-1), self.attn_drop,
                         training=True).transpose(-2, -1) * weights.unsqueeze(-2)
        mask = attn.detach().sum(1) if need_mask else None
        return attn @ v, mask


class DependencyBlock(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x)))``, then dynamic pooling (Lite blocks), then
    ``x + ls2(mlp(norm2(x)))``. ``forward(x, m, index)`` -> ``(x, m, index, mask)``.

    ``prune_score``: what the pruning keeps the largest of: ``'message'`` (the cumulative message
    weight, the reference) or ``'received'`` (the message mass a token receives, ``mask.sum(-1)``:
    tokens that are nobody's parent, the tree's leaves, go first).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 qk_norm: bool = False, proj_drop: float = 0., attn_drop: float = 0.,
                 init_values: Optional[float] = 1e-6, drop_path: float = 0.,
                 act_layer: Callable = nn.GELU, norm_layer: Callable = nn.LayerNorm,
                 keep_fraction: Optional[float] = None, prune_score: str = "message",
                 head_temperature: float = 0.1, cumulative_message: bool = True):
        super().__init__()
        if prune_score not in PRUNE_SCORES:
            raise ValueError(f"prune_score must be one of {PRUNE_SCORES}, got {prune_score!r}")
        self.prune_score = prune_score
        self.norm1 = norm_layer(dim)
        self.attn = ReversedAttention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop,
                                      norm_layer, head_temperature, cumulative_message)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.token_pruner = TokenPruner(keep_fraction) if keep_fraction is not None else None
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x, m: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None,
                need_mask: bool = False):
        pruner = self.token_pruner
        received = pruner is not None and self.prune_score == "received"
        a, m, mask = self.attn(self.norm1(x), m, need_mask or received)
        x = x + self.drop_path1(self.ls1(a))
        if pruner is not None:
            score = mask.sum(-1) if received else m.detach()
            x, m, index = pruner(x, m, index, score)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, m, index, mask


class MessageScaledNorm(nn.LayerNorm):
    """The final norm with the message weight applied: ``LayerNorm(x) * m`` (reference),
    ``LayerNorm(x * m)`` or ``LayerNorm(x)`` (``message_scale`` ``'after_norm'``,
    ``'before_norm'``, ``'none'``). Keys ``norm.weight`` / ``norm.bias``."""

    def __init__(self, dim: int, eps: float = 1e-6, message_scale: str = "after_norm"):
        super().__init__(dim, eps=eps)
        if message_scale not in MESSAGE_SCALES:
            raise ValueError(f"message_scale must be one of {MESSAGE_SCALES}, got "
                             f"{message_scale!r}")
        self.message_scale = message_scale

    def forward(self, x, m: Optional[torch.Tensor] = None):
        if m is None or self.message_scale == "none":
            return super().forward(x)
        if self.message_scale == "before_norm":
            return super().forward(x * m.unsqueeze(-1))
        return super().forward(x) * m.unsqueeze(-1)


class MessageScale(nn.Module):
    """What :class:`MessageScaledNorm` becomes without its norm (``prune_intermediate_layers(
    prune_norm=True)``): the message weight only."""

    def __init__(self, message_scale: str = "after_norm"):
        super().__init__()
        self.message_scale = message_scale

    def forward(self, x, m: Optional[torch.Tensor] = None):
        if m is None or self.message_scale == "none":
            return x
        return x * m.unsqueeze(-1)


@notrace_function
def _position_table(pos_embed, grid_size: Tuple[int, int], height: int, width: int):
    """The position table for an ``height x width`` patch grid: the learned one at the built
    size, bicubically resampled otherwise (timm's ``dynamic_img_size``)."""
    if (height, width) == tuple(grid_size):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, (height, width), tuple(grid_size),
                                  num_prefix_tokens=0)


@notrace_function
def _check_patch_grid(x, patch_size: int, model_name: str):
    H, W = x.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"{model_name} cuts the input into {patch_size}x{patch_size} patches: input sides must "
            f"be multiples of {patch_size}, got {H}x{W}. Resize or crop the image: "
            "timm.data.resolve_data_config(model=model) gives the model's eval transform.")
    return x


@notrace_function
def _token_grid(x, index: Optional[torch.Tensor], grid_size: Tuple[int, int]):
    """Tokens (B, N, C) -> NCHW map on the patch grid; pruned patches (Lite) are zeros."""
    B, N, C = x.shape
    H, W = grid_size
    if index is None:
        return x.reshape(B, H, W, C).permute(0, 3, 1, 2)
    grid = x.new_zeros(B, H * W, C)
    grid = grid.scatter(1, index.unsqueeze(-1).expand(-1, -1, C), x)
    return grid.reshape(B, H, W, C).permute(0, 3, 1, 2)


@notrace_function
def _pool_kept(x, keep_fractions: Tuple[float, ...]):
    """Mean over the kept tokens of an NCHW map in which pruned patches are zeros: the token
    count after each keep fraction is known from the grid alone."""
    total = kept = x.shape[-2] * x.shape[-1]
    for fraction in keep_fractions:
        kept = math.floor(fraction * kept)
    if kept == total:
        return x.mean((2, 3))
    return x.sum((2, 3)) / max(kept, 1)


class DependencyViT(nn.Module):
    """DependencyViT and DependencyViT-Lite (timm API; the reference's state_dict keys).

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
        qk_norm, pre_norm, drop_rate, pos_drop_rate, proj_drop_rate, attn_drop_rate,
        drop_path_rate, act_layer: as timm's ``VisionTransformer``. Other input sizes than
            ``img_size`` work when their sides are multiples of ``patch_size`` (the position
            table is resampled).
        global_pool: ``'avg'`` (mean over the tokens left, the reference) or ``''``.
        qkv_bias, init_values: the reference forces False and 1e-6.
        prune_layers: Lite: 1-based numbers of the blocks after whose attention the tokens are
            pruned (reference Lite-tiny: ``(2, 5, 8, 11)``); ``prune_ratio``: the fraction of the
            original tokens each pruning removes (0.16); ``len(prune_layers) * prune_ratio < 1``.
        head_temperature: head selector temperature (reference 0.1).
        cumulative_message: message weights multiplied up over the blocks (reference) or per block.
        message_scale: where the final message weight scales the features: ``'after_norm'``
            (reference), ``'before_norm'`` or ``'none'``.
        prune_score: ``'message'`` (keep the largest cumulative message weights, reference) or
            ``'received'`` (keep the tokens receiving the most message mass).
        norm_eps: LayerNorm epsilon (timm ViT: 1e-6).
        feature_blocks: the blocks whose outputs are the feature maps of ``features_only`` /
            ``forward_intermediates`` (0-based). Default: the ends of the four quarters of the
            depth (blocks 2, 5, 8, 11 of 12), the taps of ViT dense-prediction heads.
        device, dtype: where and in which float precision the parameters are made.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            init_values: Optional[float] = 1e-6,
            pre_norm: bool = False,
            prune_layers: Optional[Sequence[int]] = None,
            prune_ratio: Optional[float] = None,
            head_temperature: float = 0.1,
            cumulative_message: bool = True,
            message_scale: str = "after_norm",
            prune_score: str = "message",
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_eps: float = 1e-6,
            act_layer: Callable = nn.GELU,
            feature_blocks: Optional[Sequence[int]] = None,
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' (mean over the tokens left) or '' (the "
                             f"token map), got {global_pool!r}")
        prune_layers = sorted(set(int(p) for p in prune_layers)) if prune_layers else []
        if prune_layers:
            if prune_ratio is None or not 0. < prune_ratio:
                raise ValueError("prune_layers needs a positive prune_ratio (reference Lite: 0.16)")
            if prune_layers[0] < 1 or prune_layers[-1] > depth:
                raise ValueError(f"prune_layers are 1-based block numbers in [1, depth={depth}], "
                                 f"got {prune_layers}")
            if prune_ratio * len(prune_layers) >= 1:
                raise ValueError(f"prune_ratio * len(prune_layers) must be below 1 (some tokens "
                                 f"must survive), got {prune_ratio} * {len(prune_layers)}")
        elif prune_ratio:
            raise ValueError("prune_ratio without prune_layers prunes nothing: pass prune_layers "
                             "(1-based block numbers) too")
        self.prune_layers = tuple(prune_layers)
        self.prune_ratio = prune_ratio if prune_layers else None
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.min_input_size = patch_size
        self.output_fmt = "NCHW"
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        keep = dict(zip((p - 1 for p in prune_layers),
                        _keep_fractions(prune_ratio or 0., len(prune_layers))))
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        with factory_context(device, dtype):
            # timm's ViT (and so the reference) drops the patch bias when a norm follows it
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                          bias=not pre_norm, strict_img_size=False)
            self.grid_size = self.patch_embed.grid_size
            self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches,
                                                      embed_dim) * .02)
            self.pos_drop = nn.Dropout(pos_drop_rate)
            self.norm_pre = norm_layer(embed_dim) if pre_norm else nn.Identity()
            self.blocks = nn.Sequential(*[
                DependencyBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm,
                                proj_drop_rate, attn_drop_rate, init_values, dpr[i], act_layer,
                                norm_layer, keep.get(i), prune_score, head_temperature,
                                cumulative_message)
                for i in range(depth)])
            if feature_blocks is None:
                feature_blocks = sorted({max(0, round((k + 1) * depth / 4) - 1) for k in range(4)})
            feature_blocks = tuple(int(b) % depth for b in feature_blocks) if depth else ()
            if list(feature_blocks) != sorted(set(feature_blocks)):
                raise ValueError(f"feature_blocks must be distinct and ascending, got "
                                 f"{feature_blocks}")
            self.feature_blocks = feature_blocks
            self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size,
                                      module=f"blocks.{i}") for i in feature_blocks]
            self.norm = MessageScaledNorm(embed_dim, norm_eps, message_scale)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if not self.pos_embed.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """timm ViT's default init (the reference's): truncated-normal position table and linear
        weights (std 0.02), zero biases; the patch embedding keeps PyTorch's conv init."""
        trunc_normal_(self.pos_embed, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------ timm API

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r"^pos_embed|^patch_embed|^norm_pre",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = self.pos_embed
        with factory_context(like.device, like.dtype):
            self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 \
                else nn.Identity()

    def _keep_fractions(self) -> Tuple[float, ...]:
        return tuple(blk.token_pruner.keep_fraction for blk in self.blocks
                     if blk.token_pruner is not None)

    def kept_tokens(self, num_tokens: int) -> int:
        """Tokens left after every pruning block, for ``num_tokens`` patches."""
        for fraction in self._keep_fractions():
            num_tokens = math.floor(fraction * num_tokens)
        return num_tokens

    @torch.jit.ignore
    def track_dependency_mask(self, track: bool = True):
        """The reference's switch: while on, every block keeps its last dependency mask in
        ``blocks[i].attn.dependency_mask`` (see :meth:`get_dependency_mask`). Prefer
        :meth:`forward_dependencies`, which returns them without keeping state."""
        for blk in self.blocks:
            if blk.attn.track_dependency_mask != track:
                blk.attn.dependency_mask = None
            blk.attn.track_dependency_mask = track

    @torch.jit.ignore
    def get_dependency_mask(self, layers: Optional[Sequence[int]] = None):
        """The masks kept while :meth:`track_dependency_mask` is on (reference API): one (B, N_l,
        N_l) tensor per block in ``layers`` (default all), tokens in ascending patch order."""
        layers = range(len(self.blocks)) if layers is None else layers
        return [self.blocks[i].attn.dependency_mask for i in layers]

    def _check_input(self, x):
        x = check_image_input(x, self.in_chans, type(self).__name__, self.min_input_size)
        return _check_patch_grid(x, self.patch_size, type(self).__name__)

    def _embed(self, x):
        x = self._check_input(x)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)
        x = self.pos_drop(x + _position_table(self.pos_embed, self.grid_size, grid[0], grid[1]))
        return self.norm_pre(x), grid

    def _run_block(self, blk, x, m, index, need_mask: bool = False):
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(blk, x, m, index, need_mask,
                                                     use_reentrant=False)
        return blk(x, m, index, need_mask)

    def forward_tokens(self, x):
        """``(tokens, m, index, grid)``: the final tokens ``norm(x) * m`` (B, N_final, C) in
        ascending patch order, their message weights (B, N_final), their original patch indices
        (B, N_final) (None when nothing was pruned) and the patch grid (H, W)."""
        x, grid = self._embed(x)
        m, index = None, None
        for blk in self.blocks:
            x, m, index, _ = self._run_block(blk, x, m, index)
        return self.norm(x, m), m, index, grid

    def forward_features(self, x):
        """NCHW map (B, C, H/16, W/16) of the final tokens; patches pruned by Lite are zeros."""
        x, _, index, grid = self.forward_tokens(x)
        return _token_grid(x, index, grid)

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = _pool_kept(x, self._keep_fractions())
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Outputs of the ``feature_blocks`` as NCHW maps on the patch grid (Lite: pruned
        patches are zeros; their indices come with :meth:`forward_dependencies`) and the final
        features. ``indices`` count feature blocks, as ``features_only``'s ``out_indices``.

        ``norm=True`` passes each intermediate through the final norm (without the message
        weight, which belongs to the final tokens)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_blocks), indices)
        take_blocks = {self.feature_blocks[i] for i in take_indices}
        x, grid = self._embed(x)
        last = self.feature_blocks[max_index] if stop_early else len(self.blocks) - 1
        m, index = None, None
        intermediates = []
        for i, blk in enumerate(self.blocks[:last + 1]):
            x, m, index, _ = self._run_block(blk, x, m, index)
            if i in take_blocks:
                y = _token_grid(self.norm(x) if norm else x, index, grid)
                intermediates.append(y.permute(0, 2, 3, 1) if output_fmt == "NHWC" else y)
        if intermediates_only:
            return intermediates
        return _token_grid(self.norm(x, m), index, grid), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.feature_blocks), indices)
        self.blocks = self.blocks[:self.feature_blocks[max_index] + 1]
        self.feature_blocks = self.feature_blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = MessageScale(self.norm.message_scale)
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # ------------------------------------------------------------------------------ dependencies

    @torch.no_grad()
    def forward_dependencies(self, x, layers: Optional[Sequence[int]] = None) -> DependencyOutput:
        """Everything the dependency trees are read from, in one pass, without keeping state.

        Returns a :class:`backbones.dependency_tree.DependencyOutput` with, for every block ``l``
        in ``layers`` (default: all): the soft dependency mask ``masks[l]`` (B, N_l, N_l) (row =
        receiving parent, column = sending child, Σ over heads of the reversed attention), the
        cumulative message weights ``message_weights[l]`` (B, N_l), the head selector
        ``head_weights[l]`` (B, heads, N_l) and ``token_indices[l]`` (B, N_l), the original patch
        index (row-major on ``grid_size``) of each of the block's tokens; plus the final
        ``features`` (forward_features) and ``logits`` (None without a classifier). Its
        ``tree()``, ``parts()`` and ``saliency()`` read trees and maps off the masks. ``layers``:
        block indices (negative from the end), recorded in ascending order.
        """
        depth = len(self.blocks)
        if layers is None:
            layers = list(range(depth))
        else:
            bad = [i for i in layers if not -depth <= i < depth]
            if bad:
                raise ValueError(f"layers {bad} out of range: the model has {depth} blocks")
            layers = sorted({i % depth for i in layers})
        x, grid = self._embed(x)
        B = x.shape[0]
        m, index = None, None
        record, heads, messages = {}, {}, {}
        hooks = []
        for i in layers:
            attn = self.blocks[i].attn
            hooks.append(attn.head_selector.register_forward_hook(
                lambda _mod, _args, out, i=i: heads.__setitem__(i, out.transpose(1, 2))))
            hooks.append(attn.register_forward_hook(
                lambda _mod, _args, out, i=i: messages.__setitem__(i, out[1])))
        try:
            for i, blk in enumerate(self.blocks):
                token_index = index if index is not None else torch.arange(
                    x.shape[1], device=x.device).expand(B, -1)
                x, m, index, mask = blk(x, m, index, need_mask=i in layers)
                if i in layers:
                    record[i] = (mask, messages[i], token_index)
        finally:
            for h in hooks:
                h.remove()
        tokens = self.norm(x, m)
        features = _token_grid(tokens, index, grid)
        logits = self.forward_head(features) if self.num_classes > 0 else None
        return DependencyOutput(
            masks=[record[i][0] for i in layers], message_weights=[record[i][1] for i in layers],
            head_weights=[heads[i] for i in layers], token_indices=[record[i][2] for i in layers],
            layers=layers, grid_size=tuple(grid), patch_size=self.patch_size,
            features=features, logits=logits)


# ---------------------------------------------------------------------------------------------
# Checkpoints

def checkpoint_filter_fn(state_dict, model=None):
    """A DependencyViT checkpoint (reference PR #2062 / timm layout, which is the zoo's) -> zoo
    keys. Any wrapper (``model`` / ``state_dict`` / EMA keys, ``module.`` / ``_orig_mod.``
    prefixes). With ``model``: the position table is resampled to the model's patch grid (a
    checkpoint trained at another size), and the classifier is dropped for a headless model."""
    out = dict(unwrap_checkpoint(state_dict))
    if model is None:
        return out
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        old = int(math.isqrt(pos.shape[1]))
        if old * old != pos.shape[1]:
            raise ValueError(f"pos_embed of {pos.shape[1]} tokens is not a square grid; build the "
                             "model at the checkpoint's img_size")
        out["pos_embed"] = resample_abs_pos_embed(pos, tuple(model.grid_size), (old, old),
                                                  num_prefix_tokens=0)
    if isinstance(model.head, nn.Identity):
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    return out


# timm VisionTransformer arguments the reference passes through, and those it fixes itself.
_REFERENCE_KWARGS = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                     "num_heads", "mlp_ratio", "qk_norm", "pre_norm", "drop_rate",
                     "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
                     "prune_layers", "prune_ratio"}
_FORCED_KWARGS = {"block_fn", "class_token", "global_pool", "qkv_bias", "init_values", "fc_norm"}


def create_from_official(kwargs, official_class=None):
    """The zoo model with the architecture the reference constructor (timm PR #2062
    ``timm/models/dependencyvit.py:DependencyViT``) builds from ``kwargs``.

    Accepts the reference's own arguments (``prune_layers``, ``prune_ratio``) and the timm
    ``VisionTransformer`` arguments that change the architecture; like the reference, the ones it
    fixes (``class_token``, ``global_pool``, ``qkv_bias``, ``init_values``, ``fc_norm``,
    ``block_fn``) raise ``TypeError``.
    """
    name = (official_class or "DependencyViT").split(":")[-1].strip()
    if name != "DependencyViT":
        raise ValueError(f"unknown reference class {official_class!r}; expected "
                         "timm/models/dependencyvit.py:DependencyViT")
    kw = dict(kwargs)
    forced = set(kw) & _FORCED_KWARGS
    if forced:
        raise TypeError(f"DependencyViT fixes {sorted(forced)} itself (the reference raises "
                        "TypeError for them too)")
    unknown = set(kw) - _REFERENCE_KWARGS
    if unknown:
        raise TypeError(f"DependencyViT: unsupported argument(s) {sorted(unknown)} (supported: "
                        f"{sorted(_REFERENCE_KWARGS)})")
    return DependencyViT(**kw)


# ---------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

_NO_WEIGHTS = ("No weights exist: the authors released none (dingmyu/DependencyViT holds only a "
               "licence) and the reference (timm PR #2062) registers only untrained tags. Train "
               "one with configs/imagenet/ and load it with pretrained_cfg_overlay=dict(file=...).")


def _cfg(**kwargs):
    # The reference's cfg: Inception mean / std (0.5), crop 0.9, bicubic, fixed 224 input.
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_INCEPTION_MEAN, "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "mit",
        "origin_url": "https://github.com/huggingface/pytorch-image-models/pull/2062",
        "paper_ids": "arXiv:2304.03282",
        "paper_name": "Visual Dependency Transformers: Dependency Tree Emerges from Reversed "
                      "Attention",
        "notes": (_NO_WEIGHTS,),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "dependencyvit_tiny_224.untrained": _cfg(),
    "dependencyvit_small_224.untrained": _cfg(),
    "dependencyvit_lite_tiny_224.untrained": _cfg(),
})

_REFERENCE_FILE = "timm/models/dependencyvit.py"

FAMILY = register_family(Family(
    name="dependencyvit",
    model_cls=DependencyViT,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    # No official code exists; the reference is the open timm pull request #2062 (its branch).
    official_repo="fffffgggg54/pytorch-image-models",
    official_classes=(f"{_REFERENCE_FILE}:DependencyViT",),
    official_entrypoints={
        "dependencyvit_tiny_224": f"{_REFERENCE_FILE}:dependencyvit_tiny_patch16_224",
        "dependencyvit_small_224": f"{_REFERENCE_FILE}:dependencyvit_small_patch16_224",
        "dependencyvit_lite_tiny_224": f"{_REFERENCE_FILE}:dependencyvit_lite_tiny_patch16_224",
    },
    # exact parameter counts of the reference (1000-class heads); pruning has no parameters
    param_counts={
        "dependencyvit_tiny_224": 5_964_712,
        "dependencyvit_small_224": 22_987_624,
        "dependencyvit_lite_tiny_224": 5_964_712,
    },
    any_input_size=False,
    torchscript=("the attention calls ops.reversed_attention, whose keyword-only arguments and "
                 "backend dispatch TorchScript cannot compile; torch.export is the supported path"),
    fx=("blocks pass (tokens, message weight, token index) along, so timm's feature_cls='fx' "
        "cannot return a block's map; whole-model FX tracing works, and features_only uses the "
        "default getter"),
    query_attention=dependencyvit_query_attention,
))


def _create_dependencyvit(variant, pretrained=False, **kwargs):
    if kwargs.get("features_only") and str(kwargs.get("feature_cls", "")).lower() == "fx":
        raise ValueError(f"{variant}: feature_cls='fx' is not supported (its blocks pass "
                         "(tokens, message weight, token index) along, not one map); use the "
                         "default features_only=True (feature_cls='getter')")
    depth = kwargs.get("depth", 12)
    feature_blocks = kwargs.get("feature_blocks")
    num_taps = len(feature_blocks) if feature_blocks is not None else \
        len({max(0, round((k + 1) * depth / 4) - 1) for k in range(4)})
    return build_zoo_model(DependencyViT, variant, pretrained, num_stages=num_taps,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_zoo_model
def dependencyvit_tiny_224(pretrained=False, **kwargs) -> DependencyViT:
    """DependencyViT-Tiny (reference ``dependencyvit_tiny_patch16_224``), 5.96M params;
    untrained."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=12)
    return _create_dependencyvit("dependencyvit_tiny_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def dependencyvit_small_224(pretrained=False, **kwargs) -> DependencyViT:
    """DependencyViT-Small (reference ``dependencyvit_small_patch16_224``), 22.99M params;
    untrained."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=12)
    return _create_dependencyvit("dependencyvit_small_224", pretrained,
                                 **dict(model_args, **kwargs))


@register_zoo_model
def dependencyvit_lite_tiny_224(pretrained=False, **kwargs) -> DependencyViT:
    """DependencyViT-Lite-Tiny (reference ``dependencyvit_lite_tiny_patch16_224``): tiny with
    dynamic pooling after blocks 2, 5, 8, 11 at ratio 0.16 (196 -> 164 -> 132 -> 100 -> 69
    tokens), 5.96M params; untrained."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=12,
                      prune_layers=(2, 5, 8, 11), prune_ratio=0.16)
    return _create_dependencyvit("dependencyvit_lite_tiny_224", pretrained,
                                 **dict(model_args, **kwargs))
