_base_ = ["./_base_/upernet_160k.py"]
model = "cswin_small_224"
drop_path = 0.4
paper = "mIoU 50.4 / 51.5 ms+flip (official README and config upernet_cswin_small)"
