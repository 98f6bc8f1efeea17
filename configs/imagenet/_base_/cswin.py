# CSWin Transformer ImageNet-1K recipe (microsoft/CSWin-Transformer main.py on timm 0.3.4, README
# commands; ../shared/specs/cswin.md section 7): AdamW, no weight decay on 1-D params and biases,
# cosine per epoch with 20 warm-up epochs from 1e-6, 300 epochs + 10 cool-down at min lr 1e-5,
# RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel), Mixup 0.8 + CutMix 1.0 per batch,
# label smoothing 0.1, EMA per step, AMP, seed 42. The lr is scaled to the global batch from the
# paper's (lr_base at lr_base_size), so any GPU count reproduces the recipe's lr per image.
opt = "adamw"
opt_eps = 1e-8
opt_betas = (0.9, 0.999)
weight_decay = 0.05
sched = "cosine"
sched_on_updates = False  # timm 0.3.4 stepped the cosine per epoch
epochs = 300
cooldown_epochs = 10
warmup_epochs = 20
warmup_lr = 1e-6
min_lr = 1e-5
aa = "rand-m9-mstd0.5-inc1"
color_jitter = 0.4
scale = (0.08, 1.0)
ratio = (3 / 4, 4 / 3)
hflip = 0.5
train_interpolation = "random"
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
seed = 42
workers = 8
