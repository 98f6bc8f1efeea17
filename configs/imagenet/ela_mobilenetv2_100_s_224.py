# MobileNetV2 1.0 with ELA-S at the official placement (the version of the paper's MobileNetV2
# row). 2 GPUs x 128 (global 256, lr 0.1).
_base_ = ["./_base_/ela_mobilenetv2.py"]
model = "ela_mobilenetv2_100_s_224"
img_size = 224
