# HaloNet-H2 (paper configuration; no weights exist). Paper: 80.4 top-1 at 256 (unverified).
# This recipe: the A1 base (_base_/halonet.py) at 256, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet_h2_256"
img_size = 256
