_base_ = ["./_base_/upernet_160k.py"]
model = "biformer_small_224"
drop_path = 0.3
paper = "mIoU 49.8 single-scale, 50.8 multi-scale (official README, config upernet.biformer_small)"
