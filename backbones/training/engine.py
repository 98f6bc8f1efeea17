"""The training engine: mmengine's Runner driving timm's model, data, augmentation, optimizer
and scheduler factories.

What mmengine brings: the epoch loop, hooks, DDP through ``torchrun`` (``launcher='pytorch'``),
checkpoints with resume, EMA, logging backends (JSON scalars, wandb). What it gets wrong on torch
2.14, fixed here (``ecosystem.md`` section 2.2): resume (its local loader calls ``torch.load``
without ``weights_only`` while its checkpoints pickle message-hub objects), DDP on the CPU
(``launcher='pytorch'`` calls ``torch.cuda.set_device``), AMP on the CPU (``AmpOptimWrapper``
asserts CUDA), and in-place checkpoint writes (a killed run would leave a truncated file).
"""
import logging
import math
import os
import random
import time

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from . import data as zoo_data

_logger = logging.getLogger("backbones.training")

__all__ = ["ZooClassifier", "TopKAccuracy", "build_runner", "export_weights", "train"]


# ----------------------------------------------------------------------------------------------
# mmengine fixes
# ----------------------------------------------------------------------------------------------

_TRUSTED_ROOTS = set()  # work dirs whose checkpoints this process wrote (full unpickling allowed)


def _install_mmengine_fixes():
    import mmengine.runner.runner as mm_runner
    from mmengine.runner import CheckpointLoader

    if getattr(mm_runner, "_zoo_patched", False):
        return
    mm_runner._zoo_patched = True
    original_save = mm_runner.save_checkpoint

    def atomic_save_checkpoint(checkpoint, filename, **kwargs):
        """Write beside the target, then rename: a run killed mid-write leaves the previous
        checkpoint intact instead of a truncated file."""
        tmp = f"{filename}.tmp.{os.getpid()}"
        try:
            original_save(checkpoint, tmp, **kwargs)
            os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    mm_runner.save_checkpoint = atomic_save_checkpoint

    def load_local(filename, map_location):
        """Our own run checkpoints hold mmengine's message-hub objects (full unpickling); any
        other file is loaded with ``weights_only=True``."""
        filename = os.path.abspath(os.path.expanduser(filename))
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"checkpoint {filename} not found")
        trusted = any(filename.startswith(root + os.sep) for root in _TRUSTED_ROOTS)
        return torch.load(filename, map_location=map_location, weights_only=not trusted)

    CheckpointLoader.register_scheme(prefixes="", loader=load_local, force=True)


class CpuAmpOptimWrapper(OptimWrapper):
    """bf16 autocast on the CPU (mmengine's AmpOptimWrapper asserts a GPU)."""

    def optim_context(self, model):
        import contextlib
        stack = contextlib.ExitStack()
        stack.enter_context(super().optim_context(model))
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack


