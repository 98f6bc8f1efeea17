"""The classification task: a timm model as an mmengine model (mixup / cutmix, the recipe's loss,
an optional frozen teacher), top-1 / top-5, the model and its optimizer from the config, and
``build_runner``, which puts one run together on the runtime."""
import timm
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseDataPreprocessor, BaseModel

from . import data, runtime
from .checkpoint import head_keys, load_weights, read_state_dict
from .config import scaled_lr
from .fsdp import ShardedCheckpointHook, register_sharded_wrapper, shard_model
from .hooks import (ExportHook, MaxStepsHook, ModelEmaHook, ProgressHook, ReseedHook,
                    StopAfterEpochsHook)
from .losses import build_loss, recipe_loss
from .phases import PhaseHook, parse_phases
from .schedule import TimmSchedulerHook, create_timm_scheduler

__all__ = ["ImagePreprocessor", "TopKAccuracy", "ZooClassifier", "build_runner", "create_net",
           "create_optimizer", "scale_head_init", "train"]


class ImagePreprocessor(BaseDataPreprocessor):
    """(images, labels) batches to the device, channels-last when asked."""

    def __init__(self, channels_last=False):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, data, training=False):
        inputs, labels = data[0], data[1]
        inputs = self.cast_data(inputs)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return dict(inputs=inputs, labels=self.cast_data(labels))


class ZooClassifier(BaseModel):
    """mmengine's model interface around a timm classifier (``self.net``): ``mode='loss'`` applies
    mixup / cutmix and ``loss`` (with the ``teacher``'s outputs on the same inputs when the loss
    needs them), ``mode='predict'`` returns logits for the metric."""

    def __init__(self, net, loss, mixup_fn=None, teacher=None, channels_last=False, compile=False):
        super().__init__(data_preprocessor=ImagePreprocessor(channels_last))
        self.net = net
        self.mixup_fn = mixup_fn
        self.train_loss = loss
        # both kept out of the module tree: state_dict keys stay timm's (no compiled wrapper), and
        # the teacher stays in eval mode and out of checkpoints, the EMA, exports and DDP
        object.__setattr__(self, "_forward_net", torch.compile(net) if compile else net)
        object.__setattr__(self, "teacher", teacher)

    def init_weights(self):
        """Nothing: the weights come from timm's constructor, ``--pretrained`` or
        ``--initial-checkpoint``. (mmengine's default would call the init_weights() of timm
        models that define one, e.g. ViTs, re-initialising pretrained weights.)"""

    def forward(self, inputs, labels=None, mode="tensor"):
        if mode == "loss":
            targets = labels
            if self.mixup_fn is not None:
                inputs, targets = self.mixup_fn(inputs, labels)
            loss_fn = self.train_loss
            forward_student = getattr(loss_fn, "forward_student", None)
            outputs = forward_student(self.net, inputs) if forward_student \
                else self._forward_net(inputs)
            if self.teacher is None:
                loss = loss_fn(outputs, targets)
            else:
                forward_teacher = getattr(loss_fn, "forward_teacher", None)
                with torch.no_grad():
                    teacher_outputs = forward_teacher(self.teacher, inputs) if forward_teacher \
                        else self.teacher(inputs)
                loss = loss_fn(outputs, targets, teacher_outputs)
            return loss if isinstance(loss, dict) else dict(loss=loss)
        logits = self._forward_net(inputs)
        if mode == "predict":
            return [dict(logits=logits.detach().float(), labels=labels)]
        return logits


class TopKAccuracy(BaseMetric):
    """Top-1 / top-5 accuracy in percent (``accuracy/top1``, ``accuracy/top5``)."""

    default_prefix = "accuracy"

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            logits, labels = sample["logits"], sample["labels"].to(sample["logits"].device)
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            hit = top == labels[:, None]
            self.results.append((labels.numel(), hit[:, :1].any(1).sum().item(),
                                 hit.any(1).sum().item()))

    def compute_metrics(self, results):
        n = sum(r[0] for r in results)
        return dict(top1=100.0 * sum(r[1] for r in results) / max(n, 1),
                    top5=100.0 * sum(r[2] for r in results) / max(n, 1))


def _count_classes(cfg):
    if cfg.num_classes:
        return cfg.num_classes
    if cfg.data_dir is None:
        return data.DIGITS_CLASSES
    if cfg.dataset in ("", None, "folder", "imagefolder"):
        return len(data.check_image_folder(cfg.data_dir, cfg.train_split)[1])
    raise ValueError(f"pass --num-classes for dataset {cfg.dataset!r}")


