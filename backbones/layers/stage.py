"""One stage of a hierarchical backbone: ``downsample`` then ``blocks``, with grad checkpointing."""
from typing import Iterable, Optional

import torch
import torch.nn as nn
from timm.models import checkpoint_seq

__all__ = ["Stage"]


class Stage(nn.Module):
    """``downsample`` (or nothing) followed by ``blocks`` run in sequence.

    Keys are ``downsample.*`` and ``blocks.<i>.*``, the layout every zoo family's checkpoints use.

    Args:
        downsample: the stage's patch merging / transition, or None.
        blocks: the stage's blocks.
        blocks_fmt: ``'NHWC'`` when the stage takes and returns NCHW maps but its blocks run on
            channels-last tokens (BiFormer); None when the blocks take what the downsample gives.
    """
    blocks_fmt: torch.jit.Final[Optional[str]]

    def __init__(self, downsample: Optional[nn.Module], blocks: Iterable[nn.Module],
                 blocks_fmt: Optional[str] = None):
        super().__init__()
        if blocks_fmt not in (None, "NHWC"):
            raise ValueError(f"blocks_fmt must be None or 'NHWC', got {blocks_fmt!r}")
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.blocks_fmt = blocks_fmt
        self.grad_checkpointing = False

    def forward(self, x):
        x = self.downsample(x)
        if self.blocks_fmt == "NHWC":
            x = x.permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        if self.blocks_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        return x
