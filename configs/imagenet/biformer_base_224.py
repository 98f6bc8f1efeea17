# BiFormer-B, ImageNet-1K from scratch. UNVERIFIED: the repository has no BiFormer-B command; drop
# path 0.4 is the paper's value as recalled (not re-read), batch 8 x 128 = 1024 assumed from
# main.py's default launch. Official: 84.3 top-1.
_base_ = ["./_base_/biformer.py"]
model = "biformer_base_224"
batch_size = 128
drop_path = 0.4
