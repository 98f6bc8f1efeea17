# Semantic FPN (FPN 256 + FPNHead 128), 80k iterations, 4 images per GPU on 8 GPUs (BiFormer's
# PVT-style recipe): AdamW lr 2e-4, weight decay 1e-4, warm-up 1000 iterations from 0.1 x lr,
# cosine to lr x 1e-8.
_base_ = ["./upernet_160k.py"]
head = "semantic_fpn"
max_iters = 80000
val_interval = 8000
lr = 2e-4
weight_decay = 1e-4
warmup_iters = 1000
warmup_ratio = 0.1
sched = "cosine"
min_lr = 2e-12
batch_size = 4
