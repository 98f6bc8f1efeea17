"""timm's model API for the zoo's hierarchical backbones (``stem`` -> ``stages`` -> ``norm`` ->
``head``): the methods every such family implements identically, written once."""
import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices

from .._helpers import check_image_input


class StagedBackboneMixin:
    """For models with ``self.stem``, ``self.stages`` (each with ``downsample`` / ``blocks`` and a
    ``grad_checkpointing`` flag), ``self.norm``, ``self.feature_norms`` (None or one norm per
    stage), a timm ``ClassifierHead`` as ``self.head``, ``self.output_fmt`` (the stages' own
    layout, ``"NHWC"`` or ``"NCHW"``), ``self.in_chans`` and ``self.min_input_size`` (the
    smallest image side the model takes)."""

    def _check_input(self, x):
        return check_image_input(x, self.in_chans, type(self).__name__, min_size=self.min_input_size)

    def forward_features(self, x):
        x = self._check_input(x)
        return self.norm(self.stages(self.stem(x)))

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

    # the stem's key prefix in group_matcher (SHViT keeps the official / timm name patch_embed)
    stem_key = "stem"

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(
            stem=rf"^{self.stem_key}",
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

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False):
        """Stage outputs (NCHW by default) and the final features.

        Features are the raw outputs of each stage; a model built with ``feature_norms=True``
        passes each through its own norm (the official dense backbones), otherwise ``norm=True``
        applies the final norm to the last stage's features.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        x = self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                if self.feature_norms is not None:
                    y = self.feature_norms[i](x)
                elif norm and i == last:
                    y = self.norm(x)
                else:
                    y = x
                if output_fmt != self.output_fmt:
                    y = y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" \
                        else y.permute(0, 2, 3, 1)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if self.feature_norms is not None:
            self.feature_norms = self.feature_norms[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
