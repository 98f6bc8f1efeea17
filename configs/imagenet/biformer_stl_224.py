# BiFormer-STL (Swin-T layout, legacy BRA), ImageNet-1K from scratch: scripts/train.sh, 8 GPUs x
# 128 (global batch 1024, lr 1e-3), drop path 0.1. Official: 82.7 top-1.
_base_ = ["./_base_/biformer.py"]
model = "biformer_stl_224"
batch_size = 128
drop_path = 0.1
