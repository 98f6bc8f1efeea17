_base_ = ["./_base_/retinanet_1x.py"]
model = "litv2_medium_224"
drop_path = 0.2
lr = 0.0001
weight_decay = 1e-4  # LITv2 detection configs
paper = "box AP 46.0 (official README, s = 2)"
