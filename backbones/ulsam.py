"""ULSAM: Ultra-Lightweight Subspace Attention Module, and the MobileNet hosts of its paper.

Paper: "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural
Networks", Rajat Saini, Nandan Kumar Jha, Bedanta Das, Sparsh Mittal, C. Krishna Mohan, WACV
2020, arXiv:2006.15102. Official code: ``Nandan91/ULSAM`` (``ulsam.py``, the module only; no
licence file, so read for facts and never copied). No network code and no weights were released.

:class:`ULSAM` has the semantics of the official module at HEAD (channel-axis split, the max-pool
on the depthwise branch, BatchNorm momentum 0.9 in PyTorch's convention), vectorised: the ``g``
subspaces are one depthwise conv, one BatchNorm, one grouped G -> 1 conv and one BatchNorm over
all channels instead of ``g`` modules run in a Python loop. In eval mode both BatchNorms fold into
the convs and the whole module is one call of :func:`ops.ulsam_attention`. ``checkpoint_filter_fn``
maps the official per-subspace keys (``subspaces.<n>.conv_dws.weight`` ...) to this layout. It is
a timm attention layer: ``partial(ULSAM, num_splits=4)`` as a ResNet's ``attn_layer`` or an
EfficientNet's ``se_layer``.

The hosts (:class:`UlsamMobileNet`) are timm's own MobileNet-V1 / V2 (``EfficientNet`` with
timm's block definitions), with ULSAM inserted after, or put in place of, the blocks listed in
``ulsam_positions``. Kept blocks keep timm's keys, so timm's ImageNet weights load (tag
``host_in1k``) with only the ULSAM layers at their initialisation. The paper's positions could not
be read; the registered variants' placements are **inferred** from the authors' parameter / FLOP
table rows (spec ``ulsam.md`` §4), which their costs reproduce (``paper_cost``, tested).
"""
import copy
import math
from collections import OrderedDict
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN,
                       IMAGENET_INCEPTION_STD)
from timm.models import generate_default_cfgs
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet

from ops.ulsam import apply_subspace_attention, max_pool3x3_nonneg, subspace_conv, ulsam_attention

from ._builder import build_zoo_model
from ._family import Family, PaperResult, register_family
from ._helpers import unwrap_checkpoint
from ._registry import register_zoo_model
from .layers.attn_hosts import MOBILENETV2_ARCH, CheckedHostMixin, fill_new_layers
from .query_attention import ulsam_query_attention

__all__ = ["ULSAM", "UlsamMobileNet", "checkpoint_filter_fn", "create_from_official",
           "paper_cost", "ulsam_macs"]


# ------------------------------------------------------------------------------------------------
# The module

def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


