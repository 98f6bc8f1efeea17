_base_ = ["./_base_/litv2_semantic_fpn_80k.py"]
model = "litv2_small_224"
drop_path = 0.2
paper = "mIoU 44.3 (official README)"
