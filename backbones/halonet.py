"""HaloNet: blocked local self-attention with haloing.

Paper: "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", Vaswani,
Ramachandran, Srinivas, Parmar, Hechtman, Shlens, CVPR 2021, arXiv:2103.12731.
Official code and weights: **none** (the authors never released either). The only HaloNet weights
that exist are timm's (huggingface/pytorch-image-models, Apache-2.0), trained by Ross Wightman on
timm's own ResNet-style hybrids, not on the paper's configurations. For this zoo timm's weights and
timm's layer semantics are therefore the reference ("official"), and this module:

* registers the paper's **H0-H7** family (``halonet_h0_256`` ... ``halonet_h7_600``) as untrained
  configurations; ``halonet_h1_256`` is timm's ``halonet_h1`` exactly (same keys, same outputs);
* registers timm's **trained hybrids** under zoo names (``halonet26t_256``, ``sehalonet33ts_256``,
  ``halonet50ts_256``, ``eca_halonext26ts_256``, ``haloregnetz_b_224``), whose ``default_cfgs``
  point at timm's published files and whose ``checkpoint_filter_fn`` takes timm's layout.

The network plumbing is timm's generic ``ByobNet`` (stem, stages, bottleneck / self-attention
blocks, head), imported from timm, so the state-dict layout is timm's by construction. What is
ours is the halo attention layer (:class:`HaloAttention`, plugged in through the cfg's
``self_attn_layer``: a class, so nothing is registered in timm's attention factory) and the
attention block of the H family (:class:`HaloAttnBlock`, a cfg block ``type``, also nothing
registered), whose value / output width ``rv * base`` may differ from its query / key width
``base`` (timm's ``SelfAttnBlock`` has one width for q, k and v, so it can express the rv = 1
models H0-H4 but not H5-H7; timm registers only H1).

The attention itself runs through ``ops.halo_attention_2d`` (the fused kernel's HALO mode on CUDA,
its PyTorch reference elsewhere) with timm's semantics: zero-padded keys take part in the softmax,
relative-position tables shared by all heads, strided queries read pixels ``(2i, 2j)``, the kv
projection interleaves k and v per head, and the avg-pool fallback (stride 2 with an odd block or
``avg_down``).

Any input size works: timm asserts (with an empty message) that every attention input is a
multiple of the block size; here the projected q / kv maps are zero-padded at the bottom / right to
the next multiple and the output is cropped. Padded keys are zero keys and values, exactly what
timm's halo padding produces at the border, so at every size timm accepts nothing is padded and
the computation is timm's.
"""
import math
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, EcaModule, make_divisible, trunc_normal_
from timm.models import generate_default_cfgs
from timm.models.byobnet import ByoBlockCfg, ByoModelCfg, ByobNet, create_shortcut, interleave_blocks

import ops

from ._builder import build_zoo_model
from ._family import Family, PaperResult, register_family
from ._helpers import check_image_input, unwrap_checkpoint
from ._registry import register_zoo_model
from .layers import DeviceLike, notrace_function
from .query_attention import halonet_query_attention

__all__ = ["HaloNet", "HaloAttention", "HaloAttnBlock", "checkpoint_filter_fn",
           "create_from_official", "model_cfgs"]


class HaloRelPosEmbed(nn.Module):
    """The two relative-position tables of a halo layer, ``(2 * win - 1, dim_head_qk)`` each and
    shared by all heads (timm's ``PosEmbedRel``: keys ``height_rel`` / ``width_rel``)."""

    def __init__(self, win_size, dim_head, device=None, dtype=None):
        super().__init__()
        self.height_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head, device=device, dtype=dtype))
        self.width_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head, device=device, dtype=dtype))


