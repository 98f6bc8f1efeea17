"""Every learning-rate schedule, each a function of the resolved config.

Classification: timm's schedulers (``sched``, ``epochs``, ``warmup_epochs``, ``warmup_lr``,
``min_lr``, ``cooldown_epochs``, ``sched_on_updates``; ``decay_epochs`` / ``decay_milestones`` /
``decay_rate`` for the step schedules), driven as timm's train.py drives them by
``TimmSchedulerHook``. Detection: mmdet's step schedule by epochs (linear warm-up over
``warmup_iters``, then x ``gamma`` at each of ``lr_steps``). Segmentation: mmseg's schedule by
iterations (warm-up, then ``poly`` or ``cosine`` decay to ``min_lr``). The dense schedules are
mmengine param schedulers, saved in the checkpoints; the timm ones have no state to save.
"""
from mmengine.hooks import Hook

__all__ = ["TimmSchedulerHook", "create_timm_scheduler", "detection_schedule",
           "segmentation_schedule"]


def create_timm_scheduler(cfg, optimizer, steps_per_epoch, phases=None):
    """(timm scheduler, total epochs including the cool-down) for a classification run of
    ``steps_per_epoch`` batches per epoch (``grad_accum_steps`` batches per optimizer update); a
    phased recipe (``backbones.training.phases``) gets one scheduler per phase."""
    from timm.scheduler import create_scheduler_v2
    updates_per_epoch = max(1, steps_per_epoch // cfg.grad_accum_steps)
    if phases:
        from .phases import PhasedScheduler
        return (PhasedScheduler(phases, optimizer, updates_per_epoch, not cfg.sched_on_updates),
                sum(p.epochs for p in phases))
    return create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, cooldown_epochs=cfg.cooldown_epochs,
        decay_epochs=cfg.decay_epochs, decay_milestones=list(cfg.decay_milestones),
        decay_rate=cfg.decay_rate,
        step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)


class TimmSchedulerHook(Hook):
    """Drives a timm scheduler exactly as timm's train.py does: ``step(epoch)`` at epoch
    boundaries, ``step_update(num_updates)`` after every optimizer update. Its lr is a function
    of (epoch, update), so a resumed run picks up where it stopped."""

    priority = "VERY_HIGH"

    def __init__(self, scheduler, accum_steps):
        self.scheduler, self.accum_steps = scheduler, accum_steps

    def before_train_epoch(self, runner):
        self.scheduler.step(runner.epoch)
        self.scheduler.step_update(num_updates=runner.iter // self.accum_steps)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if (runner.iter + 1) % self.accum_steps == 0:
            self.scheduler.step_update(num_updates=(runner.iter + 1) // self.accum_steps)


def _warmup(cfg):
    return [dict(type="LinearLR", start_factor=cfg.warmup_ratio, by_epoch=False, begin=0,
                 end=cfg.warmup_iters)] if cfg.warmup_iters > 0 else []


def detection_schedule(cfg):
    """mmengine param schedulers of mmdet's step schedule."""
    return _warmup(cfg) + [dict(type="MultiStepLR", by_epoch=True, begin=0, end=cfg.epochs,
                                milestones=list(cfg.lr_steps), gamma=cfg.gamma)]


def segmentation_schedule(cfg):
    """mmengine param schedulers of mmseg's iteration schedule (poly or cosine after warm-up)."""
    if cfg.sched not in ("poly", "cosine"):
        raise ValueError(f"sched must be 'poly' or 'cosine' for segmentation, got {cfg.sched!r}")
    decay = dict(type="PolyLR", power=cfg.poly_power) if cfg.sched == "poly" else \
        dict(type="CosineAnnealingLR", T_max=cfg.max_iters - cfg.warmup_iters)
    return _warmup(cfg) + [dict(decay, by_epoch=False, begin=cfg.warmup_iters, end=cfg.max_iters,
                                eta_min=cfg.min_lr)]
