"""COCO detectors on torchvision with a :class:`DenseBackbone` + FPN: Mask R-CNN, Faster R-CNN,
Cascade Mask R-CNN, RetinaNet and FCOS, set up the way the papers' mmdet configs set them up where torchvision lets us.

* Mask / Faster R-CNN: FPN (256) over all four stages plus a max-pooled P6 (mmdet ``num_outs=5``),
  anchors 32..512 (mmdet: scale 8 x strides 4..64), RoIAlign 7 / 14.
* Cascade Mask R-CNN: the same RPN and FPN with :class:`CascadeRoIHeads` (Swin's 3x recipe:
  three stages, 4conv1fc box heads, GIoU loss).
* RetinaNet: FPN over stages 2-4 (mmdet ``start_level=1``) with P6 / P7 from the last backbone map
  (``add_extra_convs='on_input'``), anchors ``4 * stride * 2^(k/3)``, 3 ratios.
* FCOS: FPN over stages 2-4 with P6 / P7 from P5 (torchvision's FCOS recipe).
* Backbones whose finest map is coarser than the detector's finest level (SHViT: strides
  16 / 32 / 64) get :class:`UpsampledFPN`, the official SHViT / EfficientViT neck
  (``EfficientViTFPN``): the finest top-down lateral is upsampled by stride-2 transposed convs
  to the missing levels (R-CNNs: strides 4 and 8; RetinaNet / FCOS: 8).
* Levels are chosen by stride (R-CNNs: 4-64, one-stage: 8-128), so a stride-2 stem tap (timm's
  ResNet-style nets, HaloNet) is never an FPN input.
* Images resized to (800, 1333), normalised with the backbone's mean / std, padded to 32.

torchvision differs from mmdet in details (RoIAlign ``aligned=False`` with ``sampling_ratio=2``,
RPN / RoI sampler defaults), so absolute AP is comparable to, not identical with, the papers'.
"""
import math
from collections import OrderedDict

import timm
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7)

from .adapter import DenseBackbone
from .cascade import CascadeRoIHeads

__all__ = ["DETECTORS", "BackboneFPN", "UpsampledFPN", "build_detector"]

DETECTORS = ("mask_rcnn", "faster_rcnn", "cascade_mask_rcnn", "retinanet", "fcos")


class BackboneFPN(nn.Module):
    """``DenseBackbone`` maps (selected by ``in_levels``) through torchvision's FPN, as the
    ``OrderedDict`` torchvision's detectors expect, with their ``out_channels`` attribute."""

    def __init__(self, backbone, in_levels, out_channels=256, extra="maxpool"):
        super().__init__()
        self.backbone = backbone
        self.in_levels = tuple(in_levels)
        channels = [backbone.channels[i] for i in self.in_levels]
        extra_block = {"maxpool": LastLevelMaxPool(),
                       "p6p7_on_input": LastLevelP6P7(channels[-1], out_channels),
                       "p6p7_on_output": LastLevelP6P7(out_channels, out_channels)}[extra]
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.backbone(x)
        return self.fpn(OrderedDict((str(i), feats[level]) for i, level in enumerate(self.in_levels)))


