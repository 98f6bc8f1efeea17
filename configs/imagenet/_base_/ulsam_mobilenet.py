# MobileNet-V1 / V2 + ULSAM, ImageNet-1K from scratch. The authors' recipe is unknown: their repo
# holds the module only, the poster and slides give no training setup, and the paper's
# experimental-setup section could not be read (spec ulsam.md section 8). This is the common
# PyTorch MobileNet-V2 recipe (d-li14/mobilenetv2.pytorch README, recalled, not re-read here):
# SGD momentum 0.9, lr 0.05 at a global batch of 256, weight decay 4e-5 on every parameter, cosine
# decay over 150 epochs, no label smoothing, RandomResizedCrop 224 + horizontal flip, validation
# Resize(256) + CenterCrop(224), bilinear. The same recipe trains the plain timm host
# (mobilenetv1_100 / mobilenetv2_100) as the baseline to compare with.
recipe = ("MobileNet + ULSAM: the common PyTorch MobileNet-V2 recipe (SGD 0.05 @ 256, wd 4e-5, "
          "cosine, 150 epochs); the authors' recipe is not published")
opt = "momentum"
momentum = 0.9
lr_base = 0.05
lr_base_size = 256
weight_decay = 4e-5
weight_decay_all = True
sched = "cosine"
sched_on_updates = True
epochs = 150
warmup_epochs = 0
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
batch_size = 256
workers = 8
seed = 42
