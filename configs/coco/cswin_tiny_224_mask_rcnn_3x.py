_base_ = ["./_base_/mask_rcnn_3x.py"]
model = "cswin_tiny_224"
drop_path = 0.2
paper = "box AP 49.0, mask AP 43.6 (official README; no config released: drop path is Swin-T's 0.2)"
