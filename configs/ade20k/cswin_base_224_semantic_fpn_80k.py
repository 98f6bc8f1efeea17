_base_ = ["./_base_/semantic_fpn_80k.py"]
model = "cswin_base_224"
drop_path = 0.6
paper = "mIoU 49.9 (official README; no config released: drop path as its UperNet config)"