class ULSAM(nn.Module):
    """ULSAM over ``channels`` split into ``num_splits`` subspaces; output shape = input shape.

    Per subspace (``G = channels / num_splits`` channels): 1x1 depthwise conv (with bias), BN,
    ReLU, 3x3 / 1 max-pool, G -> 1 1x1 conv (with bias), BN, ReLU, softmax over the H*W positions,
    ``out = x * A + x`` with the one map ``A`` for every channel of the subspace.

    Args:
        channels: input (= output) channels (the official ``nin``).
        num_splits: subspaces ``g`` (the paper's g; 1 = one map for all channels); must divide
            ``channels``.
        bn_momentum: both BatchNorms' momentum in PyTorch's convention (running = (1 - m) *
            running + m * batch). The official module sets 0.9, a TF-style value that makes the
            running statistics follow the last few batches; kept as the default for fidelity.
        bn_eps: both BatchNorms' eps.
        act_layer: accepted and ignored, so that timm's blocks (which pass their activation to
            every ``se_layer``) can build the module; ULSAM's ReLUs are fixed.
    """

    def __init__(self, channels: int, num_splits: int = 4, bn_momentum: Optional[float] = 0.9,
                 bn_eps: float = 1e-5, act_layer=None, device=None, dtype=None):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ULSAM: channels must be a positive int, got {channels!r}")
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"ULSAM: num_splits must be a positive int, got {num_splits!r}")
        if channels % num_splits:
            raise ValueError(
                f"ULSAM: {channels} channels cannot be split into num_splits={num_splits} equal "
                f"subspaces; choose a num_splits that divides {channels}: {_divisors(channels)}")
        dd = dict(device=device, dtype=dtype)
        self.channels = channels
        self.num_splits = num_splits
        self.conv_dw = nn.Conv2d(channels, channels, 1, groups=channels, bias=True, **dd)
        self.bn_dw = nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum, **dd)
        # row n of the (g, G, 1, 1) weight is subspace n's G -> 1 conv
        self.conv_pw = nn.Conv2d(channels, num_splits, 1, groups=num_splits, bias=True, **dd)
        self.bn_pw = nn.BatchNorm2d(num_splits, eps=bn_eps, momentum=bn_momentum, **dd)

    def extra_repr(self):
        return f"channels={self.channels}, num_splits={self.num_splits}"

    def folded(self):
        """The eval-mode module as ``ops.ulsam_attention``'s arguments: each BN folded into the
        conv before it (differentiable in every parameter)."""
        bn = self.bn_dw
        inv = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        dw_scale = self.conv_dw.weight.flatten() * inv
        dw_shift = (self.conv_dw.bias - bn.running_mean) * inv + bn.bias
        bn = self.bn_pw
        inv = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        pw_weight = self.conv_pw.weight.flatten(1) * inv[:, None]
        pw_bias = (self.conv_pw.bias - bn.running_mean) * inv + bn.bias
        return dw_scale, dw_shift, pw_weight, pw_bias

    def forward(self, x):
        if not (self.bn_dw.training or self.bn_pw.training):
            return ulsam_attention(x, *self.folded())
        # Batch statistics: the BNs cannot be folded, so the branch runs layer by layer (each
        # conv as the arithmetic it is: PyTorch's CPU kernels for a depthwise 1x1 conv and a
        # g-output grouped conv are many times slower than these).
        d = torch.addcmul(self.conv_dw.bias[:, None, None], x, self.conv_dw.weight.view(-1, 1, 1))
        d = max_pool3x3_nonneg(F.relu(self.bn_dw(d)))
        s = F.relu(self.bn_pw(subspace_conv(d, self.conv_pw.weight.flatten(1), self.conv_pw.bias)))
        return apply_subspace_attention(x, s)


def ulsam_macs(channels, height, width):
    """One image's MACs of a ULSAM layer as the paper counts them (its DW and PW 1x1 convs:
    ``2 * C * H * W``; 0.2 M at 512 x 14 x 14, the poster's figure)."""
    return 2 * channels * height * width


# ------------------------------------------------------------------------------------------------
# Hosts

def _block_io(block):
    """(in channels, out channels, stride) of a timm MobileNet block."""
    if isinstance(block, DepthwiseSeparableConv):
        return block.conv_dw.in_channels, block.conv_pw.out_channels, block.conv_dw.stride[0]
    if isinstance(block, InvertedResidual):
        return block.conv_pw.in_channels, block.conv_pwl.out_channels, block.conv_dw.stride[0]
    raise TypeError(f"ULSAM positions can only name DepthwiseSeparableConv / InvertedResidual "
                    f"blocks, got {type(block).__name__}")


def ulsam_key(block_index):
    """The name of the ULSAM layer at a stage's block ``block_index`` (after it when inserted, in
    its place when replacing): ``blocks.<stage>.<block>_ulsam``. It starts with the block index, so
    timm's ``group_matcher`` (``^blocks\\.(\\d+)\\.(\\d+)``) puts it in that block's group."""
    return f"{block_index}_ulsam"


