"""ELA: Efficient Local Attention, as a timm attention layer and in the paper's host networks.

Paper: "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", Wei Xu, Yi Wan,
arXiv:2403.01123 (2024; a preprint). Official code: https://github.com/Xuwei86/ELA_Code (the
authors' experiment dump, no top-level licence, does not import as committed; read for facts,
nothing copied). No ImageNet weights of any ELA network were released.

The module (:class:`ELA`): strip means of ``x`` along W and along H, one shared Conv1d (kernel
``k``, zero padding ``k // 2``, no bias) over each strip sequence, one shared GroupNorm called once
per direction (separate statistics), sigmoid, and ``x * a_h * a_w``. The paper's four versions
(spec ``ela.md`` section 3):

=======  ===  ==================  ===========  ==================
version  k    Conv1d groups       GN groups    params
=======  ===  ==================  ===========  ==================
T        5    C (depthwise)       32           7 C
B        7    C (depthwise)       16           9 C
S        5    C // 8              16           42 C (C % 16 == 0)
L        7    C // 8              16           58 C (C % 16 == 0)
=======  ===  ==================  ===========  ==================

It runs through ``ops.ela_gate`` (a fused Triton path on CUDA, PyTorch elsewhere). It is a timm
attention layer: ``attn_layer=ELA`` / ``partial(ELA, version="l")`` in timm's ResNets, ByobNets
and other ``create_attn`` users (after the block's last BN, timm's SE slot), and
``se_layer=partial(ELA, version="l")`` in timm's EfficientNet / MobileNet builders (after the
depthwise conv, where the official MobileNetV2 puts it). ELA has no squeeze ratio: it refuses
timm's ``rd_ratio`` probe with a ``TypeError``, which is how those builders know not to pass one.

Hosts (registered with timm; timm's own builders, so timm's ImageNet weights of the plain
network load, tag ``host_in1k``, with the ELA layers at their initialisation and a warning):

* ``ela_mobilenetv2_100_{s,l}_224``: timm's ``mobilenetv2_100`` with ELA in every inverted
  residual with expansion, after the depthwise conv + BN + ReLU6 (timm's ``se`` slot), as the
  official ``MbV2/models/mbv2_ela72.py`` (which uses ELA-L; the paper's MobileNetV2 row is ELA-S).
* ``ela_resnet{18,50,101}_b_224``: timm's ResNets with ELA after ``conv2 + bn2 (+ act2)`` of every
  block (before ``conv3`` in a Bottleneck, before the residual sum in a BasicBlock), the placement
  of the official DeepLab backbone (``semantic/network/backbone/resnet.py``). That code adds the
  input back (``ELA(x) + x``): ``ela_residual=True``. Which of the two the paper's ImageNet
  ResNets used cannot be checked (no ResNet ImageNet code was released); the default is the
  paper's formula, ``x * a_h * a_w``.
"""
import re
from functools import partial
from typing import Iterable, Optional, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, get_pretrained_cfg
from timm.models._efficientnet_builder import round_channels
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ops.ela_gate import ela_gate

from ._builder import build_zoo_model
from ._family import Family, register_family
from ._helpers import unwrap_checkpoint
from ._registry import register_zoo_model
from .layers import DeviceLike
from .layers.attn_hosts import (CheckedHostMixin, fill_new_layers, mobilenetv2_block_args,
                                official_mobilenetv2_key)
from .query_attention import ela_query_attention

__all__ = ["ELA", "ELA_VERSIONS", "ElaBasicBlock", "ElaBottleneck", "ElaHost", "ElaMobileNetV2",
           "ElaResNet", "checkpoint_filter_fn", "create_from_official", "ela_layer"]

# version -> (kernel size, Conv1d groups as "depthwise" (C) or "c/8" (C // 8), GroupNorm groups)
ELA_VERSIONS = {
    "t": (5, "depthwise", 32),
    "b": (7, "depthwise", 16),
    "s": (5, "c/8", 16),
    "l": (7, "c/8", 16),
}


