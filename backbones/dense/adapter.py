"""Any zoo model, or any timm model with ``features_only``, as a multi-scale dense backbone.

The adapter returns NCHW maps with the strides and channels the model's ``feature_info`` declares,
adds the per-stage output norms the family's official detection / segmentation backbones use
(``dense_backbone_kwargs`` of the family record, per task), pads inputs up to a size the body
accepts and crops the maps back to ``ceil(size / stride)``, and implements the two training
switches of OpenMMLab backbones: ``frozen_stages`` and ``norm_eval``.
"""
import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import backbones

__all__ = ["DenseBackbone", "dense_backbone_kwargs"]

TASKS = ("detection", "segmentation")


def dense_backbone_kwargs(model_name, task):
    """The model kwargs that turn a zoo classifier into the family's official ``task`` backbone
    (e.g. BiFormer: ``feature_norms=True`` and the paper's ``n_win``); {} for timm models."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    base = model_name.split(".")[0]
    if base not in backbones.list_zoo_models():
        return {}
    return dict(backbones.get_family(base).dense_backbone_kwargs.get(task, {}))


class DenseBackbone(nn.Module):
    """Multi-scale backbone: ``forward(images) -> [NCHW map per out_index]``.

    Args:
        model_name: a zoo model (``cswin_tiny_224``) or a timm model that supports
            ``features_only``.
        task: ``"detection"`` or ``"segmentation"``: picks the family's official dense-backbone
            settings (output norms, window sizes); ``None`` uses the classifier as it is.
        pretrained: load the classification weights (norms the classifier lacks start fresh,
            as in the official dense configs).
        out_indices: stages to return (default: all).
        frozen_stages: stages ``0..frozen_stages`` (and the stem) get ``requires_grad=False`` and
            stay in eval mode; -1 freezes nothing (OpenMMLab's convention).
        norm_eval: keep every BatchNorm in eval mode while training (detection fine-tuning with
            2 images per GPU).
        size_divisor: inputs are zero-padded on the bottom / right to a multiple of this before
            the body and the maps cropped back to ``ceil(size / stride)``. Default: 1 (no padding)
            for zoo models, which take any size and pad inside exactly as their official dense
            backbones do; the largest stride for timm models, some of which need it (Swin).
        **model_kwargs: passed to ``timm.create_model`` (override the task defaults).
    """

    def __init__(self, model_name, task=None, pretrained=False, out_indices=None,
                 frozen_stages=-1, norm_eval=False, size_divisor=None, **model_kwargs):
        super().__init__()
        zoo_name = model_name.split(".")[0]
        if zoo_name in backbones.list_zoo_models() and \
                not backbones.get_family(zoo_name).any_input_size:
            raise ValueError(
                f"{model_name} takes only the input size it was built for (its family record: "
                "any_input_size=False), so it cannot be a detection / segmentation backbone, "
                "whose images come in every size; use forward_intermediates at that size, or a "
                "family that takes any size")
        kwargs = dense_backbone_kwargs(model_name, task) if task is not None else {}
        kwargs.update(model_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                                          **kwargs)
        except RuntimeError as e:
            if "features_only" in str(e):
                raise ValueError(f"{model_name} cannot be a dense backbone: timm has no "
                                 f"features_only support for it ({e})") from e
            raise
        self.model_name = model_name
        self.feature_info = self.body.feature_info
        self.channels = list(self.feature_info.channels())
        self.strides = list(self.feature_info.reduction())
        if size_divisor is None:
            size_divisor = 1 if model_name.split(".")[0] in backbones.list_zoo_models() \
                else max(self.strides)
        self.size_divisor = int(size_divisor)
        if self.size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()

    @property
    def out_channels(self):
        return self.channels

    def _stage_modules(self):
        """The body's modules in forward order, grouped as (stem..., stage 0), (stage 1), ...:
        everything up to and including the module that produces feature i belongs to stage i.
        Works for timm's FeatureListNet (children named by module) and FeatureGetterNet (the
        wrapped model's ``stages.i``)."""
        root = getattr(self.body, "model", self.body)
        info_modules = [info["module"] for info in self.feature_info.get_dicts()]
        order = []
        for name, child in root.named_children():
            nested = [m for m in info_modules if m.startswith(name + ".")]
            if nested:  # a container of stages: its children are the units
                order += [f"{name}.{sub}" for sub, _ in child.named_children()]
            else:
                order.append(name)
        groups, start = [], 0
        for module in info_modules:
            end = order.index(module) + 1 if module in order else start
            groups.append([root.get_submodule(n) for n in order[start:end]])
            start = max(start, end)
        return groups

    def _freeze(self):
        if self.frozen_stages < 0:
            return
        groups = self._stage_modules()
        if self.frozen_stages >= len(groups):
            raise ValueError(f"frozen_stages={self.frozen_stages} but {self.model_name} has "
                             f"{len(groups)} stages")
        self._frozen = [m for g in groups[:self.frozen_stages + 1] for m in g]
        for module in self._frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"DenseBackbone expects a (B, C, H, W) batch, got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % self.size_divisor, (-W) % self.size_divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.body(x)
        if pad_h or pad_w:
            feats = [f[..., :math.ceil(H / s), :math.ceil(W / s)]
                     for f, s in zip(feats, self.strides)]
        return feats
