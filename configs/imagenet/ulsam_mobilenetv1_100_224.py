# MobileNet-V1 1.0 + ULSAM (g=4) after the last 14x14x512 layer (inferred placement; 4.2 M / 569.2 M).
# Authors' ImageNet-1k top-1 for this row at g=4: 70.77. Global batch 256 (e.g. 4 GPUs x 64).
_base_ = ["./_base_/ulsam_mobilenet.py"]
model = "ulsam_mobilenetv1_100_224"
img_size = 224
batch_size = 64