def _version(version):
    key = str(version).lower().removeprefix("ela-").removeprefix("ela_")
    if key not in ELA_VERSIONS:
        raise ValueError(f"unknown ELA version {version!r}; the paper's versions are "
                         "'t', 'b', 's', 'l' (ELA-T / B / S / L)")
    return key


class ELA(nn.Module):
    """Efficient Local Attention on ``(B, C, H, W)`` maps (module docstring); output shape = input.

    Args:
        channels: ``C``.
        version: ``'t'``, ``'b'`` (default), ``'s'`` or ``'l'``: the paper's kernel size, Conv1d
            groups and GroupNorm groups (module docstring table).
        kernel_size, groups, num_groups: override one of the version's three values (``groups``:
            the Conv1d's group count, ``C`` for depthwise). Not paper versions.
        eps: the GroupNorm's epsilon (PyTorch's 1e-5, as the official code).
        act_layer: ignored. timm's MobileNet / EfficientNet blocks pass their activation to every
            attention layer; ELA has none besides its sigmoid.
        device, dtype: where and in which floating-point type to create the parameters.

    Keys: ``conv.weight`` ``(C, C / groups, k)``, ``gn.weight``, ``gn.bias`` (the official
    classes' names; the paper's listing calls them ``con1`` / ``GN``, which
    :func:`checkpoint_filter_fn` maps). Initialisation: PyTorch's defaults, as the official code
    (its networks' weight init skips Conv1d and GroupNorm).
    """

    def __init__(self, channels: int, version: str = "b", *, kernel_size: Optional[int] = None,
                 groups: Optional[int] = None, num_groups: Optional[int] = None,
                 eps: float = 1e-5, act_layer=None, device: DeviceLike = None,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        v = _version(version)
        k, conv_groups, gn_groups = ELA_VERSIONS[v]
        name = f"ELA-{v.upper()}"
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{name}: channels must be a positive int, got {channels!r}")
        k = kernel_size if kernel_size is not None else k
        default_groups = channels if conv_groups == "depthwise" else channels // 8
        if groups is None:
            groups = default_groups
            if groups < 1:
                raise ValueError(f"{name} groups its Conv1d by C // 8 and needs at least 8 "
                                 f"channels, got {channels}; use version 't' or 'b' (depthwise)")
        gn_groups = num_groups if num_groups is not None else gn_groups
        if k < 1 or k % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd (padding k // 2 keeps the "
                             f"length), got {k}")
        if channels % gn_groups:
            fits = [w for w, (_, _, g) in ELA_VERSIONS.items() if channels % g == 0]
            raise ValueError(
                f"{name} normalises with GroupNorm({gn_groups}) and needs a channel count "
                f"divisible by {gn_groups}, got {channels}. "
                + (f"Versions that fit {channels} channels: {fits}; or " if fits else "")
                + "pass num_groups= a divisor of the channels (not a paper version)")
        if channels % groups:
            raise ValueError(f"{name}: its Conv1d's {groups} groups (C // 8) do not divide "
                             f"{channels} channels; use version 't' or 'b', or pass groups= a "
                             "divisor of the channels (not a paper version)")
        # the paper version it is, or None for overridden values
        self.version = v if (k, groups, gn_groups) == (ELA_VERSIONS[v][0], default_groups,
                                                       ELA_VERSIONS[v][2]) else None
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv1d(channels, channels, k, padding=k // 2, groups=groups, bias=False,
                              **dd)
        self.gn = nn.GroupNorm(gn_groups, channels, eps=eps, **dd)

    def forward(self, x):
        return ela_gate(x, self.conv.weight, self.gn.weight, self.gn.bias,
                        num_groups=self.gn.num_groups, eps=self.gn.eps)

    def extra_repr(self):
        return f"version={self.version!r}" if self.version else "custom"


def ela_layer(version: str = "b", **kwargs):
    """``ELA`` of one version as a timm layer factory (``attn_layer=`` / ``se_layer=``)."""
    _version(version)
    return partial(ELA, version=version, **kwargs)


# ---------------------------------------------------------------------------------------------
# Hosts

class ElaHost(CheckedHostMixin, nn.Module):
    """What every ELA host network is (the family's model class): a timm CNN with ELA layers,
    the zoo's input checks and timm's model API."""


class ElaMobileNetV2(ElaHost, EfficientNet):
    """timm's MobileNetV2 with ELA after the depthwise conv of the chosen inverted residuals.

    Args:
        ela_version: ``'t'``, ``'b'``, ``'s'`` or ``'l'`` (the official MobileNetV2 uses ``'l'``).
        ela_blocks: block indices (0 .. 16 over all blocks, the official ``features.{i + 1}``)
            that get ELA; default every block with expansion (1 .. 16), as the official code.
        channel_multiplier: width (timm's / the official ``width_mult``); channels rounded to
            multiples of 8 as both do.
        other arguments: timm's ``EfficientNet`` (``num_classes``, ``in_chans``, ``drop_rate``,
            ``drop_path_rate``, ``global_pool``, ``device``, ``dtype``, ...).
    """

    def __init__(self, ela_version: str = "l", ela_blocks: Optional[Iterable[int]] = None,
                 channel_multiplier: float = 1.0, in_chans: int = 3, **kwargs):
        round_chs_fn = partial(round_channels, multiplier=channel_multiplier)
        super().__init__(
            block_args=mobilenetv2_block_args(ela_blocks),
            num_features=max(1280, round_chs_fn(1280)), stem_size=32, in_chans=in_chans,
            round_chs_fn=round_chs_fn, act_layer=kwargs.pop("act_layer", nn.ReLU6),
            norm_layer=kwargs.pop("norm_layer", nn.BatchNorm2d),
            se_layer=ela_layer(ela_version), **kwargs)
        self.in_chans = in_chans
        self.ela_version = _version(ela_version)


class ElaBasicBlock(BasicBlock):
    """timm's ``BasicBlock`` with ELA after ``conv2 + bn2`` (before timm's attention slot, the
    residual sum and the activation); ``ela_residual``: ``ELA(x) + x`` (official DeepLab code)."""

    def __init__(self, inplanes, planes, *args, ela_version="b", ela_residual=False,
                 device=None, dtype=None, **kwargs):
        super().__init__(inplanes, planes, *args, device=device, dtype=dtype, **kwargs)
        self.ela = ELA(self.bn2.num_features, ela_version, device=device, dtype=dtype)
        self.ela_residual = ela_residual

    def forward(self, x):
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        x = x + self.ela(x) if self.ela_residual else self.ela(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class ElaBottleneck(Bottleneck):
    """timm's ``Bottleneck`` with ELA after ``conv2 + bn2 + act2`` (before ``conv3``);
    ``ela_residual``: ``ELA(x) + x`` (official DeepLab code)."""

    def __init__(self, inplanes, planes, *args, ela_version="b", ela_residual=False,
                 device=None, dtype=None, **kwargs):
        super().__init__(inplanes, planes, *args, device=device, dtype=dtype, **kwargs)
        self.ela = ELA(self.bn2.num_features, ela_version, device=device, dtype=dtype)
        self.ela_residual = ela_residual

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = x + self.ela(x) if self.ela_residual else self.ela(x)
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


class ElaResNet(ElaHost, ResNet):
    """timm's ``ResNet`` whose blocks carry ELA (:class:`ElaBasicBlock` / :class:`ElaBottleneck`).

    Args:
        block: ``'basic'`` or ``'bottleneck'``.
        layers: blocks per stage.
        ela_version: ``'t'``, ``'b'`` (default), ``'s'`` or ``'l'``.
        ela_residual: ``ELA(x) + x`` instead of ``ELA(x)`` (the official DeepLab backbone's form).
        other arguments: timm's ``ResNet`` (``num_classes``, ``in_chans``, ``attn_layer`` for a
            second attention in timm's slot, ``drop_path_rate``, ``device``, ``dtype``, ...).
    """

    def __init__(self, block: Union[str, type] = "bottleneck", layers=(3, 4, 6, 3),
                 ela_version: str = "b", ela_residual: bool = False, in_chans: int = 3,
                 block_args=None, **kwargs):
        blocks = {"basic": ElaBasicBlock, "bottleneck": ElaBottleneck}
        if isinstance(block, str):
            if block not in blocks:
                raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
            block = blocks[block]
        block_args = dict(block_args or {}, ela_version=_version(ela_version),
                          ela_residual=bool(ela_residual))
        super().__init__(block=block, layers=list(layers), in_chans=in_chans,
                         block_args=block_args, **kwargs)
        self.in_chans = in_chans
        self.ela_version = block_args["ela_version"]
        self.ela_residual = block_args["ela_residual"]


# ---------------------------------------------------------------------------------------------
# Checkpoints

# the paper listing's names of the module's tensors
_LISTING_NAMES = {"con1.weight": "conv.weight", "GN.weight": "gn.weight", "GN.bias": "gn.bias"}


def _ela_keys(model):
    """State-dict keys of the ELA layers inside ``model``."""
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, ELA) and name)
    return lambda key: key.startswith(prefixes)


