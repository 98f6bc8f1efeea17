_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "litv2_small_224"
drop_path = 0.2
lr = 0.0002
weight_decay = 1e-4  # LITv2 detection configs
paper = "box AP 44.9, mask AP 40.8 (official README, s = 2)"
