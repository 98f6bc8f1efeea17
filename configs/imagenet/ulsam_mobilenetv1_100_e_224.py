# MobileNet-V1 1.0, the last repeated 14x14 layer replaced by ULSAM (g=4) (inferred; 3.9 M / 517 M).
# Authors' ImageNet-1k top-1 for this row at g=4: 70.43. Global batch 256 (e.g. 4 GPUs x 64).
_base_ = ["./_base_/ulsam_mobilenet.py"]
model = "ulsam_mobilenetv1_100_e_224"
img_size = 224
batch_size = 64
