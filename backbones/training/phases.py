"""Recipes in phases: which parameters train, with which loss, under which learning-rate schedule,
epoch by epoch (Sparsifiner's two-phase recipe: 5 epochs that train only the connectivity
predictor on an attention-reconstruction loss, then 45 that train only the backbone with
distillation, the cosine schedule restarted).

A recipe lists its phases in order::

    phases = [
        dict(name="attn_recon", epochs=5, train=["*.mask_predictor.*"], lr=3e-4, min_lr=2e-4,
             warmup_epochs=3, loss=dict(type="sparsifiner_attn_recon")),
        dict(name="cls_distill", epochs=45, freeze=["*.mask_predictor.*"], lr=8e-5, min_lr=2e-6,
             warmup_epochs=3, loss=dict(type="sparsifiner_distill")),
    ]

Per phase: ``epochs``; ``train`` (``fnmatch`` patterns of the parameters that learn; default all)
or ``freeze`` (patterns of those that do not); ``loss`` (a registered loss, as a recipe's
``loss``); ``lr`` (absolute, not scaled with the batch: the phased recipes give the lr of their
own global batch) and optionally ``min_lr``, ``warmup_epochs``, ``warmup_lr``, ``sched`` (default
the recipe's). The run lasts the phases' epochs together (the recipe's ``epochs`` must say so) and
one optimizer holds every parameter: a parameter outside its phase gets no gradient, so the
optimizer neither moves nor decays it and its state waits for the phase that trains it. Each phase
has its own timm scheduler, restarted at the phase's first epoch. Everything is a function of the
epoch, so a resumed run (mid-phase or at a boundary) continues exactly.
"""
import fnmatch

from mmengine.hooks import Hook

__all__ = ["Phase", "PhaseHook", "PhasedScheduler", "parse_phases"]

_PHASE_KEYS = {"name", "epochs", "train", "freeze", "loss", "lr", "min_lr", "warmup_epochs",
               "warmup_lr", "sched"}


class Phase:
    """One phase of a recipe (see the module docstring), with its first epoch."""

    def __init__(self, spec, first_epoch, cfg):
        unknown = set(spec) - _PHASE_KEYS
        if unknown:
            raise ValueError(f"phase {spec.get('name', '?')!r}: unknown keys {sorted(unknown)}; a "
                             f"phase takes {sorted(_PHASE_KEYS)}")
        for key in ("name", "epochs", "loss", "lr"):
            if key not in spec:
                raise ValueError(f"phase {spec.get('name', '?')!r} needs {key}=")
        if "train" in spec and "freeze" in spec:
            raise ValueError(f"phase {spec['name']!r}: give train= or freeze=, not both")
        self.name, self.epochs, self.first_epoch = spec["name"], int(spec["epochs"]), first_epoch
        if self.epochs < 1:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 1, got {self.epochs}")
        self.train = tuple(spec.get("train", ("*",)))
        self.freeze = tuple(spec.get("freeze", ()))
        self.loss_spec = spec["loss"]
        self.lr = float(spec["lr"])
        self.min_lr = float(spec.get("min_lr", cfg.min_lr))
        self.warmup_epochs = int(spec.get("warmup_epochs", cfg.warmup_epochs))
        self.warmup_lr = float(spec.get("warmup_lr", cfg.warmup_lr))
        self.sched = spec.get("sched", cfg.sched)

    def trains(self, param_name):
        if self.freeze:
            return not any(fnmatch.fnmatch(param_name, p) for p in self.freeze)
        return any(fnmatch.fnmatch(param_name, p) for p in self.train)

    def contains(self, epoch):
        return self.first_epoch <= epoch < self.first_epoch + self.epochs


def parse_phases(cfg):
    """The recipe's phases, in order (an empty list for an ordinary recipe)."""
    specs = cfg.get("phases") or []
    if specs and cfg.get("loss"):
        raise ValueError("a phased recipe names its losses per phase: drop the top-level loss=")
    phases, first = [], 0
    for spec in specs:
        phases.append(Phase(dict(spec), first, cfg))
        first += phases[-1].epochs
    total = sum(p.epochs for p in phases)
    if phases and cfg.epochs != total:
        raise ValueError(f"a phased recipe lasts its phases' epochs ({total}), but epochs="
                         f"{cfg.epochs}: change the phases' epochs= (and epochs to match)")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique, got {names}")
    return phases


def phase_at(phases, epoch):
    return next((p for p in phases if p.contains(epoch)), phases[-1])


class PhasedScheduler:
    """A timm scheduler per phase behind timm's scheduler interface (``step(epoch)``,
    ``step_update(num_updates)``), each counting from its phase's first epoch / update, so
    ``TimmSchedulerHook`` drives it as any timm scheduler."""

    def __init__(self, phases, optimizer, updates_per_epoch, step_on_epochs):
        from timm.scheduler import create_scheduler_v2
        self.phases, self.updates_per_epoch = phases, updates_per_epoch
        self.schedulers = []
        for phase in phases:
            for group in optimizer.param_groups:  # each scheduler reads its base lr from here
                group["lr"] = phase.lr
                group.pop("initial_lr", None)
            scheduler, _ = create_scheduler_v2(
                optimizer, sched=phase.sched, num_epochs=phase.epochs,
                warmup_epochs=phase.warmup_epochs, warmup_lr=phase.warmup_lr,
                min_lr=phase.min_lr, cooldown_epochs=0, step_on_epochs=step_on_epochs,
                updates_per_epoch=updates_per_epoch)
            self.schedulers.append(scheduler)
        self.current = 0

    def step(self, epoch, metric=None):
        phase = phase_at(self.phases, epoch)
        self.current = self.phases.index(phase)
        self.schedulers[self.current].step(epoch - phase.first_epoch, metric)

    def step_update(self, num_updates, metric=None):
        offset = self.phases[self.current].first_epoch * self.updates_per_epoch
        self.schedulers[self.current].step_update(num_updates - offset, metric)


class PhaseHook(Hook):
    """At each epoch start: the phase's parameters train (the others get ``requires_grad=False``)
    and its loss is the task's. ``losses``: phase name -> built loss module."""

    priority = "VERY_HIGH"

    def __init__(self, phases, losses):
        self.phases, self.losses = phases, losses

    def before_train_epoch(self, runner):
        from .runtime import net_of
        phase = phase_at(self.phases, runner.epoch)
        trained = 0
        for name, param in net_of(runner).named_parameters():
            param.requires_grad_(phase.trains(name))
            trained += param.requires_grad
        if not trained:
            raise ValueError(f"phase {phase.name!r} trains no parameter: its train= / freeze= "
                             "patterns match every parameter name or none")
        task = runner.model.module if hasattr(runner.model, "module") else runner.model
        task.train_loss = self.losses[phase.name]
        if runner.epoch == phase.first_epoch or not getattr(self, "_announced", False):
            runner.logger.info(f"phase {phase.name!r} (epochs {phase.first_epoch}-"
                               f"{phase.first_epoch + phase.epochs - 1}): {trained} parameter "
                               f"tensors train, loss {type(task.train_loss).__name__}")
            self._announced = True