@notrace_function
def _pad_to_blocks(q, kv, block_size: int, stride: int):
    """Zero keys / values beyond the bottom / right border up to whole blocks, as timm's halo
    padding makes them, and the matching query rows / columns (computed, then cropped)."""
    H, W = kv.shape[-2:]
    Hq, Wq = q.shape[-2:]
    Hp, Wp = -(-H // block_size) * block_size, -(-W // block_size) * block_size
    if (Hp, Wp) != (H, W):
        kv = F.pad(kv, (0, Wp - W, 0, Hp - H))
        q = F.pad(q, (0, Wp // stride - Wq, 0, Hp // stride - Hq))
    return q, kv


class HaloAttention(nn.Module):
    """Halo attention with timm's ``HaloAttn`` arguments, parameters and outputs.

    Args:
        dim: input channels.
        dim_out: output (value) channels, ``dim`` by default; ``dim_head_v = dim_out // num_heads``.
        feat_size: ignored (timm passes it to every self-attention layer).
        stride: 1 or 2. Stride 2 with an even block size takes strided queries (a stride-2 1x1
            ``q`` projection, query blocks of ``block_size // 2``); with an odd block size or
            ``avg_down`` it attends at full resolution and average-pools the output by 2.
        num_heads: heads.
        dim_head: query / key width per head; default ``make_divisible(dim_out * qk_ratio, 8) //
            num_heads`` (timm).
        block_size, halo_size: query block and halo (keys of a block: its ``block + 2 * halo``
            square window).
        qk_ratio: see ``dim_head``.
        qkv_bias: bias in the q and kv projections.
        avg_down: average-pool instead of strided queries.
        scale_pos_embed: scale the relative logits too.
        dim_qk: total query / key width (overrides ``dim_head`` and ``qk_ratio``); the H family's
            blocks set it to the block's attention width while ``dim_out`` is ``rv`` times wider.
    """

    def __init__(self, dim, dim_out=None, feat_size=None, stride=1, num_heads=8, dim_head=None,
                 block_size=8, halo_size=3, qk_ratio=1.0, qkv_bias=False, avg_down=False,
                 scale_pos_embed=False, dim_qk=None, device=None, dtype=None):
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"halo attention: dim_out {dim_out} is not a multiple of num_heads {num_heads}")
        if stride not in (1, 2):
            raise ValueError(f"halo attention: stride must be 1 or 2, got {stride}")
        if block_size < 1 or halo_size < 0:
            raise ValueError(f"halo attention: need block_size >= 1 and halo_size >= 0, got "
                             f"{block_size}, {halo_size}")
        if dim_qk is not None:
            if dim_qk % num_heads:
                raise ValueError(f"halo attention: dim_qk {dim_qk} is not a multiple of num_heads {num_heads}")
            self.dim_head_qk = dim_qk // num_heads
        else:
            self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.num_heads = num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        self.use_avg_pool = stride > 1 and (avg_down or block_size % stride != 0)
        self.block_stride = stride if stride > 1 and not self.use_avg_pool else 1
        dd = dict(device=device, dtype=dtype)
        self.q = nn.Conv2d(dim, self.dim_out_qk, 1, stride=self.block_stride, bias=qkv_bias, **dd)
        # Channels interleaved per head: [k_h0, v_h0, k_h1, v_h1, ...] (timm's layout).
        self.kv = nn.Conv2d(dim, self.dim_out_qk + self.dim_out_v, 1, bias=qkv_bias, **dd)
        self.pos_embed = HaloRelPosEmbed(self.win_size, self.dim_head_qk, **dd)
        self.reset_parameters()

    def reset_parameters(self):
        std = self.q.weight.shape[1] ** -0.5  # fan-in
        trunc_normal_(self.q.weight, std=std)
        trunc_normal_(self.kv.weight, std=std)
        trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def forward(self, x):
        heads, d_qk, d_v = self.num_heads, self.dim_head_qk, self.dim_head_v
        q = self.q(x)
        kv = self.kv(x)
        Hq, Wq = q.shape[-2], q.shape[-1]  # ceil(H / stride): the 1x1 conv reads pixels (2i, 2j)
        q, kv = _pad_to_blocks(q, kv, self.block_size, self.block_stride)
        # Sizes only through unflatten / flatten: no shape is read, so an empty batch and FX pass.
        q = q.unflatten(1, (heads, d_qk)).permute(0, 1, 3, 4, 2)
        kv = kv.unflatten(1, (heads, d_qk + d_v)).permute(0, 1, 3, 4, 2)
        k, v = kv[..., :d_qk], kv[..., d_qk:]
        out = ops.halo_attention_2d(
            q, k, v, self.block_size, self.halo_size, stride=self.block_stride,
            rel_pos=(self.pos_embed.height_rel, self.pos_embed.width_rel), scale=self.scale,
            scale_pos_embed=self.scale_pos_embed)
        # The crop is a no-op view on the block lattice.
        out = out.permute(0, 1, 4, 2, 3).flatten(1, 2)[:, :, :Hq, :Wq]
        if self.use_avg_pool:
            # timm's AvgPool2d(2, 2); ceil_mode only matters for odd sizes timm cannot run, where
            # it gives ceil(H / 2) like the stride-2 shortcut.
            out = F.avg_pool2d(out, 2, 2, ceil_mode=True)
        return out


class HaloAttnBlock(nn.Module):
    """The paper's attention bottleneck: 1x1 conv (in -> ``attn_chs``, BN + act), halo attention
    (q / k width ``attn_chs``, value / output width ``value_chs``), BN + act, 1x1 conv
    (``value_chs`` -> out, BN), shortcut, act.

    Keys as timm's ``SelfAttnBlock`` (``conv1_1x1``, ``self_attn``, ``post_attn``, ``conv3_1x1``,
    ``shortcut``); with ``value_chs == attn_chs`` it is that block (HaloNet-H1). Takes the
    keyword arguments ``create_byob_stages`` passes to every block.
    """

    def __init__(self, in_chs, out_chs, kernel_size=3, stride=1, dilation=(1, 1), bottle_ratio=1.,
                 group_size=None, downsample="avg", linear_out=False, bottle_in=False,
                 post_attn_na=True, feat_size=None, layers=None, drop_block=None,
                 drop_path_rate=0., attn_chs=None, value_chs=None, device=None, dtype=None):
        super().__init__()
        if layers is None or layers.self_attn is None:
            raise ValueError("HaloAttnBlock needs the cfg's self_attn_layer")
        dd = dict(device=device, dtype=dtype)
        mid_chs = attn_chs or make_divisible((in_chs if bottle_in else out_chs) * bottle_ratio)
        value_chs = value_chs or mid_chs
        self.shortcut = create_shortcut(downsample, in_chs, out_chs, stride=stride, dilation=dilation,
                                        apply_act=False, layers=layers, **dd)
        self.conv1_1x1 = layers.conv_norm_act(in_chs, mid_chs, 1, **dd)
        self.conv2_kxk = nn.Identity()
        self.self_attn = layers.self_attn(mid_chs, dim_out=value_chs, dim_qk=mid_chs, stride=stride, **dd)
        self.post_attn = layers.norm_act(value_chs, **dd) if post_attn_na else nn.Identity()
        self.conv3_1x1 = layers.conv_norm_act(value_chs, out_chs, 1, apply_act=False, **dd)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.act = nn.Identity() if linear_out else layers.act(inplace=True)

    def init_weights(self, zero_init_last: bool = False):
        if zero_init_last and self.shortcut is not None and getattr(self.conv3_1x1.bn, "weight", None) is not None:
            nn.init.zeros_(self.conv3_1x1.bn.weight)
        if hasattr(self.self_attn, "reset_parameters"):
            self.self_attn.reset_parameters()

    def forward(self, x):
        shortcut = x
        x = self.conv1_1x1(x)
        x = self.self_attn(x)
        x = self.post_attn(x)
        x = self.conv3_1x1(x)
        x = self.drop_path(x)
        if self.shortcut is not None:
            x = x + self.shortcut(shortcut)
        return self.act(x)


class EcaModuleAnyBatch(EcaModule):
    """timm's ``EcaModule`` (same parameters and outputs) whose reshapes name every size: timm's
    ``view(B, 1, -1)`` cannot infer ``-1`` for an empty batch."""

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).unsqueeze(1))  # (B, 1, C) for the 1-d conv over channels
        if self.conv2 is not None:
            y = self.conv2(self.act(y))
        return x * self.gate(y).transpose(1, 2).unsqueeze(-1)