class UlsamMobileNet(CheckedHostMixin, EfficientNet):
    """timm's MobileNet (``EfficientNet`` built from timm's MobileNet-V1 / V2 block definitions)
    with ULSAM layers at ``ulsam_positions``.

    Args:
        block_args: timm's decoded block definitions (see :func:`host_kwargs`).
        ulsam_positions: ``(stage, block)`` indices into ``model.blocks`` (timm's numbering of the
            host, before any change).
        ulsam_replace: False: a ULSAM layer is inserted after each listed block; True: each
            listed block is replaced by a ULSAM layer on its channels (only blocks that keep the
            shape, stride 1 and as many output as input channels, can be replaced).
        ulsam_splits: the subspaces g of every ULSAM layer.
        ulsam_bn_momentum: their BatchNorm momentum (official 0.9, PyTorch convention).
        **kwargs: timm ``EfficientNet`` arguments (``num_classes``, ``drop_rate``, ...).
    """

    def __init__(self, block_args, ulsam_positions: Sequence[Tuple[int, int]] = (),
                 ulsam_replace: bool = False, ulsam_splits: int = 4,
                 ulsam_bn_momentum: Optional[float] = 0.9, device=None, dtype=None, **kwargs):
        # timm's builder consumes the block dicts; a copy keeps the caller's reusable
        super().__init__(copy.deepcopy(block_args), device=device, dtype=dtype, **kwargs)
        self.ulsam_positions = self._check_positions(ulsam_positions, ulsam_replace)
        self.ulsam_replace = bool(ulsam_replace)
        self.ulsam_splits = ulsam_splits
        make = partial(ULSAM, num_splits=ulsam_splits, bn_momentum=ulsam_bn_momentum,
                       device=device, dtype=dtype)
        for s in sorted({s for s, _ in self.ulsam_positions}):
            here = sorted(b for t, b in self.ulsam_positions if t == s)
            layers = []
            for b, block in enumerate(self.blocks[s]):
                c_in, c_out, _ = _block_io(block)
                if b not in here:
                    layers.append((str(b), block))
                elif self.ulsam_replace:
                    layers.append((ulsam_key(b), make(c_in)))
                else:
                    layers += [(str(b), block), (ulsam_key(b), make(c_out))]
            self.blocks[s] = nn.Sequential(OrderedDict(layers))

    def _check_positions(self, positions, replace):
        out = []
        for pos in positions:
            if (not isinstance(pos, (tuple, list)) or len(pos) != 2
                    or not all(isinstance(i, int) for i in pos)):
                raise ValueError(f"ulsam_positions holds (stage, block) index pairs, got {pos!r}")
            s, b = pos
            if not 0 <= s < len(self.blocks) or not 0 <= b < len(self.blocks[s]):
                sizes = [len(st) for st in self.blocks]
                raise ValueError(f"ulsam position {pos} does not exist: the host has "
                                 f"{len(sizes)} stages with {sizes} blocks (0-based indices)")
            if replace:
                c_in, c_out, stride = _block_io(self.blocks[s][b])
                if stride != 1 or c_in != c_out:
                    raise ValueError(
                        f"block {pos} changes the shape ({c_in} -> {c_out} channels, stride "
                        f"{stride}): ULSAM keeps the shape, so it can only replace a stride-1 "
                        "block with as many output as input channels; insert after it instead "
                        "(ulsam_replace=False)")
            out.append((s, b))
        if len(set(out)) != len(out):
            raise ValueError(f"ulsam_positions lists a position twice: {positions}")
        return tuple(sorted(out))

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False, extra_blocks=False):
        if output_fmt != "NCHW":
            raise ValueError(f"UlsamMobileNet features are NCHW only, got output_fmt={output_fmt!r}")
        return super().forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only, extra_blocks=extra_blocks)


# timm 1.0.31's MobileNet block strings (efficientnet.py, _gen_mobilenet_v1 / _v2; V2's is shared
# with ELA's hosts), so that the hosts build exactly timm's networks.
_MV1_ARCH = [["dsa_r1_k3_s1_c64"], ["dsa_r2_k3_s2_c128"], ["dsa_r2_k3_s2_c256"],
             ["dsa_r6_k3_s2_c512"], ["dsa_r2_k3_s2_c1024"]]
_MV2_ARCH = [list(stage) for stage in MOBILENETV2_ARCH]