def checkpoint_filter_fn(state_dict, model=None):
    """Any ELA-related checkpoint -> the zoo's keys.

    * a module's state dict: the official classes' ``conv.weight`` / ``gn.weight`` /
      ``gn.bias`` pass; the paper listing's ``con1`` / ``GN`` are renamed.
    * the official MobileNetV2 (``MbV2/models/*.py``, keys ``features.N.conv.i``, ``conv.*``,
      ``classifier.1.*``; ELA at ``conv.6`` of the blocks that have one): mapped to timm's
      EfficientNet layout (``conv_stem``, ``blocks.s.b.{conv_pw,bn1,conv_dw,bn2,se,conv_pwl,
      bn3}``, ``conv_head``, ``bn2``, ``classifier``).
    * timm's and torchvision's ResNet / MobileNetV2 files and the zoo's own: unchanged (timm's
      layout is ours).

    Any wrapper (``state_dict`` as the official ``imagenet.py`` saves it, ``model``, EMA;
    ``module.`` prefixes). With ``model`` given, ELA layers the checkpoint lacks (timm's weights of
    the plain host: the ``host_in1k`` tag) keep the model's initial values, with a warning.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if model is not None and isinstance(model, ELA) or set(state_dict) & set(_LISTING_NAMES):
        return {_LISTING_NAMES.get(k, k): v for k, v in state_dict.items()}
    if "features.0.0.weight" in state_dict:
        attn_blocks = {int(m[1]) for k in state_dict
                       if (m := re.match(r"^features\.(\d+)\.conv\.6\.conv\.weight$", k))}
        block_args = mobilenetv2_block_args()
        state_dict = {official_mobilenetv2_key(k, block_args, attn_blocks): v
                      for k, v in state_dict.items()}
    if model is not None:
        state_dict = fill_new_layers(state_dict, model, _ela_keys(model), "ELA",
                                     "the checkpoint")
    return state_dict


# official class -> (ELA version or None for a network, its constructor's keyword arguments)
_OFFICIAL = {
    "semantic/network/backbone/attention.py:ELA73": "b",
    "YOLOF/models/yolof/attention.py:ELA72": "t",
    "semantic/network/backbone/attention.py:ELA72": "s",
    "MbV2/models/attention.py:ELA72": "l",
    "MbV2/models/mbv2_ela72.py:MBV2_ELA72": None,
}


def create_from_official(kwargs, official_class=None):
    """The zoo model the official constructor builds from ``kwargs``.

    ``official_class``:

    * the modules, ``channel`` and ``ks`` (kernel size): ``semantic/network/backbone/
      attention.py:ELA73`` (default; ELA-B), ``YOLOF/models/yolof/attention.py:ELA72`` (ELA-T),
      ``semantic/network/backbone/attention.py:ELA72`` (ELA-S), ``MbV2/models/attention.py:ELA72``
      (ELA-L). The same class name means other versions in other files (spec section 3).
    * ``MbV2/models/mbv2_ela72.py:MBV2_ELA72`` (MobileNetV2 with ELA-L; ``num_classes``,
      ``width_mult``): an :class:`ElaMobileNetV2`.
    """
    cls = (official_class or "semantic/network/backbone/attention.py:ELA73").strip()
    if cls not in _OFFICIAL:
        raise ValueError(f"unknown official ELA class {official_class!r}; expected one of "
                         f"{sorted(_OFFICIAL)}")
    kw = dict(kwargs)
    version = _OFFICIAL[cls]
    if version is not None:
        unknown = set(kw) - {"channel", "ks"}
        if unknown or "channel" not in kw:
            raise TypeError(f"{cls.split(':')[-1]}(channel, ks=...) takes `channel` and `ks`, got "
                            f"{sorted(kw)}")
        return ELA(kw["channel"], version, kernel_size=kw.get("ks"))
    unknown = set(kw) - {"num_classes", "width_mult"}
    if unknown:
        raise TypeError(f"MBV2_ELA72(num_classes, width_mult) takes no {sorted(unknown)}")
    width = kw.get("width_mult", 1.0)
    if width == 0.1:
        raise ValueError("width_mult=0.1 rounds channels to multiples of 4 in the official code "
                         "(8 in timm's MobileNetV2); that width is not supported")
    return ElaMobileNetV2(ela_version="l", channel_multiplier=width,
                          num_classes=kw.get("num_classes", 1000))


# ---------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

def _cfg(**kwargs):
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "paper_ids": "arXiv:2403.01123",
        "paper_name": "ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
        "origin_url": "https://github.com/Xuwei86/ELA_Code",
        **kwargs,
    }


_MBV2 = dict(first_conv="conv_stem", classifier="classifier")
_RESNET = dict(first_conv="conv1", classifier="fc")
_UNTRAINED = ("ELA host configuration; no ELA weights exist (the authors released none). The "
              "host_in1k tag loads timm's weights of the plain host.",)


def _host(timm_tag, arch):
    """The cfg of timm's ImageNet weights of the plain host (its file, hub copy, preprocessing
    and licence, read from timm's own cfg: nothing invented); the ELA layers are not in them."""
    src = get_pretrained_cfg(timm_tag)
    return _cfg(url=src.url, hf_hub_id=src.hf_hub_id, crop_pct=src.crop_pct,
                interpolation=src.interpolation, license=src.license, **arch,
                notes=(f"timm's ImageNet-1k weights of the plain host ({timm_tag}); the ELA "
                       "layers are not in them and keep their initialisation (a warning says "
                       "so): fine-tune before use. No ImageNet weights of any ELA network were "
                       "released.",))


