"""Training losses: one registry, named by recipes.

A recipe names its loss with ``loss = "soft_target_ce"`` or ``loss = dict(type="distillation",
base="soft_target_ce", alpha=0.5, tau=1.0)``; without one, the flags pick it as timm's train.py
does (``recipe_loss``). A loss is an ``nn.Module`` called ``loss(outputs, targets)`` with the
student's outputs and the (mixed) targets or, when its class sets ``needs_teacher = True``,
``loss(outputs, targets, teacher_outputs)`` with the outputs of the recipe's frozen ``teacher`` on
the same inputs. It returns the loss, or a dict of named terms (``loss_*``) that mmengine sums and
logs one by one. New losses register with ``@register_loss("name")`` on a class or factory.

A loss that needs more of the networks than their logits (attention maps, tokens) says how to get
it: ``forward_student(net, inputs)`` and ``forward_teacher(teacher, inputs)`` methods, when
present, replace ``net(inputs)`` / ``teacher(inputs)`` (the teacher's under ``no_grad``); their
results are what ``outputs`` and ``teacher_outputs`` are (``sparsifiner_losses``).
"""
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

__all__ = ["LOSSES", "DistillationLoss", "build_loss", "recipe_loss", "register_loss"]

LOSSES = {}  # name -> class or factory of the loss module


def register_loss(name):
    """Decorator: register a loss class (or factory) under ``name`` for recipes to name."""
    def register(factory):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered ({LOSSES[name].__name__})")
        LOSSES[name] = factory
        return factory
    return register


def build_loss(spec):
    """The loss module ``spec`` names: a registered name, or ``dict(type=name, **kwargs)``."""
    spec = dict(type=spec) if isinstance(spec, str) else dict(spec)
    name = spec.pop("type", None)
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; the registered losses are "
                         f"{', '.join(sorted(LOSSES))} (backbones.training.losses.register_loss "
                         "adds one)")
    try:
        return LOSSES[name](**spec)
    except TypeError as e:
        raise ValueError(f"loss {name!r}: {e}") from e


def recipe_loss(cfg, mixup_active):
    """The loss spec of a classification run: the recipe's ``loss``, else timm train.py's choice
    from the flags (BCE with ``bce_loss``, soft-target CE on mixup's targets, label smoothing,
    plain CE)."""
    if cfg.get("loss"):
        return cfg.loss
    if cfg.bce_loss:
        # per-class sigmoid BCE (ResNet Strikes Back); mixup's soft targets are binarised at
        # bce_target_thresh when set, and mixup has smoothed them already
        return dict(type="bce", smoothing=0.0 if mixup_active else cfg.smoothing,
                    target_threshold=cfg.bce_target_thresh)
    if mixup_active:
        return "soft_target_ce"  # mixup builds soft (smoothed) targets itself
    if cfg.smoothing:
        return dict(type="label_smoothing_ce", smoothing=cfg.smoothing)
    return "cross_entropy"


register_loss("cross_entropy")(nn.CrossEntropyLoss)
register_loss("label_smoothing_ce")(LabelSmoothingCrossEntropy)
register_loss("soft_target_ce")(SoftTargetCrossEntropy)
register_loss("bce")(BinaryCrossEntropy)


@register_loss("distillation")
class DistillationLoss(nn.Module):
    """DeiT's distillation (Touvron et al., 2021): ``(1 - alpha) * base + alpha * teacher term``.
    The teacher term is the KL divergence between the student's and the teacher's distributions
    softened by ``tau`` (``kind="soft"``), or the cross-entropy against the teacher's top class
    (``kind="hard"``). A student returning (class logits, distillation logits), DeiT's
    distillation token, has the base loss on the first and the teacher term on the second."""

    needs_teacher = True

    def __init__(self, base="soft_target_ce", alpha=0.5, tau=1.0, kind="soft"):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"distillation kind must be 'soft' or 'hard', got {kind!r}")
        self.base = build_loss(base)
        self.alpha, self.tau, self.kind = float(alpha), float(tau), kind

    def forward(self, outputs, targets, teacher_outputs):
        logits, distill_logits = outputs if isinstance(outputs, (tuple, list)) \
            else (outputs, outputs)
        if self.kind == "soft":
            t = self.tau
            distill = F.kl_div(F.log_softmax(distill_logits / t, dim=1),
                               F.log_softmax(teacher_outputs / t, dim=1), reduction="sum",
                               log_target=True) * (t * t) / distill_logits.numel()
        else:
            distill = F.cross_entropy(distill_logits, teacher_outputs.argmax(dim=1))
        return dict(loss_base=(1 - self.alpha) * self.base(logits, targets),
                    loss_distill=self.alpha * distill)


from . import sparsifiner_losses  # noqa: E402,F401  (registers the Sparsifiner recipe's losses)
