_base_ = ["./_base_/upernet_160k.py"]
model = "cswin_tiny_224"
drop_path = 0.3
paper = "mIoU 49.3 single-scale, 50.7 multi-scale + flip (official README and config upernet_cswin_tiny)"
