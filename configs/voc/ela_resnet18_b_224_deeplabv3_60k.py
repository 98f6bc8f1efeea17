# DeepLabV3 (output stride 16) on ResNet-18 + ELA-S, the DeepLab backbone of the ELA code: ELA in
# every BasicBlock after conv2 + bn2 with the code's extra identity (ELA(x) + x). The committed
# DeepLab head is built for 512 input channels (semantic/network/modeling.py, _segm_resnet), the
# width of ResNet-18 / 34, and the logs' best ELA row is k5 / GN16 / groups C/8, i.e. ELA-S.
# Backbone start: torchvision's ImageNet ResNet-18 (timm resnet18.tv_in1k, as the official
# code loads), ELA layers at their initialisation.
_base_ = ["./_base_/deeplabv3_os16_60k.py"]
model = "ela_resnet18_b_224.host_in1k"
model_kwargs = dict(ela_version="s", ela_residual=True)
paper = ("mIoU 71.55 in the authors' DeepLabV3 VOC12 log ELA_k5_gn16_g8 (semantic/Log_file_old; "
         "no attention 69.49); the paper's table could not be read")