class HaloNet(ByobNet):
    """timm's ``ByobNet`` with the zoo's halo attention: timm's model API, key layout and
    ``feature_info`` (five levels: the stem tap at stride 2, stages 1-3, the last stage / final
    conv), plus clear input errors and a ``no_weight_decay`` for timm's optimizer factory.

    Args: as ``ByobNet`` (``cfg``: a ``ByoModelCfg`` whose ``self_attn_layer`` is
    :class:`HaloAttention`; see ``model_cfgs``); ``device`` / ``dtype``: where and in which
    floating-point type parameters and buffers are created (``device="meta"`` allocates nothing).
    """

    def __init__(
            self,
            cfg: ByoModelCfg,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: Optional[str] = None,
            output_stride: int = 32,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            drop_rate: float = 0.,
            drop_block_rate: float = 0.,
            drop_block_size: int = 3,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
            **kwargs,
    ):
        super().__init__(
            cfg, num_classes=num_classes, in_chans=in_chans, global_pool=global_pool,
            output_stride=output_stride, img_size=img_size, drop_rate=drop_rate,
            drop_block_rate=drop_block_rate, drop_block_size=drop_block_size,
            drop_path_rate=drop_path_rate, zero_init_last=zero_init_last, device=device,
            dtype=dtype, **kwargs)
        foreign = sorted({type(m.self_attn).__name__ for m in self.modules()
                          if hasattr(m, "self_attn") and not isinstance(m.self_attn, HaloAttention)})
        if foreign:
            raise ValueError(f"HaloNet runs the zoo's HaloAttention only, the cfg built {foreign}")

    def _check_input(self, x):
        return check_image_input(x, self.in_chans, type(self).__name__)

    @torch.jit.ignore
    def no_weight_decay(self):
        # timm trained these models with weight decay on everything but 1-D parameters (which
        # timm's optimizer factory excludes by itself), the relative-position tables included.
        return set()

    def forward_features(self, x):
        x = self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False,
                              exclude_final_conv=False):
        if output_fmt != "NCHW":
            raise ValueError(f"HaloNet features are NCHW only, got output_fmt={output_fmt!r}")
        x = self._check_input(x)
        return super().forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only, exclude_final_conv=exclude_final_conv)


