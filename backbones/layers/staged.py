"""timm's model API for the zoo's hierarchical backbones (``stem`` -> ``stages`` -> ``norm`` ->
``head``): the methods every such family implements identically, written once."""
import torch
import torch.nn as nn
from timm.layers import trunc_normal_


class StagedBackboneMixin:
    """For models with ``self.stem``, ``self.stages`` (each with ``downsample`` / ``blocks`` and a
    ``grad_checkpointing`` flag), ``self.norm`` (and optionally ``self.feature_norms``) and a
    timm ``ClassifierHead`` as ``self.head``."""

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        # 1-D parameters (norms, biases, layer scales) are excluded by timm's optimizer factory
        # already; these families have no position tables or tokens to exclude on top.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm|^feature_norms", (99999,)),
            ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self):
        return self.head.fc

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
