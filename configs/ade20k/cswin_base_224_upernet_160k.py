_base_ = ["./_base_/upernet_160k.py"]
model = "cswin_base_224"
drop_path = 0.6
paper = "mIoU 51.1 / 52.2 ms+flip (official README and config upernet_cswin_base)"
