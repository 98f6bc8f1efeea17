# Sparsifiner ImageNet-1K recipe (lim142857/Sparsifiner: src/main.py, src/config/default_config.py,
# experiments-results-analysis/experiments/sparsifiner_default_config.yaml; the project's
# sparsifiner spec section 6). The student and a frozen dense teacher both start from the dense
# checkpoint (the student's 'dense_init_in1k' tag: backbone loaded, connectivity predictor at its
# init), then two phases, each with its own optimizer parameters and a restarted per-step cosine
# from a linear warm-up starting at 0:
#   attn_recon, 5 epochs: only blocks.*.attn.mask_predictor.* train, loss 0.01 x attention
#     reconstruction of the teacher's dense attention; lr 3e-4 -> 2e-4, 3 warm-up epochs;
#   cls_distill, 45 epochs: everything else trains, loss soft-target CE + 0.5 KL to the teacher's
#     logits + 0.5 MSE to its final patch tokens; lr 8e-5 -> 2e-6, 3 warm-up epochs.
# The lrs are the official ones at the official global batch (168 x 8 GPUs = 1344) and are not
# rescaled with the batch. AdamW (eps 1e-8), weight decay 0.05 (not on 1-D params, biases,
# pos_embed, cls_token), EMA 0.9999, no AMP, no drop path; DeiT-style augmentation (RandAugment
# rand-m9-mstd0.5-inc1, colour jitter 0.4, bicubic, random erasing 0.25, Mixup 0.8 / CutMix 1.0,
# label smoothing 0.1); evaluation resize 256 -> crop 224. Assumed (not in the official files):
# seed 0; the teacher of the DeiT variants is timm's DeiT with the same released weights.
_base_ = ["./deit.py"]
pretrained = True
model_kwargs = dict(pretrained_cfg="dense_init_in1k")
batch_size = 168
sched = "cosine"
sched_on_updates = True
warmup_lr = 0.0
cooldown_epochs = 0
train_interpolation = "bicubic"
model_ema = True
model_ema_decay = 0.9999
amp = False
drop_path = 0.0
seed = 0
phases = [
    dict(name="attn_recon", epochs=5, train=["blocks.*.attn.mask_predictor.*"], lr=3e-4, min_lr=2e-4, warmup_epochs=3,
         loss=dict(type="sparsifiner_attn_recon", weight=0.01)),
    dict(name="cls_distill", epochs=45, freeze=["blocks.*.attn.mask_predictor.*"], lr=8e-5, min_lr=2e-6, warmup_epochs=3,
         loss=dict(type="sparsifiner_distill", base="soft_target_ce", cls_weight=1.0,
                   kl_weight=0.5, token_weight=0.5)),
]
epochs = 50
