# BiFormer-S, ImageNet-1K from scratch: README / scripts/train.sh command, 2 nodes x 8 GPUs x 128
# (global batch 2048, lr 2e-3 by the linear scaling), drop path 0.15. Official: 83.8 top-1.
_base_ = ["./_base_/biformer.py"]
model = "biformer_small_224"
batch_size = 128
drop_path = 0.15
