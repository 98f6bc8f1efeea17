_base_ = ["./_base_/upernet_160k.py"]
model = "biformer_base_224"
drop_path = 0.4
paper = "mIoU 51.0 / 51.7 (official README, config upernet.biformer_base)"
