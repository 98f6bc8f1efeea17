"""Detection and segmentation training on the classification CLI's engine (mmengine's Runner,
torchrun DDP, resume, AMP, wandb): ``tools/train_det.py`` and ``tools/train_seg.py``.

Settings resolve as for classification: ``DEFAULTS`` <- config file (``configs/coco/*.py``,
``configs/ade20k/*.py``, ``_base_`` inheritance) <- flags <- ``--cfg-options``. The schedules are
the papers' mmdet / mmseg ones: detection by epochs (linear warm-up over ``warmup_iters``, then
x ``gamma`` at each of ``lr_steps``), segmentation by iterations (warm-up, then poly decay).
AdamW with no weight decay on norms, biases, position embeddings and relative-position tables
(mmdet / mmseg ``paramwise_cfg``).
"""
import argparse
import os
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from ..training import engine as cls_engine
from ..training.data import DataError
from .data import (
    ADE20KSegmentation, CocoDetection, detection_collate, summarize_coco, to_coco_results)
from .detection import DETECTORS, build_detector
from .metrics import intersect_and_union
from .segmentation import build_segmentor

__all__ = ["DEFAULTS", "build_parser", "resolve_config", "build_runner", "train"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULTS = dict(
    task=None,
    # model
    model=None, model_kwargs={}, pretrained=False, initial_checkpoint=None, drop_path=None,
    detector="mask_rcnn", head="upernet", num_classes=None, frozen_stages=-1, norm_eval=False,
    # COCO (paths relative to data_dir)
    train_images="train2017", val_images="val2017",
    train_ann="annotations/instances_train2017.json", val_ann="annotations/instances_val2017.json",
    # shorter side: one value, or the multi-scale choices (3x schedules); evaluation uses the last
    min_size=(800,), max_size=1333,
    # ADE20K
    train_split="training", val_split="validation", reduce_zero_label=True,
    scale=(2048, 512), crop_size=(512, 512), ratio_range=(0.5, 2.0), test_mode="whole",
    slide_stride=(341, 341),
    data_dir=None, workers=2, batch_size=2,
    # optimisation
    opt="adamw", lr=1e-4, weight_decay=0.05, opt_betas=(0.9, 0.999), clip_grad=None,
    no_decay_keys=("norm", "pos_embed", "relative_position", "rel_pos"),
    epochs=12, lr_steps=(8, 11), gamma=0.1,  # detection: step schedule by epochs
    max_iters=160000, sched="poly", poly_power=1.0, min_lr=0.0,  # segmentation: poly / cosine
    warmup_iters=500, warmup_ratio=0.001,
    # runtime
    amp=False, amp_dtype="bfloat16", device=None, seed=0, deterministic=False,
    output="./output", experiment=None, checkpoint_hist=3, resume=None, log_wandb=False,
    wandb_project="backbone-zoo", log_interval=50, val_interval=None,
)

_FLAGS = {
    "model": (str, "zoo or timm model name"), "data_dir": (str, "data root"),
    "num_classes": (int, "classes (default: the data set's)"),
    "detector": (str, f"one of {', '.join(DETECTORS)}"), "head": (str, "upernet or semantic_fpn"),
    "initial_checkpoint": (str, "backbone or whole-model weights to start from"),
    "drop_path": (float, "stochastic depth rate of the backbone"),
    "batch_size": (int, "images per process"), "workers": (int, "data-loader workers"),
    "lr": (float, "learning rate"), "weight_decay": (float, "weight decay"),
    "epochs": (int, "detection epochs"), "max_iters": (int, "segmentation iterations"),
    "warmup_iters": (int, "linear warm-up iterations"),
    "device": (str, "cuda, cpu (default: cuda if available)"), "seed": (int, "random seed"),
    "output": (str, "output root"), "experiment": (str, "run name"),
    "resume": (str, "a run folder or checkpoint to resume, or 'auto'"),
    "log_interval": (int, "log every N iterations"),
    "val_interval": (int, "validate every N epochs (detection) / iterations (segmentation)"),
}
_SWITCHES = {"pretrained": "start from the backbone's ImageNet weights", "amp": "mixed precision",
             "log_wandb": "log to wandb", "norm_eval": "BatchNorms of the backbone in eval mode"}


def build_parser(task):
    prog = "tools/train_det.py" if task == "detection" else "tools/train_seg.py"
    p = argparse.ArgumentParser(prog=prog, description=(
        f"Train a {'COCO detector' if task == 'detection' else 'semantic segmentor'} on a zoo "
        "backbone with mmengine's Runner (torchrun for DDP)."))
    p.add_argument("config", help="recipe, e.g. configs/coco/cswin_tiny_224_mask_rcnn_1x.py")
    for key, (typ, help_) in _FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, default=None, help=help_)
    for key, help_ in _SWITCHES.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, action="store_true", default=None,
                       help=help_)
    p.add_argument("--model-kwargs", nargs="*", default=None, action=DictAction)
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                   help="override any config key, key=value")
    return p


