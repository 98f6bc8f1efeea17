_base_ = ["./_base_/mask_rcnn_1x.py"]
model = "cswin_tiny_224"
drop_path = 0.2
paper = "box AP 46.7, mask AP 42.2 (paper table, unverified; no config released: drop path is Swin-T's 0.2)"
