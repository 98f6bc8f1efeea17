_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "litv2_medium_224"
model_kwargs = dict(window_sizes=(0, 0, 4, 1))
drop_path = 0.2
lr = 0.0002
weight_decay = 1e-4  # LITv2 detection configs
paper = "box AP 46.5, mask AP 42.0 (official README, s = 4)"
