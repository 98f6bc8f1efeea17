"""Train any zoo or timm model: ``python tools/train.py configs/imagenet/cswin_tiny_224.py
--data-dir /data/imagenet`` (one process), ``torchrun --nproc_per_node 8 tools/train.py ...``
(DDP), or ``python tools/train.py`` alone: the embedded digits recipe on the CPU.

Flags are timm train.py's (``--model``, ``--lr``, ``--epochs``, ``--amp``, ``--mixup``, ...);
``python tools/train.py --help`` lists them. Outputs go to ``<output>/<experiment>/``: mmengine
checkpoints for ``--resume``, JSON scalars under ``<timestamp>/vis_data/``, the best epochs'
weights under ``best/`` and the final (EMA) weights as ``<model>.safetensors``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbones.training import build_parser, resolve_config  # noqa: E402
from backbones.training.data import DataError  # noqa: E402


def main(argv=None):
    args = build_parser("tools/train.py").parse_args(argv)
    try:
        cfg = resolve_config(args)
        from backbones.training.engine import train
        runner = train(cfg)
    except (DataError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if runner.world_size > 1:  # lets a user (and the tests) see that the ranks agree
        from backbones.training.engine import full_state, print_rank_checksum
        net = runner.model.module.net if hasattr(runner.model, "module") else runner.model.net
        print_rank_checksum(runner.rank, full_state(net.state_dict()).values())  # gathers FSDP
    return runner


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
