# HaloNet-H7 (paper configuration; no weights exist). Paper: 84.9 top-1 at 600 (unverified).
# This recipe: the A1 base (_base_/halonet.py) at 600, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet_h7_600"
img_size = 600
