# timm's sehalonet33ts; its weights (ra2_in1k, 80.976 top-1) used timm's RandAugment RA2 recipe (RMSProp, step lr, EMA).
# This recipe: the A1 base (_base_/halonet.py) at 256, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "sehalonet33ts_256"
img_size = 256