# The host weights: timm's own mobilenetv2_100 training (ra_in1k); for the ResNets torchvision's
# original weights (tv_in1k: trained with the ResNet paper's recipe, the recipe of the configs)
default_cfgs = generate_default_cfgs({
    "ela_mobilenetv2_100_l_224.untrained": _cfg(**_MBV2, notes=_UNTRAINED),
    "ela_mobilenetv2_100_l_224.host_in1k": _host("mobilenetv2_100.ra_in1k", _MBV2),
    "ela_mobilenetv2_100_s_224.untrained": _cfg(**_MBV2, notes=_UNTRAINED),
    "ela_mobilenetv2_100_s_224.host_in1k": _host("mobilenetv2_100.ra_in1k", _MBV2),
    "ela_resnet18_b_224.untrained": _cfg(**_RESNET, notes=_UNTRAINED),
    "ela_resnet18_b_224.host_in1k": _host("resnet18.tv_in1k", _RESNET),
    "ela_resnet50_b_224.untrained": _cfg(**_RESNET, notes=_UNTRAINED),
    "ela_resnet50_b_224.host_in1k": _host("resnet50.tv_in1k", _RESNET),
    "ela_resnet101_b_224.untrained": _cfg(**_RESNET, notes=_UNTRAINED),
    "ela_resnet101_b_224.host_in1k": _host("resnet101.tv_in1k", _RESNET),
})

