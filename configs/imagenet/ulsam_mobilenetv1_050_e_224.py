# MobileNet-V1 0.5, one 14x14 layer replaced by ULSAM (g=4) (inferred; 1.2 M / 136 M).
# Authors' ImageNet-1k top-1 for this row at g=4: 63.25. Global batch 256 (e.g. 4 GPUs x 64).
_base_ = ["./_base_/ulsam_mobilenet.py"]
model = "ulsam_mobilenetv1_050_e_224"
img_size = 224
batch_size = 64
