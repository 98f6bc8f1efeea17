# SHViT-S4, ImageNet-1K from scratch at 256: 8 GPUs x 256, weight decay 0.03. Official README: 79.4 top-1.
_base_ = ["./_base_/shvit.py"]
model = "shvit_s4_256"
img_size = 256
weight_decay = 0.03
