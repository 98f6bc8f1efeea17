"""The losses of Sparsifiner's two-phase recipe (Wei et al., CVPR 2023; official ``src/losses.py``),
as named losses any recipe can use with a dense teacher (a timm ViT or a zoo Sparsifiner).

* ``sparsifiner_attn_recon`` (phase 1, only the connectivity predictor trains): every block's
  low-rank attention of the patch queries, in the reconstruction form, against the teacher's
  dense softmax attention of the same queries: ``weight * mean over blocks of sum((approx -
  teacher)^2)`` (official weight 0.01, sum reduction).
* ``sparsifiner_distill`` (phase 2, only the backbone trains): the base loss on the class logits
  (soft-target CE under mixup) ``+ kl_weight * KL(student || teacher logits)`` (log-softmax both,
  ``batchmean``) ``+ token_weight * MSE(final patch tokens, the teacher's)`` over the tokens still
  alive (official weights 1, 0.5, 0.5). For LV-ViT the "tokens" are the auxiliary head's token
  logits, as in the official code.
"""
import torch.nn as nn
import torch.nn.functional as F

from .losses import build_loss, register_loss

__all__ = ["AttentionReconstructionLoss", "SparsifinerDistillationLoss"]


def _sparsifiner():
    from ..sparsifiner import Sparsifiner, attention_maps
    return Sparsifiner, attention_maps


def _check_student(net):
    Sparsifiner, _ = _sparsifiner()
    if not isinstance(net, Sparsifiner):
        raise TypeError(f"the Sparsifiner losses train a zoo Sparsifiner model, got "
                        f"{type(net).__name__}")


@register_loss("sparsifiner_attn_recon")
class AttentionReconstructionLoss(nn.Module):
    """Phase 1: the predictor learns to reconstruct the teacher's attention (see module doc)."""

    needs_teacher = True

    def __init__(self, weight=0.01):
        super().__init__()
        self.weight = float(weight)

    @staticmethod
    def forward_student(net, inputs):
        _check_student(net)
        return net.forward_trace(inputs, reconstruct=True)

    @staticmethod
    def forward_teacher(teacher, inputs):
        return _sparsifiner()[1](teacher, inputs)[2]

    def forward(self, trace, targets, teacher_maps):
        if len(teacher_maps) != len(trace.layers):
            raise ValueError(f"the teacher has {len(teacher_maps)} attention layers, the student "
                             f"{len(trace.layers)}: attention reconstruction pairs them block by "
                             "block")
        total = 0.0
        for layer, target in zip(trace.layers, teacher_maps):
            target = target[..., 1:, :]  # the patch queries' rows
            if target.shape != layer.approx_attn.shape:
                raise ValueError(f"teacher attention {tuple(target.shape)} (patch rows) does not "
                                 f"match the student's {tuple(layer.approx_attn.shape)}: same "
                                 "heads and tokens needed")
            total = total + F.mse_loss(layer.approx_attn, target, reduction="sum")
        return dict(loss_attn_recon=self.weight * total / len(trace.layers))


@register_loss("sparsifiner_distill")
class SparsifinerDistillationLoss(nn.Module):
    """Phase 2: classification + logit and token distillation from the dense teacher."""

    needs_teacher = True

    def __init__(self, base="soft_target_ce", cls_weight=1.0, kl_weight=0.5, token_weight=0.5):
        super().__init__()
        self.base = build_loss(base)
        self.cls_weight, self.kl_weight = float(cls_weight), float(kl_weight)
        self.token_weight = float(token_weight)

    @staticmethod
    def forward_student(net, inputs):
        _check_student(net)
        return net.forward_trace(inputs)

    @staticmethod
    def forward_teacher(teacher, inputs):
        Sparsifiner, attention_maps = _sparsifiner()
        if isinstance(teacher, Sparsifiner):
            logits, features, _ = attention_maps(teacher, inputs)
            return logits, features
        tokens = teacher.forward_features(inputs)
        return teacher.forward_head(tokens), tokens[:, teacher.num_prefix_tokens:]

    def forward(self, trace, targets, teacher_outputs):
        teacher_logits, teacher_tokens = teacher_outputs
        student_tokens = trace.features
        if student_tokens.shape != teacher_tokens.shape:
            raise ValueError(f"student tokens {tuple(student_tokens.shape)} and teacher tokens "
                             f"{tuple(teacher_tokens.shape)} differ: token distillation needs the "
                             "same token grid and width")
        alive = trace.token_mask
        if alive is not None:
            student_tokens, teacher_tokens = student_tokens[alive], teacher_tokens[alive]
        logits = trace.cls_logits
        kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(teacher_logits, dim=-1),
                      reduction="batchmean", log_target=True)
        return dict(loss_cls=self.cls_weight * self.base(logits, targets),
                    loss_cls_distill=self.kl_weight * kl,
                    loss_token_distill=self.token_weight * F.mse_loss(student_tokens,
                                                                      teacher_tokens))
