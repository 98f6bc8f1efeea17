# The README's main job: a small CSWin (the cswin_tiny_224 architecture at a quarter of its width
# and depth) trained from scratch on scikit-learn's hand-written digits (embedded, no download),
# upscaled to 32x32, on the CPU in a few minutes. Held-out split: every fifth digit per class.
model = "cswin_tiny_224"
model_kwargs = dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 8),
                    split_sizes=(1, 2, 2, None))
img_size = 32
digits_img_size = 32
crop_pct = 1.0
batch_size = 64
workers = 2
epochs = 30
warmup_epochs = 3
lr = 2e-3
min_lr = 1e-5
weight_decay = 0.05
drop_path = 0.1
# digits are not mirror-invariant and fill the frame: mild scale / aspect jitter only
hflip = 0.0
scale = (0.7, 1.0)
ratio = (0.9, 1.1)
color_jitter = 0.0
train_interpolation = "bilinear"
smoothing = 0.1
model_ema = True
model_ema_decay = 0.995
checkpoint_hist = 2
log_interval = 10
output = "./output"
experiment = "cswin_digits"
