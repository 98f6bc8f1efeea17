"""Train a semantic segmentor (UperNet / Semantic FPN, mmseg layout) on a zoo backbone:
``python tools/train_seg.py configs/ade20k/cswin_tiny_224_upernet_160k.py --data-dir /data/ADEChallengeData2016``, or under torchrun --nproc_per_node 8 for DDP.
Recipes reproduce the papers' transfer tables (configs/ade20k/README.md); settings
resolve as for tools/train.py (DEFAULTS <- config <- flags <- --cfg-options).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbones.dense.engine import main  # noqa: E402

if __name__ == "__main__":
    result = main("segmentation")
    sys.exit(result if isinstance(result, int) else 0)
