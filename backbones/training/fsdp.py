"""FSDP2 for the large variants (``--fsdp`` under torchrun): the model sharded block by block,
what mmengine sees of it, and checkpoints gathered into the plain layout (they resume with another
process count, or without FSDP). ``full_state`` / ``laid_out_like`` move tensors between the
sharded and the plain layout for every hook that saves or restores weights."""
import torch
import torch.nn as nn
from mmengine.hooks import Hook

from .runtime import net_of

__all__ = ["ShardedCheckpointHook", "full_state", "laid_out_like", "register_sharded_wrapper",
           "shard_model"]


def _is_sharded(t):
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def full_state(state):
    """``state`` with every FSDP-sharded (DTensor) entry gathered into a full CPU tensor; a
    collective under FSDP, so every rank must call it."""
    return {k: (v.full_tensor() if _is_sharded(v) else v).detach().cpu() for k, v in state.items()}


def laid_out_like(full, target):
    """``full`` laid out as ``target``: sharded the same way when ``target`` is an FSDP DTensor
    (a collective then), on its device and dtype otherwise."""
    if _is_sharded(target):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(full.to(target.device, target.dtype), target.device_mesh,
                                 target.placements)
    return full.to(target.device, target.dtype)


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


def register_sharded_wrapper():
    """Registers ``ZooShardedWrapper``, the ``model_wrapper_cfg`` of an FSDP run."""
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


class ShardedCheckpointHook(Hook):
    """FSDP checkpoints in the plain layout: the sharded model and optimizer state are gathered
    on every rank before the (rank-0) CheckpointHook writes them, and scattered back into shards
    when a run resumes, so an FSDP checkpoint is an ordinary one (resumable with another GPU
    count, or without FSDP)."""

    priority = "ABOVE_NORMAL"  # load: before the model / optimizer are filled from the file

    def after_train_epoch(self, runner):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, \
            get_optimizer_state_dict

        net = net_of(runner)
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

        net = net_of(runner)
        live = net.state_dict()
        state = checkpoint["state_dict"]
        for k, target in live.items():
            key = f"net.{k}"
            if key in state:
                state[key] = laid_out_like(state[key], target)
        if "optimizer" in checkpoint and runner._resume:
            set_optimizer_state_dict(net, runner.optim_wrapper.optimizer, checkpoint["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
            checkpoint["optimizer"] = runner.optim_wrapper.state_dict()
