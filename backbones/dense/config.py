"""Detection and segmentation settings: ``tools/train_det.py`` and ``tools/train_seg.py``.

Settings resolve as for classification: ``DEFAULTS`` <- config file (``configs/coco/*.py``,
``configs/ade20k/*.py``, ``_base_`` inheritance) <- flags <- ``--cfg-options``. The schedules are
the papers' mmdet / mmseg ones (``training.schedule``): detection by epochs (linear warm-up over
``warmup_iters``, then x ``gamma`` at each of ``lr_steps``), segmentation by iterations (warm-up,
then poly decay). AdamW with no weight decay on norms, biases, position embeddings and
relative-position tables (``no_decay_keys``, mmdet / mmseg ``paramwise_cfg``), or SGD with
momentum (``opt='sgd'``, the DeepLab recipes: ``backbone_lr_mult``, ``weight_decay_all``).
Segmentation data: ``dataset='ade20k'`` or ``'voc'`` (Pascal VOC 2012).
"""
import argparse
import os

from mmengine.config import Config, DictAction

from .detection import DETECTORS

__all__ = ["DEFAULTS", "SEGMENTATION_DATASETS", "build_parser", "resolve_config"]

# dataset -> its number of classes
SEGMENTATION_DATASETS = {"ade20k": 150, "voc": 21}

DEFAULTS = dict(
    task=None,
    # model
    model=None, model_kwargs={}, pretrained=False, initial_checkpoint=None, drop_path=None,
    detector="mask_rcnn", head="upernet", num_classes=None, frozen_stages=-1, norm_eval=False,
    output_stride=None,  # DeepLabV3: dilate the backbone to this stride (16 or 8)
    backbone_bn_momentum=None,  # BatchNorm momentum of the backbone (DeepLab code: 0.01)
    # COCO (paths relative to data_dir)
    train_images="train2017", val_images="val2017",
    train_ann="annotations/instances_train2017.json", val_ann="annotations/instances_val2017.json",
    # shorter side: one value, or the multi-scale choices (3x schedules); evaluation uses the last
    min_size=(800,), max_size=1333,
    # segmentation data: ADE20K or Pascal VOC 2012 (splits are list names for VOC)
    dataset="ade20k", label_dir="SegmentationClass", pad_label=255,
    train_split="training", val_split="validation", reduce_zero_label=True,
    scale=(2048, 512), crop_size=(512, 512), ratio_range=(0.5, 2.0), test_mode="whole",
    slide_stride=(341, 341),
    data_dir=None, workers=2, batch_size=2,
    # optimisation
    opt="adamw", lr=1e-4, weight_decay=0.05, opt_betas=(0.9, 0.999), momentum=0.9,
    clip_grad=None, backbone_lr_mult=1.0, weight_decay_all=False,
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
    "detector": (str, f"one of {', '.join(DETECTORS)}"), "head": (str, "upernet, semantic_fpn or deeplabv3"),
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
        raise KeyError(f"unknown config keys {unknown} (see backbones.dense.config.DEFAULTS)")
    if cfg.task != task:
        raise ValueError(f"{args.config} is a {cfg.task} recipe; use "
                         f"tools/train_{'det' if cfg.task == 'detection' else 'seg'}.py")
    if cfg.model is None:
        raise ValueError("no model: pass --model NAME or set model in the config")
    if cfg.opt not in ("adamw", "sgd"):
        raise ValueError(f"opt must be 'adamw' or 'sgd', got {cfg.opt!r}")
    if task == "segmentation" and cfg.dataset not in SEGMENTATION_DATASETS:
        raise ValueError(f"dataset must be one of {sorted(SEGMENTATION_DATASETS)}, got "
                         f"{cfg.dataset!r}")
    if cfg.data_dir is None:
        raise ValueError("--data-dir is required (COCO root with train2017/ val2017/ "
                         "annotations/, ADE20K root with images/ annotations/, or the VOC2012 "
                         "folder with JPEGImages/ SegmentationClass/ ImageSets/)")
    return cfg
