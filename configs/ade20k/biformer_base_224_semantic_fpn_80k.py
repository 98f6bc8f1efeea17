_base_ = ["./_base_/semantic_fpn_80k.py"]
model = "biformer_base_224"
drop_path = 0.3
paper = "mIoU 49.9 (official README, config sfpn.biformer_base)"
