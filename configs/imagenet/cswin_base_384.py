# CSWin-B 224 -> 384 fine-tune on ImageNet-1K (finetune.py; README command): 8 GPUs x 32, lr 5e-6
# at batch 256 for head and backbone alike, min lr 5e-7, wd 1e-8 on every parameter, 20 epochs +
# 10 cool-down, no warm-up, Mixup 0.1 / CutMix 0.1, drop path 0.7, EMA 0.9998, starting from the
# CSWin-B 224 EMA weights:
#   python tools/train.py configs/imagenet/cswin_base_384.py --data-dir X \
#       --initial-checkpoint ~/.cache/torch/hub/checkpoints/cswin_base_224.pth
# Official README: 85.5 top-1.
_base_ = ["./_base_/cswin.py"]
model = "cswin_base_384"
img_size = 384
batch_size = 32
lr_base = 5e-6
lr_base_size = 256
min_lr = 5e-7
weight_decay = 1e-8
weight_decay_all = True
epochs = 20
cooldown_epochs = 10
warmup_epochs = 0
mixup = 0.1
cutmix = 0.1
drop_path = 0.7
model_ema_decay = 0.9998
