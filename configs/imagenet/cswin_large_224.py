# CSWin-L ImageNet-22K -> 1K fine-tune at 224 (finetune.py --fine-22k; README command): 8 GPUs x
# 64, head lr 2.5e-4 at batch 512, backbone lr x 0.05, min lr 5e-7, wd 1e-8 on every parameter,
# 30 epochs + 10 cool-down, no warm-up, Mixup 0.01 / CutMix 0.3, drop path 0.2, EMA 0.9996,
# bicubic, activation checkpointing, starting from the 22K weights (their 21,841-class head is
# replaced: pass --num-classes 1000):
#   python tools/train.py configs/imagenet/cswin_large_224.py --data-dir X --num-classes 1000 \
#       --initial-checkpoint ~/.cache/torch/hub/checkpoints/cswin_large_22k_224.pth
# Official README: 86.5 top-1.
_base_ = ["./_base_/cswin.py"]
model = "cswin_large_224"
batch_size = 64
lr_base = 2.5e-4
lr_base_size = 512
backbone_lr_scale = 0.05
min_lr = 5e-7
weight_decay = 1e-8
weight_decay_all = True
epochs = 30
cooldown_epochs = 10
warmup_epochs = 0
mixup = 0.01
cutmix = 0.3
drop_path = 0.2
model_ema_decay = 0.9996
train_interpolation = "bicubic"
grad_checkpointing = True
