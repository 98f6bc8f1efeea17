_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "cswin_base_224"
drop_path = 0.3
paper = "box AP 48.7, mask AP 43.9 (paper table, unverified; no config released: drop path is Swin-B's 0.3)"
