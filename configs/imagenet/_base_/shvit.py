# SHViT ImageNet-1K recipe (ysj9909/SHViT main.py defaults + README; the project's shvit spec):
# 300 epochs, 8 GPUs x 256 (global 2048) at lr 1e-3, AdamW, cosine, 5 warm-up epochs, min lr 1e-5,
# adaptive gradient clipping 0.02, RandAugment rand-m9-mstd0.5, Mixup 0.8 / CutMix 1.0, label
# smoothing 0.1, random erasing 0.25, repeated augmentation, EMA 0.99996, no distillation, no drop
# path (the official Residual's drop rate is never set). Weight decay per variant.
_base_ = ["./deit.py"]
lr_base = 1e-3
lr_base_size = 2048
warmup_epochs = 5
clip_grad = 0.02
clip_mode = "agc"
aa = "rand-m9-mstd0.5"
aug_repeats = 3
model_ema_decay = 0.99996
batch_size = 256
drop_path = None