def host_kwargs(host, width=1.0):
    """The ``UlsamMobileNet`` arguments that build timm's ``mobilenetv1_<w>`` / ``mobilenetv2_<w>``
    (no ULSAM yet)."""
    round_chs_fn = partial(round_channels, multiplier=width)
    if host == "mobilenetv1":
        return dict(block_args=decode_arch_def(_MV1_ARCH), num_features=0, stem_size=32,
                    round_chs_fn=round_chs_fn, act_layer=nn.ReLU6, norm_layer=nn.BatchNorm2d)
    if host == "mobilenetv2":
        return dict(block_args=decode_arch_def(_MV2_ARCH), num_features=max(1280, round_chs_fn(1280)),
                    stem_size=32, round_chs_fn=round_chs_fn, act_layer=nn.ReLU6,
                    norm_layer=nn.BatchNorm2d)
    raise ValueError(f"unknown ULSAM host {host!r}: 'mobilenetv1' or 'mobilenetv2'")


# zoo model -> (host, width, positions, replace, timm host model, the author's table row it is)
_ARCHS = {
    "ulsam_mobilenetv1_100_224": ("mobilenetv1", 1.0, ((3, 5),), False, "mobilenetv1_100",
                                  "1.0 MV1 + ULSAM (pos. a/b), 4.2 M / 569.2 M"),
    "ulsam_mobilenetv1_100_e_224": ("mobilenetv1", 1.0, ((3, 5),), True, "mobilenetv1_100",
                                    "1.0 MV1 + ULSAM replacing a layer, 3.9 M / 517 M"),
    "ulsam_mobilenetv1_075_e_224": ("mobilenetv1", 0.75, ((3, 5),), True, None,
                                    "0.75 MV1 + ULSAM replacing a layer, 2.4 M / 296 M"),
    "ulsam_mobilenetv1_050_e_224": ("mobilenetv1", 0.5, ((3, 5),), True, None,
                                    "0.50 MV1 + ULSAM replacing a layer, 1.2 M / 136 M"),
    "ulsam_mobilenetv2_100_224": ("mobilenetv2", 1.0, ((5, 2),), False, "mobilenetv2_100",
                                  "MV2 + ULSAM, 3.4 M / 300.01 M"),
    "ulsam_mobilenetv2_100_e1_224": ("mobilenetv2", 1.0, ((4, 2), (5, 2)), True, "mobilenetv2_100",
                                     "MV2 + ULSAM g=4, 2.96 M / 261.88 M"),
    "ulsam_mobilenetv2_100_e2_224": ("mobilenetv2", 1.0, ((5, 1), (5, 2)), True, "mobilenetv2_100",
                                     "MV2 + ULSAM g=4, 2.77 M / 269.07 M"),
    "ulsam_mobilenetv2_100_e3_224": ("mobilenetv2", 1.0, ((4, 1), (4, 2), (5, 1), (5, 2)), True,
                                     "mobilenetv2_100", "MV2 + ULSAM g=4, 2.54 M / 223.77 M"),
}


# ------------------------------------------------------------------------------------------------
# Costs as the authors count them

