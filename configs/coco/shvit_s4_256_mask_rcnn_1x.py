# SHViT-S4 Mask R-CNN 1x (ysj9909/SHViT downstream/configs/mask_rcnn_shvit_s4_fpn_1x_coco.py):
# the official EfficientViTFPN neck (in_channels [224, 336, 448], num_outs 5, two transposed-conv
# levels: strides 4-64; build_detector picks it for SHViT's 16 / 32 / 64 maps), AdamW lr 1e-4,
# weight decay 0.05, step 8 / 11 after 500 warm-up iterations, 8 GPUs x 2 images, 1333x800.
# The official backbone keeps every BatchNorm in eval mode while training (norm_eval) and freezes
# nothing (frozen_stages=-1).
_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "shvit_s4_256"
lr = 1e-4
weight_decay = 0.05
norm_eval = True
frozen_stages = -1
drop_path = 0.0  # the official detection backbone has no stochastic depth
paper = "box AP 39.0, mask AP 35.9 (official downstream/README.md)"
