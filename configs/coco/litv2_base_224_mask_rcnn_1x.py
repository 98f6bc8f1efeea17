_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "litv2_base_224"
drop_path = 0.3
lr = 0.0002
weight_decay = 1e-4  # LITv2 detection configs
paper = "box AP 47.3, mask AP 42.6 (official README, s = 2)"
