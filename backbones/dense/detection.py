"""COCO detectors on torchvision with a :class:`DenseBackbone` + FPN: Mask R-CNN, Faster R-CNN,
RetinaNet and FCOS, set up the way the papers' mmdet configs set them up where torchvision lets us.

* Mask / Faster R-CNN: FPN (256) over all four stages plus a max-pooled P6 (mmdet ``num_outs=5``),
  anchors 32..512 (mmdet: scale 8 x strides 4..64), RoIAlign 7 / 14.
* RetinaNet: FPN over stages 2-4 (mmdet ``start_level=1``) with P6 / P7 from the last backbone map
  (``add_extra_convs='on_input'``), anchors ``4 * stride * 2^(k/3)``, 3 ratios.
* FCOS: FPN over stages 2-4 with P6 / P7 from P5 (torchvision's FCOS recipe).
* Images resized to (800, 1333), normalised with the backbone's mean / std, padded to 32.

torchvision differs from mmdet in details (RoIAlign ``aligned=False`` with ``sampling_ratio=2``,
RPN / RoI sampler defaults), so absolute AP is comparable to, not identical with, the papers'.
"""
from collections import OrderedDict

import timm
import torch.nn as nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7)

from .adapter import DenseBackbone

__all__ = ["DETECTORS", "BackboneFPN", "build_detector"]

DETECTORS = ("mask_rcnn", "faster_rcnn", "retinanet", "fcos")


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


def build_detector(kind, model_name, num_classes, pretrained=False, min_size=800,
                   max_size=1333, detector_kwargs=None, **backbone_kwargs):
    """A torchvision detector (``kind`` in ``DETECTORS``) on ``DenseBackbone(model_name,
    task='detection', **backbone_kwargs)``. ``num_classes`` counts the object classes (COCO: 80):
    targets carry labels ``1..num_classes``, 0 being the R-CNNs' background (the one-stage
    detectors never see label 0, as in torchvision's own COCO models). ``detector_kwargs`` go to
    the torchvision class (e.g. ``box_detections_per_img``, RPN / RoI sampling sizes)."""
    if kind not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone_kwargs.setdefault("task", "detection")
    backbone = DenseBackbone(model_name, pretrained=pretrained, **backbone_kwargs)
    if len(backbone.channels) < 3:
        raise ValueError(f"{model_name} gives {len(backbone.channels)} feature maps; detectors "
                         "need at least 3 (strides 8, 16, 32)")
    cfg = timm.get_pretrained_cfg(model_name.split(".")[0])
    mean, std = (list(cfg.mean), list(cfg.std)) if cfg is not None else (None, None)
    common = dict(min_size=min_size, max_size=max_size, image_mean=mean, image_std=std,
                  **(detector_kwargs or {}))
    n = len(backbone.channels)
    if kind in ("mask_rcnn", "faster_rcnn"):
        body = BackboneFPN(backbone, range(n), extra="maxpool")
        levels = n + 1
        anchors = AnchorGenerator(tuple((32 * 2 ** i,) for i in range(levels)),
                                  ((0.5, 1.0, 2.0),) * levels)
        cls = MaskRCNN if kind == "mask_rcnn" else FasterRCNN
        return cls(body, num_classes=num_classes + 1, rpn_anchor_generator=anchors, **common)
    body = BackboneFPN(backbone, range(n - 3, n),
                       extra="p6p7_on_input" if kind == "retinanet" else "p6p7_on_output")
    sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    if kind == "retinanet":
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
        return RetinaNet(body, num_classes=num_classes + 1, anchor_generator=anchors, **common)
    anchors = AnchorGenerator(tuple((8 * 2 ** i,) for i in range(5)), ((1.0,),) * 5)
    return FCOS(body, num_classes=num_classes + 1, anchor_generator=anchors, **common)
