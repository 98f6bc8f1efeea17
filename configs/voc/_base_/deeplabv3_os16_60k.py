# DeepLabV3 on Pascal VOC 2012 as the ELA authors train it (Xuwei86/ELA_Code semantic/main.py, a
# fork of VainF/DeepLabV3Plus-Pytorch; spec ela.md section 7): torchvision's DeepLabV3 head on the
# backbone dilated to output stride 16 (ASPP rates 6/12/18), the 1,464 `train` images (the
# official default year is '2012', not the 10,582-image '2012_aug' set), 513x513 crops of images
# rescaled by 0.5-2.0 with flips, 60k iterations of batch 6 on one process, SGD momentum 0.9 at
# lr 0.025 for the head and 0.0025 for the backbone, weight decay 5e-4 on every parameter, poly
# decay (power 0.9) with a 1e-6 floor, no warm-up, backbone BatchNorm momentum 0.01,
# cross-entropy ignoring 255, seed 42, whole-image validation at the image's own size (batch 1).
# The official crop pads with label 0 (background), not 255: pad_label keeps that.
task = "segmentation"
dataset = "voc"
head = "deeplabv3"
output_stride = 16
pretrained = True
drop_path = 0.0
train_split = "train"
val_split = "val"
label_dir = "SegmentationClass"
crop_size = (513, 513)
ratio_range = (0.5, 2.0)
pad_label = 0
test_mode = "whole"
opt = "sgd"
momentum = 0.9
lr = 0.025
backbone_lr_mult = 0.1
weight_decay = 5e-4
weight_decay_all = True
sched = "poly"
poly_power = 0.9
min_lr = 1e-6
warmup_iters = 0
max_iters = 60000
val_interval = 6000
batch_size = 6
backbone_bn_momentum = 0.01
seed = 42
amp = False
