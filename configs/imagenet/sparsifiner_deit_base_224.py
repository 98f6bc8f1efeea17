# Sparsifiner on deit_base_patch16_224 (the official two-phase recipe, see _base_/sparsifiner.py).
# The official main.py cannot build this variant (architecture inferred); the recipe is the -S one.
_base_ = ["./_base_/sparsifiner.py"]
model = "sparsifiner_deit_base_224"
img_size = 224
teacher = dict(model="deit_base_patch16_224", pretrained=True)
