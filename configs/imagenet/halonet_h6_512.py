# HaloNet-H6 (paper configuration; no weights exist). Paper: 84.4 top-1 at 512 (unverified).
# This recipe: the A1 base (_base_/halonet.py) at 512, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet_h6_512"
img_size = 512
