_base_ = ["./_base_/retinanet_1x.py"]
model = "litv2_small_224"
model_kwargs = dict(window_sizes=(0, 0, 4, 1))
drop_path = 0.2
lr = 0.0001
weight_decay = 1e-4  # LITv2 detection configs
paper = "box AP 43.7 (official README, s = 4)"
