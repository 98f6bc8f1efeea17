"""What every training job shares, whatever its task: mmengine's Runner with the zoo's fixes, the
device and the process group, the optimizer wrapper (AMP), the run folder and resume, the frozen
teacher a recipe may name, and the body of the training command lines.

What mmengine brings: the epoch / iteration loops, hooks, DDP through ``torchrun``
(``launcher='pytorch'``), checkpoints with resume, logging backends (JSON scalars, wandb). What it
gets wrong on torch 2.14, fixed here (``ecosystem.md`` section 2.2): resume (its local loader calls
``torch.load`` without ``weights_only`` while its checkpoints pickle message-hub objects), DDP on
the CPU (``launcher='pytorch'`` calls ``torch.cuda.set_device``), AMP on the CPU
(``AmpOptimWrapper`` asserts CUDA), and in-place checkpoint writes (a killed run would leave a
truncated file).
"""
import contextlib
import os
import sys
import time

import timm
import torch
import torch.distributed as dist
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner

from .checkpoint import load_weights, read_state_dict
from .data import DataError

__all__ = ["CpuAmpOptimWrapper", "ZooRunner", "build_optim_wrapper", "build_teacher",
           "create_runner", "ddp_wrapper_cfg", "experiment_name", "main", "net_of",
           "resolve_device", "setup_distributed"]

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
        stack = contextlib.ExitStack()
        stack.enter_context(super().optim_context(model))
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack


def build_optim_wrapper(optimizer, device, amp=False, amp_dtype="bfloat16", **kwargs):
    """mmengine's optimizer wrapper (``clip_grad``, ``accumulative_counts``) with autocast when
    ``amp``: ``amp_dtype`` on a GPU (a grad scaler for float16), bf16 on the CPU."""
    if amp and device.type == "cuda":
        return AmpOptimWrapper(dtype=amp_dtype, optimizer=optimizer, **kwargs)
    if amp:
        return CpuAmpOptimWrapper(optimizer=optimizer, **kwargs)
    return OptimWrapper(optimizer=optimizer, **kwargs)


def resolve_device(cfg):
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_distributed(device):
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


def ddp_wrapper_cfg(device, **kwargs):
    """mmengine's DDP wrapper for a task model (what ``model_wrapper_cfg`` names)."""
    return dict(type="MMDistributedDataParallel", broadcast_buffers=False, **kwargs,
                device_ids=None if device.type != "cuda" else [torch.cuda.current_device()])


def net_of(runner):
    """The network a run trains (the task model's ``net``), under any DDP / FSDP wrapper."""
    model = runner.model
    return (model.module if hasattr(model, "module") else model).net


def build_teacher(spec, num_classes, device):
    """The frozen teacher a recipe names: ``teacher = dict(model=NAME, checkpoint=FILE |
    pretrained=True, model_kwargs={...})``, in eval mode, without gradients, on ``device``. The
    task keeps it out of the student's module tree, so no checkpoint, EMA or export holds it."""
    spec = dict(spec)
    name, checkpoint = spec.pop("model", None), spec.pop("checkpoint", None)
    pretrained, kwargs = spec.pop("pretrained", False), dict(spec.pop("model_kwargs", {}))
    if spec:
        raise ValueError(f"teacher: unknown keys {sorted(spec)}; a teacher is dict(model=..., "
                         "checkpoint=... or pretrained=True, model_kwargs=...)")
    if not name or not timm.is_model(name):
        raise ValueError(f"teacher: model {name!r} is not a timm or zoo model name")
    if not checkpoint and not pretrained:
        raise ValueError(f"teacher {name}: give checkpoint=FILE or pretrained=True (a teacher "
                         "with random weights teaches nothing)")
    teacher = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if checkpoint:
        load_weights(teacher, read_state_dict(checkpoint, what="teacher checkpoint"), checkpoint,
                     num_classes_given=False, flag="teacher checkpoint")
    return teacher.eval().requires_grad_(False).to(device)