class UpsampledFPN(nn.Module):
    """FPN for backbones without fine levels, as the official SHViT detectors build it (mmdet
    ``EfficientViTFPN``, from EfficientViT / LightViT): 1x1 laterals and the nearest-neighbour
    top-down sum over the backbone maps, then ``num_up`` stride-2 2x2 transposed convs chained
    from the finest lateral (after the top-down sum), each followed by a 3x3 conv; 3x3 output convs
    on the backbone levels; then ``num_extra`` coarser levels: a 3x3 stride-2 conv on the last
    backbone map and on each new level (``extra='conv_on_input'``, RetinaNet) or a stride-2
    subsampling of the last output (``extra='maxpool'``, mmdet's ``max_pool2d(x, 1, 2)``).
    Outputs finest first, as an ``OrderedDict`` named ``'0'``, ``'1'`` ... for torchvision."""

    def __init__(self, backbone, in_levels, out_channels=256, num_up=0, num_extra=0,
                 extra="maxpool"):
        super().__init__()
        if extra not in ("maxpool", "conv_on_input"):
            raise ValueError(f"extra must be 'maxpool' or 'conv_on_input', got {extra!r}")
        self.backbone = backbone
        self.in_levels = tuple(in_levels)
        channels = [backbone.channels[i] for i in self.in_levels]
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                       for _ in channels)
        self.up_convs = nn.ModuleList(nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2)
                                      for _ in range(num_up))
        self.up_fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in range(num_up))
        self.extra = extra
        self.num_extra = num_extra
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(channels[-1] if i == 0 else out_channels, out_channels, 3, stride=2, padding=1)
            for i in range(num_extra if extra == "conv_on_input" else 0))
        self.out_channels = out_channels
        for convs in (self.lateral_convs, self.fpn_convs, self.up_convs, self.up_fpn_convs,
                      self.extra_convs):
            for m in convs:  # mmdet's FPN init
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        feats = self.backbone(x)
        inputs = [feats[level] for level in self.in_levels]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        ups, prev = [], laterals[0]
        for up in self.up_convs:
            prev = up(prev)
            ups.insert(0, prev)
        outs = [conv(u) for conv, u in zip(reversed(self.up_fpn_convs), ups)]
        outs += [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        if self.extra == "maxpool":
            for _ in range(self.num_extra):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        else:
            source = inputs[-1]
            for conv in self.extra_convs:
                source = conv(source)
                outs.append(source)
        return OrderedDict((str(i), out) for i, out in enumerate(outs))


def _levels_for(strides, finest, coarsest):
    """Backbone levels with ``finest <= stride <= coarsest``, and how many stride-2 levels the
    neck must add below (upsampled) and above (extra) them to span ``finest..coarsest`` (or
    ``finest..32`` + pooling when the backbone reaches 32 but not ``coarsest``)."""
    levels = [i for i, s in enumerate(strides) if finest <= s <= coarsest]
    if not levels:
        raise ValueError(f"feature strides {strides}: none in {finest}..{coarsest}")
    used = [strides[i] for i in levels]
    if any(b != 2 * a for a, b in zip(used, used[1:])):
        raise ValueError(f"feature strides {used} do not double level to level")
    num_up = int(round(math.log2(used[0] / finest)))
    num_extra = int(round(math.log2(coarsest / used[-1])))
    return levels, num_up, num_extra


def build_detector(kind, model_name, num_classes, pretrained=False, min_size=800,
                   max_size=1333, detector_kwargs=None, cascade_kwargs=None, **backbone_kwargs):
    """A torchvision detector (``kind`` in ``DETECTORS``) on ``DenseBackbone(model_name,
    task='detection', **backbone_kwargs)``. ``num_classes`` counts the object classes (COCO: 80):
    targets carry labels ``1..num_classes``, 0 being the R-CNNs' background (the one-stage
    detectors never see label 0, as in torchvision's own COCO models). ``detector_kwargs`` go to
    the torchvision class (e.g. ``box_detections_per_img``, RPN / RoI sampling sizes);
    ``cascade_kwargs`` to :class:`CascadeRoIHeads`."""
    if kind not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone_kwargs.setdefault("task", "detection")
    backbone = DenseBackbone(model_name, pretrained=pretrained, **backbone_kwargs)
    cfg = timm.get_pretrained_cfg(model_name.split(".")[0])
    mean, std = (list(cfg.mean), list(cfg.std)) if cfg is not None else (None, None)
    common = dict(min_size=min_size, max_size=max_size, image_mean=mean, image_std=std,
                  **(detector_kwargs or {}))
    rcnn = kind in ("mask_rcnn", "faster_rcnn", "cascade_mask_rcnn")
    # mmdet's levels: R-CNNs P2-P6 (strides 4-64), one-stage detectors P3-P7 (8-128)
    levels, num_up, num_extra = _levels_for(backbone.strides, *((4, 64) if rcnn else (8, 128)))
    if num_up == 0 and num_extra == (1 if rcnn else 2):  # strides 4 / 8 .. 32: mmdet's FPN
        extra = "maxpool" if rcnn else "p6p7_on_input" if kind == "retinanet" else "p6p7_on_output"
        body = BackboneFPN(backbone, levels, extra=extra)
    else:
        body = UpsampledFPN(backbone, levels, num_up=num_up, num_extra=num_extra,
                            extra="maxpool" if rcnn else "conv_on_input")
    if rcnn:
        anchors = AnchorGenerator(tuple((32 * 2 ** i,) for i in range(5)), ((0.5, 1.0, 2.0),) * 5)
        cls = FasterRCNN if kind == "faster_rcnn" else MaskRCNN
        detector = cls(body, num_classes=num_classes + 1, rpn_anchor_generator=anchors, **common)
        if kind == "cascade_mask_rcnn":
            detector.roi_heads = CascadeRoIHeads(num_classes + 1, body.out_channels,
                                                 **(cascade_kwargs or {}))
        return detector
    sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    if kind == "retinanet":
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
        return RetinaNet(body, num_classes=num_classes + 1, anchor_generator=anchors, **common)
    anchors = AnchorGenerator(tuple((8 * 2 ** i,) for i in range(5)), ((1.0,),) * 5)
    return FCOS(body, num_classes=num_classes + 1, anchor_generator=anchors, **common)
