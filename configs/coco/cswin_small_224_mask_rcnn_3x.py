_base_ = ["./_base_/mask_rcnn_3x.py"]
model = "cswin_small_224"
drop_path = 0.3
paper = "box AP 50.0, mask AP 44.5 (official README; no config released: drop path is Swin-S's 0.3)"
