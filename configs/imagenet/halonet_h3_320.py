# HaloNet-H3 (paper configuration; no weights exist). Paper: 81.9 top-1 at 320 (unverified).
# This recipe: the A1 base (_base_/halonet.py) at 320, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet_h3_320"
img_size = 320
