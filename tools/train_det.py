"""Train a COCO detector (Mask / Faster R-CNN, RetinaNet, FCOS on torchvision) on a zoo backbone:
``python tools/train_det.py configs/coco/cswin_tiny_224_mask_rcnn_1x.py --data-dir /data/coco``, or under torchrun --nproc_per_node 8 for DDP.
Recipes reproduce the papers' transfer tables (configs/coco/README.md); settings
resolve as for tools/train.py (DEFAULTS <- config <- flags <- --cfg-options).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbones.dense.engine import main  # noqa: E402

if __name__ == "__main__":
    result = main("detection")
    sys.exit(result if isinstance(result, int) else 0)
