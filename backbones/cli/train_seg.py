"""Train a semantic segmentor (UperNet / Semantic FPN, mmseg layout) on a zoo backbone:
``python tools/train_seg.py configs/ade20k/cswin_tiny_224_upernet_160k.py --data-dir
/data/ADEChallengeData2016``, or under torchrun --nproc_per_node 8 for DDP. Recipes reproduce the
papers' transfer tables (configs/ade20k/README.md); settings resolve as for tools/train.py
(DEFAULTS <- config <- flags <- --cfg-options).
"""
from ..dense import engine
from ..dense.config import build_parser, resolve_config
from ..training import runtime


def run(argv=None):
    """Train; returns the runner."""
    args = build_parser("segmentation").parse_args(argv)
    return engine.train(resolve_config(args, "segmentation"))


def main(argv=None):
    """Train; returns the exit status (2 after one ``error: ...`` line for bad inputs)."""
    # parameters only: BatchNorm statistics stay per process on the CPU (SyncBN needs CUDA)
    return runtime.main(lambda: run(argv), lambda net: net.parameters())
