"""CSWin Transformer.

Paper: "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows",
Dong et al., CVPR 2022, arXiv:2107.00652.
Official code and weights: https://github.com/microsoft/CSWin-Transformer (MIT licence). This is an
independent implementation that loads the official checkpoints unchanged.

Every block splits its channels in two: half the heads attend inside vertical stripes of width
``split`` (windows of ``H x split``), the other half inside horizontal stripes (``split x W``); the
last stage (and any stage whose split is ``None``) attends over the whole grid with all heads.
Attention runs through ``ops.window_attention_2d``; LePE (a depthwise 3x3 convolution of V inside
each stripe) through ``ops.window_depthwise_conv2d``.

Any input size works. Grids that do not divide into stripes are padded the way the official dense
(segmentation) backbone pads: q, k, v are zero-padded after the projection with the first half of
the padding before the grid, padded keys take part in the softmax, and the output is cropped. At
sizes the official classification model accepts this is the identical computation.
"""
import re
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, get_norm_layer
from timm.models import generate_default_cfgs

import ops

from ._builder import build_zoo_model
from ._family import Family, PaperResult, register_family
from ._helpers import unwrap_checkpoint
from ._registry import register_zoo_model
from .layers import DeviceLike, Stage, StagedBackboneMixin, calculate_drop_path_rates, factory_context
from .query_attention import cswin_query_attention

__all__ = ["CSWinTransformer", "checkpoint_filter_fn", "create_from_official"]


class CrossShapedWindowAttention(nn.Module):
    """qkv projection, two stripe branches (or one full-grid branch) with LePE, output projection.

    The qkv output is laid out ``[3, C]`` and branch ``b`` owns channels ``[b*C/2, (b+1)*C/2)`` of
    each of q, k, v, head-major inside the branch, exactly as in the official checkpoints.
    """

    def __init__(self, dim, num_heads, split_size=None, qkv_bias=True, qk_scale=None):
        super().__init__()
        self.num_branches = 1 if split_size is None else 2
        if num_heads % self.num_branches or dim % num_heads:
            raise ValueError(f"dim {dim} and num_heads {num_heads} must split evenly over "
                             f"{self.num_branches} branch(es) and the heads")
        self.dim = dim
        self.split_size = split_size
        self.branch_heads = num_heads // self.num_branches
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5  # `or`: the official code ignores 0
        branch_dim = dim // self.num_branches
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.lepe = nn.ModuleList([
            nn.Conv2d(branch_dim, branch_dim, 3, padding=1, groups=branch_dim)
            for _ in range(self.num_branches)])
        self.proj = nn.Linear(dim, dim)

    def branch_window(self, branch: int, H: int, W: int) -> Optional[Tuple[int, int]]:
        split = self.split_size
        if split is None:
            return None
        if branch == 0:
            return H, split
        return split, W

    def forward(self, x):
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H, W, 3, self.num_branches, self.branch_heads, self.head_dim)
        # Views, no copies: each is (branches, B, heads, H, W, head_dim).
        q, k, v = qkv.permute(3, 4, 0, 5, 1, 2, 6).unbind(0)
        outs = []
        for branch, lepe in enumerate(self.lepe):
            window = self.branch_window(branch, H, W)
            offset = ops.centered_window_offset((H, W), window) if window is not None else (0, 0)
            out = ops.window_attention_2d(q[branch], k[branch], v[branch], window,
                                          window_offset=offset, padding="zeros", scale=self.scale)
            out = out + ops.window_depthwise_conv2d(v[branch], lepe.weight, lepe.bias, window,
                                                    window_offset=offset)
            outs.append(out.permute(0, 2, 3, 1, 4))
        return self.proj(torch.cat(outs, dim=3).reshape(B, H, W, C))