def resolve_config(args, task):
    if not os.path.isfile(args.config):
        raise FileNotFoundError(f"config {args.config!r} not found; recipes live in "
                                f"configs/{'coco' if task == 'detection' else 'ade20k'}/")
    cfg = Config(dict(DEFAULTS, task=task))
    cfg.merge_from_dict(Config.fromfile(args.config).to_dict())
    cfg.merge_from_dict({k: v for k, v in vars(args).items()
                         if v is not None and k not in ("config", "cfg_options", "model_kwargs")})
    if args.model_kwargs:
        cfg.model_kwargs = dict(cfg.model_kwargs, **args.model_kwargs)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.config_file = os.path.abspath(args.config)
    unknown = sorted(set(cfg.to_dict()) - set(DEFAULTS) - {"config_file", "paper"})
    if unknown:
        raise KeyError(f"unknown config keys {unknown} (see backbones.dense.engine.DEFAULTS)")
    if cfg.task != task:
        raise ValueError(f"{args.config} is a {cfg.task} recipe; use "
                         f"tools/train_{'det' if cfg.task == 'detection' else 'seg'}.py")
    if cfg.model is None:
        raise ValueError("no model: pass --model NAME or set model in the config")
    if cfg.data_dir is None:
        raise ValueError("--data-dir is required (COCO root with train2017/ val2017/ "
                         "annotations/, or ADE20K root with images/ annotations/)")
    return cfg


# ----------------------------------------------------------------------------------------------
# mmengine model / metric wrappers
# ----------------------------------------------------------------------------------------------

class _ListPreprocessor(BaseDataPreprocessor):
    """(images, targets) batches of lists to the device; images keep their own sizes."""

    def forward(self, data, training=False):
        images, targets = data
        return dict(inputs=[self.cast_data(im) for im in images],
                    targets=[self.cast_data(t) for t in targets])


class ZooDetector(BaseModel):
    """A torchvision detector as an mmengine model (losses renamed ``loss_*`` so mmengine sums
    every one of them)."""

    def __init__(self, net):
        super().__init__(data_preprocessor=_ListPreprocessor())
        self.net = net

    def init_weights(self):
        """Nothing: torchvision / timm initialised the weights (see the classification engine)."""

    def forward(self, inputs, targets=None, mode="tensor"):
        if mode == "loss":
            losses = self.net(inputs, [{k: v for k, v in t.items() if k != "image_id"}
                                       for t in targets])
            return {k if "loss" in k else f"loss_{k}": v for k, v in losses.items()}
        outputs = self.net(inputs)
        if mode == "predict":
            return [dict(output={k: v.detach().cpu() for k, v in o.items()},
                         image_id=t["image_id"]) for o, t in zip(outputs, targets)]
        return outputs


