# LITv2's Semantic FPN recipe (segmentation/configs): 80k iterations, 2 images per GPU on 8 GPUs,
# AdamW lr 1e-4, weight decay 1e-4, poly decay (power 0.9) to 1e-6, no warm-up.
_base_ = ["./semantic_fpn_80k.py"]
lr = 1e-4
weight_decay = 1e-4
sched = "poly"
poly_power = 0.9
min_lr = 1e-6
warmup_iters = 0
batch_size = 2
