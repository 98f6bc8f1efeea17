"""Training settings: timm's flag names, mmengine's Python config files.

Resolution order: ``DEFAULTS`` (timm train.py's defaults where timm has one) <- the config file
(``configs/imagenet/<model>.py``, mmengine ``Config`` with ``_base_`` inheritance) <- the flags
given on the command line <- ``--cfg-options key=value``. Every key is a timm train.py flag name
with ``-`` turned into ``_``, so a timm command line pastes over; a recipe may add the keys of
``RECIPE_KEYS``, which have no flag.
"""
import argparse
import os

from mmengine.config import Config, DictAction

__all__ = ["DEFAULTS", "RECIPE_KEYS", "build_parser", "resolve_config", "scaled_lr",
           "DEFAULT_CONFIG"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The README's first command: no config, no --data-dir -> this recipe on the embedded digits.
DEFAULT_CONFIG = os.path.join(REPO, "configs", "digits", "cswin_digits.py")

DEFAULTS = dict(
    # model
    model=None, pretrained=False, initial_checkpoint=None, num_classes=None, img_size=None,
    model_kwargs={}, drop=0.0, drop_path=None, grad_checkpointing=False,
    # data
    data_dir=None, dataset="", train_split="train", val_split="val", workers=4,
    batch_size=128, validation_batch_size=None, digits_img_size=32, crop_pct=None,
    interpolation=None, mean=None, std=None,
    # optimizer and schedule (timm's factories)
    opt="adamw", opt_eps=1e-8, opt_betas=(0.9, 0.999), momentum=0.9, weight_decay=0.05,
    lr=None, lr_base=5e-4, lr_base_size=512, layer_decay=None, backbone_lr_scale=None,
    weight_decay_all=False,
    sched="cosine", epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
    cooldown_epochs=0, sched_on_updates=True, decay_epochs=90, decay_milestones=(90, 180, 270),
    decay_rate=0.1,
    clip_grad=None, clip_mode="norm", grad_accum_steps=1,
    # augmentation and regularisation
    aa=None, color_jitter=0.4, hflip=0.5, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
    train_interpolation="random", reprob=0.0, remode="pixel", recount=1,
    mixup=0.0, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch",
    smoothing=0.1, bce_loss=False, bce_target_thresh=None, aug_repeats=0,
    model_ema=False, model_ema_decay=0.9998,
    # fine-tuning
    head_init_scale=None,
    # runtime
    amp=False, amp_dtype="bfloat16", channels_last=False, torchcompile=False, fsdp=False,
    device=None, seed=42, deterministic=False, output="./output", experiment=None,
    checkpoint_hist=3, resume=None, log_wandb=False, wandb_project="backbone-zoo",
    log_interval=50, val_interval=1, max_train_steps=None, stop_after_epochs=None,
)

# keys a recipe may set beyond DEFAULTS (absent unless set, so other recipes resolve as before)
RECIPE_KEYS = {
    "recipe": "what the recipe reproduces (text)",
    "loss": "a registered loss name, or dict(type=name, **kwargs) (backbones.training.losses); "
            "default: the one the flags pick",
    "teacher": "the frozen teacher of a distillation loss: dict(model=name, checkpoint=file or "
               "pretrained=True, model_kwargs={...})",
    "phases": "a recipe in phases, each with its trained parameters, loss and lr schedule "
              "(backbones.training.phases)",
}

# flags that take a value, as timm spells them (argparse type, help)
_VALUE_FLAGS = {
    "model": (str, "timm or zoo model name (e.g. cswin_tiny_224, resnet50)"),
    "initial_checkpoint": (str, "weights to start from (file); the head is replaced when "
                                "--num-classes differs and the checkpoint has another"),
    "num_classes": (int, "classes of the head (default: the data set's)"),
    "img_size": (int, "training / validation resolution"),
    "crop_pct": (float, "validation centre-crop fraction (default: the model's)"),
    "interpolation": (str, "validation resize interpolation (default: the model's)"),
    "drop": (float, "dropout rate"), "drop_path": (float, "stochastic depth rate"),
    "data_dir": (str, "data root (train/ and val/ of class folders); omit for the embedded "
                      "digits set"),
    "dataset": (str, "timm dataset spec: '' (folder), torch/<name>, hfds/<name>, wds/<name>"),
    "train_split": (str, "training split folder / name"),
    "val_split": (str, "validation split folder / name"),
    "workers": (int, "data-loader workers per process"),
    "batch_size": (int, "batch size per process"),
    "validation_batch_size": (int, "validation batch size per process"),
    "opt": (str, "timm optimizer name (adamw, sgd, lamb, ...)"),
    "opt_eps": (float, "optimizer epsilon"), "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay (not on 1-D params, biases and no_weight_decay())"),
    "lr": (float, "learning rate (default: lr_base * global batch / lr_base_size)"),
    "lr_base": (float, "base learning rate at lr_base_size"),
    "lr_base_size": (int, "global batch size lr_base refers to"),
    "layer_decay": (float, "layer-wise lr decay (fine-tuning)"),
    "backbone_lr_scale": (float, "lr of everything but the head, relative to --lr (fine-tuning)"),
    "head_init_scale": (float, "multiply the classifier's initial weight and bias by this "
                               "(fine-tuning a new head)"),
    "sched": (str, "timm scheduler (cosine, step, multistep, plateau, poly, tanh)"),
    "epochs": (int, "epochs before cool-down"), "warmup_epochs": (int, "linear warm-up epochs"),
    "warmup_lr": (float, "warm-up start lr"), "min_lr": (float, "final lr"),
    "cooldown_epochs": (int, "epochs at min_lr after the schedule"),
    "decay_epochs": (float, "step schedule: multiply the lr by --decay-rate every N epochs"),
    "decay_rate": (float, "step / multistep schedules: the factor at each decay"),
    "clip_grad": (float, "clip gradients at this norm (or value, --clip-mode value)"),
    "clip_mode": (str, "norm, value or agc"),
    "grad_accum_steps": (int, "accumulate gradients over this many steps"),
    "aa": (str, "auto-augment policy, e.g. rand-m9-mstd0.5-inc1"),
    "color_jitter": (float, "colour jitter strength"),
    "train_interpolation": (str, "training resize interpolation (random, bilinear, bicubic)"),
    "reprob": (float, "random erasing probability"), "remode": (str, "random erasing mode"),
    "recount": (int, "random erasing count"),
    "mixup": (float, "mixup alpha (0 = off)"), "cutmix": (float, "cutmix alpha (0 = off)"),
    "mixup_prob": (float, "probability of mixup or cutmix per batch"),
    "mixup_switch_prob": (float, "probability of cutmix instead of mixup"),
    "mixup_mode": (str, "batch, pair or elem"),
    "smoothing": (float, "label smoothing"),
    "bce_target_thresh": (float, "with --bce-loss: binarise (mixed) targets at this value"),
    "aug_repeats": (int, "repeated augmentation count (0 = off)"),
    "model_ema_decay": (float, "EMA decay per step"),
    "amp_dtype": (str, "bfloat16 or float16"),
    "device": (str, "cuda, cpu, cuda:1 (default: cuda if available)"),
    "seed": (int, "random seed"), "output": (str, "output root"),
    "experiment": (str, "run name (default: <model>-<timestamp>)"),
    "checkpoint_hist": (int, "best checkpoints to keep (and last ones for resume)"),
    "resume": (str, "a run folder or checkpoint to resume, or 'auto' (the newest in --output)"),
    "wandb_project": (str, "wandb project"), "log_interval": (int, "log every N steps"),
    "max_train_steps": (int, "stop each epoch after N steps (smoke tests)"),
    "stop_after_epochs": (int, "end this job after N epochs of the schedule (a job time limit; "
                               "--resume continues the schedule)"),
}
_SWITCHES = {
    "pretrained": "start from the model's pretrained weights",
    "grad_checkpointing": "activation checkpointing", "model_ema": "keep an EMA of the weights",
    "bce_loss": "binary cross-entropy on the (mixed) targets instead of softmax cross-entropy",
    "amp": "mixed precision (bf16 by default; fp16 uses a grad scaler)",
    "channels_last": "channels-last memory format", "torchcompile": "torch.compile the model",
    "fsdp": "shard the model with FSDP (many GPUs; large variants)",
    "weight_decay_all": "weight decay on every parameter, biases and norms included",
    "deterministic": "deterministic algorithms (CPU runs are deterministic anyway)",
    "log_wandb": "log to wandb (works offline with WANDB_MODE=offline)",
}


