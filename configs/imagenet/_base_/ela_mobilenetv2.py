# MobileNetV2 + ELA, ImageNet-1K from scratch: the official ELA code's defaults (spec ela.md
# section 7; Xuwei86/ELA_Code MbV2/imagenet.py, a fork of d-li14/mobilenetv2.pytorch):
# `torchrun --nproc_per_node 2 imagenet.py -a mbv2_... -b 128`, i.e. a global batch of 256,
# plain SGD (momentum 0.9, no Nesterov) at lr 0.1 unscaled, weight decay 1e-4 on every parameter,
# 200 epochs (the official TensorBoard logs), cross-entropy without label smoothing,
# RandomResizedCrop 224 + horizontal flip only, validation Resize(256) + CenterCrop(224)
# (bilinear), seed 42. The official --lr-decay choices are step (an exponential decay to 0.1x),
# cos, linear and a milestone schedule, with an optional 5-epoch warm-up; which one produced the
# paper's numbers is not recorded. This recipe takes cos with the warm-up.
_base_ = ["./sgd_cnn.py"]
lr_base = 0.1
weight_decay = 1e-4
weight_decay_all = True
epochs = 200
warmup_epochs = 5
batch_size = 128
workers = 4
seed = 42
