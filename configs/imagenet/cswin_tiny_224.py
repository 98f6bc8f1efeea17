# CSWin-T, ImageNet-1K from scratch: 8 GPUs x 256, lr 2e-3 at batch 2048, wd 0.05, drop path 0.2,
# EMA 0.99984 (README command). Official README: 82.8 top-1.
_base_ = ["./_base_/cswin.py"]
model = "cswin_tiny_224"
batch_size = 256
lr_base = 2e-3
lr_base_size = 2048
weight_decay = 0.05
drop_path = 0.2
model_ema_decay = 0.99984