# ------------------------------------------------------------------------------------------------
# Architectures. The timm hybrids repeat timm 1.0.31's byoanet cfgs value for value (the tests
# build both and compare outputs); the H family follows the paper's table (spec: halonet.md).

def _paper_h(block_size, halo_size, rv, rb, l3, df):
    """HaloNet-H*: 7x7/2 stem (64) + 3x3/2 max-pool, four stages of attention bottlenecks with
    base widths (64, 128, 256, 512), depths (3, 3, l3, 3), q / k width = base (8 heads),
    value width = rv * base, output = rb * base, strided attention opening stages 2-4, and an
    optional final 1x1 conv (BN + ReLU) to ``df`` channels."""
    blocks = []
    for base, depth, stride in zip((64, 128, 256, 512), (3, 3, l3, 3), (1, 2, 2, 2)):
        value_chs = int(round(rv * base))
        out_chs = int(round(rb * base))
        block = partial(HaloAttnBlock, attn_chs=base, value_chs=value_chs)
        blocks.append(ByoBlockCfg(type=block, d=depth, c=out_chs, s=stride, gs=0, br=1.0))
    return ByoModelCfg(
        blocks=tuple(blocks), stem_chs=64, stem_type="7x7", stem_pool="maxpool",
        num_features=df or 0, self_attn_layer=HaloAttention,
        self_attn_kwargs=dict(block_size=block_size, halo_size=halo_size, num_heads=8))


