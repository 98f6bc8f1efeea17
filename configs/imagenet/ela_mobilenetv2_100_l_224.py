# MobileNetV2 1.0 with ELA-L after the depthwise conv of its 16 inverted residuals with expansion:
# the official MbV2/models/mbv2_ela72.py. 2 GPUs x 128 (global 256, lr 0.1).
_base_ = ["./_base_/ela_mobilenetv2.py"]
model = "ela_mobilenetv2_100_l_224"
img_size = 224
