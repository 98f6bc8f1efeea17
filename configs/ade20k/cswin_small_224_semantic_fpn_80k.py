_base_ = ["./_base_/semantic_fpn_80k.py"]
model = "cswin_small_224"
drop_path = 0.4
paper = "mIoU 49.2 (official README; no config released: drop path as its UperNet config)"
