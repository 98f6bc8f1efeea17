# HaloNet-H4 (paper configuration; no weights exist). Paper: 83.3 top-1 at 384 (unverified).
# This recipe: the A1 base (_base_/halonet.py) at 384, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet_h4_384"
img_size = 384
