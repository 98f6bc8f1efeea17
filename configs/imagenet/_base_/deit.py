# The DeiT-style ImageNet-1K recipe that CSWin, BiFormer and most later ViT papers train with
# (timm train.py defaults of its day): AdamW (eps 1e-8, betas 0.9/0.999), weight decay 0.05 (not on
# 1-D params and biases), cosine stepped per epoch, 300 epochs + 10 cool-down at min lr 1e-5 after
# a warm-up from 1e-6, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4, random-resized crop
# (0.08, 1) x (3/4, 4/3), horizontal flip, random erasing 0.25 (pixel, 1), Mixup 0.8 + CutMix 1.0
# per batch (switch 0.5), label smoothing 0.1, EMA, AMP. Each paper's base overrides the rest.
opt = "adamw"
opt_eps = 1e-8
opt_betas = (0.9, 0.999)
weight_decay = 0.05
sched = "cosine"
sched_on_updates = False  # the papers' timm stepped the cosine per epoch
epochs = 300
cooldown_epochs = 10
warmup_lr = 1e-6
min_lr = 1e-5
aa = "rand-m9-mstd0.5-inc1"
color_jitter = 0.4
scale = (0.08, 1.0)
ratio = (3 / 4, 4 / 3)
hflip = 0.5
reprob = 0.25
remode = "pixel"
recount = 1
mixup = 0.8
cutmix = 1.0
mixup_prob = 1.0
mixup_switch_prob = 0.5
mixup_mode = "batch"
smoothing = 0.1
model_ema = True
amp = True
workers = 8
