# The plain baseline of the ELA DeepLabV3 recipe (the logs' "no attention" row): the same recipe
# on timm's copy of torchvision's ResNet-18, the network the official code loads.
_base_ = ["./_base_/deeplabv3_os16_60k.py"]
model = "resnet18.tv_in1k"
paper = ("mIoU 69.49 in the authors' DeepLabV3 VOC12 log NO_att (semantic/Log_file_old); the "
         "paper's table could not be read")