class ZooRunner(Runner):
    def _init_model_weights(self):
        """Nothing: the weights come from timm (constructor, --pretrained, --initial-checkpoint)
        and are identical on every rank (same seed; DDP broadcasts at wrap time). mmengine's
        version re-initialises timm models that define init_weights() and broadcasts every
        tensor, which FSDP's sharded ones do not support."""

    def _log_env(self, env_cfg):
        """One line instead of mmengine's build banner and config dump (the config is written to
        the run folder)."""
        import mmengine
        self.logger.info(
            f"torch {torch.__version__}, timm {timm.__version__}, mmengine "
            f"{mmengine.__version__}; {self._world_size} process(es), launcher "
            f"{self._launcher}, seed {self._seed}; work dir: {self.work_dir}")

    def get_hooks_info(self):
        return ", ".join(type(h).__name__ for h in self.hooks)


def create_runner(cfg, *, experiment, device, launcher, checkpoint_hook, model_wrapper_cfg,
                  cudnn_benchmark, custom_hooks=(), **runner_kwargs):
    """The run's Runner in ``<cfg.output>/<experiment>/`` (a fresh folder, or the one
    ``cfg.resume`` names), with the default hooks, the logging backends (JSON scalars; wandb with
    ``cfg.log_wandb``) and ``cfg`` dumped beside the checkpoints. ``runner_kwargs``: the task's
    model, loaders, loops, evaluator, optimizer wrapper and param schedulers."""
    from mmengine.hooks import (DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook,
                                RuntimeInfoHook)
    _install_mmengine_fixes()
    work_dir = os.path.abspath(os.path.join(cfg.output, experiment))
    _TRUSTED_ROOTS.add(os.path.abspath(cfg.output))
    resume, load_from = False, None
    if cfg.resume:
        resume, load_from, work_dir = _resume_target(cfg, work_dir)
    else:
        work_dir = _fresh_dir(work_dir)
    _TRUSTED_ROOTS.add(work_dir)
    vis_backends = [dict(type="LocalVisBackend")]
    if cfg.log_wandb:
        vis_backends.append(dict(type="WandbVisBackend",
                                 init_kwargs=dict(project=cfg.wandb_project, name=experiment)))
    return ZooRunner(
        work_dir=work_dir,
        default_hooks=dict(
            runtime_info=RuntimeInfoHook(), timer=IterTimerHook(),
            logger=LoggerHook(interval=cfg.log_interval), param_scheduler=ParamSchedulerHook(),
            checkpoint=checkpoint_hook, sampler_seed=DistSamplerSeedHook()),
        custom_hooks=list(custom_hooks),
        launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend="nccl" if device.type == "cuda" else "gloo"),
                     cudnn_benchmark=cudnn_benchmark),
        randomness=dict(seed=cfg.seed, deterministic=bool(cfg.deterministic)),
        visualizer=dict(type="Visualizer", vis_backends=vis_backends,
                        name=f"visualizer-{experiment}-{id(cfg)}"),
        resume=resume, load_from=load_from,
        experiment_name=f"{experiment}-{os.getpid()}-{id(cfg)}",
        log_level="INFO",
        cfg=dict(cfg.to_dict(), model_wrapper_cfg=model_wrapper_cfg),
        **runner_kwargs)


def experiment_name(cfg, *parts):
    """``cfg.experiment``, or ``<parts>-<timestamp>``."""
    return cfg.experiment or "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")])


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


def main(run, rank_tensors):
    """The body of a training command line: ``run()`` (parse, resolve, train: the runner), then
    under DDP each rank's checksum of ``rank_tensors(net)`` (users and tests see that the ranks
    agree). Returns the exit status: 0, or 2 after one ``error: ...`` line on stderr for a
    problem with the inputs."""
    try:
        runner = run()
    except (DataError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if runner.world_size > 1:
        _print_rank_checksum(runner.rank, rank_tensors(net_of(runner)))
    return 0


def _print_rank_checksum(rank, tensors):
    """``rank R: final weights checksum X`` on stdout in one ``write()``: atomic on a pipe, so the
    ranks' lines cannot interleave."""
    checksum = sum(t.detach().double().abs().sum().item() for t in tensors if t.is_floating_point())
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"rank {rank}: final weights checksum {checksum:.12e}\n".encode())