def build_parser(prog="train.py"):
    p = argparse.ArgumentParser(
        prog=prog, description="Train any zoo or timm model on ImageNet-style folders (or the "
        "embedded digits set) with mmengine's Runner and timm's data, optimizer and scheduler.")
    p.add_argument("config", nargs="?", default=None,
                   help="recipe config, e.g. configs/imagenet/cswin_tiny_224.py")
    for key, (typ, help_) in _VALUE_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, default=None, help=help_)
    p.add_argument("-b", dest="batch_size", type=int, default=None, help=argparse.SUPPRESS)
    for key, help_ in _SWITCHES.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, action="store_true", default=None,
                       help=help_)
    p.add_argument("--model-kwargs", nargs="*", default=None, action=DictAction,
                   help="extra model kwargs, key=value")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                   help="override any config key, key=value")
    return p


def resolve_config(args):
    """DEFAULTS <- config file <- given flags <- --cfg-options, as an mmengine Config."""
    cfg = Config(dict(DEFAULTS))
    path = args.config
    if path is None and args.model is None and args.data_dir is None:
        path = DEFAULT_CONFIG
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config {path!r} not found; recipes live in configs/imagenet/")
        cfg.merge_from_dict(Config.fromfile(path).to_dict())
        cfg.config_file = os.path.abspath(path)
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("config", "cfg_options", "model_kwargs")}
    cfg.merge_from_dict(given)
    if args.model_kwargs:
        cfg.model_kwargs = dict(cfg.model_kwargs, **args.model_kwargs)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    unknown = sorted(set(cfg.to_dict()) - set(DEFAULTS) - set(RECIPE_KEYS) - {"config_file"})
    if unknown:
        raise KeyError(f"unknown config keys {unknown}; the keys are timm's flag names "
                       f"(see backbones.training.config.DEFAULTS)")
    if cfg.model is None:
        raise ValueError("no model: pass --model NAME or a config file")
    return cfg


def scaled_lr(cfg, world_size):
    """``lr``, or timm's rule: ``lr_base * global_batch / lr_base_size`` (linear scaling)."""
    if cfg.lr is not None:
        return float(cfg.lr)
    global_batch = cfg.batch_size * world_size * cfg.grad_accum_steps
    return cfg.lr_base * global_batch / cfg.lr_base_size
