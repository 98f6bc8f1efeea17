# LITv2-B 224 -> 384 fine-tune (litv2-base-finetune-384.yaml): 30 epochs, 5 warm-up, lr 2e-5 per
# 512 (4e-5 at 8 x 128), warm-up from 2e-8, min lr 2e-7, weight decay 1e-8, drop path 0.5, direct
# resize to 384 at test (crop_pct 1.0), starting from the LITv2-B 224 weights:
#   python tools/train.py configs/imagenet/litv2_base_384.py --data-dir X \
#       --initial-checkpoint ~/.cache/torch/hub/checkpoints/litv2_b.pth
# Official README: 84.7 top-1.
_base_ = ["./_base_/litv2.py"]
model = "litv2_base_384"
img_size = 384
crop_pct = 1.0
epochs = 30
warmup_epochs = 5
lr_base = 2e-5
warmup_lr = 2e-8
min_lr = 2e-7
weight_decay = 1e-8
drop_path = 0.5
