# RetinaNet + FPN (stages 2-4, P6/P7 on the input), 1x; AdamW lr 1e-4, weight decay 1e-4.
_base_ = ["./mask_rcnn_1x.py"]
detector = "retinanet"
weight_decay = 1e-4
