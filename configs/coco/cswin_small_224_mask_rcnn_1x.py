_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "cswin_small_224"
drop_path = 0.3
paper = "box AP 47.9, mask AP 43.2 (paper table, unverified; no config released: drop path is Swin-S's 0.3)"