model_cfgs = dict(
    halonet_h0=_paper_h(8, 3, 1.0, 0.5, 7, None),
    halonet_h1=_paper_h(8, 3, 1.0, 1.0, 10, None),
    halonet_h2=_paper_h(8, 3, 1.0, 1.25, 11, None),
    halonet_h3=_paper_h(10, 3, 1.0, 1.5, 12, 1024),
    halonet_h4=_paper_h(12, 2, 1.0, 3.0, 12, 1280),
    halonet_h5=_paper_h(14, 2, 2.5, 2.0, 23, 1536),
    halonet_h6=_paper_h(8, 4, 3.0, 2.75, 24, 1536),
    halonet_h7=_paper_h(10, 3, 4.0, 3.5, 26, 2048),
    halonet26t=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=2, c=256, s=1, gs=0, br=0.25),
            ByoBlockCfg(type="bottle", d=2, c=512, s=2, gs=0, br=0.25),
            interleave_blocks(types=("bottle", "self_attn"), d=2, c=1024, s=2, gs=0, br=0.25),
            ByoBlockCfg(type="self_attn", d=2, c=2048, s=2, gs=0, br=0.25),
        ),
        stem_chs=64, stem_type="tiered", stem_pool="maxpool",
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=2)),
    sehalonet33ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=2, c=256, s=1, gs=0, br=0.25),
            interleave_blocks(types=("bottle", "self_attn"), every=[2], d=3, c=512, s=2, gs=0, br=0.25),
            interleave_blocks(types=("bottle", "self_attn"), every=[2], d=3, c=1024, s=2, gs=0, br=0.25),
            ByoBlockCfg("self_attn", d=2, c=1536, s=2, gs=0, br=0.333),
        ),
        stem_chs=64, stem_type="tiered", stem_pool="", act_layer="silu", num_features=1280,
        attn_layer="se",
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=3)),
    halonet50ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=3, c=256, s=1, gs=0, br=0.25),
            interleave_blocks(
                types=("bottle", "self_attn"), every=4, d=4, c=512, s=2, gs=0, br=0.25,
                self_attn_layer=HaloAttention,
                self_attn_kwargs=dict(block_size=8, halo_size=3, num_heads=4)),
            interleave_blocks(types=("bottle", "self_attn"), d=6, c=1024, s=2, gs=0, br=0.25),
            interleave_blocks(types=("bottle", "self_attn"), d=3, c=2048, s=2, gs=0, br=0.25),
        ),
        stem_chs=64, stem_type="tiered", stem_pool="maxpool", act_layer="silu",
        self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=8, halo_size=3)),
    eca_halonext26ts=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=2, c=256, s=1, gs=16, br=0.25),
            ByoBlockCfg(type="bottle", d=2, c=512, s=2, gs=16, br=0.25),
            interleave_blocks(types=("bottle", "self_attn"), d=2, c=1024, s=2, gs=16, br=0.25),
            ByoBlockCfg(type="self_attn", d=2, c=2048, s=2, gs=16, br=0.25),
        ),
        stem_chs=64, stem_type="tiered", stem_pool="maxpool", act_layer="silu",
        attn_layer=EcaModuleAnyBatch,
        self_attn_layer=HaloAttention,
        self_attn_kwargs=dict(block_size=8, halo_size=2, dim_head=16)),
    haloregnetz_b=ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=2, c=48, s=2, gs=16, br=3),
            ByoBlockCfg(type="bottle", d=6, c=96, s=2, gs=16, br=3),
            interleave_blocks(types=("bottle", "self_attn"), every=3, d=12, c=192, s=2, gs=16, br=3),
            ByoBlockCfg("self_attn", d=2, c=288, s=2, gs=16, br=3),
        ),
        stem_chs=32, stem_pool="", downsample="", num_features=1536, act_layer="silu",
        attn_layer="se", attn_kwargs=dict(rd_ratio=0.25),
        block_kwargs=dict(bottle_in=True, linear_out=True),
        self_attn_layer=HaloAttention,
        self_attn_kwargs=dict(block_size=7, halo_size=2, qk_ratio=0.33)),
)

# zoo model -> (model_cfgs key, timm's model of the same architecture or None)
_ARCHS = {
    "halonet_h0_256": ("halonet_h0", None),
    "halonet_h1_256": ("halonet_h1", "halonet_h1"),
    "halonet_h2_256": ("halonet_h2", None),
    "halonet_h3_320": ("halonet_h3", None),
    "halonet_h4_384": ("halonet_h4", None),
    "halonet_h5_448": ("halonet_h5", None),
    "halonet_h6_512": ("halonet_h6", None),
    "halonet_h7_600": ("halonet_h7", None),
    "halonet26t_256": ("halonet26t", "halonet26t"),
    "sehalonet33ts_256": ("sehalonet33ts", "sehalonet33ts"),
    "halonet50ts_256": ("halonet50ts", "halonet50ts"),
    "eca_halonext26ts_256": ("eca_halonext26ts", "eca_halonext26ts"),
    "haloregnetz_b_224": ("haloregnetz_b", "haloregnetz_b"),
}

# Zoo model -> timm's model of the same architecture (state dicts interchange unchanged):
# tools/benchmark.py --compare times both, tests/test_halonet.py compares their outputs.
_TIMM_TWINS = {name: twin for name, (_, twin) in _ARCHS.items() if twin}


# ------------------------------------------------------------------------------------------------
# Checkpoints

def checkpoint_filter_fn(state_dict, model=None):
    """timm's HaloNet checkpoints (the GitHub release ``.pth`` files and the hub's
    ``model.safetensors``, plain state dicts in timm's layout, which is ours) -> zoo keys.

    Wrappers are stripped (``state_dict_ema`` > ``model_ema`` > ``state_dict`` > ``model``; DDP
    ``module.`` and ``torch.compile`` ``_orig_mod.`` prefixes) and keys pass unchanged."""
    return unwrap_checkpoint(state_dict)


def _official_name(official_class):
    name = (official_class or "").split(":")[-1].split(".")[-1]
    return name


