_base_ = ["./_base_/cascade_mask_rcnn_3x.py"]
model = "cswin_small_224"
drop_path = 0.3
paper = "box AP 53.7, mask AP 46.4 (official README; no config released: drop path is Swin-S's 0.3)"