class CocoMetric(BaseMetric):
    """COCOeval box (and mask) AP, in percent: ``coco/bbox_AP``, ``coco/segm_AP``, ..."""

    default_prefix = "coco"

    def __init__(self, dataset, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            self.results.append(to_coco_results(sample["output"], sample["image_id"],
                                                self.dataset.cat_ids))

    def compute_metrics(self, results):
        bbox = [r for res in results for r in res["bbox"]]
        segm = [r for res in results for r in res["segm"]]
        return summarize_coco(self.dataset, bbox, segm)


class ZooSegmentationModel(BaseModel):
    """A :class:`Segmentor` as an mmengine model; predictions are class maps at each label's
    size (the image was rescaled by the dataset, the logits are resized back)."""

    def __init__(self, net):
        super().__init__(data_preprocessor=_ListPreprocessor())
        self.net = net

    def init_weights(self):
        """Nothing: the heads initialise themselves; the backbone comes from timm."""

    def forward(self, inputs, targets=None, mode="tensor"):
        if mode == "loss":
            return self.net.loss(torch.stack(inputs), torch.stack(targets))
        preds = []
        for image, label in zip(inputs, targets):
            logits = self.net(image[None])
            logits = torch.nn.functional.interpolate(logits, size=label.shape[-2:],
                                                     mode="bilinear", align_corners=False)
            preds.append(dict(pred=logits.argmax(1)[0].cpu(), label=label.cpu()))
        return preds


class SegIoUMetric(BaseMetric):
    """mmseg's IoUMetric: ``seg/mIoU``, ``seg/mAcc``, ``seg/aAcc`` in percent."""

    default_prefix = "seg"

    def __init__(self, num_classes, ignore_index=255, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def process(self, data_batch, data_samples):
        for s in data_samples:
            self.results.append(torch.stack(intersect_and_union(
                s["pred"], s["label"], self.num_classes, self.ignore_index)).double())

    def compute_metrics(self, results):
        intersect, union, _, label = torch.stack(results).sum(0)
        return dict(mIoU=100 * torch.nanmean(intersect / union).item(),
                    mAcc=100 * torch.nanmean(intersect / label).item(),
                    aAcc=100 * (intersect.sum() / label.sum()).item())


# ----------------------------------------------------------------------------------------------
# Building a run
# ----------------------------------------------------------------------------------------------

def param_groups(net, weight_decay, no_decay_keys):
    """Two AdamW groups: decayed weights, and (mmdet / mmseg ``paramwise_cfg``) biases, norms,
    position embeddings and relative-position tables without decay."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in no_decay_keys)
        (no_decay if skip else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.)]


def _datasets(cfg):
    root = cfg.data_dir
    if cfg.task == "detection":
        masks = cfg.detector in ("mask_rcnn", "cascade_mask_rcnn")
        train = CocoDetection(os.path.join(root, cfg.train_images), os.path.join(root, cfg.train_ann),
                              train=True, masks=masks, num_classes=cfg.num_classes)
        val = CocoDetection(os.path.join(root, cfg.val_images), os.path.join(root, cfg.val_ann),
                            masks=masks, num_classes=cfg.num_classes)
        return train, val, len(train.cat_ids)
    num_classes = cfg.num_classes or 150
    common = dict(scale=tuple(cfg.scale), reduce_zero_label=cfg.reduce_zero_label,
                  num_classes=num_classes)
    return (ADE20KSegmentation(root, cfg.train_split, train=True, crop_size=tuple(cfg.crop_size),
                               ratio_range=tuple(cfg.ratio_range), **common),
            ADE20KSegmentation(root, cfg.val_split, **common), num_classes)


def _build_net(cfg, num_classes):
    backbone_kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path is not None:
        backbone_kwargs["drop_path_rate"] = cfg.drop_path
    backbone_kwargs.update(frozen_stages=cfg.frozen_stages, norm_eval=cfg.norm_eval)
    if cfg.task == "detection":
        return build_detector(cfg.detector, cfg.model, num_classes, pretrained=cfg.pretrained,
                              min_size=tuple(cfg.min_size), max_size=cfg.max_size,
                              **backbone_kwargs)
    net = build_segmentor(cfg.model, num_classes, head=cfg.head, pretrained=cfg.pretrained,
                          **backbone_kwargs)
    net.test_mode, net.crop_size, net.stride = (cfg.test_mode, tuple(cfg.crop_size),
                                                tuple(cfg.slide_stride))
    return net


def build_runner(cfg):
    from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook,
                                ParamSchedulerHook, RuntimeInfoHook)

    cls_engine._install_mmengine_fixes()
    ZooRunner = cls_engine._zoo_runner_class()
    device = cls_engine._resolve_device(cfg)
    launcher, world_size, rank = cls_engine._setup_distributed(device)
    torch.manual_seed(cfg.seed)
    train_set, val_set, num_classes = _datasets(cfg)
    net = _build_net(cfg, num_classes)
    if cfg.task == "segmentation":  # padded crop pixels normalise to 0, as mmseg pads
        train_set.pad_value = net.image_mean.view(3, 1, 1).clone()
        if world_size > 1 and device.type == "cuda":  # mmseg's heads use SyncBN
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    elif cfg.detector == "cascade_mask_rcnn" and world_size > 1 and device.type == "cuda":
        # the cascade's 4conv1fc box heads use SyncBN in mmdet (the backbone keeps its norms)
        net.roi_heads = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net.roi_heads)
    if cfg.initial_checkpoint:
        state = torch.load(cfg.initial_checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        missing, unexpected = net.load_state_dict(state, strict=False)
        if not set(state) - set(unexpected):
            raise ValueError(f"--initial-checkpoint {cfg.initial_checkpoint}: none of its keys "
                             "belong to this model")
    if cfg.task == "detection":
        model = ZooDetector(net)
    else:
        model = ZooSegmentationModel(net)

    optimizer = torch.optim.AdamW(param_groups(net, cfg.weight_decay, cfg.no_decay_keys),
                                  lr=cfg.lr, betas=tuple(cfg.opt_betas))
    clip = dict(max_norm=cfg.clip_grad) if cfg.clip_grad else None
    wrapper = dict(optimizer=optimizer, clip_grad=clip)
    if cfg.amp and device.type == "cuda":
        optim_wrapper = AmpOptimWrapper(dtype=cfg.amp_dtype, **wrapper)
    elif cfg.amp:
        optim_wrapper = cls_engine.CpuAmpOptimWrapper(**wrapper)
    else:
        optim_wrapper = OptimWrapper(**wrapper)

    by_epoch = cfg.task == "detection"
    warmup = [dict(type="LinearLR", start_factor=cfg.warmup_ratio, by_epoch=False, begin=0,
                   end=cfg.warmup_iters)] if cfg.warmup_iters > 0 else []
    if by_epoch:
        schedulers = warmup + [dict(type="MultiStepLR", by_epoch=True, begin=0, end=cfg.epochs,
                                   milestones=list(cfg.lr_steps), gamma=cfg.gamma)]
        train_cfg = dict(by_epoch=True, max_epochs=cfg.epochs, val_interval=cfg.val_interval or 1)
        evaluator = [CocoMetric(val_set)]
        checkpoint = CheckpointHook(interval=1, by_epoch=True, max_keep_ckpts=cfg.checkpoint_hist,
                                    save_last=True)
    else:
        val_interval = cfg.val_interval or max(1, cfg.max_iters // 10)
        if cfg.sched not in ("poly", "cosine"):
            raise ValueError(f"sched must be 'poly' or 'cosine' for segmentation, got {cfg.sched!r}")
        decay = dict(type="PolyLR", power=cfg.poly_power) if cfg.sched == "poly" else \
            dict(type="CosineAnnealingLR", T_max=cfg.max_iters - cfg.warmup_iters)
        schedulers = warmup + [dict(decay, by_epoch=False, begin=cfg.warmup_iters,
                                    end=cfg.max_iters, eta_min=cfg.min_lr)]
        train_cfg = dict(by_epoch=False, max_iters=cfg.max_iters, val_interval=val_interval)
        evaluator = [SegIoUMetric(num_classes)]
        checkpoint = CheckpointHook(interval=val_interval, by_epoch=False,
                                    max_keep_ckpts=cfg.checkpoint_hist, save_last=True)

    collate = dict(type=detection_collate)
    loader = dict(num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                  pin_memory=device.type == "cuda", collate_fn=collate)
    train_loader = dict(dataset=train_set, batch_size=cfg.batch_size, drop_last=not by_epoch,
                        sampler=dict(type="DefaultSampler" if by_epoch else "InfiniteSampler",
                                     shuffle=True, seed=cfg.seed), **loader)
    val_loader = dict(dataset=val_set, batch_size=1 if not by_epoch else cfg.batch_size,
                      sampler=dict(type="DefaultSampler", shuffle=False), drop_last=False,
                      **loader)

    experiment = cfg.experiment or f"{cfg.model}-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    work_dir = os.path.abspath(os.path.join(cfg.output, experiment))
    cls_engine._TRUSTED_ROOTS.add(os.path.abspath(cfg.output))
    resume, load_from = False, None
    if cfg.resume:
        resume, load_from, work_dir = cls_engine._resume_target(cfg, work_dir)
    else:
        work_dir = cls_engine._fresh_dir(work_dir)
    cls_engine._TRUSTED_ROOTS.add(work_dir)
    vis_backends = [dict(type="LocalVisBackend")]
    if cfg.log_wandb:
        vis_backends.append(dict(type="WandbVisBackend",
                                 init_kwargs=dict(project=cfg.wandb_project, name=experiment)))
    runner = ZooRunner(
        model=model, work_dir=work_dir, train_dataloader=train_loader, val_dataloader=val_loader,
        train_cfg=train_cfg, val_cfg=dict(), val_evaluator=evaluator,
        optim_wrapper=optim_wrapper, param_scheduler=schedulers,
        default_hooks=dict(runtime_info=RuntimeInfoHook(), timer=IterTimerHook(),
                           logger=LoggerHook(interval=cfg.log_interval),
                           param_scheduler=ParamSchedulerHook(), checkpoint=checkpoint,
                           sampler_seed=DistSamplerSeedHook()),
        launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend="nccl" if device.type == "cuda" else "gloo"),
                     cudnn_benchmark=False),
        randomness=dict(seed=cfg.seed, deterministic=bool(cfg.deterministic)),
        visualizer=dict(type="Visualizer", vis_backends=vis_backends,
                        name=f"visualizer-{experiment}-{id(cfg)}"),
        resume=resume, load_from=load_from,
        experiment_name=f"{experiment}-{os.getpid()}-{id(cfg)}", log_level="INFO",
        cfg=dict(cfg.to_dict(), model_wrapper_cfg=dict(
            type="MMDistributedDataParallel", broadcast_buffers=False, find_unused_parameters=True,
            device_ids=None if device.type != "cuda" else [torch.cuda.current_device()])),
    )
    runner.logger.info(
        f"{cfg.task} {cfg.detector if by_epoch else cfg.head} on {cfg.model}: "
        f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params, {num_classes} classes, "
        f"{len(train_set)} train / {len(val_set)} val images, {world_size} process(es) on "
        f"{device.type}, global batch {cfg.batch_size * world_size}, lr {cfg.lr:g}")
    return runner


def train(cfg):
    runner = build_runner(cfg)
    runner.train()
    return runner


def main(task, argv=None):
    import sys
    args = build_parser(task).parse_args(argv)
    try:
        cfg = resolve_config(args, task)
        runner = train(cfg)
    except (DataError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if runner.world_size > 1:  # lets a user (and the tests) see that the ranks agree
        net = runner.model.module.net if hasattr(runner.model, "module") else runner.model.net
        # parameters only: BatchNorm statistics stay per process on the CPU (SyncBN needs CUDA)
        cls_engine.print_rank_checksum(runner.rank, net.parameters())
    return runner
