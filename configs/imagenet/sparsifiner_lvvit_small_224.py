# Sparsifiner on LV-ViT-small (the official two-phase recipe, see _base_/sparsifiner.py). LV-ViT is
# not in timm: the frozen dense teacher is the zoo model with its dense LV-ViT weights.
_base_ = ["./_base_/sparsifiner.py"]
model = "sparsifiner_lvvit_small_224"
img_size = 224
crop_pct = 0.9
teacher = dict(model="sparsifiner_lvvit_small_224", pretrained=True,
               model_kwargs=dict(pretrained_cfg="dense_init_in1k"))
