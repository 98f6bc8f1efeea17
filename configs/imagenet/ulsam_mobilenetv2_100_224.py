# MobileNet-V2 1.0 + ULSAM (g=4) after the last 160-channel block (inferred; 3.4 M / 300.01 M).
# Authors' ImageNet-1k top-1 for this row at g=4: 71.64. Global batch 256 (e.g. 4 GPUs x 64).
_base_ = ["./_base_/ulsam_mobilenet.py"]
model = "ulsam_mobilenetv2_100_224"
img_size = 224
batch_size = 64
