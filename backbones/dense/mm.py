"""Zoo backbones inside mmdetection / mmsegmentation, for users with a working (GPU) mmcv build.

``register_mm_backbones()`` adds ``ZooBackbone`` to the ``MODELS`` registry of whichever of
mmdet / mmseg imports; an mmdet or mmseg config then uses it like any backbone::

    model = dict(backbone=dict(type="ZooBackbone", model_name="cswin_tiny_224", task="detection",
                               pretrained=True, drop_path_rate=0.2), neck=dict(in_channels=[...]))

Nothing here imports mmdet or mmseg unless they are installed (neither installs on this project's
CI: mmcv has no wheel for torch 2.14); missing packages are skipped.
"""
import importlib

import torch.nn as nn

from .adapter import DenseBackbone

__all__ = ["ZooBackbone", "register_mm_backbones"]


class ZooBackbone(nn.Module):
    """OpenMMLab-style backbone: ``forward(x) -> tuple`` of NCHW maps, ``init_weights()`` a no-op
    (weights come from timm / the zoo's pretrained loader)."""

    def __init__(self, model_name, task="detection", pretrained=False, out_indices=None,
                 frozen_stages=-1, norm_eval=False, init_cfg=None, **model_kwargs):
        super().__init__()
        self.body = DenseBackbone(model_name, task=task, pretrained=pretrained,
                                  out_indices=out_indices, frozen_stages=frozen_stages,
                                  norm_eval=norm_eval, **model_kwargs)
        self.out_channels = self.body.channels

    def init_weights(self):
        pass

    def train(self, mode=True):
        super().train(mode)
        self.body.train(mode)  # keeps frozen stages and norm_eval BatchNorms in eval mode
        return self

    def forward(self, x):
        return tuple(self.body(x))


def register_mm_backbones(registries=None):
    """Register ``ZooBackbone`` in the given mmengine registries, or in ``mmdet.registry.MODELS``
    and ``mmseg.registry.MODELS`` when those packages import. Returns the registries used."""
    if registries is None:
        registries = []
        for package in ("mmdet", "mmseg"):
            try:
                registries.append(importlib.import_module(f"{package}.registry").MODELS)
            except Exception:  # noqa: BLE001  (absent, or present without a working mmcv)
                continue
    for registry in registries:
        if registry.get("ZooBackbone") is not ZooBackbone:
            registry.register_module(name="ZooBackbone", module=ZooBackbone, force=True)
    return registries
