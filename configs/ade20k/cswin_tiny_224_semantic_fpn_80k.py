_base_ = ["./_base_/semantic_fpn_80k.py"]
model = "cswin_tiny_224"
drop_path = 0.3
paper = "mIoU 48.2 (official README; no config released: drop path as its UperNet config)"
