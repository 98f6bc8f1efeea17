# Sparsifiner on deit_small_patch16_224 (the official two-phase recipe, see _base_/sparsifiner.py).
_base_ = ["./_base_/sparsifiner.py"]
model = "sparsifiner_deit_small_224"
img_size = 224
teacher = dict(model="deit_small_patch16_224", pretrained=True)
