# UperNet (PPM 1/2/3/6, 512 channels) + FCN auxiliary head on stage 3 (weight 0.4), 160k
# iterations, 2 images per GPU on 8 GPUs, 512x512 crops of (2048, 512) rescaled by 0.5-2.0;
# AdamW lr 6e-5, weight decay 0.01 (none on norms / biases / position tables), linear warm-up
# 1500 iterations from 1e-6, poly decay (power 1) to 0; whole-image test at (2048, 512).
task = "segmentation"
head = "upernet"
pretrained = True
max_iters = 160000
val_interval = 16000
lr = 6e-5
weight_decay = 0.01
warmup_iters = 1500
warmup_ratio = 1e-6
sched = "poly"
poly_power = 1.0
min_lr = 0.0
batch_size = 2
crop_size = (512, 512)
scale = (2048, 512)
test_mode = "whole"
amp = True
