"""Train any zoo or timm model: ``python tools/train.py configs/imagenet/cswin_tiny_224.py
--data-dir /data/imagenet`` (one process), ``torchrun --nproc_per_node 8 tools/train.py ...``
(DDP), or ``python tools/train.py`` alone: the embedded digits recipe on the CPU.

Flags are timm train.py's (``--model``, ``--lr``, ``--epochs``, ``--amp``, ``--mixup``, ...);
``python tools/train.py --help`` lists them. Outputs go to ``<output>/<experiment>/``: mmengine
checkpoints for ``--resume``, JSON scalars under ``<timestamp>/vis_data/``, the best epochs'
weights under ``best/`` and the final (EMA) weights as ``<model>.safetensors``.
"""
from ..training import classification, runtime
from ..training.config import build_parser, resolve_config
from ..training.fsdp import full_state


def run(argv=None):
    """Train; returns the runner (its ``zoo`` dict has the run's facts)."""
    return classification.train(resolve_config(build_parser("tools/train.py").parse_args(argv)))


def main(argv=None):
    """Train; returns the exit status (2 after one ``error: ...`` line for bad inputs)."""
    return runtime.main(lambda: run(argv),
                        lambda net: full_state(net.state_dict()).values())  # gathers FSDP shards
