# What the CNN recipes of the plug-in attention papers (ELA, ULSAM) share: the plain torchvision /
# PyTorch-MobileNet ImageNet setup. SGD with momentum 0.9, lr given per 256 images, a cosine per
# optimizer update down to 0 without cool-down, cross-entropy without label smoothing,
# RandomResizedCrop 224 + horizontal flip only (no RandAugment, colour jitter, random erasing,
# Mixup / CutMix), bilinear resizing, validation Resize(256) + CenterCrop(224), no EMA, no drop
# path. Each family's base sets its lr, weight decay, epochs, warm-up and batch.
opt = "momentum"
momentum = 0.9
lr_base_size = 256
sched = "cosine"
sched_on_updates = True
warmup_lr = 0.0
min_lr = 0.0
cooldown_epochs = 0
smoothing = 0.0
aa = None
color_jitter = 0.0
train_interpolation = "bilinear"
interpolation = "bilinear"
crop_pct = 0.875
reprob = 0.0
mixup = 0.0
cutmix = 0.0
model_ema = False
drop_path = None