def create_from_official(kwargs, official_class=None):
    """The zoo model of a timm HaloNet, from timm-style arguments (HaloNet has no official code;
    timm is the reference implementation).

    ``official_class`` names the timm constructor: a timm model name (``"halonet26t"``,
    ``"halonet_h1"``, also as ``"timm/models/byoanet.py:halonet26t"``) or a zoo name
    (``"halonet26t_256"``), with ``kwargs`` the ``timm.create_model`` keyword arguments
    (``num_classes``, ``in_chans``, ``drop_path_rate``, cfg overrides ...). With
    ``official_class`` None or ``"ByobNet"``, ``kwargs`` holds ``model_name`` (as above) or
    ``cfg``: a timm ``ByoModelCfg`` (or its dict) whose halo layers are timm's ``'halo'`` (or
    ``HaloAttn``), rebuilt with the zoo's :class:`HaloAttention`. Weights are not loaded: pass the
    timm model's ``state_dict()`` through :func:`checkpoint_filter_fn`.
    """
    kw = dict(kwargs)
    name = _official_name(official_class)
    if name in ("", "ByobNet"):
        if "cfg" in kw:
            cfg = _zoo_cfg(kw.pop("cfg"))
            kw.pop("model_name", None)
            return HaloNet(cfg, **kw)
        name = kw.pop("model_name", None)
        if name is None:
            raise ValueError("create_from_official needs a timm model name (official_class= or "
                             "kwargs['model_name']) or kwargs['cfg'] (a timm ByoModelCfg)")
    by_timm = {twin: zoo for zoo, (_, twin) in _ARCHS.items() if twin}
    by_cfg = {cfg_name: zoo for zoo, (cfg_name, _) in _ARCHS.items()}
    zoo = name if name in _ARCHS else by_timm.get(name) or by_cfg.get(name)
    if zoo is None:
        raise ValueError(f"unknown HaloNet {name!r}: expected one of timm's "
                         f"{sorted(by_timm)}, a paper model {sorted(by_cfg)} or a zoo name")
    kw.pop("pretrained", None)
    import timm
    return timm.create_model(zoo, pretrained=False, **kw)


def _zoo_cfg(cfg):
    """A timm ``ByoModelCfg`` with every halo layer swapped for the zoo's HaloAttention."""
    from dataclasses import replace
    from timm.layers.halo_attn import HaloAttn
    if isinstance(cfg, dict):
        cfg = ByoModelCfg(**cfg)

    def swap(layer):
        if isinstance(layer, str) and layer.lower() == "halo" or layer is HaloAttn:
            return HaloAttention
        if layer in (None, "") or layer is HaloAttention:
            return layer
        raise ValueError(f"only halo self-attention is supported, the cfg has {layer!r}")

    def swap_channel_attn(layer):
        # timm's ECA fails on an empty batch; the zoo's has the same parameters and outputs
        return EcaModuleAnyBatch if isinstance(layer, str) and layer.lower() == "eca" else layer

    def swap_block(b):
        if isinstance(b, (tuple, list)):
            return tuple(swap_block(x) for x in b)
        return replace(b, self_attn_layer=swap(b.self_attn_layer),
                       attn_layer=swap_channel_attn(b.attn_layer))

    return replace(cfg, self_attn_layer=swap(cfg.self_attn_layer),
                   attn_layer=swap_channel_attn(cfg.attn_layer),
                   blocks=tuple(swap_block(b) for b in cfg.blocks))


# ------------------------------------------------------------------------------------------------
# Pretrained cfgs, results, entrypoints

def _cfg(url="", **kwargs):
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 256, 256), "pool_size": (8, 8),
        "crop_pct": 0.95, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "head.fc",
        "license": "apache-2.0",
        "origin_url": "https://github.com/huggingface/pytorch-image-models",
        "paper_ids": "arXiv:2103.12731",
        "paper_name": "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
        **kwargs,
    }


def _untrained(res):
    return _cfg(input_size=(3, res, res), pool_size=(math.ceil(res / 32),) * 2,
                notes=("HaloNet paper configuration; no weights exist (the authors released none "
                       "and timm trained none).",))


_TIMM_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-attn-weights/"
_TIMM_WEIGHTS_NOTE = ("timm-trained weights (Ross Wightman), not a paper configuration: the only "
                      "HaloNet weights that exist.",)

