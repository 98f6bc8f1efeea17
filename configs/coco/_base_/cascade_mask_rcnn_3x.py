# Cascade Mask R-CNN + FPN, 3x (Swin's cascade_mask_rcnn_swin_*_mstrain_480-800_giou_4conv1f_adamw_3x
# recipe, which CSWin follows): three stages (IoU 0.5 / 0.6 / 0.7), 4conv1fc box heads with
# BatchNorm (SyncBN on several GPUs), GIoU loss (weight 10), 36 epochs, multi-scale training,
# AdamW lr 1e-4, weight decay 0.05. See backbones/dense/cascade.py.
_base_ = ["./mask_rcnn_3x.py"]
detector = "cascade_mask_rcnn"
