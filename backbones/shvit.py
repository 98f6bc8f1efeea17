"""SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design.

Paper: "SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design", Seokju Yun,
Youngmin Ro, CVPR 2024, arXiv:2401.16456.
Official code and weights: https://github.com/ysj9909/SHViT (MIT licence). timm 1.0.31 ships the
same architecture as ``shvit_s1`` .. ``shvit_s4`` (weights ``timm/shvit_sN.in1k``: the official
release files converted to timm's key layout). This is an independent implementation; its
state_dict layout *is* timm's (``patch_embed``, ``stages.i.downsample`` / ``stages.i.blocks``,
``head.bn`` / ``head.l``), so timm's and the zoo's weights load into each other unchanged, and
``checkpoint_filter_fn`` maps the official release layout (``blocks1..3``) onto it.

Architecture: a 16x16 convolutional patchify stem (four stride-2 Conv-BN), three stages of
BasicBlocks (residual depthwise 3x3 Conv-BN, optional single-head attention mixer, residual
Conv-BN FFN) with stride-2 transitions (residual DW conv + FFN, PatchMerging with
squeeze-excite, residual DW conv + FFN) between stages, and a BatchNorm1d + Linear head (with
``distillation=True`` a second one, ``head_dist``, averaged with it, as the official option).
Every conv is bias-free and followed by BatchNorm; :meth:`SHViT.fuse` folds them all for
inference.

Single-head self-attention (SHSA) runs on the first ``pdim`` channels only: GroupNorm(1) ->
1x1 Conv-BN to ``q (qk_dim) | k (qk_dim) | v (pdim)`` -> softmax attention of every token to
every token of the grid (one head, ``d_qk = 16 != d_v = pdim``) through
``ops.window_attention_2d(q, k, v, None)``; q, k, v go to the op as strided
``(B, 1, H, W, d)`` views of the projection (no copy). The untouched ``dim - pdim`` channels are
concatenated back and the sum goes through ReLU -> 1x1 Conv-BN.

Any input size works (all convolutions are 3x3 / stride 2 / padding 1 or pointwise, attention is
global over whatever grid there is): stage ``i`` has ``ceil(H / 2 ** (4 + i))`` rows, as in the
official and timm code.
"""
import re
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, GroupNorm1, SelectAdaptivePool2d, SqueezeExcite, trunc_normal_
from timm.models import generate_default_cfgs

import ops

from ._builder import build_zoo_model
from ._helpers import unwrap_checkpoint
from .layers import (DeviceLike, Stage, StagedBackboneMixin, calculate_drop_path_rates,
                     factory_context)
from ._family import Family, PaperResult, register_family
from ._registry import register_zoo_model
from .query_attention import shvit_query_attention

__all__ = ["SHViT", "SingleHeadAttention", "checkpoint_filter_fn", "create_from_official"]


