_base_ = ["./_base_/semantic_fpn_80k.py"]
model = "biformer_small_224"
drop_path = 0.15
paper = "mIoU 48.9 (official README, config sfpn.biformer_small)"
