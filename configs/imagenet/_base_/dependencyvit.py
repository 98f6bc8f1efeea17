# DependencyViT ImageNet-1K from scratch at 224. ASSUMED recipe: the paper's training details
# (appendix D) could not be read and no official code exists (spec dependencyvit.md sections 0, 6);
# the reference (timm PR #2062) gives none either. This is DeiT's recipe, which the paper builds on
# ("DeiT-style" in the issue): AdamW, lr 5e-4 per 512 images (1e-3 at the global batch 1024 below),
# weight decay 0.05, 5 warm-up epochs, cosine to 1e-5 over 300 epochs + 10 cool-down, RandAugment,
# Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing 0.25, repeated augmentation x3, EMA
# 0.99996, drop path 0.1 (DeiT-Ti / DeiT-S). Everything else is deit.py. Assumed, not the paper's:
# all of it.
_base_ = ["./deit.py"]
img_size = 224
lr_base = 5e-4
lr_base_size = 512
warmup_epochs = 5
batch_size = 128  # x 8 GPUs = 1024 (DeiT)
train_interpolation = "bicubic"
aug_repeats = 3
model_ema_decay = 0.99996
drop_path = 0.1