def paper_cost(model, img_size=224):
    """(params, MACs) of ``model`` counted the way the ULSAM tables are: parameters of the convs
    and the classifier (BatchNorm excluded: with it no baseline fits the MobileNet-V2 rows, spec
    §4), MACs of every conv and linear layer at ``img_size``, each ULSAM layer as its two 1x1
    convs (:func:`ulsam_macs`)."""
    bn_types = nn.modules.batchnorm._BatchNorm
    params = sum(p.numel() for name, p in model.named_parameters()
                 if not isinstance(model.get_submodule(name.rsplit(".", 1)[0]), bn_types))
    macs = [0]
    inside = {id(m) for u in model.modules() if isinstance(u, ULSAM) for m in u.modules()}

    def conv_hook(mod, args, out):
        if id(mod) not in inside:
            macs[0] += out[0].numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size)

    def linear_hook(mod, args, out):
        macs[0] += mod.in_features * mod.out_features

    def ulsam_hook(mod, args, out):
        macs[0] += ulsam_macs(*args[0].shape[1:])

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, ULSAM):
            handles.append(m.register_forward_hook(ulsam_hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.in_chans, img_size, img_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return params, macs[0]


# ------------------------------------------------------------------------------------------------
# Checkpoints

_OFFICIAL_SUB = ("subspaces.", ".conv_dws.weight")


def _official_module_to_zoo(sd):
    """The official ``ULSAM`` keys (``[prefix]subspaces.<n>.<layer>.<param>``, one module per
    subspace) -> one ``[prefix]conv_dw / bn_dw / conv_pw / bn_pw`` over all subspaces."""
    prefixes = sorted({k[:k.index("subspaces.")] for k in sd
                       if "subspaces." in k and k.endswith(".conv_dws.weight")})
    if not prefixes:
        return sd
    out = {k: v for k, v in sd.items() if not any(k.startswith(p + "subspaces.") for p in prefixes)}
    layer_map = {"conv_dws": "conv_dw", "bn_dws": "bn_dw", "conv_point": "conv_pw", "bn_point": "bn_pw"}
    for prefix in prefixes:
        n = 0
        while f"{prefix}subspaces.{n}.conv_dws.weight" in sd:
            n += 1
        for old, new in layer_map.items():
            first = f"{prefix}subspaces.0.{old}."
            params = sorted({k.rsplit(".", 1)[1] for k in sd if k.startswith(first)})
            for param in params:
                parts = [sd[f"{prefix}subspaces.{i}.{old}.{param}"] for i in range(n)]
                if param == "num_batches_tracked":
                    out[f"{prefix}{new}.{param}"] = torch.stack(parts).max()
                else:
                    out[f"{prefix}{new}.{param}"] = torch.cat(parts, 0)
        leftover = [k for k in sd if k.startswith(f"{prefix}subspaces.{n}.")]
        if leftover:
            raise ValueError("official ULSAM checkpoint has gaps in its subspace numbering: "
                             f"{leftover[:3]}")
    return out


def checkpoint_filter_fn(state_dict, model=None):
    """Official ULSAM module checkpoints, timm MobileNet checkpoints and zoo checkpoints -> zoo keys.

    * official ``ULSAM`` keys (per-subspace modules) are concatenated into the vectorised layout
      (``conv_pw.weight`` (g, G, 1, 1) stacks the g ``conv_point.weight`` (1, G, 1, 1));
    * with a host ``model``: the weights of blocks the model replaced by ULSAM are dropped, and
      ULSAM layers the checkpoint lacks (a timm host checkpoint, tag ``host_in1k``) keep the
      model's initialisation, with a warning that names them.
    Wrappers (``state_dict_ema``, ``state_dict``, ``model``, DDP ``module.``) are stripped.
    """
    sd = _official_module_to_zoo(unwrap_checkpoint(state_dict))
    if not isinstance(model, UlsamMobileNet):
        return sd
    replaced = [f"blocks.{s}.{b}." for s, b in model.ulsam_positions] if model.ulsam_replace else []
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in replaced)}
    return fill_new_layers(sd, model, lambda k: "_ulsam." in k, "ULSAM",
                           "the checkpoint (a plain MobileNet's weights, e.g. tag host_in1k)")


def create_from_official(kwargs, official_class=None):
    """The zoo module of an official ``ulsam.py:ULSAM(nin, nout, h, w, num_splits)``.

    ``nout``, ``h`` and ``w`` are stored but unused by the official module (its output has
    ``nin`` channels at the input's size), so they are accepted and ignored. Weights are not
    loaded: pass the official ``state_dict`` through :func:`checkpoint_filter_fn`."""
    name = (official_class or "ulsam.py:ULSAM").split(":")[-1]
    if name != "ULSAM":
        raise ValueError(f"unknown official ULSAM class {official_class!r}: the official repo "
                         "defines ulsam.py:ULSAM (and its per-subspace SubSpace)")
    kw = dict(kwargs)
    unknown = set(kw) - {"nin", "nout", "h", "w", "num_splits"}
    if unknown or "nin" not in kw or "num_splits" not in kw:
        raise ValueError("official ULSAM kwargs are nin, nout, h, w, num_splits (nin and "
                         f"num_splits required), got {sorted(kw)}")
    return ULSAM(int(kw["nin"]), num_splits=int(kw["num_splits"]))


