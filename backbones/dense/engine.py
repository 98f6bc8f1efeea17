"""Detection and segmentation training on the training runtime (mmengine's Runner, torchrun DDP,
resume, AMP, wandb): the torchvision detectors and the segmentors as mmengine models, COCO AP and
mIoU as metrics, and ``build_runner``. Settings: ``dense.config``; schedules:
``training.schedule``; loaders: ``training.data`` (resume-exact, as classification's).
"""
import os

import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseDataPreprocessor, BaseModel

from ..training import data, runtime
from ..training.checkpoint import read_state_dict
from ..training.hooks import ReseedHook
from ..training.schedule import detection_schedule, segmentation_schedule
from .config import SEGMENTATION_DATASETS
from .data import (
    ADE20KSegmentation, CocoDetection, VOCSegmentation, detection_collate, summarize_coco,
    to_coco_results)
from .detection import build_detector
from .metrics import intersect_and_union, iou_scores
from .segmentation import build_segmentor

__all__ = ["CocoMetric", "SegIoUMetric", "ZooDetector", "ZooSegmentationModel", "build_optimizer",
           "build_runner", "param_groups", "train"]


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
        """Nothing: torchvision / timm initialised the weights (see the classification task)."""

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
        scores = iou_scores(torch.stack(results).sum(0))
        return {k: scores[k] for k in ("mIoU", "mAcc", "aAcc")}


def param_groups(net, weight_decay, no_decay_keys, backbone_lr_mult=1.0, decay_all=False):
    """Optimizer groups: decayed weights, and (mmdet / mmseg ``paramwise_cfg``) biases, norms,
    position embeddings and relative-position tables without decay (``decay_all``: every
    parameter decays, as the DeepLab code's SGD does); with ``backbone_lr_mult`` != 1 each is
    split again into backbone and heads, the backbone's carrying ``lr_mult`` (the optimizer's lr
    times it)."""
    groups = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        skip = not decay_all and (p.ndim <= 1 or name.endswith(".bias")
                                  or any(k in name for k in no_decay_keys))
        in_backbone = backbone_lr_mult != 1.0 and name.startswith("backbone.")
        groups.setdefault((skip, in_backbone), []).append(p)
    return [dict(params=params, weight_decay=0. if skip else weight_decay,
                 **(dict(lr_mult=backbone_lr_mult) if in_backbone else {}))
            for (skip, in_backbone), params in sorted(groups.items())]


def build_optimizer(net, cfg):
    """AdamW (``opt='adamw'``, the transformer recipes) or SGD with momentum (``opt='sgd'``, the
    DeepLab recipes) over :func:`param_groups`."""
    groups = param_groups(net, cfg.weight_decay, cfg.no_decay_keys, cfg.backbone_lr_mult,
                          cfg.weight_decay_all)
    for group in groups:
        group["lr"] = cfg.lr * group.pop("lr_mult", 1.0)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.opt_betas))


def _datasets(cfg):
    root = cfg.data_dir
    if cfg.task == "detection":
        masks = cfg.detector in ("mask_rcnn", "cascade_mask_rcnn")
        train = CocoDetection(os.path.join(root, cfg.train_images), os.path.join(root, cfg.train_ann),
                              train=True, masks=masks, num_classes=cfg.num_classes)
        val = CocoDetection(os.path.join(root, cfg.val_images), os.path.join(root, cfg.val_ann),
                            masks=masks, num_classes=cfg.num_classes)
        return train, val, len(train.cat_ids)
    num_classes = cfg.num_classes or SEGMENTATION_DATASETS[cfg.dataset]
    if cfg.dataset == "voc":
        common = dict(num_classes=num_classes, label_dir=cfg.label_dir)
        return (VOCSegmentation(root, cfg.train_split, train=True, crop_size=tuple(cfg.crop_size),
                                ratio_range=tuple(cfg.ratio_range), pad_label=cfg.pad_label,
                                **common),
                VOCSegmentation(root, cfg.val_split, **common), num_classes)
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
                          output_stride=cfg.output_stride, **backbone_kwargs)
    if cfg.backbone_bn_momentum is not None:
        for m in net.backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.backbone_bn_momentum
    net.test_mode, net.crop_size, net.stride = (cfg.test_mode, tuple(cfg.crop_size),
                                                tuple(cfg.slide_stride))
    return net


