# SHViT-S4 RetinaNet 1x (ysj9909/SHViT downstream/configs/retinanet_shvit_s4_fpn_1x_coco.py):
# the official EfficientViTFPN neck (in_channels [224, 336, 448], num_outs 5, one transposed-conv
# level at stride 8, one 3x3/2 conv on the last backbone map at stride 128), AdamW lr 1e-4,
# weight decay 0.05, step 8 / 11 after 500 warm-up iterations, 8 GPUs x 2 images, 1333x800.
# BatchNorms stay in eval mode while training (norm_eval), nothing frozen.
_base_ = ["./_base_/retinanet_1x.py"]
model = "shvit_s4_256"
lr = 1e-4
weight_decay = 0.05
norm_eval = True
frozen_stages = -1
drop_path = 0.0  # the official detection backbone has no stochastic depth
paper = "box AP 38.8, AP50 59.8, AP75 41.1 (official downstream/README.md)"
