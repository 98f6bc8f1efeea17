# ResNet + ELA, ImageNet-1K from scratch. The ELA authors released no ResNet ImageNet code
# (spec ela.md section 4); this is the ResNet paper's recipe (He et al., arXiv:1512.03385,
# section 3.4, as torchvision's reference trains it): global batch 256, SGD momentum 0.9 at
# lr 0.1, weight decay 1e-4, 90 epochs, cross-entropy, RandomResizedCrop 224 + flip, validation
# Resize(256) + CenterCrop(224), the lr divided by 10 every 30 epochs (timm's step schedule).
_base_ = ["./sgd_cnn.py"]
lr_base = 0.1
weight_decay = 1e-4
epochs = 90
sched = "step"
decay_epochs = 30
decay_rate = 0.1
sched_on_updates = False
warmup_epochs = 0
batch_size = 32
workers = 8
