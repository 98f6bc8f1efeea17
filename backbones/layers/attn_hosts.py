"""Plug-in attention inside timm's own CNNs: what a family of attention modules (ELA, ULSAM, ...)
needs to register host networks built on timm's builders, so timm's ImageNet weights load.

* :func:`mobilenetv2_block_args`: timm's MobileNetV2 architecture with its attention slot (the
  EfficientNet builder's ``se_layer``: after the depthwise conv + BN + act, before the linear
  projection) switched on in chosen blocks. The builder probes its layer with
  ``layer(8, rd_ratio=1.0)`` and passes ``rd_ratio`` on when that works: a layer without a squeeze
  ratio must refuse the keyword with a ``TypeError`` (and take ``act_layer``).
* :func:`official_mobilenetv2_key`: the key of the widely copied PyTorch MobileNetV2
  (``features.N.conv.i``, d-li14/mobilenetv2.pytorch, which Coordinate Attention's and ELA's
  ImageNet code extend) in timm's layout, with an attention module inserted in the blocks.
* :func:`fill_new_layers`: a host checkpoint (timm's weights of the plain network) completed with
  the model's own initial values for the layers it lacks, saying so.
* :class:`CheckedHostMixin`: timm's host classes with the zoo's clear input errors.
"""
import re
import warnings
from typing import Callable, Iterable, Optional

import torch
from timm.models._efficientnet_builder import decode_arch_def

from .._helpers import check_image_input

__all__ = ["CheckedHostMixin", "MOBILENETV2_ARCH", "fill_new_layers", "mobilenetv2_block_args",
           "official_mobilenetv2_key"]

# timm's MobileNetV2 (``_gen_mobilenet_v2``), one string per stage.
MOBILENETV2_ARCH = (
    ("ds_r1_k3_s1_c16",),
    ("ir_r2_k3_s2_e6_c24",),
    ("ir_r3_k3_s2_e6_c32",),
    ("ir_r4_k3_s2_e6_c64",),
    ("ir_r3_k3_s1_e6_c96",),
    ("ir_r3_k3_s2_e6_c160",),
    ("ir_r1_k3_s1_e6_c320",),
)


def mobilenetv2_block_args(attn_blocks: Optional[Iterable[int]] = None, depth_multiplier=1.0):
    """timm's decoded MobileNetV2 block args with the attention slot on in ``attn_blocks``
    (indices over all blocks in order, the official ``features.{i + 1}``); default: every
    inverted residual with expansion (all blocks but the first), where Coordinate Attention's and
    ELA's ImageNet code put theirs."""
    arch = [list(stage) for stage in MOBILENETV2_ARCH]
    block_args = decode_arch_def(arch, depth_multiplier=depth_multiplier)
    flat = [ba for stage in block_args for ba in stage]
    chosen = set(range(1, len(flat)) if attn_blocks is None else attn_blocks)
    bad = sorted(i for i in chosen if not 0 <= i < len(flat))
    if bad:
        raise ValueError(f"attention block indices {bad} are out of range: MobileNetV2 has "
                         f"{len(flat)} blocks (0 .. {len(flat) - 1})")
    for i, ba in enumerate(flat):
        # any ratio switches the slot on; the layer takes no ratio (no_ratio_attn_layer)
        ba["se_ratio"] = 0.25 if i in chosen else 0.
    return block_args


def _block_positions(block_args):
    """Official ``features.N`` (N >= 1) -> timm ``blocks.<stage>.<block>``."""
    positions, n = {}, 1
    for s, stage in enumerate(block_args):
        for b in range(len(stage)):
            positions[n] = f"blocks.{s}.{b}"
            n += 1
    return positions


# official nn.Sequential index inside ``features.N.conv`` -> timm name, for a block with
# expansion (pw, bn, act, dw, bn, act[, attn], pwl, bn) and without (dw, bn, act, pw, bn)
_EXPANDED = {0: "conv_pw", 1: "bn1", 3: "conv_dw", 4: "bn2", 6: "conv_pwl", 7: "bn3"}
_EXPANDED_ATTN = {0: "conv_pw", 1: "bn1", 3: "conv_dw", 4: "bn2", 6: "se", 7: "conv_pwl", 8: "bn3"}
_DEPTHWISE = {0: "conv_dw", 1: "bn1", 3: "conv_pw", 4: "bn2"}


def official_mobilenetv2_key(key: str, block_args, attn_blocks: Iterable[int] = ()) -> str:
    """One key of the d-li14 MobileNetV2 layout (``features.0`` stem, ``features.N.conv.i``
    blocks, ``conv`` head, ``classifier.1``) in timm's EfficientNet layout; blocks (1-based, the
    official ``features.N``) in ``attn_blocks`` hold an attention module at ``conv.6``
    (``se`` in timm). Keys of no known place are returned unchanged."""
    positions = _block_positions(block_args)
    attn_blocks = set(attn_blocks)
    m = re.match(r"^features\.0\.([01])\.(.+)$", key)
    if m:
        return ("conv_stem." if m[1] == "0" else "bn1.") + m[2]
    m = re.match(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$", key)
    if m and int(m[1]) in positions:
        n, i, rest = int(m[1]), int(m[2]), m[3]
        table = (_DEPTHWISE if n == 1 else _EXPANDED_ATTN if n in attn_blocks else _EXPANDED)
        if i in table:
            return f"{positions[n]}.{table[i]}.{rest}"
        return key
    m = re.match(r"^conv\.([01])\.(.+)$", key)
    if m:
        return ("conv_head." if m[1] == "0" else "bn2.") + m[2]
    m = re.match(r"^classifier\.1\.(.+)$", key)
    if m:
        return "classifier." + m[1]
    return key


def fill_new_layers(state_dict, model, is_new: Callable[[str], bool], what: str, source: str):
    """``state_dict`` plus the model's current values of the keys ``is_new`` selects and the
    checkpoint lacks (layers the host network does not have), with a warning that names them.

    A checkpoint of the full model passes unchanged and silently; a host checkpoint meets a strict
    load, so every other missing or unexpected key still fails loudly."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and is_new(k)]
    if not missing:
        return state_dict
    out = dict(state_dict)
    for k in missing:
        out[k] = own[k]
    modules = sorted({k.rsplit(".", 2)[0] for k in missing})
    names = ", ".join(modules[:8]) + (", ..." if len(modules) > 8 else "")
    warnings.warn(
        f"{source} has no weights for the {len(modules)} {what} layers ({len(missing)} tensors: "
        f"{names}): they keep their initialisation, only the host network is pretrained; "
        "fine-tune before use", stacklevel=2)
    return out


class CheckedHostMixin:
    """Put before a timm host class (``class Net(CheckedHostMixin, ResNet)``): the zoo's clear
    errors for inputs the network cannot take, checked in ``forward_features`` and
    ``forward_intermediates`` (which ``features_only`` runs), and ``no_weight_decay`` for timm's
    optimizer factory (which already keeps 1-D parameters free of decay)."""

    in_chans = 3  # the host class's __init__ sets the real count

    def _check_input(self, x):
        return check_image_input(x, self.in_chans, type(self).__name__)

    def forward_features(self, x):
        return super().forward_features(self._check_input(x))

    def forward_intermediates(self, x, *args, **kwargs):
        return super().forward_intermediates(self._check_input(x), *args, **kwargs)

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()
