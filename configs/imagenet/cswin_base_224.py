# CSWin-B, ImageNet-1K from scratch: 8 GPUs x 128, lr 1e-3 at batch 1024, wd 0.1, drop path 0.5,
# EMA 0.99992 (README command). Official README: 84.2 top-1.
_base_ = ["./_base_/cswin.py"]
model = "cswin_base_224"
batch_size = 128
lr_base = 1e-3
lr_base_size = 1024
weight_decay = 0.1
drop_path = 0.5
model_ema_decay = 0.99992
