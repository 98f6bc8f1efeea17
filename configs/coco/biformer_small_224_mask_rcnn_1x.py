_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "biformer_small_224"
drop_path = 0.2
paper = "box AP 47.8, mask AP 43.2 (official README, config maskrcnn.1x.biformer_small)"
