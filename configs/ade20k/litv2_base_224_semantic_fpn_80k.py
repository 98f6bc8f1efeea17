_base_ = ["./_base_/litv2_semantic_fpn_80k.py"]
model = "litv2_base_224"
drop_path = 0.3
paper = "mIoU 47.2 (official README)"
