# Mask R-CNN + FPN, 1x (12 epochs, lr x0.1 at 8 and 11), single-scale 1333x800, flip; AdamW with no
# decay on norms / biases / position tables; 2 images per GPU on 8 GPUs (Swin's mmdet recipe, which
# the CSWin and BiFormer papers follow). torchvision heads: see configs/coco/README.md.
task = "detection"
detector = "mask_rcnn"
pretrained = True
epochs = 12
lr_steps = (8, 11)
warmup_iters = 500
warmup_ratio = 0.001
lr = 1e-4
weight_decay = 0.05
min_size = (800,)
max_size = 1333
batch_size = 2
amp = True
