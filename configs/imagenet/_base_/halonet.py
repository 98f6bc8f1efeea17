# HaloNet ImageNet-1K base: the ResNet Strikes Back "A1" recipe (Wightman, Touvron, Jegou,
# arXiv:2110.00476, Table 1), which timm's a1h HaloNet weights are based on. Neither the HaloNet
# authors' TPU recipe nor timm's exact a1h / ra2 / c1 / ra3 hyperparameters are published (timm's
# hub cards say only "A1 with stronger dropout, stochastic depth and RandAugment"), so these are
# A1's published values: 600 epochs, global batch 2048, LAMB at lr 5e-3, weight decay 0.01, cosine
# per iteration after 5 warm-up epochs, binary cross-entropy (targets binarised at 0.2), no label
# smoothing, RandAugment rand-m7-mstd0.5-inc1, Mixup 0.2 / CutMix 1.0, repeated augmentation, no
# random erasing, no colour jitter, no EMA, no gradient clipping, stochastic depth 0.05, AMP.
# Each model file sets its resolution (timm's hybrids train at 256, haloregnetz_b at 224).
opt = "lamb"
opt_eps = 1e-6
lr_base = 5e-3
lr_base_size = 2048
weight_decay = 0.01
sched = "cosine"
sched_on_updates = True
epochs = 600
warmup_epochs = 5
cooldown_epochs = 0
warmup_lr = 1e-6
min_lr = 1e-6
bce_loss = True
bce_target_thresh = 0.2
smoothing = 0.0
aa = "rand-m7-mstd0.5-inc1"
color_jitter = 0.0
train_interpolation = "random"
reprob = 0.0
mixup = 0.2
cutmix = 1.0
mixup_prob = 1.0
mixup_switch_prob = 0.5
aug_repeats = 3
model_ema = False
drop_path = 0.05
amp = True
batch_size = 256
workers = 8