default_cfgs = generate_default_cfgs({
    "halonet_h0_256.untrained": _untrained(256),
    "halonet_h1_256.untrained": _untrained(256),
    "halonet_h2_256.untrained": _untrained(256),
    "halonet_h3_320.untrained": _untrained(320),
    "halonet_h4_384.untrained": _untrained(384),
    "halonet_h5_448.untrained": _untrained(448),
    "halonet_h6_512.untrained": _untrained(512),
    "halonet_h7_600.untrained": _untrained(600),
    "halonet26t_256.a1h_in1k": _cfg(
        url=_TIMM_RELEASE + "halonet26t_a1h_256-3083328c.pth",
        hf_hub_id="timm/halonet26t.a1h_in1k", notes=_TIMM_WEIGHTS_NOTE),
    "sehalonet33ts_256.ra2_in1k": _cfg(
        url=_TIMM_RELEASE + "sehalonet33ts_256-87e053f9.pth",
        hf_hub_id="timm/sehalonet33ts.ra2_in1k", crop_pct=0.94, notes=_TIMM_WEIGHTS_NOTE),
    "halonet50ts_256.a1h_in1k": _cfg(
        url=_TIMM_RELEASE + "halonet50ts_a1h2_256-f3a3daee.pth",
        hf_hub_id="timm/halonet50ts.a1h_in1k", crop_pct=0.94, notes=_TIMM_WEIGHTS_NOTE),
    "eca_halonext26ts_256.c1_in1k": _cfg(
        url=_TIMM_RELEASE + "eca_halonext26ts_c_256-06906299.pth",
        hf_hub_id="timm/eca_halonext26ts.c1_in1k", crop_pct=0.94, notes=_TIMM_WEIGHTS_NOTE),
    "haloregnetz_b_224.ra3_in1k": _cfg(
        url=_TIMM_RELEASE + "haloregnetz_c_raa_256-c8ad7616.pth",
        hf_hub_id="timm/haloregnetz_b.ra3_in1k", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        first_conv="stem.conv", input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.94,
        notes=_TIMM_WEIGHTS_NOTE),
})

FAMILY = register_family(Family(
    name="halonet",
    model_cls=HaloNet,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    # No official code exists (tools/benchmark.py --official has nothing to run): timm's models
    # of the same architectures are the reference.
    official_repo=None,
    official_classes=(),
    timm_equivalents=_TIMM_TWINS,
    torchscript=("ops.halo_attention_2d takes keyword-only arguments with defaults, which "
                 "TorchScript cannot compile (torch.export works)"),
    export=("no dynamic batch: the reference halo attention sizes its slices with q.shape[:4]."
            "numel(), which fixes the batch when traced (zoo-export --static-batch N exports one)"),
    # exact parameter counts (1000-class heads): timm's models, and the paper family rebuilt from
    # its table (spec halonet.md)
    param_counts={
        "eca_halonext26ts_256": 10_756_885,
        "halonet26t_256": 12_480_288,
        "halonet50ts_256": 22_733_280,
        "halonet_h0_256": 5_500_952,
        "halonet_h1_256": 8_100_056,
        "halonet_h2_256": 9_404_312,
        "halonet_h3_320": 11_841_304,
        "halonet_h4_384": 19_101_976,
        "halonet_h5_448": 30_717_272,
        "halonet_h6_512": 43_456_792,
        "halonet_h7_600": 67_433_240,
        "haloregnetz_b_224": 11_680_072,
        "sehalonet33ts_256": 13_691_712,
    },
    # H0-H7: the paper's ImageNet-1k top-1 and params (M) (paper table, not re-read: verify
    # before quoting). The timm hybrids have no paper: their row holds timm's own evaluation of
    # the released weights (results-imagenet.csv) and timm's params / GMACs.
    paper_results={
        "halonet_h0_256": PaperResult(top1=77.9, params_m=5.5, verified=False),
        "halonet_h1_256": PaperResult(top1=79.9, params_m=8.1, verified=False),
        "halonet_h2_256": PaperResult(top1=80.4, params_m=9.4, verified=False),
        "halonet_h3_320": PaperResult(top1=81.9, params_m=11.8, verified=False),
        "halonet_h4_384": PaperResult(top1=83.3, params_m=19.1, verified=False),
        "halonet_h5_448": PaperResult(top1=84.0, params_m=30.7, verified=False),
        "halonet_h6_512": PaperResult(top1=84.4, params_m=43.4, verified=False),
        "halonet_h7_600": PaperResult(top1=84.9, params_m=67.4, verified=False),
        "halonet26t_256": PaperResult(top1=79.134, params_m=12.48, gflops=3.19),
        "sehalonet33ts_256": PaperResult(top1=80.976, params_m=13.69, gflops=3.55),
        "halonet50ts_256": PaperResult(top1=81.640, params_m=22.73, gflops=5.30),
        "eca_halonext26ts_256": PaperResult(top1=79.518, params_m=10.76, gflops=2.44),
        "haloregnetz_b_224": PaperResult(top1=81.058, params_m=11.68, gflops=1.97),
    },
    query_attention=halonet_query_attention,
))


