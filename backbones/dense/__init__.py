"""Dense prediction on zoo backbones: the multi-scale adapter, torchvision detectors over it,
segmentation heads with mmsegmentation's layout, and mmseg-protocol metrics. Training on top:
``dense.config`` (settings) and ``dense.engine`` (the run, on ``training.runtime``)."""
from .adapter import DenseBackbone, dense_backbone_kwargs
from .cascade import CascadeRoIHeads
from .detection import DETECTORS, BackboneFPN, UpsampledFPN, build_detector
from .metrics import IoUMetric, intersect_and_union, iou_scores
from .segmentation import (
    FCNHead, FPNHead, FPNNeck, Segmentor, UPerHead, build_segmentor, load_mmseg_checkpoint,
    slide_windows)

__all__ = ["DenseBackbone", "dense_backbone_kwargs", "DETECTORS", "BackboneFPN", "UpsampledFPN",
           "CascadeRoIHeads", "build_detector", "IoUMetric", "intersect_and_union", "iou_scores",
           "FCNHead", "FPNHead", "FPNNeck", "Segmentor", "UPerHead", "build_segmentor",
           "load_mmseg_checkpoint", "slide_windows"]
