_base_ = ["./_base_/retinanet_1x.py"]
model = "biformer_base_224"
drop_path = 0.3
paper = "box AP 47.1 (official README, config retinanet.1x.biformer_base)"
