_base_ = ["./_base_/retinanet_1x.py"]
model = "biformer_small_224"
drop_path = 0.2
paper = "box AP 45.9 (official README, config retinanet.1x.biformer_small)"
