# DeepLabV3 (output stride 16) on ResNet-50 + ELA-S with the DeepLab code's extra identity, the
# official main.py's default model name (deeplabv3_resnet50); the committed head width (512)
# does not fit ResNet-50's 2048 channels, so which backbone produced the logs is unknown.
_base_ = ["./_base_/deeplabv3_os16_60k.py"]
model = "ela_resnet50_b_224.host_in1k"
model_kwargs = dict(ela_version="s", ela_residual=True)
paper = ("mIoU 71.55 in the authors' DeepLabV3 VOC12 logs (best ELA row, backbone not "
         "recorded); the paper's table could not be read")