def _create_halonet(variant, pretrained=False, **kwargs):
    cfg_name = _ARCHS[variant][0]
    model_cfg = model_cfgs[cfg_name]
    return build_zoo_model(HaloNet, variant, pretrained, num_stages=5,
                           pretrained_filter_fn=checkpoint_filter_fn, model_cfg=model_cfg,
                           **kwargs)


@register_zoo_model
def halonet_h0_256(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H0 (paper): b8 h3, rv 1.0, rb 0.5, depths (3, 3, 7, 3); untrained."""
    return _create_halonet("halonet_h0_256", pretrained, **kwargs)


@register_zoo_model
def halonet_h1_256(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H1 (paper) = timm's ``halonet_h1``: b8 h3, rv 1.0, rb 1.0, depths (3, 3, 10, 3);
    untrained."""
    return _create_halonet("halonet_h1_256", pretrained, **kwargs)


@register_zoo_model
def halonet_h2_256(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H2 (paper): b8 h3, rv 1.0, rb 1.25, depths (3, 3, 11, 3); untrained."""
    return _create_halonet("halonet_h2_256", pretrained, **kwargs)


@register_zoo_model
def halonet_h3_320(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H3 (paper): b10 h3, rv 1.0, rb 1.5, depths (3, 3, 12, 3), final conv 1024;
    untrained."""
    return _create_halonet("halonet_h3_320", pretrained, **kwargs)


@register_zoo_model
def halonet_h4_384(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H4 (paper): b12 h2, rv 1.0, rb 3.0, depths (3, 3, 12, 3), final conv 1280;
    untrained."""
    return _create_halonet("halonet_h4_384", pretrained, **kwargs)


@register_zoo_model
def halonet_h5_448(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H5 (paper): b14 h2, rv 2.5, rb 2.0, depths (3, 3, 23, 3), final conv 1536;
    untrained."""
    return _create_halonet("halonet_h5_448", pretrained, **kwargs)


@register_zoo_model
def halonet_h6_512(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H6 (paper): b8 h4, rv 3.0, rb 2.75, depths (3, 3, 24, 3), final conv 1536;
    untrained."""
    return _create_halonet("halonet_h6_512", pretrained, **kwargs)


@register_zoo_model
def halonet_h7_600(pretrained=False, **kwargs) -> HaloNet:
    """HaloNet-H7 (paper): b10 h3, rv 4.0, rb 3.5, depths (3, 3, 26, 3), final conv 2048;
    untrained."""
    return _create_halonet("halonet_h7_600", pretrained, **kwargs)


@register_zoo_model
def halonet26t_256(pretrained=False, **kwargs) -> HaloNet:
    """timm's ``halonet26t``: ResNet-26-T with halo attention (b8 h2) in the last two stages;
    timm's ``a1h_in1k`` weights."""
    return _create_halonet("halonet26t_256", pretrained, **kwargs)


@register_zoo_model
def sehalonet33ts_256(pretrained=False, **kwargs) -> HaloNet:
    """timm's ``sehalonet33ts``: ResNet-33-T, SE bottlenecks, SiLU, halo (b8 h3) in stages 2-4;
    timm's ``ra2_in1k`` weights."""
    return _create_halonet("sehalonet33ts_256", pretrained, **kwargs)


@register_zoo_model
def halonet50ts_256(pretrained=False, **kwargs) -> HaloNet:
    """timm's ``halonet50ts``: ResNet-50-T, SiLU, halo (b8 h3) in stages 2-4; timm's
    ``a1h_in1k`` weights."""
    return _create_halonet("halonet50ts_256", pretrained, **kwargs)


@register_zoo_model
def eca_halonext26ts_256(pretrained=False, **kwargs) -> HaloNet:
    """timm's ``eca_halonext26ts``: ResNeXt-26-T (group size 16), ECA, SiLU, halo (b8 h2,
    dim_head 16) in the last two stages; timm's ``c1_in1k`` weights."""
    return _create_halonet("eca_halonext26ts_256", pretrained, **kwargs)


@register_zoo_model
def haloregnetz_b_224(pretrained=False, **kwargs) -> HaloNet:
    """timm's ``haloregnetz_b``: RegNetZ-B with halo (b7 h2, qk_ratio 0.33) in stages 3-4;
    timm's ``ra3_in1k`` weights."""
    return _create_halonet("haloregnetz_b_224", pretrained, **kwargs)
