_base_ = ["./_base_/cascade_mask_rcnn_3x.py"]
model = "cswin_tiny_224"
drop_path = 0.2
paper = "box AP 52.5, mask AP 45.3 (official README; no config released: drop path is Swin-T's 0.2)"
