# SHViT-S4 RetinaNet 1x (ysj9909/SHViT downstream/configs/retinanet_shvit_s4_fpn_1x_coco.py): the
# Mask R-CNN recipe's backbone, optimizer and schedule (AdamW lr 1e-4, weight decay 0.05, step 8 / 11,
# norm_eval) with the official EfficientViTFPN for RetinaNet (one transposed-conv level at stride 8,
# one 3x3/2 conv on the last backbone map at stride 128).
_base_ = ["./shvit_s4_256_mask_rcnn_1x.py"]
detector = "retinanet"
paper = "box AP 38.8, AP50 59.8, AP75 41.1 (official downstream/README.md)"
