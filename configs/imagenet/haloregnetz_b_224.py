# timm's haloregnetz_b; its weights (ra3_in1k, 81.058 top-1) used timm's RA3 recipe.
# This recipe: the A1 base (_base_/halonet.py) at 224, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "haloregnetz_b_224"
img_size = 224