def _official_builder(module, entry, zoo_name):
    return getattr(module, entry)()


FAMILY = register_family(Family(
    name="ela",
    model_cls=ElaHost,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="Xuwei86/ELA_Code",
    official_classes=tuple(_OFFICIAL),
    torchscript=("ELA calls ops.ela_gate, whose keyword-only arguments and backend dispatch "
                 "TorchScript cannot compile; torch.export is the supported path"),
    # Exact parameter counts, 1000-class heads: the host's (timm's, = torchvision's) plus the
    # ELA layers (7 / 9 / 42 / 58 parameters per channel for T / B / S / L). The official
    # MbV2/models/mbv2_ela72.py builds 3,916,904 (= ela_mobilenetv2_100_l_224).
    param_counts={
        "ela_mobilenetv2_100_l_224": 3_916_904,
        "ela_mobilenetv2_100_s_224": 3_803_240,
        "ela_resnet18_b_224": 11_706_792,
        "ela_resnet50_b_224": 25_591_016,
        "ela_resnet101_b_224": 44_622_312,
    },
    official_entrypoints={"ela_mobilenetv2_100_l_224": "MbV2/models/mbv2_ela72.py:mbv2_ela72"},
    # mbv2_ela72(**kwargs) passes everything to MBV2_ELA72, which takes no `pretrained`
    official_builder=_official_builder,
    query_attention=ela_query_attention,
))


