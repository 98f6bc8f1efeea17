_base_ = ["./_base_/retinanet_1x.py"]
model = "litv2_base_224"
drop_path = 0.3
lr = 0.0001
weight_decay = 1e-4  # LITv2 detection configs
paper = "box AP 46.7 (official README, s = 2)"
