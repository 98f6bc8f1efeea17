# LITv2-Base, ImageNet-1K from scratch: 8 GPUs x 128 (global batch 1024, lr 1e-3), drop path 0.5.
# Official README: 83.6 top-1.
_base_ = ["./_base_/litv2.py"]
model = "litv2_base_224"
drop_path = 0.5
