_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "biformer_base_224"
drop_path = 0.3
paper = "box AP 48.6, mask AP 43.7 (official README, config maskrcnn.1x.biformer_base)"
