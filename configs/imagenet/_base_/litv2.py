# LITv2 ImageNet-1K recipe (ziplab/LITv2 classification/, Swin-style config; the project's litv2 spec
# section 8): 300 epochs, AdamW (eps 1e-8, betas 0.9/0.999), weight decay 0.05 (not on 1-D params
# and biases), lr 5e-4 per 512 images scaled to the global batch (8 x 128 -> 1e-3), 20 warm-up
# epochs from 1e-6, cosine per iteration to 1e-5, no cool-down, gradient clipping 5.0, RandAugment
# rand-m9-mstd0.5-inc1, colour jitter 0.4, bicubic, random erasing 0.25, Mixup 0.8 / CutMix 1.0,
# label smoothing 0.1, AMP, no EMA, seed 0. Not expressible here: the official 0.01 x lr on the DTM
# offset convs' weights (OFFSET_LR_MULTI; model card).
_base_ = ["./deit.py"]
lr_base = 5e-4
lr_base_size = 512
warmup_epochs = 20
sched_on_updates = True
cooldown_epochs = 0
clip_grad = 5.0
train_interpolation = "bicubic"
model_ema = False
batch_size = 128
seed = 0
