_base_ = ["./_base_/mask_rcnn_3x.py"]
model = "cswin_base_224"
drop_path = 0.3
paper = "box AP 50.8, mask AP 44.9 (official README; no config released: drop path is Swin-B's 0.3)"
