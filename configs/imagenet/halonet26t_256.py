# timm's halonet26t; its weights (a1h_in1k, 79.134 top-1 in timm's results-imagenet.csv) used an A1-based recipe.
# This recipe: the A1 base (_base_/halonet.py) at 256, 8 GPUs x 256 (global 2048, lr 5e-3).
_base_ = ["./_base_/halonet.py"]
model = "halonet26t_256"
img_size = 256
