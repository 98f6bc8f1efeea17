# HaloNet-H5 (paper configuration; no weights exist). Paper: 84.0 top-1 at 448 (unverified).
# This recipe: the A1 base (_base_/halonet.py) at 448, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet_h5_448"
img_size = 448
