"""The zoo's mmengine hooks: the EMA of the weights, per-epoch (or per-iteration) reseeding,
smoke-test and job-length limits, the console's progress bar and summary, and the
``.safetensors`` exports of the best and the final weights."""
import logging
import os
import random
import time

import numpy as np
import torch
from mmengine.hooks import Hook

from .checkpoint import write_safetensors
from .fsdp import full_state, laid_out_like
from .runtime import net_of

__all__ = ["ExportHook", "MaxStepsHook", "ModelEmaHook", "ProgressHook", "ReseedHook",
           "StopAfterEpochsHook"]


def _ema_hook(runner):
    return next((h for h in runner.hooks if isinstance(h, ModelEmaHook)), None)


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
        self.ema = {k: v.detach().clone() for k, v in net_of(runner).state_dict().items()
                    if v.is_floating_point()}

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if (runner.iter + 1) % self.accum_steps:
            return
        live = net_of(runner).state_dict()
        for k, avg in self.ema.items():
            avg.lerp_(live[k].detach(), 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self, runner):
        live = net_of(runner).state_dict()
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
            avg.copy_(laid_out_like(saved[k], avg))

    def full_ema(self):
        return full_state(self.ema)


class ReseedHook(Hook):
    """Reseeds torch / numpy / random from (seed, epoch, rank) at every epoch, or from (seed,
    iteration, rank) at every iteration of an iteration-based loop, so the training process's
    draws (mixup, drop path, proposal sampling) depend on nothing else: a resumed run continues
    exactly as the unbroken one (validation draws no longer shift them). The augmentations,
    drawn in the loader's workers, are seeded per sample instead (``data.SeededSampler``)."""

    priority = "VERY_HIGH"

    def __init__(self, seed, by_epoch=True):
        self.seed, self.by_epoch = int(seed), by_epoch

    def _reseed(self, step, rank):
        s = (self.seed * 1_000_003 + step * 7919 + rank) % (2 ** 31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    def before_train_epoch(self, runner):
        if self.by_epoch:
            self._reseed(runner.epoch, runner.rank)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if not self.by_epoch:
            self._reseed(runner.iter, runner.rank)


class MaxStepsHook(Hook):
    """Ends each epoch after ``max_steps`` iterations (smoke tests, quick looks)."""

    def __init__(self, max_steps):
        self.max_steps = int(max_steps)

    def before_train_epoch(self, runner):
        loop = runner.train_loop
        if not hasattr(loop, "_zoo_full_loader"):
            loop._zoo_full_loader = loop.dataloader
        loop.dataloader = _FirstBatches(loop._zoo_full_loader, self.max_steps)


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
    differs from the pretrained cfg's, so the overlay states it). Only the student's weights: a
    distillation teacher is never part of them."""

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
        state = full_state(net_of(runner).state_dict())  # every rank: a collective under FSDP
        path = os.path.join(runner.work_dir, "best",
                            f"{self.model_name}_epoch{epoch:03d}_top1-{top1:.2f}.safetensors")
        if runner.rank != 0:
            self.best.append((top1, epoch, path))
            self.best = sorted(self.best, key=lambda b: (-b[0], b[1]))[:self.keep]
            return
        write_safetensors(state, path, dict(model=self.model_name, epoch=str(epoch),
                                            top1=f"{top1:.4f}"))
        self.best.append((top1, epoch, path))
        self.best.sort(key=lambda b: (-b[0], b[1]))
        for _, _, old in self.best[self.keep:]:
            if os.path.exists(old):
                os.remove(old)
        self.best = self.best[:self.keep]

    def after_train(self, runner):
        ema = _ema_hook(runner)
        state = ema.full_ema() if ema is not None else full_state(net_of(runner).state_dict())
        if ema is not None:  # the EMA covers floating tensors; integer buffers come from the net
            state = dict(full_state(net_of(runner).state_dict()), **state)
        if runner.rank != 0:
            return
        self.final_path = os.path.join(runner.work_dir, f"{self.model_name}.safetensors")
        write_safetensors(state, self.final_path, dict(model=self.model_name,
                                                       epoch=str(runner.epoch),
                                                       ema=str(ema is not None)))
        n = net_of(runner).num_classes
        kwargs = "".join(f", {k}={v!r}" for k, v in self.model_kwargs.items())
        runner.logger.info(
            f"final weights{' (EMA)' if ema is not None else ''}: {self.final_path}; load with "
            f"timm.create_model({self.model_name!r}, pretrained=True, num_classes={n}{kwargs}, "
            f"pretrained_cfg_overlay=dict(file={self.final_path!r}, num_classes={n}))")