def _load_initial_checkpoint(net, path):
    """Backbone or whole-model weights: every key of the file that the model has."""
    state = read_state_dict(path, what="--initial-checkpoint")
    _, unexpected = net.load_state_dict(state, strict=False)
    if not set(state) - set(unexpected):
        raise ValueError(f"--initial-checkpoint {path}: none of its keys belong to this model")


def build_runner(cfg):
    """An mmengine Runner for one detection or segmentation run described by ``cfg`` (see
    dense.config.DEFAULTS)."""
    from mmengine.dataset import DefaultSampler, InfiniteSampler
    from mmengine.hooks import CheckpointHook

    device = runtime.resolve_device(cfg)
    launcher, world_size, rank = runtime.setup_distributed(device)
    torch.manual_seed(cfg.seed)
    train_set, val_set, num_classes = _datasets(cfg)
    net = _build_net(cfg, num_classes)
    if cfg.task == "segmentation":
        if cfg.dataset == "ade20k":  # padded crop pixels normalise to 0, as mmseg pads
            train_set.pad_value = net.image_mean.view(3, 1, 1).clone()
        if world_size > 1 and device.type == "cuda":  # mmseg's heads use SyncBN
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    elif cfg.detector == "cascade_mask_rcnn" and world_size > 1 and device.type == "cuda":
        # the cascade's 4conv1fc box heads use SyncBN in mmdet (the backbone keeps its norms)
        net.roi_heads = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net.roi_heads)
    if cfg.initial_checkpoint:
        _load_initial_checkpoint(net, cfg.initial_checkpoint)
    model = ZooDetector(net) if cfg.task == "detection" else ZooSegmentationModel(net)

    optimizer = build_optimizer(net, cfg)
    optim_wrapper = runtime.build_optim_wrapper(
        optimizer, device, cfg.amp, cfg.amp_dtype,
        clip_grad=dict(max_norm=cfg.clip_grad) if cfg.clip_grad else None)

    by_epoch = cfg.task == "detection"
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=cfg.epochs, val_interval=cfg.val_interval or 1)
        schedule, evaluator = detection_schedule(cfg), [CocoMetric(val_set)]
        checkpoint = CheckpointHook(interval=1, by_epoch=True, max_keep_ckpts=cfg.checkpoint_hist,
                                    save_last=True)
        sampler = DefaultSampler(train_set, shuffle=True, seed=cfg.seed)
    else:
        val_interval = cfg.val_interval or max(1, cfg.max_iters // 10)
        train_cfg = dict(by_epoch=False, max_iters=cfg.max_iters, val_interval=val_interval)
        schedule, evaluator = segmentation_schedule(cfg), [SegIoUMetric(num_classes)]
        checkpoint = CheckpointHook(interval=val_interval, by_epoch=False,
                                    max_keep_ckpts=cfg.checkpoint_hist, save_last=True)
        sampler = InfiniteSampler(train_set, shuffle=True, seed=cfg.seed)

    loader_kwargs = dict(workers=cfg.workers, pin_memory=device.type == "cuda",
                         collate_fn=dict(type=detection_collate))
    train_loader = data.train_loader(train_set, sampler, seed=cfg.seed, rank=rank,
                                     batch_size=cfg.batch_size, drop_last=not by_epoch,
                                     **loader_kwargs)
    val_loader = data.eval_loader(val_set, batch_size=cfg.batch_size if by_epoch else 1,
                                  **loader_kwargs)
    runner = runtime.create_runner(
        cfg, experiment=runtime.experiment_name(cfg, cfg.model, cfg.task), device=device,
        launcher=launcher, model=model, train_dataloader=train_loader, val_dataloader=val_loader,
        train_cfg=train_cfg, val_cfg=dict(), val_evaluator=evaluator,
        optim_wrapper=optim_wrapper, param_scheduler=schedule, checkpoint_hook=checkpoint,
        custom_hooks=[ReseedHook(cfg.seed, by_epoch=by_epoch)], cudnn_benchmark=False,
        model_wrapper_cfg=runtime.ddp_wrapper_cfg(device, find_unused_parameters=True))
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