class ConvNorm(nn.Module):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``): the official
    ``Conv2d_BN`` / timm ``Conv2dNorm`` (same keys)."""

    def __init__(self, in_chs, out_chs, kernel_size=1, stride=1, padding=0, groups=1,
                 bn_weight_init=1.):
        super().__init__()
        self.c = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups,
                           bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x):
        return self.bn(self.c(x))

    @torch.no_grad()
    def fuse(self):
        """The equivalent ``Conv2d`` with bias (eval-mode BatchNorm folded in)."""
        c, bn = self.c, self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                          c.dilation, c.groups, bias=True, device=c.weight.device,
                          dtype=c.weight.dtype)
        fused.weight.copy_(c.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


class Residual(nn.Module):
    """``x + drop_path(m(x))``. The sum is written into ``m``'s fresh output (every ``m`` here
    ends in a BatchNorm or a Conv2d, neither of which keeps its output for backward)."""

    def __init__(self, m, drop_path=0.):
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path) if drop_path > 0. else None

    def forward(self, x):
        y = self.m(x)
        if self.drop_path is not None:
            y = self.drop_path(y)
        return y.add_(x)

    @torch.no_grad()
    def fuse(self):
        """A residual depthwise Conv-BN becomes one ``Conv2d`` with the identity added to its
        centre tap (as the official ``Residual.fuse``); any other residual stays (its inner
        Conv-BNs are fused by :meth:`SHViT.fuse`'s walk)."""
        m = self.m
        if not (isinstance(m, ConvNorm) and m.c.groups == m.c.in_channels == m.c.out_channels
                and m.c.stride == (1, 1) and m.c.dilation == (1, 1)
                and all(k % 2 == 1 and p == k // 2 for k, p in zip(m.c.kernel_size, m.c.padding))):
            return self
        conv = m.fuse()
        kh, kw = conv.kernel_size
        conv.weight[:, 0, kh // 2, kw // 2] += 1.
        return conv


class FFN(nn.Module):
    """1x1 Conv-BN -> ReLU -> 1x1 Conv-BN (output BN weight initialised to 0)."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden_dim)
        self.pw2 = ConvNorm(hidden_dim, dim, bn_weight_init=0.)

    def forward(self, x):
        return self.pw2(F.relu(self.pw1(x), inplace=True))


class PatchMerging(nn.Module):
    """1x1 Conv-BN (x4 width) -> ReLU -> depthwise 3x3 stride-2 Conv-BN -> ReLU -> squeeze-excite
    (timm ``SEModule``, rd_ratio 0.25) -> 1x1 Conv-BN to ``out_dim``."""

    def __init__(self, dim, out_dim):
        super().__init__()
        hidden_dim = dim * 4
        self.conv1 = ConvNorm(dim, hidden_dim)
        self.conv2 = ConvNorm(hidden_dim, hidden_dim, 3, 2, 1, groups=hidden_dim)
        self.se = SqueezeExcite(hidden_dim, 0.25)
        self.conv3 = ConvNorm(hidden_dim, out_dim)

    def forward(self, x):
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True)
        return self.conv3(self.se(x))


class SingleHeadAttention(nn.Module):
    """SHSA: single-head attention over the first ``pdim`` channels, concatenated with the other
    ``dim - pdim`` channels, then ReLU -> 1x1 Conv-BN. NCHW in and out.

    The q / k / v of the op are strided views of the qkv projection's NCHW output; the op's result
    (logically ``(B, 1, H, W, pdim)``) is viewed back as NCHW and copied once, by the concat.
    """

    def __init__(self, dim, qk_dim, pdim, norm_layer: Callable = GroupNorm1):
        super().__init__()
        if not 0 < pdim <= dim:
            raise ValueError(f"partial_dim {pdim} must be in [1, dim={dim}]")
        if qk_dim < 1:
            raise ValueError(f"qk_dim must be positive, got {qk_dim}")
        self.dim, self.qk_dim, self.pdim = dim, qk_dim, pdim
        self.scale = qk_dim ** -0.5
        self.pre_norm = norm_layer(pdim)  # official GroupNorm(1 group), eps 1e-5
        self.qkv = ConvNorm(pdim, 2 * qk_dim + pdim)
        self.proj = nn.Sequential(nn.ReLU(inplace=True), ConvNorm(dim, dim, bn_weight_init=0.))

    def forward(self, x):
        qk, pdim = self.qk_dim, self.pdim
        qkv = self.qkv(self.pre_norm(x[:, :pdim]))
        t = qkv.permute(0, 2, 3, 1).unsqueeze(1)  # (B, 1, H, W, 2 * qk + pdim), a view
        out = ops.window_attention_2d(t[..., :qk], t[..., qk:2 * qk], t[..., 2 * qk:], None,
                                      scale=self.scale)
        out = out.squeeze(1).permute(0, 3, 1, 2)  # (B, pdim, H, W), a view
        return self.proj(torch.cat([out, x[:, pdim:]], dim=1))


class BasicBlock(nn.Module):
    """Residual depthwise 3x3 Conv-BN -> (residual SHSA, type ``'s'``) -> residual FFN (x2)."""

    def __init__(self, dim, qk_dim, pdim, block_type, drop_path=0.,
                 norm_layer: Callable = GroupNorm1):
        super().__init__()
        if block_type not in ("s", "i"):
            raise ValueError(f"block type must be 's' (attention) or 'i' (none), "
                             f"got {block_type!r}")
        self.conv = Residual(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.), drop_path)
        if block_type == "s":
            self.mixer = Residual(SingleHeadAttention(dim, qk_dim, pdim, norm_layer), drop_path)
        else:
            self.mixer = nn.Identity()
        self.ffn = Residual(FFN(dim, dim * 2), drop_path)
        self.has_mixer = block_type == "s"

    def forward(self, x):
        x = self.conv(x)
        if self.has_mixer:
            x = self.mixer(x)
        return self.ffn(x)


def _transition(prev_dim, dim):
    """The stride-2 transition in front of a stage (official ``blocks{i}.0..2``)."""
    return nn.Sequential(
        Residual(ConvNorm(prev_dim, prev_dim, 3, 1, 1, groups=prev_dim)),
        Residual(FFN(prev_dim, prev_dim * 2)),
        PatchMerging(prev_dim, dim),
        Residual(ConvNorm(dim, dim, 3, 1, 1, groups=dim)),
        Residual(FFN(dim, dim * 2)),
    )


class NormLinear(nn.Module):
    """BatchNorm1d (``bn``) -> Linear (``l``) on pooled features: the official ``BN_Linear`` /
    timm ``NormLinear`` (same keys); two Identities without classes (the official ``head`` is an
    ``Identity`` then)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features = in_features
        self.bn, self.l = nn.Identity(), nn.Identity()
        self._make_classifier(num_classes)

    def reset(self, num_classes: int):
        self._make_classifier(num_classes)

    def _make_classifier(self, num_classes):
        # a head made after construction (reset_classifier) joins the model's device and dtype
        param = next(self.parameters(), None)
        dd = dict(device=param.device, dtype=param.dtype) if param is not None else {}
        self.num_classes = num_classes
        if num_classes > 0:
            self.bn = nn.BatchNorm1d(self.in_features, **dd)
            self.l = nn.Linear(self.in_features, num_classes, **dd)
            trunc_normal_(self.l.weight, std=.02)
            nn.init.zeros_(self.l.bias)
        else:
            self.bn = nn.Identity()
            self.l = nn.Identity()
        self.bn.train(self.training)
        self.l.train(self.training)

    def classify(self, x):
        return self.l(self.bn(x))

    def forward(self, x):
        return self.classify(x)

    @torch.no_grad()
    def fuse(self):
        """Fold the eval-mode BatchNorm1d into the Linear layer (in place)."""
        if isinstance(self.bn, nn.BatchNorm1d) and isinstance(self.l, nn.Linear):
            bn, l = self.bn, self.l
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            shift = bn.bias - bn.running_mean * scale
            fused = nn.Linear(l.in_features, l.out_features, device=l.weight.device,
                              dtype=l.weight.dtype)
            fused.weight.copy_(l.weight * scale[None, :])
            fused.bias.copy_(l.weight @ shift + (l.bias if l.bias is not None else 0.))
            self.l = fused
            self.bn = nn.Identity()
        return self


class NormLinearHead(NormLinear):
    """Global pool -> dropout -> :class:`NormLinear` (``bn``, ``l``): timm's layout of the official
    head. ``pre_logits`` are the pooled features before the BatchNorm (as in timm)."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg",
                 drop_rate: float = 0.):
        super().__init__(in_features, 0)
        self.drop_rate = drop_rate
        self.global_pool = nn.Identity()
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: Optional[str] = None):
        if pool_type is not None:
            pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
            if pool.feat_mult() != 1:
                raise ValueError(f"global_pool={pool_type!r} changes the pooled width; SHViT's "
                                 "BatchNorm1d head takes 'avg' or 'max' (or '' for no pooling)")
            self.global_pool = pool
        if num_classes > 0 and self.global_pool.is_identity():
            raise ValueError("a classifier (num_classes > 0) needs pooling: SHViT's BatchNorm1d "
                             "head takes pooled features; use global_pool='avg', or num_classes=0 "
                             "with global_pool='' for the unpooled map")
        self._make_classifier(num_classes)
        self.global_pool.train(self.training)

    def forward(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        if pre_logits:
            return x
        return self.classify(x)


class SHViT(StagedBackboneMixin, nn.Module):
    """SHViT backbone and classifier (timm API; state_dict layout identical to timm's ``SHViT``).

    Args:
        in_chans, num_classes, global_pool: as in timm (``global_pool`` ``'avg'``, ``'max'`` or
            ``''``; a classifier needs pooling).
        embed_dim: width of each stage (``embed_dim[0] // 8`` is the stem's first width).
        partial_dim: channels each type-``'s'`` stage's attention runs on (unused for ``'i'``).
        qk_dim: query / key width of the single head, per stage.
        depth: BasicBlocks per stage.
        types: per stage, ``'s'`` (blocks with single-head attention) or ``'i'`` (without).
        downsample: per stage, whether a stride-2 transition precedes it. Default: every stage
            whose width differs from the previous one's (timm's rule; the official ``down_ops``
            subsample before stages 2 and 3, the same thing for every released config).
        distillation: a second BatchNorm1d + Linear head (``head_dist``) on the same pooled
            features, as the official ``distillation=True`` (DeiT-style): the output is the mean
            of both heads, or, after ``set_distilled_training(True)`` and in train mode, the
            pair ``(head, head_dist)`` for a distillation loss (timm's LeViT convention).
        norm_layer: the attention's pre-norm (official ``GroupNorm`` with one group).
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth on the
            blocks' residual branches, linear over all blocks (neither is used by the official
            recipes: 0).
        device, dtype: where and in which float precision the parameters are made
            (``device="meta"`` allocates nothing).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: Sequence[int] = (128, 256, 384),
            partial_dim: Sequence[int] = (32, 64, 96),
            qk_dim: Sequence[int] = (16, 16, 16),
            depth: Sequence[int] = (1, 2, 3),
            types: Sequence[str] = ("s", "s", "s"),
            downsample: Optional[Sequence[bool]] = None,
            distillation: bool = False,
            norm_layer: Callable = GroupNorm1,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        embed_dim, partial_dim, qk_dim = tuple(embed_dim), tuple(partial_dim), tuple(qk_dim)
        depth, types = tuple(depth), tuple(types)
        num_stages = len(embed_dim)
        if downsample is None:
            downsample = tuple(i > 0 and embed_dim[i - 1] != embed_dim[i]
                               for i in range(num_stages))
        downsample = tuple(bool(d) for d in downsample)
        per_stage = dict(partial_dim=partial_dim, qk_dim=qk_dim, depth=depth, types=types,
                         downsample=downsample)
        bad = {k: v for k, v in per_stage.items() if len(v) != num_stages}
        if num_stages < 1 or bad:
            raise ValueError(f"{bad} must have one entry per stage (embed_dim {embed_dim})")
        if embed_dim[0] < 8:
            raise ValueError(f"embed_dim[0] must be at least 8 (the stem's first conv has "
                             f"embed_dim[0] // 8 channels), got {embed_dim[0]}")
        if downsample[0]:
            raise ValueError("the first stage has no transition in front of it (the 16x16 stem "
                             "is its downsampling): downsample[0] must be False")
        for i in range(1, num_stages):
            if not downsample[i] and embed_dim[i] != embed_dim[i - 1]:
                raise ValueError(f"stage {i} changes the width {embed_dim[i - 1]} -> "
                                 f"{embed_dim[i]} without a transition (downsample[i] must be "
                                 "True)")

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.min_input_size = 1
        self.output_fmt = "NCHW"
        self.grad_checkpointing = False
        self.distilled_training = False
        c0 = embed_dim[0]
        dpr = calculate_drop_path_rates(drop_path_rate, list(depth), stagewise=True)
        with factory_context(device, dtype):
            self.patch_embed = nn.Sequential(
                ConvNorm(in_chans, c0 // 8, 3, 2, 1), nn.ReLU(inplace=True),
                ConvNorm(c0 // 8, c0 // 4, 3, 2, 1), nn.ReLU(inplace=True),
                ConvNorm(c0 // 4, c0 // 2, 3, 2, 1), nn.ReLU(inplace=True),
                ConvNorm(c0 // 2, c0, 3, 2, 1))

            stages, self.feature_info = [], []
            reduction = 16
            for i in range(num_stages):
                if downsample[i]:
                    reduction *= 2
                blocks = [BasicBlock(embed_dim[i], qk_dim[i], partial_dim[i], types[i],
                                     dpr[i][j], norm_layer) for j in range(depth[i])]
                down = _transition(embed_dim[i - 1], embed_dim[i]) if downsample[i] else None
                stages.append(Stage(down, blocks))
                self.feature_info.append(dict(num_chs=embed_dim[i], reduction=reduction,
                                              module=f"stages.{i}"))
            self.stages = nn.Sequential(*stages)
            self.num_features = self.head_hidden_size = embed_dim[-1]
            self.norm = nn.Identity()  # no final norm (the mixin's hook)
            self.feature_norms = None
            self.head = NormLinearHead(self.num_features, num_classes, global_pool, drop_rate)
            self.head_dist = NormLinear(self.num_features, num_classes) if distillation else None

    # The mixin calls the stem `stem`; the official and timm key layout call it `patch_embed`.
    stem_key = "patch_embed"

    @property
    def stem(self):
        return self.patch_embed

    @torch.jit.ignore
    def get_classifier(self):
        if self.head_dist is not None:
            return self.head.l, self.head_dist.l
        return self.head.l

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        like = next(self.patch_embed.parameters())  # a new head joins the model's device, dtype
        with factory_context(like.device, like.dtype):
            self.head.reset(num_classes, pool_type=global_pool)
            if self.head_dist is not None:
                self.head_dist.reset(num_classes)

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True):
        self.distilled_training = enable

    def forward_head(self, x, pre_logits: bool = False):
        if self.head_dist is None:
            return self.head(x, pre_logits=pre_logits)
        x = self.head(x, pre_logits=True)
        if pre_logits:
            return x
        x, x_dist = self.head.classify(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2

    @torch.no_grad()
    def fuse(self):
        """Fold every Conv-BN into one ``Conv2d``, each residual depthwise Conv-BN's identity into
        its centre tap, and the heads' BatchNorm1d into their Linear layers (the official
        ``replace_batchnorm`` / timm ``SHViT.fuse``). In place; returns ``self``. Inference only:
        uses the BatchNorm running statistics, so call it on a model in ``eval()`` mode and do
        not train the result. Outputs are unchanged up to float rounding."""
        def walk(module):
            for name, child in list(module.named_children()):
                if hasattr(child, "fuse"):
                    fused = child.fuse()
                    if fused is not child:
                        setattr(module, name, fused)
                    child = fused
                walk(child)
        walk(self)
        return self


# ---------------------------------------------------------------------------------------------
# Checkpoints

# Keys of dense-prediction files (mmdet) that are not the backbone's.
_DENSE_HEAD_PREFIXES = ("neck.", "rpn_head.", "roi_head.", "bbox_head.", "mask_head.",
                        "decode_head.", "auxiliary_head.")


def _official_stage_keys(state_dict):
    """``{official stage number: has a transition}`` for an official-layout state_dict.

    A stage's transition is its ``blocks{n}.0`` (DW conv + FFN pair), ``.1`` (PatchMerging, keys
    ``conv1`` / ``se`` / ``conv3``) and ``.2``; a transition-less stage starts with BasicBlocks."""
    stages = {}
    for key in state_dict:
        m = re.match(r"^blocks(\d+)\.(\d+)\.(.*)$", key)
        if m:
            n = int(m[1])
            stages.setdefault(n, False)
            if m[2] == "1" and m[3].startswith(("conv1.", "se.", "conv3.")):
                stages[n] = True
    return stages


def _map_official_key(key, transitions):
    m = re.match(r"^blocks(\d+)\.(\d+)\.(.*)$", key)
    if not m:
        return key
    n, j, rest = int(m[1]), int(m[2]), m[3]
    stage = f"stages.{n - 1}"
    if not transitions[n]:
        return f"{stage}.blocks.{j}.{rest}"
    if j == 1:
        return f"{stage}.downsample.2.{rest}"
    if j in (0, 2):  # Sequential(Residual DW conv, Residual FFN) before / after PatchMerging
        sub, rest = rest.split(".", 1)
        return f"{stage}.downsample.{int(sub) + (0 if j == 0 else 3)}.{rest}"
    return f"{stage}.blocks.{j - 3}.{rest}"


def _is_fused(keys):
    return "patch_embed.0.weight" in keys


def checkpoint_filter_fn(state_dict, model=None):
    """Any SHViT checkpoint -> zoo keys (which are timm's keys).

    Layouts, told apart by their keys:

    * official (``blocks1.*``, ``blocks2.*``, ... from the GitHub releases, ``model/shvit.py``;
      also the detection backbone ``downstream/shvit.py``): ``blocks{n}`` becomes ``stages.{n-1}``;
      a stage whose ``blocks{n}.1`` is a PatchMerging has a transition, and its ``.0.{0,1}``,
      ``.1``, ``.2.{0,1}`` become ``downsample.0..4`` and ``.{j>=3}`` ``blocks.{j-3}`` (no
      depth limit). ``head_dist.*`` (``distillation=True``, in no release) keeps its keys; it is
      dropped with a warning when ``model`` has no distillation head.
    * timm (``timm/shvit_sN.in1k``) and zoo (``stages.*``): identical; passed through.

    Any wrapper (``model`` / ``state_dict`` / EMA keys, ``module.`` / ``_orig_mod.`` prefixes;
    EMA weights win when a file holds both, the zoo-wide rule of ``unwrap_checkpoint``), mmdet
    files (``backbone.`` keys; neck and heads dropped). With ``model`` given: 2-D 1x1-conv weights
    are unsqueezed where the model has 4-D ones (the official loader does this), ``head.*`` keys
    are dropped when the model has no classifier, and a fused checkpoint (``fuse()`` /
    ``replace_batchnorm``) meeting an unfused model, or the reverse, is refused with a clear error.
    Fused official / timm files, whose head is a bare Linear (``head.weight``), load into a fused
    zoo model (``head.l.weight``).
    """
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items()
                      if k.startswith("backbone.")}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_DENSE_HEAD_PREFIXES)}
    if model is not None and getattr(model, "head_dist", None) is None \
            and any(k.startswith("head_dist.") for k in state_dict):
        warnings.warn("dropping the checkpoint's distillation head (head_dist.*): the official "
                      "model averages it with `head` in eval and this model has one head, so "
                      "its logits will differ from the official distilled model's; build the "
                      "model with distillation=True to keep it")
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head_dist.")}

    transitions = _official_stage_keys(state_dict)
    if transitions:
        out = {_map_official_key(k, transitions): v for k, v in state_dict.items()}
    else:
        out = dict(state_dict)

    if _is_fused(out):  # official / timm fused heads are bare Linears
        out = {re.sub(r"^(head|head_dist)\.(weight|bias)$", r"\1.l.\2", k): v
               for k, v in out.items()}
    if model is not None:
        own = model.state_dict()
        if _is_fused(out) != _is_fused(own):
            raise ValueError(
                "the checkpoint is a fused (Conv-BN folded) state_dict and the model is not, or "
                "the reverse: load unfused weights and call model.fuse() afterwards")
        if not any(k.startswith("head.") for k in own):
            out = {k: v for k, v in out.items() if not k.startswith(("head.", "head_dist."))}
        for k, v in out.items():
            target = own.get(k)
            if target is not None and v.dim() == 2 and target.dim() == 4 \
                    and target.shape[2:] == (1, 1):
                out[k] = v[:, :, None, None]
    return out


_OFFICIAL_CLASSES = ("SHViT", "Partial_ViT_Exp")
_ARCH_KWARGS = {"in_chans", "embed_dim", "partial_dim", "qk_dim", "depth", "types", "down_ops",
                "distillation"}
_OFFICIAL_KWARGS = {
    "SHViT": _ARCH_KWARGS | {"num_classes"},
    "Partial_ViT_Exp": _ARCH_KWARGS | {"img_size", "patch_size", "frozen_stages", "pretrained"},
}


def _official_class_name(official_class):
    """``'SHViT'``, ``'model/shvit.py:SHViT'``, ``'SHViT (model/shvit.py)'`` -> ``'SHViT'``."""
    text = (official_class or "SHViT").strip()
    if ":" in text:
        text = text.split(":")[-1]
    return text.split("(")[0].strip()


def create_from_official(kwargs, official_class=None):
    """The zoo model with the architecture the official constructor builds from ``kwargs``.

    ``official_class``: ``model/shvit.py:SHViT`` (default; the classifier) or
    ``downstream/shvit.py:Partial_ViT_Exp`` (the mmdet backbone: no head; its three stage outputs
    are ``forward_intermediates`` / ``features_only``).

    As the official constructors: ``down_ops[i] = ['subsample', 2]`` puts a transition in front
    of stage ``i + 1``; the per-stage lists are zipped, so stages past the shortest list get no
    BasicBlocks (a transition may still lead into them); ``distillation=True`` adds the second
    head (``SHViT`` only: ``Partial_ViT_Exp`` accepts and ignores it, as it does ``img_size`` and
    ``patch_size``). ``Partial_ViT_Exp``'s ``frozen_stages`` only matters while training: the
    dense adapter's ``frozen_stages`` / ``norm_eval`` do that (``backbones/dense``).
    """
    cls_name = _official_class_name(official_class)
    if cls_name not in _OFFICIAL_CLASSES:
        raise ValueError(f"unknown official SHViT class {official_class!r}; expected "
                         "model/shvit.py:SHViT or downstream/shvit.py:Partial_ViT_Exp")
    kw = dict(kwargs)
    unknown = set(kw) - _OFFICIAL_KWARGS[cls_name]
    if unknown:
        raise TypeError(f"{cls_name} takes no argument(s) {sorted(unknown)}")
    if kw.get("pretrained") not in (None, False):
        raise ValueError("create_from_official builds the architecture only; load weights with "
                         "checkpoint_filter_fn")
    embed_dim = tuple(kw.get("embed_dim", (128, 256, 384)))
    if len(embed_dim) != 3:
        raise ValueError(f"the official SHViT has exactly three stages (blocks1..3), got "
                         f"embed_dim {embed_dim}")
    per_stage = dict(partial_dim=tuple(kw.get("partial_dim", (32, 64, 96))),
                     qk_dim=tuple(kw.get("qk_dim", (16, 16, 16))),
                     depth=tuple(kw.get("depth", (1, 2, 3))),
                     types=tuple(kw.get("types", ("s", "s", "s"))))
    down_ops = list(kw.get("down_ops", [["subsample", 2], ["subsample", 2], [""]]))
    built = min(3, len(down_ops), *(len(v) for v in per_stage.values()))
    # stages the official zip never reaches have no blocks: placeholders keep one entry per stage
    per_stage = {k: v[:built] + ((0,) if k == "depth" else ("i",) if k == "types" else (1,))
                 * (3 - built) for k, v in per_stage.items()}
    downsample = [False] * 3
    for i, op in enumerate(down_ops[:built]):
        name = op[0] if op else ""
        if name == "subsample":
            if i + 1 >= 3:
                raise ValueError(f"down_ops[{i}] subsamples after the last stage (the official "
                                 "code fails there too)")
            downsample[i + 1] = True
        elif name:
            raise ValueError(f"unknown down_ops entry {op!r} (only 'subsample' or '')")
    headless = cls_name == "Partial_ViT_Exp"
    return SHViT(
        in_chans=kw.get("in_chans", 3),
        num_classes=0 if headless else kw.get("num_classes", 1000),
        embed_dim=embed_dim, downsample=tuple(downsample),
        distillation=bool(kw.get("distillation")) and not headless, **per_stage)


# ---------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

def _cfg(url="", **kwargs):
    # Official evaluation (data/datasets.py): Resize(int(256 / 224 * res), bicubic) + CenterCrop
    # with ImageNet mean / std; timm's shvit cfgs say the same.
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (4, 4),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0.c", "classifier": "head.l",
        "license": "mit",
        "origin_url": "https://github.com/ysj9909/SHViT",
        "paper_ids": "arXiv:2401.16456",
        "paper_name": "SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design",
        "notes": ("Official GitHub release (official key layout, mapped by checkpoint_filter_fn). "
                  "The same weights in timm's layout: hf_hub_id timm/shvit_sN.in1k, loadable with "
                  "pretrained_cfg_overlay=dict(url='', hf_hub_id='timm/shvit_sN.in1k').",),
        **kwargs,
    }


_RELEASE = "https://github.com/ysj9909/SHViT/releases/download/v1.0/"

default_cfgs = generate_default_cfgs({
    "shvit_s1_224.in1k": _cfg(url=_RELEASE + "shvit_s1.pth"),
    "shvit_s2_224.in1k": _cfg(url=_RELEASE + "shvit_s2.pth"),
    "shvit_s3_224.in1k": _cfg(url=_RELEASE + "shvit_s3.pth"),
    "shvit_s4_256.in1k": _cfg(url=_RELEASE + "shvit_s4.pth", input_size=(3, 256, 256)),
})

# Official README (= paper) ImageNet-1k top-1, params (M) and FLOPs (G, multiply-adds; S4 at 256).
# timm's model of the same architecture (tools/benchmark.py --compare).
# The authors' constructor of each variant (file:function in OFFICIAL_REPO), for side-by-side
# timing and output checks against a local clone (tools/benchmark.py --official).
FAMILY = register_family(Family(
    name="shvit",
    model_cls=SHViT,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="ysj9909/SHViT",
    official_classes=("model/shvit.py:SHViT", "downstream/shvit.py:Partial_ViT_Exp"),
    torchscript=("the attention calls ops.window_attention_2d, whose keyword-only arguments and "
                 "backend dispatch TorchScript cannot compile; torch.export is the supported "
                 "path"),
    # exact parameter counts of the official implementation (1000-class heads)
    param_counts={
        "shvit_s1_224": 6_330_808,
        "shvit_s2_224": 11_483_072,
        "shvit_s3_224": 14_245_273,
        "shvit_s4_256": 16_588_484,
    },
    official_entrypoints={
        "shvit_s1_224": "model/build.py:shvit_s1",
        "shvit_s2_224": "model/build.py:shvit_s2",
        "shvit_s3_224": "model/build.py:shvit_s3",
        "shvit_s4_256": "model/build.py:shvit_s4",
    },
    paper_results={
        "shvit_s1_224": PaperResult(top1=72.8, params_m=6.3, gflops=0.241),
        "shvit_s2_224": PaperResult(top1=75.2, params_m=11.4, gflops=0.366),
        "shvit_s3_224": PaperResult(top1=77.4, params_m=14.2, gflops=0.601),
        "shvit_s4_256": PaperResult(top1=79.4, params_m=16.5, gflops=0.986),
    },
    timm_equivalents={
        "shvit_s1_224": "shvit_s1",
        "shvit_s2_224": "shvit_s2",
        "shvit_s3_224": "shvit_s3",
        "shvit_s4_256": "shvit_s4",
    },
    query_attention=shvit_query_attention,
))


def _create_shvit(variant, pretrained=False, **kwargs):
    return build_zoo_model(SHViT, variant, pretrained, num_stages=3,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_zoo_model
def shvit_s1_224(pretrained=False, **kwargs) -> SHViT:
    """SHViT-S1 (official ``shvit_s1``, timm ``shvit_s1``), 6.3M params."""
    model_args = dict(embed_dim=(128, 224, 320), depth=(2, 4, 5), partial_dim=(32, 48, 68),
                      types=("i", "s", "s"))
    return _create_shvit("shvit_s1_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def shvit_s2_224(pretrained=False, **kwargs) -> SHViT:
    """SHViT-S2 (official ``shvit_s2``, timm ``shvit_s2``), 11.5M params."""
    model_args = dict(embed_dim=(128, 308, 448), depth=(2, 4, 5), partial_dim=(32, 66, 96),
                      types=("i", "s", "s"))
    return _create_shvit("shvit_s2_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def shvit_s3_224(pretrained=False, **kwargs) -> SHViT:
    """SHViT-S3 (official ``shvit_s3``, timm ``shvit_s3``), 14.2M params."""
    model_args = dict(embed_dim=(192, 352, 448), depth=(3, 5, 5), partial_dim=(48, 75, 96),
                      types=("i", "s", "s"))
    return _create_shvit("shvit_s3_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def shvit_s4_256(pretrained=False, **kwargs) -> SHViT:
    """SHViT-S4 (official ``shvit_s4``, timm ``shvit_s4``) at 256x256, 16.6M params."""
    model_args = dict(embed_dim=(224, 336, 448), depth=(4, 7, 6), partial_dim=(48, 72, 96),
                      types=("i", "s", "s"))
    return _create_shvit("shvit_s4_256", pretrained, **dict(model_args, **kwargs))
