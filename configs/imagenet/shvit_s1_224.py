# SHViT-S1, ImageNet-1K from scratch at 224: 8 GPUs x 256, weight decay 0.025. Official README: 72.8 top-1.
_base_ = ["./_base_/shvit.py"]
model = "shvit_s1_224"
img_size = 224
weight_decay = 0.025
