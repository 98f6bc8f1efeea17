# MobileNet-V2 1.0, both repeated 160-channel blocks replaced by ULSAM (g=4) (inferred; 2.77 M / 269.07 M).
# Authors' ImageNet-1k top-1 for this row at g=4: 70.74. Global batch 256 (e.g. 4 GPUs x 64).
_base_ = ["./_base_/ulsam_mobilenet.py"]
model = "ulsam_mobilenetv2_100_e2_224"
img_size = 224
batch_size = 64
