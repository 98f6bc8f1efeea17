# BiFormer ImageNet-1K recipe (rayleizhu/BiFormer main.py, DeiT-style, on timm 0.8; defaults read
# from main.py and configs/train_args.yaml, launches from scripts/train.sh and the README;
# the project's biformer spec section 9): AdamW (eps 1e-8, betas 0.9/0.999), weight decay 0.05 (not
# on 1-D params and biases), lr 5e-4 per 512 images scaled linearly to the global batch, cosine
# stepped per epoch, 5 warm-up epochs from 1e-6, 300 epochs + 10 cool-down at min lr 1e-5,
# RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4, bicubic training interpolation, random
# erasing 0.25 (pixel, 1), Mixup 0.8 + CutMix 1.0 per batch (switch 0.5), label smoothing 0.1,
# repeated augmentation (DeiT RASampler, 3 repeats), EMA 0.99996 (kept; the released weights are
# the non-EMA model), AMP, seed 0, no gradient clipping. The shared DeiT-style keys are in deit.py.
_base_ = ["./deit.py"]
lr_base = 5e-4
lr_base_size = 512
warmup_epochs = 5
train_interpolation = "bicubic"
aug_repeats = 3  # main.py --repeated-aug (default on); 3 = DeiT RASampler's repeat count
model_ema_decay = 0.99996
seed = 0