# ----------------------------------------------------------------------------------------------
# Model, data preprocessor, metric
# ----------------------------------------------------------------------------------------------

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
    mixup / cutmix and the matching loss, ``mode='predict'`` returns logits for the metric."""

    def __init__(self, net, mixup_fn=None, smoothing=0.0, channels_last=False, compile=False,
                 bce_loss=False, bce_target_thresh=None):
        super().__init__(data_preprocessor=ImagePreprocessor(channels_last))
        self.net = net
        self.mixup_fn = mixup_fn
        if bce_loss:
            # timm's train.py: per-class sigmoid BCE (ResNet Strikes Back); mixup's soft targets
            # are binarised at bce_target_thresh when set, else smoothed here
            self.train_loss = BinaryCrossEntropy(
                smoothing=0.0 if mixup_fn is not None else smoothing,
                target_threshold=bce_target_thresh)
        elif mixup_fn is not None:
            # mixup builds soft (smoothed) targets itself
            self.train_loss = SoftTargetCrossEntropy()
        elif smoothing:
            self.train_loss = LabelSmoothingCrossEntropy(smoothing=smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss()
        # compiled callable kept out of the module tree so state_dict keys stay timm's
        object.__setattr__(self, "_forward_net", torch.compile(net) if compile else net)

    def init_weights(self):
        """Nothing: the weights come from timm's constructor, ``--pretrained`` or
        ``--initial-checkpoint``. (mmengine's default would call the init_weights() of timm
        models that define one, e.g. ViTs, re-initialising pretrained weights.)"""

    def forward(self, inputs, labels=None, mode="tensor"):
        if mode == "loss":
            targets = labels
            if self.mixup_fn is not None:
                inputs, targets = self.mixup_fn(inputs, labels)
            return dict(loss=self.train_loss(self._forward_net(inputs), targets))
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


# ----------------------------------------------------------------------------------------------
# Hooks
# ----------------------------------------------------------------------------------------------

def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _net(runner):
    return _unwrap(runner.model).net


def _ema_hook(runner):
    return next((h for h in runner.hooks if isinstance(h, ModelEmaHook)), None)


def _is_sharded(t):
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def full_state(state):
    """``state`` with every FSDP-sharded (DTensor) entry gathered into a full CPU tensor; a
    collective under FSDP, so every rank must call it."""
    return {k: (v.full_tensor() if _is_sharded(v) else v).detach().cpu() for k, v in state.items()}


def like(full, target):
    """``full`` laid out as ``target``: sharded the same way when ``target`` is an FSDP DTensor
    (a collective then), on its device and dtype otherwise."""
    if _is_sharded(target):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(full.to(target.device, target.dtype), target.device_mesh,
                                 target.placements)
    return full.to(target.device, target.dtype)


class ModelEmaHook(Hook):
    """An exponential moving average of the weights (and floating buffers), updated after every
    optimizer update with ``ema = decay * ema + (1 - decay) * live`` (timm's ModelEma), swapped in
    for validation, saved in checkpoints (``ema_state_dict``) and restored on resume. It keeps
    tensors shaped like the live ones, local shards under FSDP (which cannot deep-copy a model,
    so mmengine's EMAHook does not work there)."""

    priority = "NORMAL"

    def __init__(self, decay, accum_steps=1):
        self.decay, self.accum_steps = float(decay), accum_steps
        self.ema = None
        self._full = None

    def before_run(self, runner):
        self.ema = {k: v.detach().clone() for k, v in _net(runner).state_dict().items()
                    if v.is_floating_point()}

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if (runner.iter + 1) % self.accum_steps:
            return
        live = _net(runner).state_dict()
        for k, avg in self.ema.items():
            avg.lerp_(live[k].detach(), 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self, runner):
        live = _net(runner).state_dict()
        for k, avg in self.ema.items():
            tmp = live[k].detach().clone()
            live[k].copy_(avg)
            avg.copy_(tmp)

    def before_val_epoch(self, runner):
        self._swap(runner)

    def after_val_epoch(self, runner, metrics=None):
        self._swap(runner)

    def after_train_epoch(self, runner):
        # every rank gathers (a collective under FSDP); rank 0 saves
        self._full = full_state(self.ema)

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint["ema_state_dict"] = self._full if self._full is not None \
            else full_state(self.ema)

    @torch.no_grad()
    def after_load_checkpoint(self, runner, checkpoint):
        if self.ema is None or "ema_state_dict" not in checkpoint:
            return
        saved = checkpoint["ema_state_dict"]
        for k, avg in self.ema.items():
            avg.copy_(like(saved[k], avg))

    def full_ema(self):
        return full_state(self.ema)


class ShardedCheckpointHook(Hook):
    """FSDP checkpoints in the plain layout: the sharded model and optimizer state are gathered
    on every rank before the (rank-0) CheckpointHook writes them, and scattered back into shards
    when a run resumes, so an FSDP checkpoint is an ordinary one (resumable with another GPU
    count, or without FSDP)."""

    priority = "ABOVE_NORMAL"  # load: before the model / optimizer are filled from the file

    def after_train_epoch(self, runner):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, \
            get_optimizer_state_dict
        net = _net(runner)
        self._model = full_state(net.state_dict())
        self._optim = get_optimizer_state_dict(
            net, runner.optim_wrapper.optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint["state_dict"] = {f"net.{k}": v for k, v in self._model.items()}
        checkpoint["optimizer"] = self._optim

    @torch.no_grad()
    def after_load_checkpoint(self, runner, checkpoint):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, \
            set_optimizer_state_dict
        net = _net(runner)
        live = net.state_dict()
        state = checkpoint["state_dict"]
        for k, target in live.items():
            key = f"net.{k}"
            if key in state:
                state[key] = like(state[key], target)
        if "optimizer" in checkpoint and runner._resume:
            set_optimizer_state_dict(net, runner.optim_wrapper.optimizer, checkpoint["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
            checkpoint["optimizer"] = runner.optim_wrapper.state_dict()


def shard_model(net, device):
    """FSDP2 (``fully_shard``): every block is its own all-gather unit, then the whole model."""
    from torch.distributed.fsdp import fully_shard
    net.to(device)
    blocks = [m for m in net.modules() if m is not net and type(m).__name__.endswith("Block")]
    if not blocks:
        raise ValueError(f"--fsdp: {type(net).__name__} has no *Block modules to shard")
    for module in blocks:
        fully_shard(module)
    fully_shard(net)
    return net


def _register_sharded_wrapper():
    from mmengine.registry import MODEL_WRAPPERS
    if "ZooShardedWrapper" in MODEL_WRAPPERS.module_dict:
        return

    @MODEL_WRAPPERS.register_module()
    class ZooShardedWrapper(nn.Module):
        """What mmengine sees of an FSDP2 model: sharding happened in place (fully_shard), so
        this only marks the model as wrapped (no DDP on top) and forwards the steps."""

        def __init__(self, module):
            super().__init__()
            self.module = module

        def train_step(self, data, optim_wrapper):
            return self.module.train_step(data, optim_wrapper)

        def val_step(self, data):
            return self.module.val_step(data)

        def test_step(self, data):
            return self.module.test_step(data)

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)


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


class EpochSeedHook(Hook):
    """Reseeds torch / numpy / random at every epoch from (seed, epoch, rank), so an epoch's
    mixup and drop-path draws in the training process depend on nothing else: a run resumed at
    an epoch boundary continues exactly as the unbroken run (validation draws no longer shift
    them). The augmentations, drawn in the loader's workers, are seeded per sample instead
    (``data.SeededSampler``)."""

    priority = "VERY_HIGH"

    def __init__(self, seed):
        self.seed = int(seed)

    def before_train_epoch(self, runner):
        s = (self.seed * 1_000_003 + runner.epoch * 7919 + runner.rank) % (2 ** 31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class MaxStepsHook(Hook):
    """Ends each epoch after ``max_steps`` iterations (smoke tests, quick looks)."""

    def __init__(self, max_steps):
        self.max_steps = int(max_steps)

    def before_train_epoch(self, runner):
        loop = runner.train_loop
        if not hasattr(loop, "_zoo_full_loader"):
            loop._zoo_full_loader = loop.dataloader
        loop.dataloader = _FirstBatches(loop._zoo_full_loader, self.max_steps)


class StopAfterEpochsHook(Hook):
    """Ends this job after ``n`` epochs (once their checkpoint is written), leaving the rest of the
    schedule to ``--resume``: for clusters with job time limits."""

    priority = "LOWEST"  # after CheckpointHook

    def __init__(self, n):
        self.n = int(n)

    def after_train_epoch(self, runner):
        if runner.epoch + 1 >= self.n:
            runner.train_loop.stop_training = True
            runner.logger.info(f"stopping after epoch {runner.epoch + 1} (--stop-after-epochs); "
                               f"continue with --resume {runner.work_dir}")


class _FirstBatches:
    def __init__(self, loader, n):
        self.loader, self.n = loader, n
        self.sampler, self.batch_sampler, self.dataset = loader.sampler, loader.batch_sampler, \
            loader.dataset

    def __len__(self):
        return min(self.n, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                break
            yield batch


class ProgressHook(Hook):
    """A progress bar per epoch (loss, lr, images/s) and a one-line summary per epoch."""

    priority = "LOW"

    def __init__(self, max_epochs, skip_counter=None, enabled=True):
        self.max_epochs, self.skip_counter, self.enabled = max_epochs, skip_counter, enabled
        self.bar = None
        self._console = []

    def before_run(self, runner):
        # the console handlers only: the log file keeps every line
        self._console = [h for h in runner.logger.handlers if isinstance(h, logging.StreamHandler)
                         and not isinstance(h, logging.FileHandler)]
        for handler in self._console:
            handler.addFilter(self._console_filter)

    def after_run(self, runner):
        for handler in self._console:
            handler.removeFilter(self._console_filter)
        self._console = []

    def _console_filter(self, record):
        """While a bar is open it owns the terminal: INFO lines go to the log file only, and a
        warning clears the bar to get its own line (the next update redraws it). mmengine's
        LoggerHook lines (every --log-interval steps, and its per-epoch validation line) repeat
        the bar and the summary, so they never reach the console."""
        if record.levelno >= logging.WARNING:
            if self.bar is not None:
                self.bar.clear()
            return True
        if os.path.basename(record.pathname) == "logger_hook.py" and \
                "mmengine" in record.pathname:
            return False
        return self.bar is None

    def before_train_epoch(self, runner):
        self.t0, self.images, self.losses = time.perf_counter(), 0, []
        if self.enabled and runner.rank == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=len(runner.train_loop.dataloader), leave=False, dynamic_ncols=True,
                            desc=f"epoch {runner.epoch + 1}/{self.max_epochs}")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        n = len(data_batch[1]) * runner.world_size
        self.images += n
        loss = float(outputs["loss"].detach()) if outputs and "loss" in outputs else float("nan")
        self.losses.append(loss)
        if self.bar is not None:
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{runner.optim_wrapper.get_lr()['lr'][0]:.3g}",
                                 img_s=f"{rate:.1f}", refresh=False)
            self.bar.update(1)

    def after_train_epoch(self, runner):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.train_seconds = time.perf_counter() - self.t0
        self.train_loss = float(np.mean(self.losses)) if self.losses else float("nan")
        self.lr = runner.optim_wrapper.get_lr()["lr"][0]
        self.epoch = runner.epoch + 1
        if runner.val_loop is None or self.epoch % runner.train_loop.val_interval:
            self._summary(runner, {})

    def after_val_epoch(self, runner, metrics=None):
        if hasattr(self, "epoch"):
            self._summary(runner, metrics or {})

    def before_train(self, runner):
        self.run_t0, self.last_metrics = time.perf_counter(), {}

    def after_train(self, runner):
        m = self.last_metrics
        if "accuracy/top1" in m:
            weights = "EMA" if _ema_hook(runner) is not None else "final"
            runner.logger.info(
                f"done in {time.perf_counter() - self.run_t0:.0f} s: top-1 {m['accuracy/top1']:.2f}, "
                f"top-5 {m['accuracy/top5']:.2f} on the validation split ({weights} weights, "
                f"epoch {self.epoch})")

    def _summary(self, runner, metrics):
        if metrics:
            self.last_metrics = dict(metrics)
        skipped = self.skip_counter.value if self.skip_counter is not None else 0
        parts = [f"epoch {self.epoch}/{self.max_epochs}", f"train loss {self.train_loss:.4f}",
                 f"lr {self.lr:.3g}"]
        if "accuracy/top1" in metrics:
            parts.append(f"val top1 {metrics['accuracy/top1']:.2f} top5 "
                         f"{metrics['accuracy/top5']:.2f}")
        parts += [f"{self.images / max(self.train_seconds, 1e-9):.1f} img/s",
                  f"{self.train_seconds:.1f} s", f"skipped images {skipped}"]
        runner.logger.info(" | ".join(parts))


class ExportHook(Hook):
    """Zoo ``.safetensors`` exports (EMA weights when EMA is on): the best ``keep`` epochs by
    top-1 under ``<work_dir>/best/`` and the final weights as ``<work_dir>/<model>.safetensors``,
    loadable with ``timm.create_model(name, pretrained=True, num_classes=N,
    pretrained_cfg_overlay=dict(file=..., num_classes=N))`` (timm drops a head whose class count
    differs from the pretrained cfg's, so the overlay states it)."""

    priority = "ABOVE_NORMAL"  # after_val_epoch before EMAHook swaps the live weights back

    def __init__(self, model_name, keep=3, model_kwargs=None):
        self.model_name, self.keep, self.model_kwargs = model_name, keep, dict(model_kwargs or {})
        self.best = []  # (top1, epoch, path)
        self.final_path = None

    def after_val_epoch(self, runner, metrics=None):
        if not metrics or "accuracy/top1" not in metrics:
            return
        top1, epoch = float(metrics["accuracy/top1"]), runner.epoch
        if len(self.best) >= self.keep and top1 <= min(b[0] for b in self.best):
            return
        # the EMA hook has swapped the EMA weights into the live model for validation
        state = full_state(_net(runner).state_dict())  # every rank: a collective under FSDP
        path = os.path.join(runner.work_dir, "best",
                            f"{self.model_name}_epoch{epoch:03d}_top1-{top1:.2f}.safetensors")
        if runner.rank != 0:
            self.best.append((top1, epoch, path))
            self.best = sorted(self.best, key=lambda b: (-b[0], b[1]))[:self.keep]
            return
        export_weights(state, path, dict(model=self.model_name, epoch=str(epoch),
                                         top1=f"{top1:.4f}"))
        self.best.append((top1, epoch, path))
        self.best.sort(key=lambda b: (-b[0], b[1]))
        for _, _, old in self.best[self.keep:]:
            if os.path.exists(old):
                os.remove(old)
        self.best = self.best[:self.keep]

    def after_train(self, runner):
        ema = _ema_hook(runner)
        state = ema.full_ema() if ema is not None else full_state(_net(runner).state_dict())
        if ema is not None:  # the EMA covers floating tensors; integer buffers come from the net
            state = dict(full_state(_net(runner).state_dict()), **state)
        if runner.rank != 0:
            return
        self.final_path = os.path.join(runner.work_dir, f"{self.model_name}.safetensors")
        export_weights(state, self.final_path, dict(model=self.model_name,
                                                    epoch=str(runner.epoch),
                                                    ema=str(ema is not None)))
        n = _net(runner).num_classes
        kwargs = "".join(f", {k}={v!r}" for k, v in self.model_kwargs.items())
        runner.logger.info(
            f"final weights{' (EMA)' if ema is not None else ''}: {self.final_path}; load with "
            f"timm.create_model({self.model_name!r}, pretrained=True, num_classes={n}{kwargs}, "
            f"pretrained_cfg_overlay=dict(file={self.final_path!r}, num_classes={n}))")


def export_weights(net_or_state, path, metadata=None):
    """A timm-native state_dict (of a model, or given) as ``.safetensors``, written
    atomically."""
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = net_or_state if isinstance(net_or_state, dict) else net_or_state.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    # safetensors writes through a private temporary file (mode 0600); give the export the mode
    # of any new file (0644 under the usual umask), like the .pth checkpoints beside it
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return path


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------
# Building a run
# ----------------------------------------------------------------------------------------------

def _setup_distributed(device):
    """(launcher, world_size, rank). Under torchrun on the CPU, gloo is initialised here so
    that mmengine's launcher skips its CUDA-only setup."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return "none", 1, 0
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return "pytorch", dist.get_world_size(), dist.get_rank()


def _resolve_device(cfg):
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def head_keys(net, state_dict):
    """Keys of ``state_dict`` that belong to ``net``'s classifier (its pretrained_cfg says which)."""
    classifier = net.pretrained_cfg.get("classifier") if hasattr(net, "pretrained_cfg") else None
    prefixes = [classifier] if isinstance(classifier, str) else list(classifier or [])
    return [k for k in state_dict if any(k == p or k.startswith(p + ".") for p in prefixes)]


def read_weights(path, use_ema=True, flag="--initial-checkpoint"):
    """A flat state dict from a ``.safetensors`` / ``.pth`` file (EMA weights first with
    ``use_ema``), wrapper prefixes (``module.``) removed; files are read with
    ``weights_only=True``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist")
    from timm.models import load_state_dict
    from .._helpers import unwrap_checkpoint
    return unwrap_checkpoint(load_state_dict(path, use_ema=use_ema, weights_only=True))


def to_model_layout(net, state):
    """``state`` in ``net``'s layout: a zoo family's ``checkpoint_filter_fn`` converts official
    checkpoints (and passes zoo ones through)."""
    from .._family import family_of_model
    family = family_of_model(net)
    return family.checkpoint_filter_fn(dict(state), net) if family else dict(state)


def load_weights(net, state, source, num_classes_given, flag="--initial-checkpoint"):
    """Load ``state`` (read from ``source``) into ``net``. A head of another class count is
    replaced (fine-tuning) when ``--num-classes`` was given, and is an error otherwise; anything
    else that does not fit is an error."""
    state = to_model_layout(net, state)
    own = net.state_dict()
    # a head of another class count (its first dim); other shape differences are errors below
    mismatched = [k for k in head_keys(net, own) if k in state and state[k].dim() >= 1
                  and state[k].shape[0] != own[k].shape[0]]
    if mismatched:
        ckpt_classes = state[mismatched[0]].shape[0]
        if not num_classes_given:
            raise ValueError(
                f"{flag} {source} has a {ckpt_classes}-class head but the model has "
                f"{net.num_classes} classes (from the data set); pass --num-classes "
                f"{net.num_classes} to fine-tune with a new head, or --num-classes "
                f"{ckpt_classes} to keep it")
        for k in mismatched:
            state.pop(k)
        _logger.info("new %d-class head (checkpoint head had %d classes: %s dropped)",
                     net.num_classes, ckpt_classes, ", ".join(mismatched))
    wrong = [k for k, v in state.items() if k in own and k not in mismatched
             and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{flag} {source} does not fit {type(net).__name__}: {len(wrong)} "
                         f"tensor(s) differ in shape, e.g. {k} {tuple(state[k].shape)} in the file "
                         f"vs {tuple(own[k].shape)} in the model (other --model-kwargs?)")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in mismatched]
    if missing or unexpected:
        raise ValueError(f"{flag} {source} does not fit {type(net).__name__}: "
                         f"missing {missing[:8]}, unexpected {unexpected[:8]}")


def load_initial_checkpoint(net, path, num_classes_given):
    """``--initial-checkpoint``: weights from ``path`` (official or zoo layout, EMA first)."""
    load_weights(net, read_weights(path), path, num_classes_given)


def build_datasets(cfg, net, skip_counter):
    """(train set, val set, number of classes, data config) with the model's preprocessing."""
    from timm.data import create_transform, resolve_data_config
    data_cfg = resolve_data_config(
        args=dict(input_size=(3, cfg.img_size, cfg.img_size) if cfg.img_size else None,
                  crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean,
                  std=cfg.std),
        model=net)
    train_tf = create_transform(
        data_cfg["input_size"], is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, mean=data_cfg["mean"], std=data_cfg["std"],
        re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount)
    val_tf = create_transform(
        data_cfg["input_size"], is_training=False, interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg.get("crop_mode"))
    if cfg.data_dir is None:
        train = zoo_data.DigitsDataset("train", cfg.digits_img_size, train_tf)
        val = zoo_data.DigitsDataset("val", cfg.digits_img_size, val_tf)
        return train, val, zoo_data.DIGITS_CLASSES, data_cfg
    train = zoo_data.create_image_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, train_tf,
                                          skip_counter, is_training=True, seed=cfg.seed)
    val = zoo_data.create_image_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, val_tf,
                                        skip_counter)
    classes = getattr(getattr(train, "reader", None), "class_to_idx", None)
    return train, val, len(classes) if classes else None, data_cfg


def _count_classes(cfg):
    if cfg.num_classes:
        return cfg.num_classes
    if cfg.data_dir is None:
        return zoo_data.DIGITS_CLASSES
    if cfg.dataset in ("", None, "folder", "imagefolder"):
        return len(zoo_data.check_image_folder(cfg.data_dir, cfg.train_split)[1])
    raise ValueError(f"pass --num-classes for dataset {cfg.dataset!r}")


def create_net(cfg):
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
    num_classes = _count_classes(cfg)
    net = timm.create_model(name, pretrained=cfg.pretrained, num_classes=num_classes, **kwargs)
    if cfg.initial_checkpoint:
        load_initial_checkpoint(net, cfg.initial_checkpoint, bool(cfg.num_classes))
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


def build_runner(cfg):
    """An mmengine Runner for one training run described by ``cfg`` (see config.DEFAULTS)."""
    from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, \
        ParamSchedulerHook, RuntimeInfoHook
    from timm.data import Mixup
    from timm.scheduler import create_scheduler_v2

    _install_mmengine_fixes()
    ZooRunner = _zoo_runner_class()
    device = _resolve_device(cfg)
    launcher, world_size, rank = _setup_distributed(device)
    if cfg.fsdp and world_size < 2:
        raise ValueError("--fsdp shards the model over processes: launch with torchrun "
                         "--nproc_per_node N (N >= 2)")
    torch.manual_seed(cfg.seed)  # model init identical on every rank (DDP broadcasts anyway)
    net = create_net(cfg)
    skip_counter = zoo_data.SkipCounter()
    train_set, val_set, _, _ = build_datasets(cfg, net, skip_counter)

    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                         label_smoothing=cfg.smoothing, num_classes=net.num_classes)
    model = ZooClassifier(net, mixup_fn, cfg.smoothing, cfg.channels_last, cfg.torchcompile,
                          bce_loss=cfg.bce_loss, bce_target_thresh=cfg.bce_target_thresh)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    if cfg.fsdp:  # shard before the optimizer is built: it must hold the sharded parameters
        shard_model(net, device)
        _register_sharded_wrapper()

    lr = _scaled_lr(cfg, world_size)
    optimizer = create_optimizer(net, cfg, lr)
    clip = None
    if cfg.clip_grad:
        clip = dict(max_norm=cfg.clip_grad) if cfg.clip_mode == "norm" else \
            dict(type="value", clip_value=cfg.clip_grad)
    wrapper_kwargs = dict(optimizer=optimizer, accumulative_counts=cfg.grad_accum_steps,
                          clip_grad=clip)
    if cfg.amp and device.type == "cuda":
        optim_wrapper = AmpOptimWrapper(dtype=cfg.amp_dtype, **wrapper_kwargs)
    elif cfg.amp:
        optim_wrapper = CpuAmpOptimWrapper(**wrapper_kwargs)
    else:
        optim_wrapper = OptimWrapper(**wrapper_kwargs)

    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * world_size))
    if cfg.max_train_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_steps)
    updates_per_epoch = max(1, steps_per_epoch // cfg.grad_accum_steps)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)

    if cfg.aug_repeats:
        from timm.data.distributed_sampler import RepeatAugSampler
        sampler = RepeatAugSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                   num_repeats=cfg.aug_repeats)
    else:
        from mmengine.dataset import DefaultSampler
        sampler = DefaultSampler(train_set, shuffle=True, seed=cfg.seed)
    if not isinstance(train_set, torch.utils.data.IterableDataset):
        # each sample's augmentation seeded from (seed, epoch, rank, position): resume-exact
        # whatever the workers' lifetime, and the same draws for any number of workers
        sampler = zoo_data.SeededSampler(sampler, cfg.seed, rank)
        train_set = zoo_data.SeededDataset(train_set)
    loader_common = dict(num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                         pin_memory=device.type == "cuda",
                         collate_fn=dict(type="default_collate"))
    # the loader draws its worker base seed from this generator, not the global one: with
    # persistent workers it draws only in a process's first epoch, which would shift the
    # drop-path and mixup draws of a resumed run's first epoch against the unbroken run's
    train_loader = dict(dataset=train_set, sampler=sampler, batch_size=cfg.batch_size,
                        drop_last=True, generator=torch.Generator().manual_seed(cfg.seed),
                        **loader_common)
    val_loader = dict(dataset=val_set, sampler=dict(type="DefaultSampler", shuffle=False),
                      batch_size=cfg.validation_batch_size or cfg.batch_size, drop_last=False,
                      **loader_common)

    experiment = cfg.experiment or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    work_dir = os.path.abspath(os.path.join(cfg.output, experiment))
    _TRUSTED_ROOTS.add(os.path.abspath(cfg.output))
    resume, load_from = False, None
    if cfg.resume:
        resume, load_from, work_dir = _resume_target(cfg, work_dir)
    else:
        work_dir = _fresh_dir(work_dir)
    _TRUSTED_ROOTS.add(work_dir)

    custom_hooks = [TimmSchedulerHook(scheduler, cfg.grad_accum_steps), EpochSeedHook(cfg.seed),
                    ProgressHook(total_epochs, skip_counter),
                    ExportHook(cfg.model, keep=cfg.checkpoint_hist, model_kwargs=cfg.model_kwargs)]
    if cfg.max_train_steps:
        custom_hooks.append(MaxStepsHook(cfg.max_train_steps))
    if cfg.stop_after_epochs:
        custom_hooks.append(StopAfterEpochsHook(cfg.stop_after_epochs))
    if cfg.model_ema:
        custom_hooks.append(ModelEmaHook(cfg.model_ema_decay, cfg.grad_accum_steps))
    if cfg.fsdp:
        custom_hooks.append(ShardedCheckpointHook())
    vis_backends = [dict(type="LocalVisBackend")]
    if cfg.log_wandb:
        vis_backends.append(dict(type="WandbVisBackend",
                                 init_kwargs=dict(project=cfg.wandb_project, name=experiment)))

    runner = ZooRunner(
        model=model, work_dir=work_dir,
        train_dataloader=train_loader, val_dataloader=val_loader,
        train_cfg=dict(by_epoch=True, max_epochs=total_epochs, val_interval=cfg.val_interval),
        val_cfg=dict(), val_evaluator=[TopKAccuracy()],
        optim_wrapper=optim_wrapper,
        default_hooks=dict(
            runtime_info=RuntimeInfoHook(), timer=IterTimerHook(),
            logger=LoggerHook(interval=cfg.log_interval),
            param_scheduler=ParamSchedulerHook(),
            # the lr schedule is a function of (epoch, update): no scheduler state to save
            checkpoint=CheckpointHook(interval=1, by_epoch=True, max_keep_ckpts=cfg.checkpoint_hist,
                                      save_last=True, save_param_scheduler=False),
            sampler_seed=DistSamplerSeedHook()),
        custom_hooks=custom_hooks,
        launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend="nccl" if device.type == "cuda" else "gloo"),
                     cudnn_benchmark=device.type == "cuda"),
        randomness=dict(seed=cfg.seed, deterministic=bool(cfg.deterministic)),
        visualizer=dict(type="Visualizer", vis_backends=vis_backends,
                        name=f"visualizer-{experiment}-{id(cfg)}"),
        resume=resume, load_from=load_from,
        experiment_name=f"{experiment}-{os.getpid()}-{id(cfg)}",
        log_level="INFO",
        cfg=dict(cfg.to_dict(), model_wrapper_cfg=dict(type="ZooShardedWrapper") if cfg.fsdp
                 else dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                           device_ids=None if device.type != "cuda"
                           else [torch.cuda.current_device()])),
    )
    runner.zoo = dict(lr=lr, steps_per_epoch=steps_per_epoch, total_epochs=total_epochs,
                      skip_counter=skip_counter, device=device, world_size=world_size)
    runner.logger.info(
        f"{cfg.model}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params, "
        f"{net.num_classes} classes, {len(train_set)} train / {len(val_set)} val images "
        f"({'embedded digits' if cfg.data_dir is None else cfg.data_dir}), {world_size} "
        f"process(es) on {device.type}, global batch {cfg.batch_size * world_size * cfg.grad_accum_steps}, "
        f"lr {lr:.3g}, {total_epochs} epochs")
    return runner


