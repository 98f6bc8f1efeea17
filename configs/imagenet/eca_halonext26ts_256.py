# timm's eca_halonext26ts; its weights (c1_in1k, 79.518 top-1) used timm's 'C' recipe (SGD Nesterov, AGC, cosine).
# This recipe: the A1 base (_base_/halonet.py) at 256, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "eca_halonext26ts_256"
img_size = 256