def _create_mbv2(variant, pretrained=False, **kwargs):
    return build_zoo_model(ElaMobileNetV2, variant, pretrained, num_stages=5,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _create_resnet(variant, pretrained=False, **kwargs):
    return build_zoo_model(ElaResNet, variant, pretrained, num_stages=5,
                           pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_zoo_model
def ela_mobilenetv2_100_l_224(pretrained=False, **kwargs) -> ElaMobileNetV2:
    """MobileNetV2 (1.0) with ELA-L in the 16 inverted residuals with expansion: the official
    ``mbv2_ela72`` (``MbV2/models/mbv2_ela72.py``)."""
    return _create_mbv2("ela_mobilenetv2_100_l_224", pretrained,
                        **dict(dict(ela_version="l"), **kwargs))


@register_zoo_model
def ela_mobilenetv2_100_s_224(pretrained=False, **kwargs) -> ElaMobileNetV2:
    """MobileNetV2 (1.0) with ELA-S at the official placement (the paper's MobileNetV2 row)."""
    return _create_mbv2("ela_mobilenetv2_100_s_224", pretrained,
                        **dict(dict(ela_version="s"), **kwargs))


@register_zoo_model
def ela_resnet18_b_224(pretrained=False, **kwargs) -> ElaResNet:
    """ResNet-18 (timm's ``resnet18``) with ELA-B after conv2 + bn2 of every BasicBlock."""
    return _create_resnet("ela_resnet18_b_224", pretrained, **dict(
        dict(block="basic", layers=(2, 2, 2, 2), ela_version="b"), **kwargs))


@register_zoo_model
def ela_resnet50_b_224(pretrained=False, **kwargs) -> ElaResNet:
    """ResNet-50 (timm's ``resnet50``) with ELA-B after conv2 + bn2 + act of every Bottleneck."""
    return _create_resnet("ela_resnet50_b_224", pretrained, **dict(
        dict(block="bottleneck", layers=(3, 4, 6, 3), ela_version="b"), **kwargs))


@register_zoo_model
def ela_resnet101_b_224(pretrained=False, **kwargs) -> ElaResNet:
    """ResNet-101 (timm's ``resnet101``) with ELA-B after conv2 + bn2 + act of every Bottleneck."""
    return _create_resnet("ela_resnet101_b_224", pretrained, **dict(
        dict(block="bottleneck", layers=(3, 4, 23, 3), ela_version="b"), **kwargs))