def _zoo_runner_class():
    from mmengine.runner import Runner

    class ZooRunner(Runner):
        def _init_model_weights(self):
            """Nothing: the weights come from timm (constructor, --pretrained,
            --initial-checkpoint) and are identical on every rank (same seed; DDP broadcasts at
            wrap time). mmengine's version re-initialises timm models that define init_weights()
            and broadcasts every tensor, which FSDP's sharded ones do not support."""

        def _log_env(self, env_cfg):
            """One line instead of mmengine's build banner and config dump (the config is
            written to the run folder)."""
            import mmengine
            self.logger.info(
                f"torch {torch.__version__}, timm {timm.__version__}, mmengine "
                f"{mmengine.__version__}; {self._world_size} process(es), launcher "
                f"{self._launcher}, seed {self._seed}; work dir: {self.work_dir}")

        def get_hooks_info(self):
            return ", ".join(type(h).__name__ for h in self.hooks)

    return ZooRunner


def _scaled_lr(cfg, world_size):
    from .config import scaled_lr
    return scaled_lr(cfg, world_size)


def _fresh_dir(work_dir):
    """``work_dir``, or ``work_dir-2``, ``-3``, ... when a previous run used it (a new run never
    mixes its checkpoints and exports with an old one's); rank 0 decides for every rank."""
    if not os.path.isdir(work_dir) or not os.listdir(work_dir):
        choice = work_dir
    else:
        i = 2
        while os.path.exists(f"{work_dir}-{i}"):
            i += 1
        choice = f"{work_dir}-{i}"
    if dist.is_available() and dist.is_initialized():
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def _resume_target(cfg, work_dir):
    """(resume, checkpoint file, work dir) for --resume DIR | FILE | auto."""
    target = cfg.resume
    if target == "auto":
        runs = sorted((os.path.join(cfg.output, d) for d in os.listdir(cfg.output)
                       if os.path.isfile(os.path.join(cfg.output, d, "last_checkpoint"))),
                      key=os.path.getmtime) if os.path.isdir(cfg.output) else []
        if not runs:
            raise FileNotFoundError(f"--resume auto: no run with a last_checkpoint under "
                                    f"{cfg.output!r}")
        target = runs[-1]
    if os.path.isdir(target):
        marker = os.path.join(target, "last_checkpoint")
        if not os.path.isfile(marker):
            raise FileNotFoundError(f"--resume {target}: no last_checkpoint in it (no epoch "
                                    "finished?)")
        with open(marker) as f:
            ckpt = f.read().strip()
        return True, ckpt, os.path.abspath(target)
    if os.path.isfile(target):
        return True, os.path.abspath(target), os.path.dirname(os.path.abspath(target))
    raise FileNotFoundError(f"--resume {target!r}: no such run folder or checkpoint")


def print_rank_checksum(rank, tensors):
    """``rank R: final weights checksum X`` on stdout in one ``write()`` (atomic on a pipe, so
    the ranks' lines cannot interleave): lets users and tests see that DDP ranks agree."""
    import sys
    checksum = sum(t.detach().double().abs().sum().item() for t in tensors if t.is_floating_point())
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"rank {rank}: final weights checksum {checksum:.12e}\n".encode())


def train(cfg):
    """Build the run and train; returns the runner (its ``zoo`` dict has the run's facts)."""
    runner = build_runner(cfg)
    runner.train()
    return runner