class CSWinBlock(nn.Module):
    def __init__(self, dim, num_heads, split_size=None, mlp_ratio=4., qkv_bias=True, qk_scale=None,
                 proj_drop=0., drop_path=0., norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = CrossShapedWindowAttention(dim, num_heads, split_size, qkv_bias, qk_scale)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stem(nn.Module):
    """Conv 7x7 stride 4 (padding 2), then LayerNorm over channels; NCHW in, NHWC out."""

    def __init__(self, in_chans, dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 7, stride=4, padding=2)
        self.norm = norm_layer(dim)

    def forward(self, x):
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class MergeBlock(nn.Module):
    """Conv 3x3 stride 2 (padding 1) then LayerNorm; NHWC in and out. Output size ceil(H / 2)."""

    def __init__(self, dim, dim_out, norm_layer=nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1)
        self.norm = norm_layer(dim_out)

    def forward(self, x):
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class CSWinTransformer(StagedBackboneMixin, nn.Module):
    """CSWin Transformer backbone and classifier (timm API).

    Args:
        in_chans: input image channels.
        num_classes: classifier classes (0: no classifier).
        global_pool: ``'avg'`` (the official mean over tokens) or ``''`` for the unpooled map.
        embed_dim: stem width.
        depths: blocks per stage.
        num_heads: heads per stage (split over the two stripe branches).
        split_sizes: stripe width per stage; ``None`` makes a stage full attention (the last
            stage of every official variant).
        dims: stage widths; default ``embed_dim * 2**i`` as in the official classifier.
        mlp_ratio, qkv_bias, qk_scale: as in the official code.
        drop_rate: dropout before the classifier; proj_drop_rate: dropout inside the MLPs (the
            official ``drop_rate``); drop_path_rate: stochastic depth, linear over all blocks.
        final_norm: LayerNorm on the last stage's output (the official classifier has it; the
            official segmentation backbone does not).
        feature_norms: one LayerNorm per stage applied to the features returned by
            ``forward_intermediates`` / ``features_only`` (the official segmentation backbone's
            ``norm1..norm4``).
        norm_layer: the norm of every layer (a norm class or timm norm name; LayerNorm as the
            official code).
        device, dtype: where and in which floating-point type parameters and buffers are created
            (``device="meta"`` allocates nothing).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 64,
            depths: Sequence[int] = (1, 2, 21, 1),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            split_sizes: Sequence[Optional[int]] = (1, 2, 7, None),
            dims: Optional[Sequence[int]] = None,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Union[str, Callable] = nn.LayerNorm,
            final_norm: bool = True,
            feature_norms: bool = False,
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if attn_drop_rate:
            raise ValueError("CSWin: attention-probability dropout is not supported by the fused "
                             "attention ops (every official recipe uses attn_drop_rate=0)")
        num_stages = len(depths)
        depths = tuple(depths)
        if not (len(num_heads) == len(split_sizes) == num_stages):
            raise ValueError(f"depths {depths}, num_heads {tuple(num_heads)} and split_sizes "
                             f"{tuple(split_sizes)} must have one entry per stage")
        dims = tuple(dims) if dims is not None else tuple(embed_dim * 2 ** i for i in range(num_stages))
        norm_layer = get_norm_layer(norm_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.min_input_size = 3  # the 7x7 / stride-4 stem's smallest valid input
        self.output_fmt = "NHWC"
        self.grad_checkpointing = False
        # outside the factory context: a bfloat16 default dtype would round the rates
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)

        with factory_context(device, dtype):
            self.stem = Stem(in_chans, dims[0], norm_layer)
            stages, self.feature_info = [], []
            for i in range(num_stages):
                down = MergeBlock(dims[i - 1], dims[i], norm_layer) if i > 0 else None
                blocks = [CSWinBlock(dims[i], num_heads[i], split_sizes[i], mlp_ratio, qkv_bias,
                                     qk_scale, proj_drop_rate, dpr[i][j], norm_layer)
                          for j in range(depths[i])]
                stages.append(Stage(down, blocks))
                self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i,
                                              module=f"stages.{i}"))
            self.stages = nn.Sequential(*stages)
            self.num_features = self.head_hidden_size = dims[-1]
            self.feature_norms = nn.ModuleList([norm_layer(d) for d in dims]) if feature_norms else None
            self.norm = norm_layer(self.num_features) if final_norm else nn.Identity()
            self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool,
                                       drop_rate=drop_rate, input_fmt=self.output_fmt)
            self.apply(self._init_weights)




# Official key -> zoo key. Official layout: models/cswin.py (classifier) and
# segmentation/backbone/cswin_transformer.py (dense backbone, keys under `backbone.` in mmseg files).
_OFFICIAL_KEY_MAP = [
    (r"^stage1_conv_embed\.0\.", "stem.conv."),
    (r"^stage1_conv_embed\.2\.", "stem.norm."),
    (r"^stage(\d)\.(\d+)\.qkv\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.attn.qkv."),
    (r"^stage(\d)\.(\d+)\.proj\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.attn.proj."),
    (r"^stage(\d)\.(\d+)\.attns\.(\d)\.get_v\.",
     lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.attn.lepe.{m[3]}."),
    (r"^stage(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^merge(\d)\.", lambda m: f"stages.{m[1]}.downsample."),
    (r"^norm(\d)\.", lambda m: f"feature_norms.{int(m[1]) - 1}."),
    (r"^head\.", "head.fc."),
]


def checkpoint_filter_fn(state_dict, model=None):
    """Official CSWin checkpoint (any wrapper: ``state_dict_ema`` > ``state_dict`` > ``model``;
    mmseg ``backbone.`` prefixes; DDP ``module.``) -> zoo keys. Zoo-layout dicts pass unchanged."""
    state_dict = unwrap_checkpoint(state_dict)
    if "stem.conv.weight" in state_dict:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("decode_head.", "auxiliary_head.")):
            continue  # mmseg heads of an ADE20K checkpoint: not part of the backbone
        if key.startswith("backbone."):
            key = key[len("backbone."):]
        for pattern, repl in _OFFICIAL_KEY_MAP:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def create_from_official(kwargs, official_class=None):
    """The zoo model with the architecture the official constructor builds from ``kwargs``.

    ``official_class``: ``models/cswin.py:CSWinTransformer`` (default, the classifier) or
    ``segmentation/backbone/cswin_transformer.py:CSWin`` (the dense backbone); the class name alone
    also works.
    """
    cls_name = (official_class or "CSWinTransformer").split(":")[-1]
    if cls_name not in ("CSWinTransformer", "CSWin"):
        raise ValueError(f"unknown official CSWin class {official_class!r}; expected "
                         "'models/cswin.py:CSWinTransformer' or "
                         "'segmentation/backbone/cswin_transformer.py:CSWin'")
    kw = dict(kwargs)
    unsupported = [k for k in ("hybrid_backbone", "norm_layer") if kw.get(k) is not None]
    if unsupported:
        raise ValueError(f"official kwargs {unsupported} are not supported (no released model uses them)")
    missing = [k for k in ("embed_dim", "depth", "num_heads", "split_size") if k not in kw]
    if missing:
        raise ValueError(f"official CSWin kwargs need {missing} (every released config sets them)")
    embed_dim, depths, heads = kw["embed_dim"], tuple(kw["depth"]), tuple(kw["num_heads"])
    if len(heads) != len(depths):
        raise ValueError(f"num_heads {heads} must have one entry per stage ({len(depths)})")
    split = kw["split_size"]
    split = [split] * len(depths) if isinstance(split, int) else list(split)
    img_size = kw.get("img_size", 224)
    args = dict(
        in_chans=kw.get("in_chans", 3), embed_dim=embed_dim, depths=depths, num_heads=heads,
        mlp_ratio=kw.get("mlp_ratio", 4.), qk_scale=kw.get("qk_scale"),
        proj_drop_rate=kw.get("drop_rate", 0.), attn_drop_rate=kw.get("attn_drop_rate", 0.),
        drop_path_rate=kw.get("drop_path_rate", 0.))
    n = len(depths)
    if cls_name == "CSWinTransformer":
        # The classifier builds a stage whose token grid at img_size equals its split as one
        # full-attention branch; the last stage is always full attention.
        args["split_sizes"] = tuple(
            None if i == n - 1 or img_size // (4 * 2 ** i) == split[i] else split[i]
            for i in range(n))
        args["qkv_bias"] = kw.get("qkv_bias", True)
        args["num_classes"] = kw.get("num_classes", 1000)
    else:
        # The dense backbone always has two branches before the last stage, a qkv bias, widths
        # scaled by the head ratio, per-stage output norms, and neither final norm nor head.
        args["split_sizes"] = tuple(None if i == n - 1 else split[i] for i in range(n))
        dims = [embed_dim]
        for i in range(1, n):
            dims.append(dims[-1] * (heads[i] // heads[i - 1]))
        args.update(dims=tuple(dims), qkv_bias=True, num_classes=0, final_norm=False,
                    feature_norms=True)
    model = CSWinTransformer(**args)
    if kw.get("use_chk"):
        model.set_grad_checkpointing(True)
    return model


def _cfg(url="", **kwargs):
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "head.fc",
        "license": "mit",
        "origin_url": "https://github.com/microsoft/CSWin-Transformer",
        "paper_ids": "arXiv:2107.00652",
        "paper_name": "CSWin Transformer: A General Vision Transformer Backbone with "
                      "Cross-Shaped Windows",
        **kwargs,
    }


_RELEASE = "https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/"

default_cfgs = generate_default_cfgs({
    "cswin_tiny_224.in1k": _cfg(url=_RELEASE + "cswin_tiny_224.pth"),
    "cswin_small_224.in1k": _cfg(url=_RELEASE + "cswin_small_224.pth"),
    "cswin_base_224.in1k": _cfg(url=_RELEASE + "cswin_base_224.pth"),
    "cswin_base_384.in1k": _cfg(
        url=_RELEASE + "cswin_base_384.pth", input_size=(3, 384, 384), pool_size=(12, 12),
        crop_pct=1.0),
    "cswin_large_224.in22k_ft_in1k": _cfg(url=_RELEASE + "cswin_large_224.pth"),
    "cswin_large_224.in22k": _cfg(
        url=_RELEASE + "cswin_large_22k_224.pth", num_classes=21841,
        notes=("ImageNet-22k classifier of the official release; the class count (21841) was not "
               "read from the file: if loading reports a head size mismatch, pass num_classes=.",)),
    "cswin_large_384.in22k_ft_in1k": _cfg(
        url=_RELEASE + "cswin_large_384.pth", input_size=(3, 384, 384), pool_size=(12, 12),
        crop_pct=1.0),
})

FAMILY = register_family(Family(
    name="cswin",
    model_cls=CSWinTransformer,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="microsoft/CSWin-Transformer",
    official_classes=("models/cswin.py:CSWinTransformer",
                      "segmentation/backbone/cswin_transformer.py:CSWin"),
    torchscript=("ops.window_attention_2d and ops.window_depthwise_conv2d take keyword-only "
                 "arguments with defaults and ops.centered_window_offset builds a tuple from a "
                 "generator, neither of which TorchScript compiles (torch.export works)"),
    # exact parameter counts of the official implementation (1000-class heads)
    param_counts={
        "cswin_base_224": 77_382_184,
        "cswin_base_384": 77_382_184,
        "cswin_large_224": 173_262_664,
        "cswin_large_384": 173_262_664,
        "cswin_small_224": 34_643_304,
        "cswin_tiny_224": 22_320_552,
    },
    tag_param_counts={
        "cswin_large_224.in22k": 197_292_337,
    },
    # The authors' constructor of each variant, for side-by-side timing and output checks against
    # a local clone (tools/benchmark.py --official).
    official_entrypoints={
        "cswin_tiny_224": "models/cswin.py:CSWin_64_12211_tiny_224",
        "cswin_small_224": "models/cswin.py:CSWin_64_24322_small_224",
        "cswin_base_224": "models/cswin.py:CSWin_96_24322_base_224",
        "cswin_base_384": "models/cswin.py:CSWin_96_24322_base_384",
        "cswin_large_224": "models/cswin.py:CSWin_144_24322_large_224",
        "cswin_large_384": "models/cswin.py:CSWin_144_24322_large_384",
    },
    # The official README's ImageNet-1k top-1 and its params / FLOPs columns (FLOPs = multiply-
    # adds). fvcore counts CSWin-L at 33.19 / 102.06 GMACs against the README's 31.5 / 96.8
    # (model card).
    paper_results={
        "cswin_tiny_224": PaperResult(top1=82.8, params_m=23, gflops=4.3),
        "cswin_small_224": PaperResult(top1=83.6, params_m=35, gflops=6.9),
        "cswin_base_224": PaperResult(top1=84.2, params_m=78, gflops=15.0),
        "cswin_base_384": PaperResult(top1=85.5, params_m=78, gflops=47.0),
        "cswin_large_224": PaperResult(top1=86.5, params_m=173, gflops=31.5),
        "cswin_large_384": PaperResult(top1=87.5, params_m=173, gflops=96.8),
    },
    # What turns the classifier into the official dense backbone (segmentation/backbone/
    # cswin_transformer.py): per-stage output norms (``backbone.norm1..4``); used by
    # backbones.dense.DenseBackbone(task=...).
    dense_backbone_kwargs={
        "detection": dict(feature_norms=True),
        "segmentation": dict(feature_norms=True),
    },
    query_attention=cswin_query_attention,
))


def _create_cswin(variant, pretrained=False, **kwargs):
    return build_zoo_model(CSWinTransformer, variant, pretrained, num_stages=4,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_zoo_model
def cswin_tiny_224(pretrained=False, **kwargs) -> CSWinTransformer:
    """CSWin-T (official ``CSWin_64_12211_tiny_224``), 22.3M params."""
    model_args = dict(embed_dim=64, depths=(1, 2, 21, 1), num_heads=(2, 4, 8, 16),
                      split_sizes=(1, 2, 7, None))
    return _create_cswin("cswin_tiny_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def cswin_small_224(pretrained=False, **kwargs) -> CSWinTransformer:
    """CSWin-S (official ``CSWin_64_24322_small_224``), 34.6M params."""
    model_args = dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16),
                      split_sizes=(1, 2, 7, None))
    return _create_cswin("cswin_small_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def cswin_base_224(pretrained=False, **kwargs) -> CSWinTransformer:
    """CSWin-B (official ``CSWin_96_24322_base_224``), 77.4M params."""
    model_args = dict(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32),
                      split_sizes=(1, 2, 7, None))
    return _create_cswin("cswin_base_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def cswin_base_384(pretrained=False, **kwargs) -> CSWinTransformer:
    """CSWin-B at 384 (official ``CSWin_96_24322_base_384``): stripes of 12 in stage 3."""
    model_args = dict(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32),
                      split_sizes=(1, 2, 12, None))
    return _create_cswin("cswin_base_384", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def cswin_large_224(pretrained=False, **kwargs) -> CSWinTransformer:
    """CSWin-L (official ``CSWin_144_24322_large_224``), 173.3M params; ImageNet-22k pretrained."""
    model_args = dict(embed_dim=144, depths=(2, 4, 32, 2), num_heads=(6, 12, 24, 24),
                      split_sizes=(1, 2, 7, None))
    return _create_cswin("cswin_large_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def cswin_large_384(pretrained=False, **kwargs) -> CSWinTransformer:
    """CSWin-L at 384 (official ``CSWin_144_24322_large_384``): stripes of 12 in stage 3."""
    model_args = dict(embed_dim=144, depths=(2, 4, 32, 2), num_heads=(6, 12, 24, 24),
                      split_sizes=(1, 2, 12, None))
    return _create_cswin("cswin_large_384", pretrained, **dict(model_args, **kwargs))
