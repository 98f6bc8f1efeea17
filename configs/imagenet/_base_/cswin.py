# CSWin Transformer ImageNet-1K recipe (microsoft/CSWin-Transformer main.py on timm 0.3.4, README
# commands; the project's cswin spec section 7): the DeiT-style recipe with 20 warm-up epochs,
# random training interpolation and seed 42. The lr is scaled to the global batch from the paper's
# (lr_base at lr_base_size, set per variant), so any GPU count reproduces the recipe's lr per image.
_base_ = ["./deit.py"]
warmup_epochs = 20
train_interpolation = "random"
seed = 42
