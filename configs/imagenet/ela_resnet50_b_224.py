# ResNet-50 with ELA-B after conv2 + bn2 of every block (pass
# --model-kwargs ela_residual=True for the official DeepLab code's ELA(x) + x). 8 GPUs x 32
# (global 256, lr 0.1).
_base_ = ["./_base_/ela_resnet.py"]
model = "ela_resnet50_b_224"
img_size = 224
