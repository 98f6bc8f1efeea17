# Sparsifiner on LV-ViT-medium (the official two-phase recipe, see _base_/sparsifiner.py). LV-ViT is
# not in timm: the frozen dense teacher is the zoo model with its dense LV-ViT weights.
# The official main.py cannot build this variant (architecture inferred); the recipe is the -S one.
_base_ = ["./_base_/sparsifiner.py"]
model = "sparsifiner_lvvit_medium_224"
img_size = 224
crop_pct = 1.0
teacher = dict(model="sparsifiner_lvvit_medium_224", pretrained=True,
               model_kwargs=dict(pretrained_cfg="dense_init_in1k"))
