# MobileNet-V1 / V2 + ULSAM, ImageNet-1K from scratch. The authors' recipe is unknown: their repo
# holds the module only, the poster and slides give no training setup, and the paper's
# experimental-setup section could not be read (spec ulsam.md section 8). This is the common
# PyTorch MobileNet-V2 recipe (d-li14/mobilenetv2.pytorch README, recalled, not re-read here):
# SGD momentum 0.9, lr 0.05 at a global batch of 256, weight decay 4e-5 on every parameter, cosine
# decay over 150 epochs, no label smoothing, RandomResizedCrop 224 + horizontal flip, validation
# Resize(256) + CenterCrop(224), bilinear. The same recipe trains the plain timm host
# (mobilenetv1_100 / mobilenetv2_100) as the baseline to compare with.
_base_ = ["./sgd_cnn.py"]
recipe = ("MobileNet + ULSAM: the common PyTorch MobileNet-V2 recipe (SGD 0.05 @ 256, wd 4e-5, "
          "cosine, 150 epochs); the authors' recipe is not published")
lr_base = 0.05
weight_decay = 4e-5
weight_decay_all = True
epochs = 150
warmup_epochs = 0
batch_size = 256
workers = 8
seed = 42
