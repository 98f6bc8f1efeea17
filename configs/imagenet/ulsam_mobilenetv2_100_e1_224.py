# MobileNet-V2 1.0, one 96- and one 160-channel block replaced by ULSAM (g=4) (inferred; 2.96 M / 261.88 M).
# Authors' ImageNet-1k top-1 for this row at g=4: 71.52. Global batch 256 (e.g. 4 GPUs x 64).
_base_ = ["./_base_/ulsam_mobilenet.py"]
model = "ulsam_mobilenetv2_100_e1_224"
img_size = 224
batch_size = 64