def create_net(cfg):
    """The timm model ``cfg`` names, with its weights (``--pretrained``, then
    ``--initial-checkpoint``, whose head is replaced when ``--num-classes`` differs)."""
    import backbones  # noqa: F401  (registers the zoo models)
    name = cfg.model
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: not a timm or zoo model name "
                         f"(zoo models: {backbones.list_zoo_models()})")
    kwargs = dict(cfg.model_kwargs or {})
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    if cfg.drop:
        kwargs["drop_rate"] = cfg.drop
    net = timm.create_model(name, pretrained=cfg.pretrained, num_classes=_count_classes(cfg),
                            **kwargs)
    if cfg.initial_checkpoint:
        path = cfg.initial_checkpoint
        load_weights(net, read_state_dict(path, what="--initial-checkpoint"), path,
                     num_classes_given=bool(cfg.num_classes))
    if cfg.head_init_scale is not None:
        scale_head_init(net, cfg.head_init_scale)
    if cfg.grad_checkpointing:
        net.set_grad_checkpointing(True)
    return net


@torch.no_grad()
def scale_head_init(net, scale):
    """timm's ``--head-init-scale``: the classifier's initial weight and bias multiplied by
    ``scale`` (applied, as in timm, after any pretrained or initial-checkpoint weights)."""
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    heads = [m for m in (head if isinstance(head, (tuple, list)) else [head])
             if isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not heads:
        raise ValueError(f"head_init_scale: {type(net).__name__} has no classifier with weights "
                         f"to scale (get_classifier() is {type(head).__name__})")
    for m in heads:
        m.weight.mul_(scale)
        if getattr(m, "bias", None) is not None:
            m.bias.mul_(scale)


def create_optimizer(net, cfg, lr):
    """timm's optimizer factory: no weight decay on 1-D params, biases and
    ``net.no_weight_decay()`` (unless ``weight_decay_all``), layer-wise decay, and, for the
    papers' fine-tunes, a backbone lr scaled against the head's (``lr_scale`` groups, which timm's
    schedulers honour)."""
    from timm.optim import create_optimizer_v2, param_groups_weight_decay
    extra = {"eps": cfg.opt_eps, "betas": tuple(cfg.opt_betas)} \
        if cfg.opt.lower() in ("adamw", "adam", "nadamw", "lamb", "adan") else {}
    if cfg.backbone_lr_scale is None:
        return create_optimizer_v2(net, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, layer_decay=cfg.layer_decay,
                                   filter_bias_and_bn=not cfg.weight_decay_all, **extra)
    if cfg.layer_decay:
        raise ValueError("backbone_lr_scale and layer_decay are two ways to lower the backbone "
                         "lr: choose one")
    head = set(head_keys(net, dict(net.named_parameters())))
    if cfg.weight_decay_all:
        groups = [dict(params=[p for p in net.parameters() if p.requires_grad],
                       weight_decay=cfg.weight_decay)]
    else:
        skip = net.no_weight_decay() if hasattr(net, "no_weight_decay") else ()
        groups = param_groups_weight_decay(net, cfg.weight_decay, no_weight_decay_list=skip)
    params_name = {id(p): n for n, p in net.named_parameters()}
    split = []
    for group in groups:
        for is_head in (True, False):
            params = [p for p in group["params"] if (params_name[id(p)] in head) == is_head]
            if params:
                split.append(dict(group, params=params,
                                  lr_scale=1.0 if is_head else cfg.backbone_lr_scale))
    return create_optimizer_v2(split, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, **extra)


def _build_losses_and_teacher(cfg, phases, mixup_active, num_classes, device):
    """({phase name or None: loss module}, teacher or None)."""
    specs = {p.name: p.loss_spec for p in phases} if phases else \
        {None: recipe_loss(cfg, mixup_active)}
    teacher = cfg.get("teacher")
    losses = {name: build_loss(spec) for name, spec in specs.items()}
    needing = [specs[n] for n, loss in losses.items() if getattr(loss, "needs_teacher", False)]
    if needing and not teacher:
        raise ValueError(f"loss {needing[0]!r} compares the student with a teacher: add teacher = "
                         "dict(model=..., checkpoint=...) to the recipe")
    if teacher and not needing:
        raise ValueError(f"the recipe names a teacher, but its loss "
                         f"{', '.join(repr(s) for s in specs.values())} uses none")
    return losses, runtime.build_teacher(teacher, num_classes, device) if teacher else None


def build_runner(cfg):
    """An mmengine Runner for one classification run described by ``cfg`` (see config.DEFAULTS)."""
    from mmengine.hooks import CheckpointHook
    from timm.data import Mixup

    device = runtime.resolve_device(cfg)
    launcher, world_size, rank = runtime.setup_distributed(device)
    if cfg.fsdp and world_size < 2:
        raise ValueError("--fsdp shards the model over processes: launch with torchrun "
                         "--nproc_per_node N (N >= 2)")
    torch.manual_seed(cfg.seed)  # model init identical on every rank (DDP broadcasts anyway)
    net = create_net(cfg)
    skip_counter = data.SkipCounter()
    train_set, val_set = data.build_datasets(cfg, net, skip_counter)

    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                         label_smoothing=cfg.smoothing, num_classes=net.num_classes)
    phases = parse_phases(cfg)
    losses, teacher = _build_losses_and_teacher(cfg, phases, mixup_fn is not None,
                                                net.num_classes, device)
    model = ZooClassifier(net, next(iter(losses.values())), mixup_fn, teacher, cfg.channels_last,
                          cfg.torchcompile)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    if cfg.fsdp:  # shard before the optimizer is built: it must hold the sharded parameters
        shard_model(net, device)
        register_sharded_wrapper()

    lr = phases[0].lr if phases else scaled_lr(cfg, world_size)
    optimizer = create_optimizer(net, cfg, lr)
    clip = None
    if cfg.clip_grad:
        clip = dict(max_norm=cfg.clip_grad) if cfg.clip_mode == "norm" else \
            dict(type="value", clip_value=cfg.clip_grad)
    optim_wrapper = runtime.build_optim_wrapper(
        optimizer, device, cfg.amp, cfg.amp_dtype, accumulative_counts=cfg.grad_accum_steps,
        clip_grad=clip)

    sampler = data.train_sampler(train_set, cfg.seed, world_size, rank, cfg.aug_repeats)
    steps_per_epoch = len(sampler) // cfg.batch_size  # the loader drops the last partial batch
    if cfg.max_train_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_steps)
    scheduler, total_epochs = create_timm_scheduler(cfg, optimizer, steps_per_epoch, phases)
    loader_kwargs = dict(workers=cfg.workers, pin_memory=device.type == "cuda",
                         collate_fn=dict(type="default_collate"))
    train_loader = data.train_loader(train_set, sampler, seed=cfg.seed, rank=rank,
                                     batch_size=cfg.batch_size, drop_last=True, **loader_kwargs)
    val_loader = data.eval_loader(val_set, batch_size=cfg.validation_batch_size or cfg.batch_size,
                                  **loader_kwargs)

    custom_hooks = [TimmSchedulerHook(scheduler, cfg.grad_accum_steps), ReseedHook(cfg.seed),
                    ProgressHook(total_epochs, skip_counter),
                    ExportHook(cfg.model, keep=cfg.checkpoint_hist, model_kwargs=cfg.model_kwargs)]
    if phases:
        custom_hooks.append(PhaseHook(phases, losses))
    if cfg.max_train_steps:
        custom_hooks.append(MaxStepsHook(cfg.max_train_steps))
    if cfg.stop_after_epochs:
        custom_hooks.append(StopAfterEpochsHook(cfg.stop_after_epochs))
    if cfg.model_ema:
        custom_hooks.append(ModelEmaHook(cfg.model_ema_decay, cfg.grad_accum_steps))
    if cfg.fsdp:
        custom_hooks.append(ShardedCheckpointHook())
    runner = runtime.create_runner(
        cfg, experiment=runtime.experiment_name(cfg, cfg.model), device=device, launcher=launcher,
        model=model, train_dataloader=train_loader, val_dataloader=val_loader,
        train_cfg=dict(by_epoch=True, max_epochs=total_epochs, val_interval=cfg.val_interval),
        val_cfg=dict(), val_evaluator=[TopKAccuracy()], optim_wrapper=optim_wrapper,
        # the lr schedule is a function of (epoch, update): no scheduler state to save
        checkpoint_hook=CheckpointHook(interval=1, by_epoch=True,
                                       max_keep_ckpts=cfg.checkpoint_hist, save_last=True,
                                       save_param_scheduler=False),
        custom_hooks=custom_hooks, cudnn_benchmark=device.type == "cuda",
        model_wrapper_cfg=dict(type="ZooShardedWrapper") if cfg.fsdp
        # a phase's frozen parameters get no gradient: DDP must not wait for them
        else runtime.ddp_wrapper_cfg(device, **(dict(find_unused_parameters=True) if phases
                                               else {})))
    runner.zoo = dict(lr=lr, steps_per_epoch=steps_per_epoch, total_epochs=total_epochs,
                      skip_counter=skip_counter, device=device, world_size=world_size)
    runner.logger.info(
        f"{cfg.model}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params, "
        f"{net.num_classes} classes, {len(train_set)} train / {len(val_set)} val images "
        f"({'embedded digits' if cfg.data_dir is None else cfg.data_dir}), {world_size} "
        f"process(es) on {device.type}, global batch {cfg.batch_size * world_size * cfg.grad_accum_steps}, "
        f"lr {lr:.3g}, {total_epochs} epochs")
    return runner


def train(cfg):
    """Build the run and train; returns the runner (its ``zoo`` dict has the run's facts)."""
    runner = build_runner(cfg)
    runner.train()
    data.release_loader_workers(runner.train_dataloader, runner.val_dataloader)
    return runner