# ------------------------------------------------------------------------------------------------
# Pretrained cfgs, results, entrypoints

_PAPER = dict(paper_ids="arXiv:2006.15102",
              paper_name="ULSAM: Ultra-Lightweight Subspace Attention Module for Compact "
                         "Convolutional Neural Networks",
              origin_url="https://github.com/Nandan91/ULSAM")
_HOST_NOTE = ("timm's ImageNet-1k weights of the host network: every layer but the ULSAM ones "
              "loads; ULSAM layers keep their initialisation (no ULSAM weights were released).")


def _cfg(**kwargs):
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv_stem", "classifier": "classifier", **_PAPER, **kwargs,
    }


# timm's published host weights (timm/models/efficientnet.py default_cfgs), with timm's
# preprocessing for them.
_MV1_HOST = dict(hf_hub_id="timm/mobilenetv1_100.ra4_e3600_r224_in1k",
                 mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD,
                 test_input_size=(3, 256, 256), test_crop_pct=0.95, license="apache-2.0",
                 notes=(_HOST_NOTE,))
_MV2_HOST = dict(url="https://github.com/rwightman/pytorch-image-models/releases/download/"
                     "v0.1-weights/mobilenetv2_100_ra-b33bc2c4.pth",
                 hf_hub_id="timm/mobilenetv2_100.ra_in1k", license="apache-2.0",
                 notes=(_HOST_NOTE,))
_UNTRAINED = dict(notes=("no weights: neither the ULSAM authors nor timm released any for this "
                         "network",))

default_cfgs = generate_default_cfgs({
    "ulsam_mobilenetv1_100_224.host_in1k": _cfg(**_MV1_HOST),
    "ulsam_mobilenetv1_100_e_224.host_in1k": _cfg(**_MV1_HOST),
    "ulsam_mobilenetv1_075_e_224.untrained": _cfg(**_UNTRAINED),
    "ulsam_mobilenetv1_050_e_224.untrained": _cfg(**_UNTRAINED),
    "ulsam_mobilenetv2_100_224.host_in1k": _cfg(**_MV2_HOST),
    "ulsam_mobilenetv2_100_e1_224.host_in1k": _cfg(**_MV2_HOST),
    "ulsam_mobilenetv2_100_e2_224.host_in1k": _cfg(**_MV2_HOST),
    "ulsam_mobilenetv2_100_e3_224.host_in1k": _cfg(**_MV2_HOST),
})

