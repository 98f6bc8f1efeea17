# Mask R-CNN + FPN, 3x (36 epochs, lr x0.1 at 27 and 33), multi-scale training (shorter side
# 480-800 in steps of 32, longer side <= 1333), evaluation at 800 (Swin's 3x recipe).
_base_ = ["./mask_rcnn_1x.py"]
epochs = 36
lr_steps = (27, 33)
min_size = tuple(range(480, 801, 32))