FAMILY = register_family(Family(
    name="ulsam",
    model_cls=UlsamMobileNet,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="Nandan91/ULSAM",
    official_classes=("ulsam.py:ULSAM",),
    torchscript=("ops.ulsam_attention takes a keyword-only argument with a default, which "
                 "TorchScript cannot compile (torch.export works)"),
    # exact counts, 1000-class heads, g = 4 (the official code builds no network: these are
    # timm's hosts with the official module, counted by building them)
    param_counts={
        "ulsam_mobilenetv1_100_224": 4_234_548,
        "ulsam_mobilenetv1_100_e_224": 3_965_748,
        "ulsam_mobilenetv1_075_e_224": 2_435_044,
        "ulsam_mobilenetv1_050_e_224": 1_264_020,
        "ulsam_mobilenetv2_100_224": 3_505_684,
        "ulsam_mobilenetv2_100_e1_224": 3_067_904,
        "ulsam_mobilenetv2_100_e2_224": 2_866_496,
        "ulsam_mobilenetv2_100_e3_224": 2_630_936,
    },
    # ImageNet-1k rows of the authors' poster (WACV 2020, in the official repo; re-read for this
    # file), g = 4. Which row a model is follows from the inferred placements (the costs match,
    # tests/test_ulsam.py); the 1.0 MV1 "+ ULSAM" model could be the poster's first or second
    # 569.2 M row (70.77 or 70.61 at g = 4): not verified which.
    paper_results={
        "ulsam_mobilenetv1_100_224": PaperResult(top1=70.77, params_m=4.2, gflops=0.5692,
                                                 verified=False),
        "ulsam_mobilenetv1_100_e_224": PaperResult(top1=70.43, params_m=3.9, gflops=0.517),
        "ulsam_mobilenetv1_075_e_224": PaperResult(top1=67.81, params_m=2.4, gflops=0.296),
        "ulsam_mobilenetv1_050_e_224": PaperResult(top1=63.25, params_m=1.2, gflops=0.136),
        "ulsam_mobilenetv2_100_224": PaperResult(top1=71.64, params_m=3.4, gflops=0.30001),
        "ulsam_mobilenetv2_100_e1_224": PaperResult(top1=71.52, params_m=2.96, gflops=0.26188),
        "ulsam_mobilenetv2_100_e2_224": PaperResult(top1=70.74, params_m=2.77, gflops=0.26907),
        "ulsam_mobilenetv2_100_e3_224": PaperResult(top1=69.72, params_m=2.54, gflops=0.22377),
    },
    query_attention=ulsam_query_attention,
))


def _create_ulsam(variant, pretrained=False, **kwargs):
    host, width, positions, replace, _, _ = _ARCHS[variant]
    model_kwargs = host_kwargs(host, width)
    model_kwargs.update(ulsam_positions=positions, ulsam_replace=replace)
    model_kwargs.update(kwargs)
    return build_zoo_model(UlsamMobileNet, variant, pretrained, num_stages=5,
                           pretrained_filter_fn=checkpoint_filter_fn, **model_kwargs)


@register_zoo_model
def ulsam_mobilenetv1_100_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V1 1.0 + ULSAM (g=4) inserted after the last 14x14x512 layer (inferred; the
    authors' "pos. a/b" rows, 4.2 M / 569.2 M)."""
    return _create_ulsam("ulsam_mobilenetv1_100_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv1_100_e_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V1 1.0 with the last of its five repeated 14x14 layers replaced by ULSAM (g=4)
    (inferred; 3.9 M / 517 M)."""
    return _create_ulsam("ulsam_mobilenetv1_100_e_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv1_075_e_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V1 0.75, one 14x14 layer replaced by ULSAM (g=4) (inferred; 2.4 M / 296 M)."""
    return _create_ulsam("ulsam_mobilenetv1_075_e_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv1_050_e_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V1 0.5, one 14x14 layer replaced by ULSAM (g=4) (inferred; 1.2 M / 136 M)."""
    return _create_ulsam("ulsam_mobilenetv1_050_e_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv2_100_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V2 1.0 + ULSAM (g=4) inserted after the last 160-channel block (inferred;
    3.4 M / 300.01 M)."""
    return _create_ulsam("ulsam_mobilenetv2_100_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv2_100_e1_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V2 1.0 with one 96- and one 160-channel block replaced by ULSAM (g=4)
    (inferred; 2.96 M / 261.88 M)."""
    return _create_ulsam("ulsam_mobilenetv2_100_e1_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv2_100_e2_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V2 1.0 with both repeated 160-channel blocks replaced by ULSAM (g=4) (inferred;
    2.77 M / 269.07 M)."""
    return _create_ulsam("ulsam_mobilenetv2_100_e2_224", pretrained, **kwargs)


@register_zoo_model
def ulsam_mobilenetv2_100_e3_224(pretrained=False, **kwargs) -> UlsamMobileNet:
    """MobileNet-V2 1.0 with both repeated 96- and both repeated 160-channel blocks replaced by
    ULSAM (g=4) (inferred; 2.54 M / 223.77 M)."""
    return _create_ulsam("ulsam_mobilenetv2_100_e3_224", pretrained, **kwargs)
